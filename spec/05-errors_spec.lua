-- rmem.Error: fields, hints and the one-line text; protection strings.
local rmem = require "rmem"
local core = require "rmem.core"
local helpers = require "spec.helpers"

local PAGE = rmem.page_size

-- The OS's text for code, ending with a period as in rmem.Error's text.
local function text(code)
  local m = core.error_message(code)
  return m:match("%.$") and m or m .. "."
end

-- "NAME (code): the OS's text" for a Win32 error name on this platform
local function os_part(win_name)
  local code = helpers.code(win_name)
  return ("%s (%d): %s"):format(helpers.name(win_name), code, text(code))
end

describe("rmem.Error", function()
  local p, t

  before_each(function() p, t = helpers.open_target() end)
  after_each(function() p:close() t:stop() end)

  it("has every field for an OS failure", function()
    local r <close> = p:alloc(2 * PAGE)
    local e = helpers.error_of(p.free, p, r.address + PAGE)
    assert.is_true(rmem.is_error(e))
    assert.equal(rmem.Error, getmetatable(e))
    assert.equal("free", e.op)
    assert.equal(helpers.code("ERROR_INVALID_ADDRESS"), e.code)
    assert.equal(helpers.name("ERROR_INVALID_ADDRESS"), e.name)
    assert.equal(core.error_message(e.code), e.message)
    assert.equal(t.pid, e.pid)
    assert.equal(r.address + PAGE, e.address)
    assert.is_nil(e.size)
    assert.equal("free needs the base address that alloc returned "
      .. "(MEM_RELEASE releases whole allocations only)", e.hint)
  end)

  it("reads as one line: free of a non-base address", function()
    local r <close> = p:alloc(2 * PAGE)
    local e = helpers.error_of(p.free, p, r.address + PAGE)
    assert.equal(e.where .. (": rmem: free(pid %d, 0x%x) failed: %s "
      .. "Hint: free needs the base address that alloc returned (MEM_RELEASE releases "
      .. "whole allocations only)."):format(t.pid, r.address + PAGE, os_part("ERROR_INVALID_ADDRESS")),
      tostring(e))
    assert.is_nil(tostring(e):find("\n"))
  end)

  it("reads as one line: protect of reserved pages", function()
    local r <close> = p:alloc(PAGE, { commit = false })
    local e = helpers.error_of(p.protect, p, r.address, PAGE, "r")
    assert.equal(e.where .. (": rmem: protect(pid %d, 0x%x, 4096 bytes) failed: %s "
      .. "Hint: protect needs committed pages inside one allocation: commit them first "
      .. "(reserved and free pages have no protection)."):format(t.pid, r.address,
        os_part("ERROR_INVALID_ADDRESS")), tostring(e))
  end)

  it("reads as one line: an allocation the OS refuses", function()
    -- (a zero size is an argument error before the OS sees it)
    local e = helpers.error_of(p.alloc, p, PAGE, { protect = 0 }) -- no PAGE_* value
    local hint = helpers.windows and "the size must be positive, and the protection valid for "
      .. "the allocation type (large pages need commit and a size that is a multiple of the "
      .. "large-page size)"
      or "the size must be positive and the protection one of none, r, rw, x, rx, rwx (Linux "
      .. "has no guard, nocache, writecombine, large-page or write-watch allocations)"
    assert.equal(e.where .. (": rmem: alloc(pid %d, 4096 bytes) failed: %s Hint: %s."):format(t.pid,
      os_part("ERROR_INVALID_PARAMETER"), hint), tostring(e))
  end)

  it("reads as one line: a freed region", function()
    local r = p:alloc(PAGE)
    r:free()
    local e = helpers.error_of(r.write, r, 0, "x")
    assert.equal(e.where .. (": rmem: write(pid %d, 0x%x) failed: REGION_FREED: the region was "
      .. "already freed. Hint: a region is released exactly once; allocate a new one."):format(
        t.pid, r.address), tostring(e))
    assert.is_nil(e.code)
  end)

  it("reads as one line: a pid that does not exist", function()
    local e = helpers.error_of(rmem.open, 0x7FFFFFF0)
    local code = helpers.windows and 87 or 3 -- ERROR_INVALID_PARAMETER, ESRCH
    assert.equal(e.where .. (": rmem: open(pid %d) failed: %s (%d): %s Hint: no "
      .. "process has this pid (it may have exited): rmem.processes() lists the running "
      .. "ones%s."):format(0x7FFFFFF0, helpers.no_pid_name, code, text(code),
        -- under Wine the hint adds that other Wine prefixes are invisible
        helpers.wine and (" (rmem runs under Wine %s, which shows only the processes of its own "
          .. "Wine prefix: run rmem with the target's WINEPREFIX)"):format(helpers.wine) or ""),
      tostring(e))
  end)

  it("is_error tells rmem errors from others", function()
    assert.is_false(rmem.is_error("bad argument"))
    assert.is_false(rmem.is_error({}))
    assert.is_false(rmem.is_error(nil))
    assert.is_true(rmem.is_error(helpers.error_of(rmem.open, 0x7FFFFFF0)))
  end)

  it("names unknown codes by number", function()
    local e = rmem.Error.from_os("read", "read: odd", 123456)
    assert.equal("error 123456", e.name)
    assert.equal("odd", e.message)
    assert.is_nil(e.hint)
    assert.matches("05%-errors_spec%.lua:%d+$", e.where)
    assert.equal(e.where .. ": rmem: read() failed: error 123456 (123456): odd.", tostring(e))
  end)
end)

describe("protection strings", function()
  local all = {
    none = 0x01, r = 0x02, rw = 0x04, wc = 0x08, x = 0x10, rx = 0x20, rwx = 0x40, xwc = 0x80,
    ["rw+guard"] = 0x104, ["r+nocache"] = 0x202, ["rwx+writecombine"] = 0x440,
    ["rw+guard+nocache"] = 0x304,
  }

  it("convert both ways", function()
    for s, v in pairs(all) do
      assert.equal(v, rmem.protect_value(s))
      assert.equal(s, rmem.protect_name(v))
    end
    assert.equal(0x20, rmem.protect_value(0x20))
    assert.is_nil(rmem.protect_name(0))
    assert.equal("0x40000020", rmem.protect_name(0x40000020))
  end)

  it("match the flag constants", function()
    local F = rmem.flags
    assert.equal(F.PAGE_EXECUTE_READWRITE, rmem.protect_value("rwx"))
    assert.equal(F.PAGE_READONLY | F.PAGE_GUARD, rmem.protect_value("r+guard"))
  end)

  it("reject unknown strings", function()
    for _, bad in ipairs { "", "rwz", "RW", "rw+", "rw+guardx", "+guard", "rw guard", "rw+Guard" } do
      assert.has_error(function() rmem.protect_value(bad) end,
        ("bad argument #1 to 'protect_value' (unknown protection '%s' (expected none, r, rw, "
          .. "wc, x, rx, rwx or xwc, optionally with +guard, +nocache or +writecombine; "
          .. "filters also take readable, writable or executable))"):format(bad))
    end
    assert.has_error(function() rmem.protect_value(true) end,
      "bad argument #1 to 'protect_value' (protection must be a string or a PAGE_* number, got boolean)")
  end)
end)
