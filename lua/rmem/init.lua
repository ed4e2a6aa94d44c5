--- rmem: work with the memory of another process from Lua.
-- See README.md for the whole API; this file gathers the public names.
local core = require "rmem.core"
local Error = require "rmem.error"
local protect = require "rmem.protect"
local Process = require "rmem.process"
local Region = require "rmem.region"
local typed = require "rmem.typed"
local scan = require "rmem.scan"
local tools = require "rmem.tools"
local patch = require "rmem.patch"
local remote = require "rmem.remote"
local ptrscan = require "rmem.ptrscan"
local func = require "rmem.func"
local disasm = require "rmem.code"
local hook = require "rmem.hook"
local many = require "rmem.many"
local valscan = require "rmem.valscan"
local watch = require "rmem.watch"

typed.install(Process, Region, Region._span, core.page_size)
scan.install(Process)
tools.install(Process)
patch.install(Process)
remote.install(Process)
ptrscan.install(Process)
func.install(Process)
valscan.install(Process)
disasm.install(Process)
hook.install(Process)
many.install(Process)
watch.install(Process)
-- (after every install: p.read(...) for p:read(...) says so, and argument
-- errors name the method the user called)
local check = require "rmem.check"
local inline = { read = true, write = true }
for name in pairs(typed.inline) do inline[name] = true end
check.methods(Process, "p", { open = true, self = true, processes = true }, inline)
check.methods(Region, "r", { new = true }, {})

local flags = {}
for k, v in pairs(core.flags) do flags[k] = v end

local rmem = {
  _VERSION = "rmem 0.1.0",
  platform = core.platform,         -- "windows" or "linux"
  page_size = core.page_size,
  granularity = core.granularity,   -- where allocations start (64 KiB on Windows)
  flags = flags,                    -- MEM_*, PAGE_*, PROCESS_* numbers

  open = Process.open,
  self = Process.self,
  processes = Process.processes,

  hex = tools.hex,
  pointer_scan = ptrscan.pointer_scan,
  load_pointer_map = ptrscan.load_pointer_map,          -- rmem.hex(0x10000) -> "0x10000"
  disasm = disasm.disasm,    -- rmem.disasm(bytes, address, bits) -> listing
  buffer = many.buffer,     -- rmem.buffer(n): n reusable bytes (p:read_into)
  sleep = many.sleep,       -- rmem.sleep(ms)

  Error = Error,
  is_error = Error.is_error,

  --- "rx" -> 0x20; a number is returned as it is.
  protect_value = function(p) return protect.value(p, 1, "protect_value") end,
  --- 0x20 -> "rx"; nil for 0.
  protect_name = protect.name,
}

--- Enables SeDebugPrivilege in the host's token, explicitly: rmem never
-- does it on its own.
function rmem.enable_debug_privilege()
  local ok, msg, code = core.enable_debug_privilege()
  if not ok then error(Error.from_os("enable_debug_privilege", msg, code), 0) end
  return true
end

return rmem
