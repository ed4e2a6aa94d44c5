--- rmem.Error: the error object every failure in the rmem layer raises.
-- Fields: op, code, name, message, pid, address, size, hint (and bytes_done
-- for a partial read or write), where (the user's "file:line" that called
-- into rmem). `tostring(e)` reads as one line that starts with where.
local core = require "rmem.core"
local check = require "rmem.check"

local Error = {}
Error.__index = Error
Error.__name = "rmem.Error"

--- Hints: what usually causes an error and what to do, by op and by name
-- ("*" for any op). The Linux names join these in the Linux backend.
local FREE_NEEDS_BASE = "free needs the base address that alloc returned "
  .. "(MEM_RELEASE releases whole allocations only)"
local DECOMMIT_RANGE = "the range must lie inside one allocation; decommit(base, 0) "
  .. "decommits a whole allocation"

local PROTECT_COMMITTED = "protect needs committed pages inside one allocation: "
  .. "commit them first (reserved and free pages have no protection)"

local WATCH_PERF = "hardware watches need perf_event_open on the target's threads: root, or "
  .. "kernel.perf_event_paranoid <= 2 and ptrace rights over the process"

local hints = {
  watch = { EACCES = WATCH_PERF, EPERM = WATCH_PERF, ENOSPC = "every debug register of a "
    .. "thread is in use (another debugger or watch)" },
  open = {
    ESRCH = "no process has this pid (it may have exited): rmem.processes() lists the running ones",
    EACCES = "the process belongs to another user or is not dumpable: run as its user or "
      .. "as root (CAP_SYS_PTRACE)",
    EPERM = "the process belongs to another user or is not dumpable: run as its user or "
      .. "as root (CAP_SYS_PTRACE)",
    ERROR_ACCESS_DENIED = "the process runs as another user or at a higher integrity level: "
      .. "run elevated, open it with less access ({ access = \"read\" }), or call "
      .. "rmem.enable_debug_privilege() first (administrators only)",
    ERROR_INVALID_PARAMETER = "no process has this pid (it may have exited): "
      .. "rmem.processes() lists the running ones",
    PROCESS_NOT_FOUND = "rmem.processes() lists the running processes and their names",
    AMBIGUOUS_NAME = "open one of them by pid: rmem.open(pid)",
  },
  alloc = {
    EINVAL = "the size must be positive and the protection one of none, r, rw, x, rx, rwx "
      .. "(Linux has no guard, nocache, writecombine, large-page or write-watch allocations)",
    EEXIST = "the wanted address is already in use: leave opts.address out to let the system choose",
    ERROR_INVALID_PARAMETER = "the size must be positive, and the protection valid for "
      .. "the allocation type (large pages need commit and a size that is a multiple "
      .. "of the large-page size)",
    ERROR_INVALID_ADDRESS = "the wanted address is already in use or not allocatable: "
      .. "leave opts.address out to let the system choose",
    ERROR_PRIVILEGE_NOT_HELD = "large pages need SeLockMemoryPrivilege in the host's token",
  },
  commit = {
    EFAULT = "commit needs pages inside a reservation that rmem made (p:alloc(size, "
      .. "{ commit = false })): p:query(addr) shows what is there",
    ERROR_INVALID_ADDRESS = "commit needs pages inside a reservation (p:alloc(size, "
      .. "{ commit = false })): p:query(addr) shows what is there",
  },
  reset = {
    ERROR_INVALID_ADDRESS = "reset needs committed pages: p:query(addr) shows what is there",
  },
  free = {
    EFAULT = FREE_NEEDS_BASE,
    EINVAL = FREE_NEEDS_BASE,
    ERROR_INVALID_PARAMETER = FREE_NEEDS_BASE,
    ERROR_INVALID_ADDRESS = FREE_NEEDS_BASE,
  },
  decommit = {
    EFAULT = DECOMMIT_RANGE .. " (on Linux, an allocation that rmem made)",
    EINVAL = DECOMMIT_RANGE,
    ERROR_INVALID_PARAMETER = DECOMMIT_RANGE,
    ERROR_INVALID_ADDRESS = DECOMMIT_RANGE,
  },
  protect = {
    ERROR_INVALID_ADDRESS = PROTECT_COMMITTED,
    EFAULT = PROTECT_COMMITTED,
    EINVAL = "the protection must be one of none, r, rw, x, rx, rwx (Linux has no guard, "
      .. "nocache or writecombine pages)",
    ERROR_INVALID_PARAMETER = "the protection is not valid for these pages "
      .. "(committed pages of one allocation, one PAGE_* value plus modifiers)",
  },
  call = {
    ERROR_ACCESS_DENIED = "remote calls need PROCESS_CREATE_THREAD: open with { access = \"all\" }",
    ERROR_TIMEOUT = "the function did not return in time: its thread was stopped "
      .. "(TerminateThread), so locks it held stay held and the target may be unstable",
    ETIMEDOUT = "the function did not return in time; the call was abandoned and the "
      .. "borrowed thread restored",
    EFAULT = "the function faulted; the borrowed thread was restored and never saw the fault",
    EINVAL = "a process cannot call into itself this way on Linux",
  },
  query = {
    EINVAL = "the address is above the highest user-mode address",
    ERROR_INVALID_PARAMETER = "the address is above the highest user-mode address",
  },
  read = {
    EFAULT = "part of the range is not mapped, not committed or not readable: "
      .. "p:query(addr) shows the page states",
    ERROR_PARTIAL_COPY = "part of the range is not committed or not readable: "
      .. "p:query(addr) shows the page states",
    ERROR_NOACCESS = "the pages are not readable: p:query(addr) shows their protection",
  },
  write = {
    EFAULT = "part of the range is not mapped or not writable: p:write(addr, bytes, "
      .. "{ force = true }) makes read-only pages writable for the write",
    ERROR_PARTIAL_COPY = "part of the range is not committed or not writable: "
      .. "p:query(addr) shows the page states",
    ERROR_NOACCESS = "the pages are read-only or not accessible: "
      .. "p:write(addr, bytes, { force = true }) makes them writable for the write",
  },
  ["*"] = {
    EACCES = "the handle lacks the access right for this operation "
      .. "(opened with { access = \"read\" }?)",
    ESRCH = "the process has exited",
    EPERM = "ptrace was refused: the process is traced by a debugger, belongs to another "
      .. "user, is not dumpable, or Yama's ptrace_scope forbids it",
    ENOSYS = "Linux has no such operation",
    ERROR_ACCESS_DENIED = "the handle lacks the access right for this operation "
      .. "(opened with { access = \"read\" }?)",
    ERROR_INVALID_HANDLE = "the process handle is no longer valid",
    ERROR_NOT_ENOUGH_MEMORY = "the target has not enough free address space or commit charge",
    ERROR_COMMITMENT_LIMIT = "the system's commit limit is reached: free memory or grow the page file",
    PROCESS_CLOSED = "the process was closed with p:close(): open it again with rmem.open",
    REGION_FREED = "a region is released exactly once; allocate a new one",
  },
}

