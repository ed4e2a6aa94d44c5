-- The value scanner: every type and op against values this spec plants in
-- memory it allocated in a real target, and changes between scans.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local PAGE = rmem.page_size
local MIB = 1024 * 1024

describe("p:value_scan()", function()
  local p, t

  before_each(function() p, t = helpers.open_target() end)
  after_each(function() p:close() t:stop() end)

  --- The options that confine a scan to region r, with more.
  local function within(r, more)
    local o = { from = r.address, to = r.address + r.size }
    for k, v in pairs(more or {}) do o[k] = v end
    return o
  end

  --- The candidates of s as offsets into r.
  local function offsets(s, r)
    local list = {}
    for i, a in ipairs(s:list()) do list[i] = a - r.address end
    return list
  end

  it("finds every numeric type where it was planted, with its value", function()
    local cases = {
      { "i8", -5 }, { "u8", 200 }, { "i16", -1234 }, { "u16", 60000 }, { "i32", -123456 },
      { "u32", 4000000000 }, { "i64", -(1 << 40) - 7 }, { "u64", -16 }, { "f32", -2.5 }, { "f64", 1e100 },
    }
    for _, c in ipairs(cases) do
      local vtype, value = c[1], c[2]
      local r <close> = p:alloc(2 * PAGE)
      r["write_" .. vtype](r, 64, value)
      r["write_" .. vtype](r, PAGE + 128, value)
      local s <close> = p:value_scan(vtype, "==", value, within(r))
      assert.same({ 64, PAGE + 128 }, offsets(s, r), vtype)
      assert.equal(2, s.count)
      for address, v in s:each() do
        assert.equal(value, v, vtype)
        assert.equal(value, p["read_" .. vtype](p, address))
      end
    end
  end)

  it("covers the whole process's writable memory by default", function()
    local r <close> = p:alloc(PAGE)
    r:write_i32(12, 0x5EEDBEEF)
    local s <close> = p:value_scan("i32", "==", 0x5EEDBEEF)
    assert.same({ r.address + 12 }, s:list())
    -- a read-only page is not a writable one
    r:protect("r")
    local s2 <close> = p:value_scan("i32", "==", 0x5EEDBEEF)
    assert.equal(0, s2.count)
    local s3 <close> = p:value_scan("i32", "==", 0x5EEDBEEF, { protect = "r", from = r.address })
    assert.same({ r.address + 12 }, s3:list())
  end)

  it("agrees with a slot-by-slot reference on random bytes, for every type, aligned or not", function()
    local n = 16 * 1024
    local bytes = {}
    math.randomseed(11)
    for i = 1, n // 8 do bytes[i] = string.pack("<i8", math.random(math.mininteger, math.maxinteger)) end
    bytes = table.concat(bytes)
    local r <close> = p:alloc(n)
    r:write(0, bytes)
    local formats = { i8 = "<i1", u8 = "<I1", i16 = "<i2", u16 = "<I2", i32 = "<i4", u32 = "<I4",
      i64 = "<i8", u64 = "<i8", f32 = "<f", f64 = "<d" }
    for vtype, fmt in pairs(formats) do
      local size = string.packsize(fmt)
      local function at(off) return (string.unpack(fmt, bytes, off + 1)) end
      local unsigned = vtype == "u64"
      local function lt(x, y) if unsigned then return math.ult(x, y) end return x < y end
      local v1, v2 = at(8 * size), at(40 * size)
      if v1 ~= v1 then v1 = 1 end
      if v2 ~= v2 then v2 = -1 end
      local lo, hi = v1, v2
      if lt(hi, lo) then lo, hi = hi, lo end
      local tol = (vtype == "f32" or vtype == "f64") and require("rmem.valscan").tolerance(v1) or 0
      local tests = {
        { "==", v1, function(x) return x >= v1 - tol and x <= v1 + tol end },
        { "~=", v1, function(x) return x == x and not (x >= v1 - tol and x <= v1 + tol) end },
        { "<", v1, function(x) return lt(x, v1) end },
        { ">=", v1, function(x) return not lt(x, v1) and x == x end },
        { "between", v1, v2, function(x) return not lt(x, lo) and not lt(hi, x) and x == x end },
      }
      for _, align in ipairs { size, 1 } do
        for _, c in ipairs(tests) do
          local test = c[#c]
          local want = {}
          for off = 0, n - size, align do
            if test(at(off)) then want[#want + 1] = off end
          end
          local s <close> = p:value_scan(vtype, c[1], c[2], c[4] and c[3] or within(r, { align = align }),
            c[4] and within(r, { align = align }) or nil)
          assert.same(want, offsets(s, r), ("%s %s align %d"):format(vtype, c[1], align))
        end
      end
    end
  end)

  it("first-scan ops: ==, ~=, <, <=, >, >=, between (either order), unknown", function()
    local r <close> = p:alloc(PAGE)
    r:write(0, string.pack("<i2i2i2i2i2", 5, -7, 100, 32767, -32768))
    local slots = PAGE // 2
    local function scan(op, ...)
      local s <close> = p:value_scan("i16", op, ...)
      return offsets(s, r), s.count
    end
    assert.same({ 0 }, scan("==", 5, within(r)))
    assert.same({ 0, 2, 4, 6, 8 }, scan("~=", 0, within(r)))
    assert.same({ 2, 8 }, scan("<", 0, within(r)))
    assert.same({ 4, 6 }, scan(">", 5, within(r)))
    assert.same({ 4, 6 }, scan(">=", 100, within(r)))
    assert.same({ 4 }, scan("between", 6, 100, within(r)))
    assert.same({ 4 }, scan("between", 100, 6, within(r)))
    assert.same({ 0, 2, 4 }, scan("between", -7, 100, { from = r.address, to = r.address + 10 }))
    local le, n = scan("<=", 5, within(r))
    assert.equal(slots - 2, n)
    assert.same({ 0, 2, 8, 10 }, { le[1], le[2], le[3], le[4] })
    local _, all = scan("unknown", within(r))
    assert.equal(slots, all)
  end)

  it("next ops compare with the values the last scan kept", function()
    local r <close> = p:alloc(PAGE)
    local before = { 10, 20, 30, 40, 50, 60, 70, 80 }
    local after = { 11, 15, 30, 40, 50, 65, 70, 0 }
    local function next_of(op, ...)
      r:write(0, string.pack("<" .. ("I4"):rep(8), table.unpack(before)))
      local s <close> = p:value_scan("u32", "unknown", { from = r.address, to = r.address + 32 })
      assert.equal(8, s.count)
      r:write(0, string.pack("<" .. ("I4"):rep(8), table.unpack(after)))
      assert.equal(s:next(op, ...), s.count)
      local list, values = {}, {}
      for a, v in s:each() do list[#list + 1], values[#values + 1] = a - r.address, v end
      -- the values kept are the ones the last scan read
      for i, off in ipairs(list) do assert.equal(after[off // 4 + 1], values[i]) end
      return list
    end
    assert.same({ 0, 4, 20, 28 }, next_of("changed"))
    assert.same({ 8, 12, 16, 24 }, next_of("unchanged"))
    assert.same({ 0, 20 }, next_of("increased"))
    assert.same({ 4, 28 }, next_of("decreased"))
    assert.same({ 0 }, next_of("increased_by", 1))
    assert.same({ 20 }, next_of("increased_by", 5))
    assert.same({ 4 }, next_of("decreased_by", 5))
    assert.same({ 28 }, next_of("decreased_by", 80))
    assert.same({ 8 }, next_of("==", 30))
    assert.same({ 0, 4, 12, 16, 20, 24, 28 }, next_of("~=", 30))
    assert.same({ 0, 28 }, next_of("<", 15))
    assert.same({ 0, 4, 28 }, next_of("<=", 15))
    assert.same({ 24 }, next_of(">", 65))
    assert.same({ 20, 24 }, next_of(">=", 65))
    assert.same({ 12, 16, 20 }, next_of("between", 40, 65))
    assert.same({ 0, 4, 8, 12, 16, 20, 24, 28 }, next_of("unknown"))
  end)

  it("narrows down in three scans, as a modder does", function()
    local r <close> = p:alloc(64 * PAGE)
    for i = 0, 63 do r:write_i32(i * PAGE + 40, 100) end -- 64 places hold 100
    local s <close> = p:value_scan("i32", "==", 100, within(r))
    assert.equal(64, s.count)
    r:write_i32(17 * PAGE + 40, 97)
    assert.equal(1, s:next("decreased"))
    assert.equal(1, s:next("==", 97))
    assert.same({ r.address + 17 * PAGE + 40 }, s:list())
  end)

  it("floats: a tolerance of half the last digit for == and ~=, exact comparisons, NaN never", function()
    local r <close> = p:alloc(PAGE)
    r:write(0, string.pack("<ffffff", 3.14, 3.15, 3.0, 0 / 0, 1.5, math.huge))
    local function scan(vtype, op, ...)
      local s <close> = p:value_scan(vtype, op, ...)
      return offsets(s, r)
    end
    assert.same({ 0 }, scan("f32", "==", 3.14, within(r)))          -- 3.1400001, not 3.15
    assert.same({ 8 }, scan("f32", "==", 3.0, within(r)))           -- +- 0.05
    assert.same({ 0, 4, 8 }, scan("f32", "==", 3, within(r)))       -- +- 0.5
    assert.same({ 0, 4 }, scan("f32", "==", 3.14, within(r, { tolerance = 0.02 })))
    assert.same({ 20 }, scan("f32", "==", math.huge, within(r)))
    assert.same({ 0, 4 }, scan("f32", "between", 3.1, 3.2, within(r)))
    assert.same({ 0, 4, 20 }, scan("f32", ">", 3.14, within(r))) -- 3.1400001 > 3.14 exactly
    local ne = scan("f32", "~=", 3.14, within(r))
    assert.equal(PAGE // 4 - 2, #ne)                                 -- neither 3.14 nor the NaN
    for _, off in ipairs(ne) do assert.is_true(off ~= 0 and off ~= 12) end
    for _, op in ipairs { "<", ">=" } do
      for _, off in ipairs(scan("f32", op, 0, within(r))) do assert.is_true(off ~= 12) end
    end
    -- the NaN is kept by unknown, and unchanged compares bit patterns
    local s <close> = p:value_scan("f32", "unknown", { from = r.address, to = r.address + 24 })
    assert.equal(6, s:next("unchanged"))
    r:write_f32(16, 1.75)
    assert.equal(1, s:next("increased_by", 0.25))
    assert.same({ r.address + 16 }, s:list())
    -- f64: 0.1 + 0.2 prints as 0.3, and finds 0.3
    r:write_f64(64, 0.3)
    assert.same({ 64 }, scan("f64", "==", 0.1 + 0.2, within(r)))
  end)

  it("compares u64 unsigned, and gives values above 2^63 as Lua's wrapped integers", function()
    local r <close> = p:alloc(PAGE)
    r:write(0, string.pack("<i8i8i8i8", 1, -1, math.mininteger, 5))
    local s <close> = p:value_scan("u64", ">", 2, within(r))
    assert.same({ 8, 16, 24 }, offsets(s, r))
    local values = {}
    for _, v in s:each() do values[#values + 1] = v end
    assert.same({ -1, math.mininteger, 5 }, values)
    local i <close> = p:value_scan("i64", ">", 2, within(r))
    assert.same({ 24 }, offsets(i, r))
    r:write_u64(16, math.mininteger + 1)
    assert.equal(1, s:next("increased"))
    assert.same({ 16 }, offsets(s, r))
  end)

  it("finds unaligned values with align = 1, and strings at any byte", function()
    local r <close> = p:alloc(PAGE)
    r:write_i32(3, 0x13572468)
    r:write_i32(8, 0x13572468)
    local function scan(...)
      local s <close> = p:value_scan(...)
      return offsets(s, r)
    end
    assert.same({ 8 }, scan("i32", "==", 0x13572468, within(r)))
    assert.same({ 3, 8 }, scan("i32", "==", 0x13572468, within(r, { align = 1 })))
    assert.same({ 8 }, scan("i32", "==", 0x13572468, within(r, { align = 2 })))
    r:write(101, "Gold")
    r:write(300, "Gold")
    r:write_wstring(1001, "Héros")
    r:write_wstring(2000, "Héros")
    assert.same({ 101, 300 }, scan("string", "==", "Gold", within(r)))
    assert.same({ 2000 }, scan("wstring", "==", "Héros", within(r)))
    assert.same({ 1001, 2000 }, scan("wstring", "==", "Héros", within(r, { align = 1 })))
  end)

  it("strings: ==, ~= and, later, changed, unchanged and == a new string of the same length", function()
    local r <close> = p:alloc(PAGE)
    r:write(100, "Gold")
    r:write(300, "Gold")
    r:write_wstring(600, "Ötzi")
    local s <close> = p:value_scan("string", "==", "Gold", within(r))
    local values = {}
    for _, v in s:each() do values[#values + 1] = v end
    assert.same({ "Gold", "Gold" }, values)
    r:write(300, "Gilt")
    assert.equal(1, s:next("changed"))
    assert.same({ 300 }, offsets(s, r))
    assert.equal(1, s:next("==", "Gilt"))
    assert.equal(0, s:next("~=", "Gilt"))
    local w <close> = p:value_scan("wstring", "==", "Ötzi", within(r))
    for address, v in w:each() do
      assert.equal(r.address + 600, address)
      assert.equal("Ötzi", v)
    end
    assert.equal(1, w:next("unchanged"))
  end)

  it("drops the candidates of pages that have gone, silently", function()
    local r <close> = p:alloc(2 * MIB)
    r:write_i32(100, 0x2468ACE0)
    r:write_i32(MIB + 100, 0x2468ACE0)
    local sparse <close> = p:value_scan("i32", "==", 0x2468ACE0, within(r))
    local dense <close> = p:value_scan("u32", "unknown", within(r))
    assert.equal(2, sparse.count)
    assert.equal(2 * MIB // 4, dense.count)
    r:decommit(MIB, MIB)
    assert.equal(1, sparse:next("unchanged"))
    assert.same({ 100 }, offsets(sparse, r))
    assert.equal(MIB // 4, dense:next("unchanged"))
    -- a whole region freed
    local gone = p:alloc(PAGE)
    gone:write_i32(0, 0x2468ACE1)
    local s <close> = p:value_scan("i32", "==", 0x2468ACE1, within(gone))
    assert.equal(1, s.count)
    gone:free()
    assert.equal(0, s:next("unchanged"))
  end)

  it("a target that exits mid-scan: an rmem.Error, and next on it the same", function()
    local r = p:alloc(9 * MIB)
    r:keep()
    local e = helpers.error_of(p.value_scan, p, "u32", "unknown",
      within(r, { progress = function() t:stop(0) end }))
    assert.is_true(rmem.is_error(e))
    assert.equal("value_scan", e.op)
    assert.equal("the process has exited (exit code 0)", e.hint)
    -- a scan made before the target exited
    local p2, t2 = helpers.open_target()
    local r2 = p2:alloc(PAGE)
    r2:keep()
    r2:write_i32(0, 0x0BADF00D)
    local s <close> = p2:value_scan("i32", "==", 0x0BADF00D, within(r2))
    local empty <close> = p2:value_scan("i32", "==", 0x0BADF00E, within(r2))
    t2:stop(0)
    for _, scan in ipairs { s, empty } do
      local e2 = helpers.error_of(scan.next, scan, "unchanged")
      assert.is_true(rmem.is_error(e2))
      assert.equal("next", e2.op)
      assert.equal(helpers.exited_name, e2.name)
      assert.equal("the process has exited (exit code 0)", e2.hint)
    end
    p2:close()
  end)

  it("reports progress, and stops when progress returns false", function()
    local r <close> = p:alloc(9 * MIB)
    local calls, cancel = {}, false
    local s <close> = p:value_scan("u32", "unknown", within(r, {
      progress = function(done, total)
        calls[#calls + 1] = { done, total }
        if cancel then return false end
      end }))
    assert.equal(9 * MIB // 4, s.count)
    assert.is_true(#calls >= 2)
    assert.same({ 9 * MIB, 9 * MIB }, calls[#calls])
    for i = 2, #calls do assert.is_true(calls[i][1] > calls[i - 1][1]) end
    -- a next scan cancelled after its first step: what it had not reached is dropped
    cancel = true
    local n = s:next("unchanged")
    assert.is_true(n > 0 and n < 9 * MIB // 4)
    assert.equal(n, s.count)
    -- a first scan cancelled: what it found so far
    local c <close> = p:value_scan("u32", "unknown", within(r, { progress = function() return false end }))
    assert.is_true(c.count > 0 and c.count < 9 * MIB // 4)
  end)

  it("two scans at once, each with its own candidates; closing one leaves the other", function()
    local r <close> = p:alloc(PAGE)
    r:write_i32(0, 111)
    r:write_i32(4, 222)
    local a = p:value_scan("i32", "==", 111, within(r))
    local b <close> = p:value_scan("i32", "==", 222, within(r))
    r:write_i32(0, 112)
    assert.equal(0, a:next("unchanged"))
    assert.equal(1, b:next("unchanged"))
    a:close()
    a:close() -- twice is fine
    assert.equal(0, a.count)
    assert.equal(1, b:next("==", 222))
    assert.same({ r.address + 4 }, b:list())
    assert.has_error(function() a:next("changed") end,
      "calling 'next' on bad self (the value scan is closed)")
    assert.has_error(function() a:list() end, "calling 'list' on bad self (the value scan is closed)")
    assert.matches("^rmem%.ValueScan%(pid %d+, i32, closed%)$", tostring(a))
    assert.matches("^rmem%.ValueScan%(pid %d+, i32, 1 candidate after == 222%)$", tostring(b))
  end)

  it("limit keeps the first addresses; list(limit) and each() give them ascending", function()
    local r <close> = p:alloc(4 * PAGE)
    for i = 9, 0, -1 do r:write_u16(i * 300, 4321) end
    local s <close> = p:value_scan("u16", "==", 4321, within(r, { limit = 3 }))
    assert.same({ 0, 300, 600 }, offsets(s, r))
    local all <close> = p:value_scan("u16", "==", 4321, within(r))
    assert.equal(10, all.count)
    assert.same({ r.address, r.address + 300 }, all:list(2))
    local prev = -1
    for a in all:each() do
      assert.is_true(a > prev)
      prev = a
    end
  end)

  it("keeps candidates compactly: offsets and values when sparse, a copy when dense", function()
    local r <close> = p:alloc(4 * MIB)
    for i = 0, 999 do r:write_i32(i * 4096 + 16, 0x600D) end
    local sparse <close> = p:value_scan("i32", "==", 0x600D, within(r))
    assert.equal(1000, sparse.count)
    assert.is_true(sparse._st:memory() <= 1000 * 8)
    local dense <close> = p:value_scan("i32", "unknown", within(r))
    assert.is_true(dense._st:memory() <= 4 * MIB * 1.01)
    r:write_i32(16, 1)
    assert.equal(1, dense:next("changed"))
    assert.is_true(dense._st:memory() <= 8)
    dense:close()
    assert.equal(0, dense.count)
  end)

  it("rejects bad input with errors that name value_scan or next", function()
    local r = p:alloc(PAGE) -- (the process is closed at the end)
    local function err(fn, ...)
      local args = table.pack(...)
      local ok, e = pcall(function() local res = fn(table.unpack(args, 1, args.n)) return res end)
      assert.is_false(ok)
      return e
    end
    local cases = {
      { "bad argument #1 to 'value_scan' (unknown type 'int' (expected i8,", "int", "==", 1 },
      { "bad argument #2 to 'value_scan' (unknown op '=' (expected ==,", "i32", "=", 1 },
      { "bad argument #2 to 'value_scan' ('changed' compares with the values a scan kept: use it in s:next)",
        "i32", "changed" },
      { "bad argument #3 to 'value_scan' ('==' takes one value)", "i32", "==" },
      { "bad argument #4 to 'value_scan' ('between' takes two values)", "i32", "between", 1 },
      { "bad argument #4 to 'value_scan' ('==' takes one value, then the options)", "i32", "==", 1, 2 },
      { "bad argument #3 to 'value_scan' ('unknown' takes no value, then the options)", "i32", "unknown", 5 },
      { "bad argument #3 to 'value_scan' (value must be a number for i32, got string)", "i32", "==", "100" },
      { "bad argument #3 to 'value_scan' (value must be an integer, got 1.5)", "i32", "==", 1.5 },
      { "bad argument #3 to 'value_scan' (value 300 does not fit in u8 (0 to 255))", "u8", "==", 300 },
      { "bad argument #3 to 'value_scan' (value must be a number for f64, got string)",
        "f64", "==", "1" },
      { "bad argument #3 to 'value_scan' (value must not be NaN (NaN never matches))", "f32", "==", 0 / 0 },
      { "bad argument #2 to 'value_scan' ('<' compares numbers: a string scan takes ==, ~=", "string", "<", "a" },
      { "bad argument #3 to 'value_scan' (value must not be empty)", "string", "==", "" },
      { "bad argument #3 to 'value_scan' (value must be a string for wstring, got number)",
        "wstring", "==", 5 },
      { "bad argument #4 to 'value_scan' (align must be 1 to 65536, got 0)", "i32", "==", 1, { align = 0 } },
      { "bad argument #4 to 'value_scan' (tolerance is for f32 and f64 scans)", "i32", "==", 1,
        { tolerance = 1 } },
      { "bad argument #4 to 'value_scan' (unknown option 'size')", "i32", "==", 1, { size = 4 } },
      { "bad argument #4 to 'value_scan' (progress must be a function, got number)", "i32", "==", 1,
        { progress = 1 } },
    }
    for _, c in ipairs(cases) do
      local e = err(p.value_scan, p, table.unpack(c, 2))
      assert.is_truthy(e:find(c[1], 1, true), e)
      assert.matches("21%-value_scan_spec%.lua:%d+: ", e) -- at the caller's line
    end
    local s <close> = p:value_scan("i32", "==", 1, within(r))
    local str <close> = p:value_scan("string", "==", "abc", within(r))
    local next_cases = {
      { "bad argument #1 to 'next' (unknown op 'down' (expected ==,", s, "down" },
      { "bad argument #1 to 'next' ('increased' compares numbers", str, "increased" },
      { "bad argument #2 to 'next' ('increased_by' takes one value)", s, "increased_by" },
      { "bad argument #2 to 'next' ('changed' takes no value)", s, "changed", 1 },
      { "bad argument #2 to 'next' (value must be a number for i32, got string)", s, "==", "x" },
      { "bad argument #2 to 'next' (value must be as long as the first scan's (3 bytes), got 4 bytes)",
        str, "==", "abcd" },
      { "calling 'next' on bad self (call it with a colon: s:next(...))", "==", 5 },
    }
    for _, c in ipairs(next_cases) do
      local e = err(s.next, table.unpack(c, 2))
      assert.is_truthy(e:find(c[1], 1, true), e)
    end
    s:close()
    assert.matches("calling 'next' on bad self %(the value scan is closed%)", err(s.next, s, "changed"))
    p:close()
    local e = err(p.value_scan, p, "i32", "==", 1)
    assert.is_true(rmem.is_error(e))
    assert.equal("PROCESS_CLOSED", e.name)
  end)
end)
