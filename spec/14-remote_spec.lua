-- Remote calls with several arguments, exports, and loading libraries into
-- real targets (examples/payload.c is the library).
local rmem = require "rmem"
local helpers = require "spec.helpers"

local ACCESS = { access = helpers.windows and "all" or "write" }
local CORE_LIB = helpers.windows and "kernel32.dll" or "libc.so.6"

--- The set of regions with protection rwx, as "base+size" keys.
local function rwx_regions(p)
  local set = {}
  for info in p:regions { state = "commit" } do
    if info.protect == "rwx" then set[#set + 1] = ("%x+%x"):format(info.base, info.size) end
  end
  table.sort(set)
  return table.concat(set, " ")
end

describe("p:proc_address()", function()
  local t, p
  setup(function()
    t = helpers.start_target()
    p = rmem.open(t.pid, ACCESS)
  end)
  teardown(function()
    p:close()
    t:stop()
  end)

  it("finds exports in the target's own modules, by name or module table", function()
    local m = p:module(CORE_LIB)
    local fn = helpers.windows and "LoadLibraryW" or "dlopen"
    local a = p:proc_address(m, fn)
    assert.equal(a, p:proc_address(CORE_LIB, fn))
    local owner = p:query(a)
    assert.equal("commit", owner.state)
    assert.truthy(owner.protect:find("x"))
    assert.is_nil(p:proc_address(m, "no_such_export_anywhere"))
  end)

  helpers.win_it("follows forwarders into the module they name", function()
    -- kernel32's HeapAlloc forwards to ntdll's RtlAllocateHeap
    local a = p:proc_address("kernel32.dll", "HeapAlloc")
    local ntdll = p:module("ntdll.dll")
    assert.equal(p:proc_address(ntdll, "RtlAllocateHeap"), a)
    assert.is_true(a >= ntdll.base and a < ntdll.base + ntdll.size)
  end)

  helpers.linux_it("refuses an IFUNC, whose value is a resolver, not the function", function()
    local e = helpers.error_of(p.proc_address, p, "libc.so.6", "strlen")
    assert.equal("IFUNC", e.name)
  end)

  it("rejects bad arguments", function()
    assert.has_error(function() p:proc_address("no-such-module", "f") end,
      "bad argument #1 to 'proc_address' (no module named 'no-such-module')")
    assert.has_error(function() p:proc_address(42, "f") end,
      "bad argument #1 to 'proc_address' (module must be a name or a module table, got number)")
    assert.has_error(function() p:proc_address(CORE_LIB, {}) end,
      "bad argument #2 to 'proc_address' (name must be a string, got table)")
  end)
end)

describe("p:load_library(), p:call_with(), p:unload_library()", function()
  it("loads the payload, calls it with strings and integers, and unloads it", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid, ACCESS)
    local lib = p:load_library(helpers.payload_path())
    assert.equal(helpers.windows and "rmem-payload.dll" or "rmem-payload.so", lib.name)
    assert.truthy(p:module(lib.name))
    assert.is_true(lib.handle ~= 0)

    local message = p:proc_address(lib, "payload_message")
    assert.equal("not greeted yet", p:read_string(message))
    assert.equal(22, p:call_with(p:proc_address(lib, "payload_greet"), { "rmem", 1234 }))
    assert.equal("hello, rmem, from 1234", p:read_string(message))

    -- eight arguments: four or six in registers, the rest on the stack
    local weigh = p:proc_address(lib, "payload_weigh")
    assert.equal(1 + 2 + 3 + 4 + 5 + 6 + 7 + 8, p:call_with(weigh, { 1, 1, 1, 1, 1, 1, 1, 1 }))
    assert.equal(-8, p:call_with(weigh, { 0, 0, 0, 0, 0, 0, 0, -1 }))
    assert.equal(8 * 0x100000000, p:call_with(weigh, { 0, 0, 0, 0, 0, 0, 0, 0x100000000 }))

    assert.is_true(p:unload_library(lib))
    assert.is_nil(p:module(lib.name))
    t:stop()
  end)

  it("frees the scratch memory: the string's address is free afterwards", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid, ACCESS)
    local lib = p:load_library(helpers.payload_path())
    local before = rwx_regions(p)
    local where = p:call_with(p:proc_address(lib, "payload_echo"), { "where am I?" })
    assert.equal("free", p:query(where).state)
    assert.equal(before, rwx_regions(p))
    p:unload_library(lib)
    t:stop()
  end)

  it("a call that times out is stopped, its scratch memory freed, and the target carries on", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid, ACCESS)
    local hang = p:alloc(rmem.page_size, { protect = "rwx" })
    hang:write(0, "\xEB\xFE") -- jmp $
    local before = rwx_regions(p)
    local e = helpers.error_of(p.call_with, p, hang.address, { "text", 1 }, { timeout = 200 })
    assert.equal("call_with", e.op)
    assert.equal(helpers.windows and "ERROR_TIMEOUT" or "ETIMEDOUT", e.name)
    assert.equal(before, rwx_regions(p))
    assert.is_true(p:is_alive())
    local lib = p:load_library(helpers.payload_path())
    assert.equal(36, p:call_with(p:proc_address(lib, "payload_weigh"), { 1, 1, 1, 1, 1, 1, 1, 1 }))
    p:unload_library(lib)
    t:stop()
  end)

  it("a library that cannot be loaded: the target's own error", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid, ACCESS)
    local e = helpers.error_of(p.load_library, p, helpers.native_path(helpers.root .. "/no-such-lib.so"))
    assert.equal("load_library", e.op)
    if helpers.windows then
      assert.equal("ERROR_MOD_NOT_FOUND", e.name)
    else
      assert.equal("DLERROR", e.name)
      assert.matches("no%-such%-lib%.so: cannot open shared object file", e.message)
    end
    assert.matches("was not loaded", e.hint)
    assert.is_true(p:is_alive())
    t:stop()
  end)

  it("unloading what was not loaded at run time is an error", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid, ACCESS)
    local lib = p:load_library(helpers.payload_path())
    p:unload_library(lib)
    local e = helpers.error_of(p.unload_library, p, lib)
    assert.equal("unload_library", e.op)
    assert.equal(helpers.windows and "ERROR_MOD_NOT_FOUND" or "DLERROR", e.name)
    t:stop()
  end)

  it("rejects bad arguments before touching the target", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid, ACCESS)
    for args, msg in pairs {
      [5] = "args must be a table (a list), got number",
      [{ 1, 2.5 }] = "args[2] must be an integer, got 2.5",
      [{ 1, true }] = "args[2] must be an integer, got boolean",
      [{ x = 1 }] = "args must be a list, got key x",
      [{ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17 }] = "at most 16 arguments, got 17",
    } do
      assert.has_error(function() p:call_with(0x1000, args) end,
        "bad argument #2 to 'call_with' (" .. msg .. ")")
    end
    assert.has_error(function() p:call_with(-1, {}) end,
      "bad argument #1 to 'call_with' (address must not be negative, got -1)")
    assert.has_error(function() p:call_with(0x1000, {}, { wait = 1 }) end,
      "bad argument #3 to 'call_with' (unknown option 'wait')")
    assert.has_error(function() p:load_library("") end,
      "bad argument #1 to 'load_library' (path must be a non-empty string)")
    assert.has_error(function() p:unload_library(nil) end,
      "bad argument #1 to 'unload_library' (module must be a name or a module table, got nil)")
    t:stop()
  end)

  helpers.linux_it("a 32-bit target: dlopen from its own libc, cdecl arguments", function()
    local t = helpers.start_target { bits = 32 }
    local p <close> = rmem.open(t.pid)
    local lib = p:load_library(helpers.payload_path(32))
    assert.equal("rmem-payload32.so", lib.name)
    assert.equal(22, p:call_with(p:proc_address(lib, "payload_greet"), { "rmem", 1234 }))
    assert.equal("hello, rmem, from 1234", p:read_string(p:proc_address(lib, "payload_message")))
    -- 32-bit results are unsigned pointer-sized values
    assert.equal(0xFFFFCFC7, p:call_with(p:proc_address("libc.so.6", "atoi"), { "-12345" }))
    p:unload_library(lib)
    assert.is_nil(p:module(lib.name))
    t:stop()
  end)
end)
