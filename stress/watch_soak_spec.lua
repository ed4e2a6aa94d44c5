-- Watch soak (make stress): 1,000 watch open/close cycles on a target
-- writing the watched variable in a tight loop (examples/target.c --writer 0,
-- and the same from a second thread): the target never dies (no SIGTRAP, no
-- unhandled single-step), every thread's debug registers end clear, and the
-- host's handles are flat. RMEM_WATCH_SOAK sets the number of cycles. On
-- Linux with each method: perf events, and ptrace (RMEM_WATCH_METHOD), whose
-- tracer must also have left.
local rmem = require "rmem"
local helpers = require "spec.helpers"
local testproc = helpers.testproc

local N = tonumber(os.getenv("RMEM_WATCH_SOAK")) or 1000

helpers.describe_watch_methods("watch soak", function(method)
  -- both platforms (under Wine 8 rmem never suspends a thread that may be
  -- inside a debug exception: README, "Watches")
  it(("%d watch open/close cycles on a writer in a tight loop"):format(N), function()
    local t = helpers.start_target { args = { "--writer", "0", "--writer", "0" } }
    local p = rmem.open(t.pid, { access = "all" })
    local value = helpers.watched_record(p) + 16
    local handles = helpers.handle_count()
    local seen = 0
    for i = 1, N do
      local w <close> = p:watch(value, 4, i % 2 == 0 and "rw" or "w")
      if i % 4 == 0 then testproc.sleep(1) end -- some close with hits in flight, some at once
      for _, h in ipairs(w:hits()) do seen = seen + h.count end
      assert(p:is_alive(), ("the target died in cycle %d"):format(i))
    end
    testproc.sleep(200)
    assert.is_true(p:is_alive())
    assert.is_true(seen > 0)
    local threads = testproc.debug_registers(t.pid)
    if helpers.linux then
      assert.are.equal(0, helpers.tracer_of(t.pid))
      assert.are.equal(2 + 1, #threads) -- main and both writers: none left traced
    end
    for _, th in ipairs(threads) do assert.are.equal(0, th.dr7 & 0xFF) end
    assert.are.equal(handles, helpers.handle_count())
    print(("%s: %d cycles, %d hits seen, target alive"):format(method or "veh", N, seen))
    p:close()
    t:stop()
  end)
end)
