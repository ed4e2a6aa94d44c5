--- p:func: remote functions with typed arguments and results.
--
--   local add = p:func(address, "i32", { "i32", "f64", "ptr", "string" })
--   add(-5, 2.5, 0, "hi")
--
-- The call goes through remote.lua's stubs (the platform's convention,
-- floats in xmm registers or on the stack, x87 results stored by the
-- stub); this file converts Lua values to argument bits and results back.
local check = require "rmem.check"
local remote = require "rmem.remote"
local typed = require "rmem.typed"

local func = {}

local MAX_ARGS = 64

-- Integer types: bits and signedness.
local INTS = {
  i8 = { 8, true }, u8 = { 8, false }, i16 = { 16, true }, u16 = { 16, false },
  i32 = { 32, true }, u32 = { 32, false }, i64 = { 64, true }, u64 = { 64, false },
}
local OTHERS = { void = true, f32 = true, f64 = true, ptr = true, bool = true, string = true,
  wstring = true }
local NAMES = "void i8 u8 i16 u16 i32 u32 i64 u64 f32 f64 ptr bool string wstring"
local CONVENTIONS = { cdecl = true, stdcall = true }

local function describe(v)
  return math.type(v) and tostring(v) or type(v)
end

--- The low `bits` of v, read as signed or unsigned.
local function narrow(v, bits, signed)
  if bits == 64 then return v end
  local mask = (1 << bits) - 1
  v = v & mask
  if signed then v = (v ~ (1 << (bits - 1))) - (1 << (bits - 1)) end
  return v
end

--- An argument as the stubs take it ({ k = kind, v = value }); n and name
-- for the error.
local function convert(t, v, bits, n, name)
  local int = INTS[t]
  local function bad(what)
    check.argerror(n, name, ("%s expected, got %s"):format(what, describe(v)))
  end
  if int then
    local i = math.tointeger(v)
    if t == "u64" and math.type(v) == "float" and v >= 2^63 and v < 2^64 then
      i = math.tointeger(v - 2^64) -- the same bits as a (negative) Lua integer
    end
    if not i then bad(t .. " (an integer)") end
    local size, signed = int[1], int[2]
    if size < 64 then
      local lo = signed and -(1 << (size - 1)) or 0
      local hi = signed and (1 << (size - 1)) - 1 or (1 << size) - 1
      if i < lo or i > hi then
        check.argerror(n, name, ("%s must be between %d and %d, got %d"):format(t, lo, hi, i))
      end
    end
    return { k = (size == 64 and bits == 32) and "l" or "i", v = i }
  elseif t == "f32" or t == "f64" then
    if type(v) ~= "number" then bad(t .. " (a number)") end
    if t == "f32" then return { k = "f32", v = string.unpack("<I4", string.pack("<f", v)) } end
    return { k = "f64", v = string.unpack("<i8", string.pack("<d", v)) }
  elseif t == "bool" then
    if type(v) ~= "boolean" then bad("bool (true or false)") end
    return { k = "i", v = v and 1 or 0 }
  elseif t == "ptr" then
    if v == nil then return { k = "i", v = 0 } end
    local i = math.tointeger(v)
    if not i then bad("ptr (an address)") end
    if i < 0 or (bits == 32 and i > 0xFFFFFFFF) then
      check.argerror(n, name, ("ptr out of the %d-bit address range, got %d"):format(bits, i))
    end
    return { k = "i", v = i }
  end
  -- string, wstring: copied into the target; nil passes NULL
  if v == nil then return { k = "i", v = 0 } end
  if type(v) ~= "string" then bad(t .. " (a string or nil)") end
  if t == "wstring" then return { k = "s", v = typed.utf16(v, n, name) .. "\0\0" } end
  return { k = "s", v = v .. "\0" }
end

