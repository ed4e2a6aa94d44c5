--- rmem.Process: an open process and its memory operations.
local core = require "rmem.core"
local Error = require "rmem.error"
local check = require "rmem.check"
local protect = require "rmem.protect"
local Region = require "rmem.region"

local F = core.flags
local Process = {}
Process.__index = Process
Process.__name = "rmem.Process"

local ACCESS = {
  read = F.PROCESS_VM_READ | F.PROCESS_QUERY_INFORMATION | F.SYNCHRONIZE,
  write = F.PROCESS_VM_OPERATION | F.PROCESS_VM_READ | F.PROCESS_VM_WRITE
    | F.PROCESS_QUERY_INFORMATION | F.SYNCHRONIZE,
  all = F.PROCESS_ALL_ACCESS,
}
local STATES = { [F.MEM_COMMIT] = "commit", [F.MEM_RESERVE] = "reserve", [F.MEM_FREE] = "free" }
local TYPES = { [F.MEM_PRIVATE] = "private", [F.MEM_MAPPED] = "mapped", [F.MEM_IMAGE] = "image" }
local page = core.page_size
local math_type, maxinteger = math.type, math.maxinteger

local function page_up(n)
  return (n + page - 1) // page * page
end

local read_file = require("rmem.tools").read_file

--- Linux refuses ptrace with EPERM for several reasons: say which it is.
local function ptrace_cause(pid)
  local status = read_file("/proc/" .. pid .. "/status") or ""
  local tracer = tonumber(status:match("TracerPid:%s*(%d+)"))
  if tracer and tracer ~= 0 and (read_file("/proc/" .. tracer .. "/comm") or ""):match("^rmem%-watch") then
    return ("a watch with the ptrace method (p:watch, tracer pid %d) traces the process: close "
      .. "it first; read, write and query still work"):format(tracer)
  elseif tracer and tracer ~= 0 then
    return ("the process is already traced by pid %d (a debugger?): detach it first; "
      .. "read, write and query still work"):format(tracer)
  end
  local seccomp = tonumber(status:match("Seccomp:%s*(%d+)"))
  if seccomp and seccomp ~= 0 then
    return "the process runs under a seccomp filter, which would apply to the injected "
      .. "system calls: rmem does not inject into it"
  end
  local scope = tonumber(read_file("/proc/sys/kernel/yama/ptrace_scope"))
  if scope and scope > 0 then
    return ("Yama's ptrace_scope is %d: only descendants (or, with 1, processes that "
      .. "allow it) can be traced; run as root or set kernel.yama.ptrace_scope=0"):format(scope)
  end
  return nil
end