-- the methods that read or write like read and write (many.lua)
hints.read_into, hints.dump, hints.freeze = hints.read, hints.read, hints.write

local function hex(n)
  return ("0x%x"):format(n)
end

--- Creates an error object from its fields (op and message at least).
function Error.new(fields)
  fields.where = fields.where or check.where()
  if fields.hint == nil then
    local by_op = hints[fields.op]
    fields.hint = by_op and by_op[fields.name] or hints["*"][fields.name]
  end
  return setmetatable(fields, Error)
end

--- Creates the error for an OS failure: `msg` and `code` as rmem.core returns
-- them ("op: text", number).
function Error.from_os(op, msg, code, fields)
  fields = fields or {}
  fields.op = op
  fields.code = code
  fields.name = core.error_name(code) or ("error " .. code)
  fields.message = msg:match("^[%w_]+: (.*)$") or msg
  return Error.new(fields)
end

function Error.is_error(e)
  return getmetatable(e) == Error
end

function Error:__tostring()
  local args = {}
  if self.pid then args[#args + 1] = "pid " .. self.pid end
  if self.address then args[#args + 1] = hex(self.address) end
  if self.size then args[#args + 1] = self.size .. " bytes" end
  if self.step then args[#args + 1] = "step " .. self.step end
  local what = self.code and ("%s (%d)"):format(self.name, self.code) or self.name
  -- Windows' texts end with a period, strerror's do not
  local message = self.message:match("[.!?]$") and self.message or self.message .. "."
  local where = self.where and self.where .. ": " or ""
  local s = ("%srmem: %s(%s) failed: %s: %s"):format(where, self.op, table.concat(args, ", "),
    what, message)
  if self.hint then s = s .. " Hint: " .. self.hint .. "." end
  return s
end

return Error
