-- Disassembly, signatures and hooks (issue 12): against known bytes and the
-- example target's own functions (examples/target.c).
local rmem = require "rmem"
local helpers = require "spec.helpers"

local bin = helpers.windows and helpers.root .. "/build/windows/bin/" or helpers.root .. "/build/linux/"

--- The functions and data of a build of the target, from the symbol table
-- the Makefile writes with nm: name -> offset from the module's base.
local function symbols(build)
  local file = bin .. build .. ".syms"
  local text, image_base = helpers.read_file(file), 0
  if helpers.windows then -- nm gives addresses at the PE's ImageBase
    local pe = helpers.read_file(bin .. build .. ".exe")
    image_base = string.unpack("<I8", pe, string.unpack("<I4", pe, 0x3C + 1) + 24 + 24 + 1)
  end
  local funcs, data = {}, {}
  for a, kind, name in text:gmatch("(%x+) (%a) ([%w_%.]+)") do
    local v = tonumber(a, 16)
    if kind == "T" or kind == "t" then funcs[name] = v
    elseif kind == "D" or kind == "d" or kind == "B" or kind == "b" then data[name] = v end
  end
  for _, t in ipairs { funcs, data } do
    for k, v in pairs(t) do t[k] = v - image_base end
  end
  return funcs, data
end

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
    local funcs, data = symbols("rmem-target")
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
    local f1, f2 = symbols("rmem-target"), symbols("rmem-target-shifted")
    local names, moved = {}, 0
    for name in pairs(f1) do
      if f2[name] then names[#names + 1] = name end
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
