-- rmem.Region: allocations released exactly once, offsets bounds-checked.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local PAGE = rmem.page_size

describe("rmem.Region", function()
  local p, t

  before_each(function() p, t = helpers.open_target() end)
  after_each(function() p:close() t:stop() end)

  local function state(a) return p:query(a).state end

  describe("lifetime", function()
    it("<close> frees at the end of the block", function()
      local address
      do
        local r <close> = p:alloc(PAGE)
        address = r.address
        assert.equal("commit", state(address))
      end
      assert.equal("free", state(address))
    end)

    it("__gc frees a region nobody holds", function()
      local address = p:alloc(PAGE).address
      assert.equal("commit", state(address))
      collectgarbage()
      collectgarbage()
      assert.equal("free", state(address))
    end)

    it("keep() keeps the allocation after <close> and __gc", function()
      local address
      do
        local r <close> = p:alloc(PAGE)
        assert.equal(r.address, r:keep())
        address = r.address
      end
      collectgarbage()
      collectgarbage()
      assert.equal("commit", state(address))
      p:free(address)
      assert.equal("free", state(address))
    end)

    it("free() frees once; a second free() raises and never touches a new allocation", function()
      local r = p:alloc(PAGE)
      local address = r.address
      r:free()
      assert.is_true(r:is_freed())
      assert.equal("free", state(address))
      local again <close> = p:alloc(PAGE, { address = address })
      assert.equal(address, again.address)
      local e = helpers.error_of(r.free, r)
      assert.is_true(rmem.is_error(e))
      assert.equal("free", e.op)
      assert.equal("REGION_FREED", e.name)
      assert.equal(address, e.address)
      assert.equal("commit", state(address)) -- the new allocation is intact
      e = helpers.error_of(r.read, r, 0, 1)
      assert.equal("REGION_FREED", e.name)
      assert.equal("read", e.op)
      assert.matches("already freed", tostring(e))
    end)

    it("a <close> region freed by free() is not freed again", function()
      local address
      do
        local r <close> = p:alloc(PAGE)
        address = r.address
        r:free()
        local _ <close> = p:alloc(PAGE, { address = address })
      end
      assert.equal("free", state(address))
    end)

    it("p:free(r.address) marks the region freed", function()
      local r = p:alloc(PAGE)
      p:free(r.address)
      assert.is_true(r:is_freed())
      local again <close> = p:alloc(PAGE, { address = r.address })
      assert.equal(r.address, again.address)
      assert.equal("REGION_FREED", helpers.error_of(r.free, r).name)
      r = nil -- luacheck: ignore 311 (drop the last reference for the collector)
      collectgarbage()
      collectgarbage()
      assert.equal("commit", state(again.address))
    end)

    it("a freed region's __gc never releases a new allocation at its address", function()
      local r = p:alloc(PAGE)
      local address = r.address
      r:free()
      local again <close> = p:alloc(PAGE, { address = address })
      r = nil -- luacheck: ignore 311 (drop the last reference for the collector)
      collectgarbage()
      collectgarbage()
      assert.equal("commit", state(again.address))
    end)

    it("a closed process makes free() raise and __gc do nothing", function()
      local r = p:alloc(PAGE)
      local address = r.address
      p:close()
      local e = helpers.error_of(r.free, r)
      assert.equal("PROCESS_CLOSED", e.name)
      r = nil -- luacheck: ignore 311 (drop the last reference for the collector)
      collectgarbage()
      collectgarbage()
      local q <close> = rmem.open(t.pid)
      assert.equal("commit", q:query(address).state)
    end)

    it("collecting the process never strands a region", function()
      local address
      do
        local q = rmem.open(t.pid)
        address = q:alloc(PAGE).address
      end
      collectgarbage()
      collectgarbage()
      assert.equal("free", state(address))
    end)

    it("shows address, size and pid in tostring", function()
      local r = p:alloc(2 * PAGE)
      assert.equal(("rmem.Region 0x%016X +0x2000 (pid %d)"):format(r.address, t.pid), tostring(r))
      r:free()
      assert.matches("freed%)$", tostring(r))
    end)
  end)

  describe("methods with offsets", function()
    it("read, write, commit, decommit, protect, reset and query", function()
      local r <close> = p:alloc(4 * PAGE, { commit = false })
      assert.equal(r.address + PAGE, r:commit(PAGE, 2 * PAGE))
      r:write(PAGE, "hello")
      assert.equal("hello", r:read(PAGE, 5))
      assert.equal("rw", r:protect(PAGE, PAGE, "r"))
      assert.equal("r", r:query(PAGE).protect)
      r:reset(2 * PAGE, PAGE)
      r:decommit(2 * PAGE, 1)
      assert.same({ "reserve", "commit", "reserve", "reserve" },
        helpers.page_states(p, r.address, 4 * PAGE))
    end)

    it("r:protect(prot) and r:decommit() cover the whole region", function()
      local r <close> = p:alloc(3 * PAGE)
      assert.equal("rw", r:protect("r"))
      assert.equal("r", r:query(2 * PAGE).protect)
      assert.equal(3 * PAGE, r:query().size)
      r:decommit()
      assert.same({ "reserve", "reserve", "reserve" }, helpers.page_states(p, r.address, 3 * PAGE))
    end)

    it("rejects ranges outside the region", function()
      local r <close> = p:alloc(PAGE)
      assert.has_error(function() r:read(PAGE - 1, 2) end,
        "bad argument #2 to 'read' (range +0xfff..+0x1001 is outside the region (size 0x1000))")
      assert.has_error(function() r:write(PAGE, "x") end,
        "bad argument #2 to 'write' (range +0x1000..+0x1001 is outside the region (size 0x1000))")
      assert.has_error(function() r:read(-1, 1) end,
        "bad argument #1 to 'read' (offset must not be negative, got -1)")
      assert.has_error(function() r:query(PAGE) end,
        "bad argument #1 to 'query' (offset 0x1000 is outside the region (size 0x1000))")
      assert.has_error(function() r:protect(0, 2 * PAGE, "r") end)
      assert.equal("rw", r:query().protect)
    end)
  end)
end)
