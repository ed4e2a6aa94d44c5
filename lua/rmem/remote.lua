--- Remote calls with several arguments, exported symbols, and loading
-- libraries into a process.
--
-- call_with, p:func (func.lua) and, on Windows x64, p:call write a small
-- stub into a scratch allocation, with the arguments (strings copied next
-- to it), that calls the function in the platform's convention and stores
-- its results in a call block where the host reads them; the scratch
-- memory is freed afterwards whatever happens (a timeout stops the call on
-- both platforms). On Windows x64 the stub runs under a vectored exception
-- handler that rmem installs in the target, so that a fault ends the call
-- and not the target (on Linux the injection already sees the signal).
local core = require "rmem.core"
local check = require "rmem.check"
local Error = require "rmem.error"
local typed = require "rmem.typed"

local windows = core.platform == "windows"
local remote = {}

local MAX_ARGS = 16

local function u32(v) return string.pack("<I4", v & 0xFFFFFFFF) end
local function u64(v) return string.pack("<i8", v) end
--- Machine code written as hex, spaces allowed.
local function hex(s)
  return (s:gsub("%s", ""):gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

local function align16(n) return (n + 15) // 16 * 16 end

-- A stub's call block, next to the stub in the scratch memory: the results
-- and, on Windows, what the exception handler records about a fault.
local BLOCK = 80
local B_CODE, B_RESUME = 24, 56 -- (rax 0, xmm0/st0 8, after() 16, pc 32, data 40,
-- frame rsp 48, rbx 64, access kind 72)

--- Arguments are { k = kind, v = value } with kind "i" (an integer in a
-- register or stack word), "l" (8 bytes on the stack of a 32-bit target),
-- "f32" or "f64" (v: the bits), or "s" (bytes copied into the target; the
-- function gets their address).
local function is_float(a) return a.k == "f32" or a.k == "f64" end

--- x86-64 code: save the non-volatile registers, call fn(args...) with the
-- stack 16-byte aligned, store rax and xmm0 in the block, then (if given)
-- call after() and store its rax. With veh (Windows), the thread first
-- marks itself as an rmem call thread in its TLS slot and saves the frame,
-- so that the exception handler can send a faulting call to `resume`.
-- Returns the code and the offset of resume.
local function stub64(fn, args, block, after, veh)
  local regs = windows and { "\x48\xB9", "\x48\xBA", "\x49\xB8", "\x49\xB9" }   -- rcx rdx r8 r9
    or { "\x48\xBF", "\x48\xBE", "\x48\xBA", "\x48\xB9", "\x49\xB8", "\x49\xB9" } -- rdi rsi rdx rcx r8 r9
  local ints, xmms, stack = {}, {}, {}
  for i, a in ipairs(args) do
    if windows then -- by position; a float also goes in the integer register (varargs)
      if i > 4 then stack[#stack + 1] = a.v
      else
        ints[#ints + 1] = regs[i] .. u64(a.v)
        if is_float(a) then xmms[#xmms + 1] = { i - 1, a.v } end
      end
    elseif is_float(a) and #xmms < 8 then xmms[#xmms + 1] = { #xmms, a.v }
    elseif not is_float(a) and #ints < 6 then ints[#ints + 1] = regs[#ints + 1] .. u64(a.v)
    else stack[#stack + 1] = a.v end
  end
  local shadow = windows and 32 or 0
  -- push rbx rbp rsi rdi r12-r15; mov rbx, rsp; and rsp, -16; sub rsp, frame
  local code = { hex "53 55 56 57 4154 4155 4156 4157 4889E3 4883E4F0 4881EC",
    u32(align16(shadow + 8 * #stack)) }
  local function add(...) for _, s in ipairs { ... } do code[#code + 1] = s end end
  if veh then -- mov r11, block; mov [r11+48], rsp; mov [r11+64], rbx; TlsSetValue(index, block)
    add("\x49\xBB", u64(block), hex "4989 6330 4989 5B40", "\x48\xB9", u64(veh.index),
      "\x48\xBA", u64(block), "\x49\xBB", u64(veh.set), hex "41FFD3")
  end
  for j, v in ipairs(stack) do -- mov rax, v; mov [rsp + off], rax
    add("\x48\xB8", u64(v), "\x48\x89\x84\x24", u32(shadow + 8 * (j - 1)))
  end
  for _, x in ipairs(xmms) do -- mov rax, v; movq xmmN, rax
    add("\x48\xB8", u64(x[2]), "\x66\x48\x0F\x6E", string.char(0xC0 + 8 * x[1]))
  end
  add(table.unpack(ints))
  -- mov r11, fn; mov eax, #xmm (al: vector registers, for varargs); call r11;
  -- mov r11, block; mov [r11], rax; movq [r11+8], xmm0
  add("\x49\xBB", u64(fn), "\xB8", u32(#xmms), hex "41FFD3 49BB", u64(block), hex "498903 66410FD64308")
  if after then -- mov r11, after; xor eax, eax; call r11; mov r11, block; mov [r11+16], rax
    add("\x49\xBB", u64(after), hex "31C0 41FFD3 49BB", u64(block), hex "49894310")
  end
  local resume = #table.concat(code)
  if veh then -- mov r11, block; mov rsp, [r11+48]; mov rbx, [r11+64]; TlsSetValue(index, 0)
    add("\x49\xBB", u64(block), hex "498B6330 498B5B40", "\x48\xB9", u64(veh.index),
      hex "31D2 49BB", u64(veh.set), hex "41FFD3")
  end
  -- mov rsp, rbx; pop r15-r12 rdi rsi rbp rbx; ret
  add(hex "4889DC 415F 415E 415D 415C 5F 5E 5D 5B C3")
  return table.concat(code), resume
end

--- x86 code: push the arguments (cdecl and stdcall alike: esp is restored
-- from ebx), call, store eax, edx and (float_ret) st0 as a double. A
-- Windows thread routine is stdcall(1 arg).
local function stub32(fn, args, block, after, float_ret)
  local bytes = 0
  for _, a in ipairs(args) do bytes = bytes + ((a.k == "l" or a.k == "f64") and 8 or 4) end
  -- push ebx ebp esi edi; mov ebx, esp; and esp, -16; sub esp, pad
  local code = { hex "53 55 56 57 89E3 83E4F0 81EC", u32((16 - bytes % 16) % 16) }
  for i = #args, 1, -1 do
    local a = args[i]
    if a.k == "l" or a.k == "f64" then code[#code + 1] = "\x68" .. u32(a.v >> 32) end
    code[#code + 1] = "\x68" .. u32(a.v)
  end
  -- mov eax, fn; call eax; mov ecx, block; mov [ecx], eax; mov [ecx+4], edx (; fstp qword [ecx+8])
  code[#code + 1] = "\xB8" .. u32(fn) .. "\xFF\xD0\xB9" .. u32(block) .. hex "8901 895104"
    .. (float_ret and hex "DD5908" or "")
  if after then -- mov esp, ebx; and esp, -16; mov eax, after; call eax; mov ecx, block; mov [ecx+16], eax
    code[#code + 1] = hex "89DC 83E4F0 B8" .. u32(after) .. hex "FFD0 B9" .. u32(block) .. hex "894110"
  end
  -- mov esp, ebx; pop edi esi ebp ebx; ret (4)
  code[#code + 1] = hex "89DC 5F 5E 5D 5B" .. (windows and hex "C20400" or "\xC3")
  return table.concat(code), nil
end

--- Checks call_with's argument list: integers, or strings (copied into the
-- target with two NUL bytes after them, so that UTF-16 text ends too); for
-- a 32-bit target, integers that fit in 32 bits (signed or not), never
-- silently cut.
local function check_args(args, fname, bits)
  if type(args) ~= "table" then
    check.argerror(2, fname, "args must be a table (a list), got " .. type(args))
  end
  local n = #args
  if n > MAX_ARGS then
    check.argerror(2, fname, ("at most %d arguments, got %d"):format(MAX_ARGS, n))
  end
  for k in pairs(args) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      check.argerror(2, fname, "args must be a list, got key " .. tostring(k))
    end
  end
  local list = {}
  for i = 1, n do
    local v = args[i]
    if type(v) == "string" then
      list[i] = { k = "s", v = v .. "\0\0" }
    else
      v = check.integer(v, 2, fname, ("args[%d]"):format(i))
      if bits == 32 and (v < -0x80000000 or v > 0xFFFFFFFF) then
        check.argerror(2, fname, ("args[%d] is 0x%x: a 32-bit target takes 32-bit arguments")
          :format(i, v))
      end
      list[i] = { k = "i", v = v }
    end
  end
  return list
end

-- Windows exceptions a call can end with (the exception handler passes
-- errors and the four hardware warnings, not software exceptions: those
-- are for the function's own handlers).
local EXCEPTIONS = {
  [0xC0000005] = "EXCEPTION_ACCESS_VIOLATION", [0xC0000006] = "EXCEPTION_IN_PAGE_ERROR",
  [0xC000001D] = "EXCEPTION_ILLEGAL_INSTRUCTION", [0xC0000096] = "EXCEPTION_PRIV_INSTRUCTION",
  [0xC0000094] = "EXCEPTION_INT_DIVIDE_BY_ZERO", [0xC0000095] = "EXCEPTION_INT_OVERFLOW",
  [0xC00000FD] = "EXCEPTION_STACK_OVERFLOW", [0xC000008C] = "EXCEPTION_ARRAY_BOUNDS_EXCEEDED",
  [0xC000008D] = "EXCEPTION_FLT_DENORMAL_OPERAND", [0xC000008E] = "EXCEPTION_FLT_DIVIDE_BY_ZERO",
  [0xC000008F] = "EXCEPTION_FLT_INEXACT_RESULT", [0xC0000090] = "EXCEPTION_FLT_INVALID_OPERATION",
  [0xC0000091] = "EXCEPTION_FLT_OVERFLOW", [0xC0000092] = "EXCEPTION_FLT_STACK_CHECK",
  [0xC0000093] = "EXCEPTION_FLT_UNDERFLOW", [0xC0000025] = "EXCEPTION_NONCONTINUABLE_EXCEPTION",
  [0x80000001] = "EXCEPTION_GUARD_PAGE", [0x80000002] = "EXCEPTION_DATATYPE_MISALIGNMENT",
  [0x80000003] = "EXCEPTION_BREAKPOINT", [0x80000004] = "EXCEPTION_SINGLE_STEP",
}
local ACCESS_KIND = { [0] = "reading", [1] = "writing", [8] = "executing" }

--- The error for a call that the exception handler ended: address is the
-- address accessed for an access violation, else the faulting instruction.
local function exception_error(p, op, block, fn)
  local code, pc, data = string.unpack("<I4xxxxi8i8", block, B_CODE + 1)
  local kind = string.unpack("<i8", block, 73)
  local name = EXCEPTIONS[code] or ("EXCEPTION_0x%08X"):format(code)
  local av = code == 0xC0000005 or code == 0xC0000006
  local message = av and ("%s %s address 0x%x, by the instruction at 0x%x in the function "
      .. "called at 0x%x."):format(name, ACCESS_KIND[kind] or "accessing", data, pc, fn)
    or ("%s at 0x%x, in the function called at 0x%x."):format(name, pc, fn)
  return Error.new { op = op, name = name, code = code, pid = p.pid, address = av and data or pc,
    instruction = pc, message = message, hint = "rmem ended the call and its thread; the "
      .. "target carries on (locks the function held stay held)" }
end

local raw_call -- Process.call as process.lua defines it (one thread, one argument)
local guard

--- invoke's work, in the process (invoke gives its errors the user's op).
local function run(p, fn, args, o)
  local bits = p.bits
  local veh = windows and bits == 64 and o.safe ~= false and guard(p) or nil
  local values, strings, offset = {}, {}, 0
  for i, a in ipairs(args) do
    values[i] = a
    if a.k == "s" then
      strings[#strings + 1] = { i, offset, a.v }
      offset = align16(offset + #a.v)
      values[i] = { k = "i", v = 0 }
    end
  end
  local function build(block)
    if bits == 64 then return stub64(fn, values, block, o.after, veh) end
    return stub32(fn, values, block, o.after, o.float_ret)
  end
  -- the stub's size does not depend on the values (fixed-width immediates)
  local stub_size = align16(#build(0) + 16)
  local scratch = p:alloc(stub_size + BLOCK + offset, { protect = "rwx" })
  local ok, result, extra = pcall(function()
    local base = scratch.address
    local block, strings_at = base + stub_size, base + stub_size + BLOCK
    for _, s in ipairs(strings) do values[s[1]] = { k = "i", v = strings_at + s[2] } end
    local code, resume = build(block)
    local image = { code, ("\xCC"):rep(stub_size - #code), ("\0"):rep(B_RESUME),
      u64(resume and base + resume or 0), ("\0"):rep(BLOCK - B_RESUME - 8) }
    for _, s in ipairs(strings) do
      image[#image + 1] = s[3] .. ("\0"):rep(align16(#s[3]) - #s[3])
    end
    scratch:write(0, table.concat(image))
    raw_call(p, base, 0, { timeout = o.timeout })
    local raw = scratch:read(stub_size, BLOCK)
    if string.unpack("<I4", raw, B_CODE + 1) ~= 0 then error(exception_error(p, o.op, raw, fn), 0) end
    if o.finish then return o.finish(raw) end
    local fmt = bits == 64 and "<i8" or "<I4"
    return string.unpack(fmt, raw), string.unpack(fmt, raw, 17)
  end)
  -- freed also when the call failed; a target that exited frees it anyway
  local freed, ferr = pcall(scratch.free, scratch)
  if not ok then error(result, 0) end
  if not freed then error(ferr, 0) end
  return result, extra
end

--- Runs fn(args...) in the process through a stub in one scratch
-- allocation, freed afterwards whatever happens. o: timeout, after (a
-- function called after fn, whose result is returned too), op, float_ret
-- (32-bit: fn returns in st0), finish(block) (decodes the call block
-- before the memory is freed; by default fn's and after()'s integer
-- results), safe = false (Windows: no exception handler: used to install it).
local function invoke(p, fn, args, o)
  local ok, result, extra = pcall(run, p, fn, args, o)
  if not ok then -- whatever step failed, the error is the user's call's
    if Error.is_error(result) then result.op = o.op end
    error(result, 0)
  end
  return result, extra
end
remote.invoke = invoke

--- The exception handler (Windows x64): for a thread whose TLS slot holds
-- a call block, it records the exception (code, address, the address
-- accessed and how) there and resumes the thread at the block's resume
-- address with the stub's frame; any other thread's exceptions pass on.
-- It touches only rmem's call threads, so it may outlive the host.
local function veh_code(index)
  local load = index < 64 and "\x65\x4C\x8B\x04\x25" .. u32(0x1480 + 8 * index) -- mov r8, gs:[TlsSlots + 8i]
    -- mov r8, gs:[TlsExpansionSlots]; test r8, r8; jz +7; mov r8, [r8 + 8(i - 64)]
    or hex "654C8B0425 80170000 4D85C0 7407 4D8B80" .. u32(8 * (index - 64))
  return load .. hex(([[
    4D85C0 7464             -- test r8, r8; jz out
    488B11 8B02             -- mov rdx, [rcx] (the record); mov eax, [rdx] (the code)
    4189C1 4181E1000000F0   -- mov r9d, eax; and r9d, 0xF0000000
    4181F9000000C0 7410     -- cmp r9d, 0xC0000000 (an error); je take
    4189C1 4181E901000080   -- mov r9d, eax; sub r9d, 0x80000001
    4183F903 773C           -- cmp r9d, 3 (guard page .. single step); ja out
    41894018                -- take: mov [r8+24], eax
    4C8B4A10 4D894820       -- mov r9, [rdx+16] (ExceptionAddress); mov [r8+32], r9
    4C8B4A28 4D894828       -- mov r9, [rdx+40] (ExceptionInformation[1]); mov [r8+40], r9
    4C8B4A20 4D894848       -- mov r9, [rdx+32] (ExceptionInformation[0]); mov [r8+72], r9
    488B5108                -- mov rdx, [rcx+8] (the context)
    4D8B4838 4C898AF8000000 -- mov r9, [r8+56]; mov [rdx+Rip], r9
    4D8B4830 4C898A98000000 -- mov r9, [r8+48]; mov [rdx+Rsp], r9
    B8FFFFFFFF C3           -- mov eax, EXCEPTION_CONTINUE_EXECUTION; ret
    31C0 C3                 -- out: xor eax, eax (EXCEPTION_CONTINUE_SEARCH); ret
  ]]):gsub("%-%-[^\n]*", ""))
end

-- The exception handler of this process handle, installed at its first
-- call (Windows x64): a TLS slot, the handler's page (kept: it stays in
-- the target with the handler, which must outlive the host) and
-- AddVectoredExceptionHandler(first, handler). Undone if a step fails.
guard = function(p)
  if p._veh then return p._veh end
  local k32 = p:module("kernel32.dll")
  local fns = k32 and { p:proc_address(k32, "TlsAlloc"), p:proc_address(k32, "TlsSetValue"),
    p:proc_address(k32, "TlsFree"), p:proc_address(k32, "AddVectoredExceptionHandler") } or {}
  if not (fns[1] and fns[2] and fns[3] and fns[4]) then
    error(Error.new { op = "call", name = "NO_HANDLER", pid = p.pid, message = "the process has "
      .. "no kernel32.dll (yet) to install rmem's exception handler with.", hint = "a process "
      .. "created suspended loads kernel32.dll once its first thread has run" }, 0)
  end
  local alloc_slot, set, free_slot, add = table.unpack(fns)
  local index = raw_call(p, alloc_slot, 0)
  if index >= 1088 then -- TLS_OUT_OF_INDEXES (64 slots and 1024 expansion slots)
    error(Error.new { op = "call", name = "TLS_OUT_OF_INDEXES", pid = p.pid,
      message = "the process has no free TLS slot for rmem's exception handler." }, 0)
  end
  local page
  local ok, err = pcall(function()
    page = p:alloc(core.page_size, { protect = "rwx" })
    page:write(0, veh_code(index))
    page:protect(0, core.page_size, "rx")
    if invoke(p, add, { { k = "i", v = 1 }, { k = "i", v = page.address } },
        { op = "call", timeout = 5000, safe = false }) == 0 then
      error(Error.new { op = "call", name = "NO_HANDLER", pid = p.pid,
        message = "AddVectoredExceptionHandler failed in the process." }, 0)
    end
  end)
  if not ok then
    if page then pcall(page.free, page) end
    pcall(raw_call, p, free_slot, index)
    error(err, 0)
  end
  page:keep()
  p._veh = { index = index, set = set }
  return p._veh
end

local function timeout_of(opts, n, fname)
  opts = check.options(opts, n, fname, { timeout = true })
  return opts.timeout and check.size(opts.timeout, n, fname) or 5000
end

--- p:call_with(fn, { args }, opts) -> fn's return value (pointer-sized).
local function call_with(p, fn_address, args, opts)
  local fn = check.address(fn_address, 1, "call_with")
  if p.bits == 32 and fn > 0xFFFFFFFF then
    check.argerror(1, "call_with", ("0x%x is past the 4 GiB a 32-bit target can address"):format(fn))
  end
  local list = check_args(args, "call_with", p.bits)
  local timeout = timeout_of(opts, 3, "call_with")
  return (invoke(p, fn, list, { timeout = timeout, op = "call_with" }))
end

--- p:call(fn, arg, opts) on Windows x64: through a stub under the exception
-- handler, so that a fault ends the call and not the target; the result is
-- the whole of rax.
local function safe_call(p, fn_address, arg, opts)
  local fn = check.address(fn_address, 1, "call")
  local a = arg == nil and 0 or check.integer(arg, 2, "call", "arg")
  local timeout = timeout_of(opts, 3, "call")
  if p.bits ~= 64 then return raw_call(p, fn, a, { timeout = timeout }) end
  return (invoke(p, fn, { { k = "i", v = a } }, { timeout = timeout, op = "call" }))
end

-- Exported symbols ---------------------------------------------------------

--- a < b comparing bytes, as strcmp orders a PE export table (Lua's < follows
-- the locale).
local function bytes_before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

--- A PE image's export, read from the target's memory; forwarders
-- ("NTDLL.RtlXxx") are followed into the module they name.
local function pe_export(p, m, name, depth)
  local base = m.base
  local pe = base + p:read_u32(base + 0x3C)
  local opt = pe + 24
  local dir = opt + (p:read_u16(opt) == 0x20B and 112 or 96)
  local rva, dir_size = p:read_u32(dir), p:read_u32(dir + 4)
  if rva == 0 then return nil end
  local nfuncs, nnames, funcs, names, ords = p:unpack(base + rva + 20, "<I4I4I4I4I4")
  local index
  if math.type(name) == "integer" then
    local ordinal_base = p:read_u32(base + rva + 16)
    index = name - ordinal_base
    if index < 0 or index >= nfuncs then return nil end
  else
    -- the name table is sorted by byte value: a binary search reads a dozen
    -- names where a walk would read them all (a read each)
    local lo, hi = 0, nnames - 1
    while lo <= hi and not index do
      local mid = (lo + hi) // 2
      local s = p:read_string(base + p:read_u32(base + names + 4 * mid), 512)
      if s == name then
        index = p:read_u16(base + ords + 2 * mid)
      elseif bytes_before(s, name) then
        lo = mid + 1
      else
        hi = mid - 1
      end
    end
    if not index then return nil end
  end
  local fn = p:read_u32(base + funcs + 4 * index)
  if fn == 0 then return nil end
  if fn >= rva and fn < rva + dir_size then -- a forwarder: "MODULE.name" or "MODULE.#7"
    local target = p:read_string(base + fn, 512)
    local dll, sym = target:match("^(.-)%.(.+)$")
    local other = dll and p:module(dll:find("%.") and dll or dll .. ".dll")
    if not other or depth > 8 then return nil end
    return pe_export(p, other, tonumber(sym:match("^#(%d+)$")) or sym, depth + 1)
  end
  return base + fn
end

local tools = require "rmem.tools"
local read_file, module_of = tools.read_file, tools.module_of

--- An ELF object's bytes, class and section headers, and the bias that
-- relocates its addresses to where the module is mapped.
local function elf_parse(m, elf)
  local is64 = elf:byte(5) == 2
  local A = is64 and "I8" or "I4"
  local phoff, shoff, phentsize, phnum, shentsize, shnum
  if is64 then
    phoff, shoff = string.unpack("<I8I8", elf, 0x21)
    phentsize, phnum, shentsize, shnum = string.unpack("<I2I2I2I2", elf, 0x37)
  else
    phoff, shoff = string.unpack("<I4I4", elf, 0x1D)
    phentsize, phnum, shentsize, shnum = string.unpack("<I2I2I2I2", elf, 0x2B)
  end
  local first_load
  for i = 0, phnum - 1 do
    local at = phoff + i * phentsize + 1
    if string.unpack("<I4", elf, at) == 1 then -- PT_LOAD
      first_load = string.unpack("<" .. A, elf, at + (is64 and 16 or 8))
      break
    end
  end
  local sections = {}
  for i = 0, shnum - 1 do
    local at = shoff + i * shentsize + 1
    local _, stype, _, _, offset, size, link = string.unpack("<I4I4" .. A .. A .. A .. A .. "I4", elf, at)
    sections[i] = { type = stype, offset = offset, size = size, link = link }
  end
  return { data = elf, is64 = is64, sections = sections,
    bias = m.base - (first_load or 0) // core.page_size * core.page_size }
end

--- fn(elf, ...) over the ELF file of module m on disk; a file that is not
-- a whole ELF object (truncated, or changed since it was mapped) is an
-- rmem.Error NOT_ELF.
local function with_elf(p, m, op, fn, ...)
  local data = read_file(m.path) or read_file(("/proc/%d/root%s"):format(p.pid, m.path))
  local ok, found = false, data and "not an ELF file" or "it cannot be opened"
  if data and data:sub(1, 4) == "\x7FELF" then
    ok, found = pcall(function(...) return fn(elf_parse(m, data), ...) end, ...)
  end
  if ok then return found end
  if Error.is_error(found) then error(found, 0) end
  error(Error.new { op = op, name = "NOT_ELF", pid = p.pid, address = m.base,
    message = ("cannot read the ELF file %s (%s)."):format(m.path,
      (tostring(found):gsub("^.-:%d+: ", ""))) }, 0)
end

local SHT_SYMTAB, SHT_DYNSYM, SHT_GNU_VERSYM = 2, 11, 0x6FFFFFFF
local STT_OBJECT, STT_FUNC, STT_GNU_IFUNC = 1, 2, 10

--- Calls fn(name_at, value, type, hidden, global) for every defined symbol
-- of the section type stype (.dynsym or .symtab), name_at being the offset
-- (1-based) of its NUL-terminated name in the file.
local function each_symbol(elf, stype, fn)
  local data, sections = elf.data, elf.sections
  for _, s in pairs(sections) do
    if s.type == stype then
      local strtab = sections[s.link]
      local versym
      for _, v in pairs(sections) do
        if v.type == SHT_GNU_VERSYM and stype == SHT_DYNSYM then versym = v end
      end
      local entsize = elf.is64 and 24 or 16
      for i = 0, s.size // entsize - 1 do
        local at = s.offset + i * entsize + 1
        local nameoff, value, info, shndx, _
        if elf.is64 then
          nameoff, info, _, shndx, value = string.unpack("<I4BBI2I8", data, at)
        else
          nameoff, value, _, info, _, shndx = string.unpack("<I4I4I4BBI2", data, at)
        end
        if shndx ~= 0 and value ~= 0 and nameoff ~= 0 then
          local hidden = versym and string.unpack("<I2", data, versym.offset + 2 * i + 1) & 0x8000 ~= 0
          fn(strtab.offset + nameoff + 1, value, info & 0xF, hidden, info >> 4 ~= 0)
        end
      end
    end
  end
end

--- An ELF object's symbol, from the file on disk, relocated to where it is
-- mapped: a dynamic symbol (the default version when there are several),
-- else one of .symtab where the file has it (unstripped programs), a
-- global one before a local one.
local function elf_symbol(p, m, elf, name)
  local data, key = elf.data, name .. "\0"
  local found, found_global
  for _, stype in ipairs { SHT_DYNSYM, SHT_SYMTAB } do
    each_symbol(elf, stype, function(at, value, stt, hidden, global)
      if found_global or data:sub(at, at + #key - 1) ~= key then return end
      if stt == STT_GNU_IFUNC then -- the value is a resolver
        error(Error.new { op = "proc_address", name = "IFUNC", pid = p.pid, message =
          ("%s in %s is chosen at run time (an IFUNC)."):format(name, m.name) }, 0)
      end
      if stype == SHT_DYNSYM and not hidden or stype == SHT_SYMTAB and global then
        found_global = elf.bias + value
      else
        found = found or elf.bias + value
      end
    end)
    if found_global then return found_global end
  end
  return found
end

--- The functions and variables of an ELF object (.dynsym, and .symtab
-- where the file has one): name -> address.
local function elf_symbols(elf)
  local list, global = {}, {}
  for _, stype in ipairs { SHT_DYNSYM, SHT_SYMTAB } do
    each_symbol(elf, stype, function(at, value, stt, hidden, is_global)
      if stt ~= STT_FUNC and stt ~= STT_OBJECT then return end
      local name = elf.data:match("^[^%z]*", at)
      local strong = stype == SHT_DYNSYM and not hidden or stype == SHT_SYMTAB and is_global
      if name ~= "" and (list[name] == nil or strong and not global[name]) then
        list[name], global[name] = elf.bias + value, strong or nil
      end
    end)
  end
  return list
end

--- A PE image's exports, read from the target's memory: name -> address,
-- forwarders followed (p:proc_address's rules).
local function pe_symbols(p, m)
  local base = m.base
  local pe = base + p:read_u32(base + 0x3C)
  local opt = pe + 24
  local rva, dir_size = p:unpack(opt + (p:read_u16(opt) == 0x20B and 112 or 96), "<I4I4")
  if rva == 0 then return {} end
  -- the directory holds its tables and names: one read, where it is readable whole
  local ok, dir = pcall(p.read, p, base + rva, dir_size)
  local function u(at, fmt) -- at: an RVA
    if ok and at >= rva and at + string.packsize(fmt) <= rva + dir_size then
      return string.unpack(fmt, dir, at - rva + 1)
    end
    return p:unpack(base + at, fmt)
  end
  local function str(at)
    if ok and at >= rva and at < rva + dir_size then
      local s = dir:match("^[^%z]*%z", at - rva + 1)
      if s then return s:sub(1, -2) end
    end
    return p:read_string(base + at, 512)
  end
  local _, nnames, funcs, names, ords = u(rva + 20, "<I4I4I4I4I4")
  local list = {}
  for i = 0, nnames - 1 do
    local name = str(u(names + 4 * i, "<I4"))
    local fn = u(funcs + 4 * u(ords + 2 * i, "<I2"), "<I4")
    if fn ~= 0 then
      if fn >= rva and fn < rva + dir_size then
        list[name] = pe_export(p, m, name, 0) -- a forwarder
      else
        list[name] = base + fn
      end
    end
  end
  return list
end

--- p:proc_address(module, name) -> the address of an exported function or
-- variable in the target, or nil; module is a name or a module table.
local function proc_address(p, module, name)
  local m = module_of(p, module, 1, "proc_address", not windows and "path" or nil)
  if type(name) ~= "string" and not (windows and math.type(name) == "integer") then
    check.argerror(2, "proc_address", "name must be a string, got " .. type(name))
  end
  if windows then return pe_export(p, m, name, 0) end
  return with_elf(p, m, "proc_address", function(elf) return elf_symbol(p, m, elf, name) end)
end

-- Libraries ------------------------------------------------------------------

local RTLD_LAZY, RTLD_NOW, RTLD_NOLOAD = 1, 2, 4

--- The loader functions of the target: LoadLibraryW and friends from its
-- own kernel32, dlopen and friends from its libc (glibc 2.34 and later).
local function loader(p, op)
  local names = windows and { "LoadLibraryW", "FreeLibrary", "GetLastError" }
    or { "dlopen", "dlclose", "dlerror" }
  local candidates = windows and { "kernel32.dll" } or { "libc.so.6", "libdl.so.2" }
  for _, lib in ipairs(candidates) do
    local m = p:module(lib)
    local found = m and { proc_address(p, m, names[1]), proc_address(p, m, names[2]),
      proc_address(p, m, names[3]) }
    if found and found[1] and found[2] and found[3] then return table.unpack(found) end
  end
  error(Error.new { op = op, name = "NO_LOADER", pid = p.pid, message =
    ("the process has no %s."):format(windows and "kernel32.dll" or "dlopen (glibc's libc.so.6 or libdl.so.2)"),
    hint = "statically linked programs cannot load libraries" }, 0)
end

local function loader_error(p, op, what, fields)
  fields.op, fields.pid = op, p.pid
  if windows then
    local code = what
    return Error.from_os(op, core.error_message(code), code, fields)
  end
  fields.name = "DLERROR"
  fields.message = what ~= 0 and p:read_string(what, 1024) or "the dynamic loader failed."
  return Error.new(fields)
end

local function module_at(p, base, path)
  for _, m in ipairs(p:modules()) do
    if m.base == base or m.path == path then return m end
  end
end

--- p:load_library(path, opts) -> the module loaded (with .handle, what the
-- loader returned); LoadLibraryW in the target on Windows, dlopen(path,
-- RTLD_NOW) on Linux. A failure carries the target's own error.
local function load_library(p, path, opts)
  if type(path) ~= "string" or path == "" then
    check.argerror(1, "load_library", "path must be a non-empty string")
  end
  local timeout = timeout_of(opts, 2, "load_library")
  local load, _, last_error = loader(p, "load_library")
  local arg = windows and typed.utf16(path, 1, "load_library") or path
  local args = { { k = "s", v = arg .. "\0\0" }, { k = "i", v = RTLD_NOW } }
  if windows then args[2] = nil end
  local handle, err = invoke(p, load, args, { timeout = timeout, after = last_error, op = "load_library" })
  if handle == 0 then
    error(loader_error(p, "load_library", err, { hint = ("%s was not loaded: the file, one of "
      .. "its dependencies or its initialisation failed"):format(path) }), 0)
  end
  local base, mapped = handle, path
  if not windows then -- a link_map: l_addr, l_name
    local w = p.bits // 8
    mapped = p:read_string(p:unpack(handle + w, w == 8 and "<I8" or "<I4"), 4096)
    base = nil
  end
  local m = module_at(p, base, mapped) or { name = path:match("[^/\\]+$"), path = mapped, base = handle }
  m.handle = handle
  return m
end

--- p:unload_library(module): FreeLibrary / dlclose once for a module that
-- load_library (or anything else) loaded; module is a name or module table.
local function unload_library(p, module, opts)
  local m = module_of(p, module, 1, "unload_library", not windows and "path" or nil)
  local timeout = timeout_of(opts, 2, "unload_library")
  local load, free, last_error = loader(p, "unload_library")
  if windows then
    local ok, err = invoke(p, free, { { k = "i", v = m.base } },
      { timeout = timeout, after = last_error, op = "unload_library" })
    if ok == 0 then error(loader_error(p, "unload_library", err, { address = m.base }), 0) end
    return true
  end
  -- dlopen(RTLD_NOLOAD) gives the handle without loading; its reference is dropped too
  local h, err = invoke(p, load, { { k = "s", v = m.path .. "\0" }, { k = "i", v = RTLD_LAZY | RTLD_NOLOAD } },
    { timeout = timeout, after = last_error, op = "unload_library" })
  if h == 0 then
    error(loader_error(p, "unload_library", err, { hint = m.path .. " was not loaded by the "
      .. "dynamic loader (the main program and the loader itself cannot be unloaded)" }), 0)
  end
  for _ = 1, 2 do
    local rc
    rc, err = invoke(p, free, { { k = "i", v = h } },
      { timeout = timeout, after = last_error, op = "unload_library" })
    if rc ~= 0 then
      error(loader_error(p, "unload_library", err, { hint = "only libraries loaded at run "
        .. "time (load_library, dlopen) can be unloaded" }), 0)
    end
  end
  return true
end

--- p:symbols(module) -> { [name] = address } of the module's exported
-- functions and variables (Windows: the export table, forwarders followed;
-- Linux: .dynsym and, where the file has one, .symtab, locals included).
local function symbols(p, module)
  local m = module_of(p, module, 1, "symbols", not windows and "path" or nil)
  if windows then return pe_symbols(p, m) end
  return with_elf(p, m, "symbols", elf_symbols)
end

function remote.install(Process)
  raw_call = Process.call
  if windows then Process.call = safe_call end
  Process.call_with = call_with
  Process.proc_address = proc_address
  Process.symbols = symbols
  Process.load_library = load_library
  Process.unload_library = unload_library
end

return remote
