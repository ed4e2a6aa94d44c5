-- Hardening (issue 10): half-done forced writes, address 0, overflow in
-- pointer chains, non-overlapping scans across chunk borders, errors that
-- must be rmem errors, and a handle count that can fail under Wine.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local PAGE, GRAN = rmem.page_size, rmem.granularity
local ACCESS = { access = helpers.windows and "all" or "write" }

--- Maps a read-only view of a file (Linux: a shared mapping of a file opened
-- read-only; Windows: a view of a read-only section) at address in the
-- target, which no protect can make writable; returns the function that
-- unmaps it.
local function map_readonly(p, address, size)
  if helpers.windows then
    local k = p:module("kernel32.dll")
    local section = p:call_with(p:proc_address(k, "CreateFileMappingW"),
      { -1, 0, 0x02 --[[PAGE_READONLY]], 0, size, 0 })
    assert.is_true(section ~= 0, "CreateFileMappingW failed")
    local view = p:call_with(p:proc_address(k, "MapViewOfFileEx"),
      { section, 0x04 --[[FILE_MAP_READ]], 0, 0, size, address })
    p:call_with(p:proc_address(k, "CloseHandle"), { section })
    assert.equal(address, view)
    return function() p:call_with(p:proc_address(k, "UnmapViewOfFile"), { view }) end
  end
  local libc = p:module("libc.so.6")
  local fd = p:call_with(p:proc_address(libc, "open"), { helpers.target_path, 0 --[[O_RDONLY]] })
  assert.is_true(fd >= 0, "open failed")
  local MAP_SHARED, MAP_FIXED_NOREPLACE = 0x01, 0x100000
  local view = p:call_with(p:proc_address(libc, "mmap"),
    { address, size, 1 --[[PROT_READ]], MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0 })
  p:call_with(p:proc_address(libc, "close"), { fd })
  assert.equal(address, view)
  return function() p:call_with(p:proc_address(libc, "munmap"), { view, size }) end
end

