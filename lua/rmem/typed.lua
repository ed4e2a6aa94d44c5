--- Typed access, strings and string.pack layouts, for processes and regions.
-- `typed.install(Process, Region)` adds the methods to both classes:
-- processes take addresses, regions offsets (bounds-checked).
local check = require "rmem.check"

local typed = {}

-- little-endian formats of the fixed-size types
local FORMATS = {
  u8 = "<I1", u16 = "<I2", u32 = "<I4", u64 = "<I8",
  i8 = "<i1", i16 = "<i2", i32 = "<i4", i64 = "<i8",
  f32 = "<f", f64 = "<d",
}
local DEFAULT_MAX = 4096
local Process -- the class (typed.install)
typed.formats = FORMATS -- for the modules that read or write values by type name

local function ptr_format(p)
  return type(p) == "table" and p.bits == 32 and "<I4" or "<I8"
end

--- Packs value with fmt for write_<name> on p, with the error at the
-- user's line.
local function pack_value(p, name, fmt, value)
  if type(p) ~= "table" then
    check.self_error(Process, "p", "write_" .. name, p)
  end
  if type(value) ~= "number" then
    check.argerror(2, "write_" .. name, "value must be a number, got " .. type(value))
  end
  local ok, bytes = pcall(string.pack, fmt, value)
  if not ok then
    check.argerror(2, "write_" .. name, ("%s does not fit in %s"):format(tostring(value), name))
  end
  return bytes
end

local function max_of(max, fname)
  if max == nil then return DEFAULT_MAX end
  local m = check.integer(max, 2, fname, "max")
  if m < 0 then check.argerror(2, fname, "max must not be negative, got " .. m) end
  return m
end