--- The result of type t from the stub's call block.
local function result(p, t, block)
  if t == "void" then return end
  local bits = p.bits
  local int
  if bits == 64 then
    int = string.unpack("<i8", block)
  else
    local eax, edx = string.unpack("<I4I4", block)
    int = (t == "i64" or t == "u64") and eax | edx << 32 or eax
  end
  local spec = INTS[t]
  if spec then return narrow(int, spec[1], spec[2]) end
  if t == "bool" then return int & 0xFF ~= 0 end
  if t == "ptr" then return int end
  if t == "f64" then return (string.unpack("<d", block, 9)) end
  if t == "f32" then -- xmm0's low 4 bytes; x87's st0 as a double, rounded to a float
    if bits == 64 then return (string.unpack("<f", block, 9)) end
    return (string.unpack("<f", string.pack("<f", (string.unpack("<d", block, 9)))))
  end
  if int == 0 then return nil end -- string, wstring: read before the call's memory goes
  return t == "string" and p:read_string(int) or p:read_wstring(int)
end

local Func = {}
Func.__index = Func
Func.__name = "rmem.Func"

function Func:__call(...)
  local n, want = select("#", ...), #self.args
  if n ~= want then
    check.argerror(math.min(n, want) + 1, self.name,
      ("expected %d argument%s, got %d"):format(want, want == 1 and "" or "s", n))
  end
  local p, bits, list = self.process, self.process.bits, {}
  for i, t in ipairs(self.args) do list[i] = convert(t, (select(i, ...)), bits, i, self.name) end
  local ret = self.ret
  return remote.invoke(p, self.address, list, {
    timeout = self.timeout, op = "func",
    float_ret = ret == "f32" or ret == "f64",
    finish = function(block) return result(p, ret, block) end,
  })
end

function Func:__tostring()
  return ("rmem.Func %s %s(%s) at 0x%X"):format(self.ret, self.name, table.concat(self.args, ", "),
    self.address)
end

local FUNC_OPTS = { convention = true, timeout = true, name = true }

local function type_name(v, n, what, void_ok)
  if type(v) ~= "string" or not (INTS[v] or OTHERS[v]) or (v == "void" and not void_ok) then
    check.argerror(n, "func", ("%s must be one of %s, got %s"):format(what,
      void_ok and NAMES or NAMES:gsub("^void ", ""), type(v) == "string" and ("'" .. v .. "'")
      or describe(v)))
  end
  return v
end

--- p:func(address, ret, args [, opts]) -> a callable: f(...) converts the
-- arguments, calls the function in the process and returns its result.
-- opts: convention ("cdecl" or "stdcall": 32-bit targets; 64-bit ones have
-- one convention), timeout (ms, 5000), name (for errors).
local function new(p, address, ret, args, opts)
  local a = check.address(address, 1, "func")
  type_name(ret, 2, "ret", true)
  if type(args) ~= "table" then
    check.argerror(3, "func", "args must be a list of type names, got " .. type(args))
  end
  local list = {}
  for k in pairs(args) do
    if math.type(k) ~= "integer" or k < 1 or k > #args then
      check.argerror(3, "func", "args must be a list, got key " .. tostring(k))
    end
  end
  if #args > MAX_ARGS then
    check.argerror(3, "func", ("at most %d arguments, got %d"):format(MAX_ARGS, #args))
  end
  for i, t in ipairs(args) do list[i] = type_name(t, 3, ("args[%d]"):format(i), false) end
  opts = check.options(opts, 4, "func", FUNC_OPTS)
  if opts.convention ~= nil and not CONVENTIONS[opts.convention] then
    check.argerror(4, "func", "convention must be \"cdecl\" or \"stdcall\", got "
      .. describe(opts.convention))
  end
  if opts.name ~= nil and type(opts.name) ~= "string" then
    check.argerror(4, "func", "name must be a string, got " .. describe(opts.name))
  end
  return setmetatable({
    process = p, address = a, ret = ret, args = list,
    convention = opts.convention or "cdecl",
    timeout = opts.timeout and check.size(opts.timeout, 4, "func") or 5000,
    name = opts.name or ("func 0x%X"):format(a),
  }, Func)
end

function func.install(Process)
  Process.func = new
end

return func
