--- Detour hooks: p:hook(address, payload). The whole instructions covering
-- a 5-byte jmp move to a trampoline allocated within reach, re-encoded so
-- that RIP-relative operands and relative branches still reach their
-- targets; the jump is written (and removed) with every thread stopped.
local core = require "rmem.core"
local check = require "rmem.check"
local Error = require "rmem.error"
local code = require "rmem.code"
local registry = require "rmem.live"

local windows = core.platform == "windows"
local BUSY = windows and 170 or 16 -- ERROR_BUSY, EBUSY: a thread is inside the trampoline

local hook = {}

-- The trampoline's data block: an in-flight counter (threads inside a
-- {call} payload), then the log ring's head, tail, dropped count, entries.
local COUNTER, HEAD, TAIL, DROPPED, ENTRIES = 0, 4, 8, 12, 64
local RING = 1024 -- log entries (a power of two)

-- A tiny assembler: parts of code with fixups for labels and addresses --

local Asm = {}
Asm.__index = Asm

local function asm(base, bits)
  return setmetatable({ base = base, bits = bits, parts = {}, len = 0, labels = {}, fix = {} }, Asm)
end

function Asm:emit(s)
  self.parts[#self.parts + 1] = s
  self.len = self.len + #s
  return self
end

function Asm:here() return self.base + self.len end

function Asm:label(name)
  self.labels[name] = self:here()
  return self
end

--- A size-byte relative field to target (an address or a label): the
-- distance from the end of the field, which ends the instruction.
function Asm:rel(target, size)
  self:emit(("\0"):rep(size))
  self.fix[#self.fix + 1] = { part = #self.parts, target = target, from = self:here(), size = size }
  return self
end

--- A 4-byte data reference: RIP-relative in 64-bit code, absolute in 32-bit.
function Asm:data(target)
  if self.bits == 64 then return self:rel(target, 4) end
  return self:emit(string.pack("<I4", target))
end

function Asm:finish()
  for _, f in ipairs(self.fix) do
    local to = type(f.target) == "string" and assert(self.labels[f.target], f.target) or f.target
    local d = to - f.from
    if self.bits == 32 then d = (d + 0x80000000) % 0x100000000 - 0x80000000 end
    local lim = 1 << (8 * f.size - 1)
    assert(d >= -lim and d < lim, "relative field out of range")
    self.parts[f.part] = string.pack("<i" .. f.size, d)
  end
  return table.concat(self.parts)
end

local function fits32(d) return d >= -0x80000000 and d <= 0x7FFFFFFF end

--- A jump from the current position to an address: rel32 where it
-- reaches, else (64-bit) jmp [rip+0] with the address after it.
function Asm:jmp(to)
  if self.bits == 32 or fits32(to - (self:here() + 5)) then
    return self:emit("\xE9"):rel(to, 4)
  end
  return self:emit("\xFF\x25\0\0\0\0" .. string.pack("<I8", to))
end

-- Relocating the moved instructions ------------------------------------------

local PREFIXES = { [0x66] = true, [0x67] = true, [0xF2] = true, [0xF3] = true, [0x2E] = true,
  [0x36] = true, [0x3E] = true, [0x26] = true, [0x64] = true, [0x65] = true, [0xF0] = true }

--- The opcode's position in an instruction (after prefixes and REX), and
-- whether an operand-size prefix (16-bit operands) came before it.
local function opcode_at(i, bits)
  local k, opsize = 1, false
  while PREFIXES[i.bytes:byte(k)] do
    if i.bytes:byte(k) == 0x66 then opsize = true end
    k = k + 1
  end
  if bits == 64 and i.bytes:byte(k) >= 0x40 and i.bytes:byte(k) <= 0x4F then k = k + 1 end
  return k, opsize
end

--- Appends instruction i, moved, to a; inside(target) gives the new
-- address of a target within the moved bytes (nil: outside); returns nil
-- and a reason where it cannot be moved. Every form has a fixed size for
-- targets inside the moved bytes, so two passes agree.
local function relocate(a, i, inside, moved_end, counter)
  local bits = a.bits
  if i.target then
    local k, opsize = opcode_at(i, bits)
    if opsize then return nil, ("a 16-bit branch (%s) cannot be moved"):format(i.text) end
    local op, op2 = i.bytes:byte(k), i.bytes:byte(k + 1)
    local to = inside(i.target) or i.target
    local near = inside(i.target) or bits == 32
    if i.kind == "jmp" then
      if near then return a:emit("\xE9"):rel(to, 4) end
      return a:jmp(to)
    elseif i.kind == "jcc" then
      local cc = (op >= 0x70 and op <= 0x7F) and op - 0x70 or (op == 0x0F and op2 - 0x80)
      if not cc or cc < 0 or cc > 15 then return nil, ("cannot move %s"):format(i.text) end
      if near or fits32(to - (a:here() + 6)) then
        return a:emit(string.char(0x0F, 0x80 + cc)):rel(to, 4)
      end
      -- the opposite condition skips a far jump
      return a:emit(string.char(0x70 + (cc ~ 1), 14)):jmp(to)
    elseif i.kind == "loop" then
      -- loop/jrcxz reach 127 bytes: they jump to a jump that reaches
      a:emit(i.bytes:sub(1, -2) .. "\x02")
      if near or fits32(to - (a:here() + 7)) then return a:emit("\xEB\x05\xE9"):rel(to, 4) end
      return a:emit("\xEB\x0E"):jmp(to)
    elseif i.kind == "call" then
      local ret = i.address + i.size
      if ret >= moved_end then
        -- push the original return address, then jump: the callee sees
        -- what it saw (32-bit get_pc_thunk reads it)
        if bits == 32 then return a:emit("\x68" .. string.pack("<I4", ret)):jmp(to) end
        a:emit("\x68" .. string.pack("<I4", ret & 0xFFFFFFFF)
          .. "\xC7\x44\x24\x04" .. string.pack("<I4", ret >> 32))
        return a:jmp(to)
      end
      -- a call whose return is among the moved instructions returns into
      -- the trampoline, counted so that the trampoline outlives it
      return hook.counted(a, counter, function()
        if near or fits32(to - (a:here() + 5)) then return a:emit("\xE8"):rel(to, 4) end
        return a:emit("\xFF\x15\x02\0\0\0\xEB\x08" .. string.pack("<I8", to))
      end)
    end
    return nil, ("cannot move %s (a relative operand)"):format(i.text)
  end
  if i.kind == "call" then -- indirect: it returns into the trampoline
    return hook.counted(a, counter, function() return hook.copy(a, i) end)
  end
  return hook.copy(a, i)
end

--- Instruction i as it is, its RIP-relative operand re-aimed.
function hook.copy(a, i)
  if not i.rip_relative then return a:emit(i.bytes) end
  local d = i.data - (a:here() + i.size)
  if not fits32(d) then
    return nil, ("%s at 0x%X: its data is out of reach of the trampoline"):format(i.text, i.address)
  end
  return a:emit(i.bytes:sub(1, i.disp_offset) .. string.pack("<i4", d)
    .. i.bytes:sub(i.disp_offset + i.disp_size + 1))
end

--- Wraps what emit() writes in an increment and a decrement of the
-- in-flight counter, with the flags kept.
function hook.counted(a, counter, emit)
  local push, pop = "\x9C", "\x9D"
  a:emit(push .. "\xF0\xFF\x05"):data(counter):emit(pop)
  local ok, why = emit()
  if not ok then return nil, why end
  return a:emit(push .. "\xF0\xFF\x0D"):data(counter):emit(pop)
end

-- Payloads -------------------------------------------------------------------

local REGS64 = { rax = 0, rcx = 1, rdx = 2, rbx = 3, rsp = 4, rbp = 5, rsi = 6, rdi = 7,
  r8 = 8, r9 = 9, r10 = 10, r11 = 11, r12 = 12, r13 = 13, r14 = 14, r15 = 15 }
local REGS32 = { eax = 0, ecx = 1, edx = 2, ebx = 3, esp = 4, ebp = 5, esi = 6, edi = 7 }

--- {call = fn}: every volatile register, the flags and xmm0-5 kept around
-- a call of fn; the red zone below rsp left alone.
local function call_payload(a, fn, counter)
  if a.bits == 64 then
    a:emit("\x48\x8D\xA4\x24\x80\xFF\xFF\xFF\x9C\xF0\xFF\x05"):data(counter)
    a:emit("\x50\x51\x52\x56\x57\x41\x50\x41\x51\x41\x52\x41\x53\x53\x48\x89\xE3"
      .. "\x48\x83\xE4\xF0\x48\x81\xEC\x80\x00\x00\x00")
    for k = 0, 5 do a:emit(string.char(0xF3, 0x0F, 0x7F, 0x44 | k << 3, 0x24, 32 + 16 * k)) end
    a:emit("\x48\xB8" .. string.pack("<I8", fn) .. "\xFF\xD0")
    for k = 0, 5 do a:emit(string.char(0xF3, 0x0F, 0x6F, 0x44 | k << 3, 0x24, 32 + 16 * k)) end
    a:emit("\x48\x89\xDC\x5B\x41\x5B\x41\x5A\x41\x59\x41\x58\x5F\x5E\x5A\x59\x58\xF0\xFF\x0D")
    a:data(counter):emit("\x9D\x48\x8D\xA4\x24\x80\x00\x00\x00")
  else
    a:emit("\x9C\xF0\xFF\x05"):data(counter):emit("\x60\x89\xE5\x83\xE4\xF0\x83\xEC\x60")
    for k = 0, 5 do a:emit(string.char(0xF3, 0x0F, 0x7F, 0x44 | k << 3, 0x24, 16 * k)) end
    a:emit("\xB8" .. string.pack("<I4", fn) .. "\xFF\xD0")
    for k = 0, 5 do a:emit(string.char(0xF3, 0x0F, 0x6F, 0x44 | k << 3, 0x24, 16 * k)) end
    a:emit("\x89\xEC\x61\xF0\xFF\x0D"):data(counter):emit("\x9D")
  end
end

--- {log = regs}: the thread id and the registers into the next free entry
-- of the ring (claimed with cmpxchg: many threads may log at once), or one
-- more dropped call when it is full.
local function log_payload(a, regs, data, esize)
  local bits = a.bits
  local head, tail, entries = data + HEAD, data + TAIL, data + ENTRIES
  if bits == 64 then
    -- saved: r11 [rsp], rdi +8, rsi +16, rdx +24, rcx +32, rax +40, flags +48
    a:emit("\x48\x8D\xA4\x24\x80\xFF\xFF\xFF\x9C\x50\x51\x52\x56\x57\x41\x53")
  else
    -- pushad: edi [esp], esi +4, ebp +8, esp +12, ebx +16, edx +20, ecx +24, eax +28
    a:emit("\x9C\x60")
  end
  a:label("retry")
  if bits == 64 then a:emit("\x8B\x05"):data(head) else a:emit("\xA1"):data(head) end
  a:emit("\x89\xC2\x2B\x15"):data(tail):emit("\x81\xFA" .. string.pack("<I4", RING))
  a:emit("\x0F\x83"):rel("drop", 4):emit("\x8D\x50\x01\xF0\x0F\xB1\x15"):data(head)
  a:emit("\x75"):rel("retry", 1)
  a:emit("\x89\xC6\x25" .. string.pack("<I4", RING - 1) .. "\x69\xC0" .. string.pack("<I4", esize))
  if bits == 64 then
    a:emit("\x48\x8D\x3D"):data(entries):emit("\x48\x01\xC7")
  else
    a:emit("\x8D\xB8" .. string.pack("<I4", entries))
  end
  if windows then -- the thread id from the TEB
    a:emit(bits == 64 and "\x65\x48\x8B\x04\x25\x48\x00\x00\x00" or "\x64\xA1\x24\x00\x00\x00")
  else -- gettid
    a:emit(bits == 64 and "\xB8\xBA\x00\x00\x00\x0F\x05" or "\xB8\xE0\x00\x00\x00\xCD\x80")
  end
  a:emit(bits == 64 and "\x48\x89\x47\x08" or "\x89\x47\x08")
  local saved64 = { r11 = 0, rdi = 8, rsi = 16, rdx = 24, rcx = 32, rax = 40 }
  local saved32 = { edi = 0, esi = 4, ebp = 8, esp = 12, ebx = 16, edx = 20, ecx = 24, eax = 28 }
  for k, r in ipairs(regs) do
    local at = string.pack("<I4", 8 + 8 * k)
    if bits == 32 then
      a:emit("\x8B\x84\x24" .. string.pack("<I4", saved32[r]))
      if r == "esp" then a:emit("\x83\xC0\x04") end -- as it was before pushfd
      a:emit("\x89\x87" .. at)
    elseif saved64[r] then
      a:emit("\x48\x8B\x84\x24" .. string.pack("<I4", saved64[r]) .. "\x48\x89\x87" .. at)
    elseif r == "rsp" then -- as it was before the red zone and the 7 pushes
      a:emit("\x48\x8D\x84\x24" .. string.pack("<I4", 56 + 128) .. "\x48\x89\x87" .. at)
    else
      local n = REGS64[r]
      a:emit(string.char(n >= 8 and 0x4C or 0x48, 0x89, 0x87 | (n & 7) << 3) .. at)
    end
  end
  a:emit("\x8D\x46\x01\x89\x07\xEB"):rel("done", 1)
  a:label("drop"):emit("\xF0\xFF\x05"):data(data + DROPPED)
  a:label("done")
  if bits == 64 then
    a:emit("\x41\x5B\x5F\x5E\x5A\x59\x58\x9D\x48\x8D\xA4\x24\x80\x00\x00\x00")
  else
    a:emit("\x61\x9D")
  end
end

-- Planning -------------------------------------------------------------------

local PAD = { [0xCC] = true, [0x90] = true }
local SCAN = 4096 -- bytes of the function searched for branches into the moved bytes

local function refuse(p, address, why)
  error(Error.new { op = "hook", name = "HOOK_REFUSED", pid = p.pid, address = address,
    message = why .. ".", hint = "hook another instruction of the function (p:disasm "
      .. "shows them), or patch it by hand" }, 0)
end

--- The instructions to move from address: whole ones covering 5 bytes, or
-- ending in a ret/jmp followed by padding up to 5 bytes.
local function plan(p, address)
  local bytes = code.read_code(p, address, SCAN)
  local list = code.decode(bytes:sub(1, 64), address, p.bits, nil, "hook")
  local moved, len = {}, 0
  for _, i in ipairs(list) do
    if len >= 5 then break end
    moved[#moved + 1] = i
    len = len + i.size
    if len < 5 and (i.kind == "ret" or i.kind == "jmp" or i.kind == "iret") then
      for k = len + 1, 5 do
        if not PAD[bytes:byte(k)] then
          refuse(p, address, ("the function ends after %d bytes (%s), too short for a "
            .. "5-byte jump"):format(len, i.text))
        end
      end
      return moved, len, 5, bytes
    end
  end
  if len < 5 then
    refuse(p, address, ("no instruction decodes at 0x%X"):format(address + len))
  end
  return moved, len, len, bytes
end

--- Refuses where a branch elsewhere in the function (a linear sweep up to
-- int3 padding after a ret/jmp, or SCAN bytes) lands inside the moved bytes.
local function check_branches_in(p, address, bytes, moved_end)
  local at, text = code.engine("hook").branch_into(bytes, address, p.bits, address, moved_end)
  if at then
    refuse(p, address, ("the branch at 0x%X (%s) lands inside the bytes the hook moves"):format(at, text))
  end
end

-- Hooks ----------------------------------------------------------------------

local Hook = {}
Hook.__index = Hook
Hook.__name = "rmem.Hook"

local function check_payload(p, payload)
  if type(payload) == "string" then return "bytes" end
  if type(payload) ~= "table" then
    check.argerror(2, "hook", "payload must be bytes or a { call = fn } / { log = {registers} } "
      .. "table, got " .. type(payload))
  end
  if payload.call ~= nil and payload.log == nil then
    check.address(payload.call, 2, "hook")
    return "call"
  end
  if payload.log ~= nil and payload.call == nil and type(payload.log) == "table" then
    local names = p.bits == 64 and REGS64 or REGS32
    for _, r in ipairs(payload.log) do
      if not names[r] then
        check.argerror(2, "hook", ("'%s' is not a %d-bit register"):format(tostring(r), p.bits))
      end
    end
    return "log"
  end
  check.argerror(2, "hook", "payload must be bytes or a { call = fn } / { log = {registers} } table")
end

--- The trampoline's code for a payload at base: the payload, the moved
-- instructions, the jump back; and where each moved instruction went.
local function build(p, base, kind, payload, moved, moved_end, data, esize)
  local where, code_end
  for _ = 1, 2 do -- pass 1 learns where the moved instructions go
    local a, prev = asm(base, p.bits), where
    where = {}
    if kind == "bytes" then a:emit(payload)
    elseif kind == "call" then call_payload(a, payload.call, data + COUNTER)
    else log_payload(a, payload.log, data, esize) end
    local function inside(t)
      if t > moved[1].address and t < moved_end then
        return prev and prev[t] or base
      end
    end
    for _, i in ipairs(moved) do
      if prev and i.target and inside(i.target) and not prev[i.target] then
        return nil, ("%s jumps into the middle of a moved instruction"):format(i.text)
      end
      where[i.address] = a:here()
      local ok, why = relocate(a, i, inside, moved_end, data + COUNTER)
      if not ok then return nil, why end
    end
    where[moved_end] = a:here()
    a:jmp(moved_end)
    code_end = a:here()
    if prev then return a:finish(), where, code_end end
  end
  return nil, "internal: the trampoline did not settle", code_end
end

-- Trampoline memory: 4 KiB slots from 64 KiB blocks within reach, kept
-- per process and reused (an allocation near code is a walk of the memory
-- map, the slowest part of a hook); a {log} hook has a region of its own for
-- its ring.
local BLOCK, SLOT = 65536, 4096
local REACH = 0x7FFF0000 - BLOCK

local function slot_near(p, a)
  local pool = p._hook_pool or {}
  p._hook_pool = pool
  for _, b in ipairs(pool) do
    if #b.free > 0 and (p.bits == 32 or math.abs(b.region.address - a) < REACH) then
      return b, table.remove(b.free)
    end
  end
  local region = p:alloc(BLOCK, { near = p.bits == 64 and a or nil, protect = "rwx" })
  local b = { region = region, free = {} }
  for off = BLOCK - SLOT, SLOT, -SLOT do b.free[#b.free + 1] = off end
  pool[#pool + 1] = b
  return b, 0
end

--- Memory for a trampoline near a: { base, data, release(), keep() }.
local function trampoline_memory(p, a, kind, esize)
  local ok, b, off
  if kind == "log" then
    ok, b = pcall(p.alloc, p, SLOT + ENTRIES + RING * esize, { near = p.bits == 64 and a or nil,
      protect = "rwx" })
  else
    ok, b, off = pcall(slot_near, p, a)
  end
  if not ok then
    if Error.is_error(b) and b.name == "NO_SPACE_NEAR" then
      refuse(p, a, "no free memory within 2 GiB of the function for the trampoline")
    end
    error(b, 0)
  end
  if kind == "log" then
    return { base = b.address, data = b.address + SLOT, release = function() b:free() end,
      keep = function() b:keep() end }
  end
  local base = b.region.address + off
  return { base = base, data = base + SLOT - ENTRIES,
    release = function()
      b.free[#b.free + 1] = off
      -- one empty block (every slot free) stays for the next hook; a second goes
      local empty = BLOCK // SLOT
      if #b.free < empty then return end
      for k, other in ipairs(p._hook_pool) do
        if other ~= b and #other.free == empty and not other.region._kept then
          table.remove(p._hook_pool, k)
          other.region:free()
          return
        end
      end
    end,
    keep = function() b.region:keep() end }
end

--- p:hook(address, payload)
local function new_hook(p, address, payload)
  local a = check.address(address, 1, "hook")
  local kind = check_payload(p, payload)
  code.engine("hook")
  -- as p:call: code that rmem puts in the target needs the right to run it
  if core.platform == "windows" and p._access & core.flags.PROCESS_CREATE_THREAD == 0 then
    error(Error.new { op = "hook", name = "ERROR_ACCESS_DENIED", code = 5, pid = p.pid, address = a,
      message = "a hook runs code in the target, and this handle may not.",
      hint = "open the process with rmem.open(pid, { access = \"all\" }), as for p:call" }, 0)
  end
  local moved, moved_len, patch_len, bytes = plan(p, a)
  local moved_end = a + moved_len
  check_branches_in(p, a, bytes, moved_end)
  local esize = 16 + 8 * (kind == "log" and #payload.log or 0)
  local mem = trampoline_memory(p, a, kind, esize)
  local base, data = mem.base, mem.data
  local tramp, where, code_end = build(p, base, kind, payload, moved, moved_end, data, esize)
  if not tramp then
    mem.release()
    refuse(p, a, where)
  end
  if code_end > data then
    mem.release()
    check.argerror(2, "hook", ("the payload is too long (a trampoline holds %d bytes of code)")
      :format(data - base))
  end
  -- a failure from here on (a process opened for reading) gives the memory back
  local ok, original = pcall(function()
    p:write(base, tramp)
    p:write(data, ("\0"):rep(ENTRIES))
    return p:read(a, patch_len)
  end)
  if not ok then
    mem.release()
    error(original, 0)
  end
  local jump = asm(a, p.bits):emit("\xE9"):rel(base, 4):finish()
  local patch = jump .. ("\x90"):rep(patch_len - 5)
  local moves = {}
  for _, i in ipairs(moved) do
    if i.address ~= a then
      moves[#moves + 1], moves[#moves + 2] = i.address, where[i.address]
    end
  end
  local done, msg, ecode = p:_handle("hook"):patch_code(a, patch, moves)
  if not done then
    mem.release()
    error(Error.from_os("hook", msg, ecode, { pid = p.pid, address = a }), 0)
  end
  local back = {}
  for from, to in pairs(where) do back[#back + 1], back[#back + 2] = to, from end
  -- moved: threads moved into the trampoline (and, after restore(), back)
  return registry.track(setmetatable({ process = p, address = a, kind = kind, trampoline = base,
    mem = mem, moved = done, original = original,
    size = patch_len, back = back, code_end = code_end, data = data, esize = esize,
    regs = kind == "log" and payload.log or nil, dropped = 0 }, Hook))
end

local function done_error(h, op)
  error(Error.new { op = op, name = "HOOK_DONE", pid = h.process.pid, address = h.address,
    message = "the hook was already restored or kept.", hint = "a hook is restored at most once" }, 0)
end

--- Puts the original bytes back (threads inside the moved copies go back
-- too), then frees the trampoline once no thread is inside it.
function Hook:restore()
  if self._done then done_error(self, "restore") end
  local p = self.process
  local h = p:_handle("restore")
  local base, counter = self.mem.base, self.data + COUNTER
  -- usually no thread is inside the trampoline: one stop does it all
  local ok, msg, ecode = h:patch_code(self.address, self.original, {}, base, self.code_end, counter)
  if not ok and ecode ~= BUSY then
    error(Error.from_os("restore", msg, ecode, { pid = p.pid, address = self.address }), 0)
  end
  if not ok then
    ok, msg, ecode = h:patch_code(self.address, self.original, self.back)
    if not ok then error(Error.from_os("restore", msg, ecode, { pid = p.pid, address = self.address }), 0) end
    self.moved = self.moved + ok
    -- each try stops the threads and lets them run again: one inside moves
    -- on; after about 3 s the trampoline is kept
    for _ = 1, 300 do
      ok = h:patch_code(self.address, "", {}, base, self.code_end, counter)
      if ok or not p:is_alive() then break end
      core.sleep(10)
    end
  end
  self._done = true
  -- a thread stays inside (a payload function that blocks): the trampoline stays
  if ok then self.mem.release() else self.mem.keep() end
end

--- The hook stays (also after the script ends), with its trampoline.
function Hook:keep()
  if self._done then done_error(self, "keep") end
  self._done, self._kept = true, true
  self.mem.keep()
  return self.address
end

-- For the rmem command's exit line (rmem.live): a hook of a closed process
-- stays in the target, as a kept one does.
function Hook:_at_exit()
  if self._kept or (not self._done and not self.process._h) then return "keep" end
  return not self._done and "undo" or nil
end

function Hook:is_active() return not self._done end

--- Drains the log ring: one entry per call, oldest first.
function Hook:hits()
  if self._done then done_error(self, "hits") end
  if self.kind ~= "log" then return {} end
  local p, data = self.process, self.data
  local head, tail, dropped = p:unpack(data + HEAD, "<I4I4I4")
  self.dropped = dropped
  local ring = p:read(data + ENTRIES, RING * self.esize)
  local list = {}
  while tail ~= head do
    local at = (tail % RING) * self.esize + 1
    if string.unpack("<I4", ring, at) ~= (tail + 1) & 0xFFFFFFFF then break end -- being written
    local e = { thread = string.unpack("<I4", ring, at + 8) }
    for k, r in ipairs(self.regs) do
      e[r] = string.unpack(p.bits == 64 and "<i8" or "<I4", ring, at + 8 + 8 * k)
    end
    list[#list + 1] = e
    tail = (tail + 1) & 0xFFFFFFFF
  end
  p:write_u32(data + TAIL, tail)
  return list
end

function Hook:__close()
  if not self._done then self:restore() end
end

function Hook:__gc()
  if not self._done and self.process._h then pcall(self.restore, self) end
end

function Hook:__tostring()
  return ("rmem.Hook 0x%X (%s, %d bytes moved, pid %d%s)"):format(self.address, self.kind, self.size,
    self.process.pid, self._done and ", done" or "")
end

function hook.install(Process)
  Process.hook = new_hook
end

return hook