--- A granule in the middle of the target's largest free region.
local function middle_of_free(p)
  local best
  for info in p:regions { state = "free" } do
    if not best or info.size > best.size then best = info end
  end
  return (best.base + best.size // 2) // GRAN * GRAN
end

describe("hardening (issue 10)", function()
  local t, p -- the target of the cases that need no target of their own
  setup(function()
    t = helpers.start_target()
    p = rmem.open(t.pid, ACCESS)
  end)
  teardown(function()
    p:close()
    t:stop()
  end)

  describe("a forced write that cannot unprotect every page (#3)", function()
    it("restores the pages it changed before raising, and writes nothing", function()
      -- a read-only page of ours, then a read-only file view right after it,
      -- in the middle of the largest free space, where the scratch memory of
      -- the calls that map the view does not go
      local r <close> = p:alloc(GRAN, { address = middle_of_free(p) })
      local base = r.address
      r:write(GRAN - 4, "KEEP")
      r:protect("r")
      local unmap = map_readonly(p, base + GRAN, GRAN)
      finally(unmap)
      local view_before = p:read(base + GRAN, 4)
      assert.are_not.equal("private", p:query(base + GRAN).type)

      local e = helpers.error_of(p.write, p, base + GRAN - 4, "CLOBBER!", { force = true })
      assert.is_true(rmem.is_error(e), tostring(e))
      assert.equal("write", e.op)
      assert.equal(base + GRAN, e.address)
      assert.equal("r", p:query(base + GRAN - PAGE).protect)
      assert.equal("r", p:query(base + GRAN).protect)
      assert.equal("KEEP", p:read(base + GRAN - 4, 4))
      assert.equal(view_before, p:read(base + GRAN, 4))
      -- the handle has every right it needs: the hint must not blame it
      assert.is_nil(tostring(e):find("access = \"read\"", 1, true), tostring(e))
      assert.matches("cannot be made writable", e.hint)
    end)

    it("still blames a handle opened for reading", function()
      local r <close> = p:alloc(PAGE, { protect = "r" })
      local q <close> = rmem.open(t.pid, { access = "read" })
      local e = helpers.error_of(q.write, q, r.address, "x", { force = true })
      assert.equal(helpers.name("ERROR_ACCESS_DENIED"), e.name)
      assert.matches("access = \"read\"", e.hint, 1, true)
      assert.equal("\0", p:read(r.address, 1))
    end)
  end)

  describe("p:with_protection() that cannot restore a piece", function()
    it("restores the others before it raises", function()
      local r <close> = p:alloc(2 * GRAN)
      r:protect(0, GRAN, "r")
      local e = helpers.error_of(p.with_protection, p, r.address, 2 * GRAN, "rwx", function()
        r:decommit(GRAN, GRAN) -- the second piece: its protection cannot come back
      end)
      assert.is_true(rmem.is_error(e), tostring(e))
      assert.equal("protect", e.op)
      assert.equal(r.address + GRAN, e.address)
      assert.equal("r", r:query(0).protect)
    end)
  end)

  describe("the host's handle count (#15)", function()
    it("counts handles (under Wine too) and sees one left open on purpose", function()
      local before = helpers.handle_count()
      assert.is_true(before > 0)
      local leaked = rmem.open(t.pid)
      assert.is_true(helpers.handle_count() > before, "an open process handle is not counted")
      leaked:close()
      assert.equal(before, helpers.handle_count())
    end)
  end)

  describe("alloc at address 0 (#6)", function()
    it("p:alloc(n, { address = 0 }) lets the system choose, as VirtualAllocEx's NULL", function()
      local r <close> = p:alloc(PAGE + 1, { address = 0 })
      assert.is_true(r.address >= 0x10000)
      assert.equal(2 * PAGE, r.size)
      assert.same({ "commit", "commit" }, helpers.page_states(p, r.address, r.size))
      r:write(PAGE, "ok")
      assert.equal("ok", p:read(r.address + PAGE, 2))
    end)

    it("near = 0 stays within the reach asked for, or says there is no space", function()
      local reach = 1 << 20
      local ok, r = pcall(p.alloc, p, PAGE, { near = 0, max_distance = reach })
      if ok then
        assert.is_true(r.address > 0 and r.address + r.size <= reach, tostring(r))
        assert.equal(PAGE, r.size)
        assert.equal("commit", p:query(r.address).state)
        r:free()
      else
        assert.equal("NO_SPACE_NEAR", r.name, tostring(r))
      end
    end)

    it("a reach past the end of the address space is the whole space", function()
      local r <close> = p:alloc(PAGE, { near = math.maxinteger, max_distance = math.maxinteger })
      assert.equal(PAGE, r.size)
      assert.equal("commit", p:query(r.address).state)
    end)

    it("a size no address space holds has no space near anything", function()
      local anchor <close> = p:alloc(PAGE)
      local e = helpers.error_of(p.alloc, p, math.maxinteger, { near = anchor.address })
      assert.equal("NO_SPACE_NEAR", e.name)
    end)
  end)

  describe("p:resolve() overflow (#8)", function()
    local r
    setup(function()
      r = p:alloc(PAGE)
      r:write_ptr(0, r.address + 16) -- a chain inside the page
      r:write_ptr(16, r.address + 32)
    end)
    teardown(function() r:free() end)

    local function overflow_at(step, ...)
      local e = helpers.error_of(p.resolve, p, ...)
      assert.is_true(rmem.is_error(e), tostring(e))
      assert.equal("resolve", e.op)
      assert.equal("ADDRESS_OVERFLOW", e.name)
      assert.equal(step, e.step)
      assert.matches("step " .. step, tostring(e), 1, true)
      return e
    end

    it("an offset that carries past the largest address names the step", function()
      overflow_at(1, r.address, math.maxinteger, 0)
      overflow_at(2, r.address, 0, math.maxinteger)
      overflow_at(1, r.address, math.maxinteger)
    end)

    it("below address 0 too", function()
      overflow_at(1, r.address, -(r.address + 17))
      assert.equal(0, p:resolve(r.address, -(r.address + 16)))
    end)

    it("a pointer that is not an address (top bit set) is caught at its step", function()
      r:write_u64(8, -16) -- 0xFFFFFFFFFFFFFFF0
      local e = overflow_at(1, r.address + 8, 0)
      assert.equal(-16, e.address)
    end)

    it("a pointer read that would run past the end of the address space", function()
      local e = overflow_at(2, r.address, math.maxinteger - r.address - 16 - 3, 0)
      assert.equal(math.maxinteger - 3, e.address)
    end)

    helpers.linux_it("a 32-bit target's chain ends at 4 GiB", function()
      local t32 = helpers.start_target { bits = 32 }
      finally(function() t32:stop() end)
      local q <close> = rmem.open(t32.pid)
      local r32 <close> = q:alloc(PAGE)
      r32:write_ptr(0, 0xFFFFFFF0)
      local e = helpers.error_of(q.resolve, q, r32.address, 0x10)
      assert.equal("ADDRESS_OVERFLOW", e.name)
      assert.equal(1, e.step)
      assert.equal(0xFFFFFFFF, q:resolve(r32.address, 0xF))
    end)

    it("the module form", function()
      local e = helpers.error_of(p.resolve, p, helpers.target_name .. "-0x7fffffffffffffff")
      assert.equal("ADDRESS_OVERFLOW", e.name)
      assert.equal(0, e.step)
      assert.matches("the base", e.message, 1, true)
    end)
  end)

  describe("non-overlapping scans across chunk borders (#10)", function()
    local r
    local SIZE = 3 << 20
    setup(function()
      r = p:alloc(SIZE)
      r:write(0, ("\xAB"):rep(SIZE))
    end)
    teardown(function() r:free() end)

    --- Fails unless hits are r.address, + step, + 2 * step, ...
    local function every(step, hits)
      for i = 1, #hits do
        if hits[i] ~= r.address + step * (i - 1) then
          error(("match %d at +0x%x, expected +0x%x"):format(i, hits[i] - r.address, step * (i - 1)))
        end
      end
    end

    it("finds every match of a 3 MiB run, each where one long scan would", function()
      local hits = p:scan_all("AB AB AB", { overlapping = false, from = r.address, to = r.address + SIZE })
      assert.equal(SIZE // 3, #hits)
      every(3, hits)
    end)

    it("with a limit and an alignment too", function()
      local hits = p:scan_all("AB AB AB AB AB", { overlapping = false, from = r.address,
        to = r.address + SIZE, align = 2, limit = 300000 })
      -- each next even start at or after the last match's end: every 6 bytes
      assert.equal(300000, #hits)
      every(6, hits)
    end)
  end)

  describe("errors that reach the user are rmem's (#13)", function()
    it("a pattern longer than a scan reads at a time is an argument error of scan_all", function()
      local long = { bytes = ("\0"):rep((1 << 20) + 2), mask = ("x"):rep((1 << 20) + 2) }
      local e = helpers.error_of(p.scan_all, p, long)
      assert.matches("^.-bad argument #1 to 'scan_all' %(the pattern is 1048578 bytes long", e)
    end)

    it("p:unpack with an integer wider than Lua's is an argument error of unpack", function()
      local r <close> = p:alloc(PAGE)
      r:write(0, ("\x7F"):rep(16))
      local e = helpers.error_of(p.unpack, p, r.address, "<i16")
      assert.matches("^.-bad argument #2 to 'unpack' %(format '<i16' at 0x%x+: 16%-byte integer", e)
      e = helpers.error_of(r.unpack, r, 0, "<i16")
      assert.matches("bad argument #2 to 'unpack'", e, 1, true)
      r:write(0, ("\xFF"):rep(16)) -- -1 fits
      assert.equal(-1, p:unpack(r.address, "<i16"))
      assert.equal(1, select("#", p:unpack(r.address, "<i16")))
    end)

    it("a process object a finalizer keeps says it is closed, and raises PROCESS_CLOSED", function()
      local kept
      -- older than the process object: finalized after it and its core handle
      local keeper = setmetatable({}, { __gc = function(o) kept = o.p end })
      keeper.p = rmem.open(t.pid)
      keeper = nil -- luacheck: ignore 311 (dropped for the collector)
      collectgarbage()
      collectgarbage()
      assert.is_not_nil(kept)
      assert.is_true(kept:is_closed())
      assert.matches("closed", tostring(kept))
      for _, call in ipairs { { "read", 0x10000, 1 }, { "is_alive" }, { "query", 0x10000 } } do
        local e = helpers.error_of(kept[call[1]], kept, table.unpack(call, 2))
        assert.is_true(rmem.is_error(e), tostring(e))
        assert.equal("PROCESS_CLOSED", e.name)
        assert.matches("finalizer", e.hint)
      end
      kept:close() -- still fine
    end)
  end)

  describe("addresses, sizes and tables from the user in the Lua layer (#9)", function()
    it("a module table needs the fields its method uses", function()
      local m = p:module(helpers.target_name)
      assert.has_error(function() p:scan_all("90", { module = { base = m.base } }) end,
        "bad argument #2 to 'scan_all' (a module table needs an integer base and size, as p:module() gives)")
      assert.has_error(function() p:scan_all("90", { module = { base = math.maxinteger, size = 2 } }) end,
        "bad argument #2 to 'scan_all' (a module table needs an integer base and size, as p:module() gives)")
      assert.has_error(function() p:proc_address({ name = "x" }, "f") end,
        "bad argument #1 to 'proc_address' (a module table needs an integer base"
          .. (helpers.linux and " and path" or "") .. ", as p:module() gives)")
      assert.is_table(p:scan_all("90", { module = { base = m.base, size = 0 } }))
    end)

    helpers.linux_it("an ELF file cut short is an rmem.Error of proc_address", function()
      local path = os.tmpname()
      finally(function() os.remove(path) end)
      local f = assert(io.open(path, "wb"))
      f:write("\x7FELF\2\1\1", ("\0"):rep(20))
      f:close()
      local m = p:module(helpers.target_name)
      local e = helpers.error_of(p.proc_address, p, { base = m.base, size = m.size, path = path }, "f")
      assert.is_true(rmem.is_error(e), tostring(e))
      assert.equal("NOT_ELF", e.name)
      assert.matches(path, e.message, 1, true)
    end)

    helpers.linux_it("call_with never cuts a function or an argument to a 32-bit target's 32 bits", function()
      local t32 = helpers.start_target { bits = 32 }
      finally(function() t32:stop() end)
      local q <close> = rmem.open(t32.pid)
      local getpid = q:proc_address("libc.so.6", "getpid")
      assert.equal(t32.pid, q:call_with(getpid, {}))
      assert.has_error(function() q:call_with(getpid + (1 << 32), {}) end, ("bad argument #1 to "
        .. "'call_with' (0x%x is past the 4 GiB a 32-bit target can address)"):format(getpid + (1 << 32)))
      assert.has_error(function() q:call_with(getpid, { 1, 1 << 32 }) end, "bad argument #2 to "
        .. "'call_with' (args[2] is 0x100000000: a 32-bit target takes 32-bit arguments)")
      assert.equal(t32.pid, q:call_with(getpid, { -1, 0xFFFFFFFF }))
    end)

    it("rmem.hex refuses a width string.format cannot print", function()
      assert.equal("0x" .. ("0"):rep(97) .. "1F", rmem.hex(0x1F, 99))
      assert.has_error(function() rmem.hex(1, 100) end, "bad argument #2 to 'hex' (width must be 0 to 99, got 100)")
      assert.has_error(function() rmem.hex(1, -5) end, "bad argument #2 to 'hex' (width must be 0 to 99, got -5)")
    end)
  end)
end)
