-- Soak (make stress): many open/close and alloc/free cycles, and regions
-- left to the collector, with the host's handles and the target's mappings
-- counted before and after. RMEM_SOAK sets the number of cycles.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local N = tonumber(os.getenv("RMEM_SOAK")) or (helpers.windows and 5000 or 100000)
local PAGE = rmem.page_size



describe("soak", function()
  it(("%d open/close cycles leave the handle count flat"):format(N), function()
    local t = helpers.start_target()
    local before = helpers.handle_count()
    for _ = 1, N do rmem.open(t.pid):close() end
    assert.equal(before, helpers.handle_count())
    t:stop()
  end)

  it(("%d alloc/free cycles leave the handles and the target's mappings flat"):format(N), function()
    local t = helpers.start_target()
    local p = rmem.open(t.pid)
    local handles, regions = helpers.handle_count(), helpers.mapped_count(p)
    for i = 1, N do
      local r = p:alloc(PAGE * (1 + i % 4), { commit = i % 3 ~= 0 })
      r:free()
    end
    assert.equal(handles, helpers.handle_count())
    assert.equal(regions, helpers.mapped_count(p))
    p:close()
    t:stop()
  end)

  it(("%d remote calls leave the handle count flat"):format(N // 20), function()
    -- (a thread handle each on Windows, counted under Wine too since issue 10)
    local t = helpers.start_target()
    local p = rmem.open(t.pid, { access = "all" })
    local fn = helpers.windows and p:proc_address("kernel32.dll", "GetCurrentProcessId")
      or p:proc_address("libc.so.6", "getpid")
    local handles = helpers.handle_count()
    for _ = 1, N // 20 do assert.equal(t.pid, p:call(fn)) end
    assert.equal(handles, helpers.handle_count())
    p:close()
    t:stop()
  end)

  it("10,000 regions left to the collector are all released", function()
    local t = helpers.start_target()
    local p = rmem.open(t.pid)
    local regions = helpers.mapped_count(p)
    local kept = {}
    for i = 1, 10000 do kept[i] = p:alloc(PAGE, { protect = i % 2 == 0 and "r" or "rw" }) end
    assert.is_true(helpers.mapped_count(p) >= regions + 10000)
    kept = nil -- luacheck: ignore 311 (dropped for the collector)
    collectgarbage()
    collectgarbage()
    assert.equal(regions, helpers.mapped_count(p))
    p:close()
    t:stop()
  end)
end)
