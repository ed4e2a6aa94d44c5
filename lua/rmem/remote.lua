--- Remote calls with several arguments, exported symbols, and loading
-- libraries into a process.
--
-- p:call runs a function with one argument. call_with writes a small stub
-- into a scratch allocation, with the arguments (strings copied next to
-- it), that calls the function in the platform's convention and stores the
-- full return value where the host reads it; the scratch memory is freed
-- afterwards whatever happens (a timeout stops the call on both platforms).
local core = require "rmem.core"
local check = require "rmem.check"
local Error = require "rmem.error"
local typed = require "rmem.typed"

local windows = core.platform == "windows"
local remote = {}

local MAX_ARGS = 16

local function u32(v) return string.pack("<I4", v & 0xFFFFFFFF) end
local function u64(v) return string.pack("<i8", v) end

--- x86-64 code: call fn(args...) with the stack 16-byte aligned, store rax
-- at slot, then (if given) call after() and store its rax at slot + 8.
local function stub64(fn, args, slot, after)
  local regs = windows and { "\x48\xB9", "\x48\xBA", "\x49\xB8", "\x49\xB9" }   -- rcx rdx r8 r9
    or { "\x48\xBF", "\x48\xBE", "\x48\xBA", "\x48\xB9", "\x49\xB8", "\x49\xB9" } -- rdi rsi rdx rcx r8 r9
  local shadow = windows and 32 or 0
  local on_stack = math.max(0, #args - #regs)
  local frame = (shadow + 8 * on_stack + 15) // 16 * 16
  local code = { "\x53", "\x48\x89\xE3", "\x48\x83\xE4\xF0", "\x48\x81\xEC" .. u32(frame) }
  for i = #regs + 1, #args do -- mov rax, v; mov [rsp + off], rax
    code[#code + 1] = "\x48\xB8" .. u64(args[i]) .. "\x48\x89\x84\x24" .. u32(shadow + 8 * (i - #regs - 1))
  end
  for i = 1, math.min(#args, #regs) do code[#code + 1] = regs[i] .. u64(args[i]) end
  local function call_store(f, at) -- mov r11, f; xor eax, eax; call r11; mov r11, at; mov [r11], rax
    code[#code + 1] = "\x49\xBB" .. u64(f) .. "\x31\xC0\x41\xFF\xD3\x49\xBB" .. u64(at) .. "\x49\x89\x03"
  end
  call_store(fn, slot)
  if after then call_store(after, slot + 8) end
  code[#code + 1] = "\x48\x89\xDC\x5B\xC3" -- mov rsp, rbx; pop rbx; ret
  return table.concat(code)
end

--- x86 code: push the arguments (cdecl and stdcall alike: esp is restored
-- from ebx), call, store eax. A Windows thread routine is stdcall(1 arg).
local function stub32(fn, args, slot, after)
  local pad = (16 - 4 * #args % 16) % 16
  local code = { "\x53\x89\xE3\x83\xE4\xF0\x81\xEC" .. u32(pad) }
  for i = #args, 1, -1 do code[#code + 1] = "\x68" .. u32(args[i]) end
  local function call_store(f, at) -- mov eax, f; call eax; mov ecx, at; mov [ecx], eax
    code[#code + 1] = "\xB8" .. u32(f) .. "\xFF\xD0\xB9" .. u32(at) .. "\x89\x01"
  end
  call_store(fn, slot)
  if after then
    code[#code + 1] = "\x89\xDC\x83\xE4\xF0" -- mov esp, ebx; and esp, -16
    call_store(after, slot + 8)
  end
  code[#code + 1] = "\x89\xDC\x5B" .. (windows and "\xC2\x04\x00" or "\xC3")
  return table.concat(code)
end

local function align16(n) return (n + 15) // 16 * 16 end

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
  for i = 1, n do
    local v = args[i]
    if type(v) ~= "string" then
      v = check.integer(v, 2, fname, ("args[%d]"):format(i))
      if bits == 32 and (v < -0x80000000 or v > 0xFFFFFFFF) then
        check.argerror(2, fname, ("args[%d] is 0x%x: a 32-bit target takes 32-bit arguments")
          :format(i, v))
      end
    end
  end
  return n
end

--- Runs fn(args...) in the process; returns its result and after()'s.
local function invoke(p, fn, args, n, timeout, after, op)
  local bits = p.bits
  -- the scratch layout: stub, two result slots, the strings
  local strings, values, offset = {}, {}, 0
  for i = 1, n do
    if type(args[i]) == "string" then
      strings[#strings + 1] = { i, offset, args[i] .. "\0\0" }
      offset = align16(offset + #args[i] + 2)
    end
  end
  local stub = bits == 64 and stub64 or stub32
  for i = 1, n do values[i] = 0 end
  local stub_size = align16(#stub(fn, values, 0, after and 0) + 16)
  local size = stub_size + 16 + offset
  local scratch = p:alloc(size, { protect = "rwx" })
  local ok, result, extra = pcall(function()
    local base = scratch.address
    local slot, strings_at = base + stub_size, base + stub_size + 16
    for i = 1, n do values[i] = args[i] end
    for _, s in ipairs(strings) do values[s[1]] = strings_at + s[2] end
    local image = { stub(fn, values, slot, after) }
    image[1] = image[1] .. ("\xCC"):rep(stub_size - #image[1]) .. ("\0"):rep(16)
    for _, s in ipairs(strings) do
      image[#image + 1] = s[3] .. ("\0"):rep(align16(#s[3]) - #s[3])
    end
    scratch:write(0, table.concat(image))
    p:call(base, 0, { timeout = timeout })
    local fmt = bits == 64 and "<i8" or "<I4"
    local raw = scratch:read(stub_size, 16)
    return string.unpack(fmt, raw), string.unpack(fmt, raw, 9)
  end)
  -- freed also when the call failed; a target that exited frees it anyway
  local freed, ferr = pcall(scratch.free, scratch)
  if not ok then
    if Error.is_error(result) then result.op = op end
    error(result, 0)
  end
  if not freed then error(ferr, 0) end
  return result, extra
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
  local n = check_args(args, "call_with", p.bits)
  local timeout = timeout_of(opts, 3, "call_with")
  return (invoke(p, fn, args, n, timeout, nil, "call_with"))
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

--- An ELF object's dynamic symbol (the default version when there are
-- several), from the file's bytes, relocated to where it is mapped.
local function elf_symbol(p, m, elf, name)
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
  local bias = m.base - (first_load or 0) // core.page_size * core.page_size
  local sections = {}
  for i = 0, shnum - 1 do
    local at = shoff + i * shentsize + 1
    local _, stype, _, _, offset, size, link = string.unpack("<I4I4" .. A .. A .. A .. A .. "I4", elf, at)
    sections[i] = { type = stype, offset = offset, size = size, link = link }
  end
  local found
  for _, s in pairs(sections) do
    if s.type == 11 then -- SHT_DYNSYM
      local strtab = sections[s.link]
      local versym
      for _, v in pairs(sections) do
        if v.type == 0x6FFFFFFF then versym = v end
      end
      local entsize = is64 and 24 or 16
      for i = 0, s.size // entsize - 1 do
        local at = s.offset + i * entsize + 1
        local nameoff, value, info, shndx
        if is64 then
          nameoff, info, _, shndx, value = string.unpack("<I4BBI2I8", elf, at)
        else
          nameoff, value, _, info, _, shndx = string.unpack("<I4I4I4BBI2", elf, at)
        end
        if shndx ~= 0 and value ~= 0 and elf:sub(strtab.offset + nameoff + 1,
            strtab.offset + nameoff + #name + 1) == name .. "\0" then
          local hidden = versym and string.unpack("<I2", elf, versym.offset + 2 * i + 1) & 0x8000 ~= 0
          if (info & 0xF) == 10 then -- STT_GNU_IFUNC: the value is a resolver
            error(Error.new { op = "proc_address", name = "IFUNC", pid = p.pid, message =
              ("%s in %s is chosen at run time (an IFUNC)."):format(name, m.name) }, 0)
          end
          if not hidden then return bias + value end
          found = found or bias + value
        end
      end
    end
  end
  return found
end

--- elf_symbol from the file on disk; a file that is not a whole ELF
-- object (truncated, or changed since it was mapped) is an rmem.Error.
local function elf_export(p, m, name)
  local elf = read_file(m.path) or read_file(("/proc/%d/root%s"):format(p.pid, m.path))
  local ok, found = false, elf and "not an ELF file" or "it cannot be opened"
  if elf and elf:sub(1, 4) == "\x7FELF" then ok, found = pcall(elf_symbol, p, m, elf, name) end
  if ok then return found end
  if Error.is_error(found) then error(found, 0) end
  error(Error.new { op = "proc_address", name = "NOT_ELF", pid = p.pid, address = m.base,
    message = ("cannot read the ELF file %s (%s)."):format(m.path,
      (tostring(found):gsub("^.-:%d+: ", ""))) }, 0)
end

--- p:proc_address(module, name) -> the address of an exported function or
-- variable in the target, or nil; module is a name or a module table.
local function proc_address(p, module, name)
  local m = module_of(p, module, 1, "proc_address", not windows and "path" or nil)
  if type(name) ~= "string" and not (windows and math.type(name) == "integer") then
    check.argerror(2, "proc_address", "name must be a string, got " .. type(name))
  end
  if windows then return pe_export(p, m, name, 0) end
  return elf_export(p, m, name)
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
  local handle, err = invoke(p, load, { arg, RTLD_NOW }, windows and 1 or 2, timeout, last_error,
    "load_library")
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
    local ok, err = invoke(p, free, { m.base }, 1, timeout, last_error, "unload_library")
    if ok == 0 then error(loader_error(p, "unload_library", err, { address = m.base }), 0) end
    return true
  end
  -- dlopen(RTLD_NOLOAD) gives the handle without loading; its reference is dropped too
  local h, err = invoke(p, load, { m.path, RTLD_LAZY | RTLD_NOLOAD }, 2, timeout, last_error,
    "unload_library")
  if h == 0 then
    error(loader_error(p, "unload_library", err, { hint = m.path .. " was not loaded by the "
      .. "dynamic loader (the main program and the loader itself cannot be unloaded)" }), 0)
  end
  for _ = 1, 2 do
    local rc
    rc, err = invoke(p, free, { h }, 1, timeout, last_error, "unload_library")
    if rc ~= 0 then
      error(loader_error(p, "unload_library", err, { hint = "only libraries loaded at run "
        .. "time (load_library, dlopen) can be unloaded" }), 0)
    end
  end
  return true
end

function remote.install(Process)
  Process.call_with = call_with
  Process.proc_address = proc_address
  Process.load_library = load_library
  Process.unload_library = unload_library
end

return remote