local function refine_hint(p, e)
  -- Any failure may really be the target having gone: say so when it has.
  local h = p._h
  if h and h:replaced() then
    e.hint = "the process replaced its program (exec): this handle and its regions refer to "
      .. "the old one; rmem.open(pid) opens the new program"
  elseif h and h:is_alive() == false then
    local code = h:exit_code() -- (unknown for a process not the host's child)
    e.hint = "the process has exited" .. (code and (" (exit code %d)"):format(code) or "")
  elseif e.name == "EPERM" then
    e.hint = ptrace_cause(p.pid) or e.hint
  end
  return e
end

--- Raises the rmem.Error for an OS failure of `op` on process p.
local function fail(p, op, msg, code, address, size, extra)
  local fields = extra or {}
  fields.pid, fields.address, fields.size = p.pid, address, size
  error(refine_hint(p, Error.from_os(op, msg, code, fields)), 0)
end

--- The core handle, or the closed-process error.
local function handle(p, op, address)
  if getmetatable(p) ~= Process then check.self_error(Process, "p", op, p) end
  local h = p._h
  if h == nil then
    -- the address is the user's, not yet checked: only an integer is one
    if math_type(address) ~= "integer" then address = nil end
    error(Error.new { op = op, name = "PROCESS_CLOSED", pid = p.pid, address = address,
      message = "the process handle is closed.", hint = p._collected and "the collector "
        .. "closed it, and a finalizer kept the process object: open the process again "
        .. "with rmem.open" or nil }, 0)
  end
  return h
end

local function wrap(h, access)
  return setmetatable({
    pid = h:pid(), name = h:name(), bits = h:bits(),
    _h = h, _access = access, -- the PROCESS_* mask it was opened with
    _regions = setmetatable({}, { __mode = "v" }), -- live Region objects by base address
  }, Process)
end

-- Windows file names are case-insensitive; Linux ones are not.
local windows = core.platform == "windows"
local fold = windows and string.lower or function(s) return s end

--- Where rmem runs under Wine, a process of another Wine prefix is
-- invisible: the hint for a process not found says so.
local function not_found_hint(hint)
  local wine = core.wine_version()
  if not wine then return hint end
  return hint .. (" (rmem runs under Wine %s, which shows only the processes of its own Wine "
    .. "prefix: run rmem with the target's WINEPREFIX)"):format(wine)
end

--- The pid of the one process with this executable name (case-insensitive);
-- on Windows "game" finds game.exe where no process is named "game".
local function find_by_name(name)
  local exact, loose, wanted = {}, {}, name:lower()
  for _, info in ipairs(Process.processes()) do
    local n = info.name:lower()
    if n == wanted then exact[#exact + 1] = info.pid
    elseif windows and n == wanted .. ".exe" then loose[#loose + 1] = info.pid end
  end
  local pids = #exact > 0 and exact or loose
  if #pids == 0 then
    error(Error.new { op = "open", name = "PROCESS_NOT_FOUND",
      message = ("no running process is named '%s'."):format(name),
      hint = not_found_hint("rmem.processes() lists the running processes and their names") }, 0)
  elseif #pids > 1 then
    error(Error.new { op = "open", name = "AMBIGUOUS_NAME", pids = pids,
      message = ("%d processes are named '%s' (pids %s)."):format(#pids, name,
        table.concat(pids, ", ")) }, 0)
  end
  return pids[1]
end

local CAPS = { "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
  "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin",
  "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace",
  "sys_pacct", "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time",
  "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap", "mac_override",
  "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf",
  "checkpoint_restore" }

--- Why Linux refused root to open a process: "run as root" does not help
-- there. A container may drop CAP_SYS_PTRACE, and a process that holds
-- capabilities this one lacks (a container's or VM's init) stays closed.
local function root_open_hint(pid)
  local me = read_file("/proc/self/status") or ""
  if tonumber(me:match("Uid:%s*%d+%s+(%d+)")) ~= 0 then return nil end
  local mine = tonumber(me:match("CapEff:%s*(%x+)"), 16) or 0
  if mine & (1 << 19) == 0 then
    return "rmem runs as root without CAP_SYS_PTRACE, which containers drop: grant it "
      .. "(docker run --cap-add=SYS_PTRACE) or run rmem outside the container"
  end
  local theirs = tonumber((read_file("/proc/" .. pid .. "/status") or ""):match("CapPrm:%s*(%x+)"), 16)
  local extra, names = theirs and theirs & ~mine or 0, {}
  for bit = 0, 63 do
    if extra & (1 << bit) ~= 0 then names[#names + 1] = "CAP_" .. (CAPS[bit + 1] or bit):upper() end
  end
  if #names > 0 then
    return ("rmem runs as root with CAP_SYS_PTRACE, but the process holds capabilities this "
      .. "one lacks (%s), as a container's or VM's own init does, and the kernel refused a "
      .. "process with fewer privileges: run rmem with those capabilities (outside the "
      .. "container)"):format(table.concat(names, ", "))
  end
  return "rmem runs as root with CAP_SYS_PTRACE, and the kernel refused all the same: a "
    .. "security module (SELinux, AppArmor) may protect the process"
end

--- Opens a process by pid or by executable name (case-insensitive).
-- opts.access: "read", "write" (default) or "all", or a PROCESS_* mask.
function Process.open(target, opts)
  opts = check.options(opts, 2, "open", { access = true })
  local pid
  if type(target) == "string" then
    pid = find_by_name(target)
  else
    pid = check.integer(target, 1, "open", "pid")
    if pid < 0 or pid > 0xFFFFFFFF then check.argerror(1, "open", "pid out of range") end
  end
  local access = opts.access or "write"
  local mask = ACCESS[access]
  if mask == nil then
    if math.type(access) ~= "integer" then
      check.argerror(2, "open", ("access must be \"read\", \"write\", \"all\" or a "
        .. "PROCESS_* mask, got %s"):format(tostring(access)))
    end
    mask = access
  end
  local h, msg, code = core.open(pid, mask)
  if not h then
    local e = Error.from_os("open", msg, code, { pid = pid })
    if e.name == "EACCES" or e.name == "EPERM" then
      e.hint = root_open_hint(pid) or e.hint
    elseif e.name == "ERROR_INVALID_PARAMETER" then
      e.hint = not_found_hint(e.hint)
    end
    error(e, 0)
  end
  return wrap(h, mask)
end

--- The current process.
function Process.self()
  return wrap(assert(core.self()), F.PROCESS_ALL_ACCESS)
end

--- The running processes: a list of { pid, name, parent_pid }.
function Process.processes()
  local list, msg, code = core.processes()
  if not list then error(Error.from_os("processes", msg, code), 0) end
  return list
end

function Process:close()
  local h = self._h
  if h then
    self._h = nil
    h:close()
  end
end
Process.__close = Process.close

-- The collector finalizes the core handle with this object. A finalizer
-- may keep the object (resurrect it): it must then say that it is closed,
-- and raise PROCESS_CLOSED, not the core's plain error. (Finalizers run
-- newest first: this one before the handle's, which closes it.)
function Process:__gc()
  self._h, self._collected = nil, true
end

function Process:is_closed()
  return self._h == nil
end

function Process:is_alive()
  local alive, msg, code = handle(self, "is_alive"):is_alive()
  if alive == nil then fail(self, "is_alive", msg, code) end
  return alive
end

function Process:exit_code()
  local h = handle(self, "exit_code")
  local ec, msg, code = h:exit_code()
  if ec == nil and msg then fail(self, "exit_code", msg, code) end
  return ec
end

function Process:__tostring()
  return ("rmem.Process(pid %d, %s, %d-bit%s)"):format(self.pid, self.name, self.bits,
    self._h and "" or ", closed")
end

-- A new region at base replaces any older Region object there: the OS gave
-- out this base again, so that older allocation is gone.
local function register(p, base, size)
  local old = p._regions[base]
  if old then old:_mark_freed() end
  local r = Region.new(p, base, size)
  p._regions[base] = r
  return r
end

local ALLOC_OPTS = { protect = true, commit = true, address = true, top_down = true,
  large_pages = true, write_watch = true, near = true, max_distance = true }

-- The lowest base bases_near offers: the first 64 KiB are never given out
-- (Windows; Linux's default mmap_min_addr), and 0 would mean "anywhere".
local LOWEST_NEAR = math.max(core.granularity, 0x10000)

--- Bases for n bytes within max_distance of near (both ends of the
-- allocation in reach), in free regions, closest first.
local function bases_near(p, near, n, max_distance)
  local gran, list, user_end = core.granularity, {}, core.user_end
  if n > user_end then return list end
  n = page_up(n)
  local lo = math.max(LOWEST_NEAR, near - max_distance)
  local hi = max_distance < user_end - near and near + max_distance or user_end -- (no overflow)
  for info in p:regions { state = "free" } do
    local b, e = math.max(info.base, lo), math.min(info.base + info.size, hi)
    -- the granule-aligned base in [b, e - n] closest to near
    local first = (b + gran - 1) // gran * gran
    local last = (e - n) // gran * gran
    if first <= last then
      local best = math.min(math.max(near // gran * gran, first), last)
      if best + gran <= last and best + gran - near < near - best then best = best + gran end
      if best + n - near <= max_distance and near - best <= max_distance then
        list[#list + 1] = best
      end
    end
    if info.base >= hi then break end
  end
  table.sort(list, function(x, y) return math.abs(x - near) < math.abs(y - near) end)
  return list
end

--- Allocates memory in the process and returns a Region.
-- opts: protect ("rw"), commit (true; false reserves only), address,
-- top_down, large_pages, write_watch; near and max_distance (0x7FFF0000)
-- for free space within reach of an address (code caves, rel32 jumps).
function Process:alloc(size, opts)
  local h = handle(self, "alloc")
  opts = check.options(opts, 2, "alloc", ALLOC_OPTS)
  if size == 0 then check.argerror(1, "alloc", "size must be positive, got 0") end
  if opts.near ~= nil then
    local near = check.address(opts.near, 2, "alloc")
    local reach = opts.max_distance and check.size(opts.max_distance, 2, "alloc") or 0x7FFF0000
    local n = check.size(size, 1, "alloc")
    local rest = {}
    for k, v in pairs(opts) do
      if k ~= "near" and k ~= "max_distance" then rest[k] = v end
    end
    for _, base in ipairs(bases_near(self, near, n, reach)) do
      rest.address = base
      local ok, r = pcall(self.alloc, self, n, rest)
      if ok then return r end
      -- taken meanwhile: try the next; any other failure is the answer
      if not (Error.is_error(r) and (r.name == "ERROR_INVALID_ADDRESS" or r.name == "EEXIST")) then
        error(r, 0)
      end
    end
    error(Error.new { op = "alloc", name = "NO_SPACE_NEAR", pid = self.pid, address = near, size = n,
      message = ("no free space for %d bytes within 0x%x bytes of 0x%x."):format(n, reach, near),
      hint = "free memory near the address, or allow a larger max_distance" }, 0)
  end
  local want = opts.address and check.address(opts.address, 2, "alloc")
  if want == 0 then want = nil end -- nil or 0: the OS chooses, as VirtualAllocEx's NULL
  local _, n = check.range(want or 0, size, 0, "alloc")
  local prot = protect.value(opts.protect or "rw", 2, "alloc")
  local type = F.MEM_RESERVE
  if opts.commit ~= false then type = type | F.MEM_COMMIT end
  if opts.top_down then type = type | F.MEM_TOP_DOWN end
  if opts.large_pages then type = type | F.MEM_LARGE_PAGES end
  if opts.write_watch then type = type | F.MEM_WRITE_WATCH end
  local base, msg, code = h:alloc(want, n, type, prot)
  if not base then fail(self, "alloc", msg, code, want, n) end
  -- the OS rounds the start down to the granularity and the end up to a page
  return register(self, base, page_up((want or base) + n) - base)
end

--- An address in the first page: VirtualAllocEx would take it as NULL and
-- allocate new memory anywhere, which commit and reset must never do.
local function not_null(a, fname)
  if a < page then
    check.argerror(1, fname, ("address must lie inside a reservation, got 0x%x (the first page "
      .. "never does; p:alloc allocates)"):format(a))
  end
end

--- Commits pages inside a reservation; returns the first page's address.
function Process:commit(address, size, prot)
  local h = handle(self, "commit", address)
  local a, n = check.range(address, size, 1, "commit")
  not_null(a, "commit")
  local pv = protect.value(prot or "rw", 3, "commit")
  local base, msg, code = h:alloc(a, n, F.MEM_COMMIT, pv)
  if not base then fail(self, "commit", msg, code, a, n) end
  return base
end

--- Decommits every page holding a byte of [address, address + size); the
-- pages stay reserved. An allocation base with size 0 decommits it all.
function Process:decommit(address, size)
  local h = handle(self, "decommit", address)
  local a, n = check.range(address, size, 1, "decommit")
  local ok, msg, code = h:decommit(a, n)
  if not ok then fail(self, "decommit", msg, code, a, n) end
end

--- Releases the whole allocation whose base is `address`.
function Process:free(address)
  local h = handle(self, "free", address)
  local a = check.address(address, 1, "free")
  local ok, msg, code = h:free(a, 0, F.MEM_RELEASE)
  if not ok then fail(self, "free", msg, code, a) end
  local r = self._regions[a]
  if r then r:_mark_freed() end
end

--- Tells the OS the contents of the pages are no longer needed.
function Process:reset(address, size)
  local h = handle(self, "reset", address)
  local a, n = check.range(address, size, 1, "reset")
  not_null(a, "reset")
  local base, msg, code = h:alloc(a, n, F.MEM_RESET, F.PAGE_NOACCESS)
  if not base then fail(self, "reset", msg, code, a, n) end
end

--- Changes the protection of committed pages; returns the old one (string).
function Process:protect(address, size, prot)
  local h = handle(self, "protect", address)
  local a, n = check.range(address, size, 1, "protect")
  local pv = protect.value(prot, 3, "protect")
  local old, msg, code = h:protect(a, n, pv)
  if not old then fail(self, "protect", msg, code, a, n) end
  return protect.name(old)
end

-- What query and regions return, readable at a prompt.
local RegionInfo = {
  __name = "rmem.RegionInfo",
  __tostring = function(i)
    return ("RegionInfo 0x%016X +0x%X %s %s %s"):format(i.base, i.size, i.state,
      i.protect or "-", i.type or "-")
  end,
}

local Module = {
  __name = "rmem.Module",
  __tostring = function(m)
    return ("Module %s 0x%016X +0x%X"):format(m.name, m.base, m.size)
  end,
}

-- (the core's fresh table becomes the RegionInfo: no copy per region)
local function info_of(raw)
  raw.allocation_protect = protect.name(raw.allocation_protect)
  raw.state = STATES[raw.state] or raw.state
  raw.protect = protect.name(raw.protect)
  raw.type = TYPES[raw.type]
  return setmetatable(raw, RegionInfo)
end

--- The region of pages that share state, protection and type with the page
-- holding `address`.
function Process:query(address)
  local h = handle(self, "query", address)
  local a = check.address(address, 1, "query")
  local raw, msg, code = h:query(a)
  if not raw then fail(self, "query", msg, code, a) end
  return info_of(raw)
end

local function set_of(v, n, what, values)
  if v == nil then return nil end
  local set = {}
  for _, s in ipairs(type(v) == "table" and v or { v }) do
    if not values[s] then
      local valid = {}
      for k in pairs(values) do valid[#valid + 1] = k end
      table.sort(valid)
      check.argerror(n, "regions", ("unknown %s '%s' (expected %s)"):format(what, tostring(s),
        table.concat(valid, ", ")))
    end
    set[s] = true
  end
  return set
end

--- Iterates over every region from address 0 to the top of user space,
-- free ones included, ascending. opts.state and opts.protect filter (a
-- string or a list of strings).
function Process:regions(opts)
  handle(self, "regions")
  opts = check.options(opts, 1, "regions", { state = true, protect = true })
  local states = set_of(opts.state, 1, "state", { commit = true, reserve = true, free = true })
  local prots = opts.protect and protect.set(opts.protect, 1, "regions")
  -- regions come from the core in batches: on Linux one /proc/PID/maps read each,
  -- so a batch holds as many as a process may have
  local address, done, batch, bi = 0, false, {}, 1
  return function()
    while not done do
      if bi > #batch then
        local msg, code
        batch, msg, code = handle(self, "regions", address):regions(address, 65536)
        if not batch then fail(self, "regions", msg, code, address) end
        bi = 1
      end
      local raw = batch[bi]
      bi = bi + 1
      local info = info_of(raw)
      local nxt = raw.base + raw.size
      if nxt <= address or nxt >= core.user_end then done = true else address = nxt end
      -- reserved regions have no protection: a protect filter skips them
      if (not states or states[info.state]) and (not prots or prots[info.protect]) then
        return info
      end
    end
  end
end

--- The modules (executables and libraries) mapped into the process: a list
-- of { name, base, size, path }, name being the file's base name.
function Process:modules()
  local list, msg, code = handle(self, "modules"):modules()
  if not list then fail(self, "modules", msg, code) end
  for _, m in ipairs(list) do setmetatable(m, Module) end
  return list
end

--- The module with this file name (case-insensitive on Windows), or nil.
-- On Windows a name without its extension finds the .dll, else the .exe
-- ("kernel32", "game"), as GetModuleHandle does; an exact name wins.
function Process:module(name)
  if type(name) ~= "string" then
    check.argerror(1, "module", "name must be a string, got " .. type(name))
  end
  local mods = self:modules()
  for _, wanted in ipairs(windows and { name, name .. ".dll", name .. ".exe" } or { name }) do
    wanted = fold(wanted)
    for _, m in ipairs(mods) do
      if fold(m.name) == wanted then return m end
    end
  end
  return nil
end

--- Runs the function at fn_address in the process with one argument (an
-- integer, 0 by default) and returns its result: a remote thread's exit
-- code on Windows (open with { access = "all" }), the return value on
-- Linux, where a thread of the target runs it and is restored afterwards.
-- (On Windows x64, remote.lua puts a version that runs fn under its
-- exception handler in this one's place.)
-- opts.timeout: milliseconds to wait (5000).
function Process:call(fn_address, arg, opts)
  local h = handle(self, "call", fn_address)
  local fn = check.address(fn_address, 1, "call")
  -- (one pointer-sized argument, unsigned: p:call_with passes signed ones)
  local a = arg == nil and 0 or check.nonneg(arg, 2, "call", "arg")
  opts = check.options(opts, 3, "call", { timeout = true })
  local timeout = opts.timeout and check.size(opts.timeout, 3, "call") or 5000
  local result, msg, code, fault = h:call(fn, a, timeout)
  -- Linux: a fault's error carries the address that faulted
  if not result then fail(self, "call", msg, code, core.error_name(code) == "EFAULT" and fault or fn) end
  return result
end

local host_bits = string.packsize("T") * 8

--- What p:map() says of regions no module owns: on Linux the kernel's
-- names ([heap], [stack], [vdso], ...) from /proc/PID/maps; on Windows the
-- heaps the PEB lists and each thread's stack (from its TEB), where the
-- host can read them (a target of the host's own bitness). A function of
-- a RegionInfo.
local function labeller(p)
  local ranges, by_base = {}, {}
  if not windows then
    for line in (read_file(("/proc/%d/maps"):format(p.pid)) or ""):gmatch("[^\n]+") do
      local lo, hi, label = line:match("^(%x+)%-(%x+) .-%s(%[[^%]]+%])$")
      if lo then ranges[#ranges + 1] = { tonumber(lo, 16), tonumber(hi, 16), label } end
    end
  elseif p.bits == host_bits then
    local h, w = p._h, p.bits // 8
    local function ptr(a) local ok, v = pcall(p.read_ptr, p, a) return ok and v or nil end
    local peb = h:peb()
    local heap = peb and ptr(peb + 6 * w) -- PEB.ProcessHeap
    if heap then by_base[heap] = "process heap" end
    local count = peb and ptr(peb + (w == 8 and 0xE8 or 0x88)) -- NumberOfHeaps
    local heaps = peb and ptr(peb + (w == 8 and 0xF0 or 0x90)) -- ProcessHeaps
    for i = 0, heaps and math.min((count or 0) & 0xFFFFFFFF, 256) - 1 or -1 do
      local base = ptr(heaps + i * w)
      if base and not by_base[base] then by_base[base] = "heap" end
    end
    for _, teb in ipairs(h:tebs() or {}) do
      -- NT_TIB.StackLimit (the lowest committed page); ClientId.UniqueThread
      local limit, tid = ptr(teb + 2 * w), ptr(teb + (w == 8 and 0x48 or 0x24))
      local ok, info = pcall(p.query, p, limit or 0)
      if ok and info.allocation_base then
        by_base[info.allocation_base] = ("stack (thread %d)"):format(tid or 0)
      end
    end
  end
  return function(info)
    for _, r in ipairs(ranges) do
      if info.base >= r[1] and info.base < r[2] then return r[3] end
    end
    return by_base[info.allocation_base] or ""
  end
end

--- A memory map like a debugger's: one line per region that is not free,
-- with address, size, state, protection, type and the module it belongs to
-- (or what else the system says it is: heap, stack).
function Process:map()
  local label = labeller(self)
  local mods = self:modules()
  local lines = { ("%-18s %-12s %-8s %-14s %-8s %s"):format("address", "size", "state",
    "protect", "type", "module") }
  for info in self:regions { state = { "commit", "reserve" } } do
    local owner = label(info)
    for _, m in ipairs(mods) do
      if info.base >= m.base and info.base < m.base + m.size then owner = m.name break end
    end
    lines[#lines + 1] = ("0x%016X 0x%-10X %-8s %-14s %-8s %s"):format(info.base, info.size,
      info.state, info.protect or "-", info.type or "-", owner)
  end
  return table.concat(lines, "\n")
end

--- Reads n bytes; a partial read raises an error that says how many bytes
-- were read (e.bytes_done).
function Process:read(address, n)
  local h, a, size = type(self) == "table" and self._h, address, n
  -- the common case checked inline: reads are the hot path of scripts
  if not (h and math_type(a) == "integer" and math_type(size) == "integer" and a >= 0
      and size >= 0 and size <= maxinteger - a) then
    h = handle(self, "read", address)
    a, size = check.range(address, n, 1, "read")
  end
  local s, msg, code, done = h:read(a, size)
  if not s then
    fail(self, "read", msg, code, a, size, { bytes_done = done })
  end
  return s
end

local function write_raw(p, h, a, bytes)
  local n, msg, code, done = h:write(a, bytes)
  if not n then
    fail(p, "write", msg, code, a, #bytes, { bytes_done = done })
  end
end

--- Puts back the protection of the pages a forced write changed, last
-- first; returns the first failure (msg, code, address, size), if any.
local function restore(h, changed)
  local failed
  for i = #changed, 1, -1 do
    local c = changed[i]
    local old, msg, code = h:protect(c[1], c[2], c[3])
    if not old and not failed then failed = { msg, code, c[1], c[2] } end
  end
  if failed then return table.unpack(failed) end
end

-- A forced write whose handle may change protections, failing to make
-- pages writable: the pages are the reason, not the handle's rights
-- (Linux says EACCES, Wine ERROR_INVALID_PARAMETER).
local CANNOT_UNPROTECT = "these pages cannot be made writable (a read-only view of a file or "
  .. "section is one kind): nothing was written, and the pages made writable before were "
  .. "restored; p:query(addr) shows them"

--- Makes every committed, non-writable page of [a, a + n) writable and
-- returns the list of { address, size, old protection } to restore. A
-- failure midway restores the pages already changed before it raises.
local function unprotect(p, h, a, n)
  local changed, stop = {}, a + n
  while a < stop do
    local raw, msg, code = h:query(a)
    local piece = raw and math.min(raw.base + raw.size, stop) - a
    local wp = raw and raw.state == F.MEM_COMMIT and protect.for_write(raw.protect)
    if wp then
      local old
      old, msg, code = h:protect(a, piece, wp)
      if old then changed[#changed + 1] = { a, piece, old } end
    end
    if msg then
      restore(h, changed)
      local pages_refused = raw and p._access & F.PROCESS_VM_OPERATION ~= 0
        and core.error_name(code) ~= "EPERM" -- (ptrace refused: refine_hint says why)
      fail(p, "write", msg, code, a, piece or n, { hint = pages_refused and CANNOT_UNPROTECT or nil })
    end
    a = a + piece
  end
  return changed
end

--- Writes bytes at address; returns the number of bytes written.
-- opts.force makes read-only and executable pages writable for the write
-- and restores their protection afterwards, also if the write fails.
function Process:write(address, bytes, opts)
  local h = type(self) == "table" and self._h
  -- the common case checked inline, as for read
  if opts == nil and h and math_type(address) == "integer" and type(bytes) == "string"
      and address >= 0 and #bytes <= maxinteger - address then
    if #bytes > 0 then write_raw(self, h, address, bytes) end
    return #bytes
  end
  h = handle(self, "write", address)
  local a = check.address(address, 1, "write")
  if type(bytes) ~= "string" then
    check.argerror(2, "write", "bytes must be a string, got " .. type(bytes))
  end
  check.range(a, #bytes, 1, "write")
  opts = check.options(opts, 3, "write", { force = true })
  if #bytes == 0 then return 0 end
  if not opts.force then
    write_raw(self, h, a, bytes)
    return #bytes
  end
  local changed = unprotect(self, h, a, #bytes)
  local ok, err = pcall(write_raw, self, h, a, bytes)
  local msg, code, ra, rn = restore(h, changed)
  if not ok then error(err, 0) end
  if msg then fail(self, "write", msg, code, ra, rn) end
  return #bytes
end

-- for the modules that add methods (many.lua)
Process._handle, Process._fail = handle, fail

return Process
