-- Typed access, strings and string.pack layouts, on processes and regions.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local PAGE = rmem.page_size

describe("typed access", function()
  local p, t, r

  before_each(function()
    p, t = helpers.open_target()
    r = p:alloc(2 * PAGE)
  end)
  after_each(function() p:close() t:stop() end)

  it("reads and writes every integer and float type, little-endian", function()
    local cases = {
      { "u8", 0xAB, "\xAB" }, { "i8", -2, "\xFE" },
      { "u16", 0xBEEF, "\xEF\xBE" }, { "i16", -2, "\xFE\xFF" },
      { "u32", 0xDEADBEEF, "\xEF\xBE\xAD\xDE" }, { "i32", -559038737, "\xEF\xBE\xAD\xDE" },
      { "u64", 0x0102030405060708, "\x08\x07\x06\x05\x04\x03\x02\x01" },
      { "i64", math.mininteger, "\0\0\0\0\0\0\0\x80" },
      { "f32", 1.5, string.pack("<f", 1.5) }, { "f64", -0.1, string.pack("<d", -0.1) },
    }
    for i, c in ipairs(cases) do
      local a = r.address + i * 16
      assert.equal(#c[3], p["write_" .. c[1]](p, a, c[2]))
      assert.equal(c[3], p:read(a, #c[3]))
      assert.equal(c[2], p["read_" .. c[1]](p, a))
      assert.equal(c[2], r["read_" .. c[1]](r, i * 16))
    end
  end)

  it("reads u64 above 2^63 as Lua's wrapped integer", function()
    p:write(r.address, ("\xFF"):rep(8))
    assert.equal(-1, p:read_u64(r.address))
    assert.equal(0xFFFFFFFF, p:read_u32(r.address))
  end)

  it("read_ptr and write_ptr follow the target's pointer size", function()
    assert.equal(p.bits // 8, r:write_ptr(8, r.address))
    assert.equal(r.address, p:read_ptr(r.address + 8))
    assert.equal(string.pack(p.bits == 32 and "<I4" or "<I8", r.address), r:read(8, p.bits // 8))
  end)

  it("rejects values that do not fit", function()
    assert.has_error(function() p:write_u8(r.address, 256) end,
      "bad argument #2 to 'write_u8' (256 does not fit in u8)")
    assert.has_error(function() p:write_i16(r.address, 40000) end,
      "bad argument #2 to 'write_i16' (40000 does not fit in i16)")
    assert.has_error(function() p:write_u32(r.address, "1") end,
      "bad argument #2 to 'write_u32' (value must be a number, got string)")
    assert.equal(("\0"):rep(4), r:read(0, 4))
  end)

  it("read_string stops at NUL, at max, and at the default of 4096", function()
    p:write_string(r.address, "hello")
    assert.equal("hello\0", p:read(r.address, 6))
    assert.equal("hello", p:read_string(r.address))
    assert.equal("hel", p:read_string(r.address, 3))
    p:write(r.address, ("x"):rep(2 * PAGE))
    assert.equal(4096, #p:read_string(r.address))
    assert.equal(PAGE + 10, #p:read_string(r.address, PAGE + 10))
  end)

  it("read_string ends at the region's end, and reads a string ending before an unreadable page", function()
    r:write(2 * PAGE - 3, "end")
    assert.equal("end", r:read_string(2 * PAGE - 3))
    r:write(2 * PAGE - 4, "abc\0")
    assert.equal("abc", p:read_string(r.address + 2 * PAGE - 4, 100))
  end)

  it("wide strings: UTF-16LE both ways, surrogate pairs included", function()
    local text = "héllo wörld 𝄞 ✓"
    local n = p:write_wstring(r.address, text)
    local units = 0
    for _, c in utf8.codes(text) do units = units + (c >= 0x10000 and 2 or 1) end
    assert.equal(2 * units + 2, n)
    assert.equal("h\0\xE9\0", p:read(r.address, 4))
    assert.equal("\x34\xD8\x1E\xDD", p:read(r.address + 2 * 12, 4)) -- U+1D11E as a pair
    assert.equal(text, p:read_wstring(r.address))
    assert.equal("hé", p:read_wstring(r.address, 2))
    assert.equal(text, r:read_wstring(0))
  end)

  it("a lone surrogate reads as U+FFFD; invalid UTF-8 cannot be written", function()
    p:write(r.address, "\x00\xD8A\0\0\0")
    assert.equal("\u{FFFD}A", p:read_wstring(r.address))
    assert.has_error(function() p:write_wstring(r.address, "\xFF") end,
      "bad argument #2 to 'write_wstring' (text is not valid UTF-8)")
  end)

  it("pack and unpack use string.pack formats and exactly packsize bytes", function()
    assert.equal(16, r:pack(0, "<i4xxxxd", -5, 2.5))
    assert.same({ -5, 2.5 }, { p:unpack(r.address, "<i4xxxxd") })
    assert.same({ -5, 2.5 }, { r:unpack(0, "<i4xxxxd") })
    r:write(PAGE * 2 - 4, "\1\0\0\0")
    assert.equal(1, r:unpack(PAGE * 2 - 4, "<I4")) -- the last 4 bytes: no read past them
    assert.has_error(function() p:unpack(r.address, "<s4") end,
      "bad argument #2 to 'unpack' (format '<s4' has no fixed size (variable-length format))")
    assert.has_error(function() r:unpack(PAGE * 2 - 2, "<I4") end)
  end)

  it("region methods are bounds-checked", function()
    assert.has_error(function() r:read_u32(2 * PAGE - 2) end,
      "bad argument #2 to 'read_u32' (range +0x1ffe..+0x2002 is outside the region (size 0x2000))")
    assert.has_error(function() r:write_string(2 * PAGE - 2, "ab") end)
    assert.has_error(function() r:write_u8(-1, 1) end,
      "bad argument #1 to 'write_u8' (offset must not be negative, got -1)")
    assert.equal(1, r:write_u8(2 * PAGE - 1, 7))
    assert.equal(7, r:read_u8(2 * PAGE - 1))
  end)
end)
