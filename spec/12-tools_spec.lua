-- Modules, pointer chains, pattern scans and hex dumps.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local PAGE = rmem.page_size

describe("tools", function()
  local p, t

  before_each(function() p, t = helpers.open_target() end)
  after_each(function() p:close() t:stop() end)

  describe("p:modules() and p:module()", function()
    it("lists the target's executable first-class, with name, base, size and path", function()
      local mods = p:modules()
      local exe
      for _, m in ipairs(mods) do
        assert.is_string(m.path)
        assert.is_true(m.size > 0)
        if m.name == helpers.target_name then exe = m end
      end
      assert.is_table(exe)
      assert.matches(helpers.target_name:gsub("%p", "%%%0") .. "$", exe.path)
      local magic = helpers.windows and "MZ" or "\127ELF"
      assert.equal(magic, p:read(exe.base, #magic))
      assert.equal("image", p:query(exe.base).type)
    end)

    it("finds a module by name (case-insensitively on Windows), nil when there is none", function()
      local m = p:module(helpers.target_name)
      assert.equal(helpers.target_name, m.name)
      if helpers.windows then
        assert.same(m, p:module(helpers.target_name:upper()))
        assert.is_table(p:module("KERNEL32.DLL"))
      else
        assert.is_nil(p:module(helpers.target_name:upper()))
      end
      assert.is_nil(p:module("no-such-module"))
    end)
  end)

  describe("p:resolve()", function()
    it("follows a chain of pointers and offsets", function()
      local r <close> = p:alloc(PAGE)
      r:write_ptr(0x10, r.address + 0x100)
      r:write_ptr(0x148, r.address + 0x200)
      assert.equal(r.address + 0x10, p:resolve(r.address + 0x10))
      assert.equal(r.address + 0x148, p:resolve(r.address + 0x10, 0x48))
      assert.equal(r.address + 0x208, p:resolve(r.address + 0x10, 0x48, 8))
    end)

    it("starts from module+offset", function()
      local m = p:module(helpers.target_name)
      assert.equal(m.base + 0x40, p:resolve(helpers.target_name .. "+0x40"))
      assert.equal(m.base + 16, p:resolve(helpers.target_name .. " + 16"))
      local e = helpers.error_of(p.resolve, p, "nope.dll+0x10")
      assert.equal("MODULE_NOT_FOUND", e.name)
    end)

    it("names the step that failed and the address it could not read", function()
      local r <close> = p:alloc(PAGE)
      r:write_ptr(0, 0x1000) -- points into the never-mapped first page
      local e = helpers.error_of(p.resolve, p, r.address, 0, 8)
      assert.is_true(rmem.is_error(e))
      assert.equal("resolve", e.op)
      assert.equal(2, e.step)
      assert.equal(0x1000, e.address)
      assert.matches("step 2: cannot read the pointer at 0x1000", e.message)
      assert.matches("step 2", tostring(e))
    end)
  end)

  describe("p:scan()", function()
    it("finds every match, ascending, on chunk borders too", function()
      local size = 3 * 1024 * 1024
      local r <close> = p:alloc(size)
      local sig = "\xDE\xC0\xAD\x0B\x24\x5A\x01"
      local at = { 100, (1 << 20) - 3, (2 << 20) - 1, size - #sig }
      for _, off in ipairs(at) do r:write(off, sig) end
      local hits = p:scan_all("DE C0 AD 0B 24 5A 01", { from = r.address, to = r.address + size })
      local want = {}
      for i, off in ipairs(at) do want[i] = r.address + off end
      assert.same(want, hits)
      -- the whole address space, default options: the same four (and no more)
      local all = p:scan_all("DE C0 AD 0B 24 5A 01")
      local mine = {}
      for _, a in ipairs(all) do
        if a >= r.address and a < r.address + size then mine[#mine + 1] = a end
      end
      assert.same(want, mine)
    end)

    it("treats wildcards, nibble wildcards and whitespace as promised", function()
      local r <close> = p:alloc(PAGE)
      r:write(0, "\x48\x8B\x05\x12\x34\x89\xAF")
      local range = { from = r.address, to = r.address + PAGE }
      assert.same({ r.address }, p:scan_all("48 8B ?? ? 34 89 AF", range))
      assert.same({ r.address }, p:scan_all("  4? ?B   05\t12 3? ?9 Af  ", range))
      assert.same({}, p:scan_all("48 8B 05 12 34 89 A0", range))
      assert.same({ r.address }, p:scan_all({ bytes = "\x48\x8B\0\0\x34", mask = "xx??x" }, range))
    end)

    it("overlapping, limit and align", function()
      local r <close> = p:alloc(PAGE)
      r:write(0, ("\x90"):rep(8))
      local range = { from = r.address, to = r.address + 8 }
      assert.equal(7, #p:scan_all("90 90", range))
      range.overlapping = false
      assert.same({ r.address, r.address + 2, r.address + 4, r.address + 6 }, p:scan_all("90 90", range))
      range.overlapping, range.limit = nil, 2
      assert.same({ r.address, r.address + 1 }, p:scan_all("90 90", range))
      range.limit, range.align = nil, 4
      assert.same({ r.address, r.address + 4 }, p:scan_all("90 90", range))
    end)

    it("reports progress, and stops when progress returns false", function()
      local size = 3 * 1024 * 1024
      local r <close> = p:alloc(size)
      for off = 0, size - 1, 1024 * 1024 do r:write(off + 8, "\x5A\xA5\x24\x42") end
      local range = { from = r.address, to = r.address + size }
      local calls = {}
      range.progress = function(done, total) calls[#calls + 1] = { done, total } end
      assert.equal(3, #p:scan_all("5A A5 24 42", range))
      assert.equal(3, #calls)
      assert.same({ size, size }, calls[3])
      for i = 2, 3 do assert.is_true(calls[i][1] > calls[i - 1][1]) end
      -- cancelled after the first chunk: its match, and no more chunks read
      local n = 0
      range.progress = function() n = n + 1 return false end
      assert.same({ r.address + 8 }, p:scan_all("5A A5 24 42", range))
      assert.equal(1, n)
      range.progress = 5
      assert.has_error(function() p:scan_all("5A", range) end,
        "bad argument #2 to 'scan_all' (progress must be a function, got number)")
    end)

    it("a region freed mid-scan is skipped without failing the scan", function()
      -- a is longer than a chunk, so b is read after the first progress call
      local a, b = p:alloc(2 * 1024 * 1024), p:alloc(2 * 1024 * 1024)
      if b.address < a.address then a, b = b, a end
      a:write(16, "\x5A\xA5\x24\x43")
      b:write(16, "\x5A\xA5\x24\x43")
      local range = { from = a.address, to = b.address + b.size }
      assert.same({ a.address + 16, b.address + 16 }, p:scan_all("5A A5 24 43", range))
      local gone = b.address
      range.progress = function() if not b:is_freed() then b:free() end end
      assert.same({ a.address + 16 }, p:scan_all("5A A5 24 43", range))
      assert.equal("free", p:query(gone).state)
      a:free()
    end)

    it("skips what is not committed and readable, and filters by protection", function()
      local r <close> = p:alloc(4 * PAGE, { commit = false })
      r:commit(0, PAGE)
      r:commit(2 * PAGE, 2 * PAGE)
      r:write(10, "\xAB\xCD\xEF\x13\x57")
      r:write(2 * PAGE + 10, "\xAB\xCD\xEF\x13\x57")
      r:write(3 * PAGE + 10, "\xAB\xCD\xEF\x13\x57")
      r:protect(3 * PAGE, PAGE, "none")
      local range = { from = r.address, to = r.address + 4 * PAGE }
      assert.same({ r.address + 10, r.address + 2 * PAGE + 10 }, p:scan_all("AB CD EF 13 57", range))
      r:protect(0, PAGE, "r")
      range.protect = "r"
      assert.same({ r.address + 10 }, p:scan_all("AB CD EF 13 57", range))
    end)

    it("scans one module", function()
      local m = p:module(helpers.target_name)
      local magic = helpers.windows and "4D 5A" or "7F 45 4C 46"
      local hits = p:scan_all(magic, { module = helpers.target_name, limit = 1 })
      assert.same({ m.base }, hits)
      assert.same(hits, p:scan_all(magic, { module = m, limit = 1 }))
    end)

    it("stops when the loop breaks, and the iterator needs no cleanup", function()
      local r <close> = p:alloc(PAGE)
      r:write(0, ("\x77\x66"):rep(100))
      local n = 0
      for _ in p:scan("77 66", { from = r.address, to = r.address + PAGE }) do
        n = n + 1
        if n == 3 then break end
      end
      assert.equal(3, n)
    end)

    it("a target that exits mid-scan ends it with the error, not with fewer matches", function()
      local r <close> = p:alloc(3 * 1024 * 1024)
      r:keep()
      local it = p:scan("12 34 56 78", { from = r.address, to = r.address + r.size })
      t:stop(0)
      local e = helpers.error_of(it)
      assert.is_true(rmem.is_error(e))
      assert.equal("the process has exited (exit code 0)", e.hint)
    end)

    it("rejects malformed patterns, naming the token", function()
      for pattern, msg in pairs {
        ["48 8B GG"] = "bad token 'GG' at position 7",
        ["488B"] = "bad token '488B' at position 1",
        ["4"] = "bad token '4' at position 1",
        ["48 ???"] = "bad token '???' at position 4",
        [""] = "the pattern is empty",
        ["   "] = "the pattern is empty",
      } do
        local ok, err = pcall(p.scan_all, p, pattern)
        assert.is_false(ok)
        assert.matches("bad argument #1 to 'scan_all' %(" .. msg:gsub("%p", "%%%0"), err)
      end
      assert.has_error(function() p:scan_all({ bytes = "ab", mask = "x" }) end)
      assert.has_error(function() p:scan_all("90", { module = "no-such-module" }) end,
        "bad argument #2 to 'scan_all' (no module named 'no-such-module')")
    end)
  end)

  describe("for people at a prompt", function()
    it("region infos, modules and the memory map read at a glance", function()
      local r <close> = p:alloc(2 * PAGE)
      assert.equal(("RegionInfo 0x%016X +0x2000 commit rw private"):format(r.address),
        tostring(r:query()))
      local m = p:module(helpers.target_name)
      assert.equal(("Module %s 0x%016X +0x%X"):format(m.name, m.base, m.size), tostring(m))
      local map = p:map()
      assert.matches("^address +size +state +protect +type +module\n", map)
      assert.truthy(map:find(("0x%016X 0x2000       commit   rw             private  \n")
        :format(r.address), 1, true))
      assert.truthy(map:find(("0x%016X 0x%-10X commit   r"):format(m.base, p:query(m.base).size),
        1, true))
      assert.truthy(map:find(helpers.target_name, 1, true))
    end)
  end)

  describe("hex and hexdump", function()
    it("rmem.hex formats addresses", function()
      assert.equal("0x7FF6A0010000", rmem.hex(0x7FF6A0010000))
      assert.equal("0x0000000000010000", rmem.hex(0x10000, 16))
    end)

    it("p:hexdump gives classic hex + ASCII lines", function()
      local r <close> = p:alloc(PAGE)
      r:write(0, "Hello, rmem!\0\1\2\255" .. "tail")
      assert.equal(("%016X  48 65 6C 6C 6F 2C 20 72  6D 65 6D 21 00 01 02 FF  |Hello, rmem!....|\n"
        .. "%016X  74 61 69 6C                                       |tail|"):format(
          r.address, r.address + 16), p:hexdump(r.address, 20))
    end)
  end)
end)

describe("p:call()", function()
  -- return arg + 1, in each platform's calling convention
  local code = helpers.windows and "\x48\x8D\x41\x01\xC3" or "\x48\x8D\x47\x01\xC3"
  local code32 = "\x8B\x44\x24\x04\x83\xC0\x01\xC3"

  -- (the regions are not <close>: the targets are stopped first, and
  -- their memory goes with them)
  local function prepare(p, bytes)
    local r = p:alloc(rmem.page_size, { protect = "rwx" })
    r:write(0, bytes)
    return r
  end

  it("runs a function in the target and returns its result", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid, { access = "all" })
    local r = prepare(p, code)
    assert.equal(42, p:call(r.address, 41))
    assert.equal(1, p:call(r.address))
    assert.equal(100, p:call(r.address, 99, { timeout = 2000 }))
    t:stop()
  end)

  helpers.win_it("needs { access = \"all\" } on Windows", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid)
    local r = prepare(p, code)
    local e = helpers.error_of(p.call, p, r.address, 1)
    assert.equal("ERROR_ACCESS_DENIED", e.name)
    assert.matches("access = \"all\"", e.hint)
    t:stop()
  end)

  it("a function that hangs is stopped at the timeout, and the target carries on", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid, { access = "all" })
    local r = prepare(p, "\xEB\xFE") -- jmp $
    local e = helpers.error_of(p.call, p, r.address, 0, { timeout = 100 })
    assert.equal(helpers.windows and "ERROR_TIMEOUT" or "ETIMEDOUT", e.name)
    r:write(0, code)
    assert.equal(8, p:call(r.address, 7))
    t:stop()
  end)

  helpers.linux_it("a function that hangs or faults: an error, and the target carries on", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid)
    local r = prepare(p, "\xEB\xFE") -- jmp $
    local e = helpers.error_of(p.call, p, r.address, 0, { timeout = 100 })
    assert.equal("ETIMEDOUT", e.name)
    r:write(0, "\x0F\x0B") -- ud2
    e = helpers.error_of(p.call, p, r.address)
    assert.equal("EFAULT", e.name)
    assert.matches("faulted", e.hint)
    r:write(0, code)
    assert.equal(8, p:call(r.address, 7))
    t.proc:send("exit 6\n")
    assert.equal(6, t.proc:wait())
  end)

  helpers.linux_it("a 32-bit target (cdecl)", function()
    local t = helpers.start_target { bits = 32 }
    local p <close> = rmem.open(t.pid)
    local r = prepare(p, code32)
    assert.equal(42, p:call(r.address, 41))
    t:stop()
  end)
end)
