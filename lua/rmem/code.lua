--- Disassembly and signatures: rmem.disasm, p:disasm, p:make_signature.
-- The decoder is the C module rmem.disasm (Capstone), loaded on first use so
-- that everything else works where it was not built.
local check = require "rmem.check"
local Error = require "rmem.error"

local code = {}

--- The rmem.disasm module (require keeps it once loaded), or an rmem.Error
-- saying how to get it.
function code.engine(op)
  local ok, mod = pcall(require, "rmem.disasm")
  if not ok then
    error(Error.new { op = op, name = "NO_DISASSEMBLER",
      message = "the rmem.disasm module (Capstone) is not installed.",
      hint = "install Capstone 4 (Debian/Ubuntu: apt install libcapstone-dev; MSYS2: "
        .. "pacman -S mingw-w64-x86_64-capstone) and rebuild rmem (luarocks make, or "
        .. "scripts/bootstrap in a checkout)" }, 0)
  end
  return mod
end

local Insn = { __name = "rmem.Instruction" }
Insn.__index = Insn

local function hex_bytes(s)
  return (s:gsub(".", function(c) return ("%02X "):format(c:byte()) end):sub(1, -2))
end

function Insn:__tostring()
  return ("0x%X  %s"):format(self.address, self.text)
end

local Listing = { __name = "rmem.Listing" }
Listing.__index = Listing

--- A debugger-like listing: address, bytes, instruction, one line each.
function Listing:__tostring()
  local lines, width = {}, 0
  for _, i in ipairs(self) do width = math.max(width, #i.bytes * 3 - 1) end
  width = math.min(width, 30)
  for _, i in ipairs(self) do
    lines[#lines + 1] = ("0x%X  %-" .. width .. "s  %s"):format(i.address, hex_bytes(i.bytes), i.text)
  end
  return table.concat(lines, "\n")
end

--- Decodes bytes at address: a Listing of instructions.
function code.decode(bytes, address, bits, count, op)
  local list = code.engine(op).disasm(bytes, address, bits, count)
  for _, i in ipairs(list) do setmetatable(i, Insn) end
  return setmetatable(list, Listing)
end

--- rmem.disasm(bytes, address, bits)
function code.disasm(bytes, address, bits)
  if type(bytes) ~= "string" then
    check.argerror(1, "disasm", "bytes must be a string, got " .. type(bytes))
  end
  local a = check.address(address or 0, 2, "disasm")
  bits = bits or 64
  if bits ~= 32 and bits ~= 64 then check.argerror(3, "disasm", "bits must be 32 or 64") end
  return code.decode(bytes, a, bits, nil, "disasm")
end

--- Up to n bytes from address, fewer where the readable memory ends.
function code.read_code(p, a, n)
  local info = p:query(a)
  if info.state == "commit" then n = math.min(n, info.base + info.size - a) end
  return p:read(a, n)
end

--- p:disasm(address [, count]): count instructions (default 16).
local function disasm(p, address, count)
  local a = check.address(address, 1, "disasm")
  count = count == nil and 16 or check.size(count, 2, "disasm")
  code.engine("disasm")
  return code.decode(code.read_code(p, a, count * 15), a, p.bits, count, "disasm")
end

--- The module that holds address, or nil.
function code.module_at(p, a)
  for _, m in ipairs(p:modules()) do
    if a >= m.base and a < m.base + m.size then return m end
  end
end

--- The byte positions (1-based, within the instruction) a signature must not
-- keep: relative branch targets, RIP-relative and absolute addresses, and
-- immediates that point into a module (absolute addresses in 32-bit code).
function code.volatile_bytes(i, in_module)
  local wild = {}
  local function mark(off, size)
    for k = off + 1, off + size do wild[k] = true end
  end
  if i.target and i.imm_offset then mark(i.imm_offset, i.imm_size) end
  if (i.rip_relative or i.absolute) and i.disp_offset then mark(i.disp_offset, i.disp_size) end
  if i.imm_offset and not i.target and i.imm_size >= 4 then
    local v = string.unpack("<I" .. i.imm_size, i.bytes, i.imm_offset + 1)
    if in_module(v) then mark(i.imm_offset, i.imm_size) end
  end
  return wild
end

local SIG_OPTS = { max_length = true, module = true }

--- p:make_signature(address [, opts]): a scan pattern that matches only the
-- code at address in its module, or nil and the reason.
local function make_signature(p, address, opts)
  local a = check.address(address, 1, "make_signature")
  opts = check.options(opts, 2, "make_signature", SIG_OPTS)
  local max = opts.max_length and check.size(opts.max_length, 2, "make_signature") or 64
  local m
  if opts.module ~= nil then
    m = require("rmem.tools").module_of(p, opts.module, 2, "make_signature")
  else
    m = code.module_at(p, a)
    if not m then return nil, ("0x%X is not inside a module"):format(a) end
  end
  local modules = p:modules()
  local function in_module(v)
    for _, mod in ipairs(modules) do
      if v >= mod.base and v < mod.base + mod.size then return true end
    end
    return false
  end
  code.engine("make_signature")
  local list = code.decode(code.read_code(p, a, max + 15), a, p.bits, nil, "make_signature")
  local tokens, matches = {}, nil
  for _, i in ipairs(list) do
    if #tokens + i.size > max then break end
    local wild = code.volatile_bytes(i, in_module)
    for k = 1, i.size do
      tokens[#tokens + 1] = wild[k] and "??" or ("%02X"):format(i.bytes:byte(k))
    end
    local last = #tokens
    while tokens[last] == "??" do last = last - 1 end
    local pattern = table.concat(tokens, " ", 1, last)
    matches = p:scan_all(pattern, { module = m, limit = 2 })
    if #matches == 1 and matches[1] == a then return pattern end
  end
  if #list == 0 then return nil, ("no instruction decodes at 0x%X"):format(a) end
  return nil, ("no unique signature within %d bytes at 0x%X (%s)"):format(max, a,
    matches and ("the first %d bytes match elsewhere in %s too"):format(#tokens, m.name)
      or "the code there is shorter")
end

function code.install(Process)
  Process.disasm = disasm
  Process.make_signature = make_signature
end

return code
