-- Many values at once (p:read_many), buffers (rmem.buffer, p:read_into,
-- p:dump) and freezes (p:freeze, rmem.sleep), against real targets: values
-- planted in memory the spec allocated, unreadable pages made by decommit,
-- and a target that decrements a counter every 10 ms.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local PAGE = rmem.page_size
local IOV_MAX = 1024
-- never mapped (Windows, Wine, Linux's mmap_min_addr): unreadable
-- everywhere, where Wine 8 reads decommitted pages as zeros
local UNMAPPED = 0x1000

local function assert_argerror(fname, fn, ...)
  -- called from a function of this file, the user's code here
  local err = helpers.error_of(function(...) fn(...) end, ...)
  assert.is_string(err)
  assert.truthy(err:find("'" .. fname .. "'", 1, true), err)
  -- raised at the user's line: this file
  assert.truthy(err:find("22-many_freeze_spec.lua:", 1, true), err)
  return err
end

--- A region of n pages, page `hole` (0-based) decommitted: unreadable.
local function with_hole(p, n, hole)
  local r = p:alloc(n * PAGE)
  r:decommit(hole * PAGE, PAGE)
  return r
end

--- A target with a counter it decrements every 10 ms, and the counter's address.
local countdown_files = 0
local function countdown_target()
  countdown_files = countdown_files + 1
  local path = ("%s/build/countdown-%d.txt"):format(helpers.root, countdown_files)
  local t = helpers.start_target { countdown = path }
  local text = helpers.read_file(path)
  os.remove(path)
  return t, assert(tonumber(text:match("(%x+)%s*$"), 16), text)
end

describe("on one target", function()
  local p, t
  setup(function() p, t = helpers.open_target() end)
  teardown(function()
    p:close()
    t:stop()
  end)

  describe("p:read_many()", function()
    it("reads typed values in order, false for an unreadable entry in the middle", function()
      local r <close> = with_hole(p, 3, 1)
      r:write_u32(0, 0xDEADBEEF)
      r:write_u32(PAGE - 4, 7)
      r:write_u32(2 * PAGE, 42)
      r:write_u32(3 * PAGE - 4, 0xFFFFFFFF)
      local a = r.address
      assert.same({ 0xDEADBEEF, 7, false, 42, 0xFFFFFFFF },
        p:read_many({ a, a + PAGE - 4, UNMAPPED, a + 2 * PAGE, a + 3 * PAGE - 4 }, "u32"))
      if not helpers.wine then
        -- a value in or across a decommitted page is unreadable too
        assert.same({ false, false, 42 }, p:read_many({ a + PAGE + 8, a + PAGE - 2, a + 2 * PAGE }, "u32"))
      end
    end)

    it("reads close entries in any order, twice over, and beside an unreadable page", function()
      local r <close> = with_hole(p, 3, 1)
      local parts = {}
      for i = 1, PAGE // 4 do parts[i] = string.pack("<I4", i) end
      r:write(0, table.concat(parts))
      r:write(2 * PAGE, table.concat(parts))
      local a, list, want = r.address, {}, {}
      for i = 1, 500 do
        local k = (i * 263) % (PAGE // 4) -- shuffled, close together, some twice
        list[i], want[i] = a + 4 * k, k + 1
      end
      assert.same(want, p:read_many(list, "u32"))
      if not helpers.wine then
        -- one run of entries across the decommitted page: the readable ones
        -- on both sides are still read
        assert.same({ PAGE // 4 - 1, PAGE // 4, false, false, false, 1, 2 },
          p:read_many({ a + PAGE - 8, a + PAGE - 4, a + PAGE - 2, a + PAGE, a + 2 * PAGE - 4, a + 2 * PAGE,
            a + 2 * PAGE + 4 }, "u32"))
        -- close enough to be read as one span over the page between them
        assert.same({ PAGE // 4, 1 }, p:read_many({ a + PAGE - 4, a + 2 * PAGE }, "u32"))
      end
    end)

    it("decodes every type as the typed reads do", function()
      local r <close> = p:alloc(PAGE)
      r:write(0, string.pack("<i1i2i4i8fd", -5, -300, -70000, math.mininteger, 1.5, -2.25))
      r:write_u64(32, -1)
      local a = r.address
      assert.same({ -5, -300, -70000, math.mininteger },
        { p:read_many({ a }, "i8")[1], p:read_many({ a + 1 }, "i16")[1], p:read_many({ a + 3 }, "i32")[1],
          p:read_many({ a + 7 }, "i64")[1] })
      assert.same({ 1.5, -2.25 }, { p:read_many({ a + 15 }, "f32")[1], p:read_many({ a + 19 }, "f64")[1] })
      assert.same({ 0xFB, 0xFED4 }, { p:read_many({ a }, "u8")[1], p:read_many({ a + 1 }, "u16")[1] })
      assert.equal(r:read_u64(32), p:read_many({ a + 32 }, "u64")[1])
      assert.equal(r:read_ptr(32), p:read_many({ a + 32 }, "ptr")[1])
    end)

    it("reads byte strings: { address, size } entries, or one size for all", function()
      local r <close> = with_hole(p, 2, 1)
      r:write(0, "hello, world")
      local a = r.address
      assert.same({ "hello", false, "world", "" },
        p:read_many({ { a, 5 }, { UNMAPPED, 4 }, { a + 7, 5 }, { UNMAPPED, 0 } }))
      assert.same({ "hel", "wor", false }, p:read_many({ a, a + 7, UNMAPPED + 8 }, 3))
      assert.same({}, p:read_many({}, "u32"))
    end)

    it("reads more entries than one system call takes, with holes on batch borders", function()
      local n = 3 * IOV_MAX + 100
      local r <close> = p:alloc(n * 8 + PAGE)
      local parts = {}
      for i = 1, n do parts[i] = string.pack("<I4I4", i * 7919 % 0x100000000, 0) end
      r:write(0, table.concat(parts))
      local list, want = {}, {}
      for i = 1, n do
        -- scattered: entry i reads value (i * 37) % n + 1
        local k = (i * 37) % n + 1
        list[i], want[i] = r.address + (k - 1) * 8, k * 7919 % 0x100000000
      end
      for _, i in ipairs { 1, IOV_MAX, IOV_MAX + 1, 2 * IOV_MAX, 2 * IOV_MAX + 2, n } do
        list[i], want[i] = UNMAPPED + i, false
      end
      local got = p:read_many(list, "u32")
      assert.equal(n, #got)
      for i = 1, n do
        if got[i] ~= want[i] then assert.equal(want[i], got[i], "entry " .. i) end
      end
    end)

    it("raises argument errors naming read_many, at the user's line", function()
      local a = p:alloc(PAGE).address
      assert.truthy(assert_argerror("read_many", p.read_many, p, "x", "u32"):find("must be a table"))
      assert.truthy(assert_argerror("read_many", p.read_many, p, { a }, "u24"):find("unknown type 'u24'"))
      assert.truthy(assert_argerror("read_many", p.read_many, p, { a, "12" }, "u8")
        :find("entry 2: address must be an integer, got string", 1, true))
      assert.truthy(assert_argerror("read_many", p.read_many, p, { a, -1 }, "u8")
        :find("entry 2: address must not be negative", 1, true))
      assert.truthy(assert_argerror("read_many", p.read_many, p, { a, 1.5 }, "u8"):find("entry 2"))
      assert.truthy(assert_argerror("read_many", p.read_many, p, { { a, 1 }, a })
        :find("entry 2 must be an { address, size } table", 1, true))
      assert.truthy(assert_argerror("read_many", p.read_many, p, { { a, -4 } })
        :find("entry 1: size must not be negative", 1, true))
      assert.truthy(assert_argerror("read_many", p.read_many, p, { math.maxinteger }, "u32")
        :find("wraps"))
      assert.truthy(assert_argerror("read_many", p.read_many, p, { a }, -1):find("negative"))
    end)

    it("raises the closed-process error on a closed process, an rmem.Error on an exited one", function()
      local q, qt = helpers.open_target()
      local a = q:alloc(PAGE).address
      qt:stop()
      local e = helpers.error_of(q.read_many, q, { a, a + 4 }, "u32")
      assert.is_true(rmem.is_error(e))
      assert.equal("read_many", e.op)
      q:close()
      e = helpers.error_of(q.read_many, q, { a }, "u32")
      assert.equal("PROCESS_CLOSED", e.name)
    end)
  end)

  describe("rmem.buffer() and p:read_into()", function()
    it("fills a buffer at an offset without a string, and reads it back", function()
      local r <close> = p:alloc(16 * PAGE)
      local parts = {}
      for i = 1, 16 * PAGE // 8 do parts[i] = string.pack("<I8", i * 0x9E3779B97F4A7C15) end
      local data = table.concat(parts)
      r:write(0, data)
      local buf = rmem.buffer(16 * PAGE + 200)
      assert.equal(16 * PAGE + 200, #buf)
      assert.equal(("\0"):rep(16), buf:tostring(1, 16)) -- new buffers are zeroed
      assert.equal(16 * PAGE, p:read_into(buf, r.address, 16 * PAGE, 100))
      assert.equal(("\0"):rep(100), buf:tostring(1, 100))
      assert.equal(data, buf:tostring(101, 100 + 16 * PAGE))
      assert.equal(("\0"):rep(100), buf:tostring(-100))
      assert.equal(#buf, #buf:tostring())
      assert.equal(data:sub(1, 4), buf:tostring(101, 104))
      assert.equal("", buf:tostring(10, 9))
      assert.equal(buf:tostring(1, 3), buf:tostring(-#buf - 10, 3))
      assert.equal(string.unpack("<I4", data, 1), buf:u32(100))
      assert.equal(string.unpack("<i8", data, 9), buf:i64(108))
      assert.equal(0, buf:u8(#buf - 1))
      -- reusing the buffer overwrites just the bytes read
      assert.equal(4, p:read_into(buf, r.address + 8, 4))
      assert.equal(data:sub(9, 12), buf:tostring(1, 4))
      assert.equal(("\0"):rep(96) .. data:sub(1, 4), buf:tostring(5, 104))
      assert.equal(0, p:read_into(buf, r.address, 0, #buf)) -- an empty read at the very end
    end)

    it("decodes every type, as string.unpack does", function()
      local r <close> = p:alloc(PAGE)
      r:write(0, string.pack("<i1i2i4i8fdI8", -5, -300, -70000, math.mininteger, 1.5, -2.25, -1))
      local buf = rmem.buffer(64)
      p:read_into(buf, r.address, 64)
      assert.same({ -5, -300, -70000, math.mininteger, 1.5, -2.25, -1 },
        { buf:i8(0), buf:i16(1), buf:i32(3), buf:i64(7), buf:f32(15), buf:f64(19), buf:u64(27) })
      assert.same({ 0xFB, 0xFED4, 0xFFFEEE90 }, { buf:u8(0), buf:u16(1), buf:u32(3) })
      assert.truthy(tostring(buf):find("rmem.Buffer (64 bytes)", 1, true))
    end)

    it("raises for a partial read with bytes_done, and leaves the bytes read", function()
      local r <close> = with_hole(p, 2, 1)
      local buf = rmem.buffer(2 * PAGE)
      local e = helpers.error_of(p.read_into, p, buf, UNMAPPED, 16)
      assert.is_true(rmem.is_error(e))
      assert.equal("read_into", e.op)
      assert.equal(0, e.bytes_done)
      if not helpers.wine then -- (Wine reads the decommitted page as zeros)
        r:write(PAGE - 4, "abcd")
        e = helpers.error_of(p.read_into, p, buf, r.address, 2 * PAGE)
        assert.equal(helpers.name("ERROR_PARTIAL_COPY"), e.name)
        if helpers.linux then assert.equal(PAGE, e.bytes_done) end
        assert.equal("abcd", buf:tostring(PAGE - 3, PAGE))
      end
    end)

    it("refuses bad arguments, naming the method", function()
      local a = p:alloc(PAGE).address
      local buf = rmem.buffer(16)
      assert.truthy(assert_argerror("read_into", p.read_into, p, buf, a, 17):find("buffer too small"))
      assert.truthy(assert_argerror("read_into", p.read_into, p, buf, a, 8, 9):find("buffer too small"))
      assert.truthy(assert_argerror("read_into", p.read_into, p, buf, a, 1, 17):find("buffer too small"))
      assert.truthy(assert_argerror("read_into", p.read_into, p, buf, a, -1):find("negative"))
      assert.truthy(assert_argerror("read_into", p.read_into, p, buf, a, 4, -1):find("negative"))
      assert.truthy(assert_argerror("read_into", p.read_into, p, "buf", a, 4):find("rmem.buffer"))
      assert.truthy(assert_argerror("read_into", p.read_into, p, buf, "a", 4):find("integer"))
      assert.truthy(assert_argerror("buffer", rmem.buffer, -1):find("negative"))
      assert.truthy(assert_argerror("buffer", rmem.buffer, "8"):find("integer"))
      -- the buffer's own methods, called as a user would
      local function buffer_error(call)
        local err = helpers.error_of(function() local _ = call() end)
        assert.truthy(err:find("22-many_freeze_spec.lua:", 1, true), err)
        return err
      end
      assert.truthy(buffer_error(function() return buf:u32(13) end)
        :find("bad argument #1 to 'u32' (offset 13 out of range", 1, true))
      assert.truthy(buffer_error(function() return buf:u8(-1) end):find("'u8' (offset -1 out of range", 1, true))
      assert.truthy(buffer_error(function() return buf:f64(16) end):find("'f64' (offset 16 out of range", 1, true))
      assert.truthy(buffer_error(function() return buf:u8(1.5) end):find("'u8'", 1, true))
      assert.truthy(buffer_error(function() return buf:tostring("x") end):find("'tostring'", 1, true))
      local q, qt = helpers.open_target()
      q:close()
      qt:stop()
      assert.equal("PROCESS_CLOSED", helpers.error_of(q.read_into, q, buf, a, 4).name)
    end)
  end)

  describe("p:dump()", function()
    it("saves memory to a file that equals it", function()
      local n = 300 * PAGE + 123 -- more than one chunk, not a whole number of them
      local r <close> = p:alloc(n)
      local parts = {}
      for i = 1, (n + 7) // 8 do parts[i] = string.pack("<I8", i * 0x9E3779B97F4A7C15) end
      r:write(0, table.concat(parts):sub(1, n))
      local path = helpers.root .. "/build/dump-spec.bin"
      assert.equal(n - 5, p:dump(r.address + 5, n - 5, path))
      local f = assert(io.open(path, "rb"))
      local saved = f:read("a")
      f:close()
      os.remove(path)
      assert.equal(n - 5, #saved)
      assert.is_true(saved == p:read(r.address + 5, n - 5))
    end)

    it("raises for memory it cannot read, and leaves no file", function()
      local r <close> = with_hole(p, 3, 2)
      local path = helpers.root .. "/build/dump-spec-fail.bin"
      -- (Wine reads the decommitted page as zeros: there, unmapped memory)
      local e = helpers.error_of(p.dump, p, helpers.wine and UNMAPPED or r.address, 3 * PAGE, path)
      assert.is_true(rmem.is_error(e))
      assert.equal("dump", e.op)
      assert.is_nil(io.open(path, "rb"))
    end)

    it("refuses bad arguments and unwritable paths", function()
      local r <close> = p:alloc(PAGE)
      assert.truthy(assert_argerror("dump", p.dump, p, r.address, PAGE, 7):find("path must be a string"))
      assert.truthy(assert_argerror("dump", p.dump, p, r.address, -1, "x"):find("negative"))
      local e = helpers.error_of(p.dump, p, r.address, PAGE, helpers.root .. "/no/such/dir/x.bin")
      assert.equal("FILE_ERROR", e.name)
      local q, qt = helpers.open_target()
      q:close()
      qt:stop()
      assert.equal("PROCESS_CLOSED", helpers.error_of(q.dump, q, r.address, PAGE, "x.bin").name)
    end)
  end)
end)

describe("p:freeze()", function()
  it("holds a value the target decrements every 10 ms, then lets go", function()
    local t, addr = countdown_target()
    local p <close> = rmem.open(t.pid)
    local start = p:read_i32(addr)
    assert.is_true(start <= 1000000 and start > 900000)
    local f = p:freeze(addr, "i32", 5000, { interval = 1 })
    assert.equal("running", f:status())
    local low, reads = math.huge, 0
    local t0 = os.clock()
    for _ = 1, 100 do
      rmem.sleep(10)
      low = math.min(low, p:read_i32(addr))
      reads = reads + 1
    end
    assert.is_true(os.clock() - t0 < 1.5)
    assert.is_true(low >= 4999, "the value fell to " .. low)
    assert.truthy(tostring(f):find("i32 = 5000 at 0x", 1, true))
    assert.truthy(tostring(f):find("running", 1, true))
    f:stop()
    assert.equal("stopped", f:status())
    f:stop() -- twice is fine
    rmem.sleep(200)
    assert.is_true(p:read_i32(addr) < 4995, "the value no longer decreases")
    t:stop()
  end)

  it("holds with the default interval", function()
    local t, addr = countdown_target()
    local p <close> = rmem.open(t.pid)
    local f <close> = p:freeze(addr, "u32", 777)
    for _ = 1, 30 do
      rmem.sleep(10)
      assert.is_true(p:read_u32(addr) >= 770)
    end
    assert.equal(10, f.interval)
    t:stop()
  end)

  it("stops on <close>, on p:close() and when collected", function()
    local t, addr = countdown_target()
    local p = rmem.open(t.pid)
    local watcher <close> = rmem.open(t.pid)
    local function falls()
      local v = watcher:read_i32(addr)
      rmem.sleep(150)
      -- 15 steps if nothing holds it; a freeze allows one
      return watcher:read_i32(addr) < v - 3
    end
    do
      local scoped <close> = p:freeze(addr, "i32", 3000, { interval = 1 })
      assert.is_false(falls())
      assert.is_true(scoped:is_running())
    end
    assert.is_true(falls())
    local f = p:freeze(addr, "i32", 3000, { interval = 1 })
    assert.is_false(falls())
    p:close()
    assert.equal("stopped", f:status())
    assert.is_true(falls())
    p = rmem.open(t.pid)
    p:freeze(addr, "i32", 3000, { interval = 1 }) -- dropped at once
    collectgarbage()
    collectgarbage()
    assert.is_true(falls())
    p:close()
    t:stop()
  end)

  it("ends quietly when the target exits", function()
    local t, addr = countdown_target()
    local p <close> = rmem.open(t.pid)
    local f = p:freeze(addr, "i32", 1)
    t:stop()
    for _ = 1, 200 do
      if f:status() ~= "running" then break end
      rmem.sleep(10)
    end
    assert.equal("exited", f:status())
    assert.is_false(f:is_running())
    f:stop()
    assert.equal("exited", f:status())
    assert.truthy(tostring(f):find("exited", 1, true))
  end)

  it("leaves no handle behind", function()
    local t, addr = countdown_target()
    local p <close> = rmem.open(t.pid)
    local before = helpers.handle_count()
    for _ = 1, 5 do p:freeze(addr, "i32", 1):stop() end
    assert.equal(before, helpers.handle_count())
    t:stop()
  end)

  it("refuses bad arguments, and raises for memory it cannot write", function()
    local p <close>, t = helpers.open_target()
    local r = p:alloc(PAGE)
    local a = r.address
    assert.truthy(assert_argerror("freeze", p.freeze, p, a, "u24", 1):find("unknown type"))
    assert.truthy(assert_argerror("freeze", p.freeze, p, a, "u32", "1"):find("must be a number"))
    assert.truthy(assert_argerror("freeze", p.freeze, p, a, "u8", 300):find("does not fit"))
    assert.truthy(assert_argerror("freeze", p.freeze, p, a, "i32", 0 / 0):find("does not fit"))
    assert.truthy(assert_argerror("freeze", p.freeze, p, -1, "u32", 1):find("negative"))
    assert.truthy(assert_argerror("freeze", p.freeze, p, a, "u32", 1, { interval = 0 }):find("interval"))
    assert.truthy(assert_argerror("freeze", p.freeze, p, a, "u32", 1, { interval = 1.5 }):find("interval"))
    assert.truthy(assert_argerror("freeze", p.freeze, p, a, "u32", 1, { every = 5 }):find("unknown option"))
    assert.truthy(assert_argerror("sleep", rmem.sleep, -1):find("ms must be"))
    assert.truthy(assert_argerror("sleep", rmem.sleep, "5"):find("integer"))
    local e = helpers.error_of(p.freeze, p, UNMAPPED, "u32", 1)
    assert.is_true(rmem.is_error(e))
    assert.equal("freeze", e.op)
    local ro <close> = rmem.open(t.pid, { access = "read" })
    assert.is_true(rmem.is_error(helpers.error_of(ro.freeze, ro, a, "u32", 1)))
    local q = rmem.open(t.pid)
    q:close()
    assert.equal("PROCESS_CLOSED", helpers.error_of(q.freeze, q, a, "u32", 1).name)
    t:stop()
  end)
end)
