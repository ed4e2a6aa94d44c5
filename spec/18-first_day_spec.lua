-- A first day with rmem (issue 9): errors that say where in the user's
-- terms, the names a modder uses, and the small things that bit.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local win_it, linux_it = helpers.win_it, helpers.linux_it
local PAGE = rmem.page_size

--- This spec file's "file:line" of the caller: messages must start with it.
local function here()
  local info = debug.getinfo(2, "Sl")
  return ("%s:%d"):format(info.short_src, info.currentline)
end

--- Asserts that s starts with prefix (plain text).
local function starts(prefix, s)
  assert.is_string(s)
  assert(s:sub(1, #prefix) == prefix, ("expected a message starting with\n  %s\ngot\n  %s")
    :format(prefix, s))
end

local function error_of(fn) return helpers.error_of(fn) end

describe("a first day with rmem", function()
  local p, t

  before_each(function() p, t = helpers.open_target() end)
  after_each(function() p:close() t:stop() end)

  describe("errors say where", function()
    it("an rmem.Error carries the user's file:line, and tostring starts with it", function()
      local e, at = error_of(function() p:read(0x10, 4) end), here()
      assert.is_true(rmem.is_error(e))
      assert.equal(at, e.where)
      starts(at .. ": rmem: read(pid " .. p.pid .. ", 0x10, 4 bytes) failed: ", tostring(e))
    end)

    it("also for an error raised deep inside rmem, and for a closed process", function()
      local r = p:alloc(PAGE)
      r:write_ptr(0, 0x10)
      local e, at = error_of(function() p:resolve(r.address, 0, 8) end), here()
      assert.equal(at, e.where)
      starts(at .. ": rmem: resolve(", tostring(e))
      p:close()
      e, at = error_of(function() p:read_u32(r.address) end), here()
      assert.equal("PROCESS_CLOSED", e.name)
      starts(at .. ": rmem: read(", tostring(e))
    end)

    it("argument errors name the method the user called, at the user's line", function()
      local e, at = error_of(function() p:read_i32("0x10") end), here()
      starts(at .. ": bad argument #1 to 'read_i32' (address must be an integer, got string)", e)
      e, at = error_of(function() p:call(0x1000, -30) end), here()
      if helpers.windows and p.bits == 64 then
        -- (Windows passes a signed argument through a stub: the OS refuses the
        -- thread to a process opened without PROCESS_CREATE_THREAD)
        assert.equal("call", e.op)
        starts(at .. ": rmem: call(pid " .. p.pid, tostring(e))
      else
        starts(at .. ": bad argument #2 to 'call' (arg must not be negative, got -30)", e)
      end
      e, at = error_of(function() p:write_u32(0x1000, 1, 5) end), here()
      starts(at .. ": bad argument #3 to 'write_u32' (options must be a table, got number)", e)
      e, at = error_of(function() p:scan_all("48 zz") end), here()
      starts(at .. ": bad argument #1 to 'scan_all' (bad token 'zz'", e)
      local r <close> = p:alloc(PAGE)
      e, at = error_of(function() r:read_i32(PAGE) end), here()
      starts(at .. ": bad argument #2 to 'read_i32' (range +0x1000..+0x1004 is outside", e)
    end)

    it("a dot for the colon says to call it with a colon", function()
      for _, case in ipairs {
        { "read_i32", function() p.read_i32(0x1000) end },
        { "read", function() p.read(0x1000, 4) end },
        { "write_u8", function() p.write_u8(0x1000, 1) end },
        { "query", function() p.query(0x1000) end },
        { "hexdump", function() p.hexdump(0x1000, 16) end },
      } do
        local e, at = error_of(case[2]), here()
        at = at:gsub(":%d+$", "")
        assert.matches("^" .. at:gsub("%p", "%%%0") .. ":%d+: bad argument #1 to '" .. case[1]
          .. "' %(rmem.Process expected, got number: call it with a colon, p:" .. case[1] .. "%(%.%.%.%)%)", e)
      end
      local r <close> = p:alloc(PAGE)
      local e, at = error_of(function() r.read_u32(0) end), here()
      starts(at .. ": bad argument #1 to 'read_u32' (rmem.Region expected, got number: "
        .. "call it with a colon, r:read_u32(...))", e)
    end)
  end)

  describe("small things", function()
    it("write_string with a field size refuses a text that does not fit, and writes nothing", function()
      local r <close> = p:alloc(PAGE)
      r:write(0, ("\xAA"):rep(16))
      local e, at = error_of(function() p:write_string(r.address, "Hero", 4) end), here()
      starts(at .. ": bad argument #2 to 'write_string' (the text and its NUL need 5 bytes, "
        .. "the field (max) holds 4)", e)
      assert.equal(("\xAA"):rep(16), r:read(0, 16))
      e, at = error_of(function() r:write_wstring(0, "Hero", 4) end), here()
      starts(at .. ": bad argument #2 to 'write_wstring' (the text and its NUL need 5 UTF-16 units", e)
      assert.equal(("\xAA"):rep(16), r:read(0, 16))
      assert.equal(5, p:write_string(r.address, "Hero", 5))
      assert.equal("Hero\0\xAA", r:read(0, 6))
      assert.equal(10, r:write_wstring(0, "Hero", 5))
      assert.equal("H\0e\0r\0o\0\0\0\xAA", r:read(0, 11))
      assert.equal(3, p:write_string(r.address, "ab", { force = true }))
    end)

    it("alloc(0) is an argument error", function()
      local e, at = error_of(function() p:alloc(0) end), here()
      starts(at .. ": bad argument #1 to 'alloc' (size must be positive, got 0)", e)
      e = error_of(function() p:alloc(0, { near = 0x10000000 }) end)
      assert.matches("bad argument #1 to 'alloc' %(size must be positive", e)
    end)

    it("the ERROR_TIMEOUT hint says the thread was stopped", function()
      local e = rmem.Error.new { op = "call", name = "ERROR_TIMEOUT", message = "timeout." }
      assert.matches("thread was stopped", e.hint)
      assert.is_nil(e.hint:find("runs on"))
    end)

    it("an unknown region state lists the valid ones", function()
      local e, at = error_of(function() p:regions { state = "comitted" } end), here()
      starts(at .. ": bad argument #1 to 'regions' (unknown state 'comitted' (expected commit, "
        .. "free, reserve))", e)
    end)

    linux_it("opening a process root may not open says what is really missing", function()
      local ok, e = pcall(rmem.open, 1)
      if ok then e:close() return end -- pid 1 is open to us here: nothing to explain
      assert.is_true(rmem.is_error(e))
      local status = helpers.read_file("/proc/self/status")
      if status:match("Uid:%s*%d+%s+(%d+)") == "0" then
        -- root is told neither to become root nor something it has
        assert.is_nil(e.hint:find("run as its user or as root", 1, true))
        assert.matches("CAP_", e.hint)
      end
    end)
  end)

  describe("names a modder uses", function()
    win_it("module and open find a name without its extension; an exact name wins", function()
      local k = p:module("kernel32")
      assert.is_table(k)
      assert.equal("kernel32.dll", k.name:lower())
      assert.same(k, p:module("KERNEL32.DLL"))
      local exe = p:module("rmem-target")
      assert.equal(helpers.target_name, exe.name)
      local q = rmem.open("rmem-target")
      assert.equal(t.pid, q.pid)
      q:close()
      assert.is_nil(p:module("kernel3"))
    end)

    it("AMBIGUOUS_NAME carries the pids", function()
      local t2 = helpers.start_target()
      local e = error_of(function() rmem.open(helpers.target_name) end)
      t2:stop()
      assert.equal("AMBIGUOUS_NAME", e.name)
      assert.is_table(e.pids)
      local seen = {}
      for _, pid in ipairs(e.pids) do seen[pid] = true end
      assert.is_true(seen[t.pid] and seen[t2.pid])
    end)

    win_it("under Wine, a process not found says other Wine prefixes are invisible", function()
      local e = error_of(function() rmem.open("no-such-game-anywhere") end)
      assert.equal("PROCESS_NOT_FOUND", e.name)
      if helpers.wine then
        assert.matches("Wine " .. helpers.wine:gsub("%p", "%%%0"), e.hint)
        assert.matches("WINEPREFIX", e.hint)
      else
        assert.is_nil(e.hint:find("Wine"))
      end
    end)

    linux_it("proc_address and symbols read .symtab: a real variable of an unstripped program", function()
      local q = helpers.start_target { tick = true }
      local tp <close> = rmem.open(q.pid)
      local exe = tp:module(helpers.target_name)
      local score, tick = tp:proc_address(exe, "score"), tp:proc_address(exe, "tick")
      assert.equal("integer", math.type(score))
      assert.equal("integer", math.type(tick))
      local syms = tp:symbols(exe)
      assert.equal(score, syms.score)
      assert.equal(tick, syms.tick)
      assert.equal("integer", math.type(syms.busy)) -- a static function: a local symbol
      assert.is_nil(syms[""])
      -- score is the variable tick() counts up every millisecond
      local first = tp:read_i32(score)
      local deadline = os.time() + 10
      while tp:read_i32(score) <= first and os.time() < deadline do end
      assert.is_true(tp:read_i32(score) > first)
      q:stop()
      -- the dynamic symbols as before, from the libraries
      local libc = p:module("libc.so.6")
      assert.equal(p:proc_address(libc, "getpid"), p:symbols(libc).getpid)
    end)

    win_it("symbols lists a DLL's exports, as proc_address finds them", function()
      local syms = p:symbols("kernel32")
      assert.equal("integer", math.type(syms.LoadLibraryW))
      assert.equal(p:proc_address("kernel32.dll", "LoadLibraryW"), syms.LoadLibraryW)
      assert.equal(p:proc_address("kernel32.dll", "HeapAlloc"), syms.HeapAlloc)
    end)

    it("scans and regions take protection groups: writable, readable, executable", function()
      local r <close> = p:alloc(PAGE, { protect = "rw" })
      local marker = "\x5A\xC3\x17\x99\xE2\x4B\x71\x0D"
      r:write(100, marker)
      local pattern = marker:gsub(".", function(c) return ("%02X "):format(c:byte()) end)
      local function found(group)
        return p:scan_all(pattern, { protect = group, from = r.address, to = r.address + PAGE })[1]
      end
      assert.equal(r.address + 100, found("writable"))
      assert.equal(r.address + 100, found("readable"))
      assert.is_nil(found("executable"))
      r:protect("rx")
      assert.equal(r.address + 100, found("executable"))
      assert.is_nil(found("writable"))
      local n = 0
      for info in p:regions { protect = "writable" } do
        n = n + 1
        assert.is_truthy(({ rw = true, wc = true, rwx = true, xwc = true })[info.protect])
      end
      assert.is_true(n > 0)
      for info in p:regions { protect = { "executable", "r" } } do
        assert.is_truthy(({ x = true, rx = true, rwx = true, xwc = true, r = true })[info.protect])
      end
    end)

    win_it("a Windows program's .data (wc under Windows) is writable to a scan", function()
      local exe = p:module(helpers.target_name)
      local rw, writable = 0, 0
      for info in p:regions { protect = "rw" } do
        if info.base >= exe.base and info.base < exe.base + exe.size then rw = rw + 1 end
      end
      for info in p:regions { protect = "writable" } do
        if info.base >= exe.base and info.base < exe.base + exe.size then writable = writable + 1 end
      end
      assert.is_true(writable >= 1 and writable >= rw)
    end)

    linux_it("map labels what the kernel names: [stack], [vdso]", function()
      local map = p:map()
      assert.matches("\n0x%x+ +0x%x+ +commit +rw +private +%[stack%]", map)
      assert.matches("%[vdso%]", map)
    end)

    win_it("map labels the process heap and the thread stacks", function()
      local map = p:map()
      assert.matches("process heap", map)
      assert.matches("stack %(thread %d+%)", map)
    end)
  end)
end)
