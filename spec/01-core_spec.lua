-- rmem.core: the raw methods and the rules of the seed documents
-- (VirtualFreeEx: release needs the base and size 0; decommit covers every
-- page holding a byte of the range; base + size 0 decommits everything).
local core = require "rmem.core"
local helpers = require "spec.helpers"

local F = core.flags
local PAGE = core.page_size
local RESERVE_COMMIT = F.MEM_RESERVE | F.MEM_COMMIT

describe("rmem.core", function()
  local t, h

  before_each(function()
    t = helpers.start_target()
    h = assert(core.open(t.pid))
  end)

  after_each(function()
    pcall(h.close, h) -- some cases close it themselves
    t:stop()
  end)

  local function state(addr)
    return assert(h:query(addr)).state
  end

  describe("constants", function()
    it("has the Win32 numbers", function()
      assert.equal(0x1000, F.MEM_COMMIT)
      assert.equal(0x2000, F.MEM_RESERVE)
      assert.equal(0x4000, F.MEM_DECOMMIT)
      assert.equal(0x8000, F.MEM_RELEASE)
      assert.equal(0x80000, F.MEM_RESET)
      assert.equal(0x100000, F.MEM_TOP_DOWN)
      assert.equal(0x200000, F.MEM_WRITE_WATCH)
      assert.equal(0x400000, F.MEM_PHYSICAL)
      assert.equal(0x20000000, F.MEM_LARGE_PAGES)
      assert.equal(0x10000, F.MEM_FREE)
      assert.equal(0x20000, F.MEM_PRIVATE)
      assert.equal(0x04, F.PAGE_READWRITE)
      assert.equal(0x20, F.PAGE_EXECUTE_READ)
      assert.equal(0x100, F.PAGE_GUARD)
      assert.equal(0x0008, F.PROCESS_VM_OPERATION)
      assert.equal(0x1FFFFF, F.PROCESS_ALL_ACCESS)
    end)

    it("knows its platform, page size and granularity", function()
      assert.equal(helpers.platform, core.platform)
      assert.equal(4096, PAGE)
      if helpers.windows then assert.equal(65536, core.granularity) end
    end)
  end)

  describe("h:free()", function()
    it("releases with the allocation base and size 0", function()
      local a = assert(h:alloc(nil, 2 * PAGE, RESERVE_COMMIT, F.PAGE_READWRITE))
      assert.equal(F.MEM_COMMIT, state(a))
      assert.is_true(h:free(a, 0, F.MEM_RELEASE))
      assert.equal(F.MEM_FREE, state(a))
    end)

    local EINVAL = helpers.code("ERROR_INVALID_PARAMETER")

    it("returns nil, msg, 87 (EINVAL) for MEM_RELEASE with a non-zero size", function()
      local a = assert(h:alloc(nil, 2 * PAGE, RESERVE_COMMIT, F.PAGE_READWRITE))
      local ok, msg, code = h:free(a, 2 * PAGE, F.MEM_RELEASE)
      assert.is_nil(ok)
      assert.matches("^free: ", msg)
      assert.equal(EINVAL, code)
      assert.equal(F.MEM_COMMIT, state(a)) -- nothing was released
      assert.is_true(h:free(a, 0, F.MEM_RELEASE))
    end)

    for _, case in ipairs {
      { "free type 0", 0 },
      { "MEM_DECOMMIT | MEM_RELEASE", F.MEM_DECOMMIT | F.MEM_RELEASE },
    } do
      it("returns nil, msg, 87 (EINVAL) for " .. case[1], function()
        local a = assert(h:alloc(nil, PAGE, RESERVE_COMMIT, F.PAGE_READWRITE))
        local ok, msg, code = h:free(a, 0, case[2])
        assert.is_nil(ok)
        assert.matches("^free: ", msg)
        assert.equal(EINVAL, code)
        assert.equal(F.MEM_COMMIT, state(a)) -- nothing was released
        assert.is_true(h:free(a, 0, F.MEM_RELEASE))
      end)
    end

    it("fails for an address inside the allocation", function()
      local a = assert(h:alloc(nil, 2 * PAGE, RESERVE_COMMIT, F.PAGE_READWRITE))
      local ok, _, code = h:free(a + PAGE, 0, F.MEM_RELEASE)
      assert.is_nil(ok)
      assert.equal(helpers.code("ERROR_INVALID_ADDRESS"), code)
      assert.equal(F.MEM_COMMIT, state(a + PAGE))
      assert.is_true(h:free(a, 0, F.MEM_RELEASE))
    end)

    it("releases an allocation whose pages are in mixed states", function()
      local a = assert(h:alloc(nil, 4 * PAGE, F.MEM_RESERVE, F.PAGE_READWRITE))
      assert(h:alloc(a + PAGE, PAGE, F.MEM_COMMIT, F.PAGE_READWRITE))
      assert(h:alloc(a + 3 * PAGE, PAGE, F.MEM_COMMIT, F.PAGE_READONLY))
      assert.same({ F.MEM_RESERVE, F.MEM_COMMIT, F.MEM_RESERVE, F.MEM_COMMIT },
        { state(a), state(a + PAGE), state(a + 2 * PAGE), state(a + 3 * PAGE) })
      assert.is_true(h:free(a, 0, F.MEM_RELEASE))
      for i = 0, 3 do assert.equal(F.MEM_FREE, state(a + i * PAGE)) end
    end)
  end)

  describe("h:decommit()", function()
    it("decommits both pages of a 2-byte range straddling a page boundary", function()
      local a = assert(h:alloc(nil, 4 * PAGE, RESERVE_COMMIT, F.PAGE_READWRITE))
      assert.is_true(h:decommit(a + 2 * PAGE - 1, 2))
      assert.same({ F.MEM_COMMIT, F.MEM_RESERVE, F.MEM_RESERVE, F.MEM_COMMIT },
        { state(a), state(a + PAGE), state(a + 2 * PAGE), state(a + 3 * PAGE) })
      assert.is_true(h:free(a, 0, F.MEM_RELEASE))
    end)

    it("decommits the whole allocation for its base and size 0", function()
      local a = assert(h:alloc(nil, 3 * PAGE, RESERVE_COMMIT, F.PAGE_READWRITE))
      assert.is_true(h:decommit(a, 0))
      for i = 0, 2 do assert.equal(F.MEM_RESERVE, state(a + i * PAGE)) end
      local info = h:query(a)
      assert.equal(a, info.allocation_base)
      assert.equal(0, info.protect) -- reserved pages have no protection
      assert.is_true(h:free(a, 0, F.MEM_RELEASE))
    end)

    it("does not fail on pages that are not committed", function()
      local a = assert(h:alloc(nil, 2 * PAGE, F.MEM_RESERVE, F.PAGE_READWRITE))
      assert.is_true(h:decommit(a, 2 * PAGE))
      assert.equal(F.MEM_RESERVE, state(a))
      assert.is_true(h:free(a, 0, F.MEM_RELEASE))
    end)
  end)

  describe("h:alloc()", function()
    it("returns nil, msg, 87 (EINVAL) for size 0", function()
      local a, msg, code = h:alloc(nil, 0, RESERVE_COMMIT, F.PAGE_READWRITE)
      assert.is_nil(a)
      assert.matches("^alloc: ", msg)
      assert.equal(helpers.code("ERROR_INVALID_PARAMETER"), code)
    end)

    it("commits pages that read as zeros and keep what is written", function()
      local a = assert(h:alloc(nil, PAGE, RESERVE_COMMIT, F.PAGE_READWRITE))
      assert.equal(0, a % core.granularity)
      assert.equal(("\0"):rep(16), h:read(a, 16))
      assert.equal(5, h:write(a + 100, "hello"))
      assert.equal("hello", h:read(a + 100, 5))
      local info = h:query(a)
      assert.same({ base = a, size = PAGE, allocation_base = a,
        allocation_protect = F.PAGE_READWRITE, state = F.MEM_COMMIT,
        protect = F.PAGE_READWRITE, type = F.MEM_PRIVATE }, info)
      assert.is_true(h:free(a, 0, F.MEM_RELEASE))
    end)
  end)

  describe("h:protect()", function()
    it("returns the old protection as a number", function()
      local a = assert(h:alloc(nil, PAGE, RESERVE_COMMIT, F.PAGE_READWRITE))
      assert.equal(F.PAGE_READWRITE, h:protect(a, PAGE, F.PAGE_READONLY))
      assert.equal(F.PAGE_READONLY, h:query(a).protect)
      assert.is_true(h:free(a, 0, F.MEM_RELEASE))
    end)
  end)

  describe("handles", function()
    it("shows the pid, then closed, in tostring", function()
      assert.equal("rmem.core.handle (pid " .. t.pid .. ")", tostring(h))
      assert.is_true(h:close())
      assert.equal("rmem.core.handle (closed)", tostring(h))
    end)

    it("raises on any use after close", function()
      h:close()
      assert.has_error(function() h:read(0x10000, 1) end, "attempt to use a closed process handle")
      assert.has_error(function() h:close() end, "attempt to use a closed process handle")
    end)

    it("is closed by <close> and by the collector without error", function()
      local outer
      do
        local h2 <close> = assert(core.open(t.pid))
        assert.equal(t.pid, h2:pid())
        outer = h2
      end
      assert.equal("rmem.core.handle (closed)", tostring(outer))
      local weak = setmetatable({ assert(core.open(t.pid)) }, { __mode = "v" })
      collectgarbage()
      collectgarbage()
      assert.is_nil(weak[1])
    end)

    it("returns nil, msg, code for a pid that does not exist", function()
      local h2, msg, code = core.open(0x7FFFFFF0)
      assert.is_nil(h2)
      assert.matches("^open: ", msg)
      assert.is_number(code)
    end)

    it("reports exit and exit code", function()
      assert.is_true(h:is_alive())
      assert.is_nil(h:exit_code())
      t:stop(42)
      assert.is_false(h:is_alive())
      assert.equal(42, h:exit_code())
    end)

    it("gives a handle on the current process", function()
      local me = assert(core.self())
      local a = assert(me:alloc(nil, PAGE, RESERVE_COMMIT, F.PAGE_READWRITE))
      assert.equal(3, me:write(a, "abc"))
      assert.equal("abc", me:read(a, 3))
      assert.is_true(me:free(a, 0, F.MEM_RELEASE))
      me:close()
    end)

    it("lists processes, the target among them", function()
      local found
      for _, info in ipairs(core.processes()) do
        if info.pid == t.pid then found = info end
      end
      assert.is_table(found)
      assert.equal(helpers.target_name, found.name)
      assert.is_number(found.parent_pid)
    end)
  end)

  describe("arguments", function()
    it("raises for wrong types and ranges", function()
      assert.has_error(function() h:alloc(nil, -1, RESERVE_COMMIT, 4) end,
        "bad argument #2 to 'alloc' (size must not be negative)")
      assert.has_error(function() h:read(-5, 1) end,
        "bad argument #1 to 'read' (address must not be negative)")
      assert.has_error(function() h:read(math.maxinteger, 2) end,
        "bad argument #2 to 'read' (range wraps past the end of the address space)")
      assert.has_error(function() h:read(0x10000, 1.5) end,
        "bad argument #2 to 'read' (number has no integer representation)")
      assert.has_error(function() h:free(0x10000, 0, 2 ^ 40) end,
        "bad argument #3 to 'free' (must be a 32-bit mask)")
      assert.has_error(function() h:write(0x10000, {}) end,
        "bad argument #2 to 'write' (string expected, got table)")
      assert.has_error(function() core.open("x") end,
        "bad argument #1 to 'open' (number expected, got string)")
    end)
  end)
end)
