-- Patches that undo themselves, and scoped protection.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local PAGE = rmem.page_size

describe("patches", function()
  local p, t, r

  before_each(function()
    p, t = helpers.open_target()
    r = p:alloc(3 * PAGE)
    r:write(0, "original bytes")
    r:protect(0, PAGE, "rx")
  end)
  after_each(function() p:close() t:stop() end)

  it("writes through the protection and restores bytes and protection on close", function()
    do
      local patch <close> = p:patch(r.address + 9, "BYTES")
      assert.equal("original BYTES", r:read(0, 14))
      assert.equal("rx", r:query(0).protect)
      assert.is_true(patch:is_active())
      assert.matches("^rmem.Patch 0x%x+ %+5 %(pid %d+%)$", tostring(patch))
    end
    assert.equal("original bytes", r:read(0, 14))
    assert.equal("rx", r:query(0).protect)
  end)

  it("restore() restores once; keep() keeps", function()
    local patch = p:patch(r.address, "O")
    patch:restore()
    assert.equal("original bytes", r:read(0, 14))
    local e = helpers.error_of(patch.restore, patch)
    assert.equal("PATCH_DONE", e.name)
    local kept = p:patch(r.address, "KEPT")
    assert.equal(r.address, kept:keep())
    kept = nil -- luacheck: ignore 311 (drop the last reference for the collector)
    collectgarbage()
    collectgarbage()
    assert.equal("KEPTinal bytes", r:read(0, 14))
  end)

  it("is restored by the collector", function()
    p:patch(r.address, "GC")
    collectgarbage()
    collectgarbage()
    assert.equal("original bytes", r:read(0, 14))
  end)

  it("rejects empty bytes", function()
    assert.has_error(function() p:patch(r.address, "") end,
      "bad argument #2 to 'patch' (bytes must be a non-empty string)")
  end)
end)

describe("p:with_protection()", function()
  local p, t

  before_each(function() p, t = helpers.open_target() end)
  after_each(function() p:close() t:stop() end)

  it("restores every page's own protection afterwards, and returns fn's results", function()
    local r <close> = p:alloc(3 * PAGE)
    r:protect(0, PAGE, "r")
    r:protect(2 * PAGE, PAGE, "rx")
    local a, b = p:with_protection(r.address, 3 * PAGE, "rw", function()
      assert.equal("rw", r:query(0).protect)
      assert.equal(3 * PAGE, r:query(0).size)
      r:write(0, "changed")
      return 1, 2
    end)
    assert.same({ 1, 2 }, { a, b })
    assert.same({ "r", "rw", "rx" }, { r:query(0).protect, r:query(PAGE).protect,
      r:query(2 * PAGE).protect })
    assert.equal("changed", r:read(0, 7))
  end)

  it("restores them when fn raises, and re-raises", function()
    local r <close> = p:alloc(2 * PAGE)
    r:protect(0, PAGE, "r")
    local ok, err = pcall(p.with_protection, p, r.address, 2 * PAGE, "rwx", function()
      error("inside", 0)
    end)
    assert.is_false(ok)
    assert.equal("inside", err)
    assert.same({ "r", "rw" }, { r:query(0).protect, r:query(PAGE).protect })
  end)
end)