--- Reads up to max units of `unit` bytes at address, stopping at a unit of
-- zeros; reads page by page so a string that ends just before an unreadable
-- page is still read.
local function read_units(p, address, max, unit, page)
  local parts, got, a = {}, 0, address
  while got < max do
    local want = math.min(max - got, (page - a % page) // unit)
    if want == 0 then want = 1 end -- a unit straddling pages (odd address)
    local s = p:read(a, want * unit)
    for i = 1, #s, unit do
      if s:sub(i, i + unit - 1) == ("\0"):rep(unit) then
        parts[#parts + 1] = s:sub(1, i - 1)
        return table.concat(parts)
      end
    end
    parts[#parts + 1] = s
    got, a = got + want, a + want * unit
  end
  return table.concat(parts)
end

--- UTF-16LE to UTF-8; a lone surrogate becomes U+FFFD.
local function utf16_to_utf8(s)
  local out, i, n = {}, 1, #s - 1
  while i <= n do
    local c = string.unpack("<I2", s, i)
    i = i + 2
    if c >= 0xD800 and c <= 0xDBFF and i <= n then
      local lo = string.unpack("<I2", s, i)
      if lo >= 0xDC00 and lo <= 0xDFFF then
        c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00)
        i = i + 2
      else
        c = 0xFFFD
      end
    elseif c >= 0xD800 and c <= 0xDFFF then
      c = 0xFFFD
    end
    out[#out + 1] = utf8.char(c)
  end
  return table.concat(out)
end

--- UTF-8 to UTF-16LE; raises an argument error for invalid UTF-8.
local function utf8_to_utf16(s, fname, n)
  local ok, units = pcall(function()
    local out = {}
    for _, c in utf8.codes(s) do
      if c >= 0x10000 then
        c = c - 0x10000
        out[#out + 1] = string.pack("<I2I2", 0xD800 + (c >> 10), 0xDC00 + (c & 0x3FF))
      else
        out[#out + 1] = string.pack("<I2", c)
      end
    end
    return table.concat(out)
  end)
  if not ok then check.argerror(n or 2, fname, "text is not valid UTF-8") end
  return units
end

local function check_string(s, fname)
  if type(s) ~= "string" then
    check.argerror(2, fname, "text must be a string, got " .. type(s))
  end
end

--- write_string's third argument: a field size that `need` units (the
-- NUL included) must fit in, or the options for p:write (returned).
local function fits(need, max, fname, unit)
  if type(max) ~= "number" then return max end
  local field = check.size(max, 3, fname)
  if need > field then
    check.argerror(2, fname, ("the text and its NUL need %d %s, the field (max) holds %d")
      :format(need, unit, field))
  end
  return nil
end

--- The fixed packsize of fmt, or an argument error for a variable-length
-- or invalid format.
local function packsize(fmt, fname)
  if type(fmt) ~= "string" then
    check.argerror(2, fname, "format must be a string, got " .. type(fmt))
  end
  local ok, size = pcall(string.packsize, fmt)
  if not ok then
    check.argerror(2, fname, ("format '%s' has no fixed size (%s)"):format(fmt,
      tostring(size):match("%((.*)%)$") or tostring(size)))
  end
  return size
end

--- The methods on a process, by address.
-- The fixed-size methods are hot paths: they call Process.read and
-- Process.write directly, which check their self (a dot for the colon),
-- and are not wrapped (check.methods).
typed.inline = { read_ptr = true, write_ptr = true }

local function process_methods(page)
  local read, write = Process.read, Process.write
  for name, fmt in pairs(FORMATS) do
    local size = string.packsize(fmt)
    Process["read_" .. name] = function(p, address)
      return (string.unpack(fmt, read(p, address, size)))
    end
    Process["write_" .. name] = function(p, address, value, opts)
      local n = write(p, address, pack_value(p, name, fmt, value), opts)
      return n -- (not a tail call: argument errors name write_<name>)
    end
    typed.inline["read_" .. name], typed.inline["write_" .. name] = true, true
  end
  function Process:read_ptr(address)
    local fmt = ptr_format(self)
    return (string.unpack(fmt, read(self, address, string.packsize(fmt))))
  end
  function Process:write_ptr(address, value, opts)
    local n = write(self, address, pack_value(self, "ptr", ptr_format(self), value), opts)
    return n
  end
  --- Bytes up to the first NUL or max bytes (4096).
  function Process:read_string(address, max)
    local a = check.address(address, 1, "read_string")
    return read_units(self, a, max_of(max, "read_string"), 1, page)
  end
  --- UTF-16LE up to a NUL unit or max units (4096), as UTF-8.
  function Process:read_wstring(address, max)
    local a = check.address(address, 1, "read_wstring")
    return utf16_to_utf8(read_units(self, a, max_of(max, "read_wstring"), 2, page))
  end
  --- Writes the bytes and a NUL; returns the bytes written. max (a number)
  -- is the size of the field in bytes: a text that does not fit with its
  -- NUL is refused; a table is the options of p:write.
  function Process:write_string(address, text, max)
    check_string(text, "write_string")
    local opts = fits(#text + 1, max, "write_string", "bytes")
    local n = self:write(address, text .. "\0", opts)
    return n
  end
  --- Writes UTF-8 text as UTF-16LE and a NUL unit; returns the bytes
  -- written. max (a number) is the field's size in UTF-16 units.
  function Process:write_wstring(address, text, max)
    check_string(text, "write_wstring")
    local units = utf8_to_utf16(text, "write_wstring") .. "\0\0"
    local opts = fits(#units // 2, max, "write_wstring", "UTF-16 units")
    local n = self:write(address, units, opts)
    return n
  end
  --- string.unpack(fmt) over exactly string.packsize(fmt) bytes.
  function Process:unpack(address, fmt)
    local data = self:read(address, packsize(fmt, "unpack"))
    local values = table.pack(pcall(string.unpack, fmt, data))
    if not values[1] then -- "<i16" whose bytes do not fit in a Lua integer
      check.argerror(2, "unpack", ("format '%s' at 0x%x: %s"):format(fmt, address,
        tostring(values[2]):match("%((.*)%)$") or tostring(values[2])))
    end
    return table.unpack(values, 2, values.n - 1)
  end
  --- Writes string.pack(fmt, ...); returns the bytes written.
  function Process:pack(address, fmt, ...)
    packsize(fmt, "pack")
    local ok, bytes = pcall(string.pack, fmt, ...)
    if not ok then check.argerror(3, "pack", tostring(bytes):match("%((.*)%)$") or tostring(bytes)) end
    return self:write(address, bytes, nil)
  end
end

--- The same methods on a region, by offset: each checks that the bytes it
-- touches lie inside the region.
local function region_methods(Region, span)
  local function sized(name, size_of)
    Region[name] = function(r, offset, ...)
      local a = span(r, name, offset, size_of(r, ...), 1)
      return r.process[name](r.process, a, ...)
    end
  end
  for name, fmt in pairs(FORMATS) do
    local size = string.packsize(fmt)
    sized("read_" .. name, function() return size end)
    sized("write_" .. name, function() return size end)
  end
  local function ptr_size(r) return r.process.bits // 8 end
  sized("read_ptr", ptr_size)
  sized("write_ptr", ptr_size)
  sized("unpack", function(_, fmt) return packsize(fmt, "unpack") end)
  sized("pack", function(_, fmt, ...)
    packsize(fmt, "pack")
    local ok, bytes = pcall(string.pack, fmt, ...)
    return ok and #bytes or 0
  end)
  sized("write_string", function(_, text)
    check_string(text, "write_string")
    return #text + 1
  end)
  sized("write_wstring", function(_, text)
    check_string(text, "write_wstring")
    return #utf8_to_utf16(text, "write_wstring") + 2
  end)
  -- strings stop at the region's end at the latest
  for name, unit in pairs { read_string = 1, read_wstring = 2 } do
    Region[name] = function(r, offset, max)
      local a = span(r, name, offset, 0, 1)
      local room = (r.size - (a - r.address)) // unit
      return r.process[name](r.process, a, math.min(max_of(max, name), room))
    end
  end
end

--- UTF-8 to UTF-16LE for argument n of fname (an error if not UTF-8).
function typed.utf16(s, n, fname)
  return utf8_to_utf16(s, fname, n)
end

function typed.install(P, Region, span, page)
  Process = P
  process_methods(page)
  region_methods(Region, span)
end

-- for the value scanner's wstring values
typed.utf16_to_utf8 = utf16_to_utf8
typed.utf8_to_utf16 = utf8_to_utf16

return typed
