-- p:func: typed remote functions through the target's own test functions
-- (examples/target.c, rmem_test_*), in each calling convention, and remote
-- calls that fault: an error, and the target carries on.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local ACCESS = { access = helpers.windows and "all" or "write" }

local function f32(x) return (string.unpack("<f", string.pack("<f", x))) end

--- The target (bits = 32: Linux's 32-bit one), opened, and a lookup of its
-- exported test functions.
local function open(bits)
  local t = helpers.start_target { bits = bits }
  local p = rmem.open(t.pid, ACCESS)
  local exe = p:module(helpers.windows and "rmem-target.exe" or bits == 32 and "rmem-target32"
    or "rmem-target")
  local function export(name) return assert(p:proc_address(exe, name), name) end
  return p, t, export
end

for _, bits in ipairs { 64, 32 } do
  local it_ = bits == 32 and helpers.linux_it or it
  describe(("p:func, %d-bit target"):format(bits), function()
    local p, t, export
    local function fn(name, ret, args, opts)
      return p:func(export("rmem_test_" .. name), ret, args, opts)
    end
    setup(function()
      if bits == 32 and not helpers.linux then return end
      p, t, export = open(bits)
    end)
    teardown(function()
      if p then p:close() t:stop() end
    end)

    it_("integers round-trip, signed and unsigned, at their limits", function()
      local i8, u8 = fn("i8", "i8", { "i8" }), fn("u8", "u8", { "u8" })
      assert.equal(-6, i8(-5))
      assert.equal(127, i8(-128))
      assert.equal(255, u8(0))
      assert.equal(199, u8(200))
      assert.equal(-301, fn("i16", "i16", { "i16" })(-300))
      assert.equal(65535, fn("u16", "u16", { "u16" })(0))
      local i32, u32 = fn("i32", "i32", { "i32" }), fn("u32", "u32", { "u32" })
      assert.equal(-1, i32(0))
      assert.equal(-0x80000000, i32(-0x7FFFFFFF))
      assert.equal(0xFFFFFFFF, u32(0))
      assert.equal(0x7FFFFFFF, u32(0x80000000))
      local i64, u64 = fn("i64", "i64", { "i64" }), fn("u64", "u64", { "u64" })
      assert.equal(-(1 << 40) - 1, i64(-(1 << 40)))
      assert.equal(0x123456789A, i64(0x123456789B))
      assert.equal(math.maxinteger - 1, i64(math.maxinteger))
      -- u64 above 2^63: the same bits as a Lua integer; 2^63 may be a float
      assert.equal(-1, u64(0)) -- 0xFFFFFFFFFFFFFFFF
      assert.equal(math.mininteger, u64(math.mininteger + 1))
      assert.equal(math.maxinteger, u64(2.0 ^ 63))
      assert.equal(0xFFFFFFFFFFFFFFFE, u64(-1))
    end)

    it_("floats and doubles round-trip", function()
      local float, double = fn("f32", "f32", { "f32" }), fn("f64", "f64", { "f64" })
      assert.equal(3.0, float(1.5))
      assert.equal(f32(-0.1) * 2, float(-0.1))
      assert.equal("float", math.type(float(2)))
      assert.equal(-4.5, double(-2.25))
      assert.equal(2 / 3, double(1 / 3))
      assert.equal(1e300, double(5e299))
      assert.equal(-math.huge, double(-math.huge))
    end)

    it_("bool, ptr, strings and wide strings", function()
      local nott = fn("not", "bool", { "bool" })
      assert.is_false(nott(true))
      assert.is_true(nott(false))
      local ptr = fn("ptr", "ptr", { "ptr" })
      assert.equal(0x1001, ptr(0x1000))
      assert.equal(1, ptr(nil))
      local strlen = fn("strlen", "ptr", { "string" })
      assert.equal(5, strlen("hello"))
      assert.equal(0, strlen(""))
      assert.equal(6, strlen("h\xC3\xA9llo"))
      assert.equal(bits == 64 and -1 or 0xFFFFFFFF, strlen(nil)) -- NULL
      local u16sum = fn("u16sum", "u64", { "wstring" })
      assert.equal(3 << 32 | (0x68 + 0xE9 + 0x20AC), u16sum("h\xC3\xA9\xE2\x82\xAC")) -- hé€
      assert.equal(2 << 32 | (0xD83D + 0xDE00), u16sum("\xF0\x9F\x98\x80")) -- a surrogate pair
      -- a string result is read before the call's memory is freed; the
      -- argument's copy is freed afterwards
      assert.equal("echo me", fn("echo", "string", { "string" })("echo me"))
      assert.equal("w\xC3\xA9", fn("echo", "wstring", { "wstring" })("w\xC3\xA9"))
      assert.is_nil(fn("echo", "string", { "string" })(nil))
      local where = fn("echo", "ptr", { "string" })("where am I?")
      assert.equal("free", p:query(where).state)
    end)

    it_("mixed arguments beyond the registers: every one arrives where it should", function()
      local mixed = fn("mixed", "i64", { "i8", "f64", "f32", "i64", "u16", "f64", "f32", "i32",
        "f64", "u64", "f32", "f64", "i16", "f64", "u8", "f32", "f64", "i32", "f64" })
      local r = mixed(-7, 1.25, -2.5, -(1 << 40), 65535, 1e100, 0.1, -123456789, -0.5,
        0xFFFFFFFFFFFFFFF0, 3.75, 2 ^ -30, -32768, 12345.5, 200, -1e30, 6.5, 0x7FFFFFFF, -99.125)
      assert.equal(-(1 << 40) + 7, r)
      assert.same({ -7, -(1 << 40), 65535, -123456789, 0xFFFFFFFFFFFFFFF0, -32768, 200, 0x7FFFFFFF },
        { p:unpack(export("rmem_test_ints"), ("<i8"):rep(8)) })
      local floats = { p:unpack(export("rmem_test_floats"), ("<d"):rep(11)) }
      assert.same({ 1.25, -2.5, 1e100, f32(0.1), -0.5, 3.75, 2 ^ -30, 12345.5, f32(-1e30), 6.5,
        -99.125 }, { table.unpack(floats, 1, 11) })
    end)

    it_("stdcall (the callee pops its arguments; ignored by 64-bit targets)", function()
      local std = fn("stdcall", "f64", { "i32", "f64", "f32", "i64" }, { convention = "stdcall" })
      assert.equal(2.5 - 40, std(-40, 2.5, -0.75, 1 << 50))
      assert.same({ -40, 1 << 50 }, { p:unpack(export("rmem_test_ints"), "<i8i8") })
      assert.same({ 2.5, -0.75 }, { p:unpack(export("rmem_test_floats"), "<dd") })
      -- and again: the stack is balanced
      assert.equal(3.0, std(1, 2.0, 0, 0))
    end)
  end)
end

describe("a remote call that faults", function()
  --- Asserts the target is alive and answering: a call and a read work.
  local function answers(p, export)
    assert.is_true(p:is_alive())
    assert.equal(41, p:func(export("rmem_test_i32"), "i32", { "i32" })(42))
    assert.equal("string", type(p:read(export("rmem_test_ints"), 8)))
  end

  helpers.win_it("ends with EXCEPTION_* and the address; the target carries on", function()
    local p <close>, t, export = open()
    -- p:call of address 0
    local e = helpers.error_of(p.call, p, 0, 1)
    assert.equal("EXCEPTION_ACCESS_VIOLATION", e.name)
    assert.equal(0xC0000005, e.code)
    assert.equal("call", e.op)
    assert.equal(0, e.address)
    assert.matches("executing address 0x0", e.message)
    answers(p, export)
    -- a write to address 0, through p:func and call_with
    local store = export("rmem_test_store")
    e = helpers.error_of(p:func(store, "void", { "ptr", "i32" }, { name = "store" }), 0, 5)
    assert.equal("EXCEPTION_ACCESS_VIOLATION", e.name)
    assert.equal("func", e.op)
    assert.equal(0, e.address)
    assert.matches("writing address 0x0", e.message)
    assert.is_true(e.instruction >= store and e.instruction < store + 64)
    e = helpers.error_of(p.call_with, p, store, { 8, 5 })
    assert.equal("call_with", e.op)
    assert.equal(8, e.address)
    answers(p, export)
    -- ud2, and a division by zero
    local code = p:alloc(rmem.page_size, { protect = "rwx" })
    code:write(0, "\x90\x0F\x0B") -- nop; ud2
    e = helpers.error_of(p.call, p, code.address)
    assert.equal("EXCEPTION_ILLEGAL_INSTRUCTION", e.name)
    assert.equal(code.address + 1, e.address)
    e = helpers.error_of(p:func(export("rmem_test_divide"), "i32", { "i32", "i32" }), 1, 0)
    assert.equal("EXCEPTION_INT_DIVIDE_BY_ZERO", e.name)
    answers(p, export)
    -- the write really did not happen, and a good store still does
    p:func(store, "void", { "ptr", "i32" })(export("rmem_test_ints"), -3)
    assert.equal(-3, p:read_i32(export("rmem_test_ints")))
    t:stop()
  end)

  helpers.win_it("each handle has its own handler, also in a TLS expansion slot (beyond 64)", function()
    local p <close>, t, export = open()
    local tls_alloc = p:proc_address("kernel32.dll", "TlsAlloc")
    local last
    for _ = 1, 70 do last = p:call(tls_alloc) end
    assert.is_true(last >= 64 and last < 1088)
    local q <close> = rmem.open(t.pid, ACCESS) -- its handler takes the next slot
    local store = q:func(export("rmem_test_store"), "void", { "ptr", "i32" })
    assert.equal(16, helpers.error_of(store, 16, 1).address)
    assert.equal(24, helpers.error_of(p:func(export("rmem_test_store"), "void", { "ptr", "i32" }), 24, 1).address)
    answers(q, export)
    answers(p, export)
    t:stop()
  end)

  helpers.win_it("the handler passes other threads' exceptions on to the target's own handlers", function()
    local p <close>, t, export = open()
    answers(p, export) -- installs rmem's handler, the first in the chain
    -- the target's own handler, last in the chain: it counts exceptions and
    -- skips the 2-byte instruction that raised them
    local code = p:alloc(rmem.page_size, { protect = "rwx" })
    local counter = code.address + 0x100
    code:write(0, "\x49\xBB" .. string.pack("<i8", counter)
      .. "\xF0\x49\xFF\x03" -- lock inc qword [r11]
      .. "\x48\x8B\x51\x08\x48\x83\x82\xF8\x00\x00\x00\x02" -- add qword [context.Rip], 2
      .. "\xB8\xFF\xFF\xFF\xFF\xC3") -- return EXCEPTION_CONTINUE_EXECUTION
    code:write(0x80, "\x0F\x0B\x31\xC0\xC3") -- a thread routine: ud2; return 0
    local k32 = p:module("kernel32.dll")
    assert.is_true(p:call_with(p:proc_address(k32, "AddVectoredExceptionHandler"), { 0, code.address }) ~= 0)
    -- a thread that is not rmem's: its exception reaches the target's handler
    p:call_with(p:proc_address(k32, "CreateThread"), { 0, 0, code.address + 0x80, 0, 0, 0 })
    local deadline = os.clock() + 10
    while p:read_u64(counter) == 0 and os.clock() < deadline do end
    assert.equal(1, p:read_u64(counter))
    -- an rmem call's fault is rmem's: the target's handler never sees it
    assert.equal("EXCEPTION_ILLEGAL_INSTRUCTION", helpers.error_of(p.call, p, code.address + 0x80).name)
    assert.equal(1, p:read_u64(counter))
    answers(p, export)
    t:stop()
  end)

  for _, bits in ipairs { 64, 32 } do
    helpers.linux_it(bits .. "-bit: ends with EFAULT and the address; the target carries on", function()
      local p <close>, t, export = open(bits)
      local store = p:func(export("rmem_test_store"), "void", { "ptr", "i32" })
      local e = helpers.error_of(store, 0, 5)
      assert.equal("EFAULT", e.name)
      assert.equal("func", e.op)
      assert.equal(0, e.address)
      assert.equal(8, helpers.error_of(store, 8, 5).address)
      e = helpers.error_of(p.call, p, 0, 1)
      assert.equal("EFAULT", e.name)
      assert.equal(0, e.address)
      local code = p:alloc(rmem.page_size, { protect = "rwx" })
      code:write(0, "\x90\x0F\x0B") -- nop; ud2
      assert.equal(code.address + 1, helpers.error_of(p.call, p, code.address).address)
      answers(p, export)
      t:stop()
    end)
  end
end)

describe("p:func arguments", function()
  local p, t, export
  setup(function() p, t, export = open() end)
  teardown(function() p:close() t:stop() end)

  it("bad types and options are argument errors of 'func'", function()
    local a = export("rmem_test_i32")
    for _, case in ipairs {
      { function() p:func(-1, "i32", {}) end, "#1", "address must not be negative" },
      { function() p:func(a, "int", {}) end, "#2", "ret must be one of void i8 .* wstring, got 'int'" },
      { function() p:func(a, nil, {}) end, "#2", "got nil" },
      { function() p:func(a, "i32", "i32") end, "#3", "args must be a list of type names, got string" },
      { function() p:func(a, "i32", { "i32", "double" }) end, "#3", "args%[2%] must be one of i8 .*, got 'double'" },
      { function() p:func(a, "i32", { "void" }) end, "#3", "args%[1%] must be one of i8" },
      { function() p:func(a, "i32", { x = "i32" }) end, "#3", "args must be a list, got key x" },
      { function() p:func(a, "i32", {}, { convention = "fastcall" }) end, "#4", "convention must be" },
      { function() p:func(a, "i32", {}, { wait = 1 }) end, "#4", "unknown option 'wait'" },
    } do
      local ok, err = pcall(case[1])
      assert.is_false(ok)
      assert.matches("bad argument " .. case[2] .. " to 'func' %(", err)
      assert.matches(case[3], err)
    end
  end)

  it("bad calls are argument errors naming the callable, before touching the target", function()
    local f = p:func(export("rmem_test_mixed"), "i64", { "i8", "f64", "string", "bool", "ptr", "u64" },
      { name = "mixed" })
    local unnamed = p:func(export("rmem_test_i32"), "i32", { "i32" })
    assert.equal(0, unnamed(1)) -- (the target has settled, and on Windows has rmem's handler)
    local before = helpers.mapped_count(p)
    for _, case in ipairs {
      { function() f(1, 2.0) end, "#3 to 'mixed' %(expected 6 arguments, got 2%)" },
      { function() f(1, 2, "s", true, 0, 0, 7) end, "#7 to 'mixed' %(expected 6 arguments, got 7%)" },
      { function() f(128, 2, "s", true, 0, 0) end, "#1 to 'mixed' %(i8 must be between %-128 and 127, got 128%)" },
      { function() f(1.5, 2, "s", true, 0, 0) end, "#1 to 'mixed' %(i8 %(an integer%) expected, got 1.5%)" },
      { function() f(1, "2", "s", true, 0, 0) end, "#2 to 'mixed' %(f64 %(a number%) expected, got string%)" },
      { function() f(1, 2, 3, true, 0, 0) end, "#3 to 'mixed' %(string %(a string or nil%) expected, got 3%)" },
      { function() f(1, 2, "s", 1, 0, 0) end, "#4 to 'mixed' %(bool %(true or false%) expected, got 1%)" },
      { function() f(1, 2, "s", true, -1, 0) end, "#5 to 'mixed' %(ptr out of the 64%-bit address range" },
      { function() f(1, 2, "s", true, 0, 2.0 ^ 64) end, "#6 to 'mixed' %(u64 %(an integer%) expected" },
      { function() unnamed("x") end, "#1 to 'func 0x%x+' %(i32 %(an integer%) expected, got string%)" },
    } do
      local ok, err = pcall(case[1])
      assert.is_false(ok)
      assert.matches("^[^:]*24%-func_spec%.lua:%d+: bad argument " .. case[2], err)
    end
    assert.equal(before, helpers.mapped_count(p))
    assert.matches("^rmem.Func i32 func 0x%x+%(i32%) at 0x%x+$", tostring(unnamed))
  end)
end)
