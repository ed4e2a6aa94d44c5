-- Hook stress (make stress): install/remove cycles on a function that 8
-- threads of the target call all the time. The target must not crash, its
-- results must stay right, and no trampoline may be left behind.
-- RMEM_HOOK_CYCLES sets the number of cycles.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local N = tonumber(os.getenv("RMEM_HOOK_CYCLES")) or (helpers.windows and 1000 or 10000)

describe("hook stress", function()
  it(("%d hook install/remove cycles while 8 threads call the function"):format(N), function()
    local t = helpers.start_target { calls = 8 }
    local p = rmem.open(t.pid, { access = "all" })
    local m = assert(p:module(helpers.target_name))
    local funcs, data = helpers.target_symbols("rmem-target")
    local fn, tick = m.base + funcs.hook_add, m.base + funcs.tick
    local calls, last_sum = m.base + data.calls, m.base + data.last_sum
    local original = p:read(fn, 16)
    p:hook(fn, ""):restore() -- the trampoline pool's first block
    local regions, handles = helpers.mapped_count(p), helpers.handle_count()
    local payloads = { "", { call = tick }, { log = { helpers.windows and "rcx" or "rdi" } } }
    local moved = 0
    for i = 1, N do
      local h = p:hook(fn, payloads[i % 3 + 1])
      h:restore()
      moved = moved + h.moved
    end
    -- (how often depends on where the CPU lets interrupts land; spec/23 moves one for sure)
    print(("\n  %d cycles: %d times a thread was inside the moved bytes and was moved"):format(N, moved))
    assert.equal(original, p:read(fn, 16))
    assert.equal(regions, helpers.mapped_count(p))
    assert.equal(handles, helpers.handle_count())
    assert.is_true(p:is_alive())
    local before = p:read_i32(calls)
    for _ = 1, 500 do
      if p:read_i32(calls) ~= before then break end
      require("system").sleep(0.01)
    end
    assert.are_not.equal(before, p:read_i32(calls))
    assert.equal(7, p:read_i32(last_sum) % 1000)
    p:close()
    t:stop()
  end)
end)
