-- Disassembly, signatures and hooks (issue 12): against known bytes and the
-- example target's own functions (examples/target.c).
local rmem = require "rmem"
local helpers = require "spec.helpers"
local sleep = require("system").sleep -- (luasystem, as busted has it)

local bin = helpers.windows and helpers.root .. "/build/windows/bin/" or helpers.root .. "/build/linux/"

--- Starts a build of the target: the process, the target, its module.
local function open_build(build, opts)
  opts = opts or {}
  local exe = build .. (helpers.windows and ".exe" or "")
  local t = helpers.start_target { path = bin .. exe, calls = opts.calls }
  local p = rmem.open(t.pid, { access = "all" })
  return p, t, assert(p:module(exe))
end

describe("rmem.disasm", function()
  it("decodes a known byte string as 64-bit and as 32-bit code", function()
    local bytes = "\x48\x8B\x05\x10\x00\x00\x00\x74\x05\xE8\x00\x00\x00\x00\xC3"
    local l64 = rmem.disasm(bytes, 0x1000, 64)
    assert.same({ "mov rax, qword ptr [rip + 0x10]", "je 0x100e", "call 0x100e", "ret" },
      { l64[1].text, l64[2].text, l64[3].text, l64[4].text })
    assert.equal(4, #l64)
    assert.same({ 0x1000, 7, "mov", "\x48\x8B\x05\x10\x00\x00\x00" },
      { l64[1].address, l64[1].size, l64[1].mnemonic, l64[1].bytes })
    assert.is_true(l64[1].rip_relative)
    assert.same({ 3, 4, 0x1017 }, { l64[1].disp_offset, l64[1].disp_size, l64[1].data })
    assert.same({ "jcc", 0x100E, 1, 1 }, { l64[2].kind, l64[2].target, l64[2].imm_offset, l64[2].imm_size })
    assert.same({ "call", 0x100E }, { l64[3].kind, l64[3].target })
    assert.equal("ret", l64[4].kind)
    local l32 = rmem.disasm(bytes, 0x1000, 32)
    assert.same({ "dec eax", "mov eax, dword ptr [0x10]", "je 0x100e" },
      { l32[1].text, l32[2].text, l32[3].text })
    assert.is_true(l32[2].absolute)
    assert.equal(0x10, l32[2].data)
    -- 32-bit addresses above 2 GiB stay unsigned
    local high = rmem.disasm("\x8B\x05\x34\x12\x00\x80\xE8\x00\x00\x00\x80", 0x1000, 32)
    assert.same({ 0x80001234, 0x8000100B }, { high[1].data, high[2].target })
    -- a listing prints as a debugger shows code
    assert.matches("^0x1000  48 8B 05 10 00 00 00  mov rax, qword ptr %[rip %+ 0x10%]\n0x1007  74 05 +je 0x100e",
      tostring(l64))
    -- the SSE form Capstone 4.0.2 gives a 2-byte displacement for has 4
    local sse = rmem.disasm("\x66\x0F\x6F\x05\x00\x01\x00\x00", 0, 64)[1]
    assert.same({ "movdqa xmm0, xmmword ptr [rip + 0x100]", 4, 4 }, { sse.text, sse.disp_offset, sse.disp_size })
  end)

  it("stops at bytes that are no instruction; rejects bad arguments", function()
    assert.equal(1, #rmem.disasm("\x90\xFF\xFF", 0, 64))
    assert.equal(0, #rmem.disasm("", 0, 64))
    assert.has_error(function() rmem.disasm("\x90", 0, 16) end, "bad argument #3 to 'disasm' (bits must be 32 or 64)")
    assert.has_error(function() rmem.disasm(nil, 0, 64) end)
  end)

  it("raises an error that says how to install Capstone where rmem.disasm is missing", function()
    local saved = package.loaded["rmem.disasm"]
    package.loaded["rmem.disasm"] = nil
    package.preload["rmem.disasm"] = function() error("module 'rmem.disasm' not found") end
    local e = helpers.error_of(rmem.disasm, "\x90", 0, 64)
    package.preload["rmem.disasm"] = nil
    package.loaded["rmem.disasm"] = saved
    assert.is_true(rmem.is_error(e))
    assert.equal("NO_DISASSEMBLER", e.name)
    assert.matches("libcapstone%-dev", e.hint)
    assert.equal(1, #rmem.disasm("\x90", 0, 64))
  end)
end)

describe("p:disasm", function()
  it("lists the target's own functions", function()
    local p, t, m = open_build("rmem-target")
    local funcs, data = helpers.target_symbols("rmem-target")
    local list = p:disasm(m.base + funcs.get_setting, 3)
    assert.equal(3, #list)
    assert.equal(m.base + funcs.get_setting, list[1].address)
    assert.equal(list[1].address + list[1].size, list[2].address)
    assert.equal(p:read(list[1].address, list[1].size), list[1].bytes)
    -- get_setting() starts by loading the global `setting`
    assert.equal("mov eax, dword ptr [rip + " .. rmem.hex(m.base + data.setting - list[2].address):lower() .. "]",
      list[1].text)
    assert.equal(m.base + data.setting, list[1].data)
    -- hook_add(a, b) = a * 1000 + b ends in a ret within a few instructions
    local found
    for _, i in ipairs(p:disasm(m.base + funcs.hook_add, 6)) do
      if i.kind == "ret" then found = true break end
    end
    assert.is_true(found)
    assert.equal(16, #p:disasm(m.base + funcs.main))
    assert.matches("^0x%x+  ", tostring(p:disasm(m.base + funcs.main, 2)))
    p:close()
    t:stop()
  end)
end)

describe("p:make_signature", function()
  it("finds 20 functions of the target again, also in a build with code inserted before them", function()
    local p1, t1, m1 = open_build("rmem-target")
    local p2, t2, m2 = open_build("rmem-target-shifted")
    local f1, f2 = helpers.target_symbols("rmem-target"), helpers.target_symbols("rmem-target-shifted")
    local names, moved = {}, 0
    for name in pairs(f1) do
      -- (names with a dot are section markers, .ctors.65535 and the like)
      if f2[name] and not name:find(".", 1, true) then names[#names + 1] = name end
    end
    table.sort(names)
    local tried = 0
    for _, name in ipairs(names) do
      local a1, a2 = m1.base + f1[name], m2.base + f2[name]
      local sig, why = p1:make_signature(a1)
      -- some compiler-made stubs are too alike to tell apart: only ours must
      if sig then
        tried = tried + 1
        assert.same({ a1 }, p1:scan_all(sig, { module = m1 }), name)
        assert.same({ a2 }, p2:scan_all(sig, { module = m2 }), name .. ": " .. sig)
        if f2[name] ~= f1[name] then moved = moved + 1 end
      else
        assert.is_truthy(why:find("no unique signature within 64 bytes", 1, true)
          or why:find("no instruction decodes", 1, true), why)
      end
      if tried == 20 then break end
    end
    assert.equal(20, tried)
    assert.is_true(moved >= 10, "the shifted build moves the functions")
    -- too short a limit: nil and the reason
    local sig, why = p1:make_signature(m1.base + f1.get_setting, { max_length = 2 })
    assert.is_nil(sig)
    assert.matches("no unique signature within 2 bytes", why, 1, true)
    p1:close() p2:close()
    t1:stop() t2:stop()
  end)
end)

--- Starts a build of the target with a thread playing its game: the
-- process, the target, and its functions and data by name (addresses).
local function start_game(build)
  local p, t, m = open_build(build, { calls = 1 })
  local f, d = helpers.target_symbols(build)
  for k, v in pairs(f) do f[k] = m.base + v end
  for k, v in pairs(d) do d[k] = m.base + v end
  return p, t, f, d
end

--- The i32 at address once it satisfies ok (a thread of the target changes it).
local function settles(p, address, ok)
  local v
  for _ = 1, 500 do
    v = p:read_i32(address)
    if ok(v) then return v end
    sleep(0.01)
  end
  return v
end

--- The exported functions of a module of the target: ELF dynamic symbols
-- (from the file) on Linux, the export table (from memory) on Windows,
-- without forwarders and data; { name = address }.
local function exports(p, m)
  local list = {}
  if helpers.windows then
    local pe = m.base + p:read_u32(m.base + 0x3C)
    local dir = pe + 24 + 112
    local rva, size = p:read_u32(dir), p:read_u32(dir + 4)
    local _, nnames, funcs, names, ords = p:unpack(m.base + rva + 20, "<I4I4I4I4I4")
    for k = 0, nnames - 1 do
      local fn = p:read_u32(m.base + funcs + 4 * p:read_u16(m.base + ords + 2 * k))
      if fn ~= 0 and (fn < rva or fn >= rva + size) then
        list[p:read_string(m.base + p:read_u32(m.base + names + 4 * k), 256)] = m.base + fn
      end
    end
  else
    local elf = helpers.read_file(m.path)
    local is64 = elf:byte(5) == 2
    local A = is64 and "I8" or "I4"
    local shoff = string.unpack("<" .. A, elf, is64 and 0x29 or 0x21)
    local shentsize, shnum = string.unpack("<I2I2", elf, is64 and 0x3B or 0x2F)
    local sections = {}
    for k = 0, shnum - 1 do
      local _, stype, _, _, offset, size, link = string.unpack("<I4I4" .. A:rep(4) .. "I4", elf,
        shoff + k * shentsize + 1)
      sections[k] = { type = stype, offset = offset, size = size, link = link }
    end
    for _, s in pairs(sections) do
      if s.type == 11 then -- SHT_DYNSYM
        local strtab = sections[s.link].offset
        local entsize = is64 and 24 or 16
        for k = 1, s.size // entsize - 1 do
          local at, nameoff, value, info, shndx = s.offset + k * entsize + 1
          if is64 then nameoff, info, _, shndx, value = string.unpack("<I4BBI2I8", elf, at)
          else nameoff, value, _, info, _, shndx = string.unpack("<I4I4I4BBI2", elf, at) end
          local stt = info & 0xF
          if shndx ~= 0 and value ~= 0 and (stt == 2 or stt == 10) then -- FUNC, IFUNC
            list[elf:match("^[^%z]*", strtab + nameoff + 1)] = m.base + value
          end
        end
      end
    end
  end
  return list
end

--- Hooks every exported function of the named modules with a no-op payload
-- and restores it: the figures, and a check that everything came back.
local function hook_every_export(p, names)
  local installed, refused, reasons, seen = 0, 0, {}, {}
  for _, name in ipairs(names) do
    local m = assert(p:module(name))
    local fns = {}
    for fname, a in pairs(exports(p, m)) do
      local info = p:query(a)
      -- aliases hook once; data exports (Windows) are not code
      if not seen[a] and info.protect and info.protect:find("x") then
        seen[a] = true
        fns[#fns + 1] = { fname, a }
      end
    end
    table.sort(fns, function(x, y) return x[2] < y[2] end)
    for _, f in ipairs(fns) do
      local a = f[2]
      local before, prot = p:read(a, 16), p:query(a).protect
      local ok, h = pcall(p.hook, p, a, "")
      if ok then
        installed = installed + 1
        assert.equal(0xE9, p:read_u8(a), f[1])
        h:restore()
      else
        assert.is_true(rmem.is_error(h), tostring(h))
        assert.equal("HOOK_REFUSED", h.name, f[1] .. ": " .. tostring(h))
        assert.is_true(#h.message > 10)
        refused = refused + 1
        local why = h.message:gsub("0x%x+", "X"):gsub("%(.-%)", "(..)"):gsub("%d+", "N")
        reasons[why] = (reasons[why] or 0) + 1
      end
      assert.equal(before, p:read(a, 16), f[1])
      assert.equal(prot, p:query(a).protect, f[1])
    end
  end
  return installed, refused, reasons
end

describe("p:hook", function()
  local p, t, f, d
  local arg2 = helpers.windows and "rdx" or "rsi"
  local set_arg2_99 = helpers.windows and "\xBA\x63\0\0\0" or "\xBE\x63\0\0\0" -- mov edx/esi, 99

  before_each(function() p, t, f, d = start_game("rmem-target") end)
  after_each(function()
    p:close()
    t:stop()
  end)


  it("logs the calls of a function a target thread makes, and restores it", function()
    local before, prot, maps = p:read(f.hook_add, 16), p:query(f.hook_add).protect, helpers.mapped_count(p)
    local h = p:hook(f.hook_add, { log = { arg2, "rsp" } })
    assert.matches("^rmem.Hook 0x%x+ %(log, %d+ bytes moved, pid %d+%)$", tostring(h))
    assert.equal(0xE9, p:read_u8(f.hook_add))
    local hits = {}
    for _ = 1, 200 do
      for _, hit in ipairs(h:hits()) do hits[#hits + 1] = hit end
      if #hits >= 50 then break end
      sleep(0.005)
    end
    assert.is_true(#hits >= 50)
    for _, hit in ipairs(hits) do
      assert.equal(7, hit[arg2])   -- hook_add(calls % 1000, 7)
      assert.is_true(hit.thread > 0)
      assert.equal(0, hit.rsp % 8)
    end
    h:restore()
    assert.equal(before, p:read(f.hook_add, 16))
    assert.equal(prot, p:query(f.hook_add).protect)
    assert.equal(maps, helpers.mapped_count(p))
    assert.equal("HOOK_DONE", helpers.error_of(h.restore, h).name)
    h:__close() -- after restore(), a no-op
    local calls = p:read_i32(d.calls)
    assert.is_true(settles(p, d.calls, function(v) return v > calls end) > calls, "the target still runs")
  end)

  it("runs a bytes payload that changes an argument, and the result changes", function()
    assert.equal(7, settles(p, d.last_sum, function(v) return v % 1000 == 7 end) % 1000)
    do
      local h <close> = p:hook(f.hook_add, set_arg2_99)
      assert.equal(99, settles(p, d.last_sum, function(v) return v % 1000 == 99 end) % 1000)
      assert.is_true(h:is_active())
    end
    assert.equal(7, settles(p, d.last_sum, function(v) return v % 1000 == 7 end) % 1000)
  end)

  it("moves a RIP-relative load, which still reads the right data", function()
    local first = p:disasm(f.get_setting, 1)[1]
    assert.is_true(first.rip_relative)
    local h <close> = p:hook(f.get_setting, "")
    assert.is_true(h:is_active())
    -- the moved load now lives in the trampoline, its displacement re-aimed
    p:write_i32(d.setting, 50)
    assert.equal(151, settles(p, d.last_setting, function(v) return v == 151 end))
    p:write_i32(d.setting, 35)
    h:restore()
    assert.equal(first.bytes, p:read(f.get_setting, first.size))
    assert.equal(106, settles(p, d.last_setting, function(v) return v == 106 end))
  end)

  it("calls a function of the target with the registers kept", function()
    local score = p:read_i32(d.score)
    local h <close> = p:hook(f.hook_add, { call = f.tick })
    assert.equal("call", h.kind)
    -- tick() adds 1 to score and clobbers what it likes; hook_add still adds
    assert.is_true(settles(p, d.score, function(v) return v > score + 10 end) > score + 10)
    assert.equal(7, settles(p, d.last_sum, function(v) return v % 1000 == 7 end) % 1000)
  end)

  helpers.linux_it("stops the threads from a helper process: the host gets no SIGCHLD", function()
    helpers.testproc.count_sigchld(true)
    local ok, err = pcall(function()
      for _ = 1, 20 do p:hook(f.hook_add, ""):restore() end
    end)
    local during = helpers.testproc.sigchld_count()
    helpers.testproc.count_sigchld(false)
    assert(ok, err)
    assert.equal(0, during)
  end)

  helpers.linux_it("moves a thread that is inside the moved instructions, and back", function()
    -- a target whose main thread is blocked in read(2): its instruction
    -- pointer is just after the syscall instruction, which the hook moves
    local bt = helpers.start_target()
    local bp <close> = rmem.open(bt.pid)
    local pc
    for _ = 1, 200 do
      local line = helpers.read_file(("/proc/%d/syscall"):format(bt.pid))
      if line:match("^0 ") then pc = tonumber(line:match("(0x%x+)%s*$")) break end
      sleep(0.01)
    end
    local at = assert(pc) - 2
    assert.equal("syscall", bp:disasm(at, 1)[1].text)
    local h = bp:hook(at, "")
    assert.equal(1, h.moved) -- into the trampoline, after its copy of the syscall
    h:restore()
    assert.equal(2, h.moved) -- and back
    -- the read restarted wherever the thread was, and gets this line
    assert.is_true(bt.proc:send("exit 5\n"))
    assert.equal(5, bt.proc:wait())
  end)

  it("keeps a trampoline block while a hook in it lives, when another block empties", function()
    -- a system library lies more than 2 GiB from the program: a second block
    local lib = helpers.windows and "kernel32.dll" or "libc.so.6"
    local far = assert(p:proc_address(lib, helpers.windows and "GetTickCount" or "getpid"))
    local h1 = p:hook(f.hook_add, "")
    local h2 = p:hook(far, "")
    local h3 = p:hook(f.get_setting, "")
    h3:restore()
    h1:restore()
    assert.equal("commit", p:query(h2.trampoline).state)
    assert.equal(0xE9, p:read_u8(far))
    h2:restore()
  end)

  it("keeps a hook and its trampoline with keep()", function()
    local h = p:hook(f.hook_add, set_arg2_99)
    assert.equal(f.hook_add, h:keep())
    h = nil -- luacheck: ignore 311
    collectgarbage()
    collectgarbage()
    assert.equal(99, settles(p, d.last_sum, function(v) return v % 1000 == 99 end) % 1000)
    assert.equal(0xE9, p:read_u8(f.hook_add))
  end)

  it("refuses what it cannot move, with the reason", function()
    local r <close> = p:alloc(4096, { protect = "rwx" })
    -- xor eax, eax; nop; nop; nop; jne (back to the nops): a branch into the moved bytes
    r:write(0, "\x31\xC0\x90\x90\x90\x75\xFB\xC3\xCC\xCC")
    local e = helpers.error_of(p.hook, p, r.address, "")
    assert.equal("HOOK_REFUSED", e.name)
    assert.matches("lands inside the bytes the hook moves", e.message)
    -- ret; then code: too short for a jump
    r:write(0, "\xC3\x31\xC0\xC3\xCC\xCC")
    e = helpers.error_of(p.hook, p, r.address, "")
    assert.matches("too short for a 5%-byte jump", e.message)
    -- ret; then padding: fine
    r:write(0, "\xC3\xCC\xCC\xCC\xCC\xCC")
    p:hook(r.address, ""):restore()
    assert.equal("\xC3\xCC\xCC\xCC\xCC\xCC", r:read(0, 6))
    -- a process opened for reading cannot be hooked, and keeps no trampoline
    local ro <close> = rmem.open(p.pid, { access = "read" })
    assert.equal(helpers.name("ERROR_ACCESS_DENIED"), helpers.error_of(ro.hook, ro, f.hook_add, "").name)
    for _, block in ipairs(ro._hook_pool or {}) do assert.equal(16, #block.free) end
    -- on Windows, as p:call, a hook needs { access = "all" }; nothing is left behind
    if helpers.windows then
      local rw <close> = rmem.open(p.pid)
      local before = helpers.mapped_count(p)
      local err = helpers.error_of(rw.hook, rw, f.hook_add, "")
      assert.equal("ERROR_ACCESS_DENIED", err.name)
      assert.matches('access = "all"', err.hint, 1, true)
      assert.equal(before, helpers.mapped_count(p))
    end
    -- bad payloads are argument errors
    assert.matches("bad argument #2 to 'hook' %('xmm9' is not a 64%-bit register%)",
      helpers.error_of(p.hook, p, f.hook_add, { log = { "xmm9" } }))
    assert.matches("bad argument #2 to 'hook' %(payload must be bytes",
      helpers.error_of(p.hook, p, f.hook_add, 42))
  end)

  it("hooks and restores every export of the C library with a no-op payload", function()
    local names = helpers.windows and { "kernel32.dll", "ntdll.dll" } or { "libc.so.6" }
    local installed, refused, reasons = hook_every_export(p, names)
    local share = installed / (installed + refused)
    print(("\n  hook every export (%s): %d installed, %d refused (%.1f%%)"):format(
      table.concat(names, ", "), installed, refused, 100 * share))
    for why, n in pairs(reasons) do print(("    %4d  %s"):format(n, why)) end
    assert.is_true(share >= 0.95)
    local calls = p:read_i32(d.calls)
    assert.is_true(settles(p, d.calls, function(v) return v > calls end) > calls, "the target still runs")
    assert.is_true(p:is_alive())
  end)
end)

describe("p:hook in a 32-bit target", function()
  local p, t, f, d

  before_each(function() p, t, f, d = start_game("rmem-target32") end)
  after_each(function()
    if p then p:close() t:stop() end
  end)


  helpers.linux_it("moves a get_pc_thunk call, which still sees its original return address", function()
    assert.equal("call", p:disasm(f.get_setting, 1)[1].kind)
    local h <close> = p:hook(f.get_setting, "")
    assert.is_true(h:is_active())
    p:write_i32(d.setting, 50)
    assert.equal(151, settles(p, d.last_setting, function(v) return v == 151 end))
    p:write_i32(d.setting, 35)
    assert.equal(106, settles(p, d.last_setting, function(v) return v == 106 end))
  end)

  helpers.linux_it("runs payloads: bytes that change a stack argument, a call, a log", function()
    do -- mov dword [esp + 8], 99: hook_add's second argument
      local h <close> = p:hook(f.hook_add, "\xC7\x44\x24\x08\x63\0\0\0")
      assert.equal("bytes", h.kind)
      assert.equal(99, settles(p, d.last_sum, function(v) return v % 1000 == 99 end) % 1000)
    end
    assert.equal(7, settles(p, d.last_sum, function(v) return v % 1000 == 7 end) % 1000)
    do
      local score = p:read_i32(d.score)
      local h <close> = p:hook(f.hook_add, { call = f.tick })
      assert.equal("call", h.kind)
      assert.is_true(settles(p, d.score, function(v) return v > score + 10 end) > score + 10)
      assert.equal(7, settles(p, d.last_sum, function(v) return v % 1000 == 7 end) % 1000)
    end
    local h <close> = p:hook(f.hook_add, { log = { "esp", "ebx" } })
    local hits
    for _ = 1, 100 do
      hits = h:hits()
      if #hits > 0 then break end
      sleep(0.01)
    end
    assert.is_true(#hits > 0)
    assert.equal(0, hits[1].esp % 4)
    assert.is_true(hits[1].thread > 0)
  end)

  helpers.linux_it("hooks and restores every export of the 32-bit C library", function()
    local installed, refused, reasons = hook_every_export(p, { "libc.so.6" })
    local share = installed / (installed + refused)
    print(("\n  hook every export (32-bit libc.so.6): %d installed, %d refused (%.1f%%)"):format(
      installed, refused, 100 * share))
    for why, n in pairs(reasons) do print(("    %4d  %s"):format(n, why)) end
    assert.is_true(share >= 0.95)
    local calls = p:read_i32(d.calls)
    assert.is_true(settles(p, d.calls, function(v) return v > calls end) > calls, "the target still runs")
  end)
end)
