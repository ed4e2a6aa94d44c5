--- Pointer chains and hex dumps: p:resolve, p:hexdump, rmem.hex.
local Error = require "rmem.error"
local check = require "rmem.check"

local tools = {}

--- The whole of a file, or nil if it cannot be opened (the /proc files the
-- Linux hints read, the ELF files proc_address parses).
function tools.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- The module argument n of fname: a module table (an integer base, and
-- the field `needs` names if any: "size" or "path"), or the name of one
-- (an argument error if the process has none by that name).
function tools.module_of(p, m, n, fname, needs)
  if type(m) == "table" then
    local base, v = m.base, needs and m[needs]
    local ok = math.type(base) == "integer" and base >= 0
    if needs == "size" then
      ok = ok and math.type(v) == "integer" and v >= 0 and v <= math.maxinteger - base
    elseif needs then
      ok = ok and type(v) == "string"
    end
    if not ok then
      check.argerror(n, fname, ("a module table needs an integer base%s, as p:module() "
        .. "gives"):format(needs and " and " .. needs or ""))
    end
    return m
  end
  if type(m) ~= "string" then
    check.argerror(n, fname, "module must be a name or a module table, got " .. type(m))
  end
  local found = p:module(m)
  if not found then check.argerror(n, fname, ("no module named '%s'"):format(m)) end
  return found
end

--- "0x7FF6A0010000"; width pads with zeros to that many hex digits.
function tools.hex(n, width)
  n = check.integer(n, 1, "hex", "number")
  if width ~= nil then
    local w = check.integer(width, 2, "hex", "width")
    if w < 0 or w > 99 then -- (string.format's limit)
      check.argerror(2, "hex", ("width must be 0 to 99, got %d"):format(w))
    end
    return ("0x%0" .. w .. "X"):format(n)
  end
  return ("0x%X"):format(n)
end

--- The error for a pointer chain that leaves the address space at `step`
-- (0: the base expression).
local function overflow(p, step, what, address)
  error(Error.new { op = "resolve", name = "ADDRESS_OVERFLOW", pid = p.pid, address = address,
    step = step, message = ("%s: %s leaves the address space."):format(
      step == 0 and "the base" or "step " .. step, what),
    hint = "an offset or a pointer in the chain is wrong: p:hexdump(addr, 64) shows the "
      .. "memory a step reads" }, 0)
end

--- base + off, which must stay in [0, 2^bits) (Lua's integers end at 2^63 - 1).
local function offset_address(p, base, off, step)
  local top = p.bits == 32 and 0xFFFFFFFF or math.maxinteger
  if base < 0 or base > top or (off > 0 and base > top - off) or (off < 0 and base + off < 0) then
    -- (a pointer with the top bit set reads as a negative integer)
    overflow(p, step, ("0x%x %s 0x%x"):format(base, off < 0 and "-" or "+",
      off < 0 and -off or off), base)
  end
  return base + off
end

--- The address that "module+0xOFFSET" (or "module", or "module+123") names.
local function module_address(p, expr)
  local name, sign, off = expr:match("^%s*(.-)%s*([+-])%s*(%w+)%s*$")
  local offset = 0
  if name and name ~= "" then
    offset = math.tointeger(tonumber(off))
    if not offset then
      check.argerror(1, "resolve", ("bad offset '%s' in '%s'"):format(off, expr))
    end
    if sign == "-" then offset = -offset end
  else
    name = expr:match("^%s*(.-)%s*$")
  end
  local m = p:module(name)
  if not m then
    error(Error.new { op = "resolve", name = "MODULE_NOT_FOUND", pid = p.pid,
      message = ("no module named '%s' in the process."):format(name),
      hint = "p:modules() lists the modules and their names" }, 0)
  end
  return offset_address(p, m.base, offset, 0)
end

--- Follows a pointer chain: reads a pointer at base, adds the first offset,
-- reads a pointer there, ..., adds the last offset and returns that
-- address (not read). base is an address or "module+0xOFFSET".
local function resolve(p, base, ...)
  local offsets = table.pack(...)
  if type(base) == "string" and base:find("->", 1, true) then
    -- the pointer scan's form, "game.exe+0x1A2B30 -> 0x48 -> 0x8", then
    -- any further offsets given as arguments
    local steps, chained = {}, { n = 0 }
    for step in (base .. "->"):gmatch("(.-)%->") do steps[#steps + 1] = step end
    base = steps[1]
    for i = 2, #steps do
      local off = math.tointeger(tonumber((steps[i]:match("^%s*(.-)%s*$"))))
      if not off then
        check.argerror(1, "resolve", ("bad offset '%s' in the chain"):format(steps[i]))
      end
      chained.n = chained.n + 1
      chained[chained.n] = off
    end
    for i = 1, offsets.n do chained[chained.n + i] = offsets[i] end
    chained.n = chained.n + offsets.n
    offsets = chained
  end
  local address = type(base) == "string" and module_address(p, base)
    or check.address(base, 1, "resolve")
  local width = p.bits // 8
  for i = 1, offsets.n do
    local off = check.integer(offsets[i], i + 1, "resolve", "offset")
    if address > math.maxinteger - width then
      overflow(p, i, ("the pointer at 0x%x"):format(address), address)
    end
    local ok, ptr = pcall(p.read_ptr, p, address)
    if not ok then
      local e = ptr
      if not Error.is_error(e) then error(e, 0) end
      error(Error.new { op = "resolve", name = e.name, code = e.code, pid = p.pid,
        address = address, step = i,
        message = ("step %d: cannot read the pointer at 0x%x: %s"):format(i, address, e.message),
        hint = e.hint }, 0)
    end
    address = offset_address(p, ptr, off, i)
  end
  return address
end

--- Classic hex + ASCII lines for n bytes at address, 16 a line.
local function hexdump(p, address, n)
  local data = p:read(address, n)
  local lines = {}
  for i = 1, #data, 16 do
    local row = data:sub(i, i + 15)
    local hexes = {}
    for j = 1, 16 do
      hexes[j] = j <= #row and ("%02X"):format(row:byte(j)) or "  "
    end
    lines[#lines + 1] = ("%016X  %s  %s  |%s|"):format(address + i - 1,
      table.concat(hexes, " ", 1, 8), table.concat(hexes, " ", 9, 16),
      (row:gsub("[^\32-\126]", ".")))
  end
  return table.concat(lines, "\n")
end

function tools.install(Process)
  Process.resolve = resolve
  Process.hexdump = hexdump
end

return tools
