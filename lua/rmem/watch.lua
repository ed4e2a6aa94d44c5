--- Hardware watches: p:watch(address, size, kind) -> an rmem.Watch.
--
-- Linux: perf_event_open breakpoints on every thread (src/watch_linux.c).
-- Windows: a debug register on every thread (rb_debug_registers), and a
-- vectored exception handler written into the target that records each
-- hit into a ring in target memory, brings the thread's debug registers to
-- what the host asked for, and resumes: the target never stops, and a host
-- that dies leaves a handler that keeps swallowing the hits. A host thread
-- (src/watch_win.c) drains the ring every few ms while a watch is open.
--
-- The CPU reports a data access after the instruction that made it: the
-- instruction before is found by decoding forward from 64 starting points
-- before that address (x86 code resynchronises within a few instructions)
-- and taking the boundary most of them reach, cached per address.
local core = require "rmem.core"
local check = require "rmem.check"
local Error = require "rmem.error"

local windows = core.platform == "windows"
-- Under Wine 8 a thread that SuspendThread (or Get/SetThreadContext from
-- another thread) stops while it is inside a debug exception deadlocks:
-- Wine's SIGTRAP handler asks the server for the thread's own debug
-- registers, the server answers "pending" (the suspension's context, which
-- only the thread's blocked SIGUSR1 handler can deliver), and the thread
-- waits for itself forever (dlls/ntdll/unix/signal_x86_64.c,
-- setup_raise_exception; server/thread.c, get_thread_context). There the
-- host touches only threads that cannot be in one: never armed, updated by
-- the handler, or quiet for QUIET seconds.
local wine = windows and core.wine_version() ~= nil
local watch = {}

local KINDS = { w = 1, rw = 3, x = 0 } -- DR7's RW bits
local MAX = 4

-- Linux: the debug register slots in use in each process instance
-- ("pid:start time"): slot -> Watch. Windows keeps them in the handler's record.
local in_use = {}

-- Windows: the handler's record in each process, by pid; checked against the
-- nonce in the target's memory before each use (a pid may be reused).
local installed = {}

local RING = 32768 -- entries of 32 bytes: { u64 ip, u32 tid, u32 gen, u16 slots, u16 sequence }
local DATA = 512   -- where the handler's data starts, after its code
-- the data: u32 active slots, u32 rmem's slots (ever used), u64 head, u64 tail
-- (the host's), u64 dropped[4] (by slot), u64 DR7 wanted, u64 DR7 mask of
-- rmem's slots, u64 Dr0-3 wanted, u32 generation, u32 -, u64 nonce, the
-- signature, then the ring at +256
local D_ACTIVE, D_HEAD, D_WANT, D_GEN, D_NONCE, D_SIG, D_RING = 0, 8, 56, 104, 112, 128, 256
local SIGNATURE = "rmem-watch-veh-2"
local SIZE = DATA + D_RING + RING * 32
-- a thread with rmem's registers that made no hit for this long is taken to
-- be away from the watched memory (Wine: see above)
local QUIET = 0.25
local SETTLE_MAX = 30 -- seconds a new watch may wait for busy threads
-- seconds w:close() waits for them (the collector does not wait): a thread
-- left with a closed watch's register clears it on its next hit
local CLOSE_MAX = 2
-- what installing the handler needs (VirtualAllocEx, WriteProcessMemory, a
-- remote thread)
local ACCESS_NEEDED = core.flags.PROCESS_CREATE_THREAD | core.flags.PROCESS_VM_OPERATION
  | core.flags.PROCESS_VM_READ | core.flags.PROCESS_VM_WRITE | core.flags.PROCESS_QUERY_INFORMATION

-- The handler, x86-64 (LONG handler(EXCEPTION_POINTERS *ep)), with its data
-- at rip-relative DATA (src/watch_handler_x64.s; its bytes follow):
--   single-steps only (ExceptionCode 0x80000004), not a TF step (Dr6.BS),
--   and only those whose Dr6 names one of rmem's slots, else CONTINUE_SEARCH;
--   gen = data.generation (read first)
--   the thread's registers made what the host wants: Dr7 = (Dr7 & ~mask) |
--     wanted, Dr0-3 of rmem's slots = wanted; when that changed anything,
--     Dr6 = 0 and CONTEXT_DEBUG_REGISTERS stays in ContextFlags (applied on
--     continue: a closed watch ends on each thread's next hit, a new one is
--     added), else it is taken out (the registers stay, and Wine makes no
--     server call per hit)
--   a hit of an active slot, or a change: an entry reserved with lock
--     cmpxchg on head (tail + RING = full), { Rip, tid = gs:[0x48], gen,
--     slots hit (none: a change only) | 0x8000 when the thread is left with
--     none of rmem's registers enabled }, its sequence (index + 1) written last;
--     a hit that finds the ring full counts in dropped[s] of each slot s hit
--   EFlags.RF (for "x"); CONTINUE_EXECUTION
local HANDLER = ("488b018138040000800f8582010000488b51084c8b426841f7c0004000000f856d0100004c8d0dd5"
  .. "0100004489c0412341040f8459010000458b5968498b494048f7d148234a70490b49384531d2483b"
  .. "4a70410f95c24985494075074181ca0080000048894a7041f74104010000007411498b4948483b4a"
  .. "48740748894a4841b20141f74104020000007411498b4950483b4a50740748894a5041b20141f741"
  .. "04040000007411498b4958483b4a58740748894a5841b20141f74104080000007411498b4960483b"
  .. "4a60740748894a6041b2014584d2741148c7426800000000814a3010001000eb04836230ef452301"
  .. "4183e00f4489d083e0014409c00f84810000004181e2008000004509d0498b41084889c1492b4910"
  .. "4881f900800000734a488d4801f0490fb1490875e44889c14881e1ff7f000048c1e105498d8c0900"
  .. "0100004c8b92f80000004c8911654c8b142548000000448951084489590c6644894110ffc0668941"
  .. "12eb194183e00f7413410fbcc8f049ff44c918418d40ff4121c075ed814a4400000100b8ffffffff"
  .. "c331c0c3"):gsub("..", function(h)
    return string.char(tonumber(h, 16))
  end)

watch._HANDLER = HANDLER -- for spec/26-watch_handler_spec.lua (not an API)

local function fail(op, pid, name, message, hint)
  error(Error.new { op = op, name = name, pid = pid, message = message, hint = hint }, 0)
end

local function os_fail(p, op, msg, code, address)
  error(Error.from_os(op, msg, code, { pid = p.pid, address = address }), 0)
end

-- Linux: what the ptrace method's failures mean (refine_hint knows the rest).
local LINUX_HINTS = {
  ETIMEDOUT = "a thread of the process did not stop for the watch's tracer (rmem-watch) within "
    .. "2 s: stopped by a debugger or a job control signal, or stuck in the kernel",
  EIO = "the watch's tracer (rmem-watch) was killed: close this watch; the next one starts another",
}

--- Linux: the rmem.Error for an OS failure, with process.lua's hints.
local function linux_fail(p, op, msg, code, address)
  local _, e = pcall(p._fail, p, op, msg, code, address)
  e.hint = e.hint or LINUX_HINTS[e.name]
  error(e, 0)
end

-- Wall-clock seconds: the C runtime's clock() is elapsed time on Windows.
local clock = os.clock

--- DR7's bits of a slot: enable, RW, LEN (1 -> 00, 2 -> 01, 8 -> 10, 4 -> 11).
local function dr7_bits(slot, size, kind)
  local len = ({ [1] = 0, [2] = 1, [8] = 2, [4] = 3 })[size]
  if kind == 0 then len = 0 end
  return 1 << 2 * slot | kind << 16 + 4 * slot | len << 18 + 4 * slot
end

local function dr7_mask(slot) return 3 << 2 * slot | 0xF << 16 + 4 * slot end

--- Windows: the handler's record { base, data, ring, gen, queues, used,
-- want, ours, threads }: ring drains the handler's ring from the entry
-- `tail` on (rmem.core's watch_ring); threads[tid] = { gen = the last
-- generation it is known to hold, seen = when it last hit (or was first
-- armed), clear = none of rmem's registers enabled on it }.
local function record_of(p, base, nonce, tail)
  local ring, msg, code = p:_handle("watch"):watch_ring(base + DATA, tail, nonce)
  if not ring then os_fail(p, "watch", msg, code) end
  return { base = base, data = base + DATA, nonce = nonce, ring = ring, gen = 0, queues = {},
    used = {}, want = {}, ours = 0, threads = {}, dropped = 0 }
end

--- Windows: the ring's thread drains for p from now on (again after
-- p:close() stopped it while another process object still watches).
local function drain_for(p, veh, op)
  local ok, msg, code = veh.ring:start(p:_handle(op))
  if not ok then os_fail(p, op, msg, code) end
  local set = rawget(p, "_watch_records")
  if not set then
    set = setmetatable({}, { __mode = "k" })
    p._watch_records = set
  end
  set[veh] = true
end

--- Writes what the host wants into the handler's data, then a new generation.
local function publish(p, veh)
  local addrs, active, want, mask = {}, 0, 0, 0
  for s = 0, MAX - 1 do
    local w = veh.want[s]
    addrs[s + 1] = w and w.address or 0
    if w then
      active = active | 1 << s
      want = want | dr7_bits(s, w.size, KINDS[w.kind])
    end
    if veh.ours & 1 << s ~= 0 then mask = mask | dr7_mask(s) end
  end
  p:write(veh.data + D_WANT, string.pack("<I8I8I8I8I8I8", want, mask, table.unpack(addrs)))
  p:write(veh.data + D_ACTIVE, string.pack("<I4I4", active, veh.ours))
  veh.gen = veh.gen + 1
  p:write_u32(veh.data + D_GEN, veh.gen)
  veh.state = { addrs = addrs, mask = mask, dr7 = want }
end

--- Windows: moves what the ring's thread drained (and what is in the ring
-- now) into each slot's queue ({ ip, tid, count, ... }), notes which threads
-- hit with which generation and when, and keeps the dropped counts of the
-- same moment (veh.dropped_by[slot]).
local function read_ring(p, veh)
  local hits, threads, d0, d1, d2, d3, dropped_age = veh.ring:take(p:_handle("hits"))
  if not hits then os_fail(p, "hits", threads, d0) end
  local now, known = clock(), veh.threads
  veh.dropped_by = { [0] = d0, d1, d2, d3 }
  if d0 + d1 + d2 + d3 ~= veh.dropped then
    -- hits that left no entry: any thread may have made them
    veh.dropped = d0 + d1 + d2 + d3
    local at = now - dropped_age / 1000
    for _, t in pairs(known) do t.seen = math.max(t.seen, at) end
  end
  for i = 1, #threads, 4 do
    local tid, gen, at = threads[i], threads[i + 1], now - threads[i + 2] / 1000
    local th = known[tid]
    if not th then
      th = { gen = gen, seen = at }
      known[tid] = th
    end
    th.seen, th.clear = math.max(th.seen, at), threads[i + 3] ~= 0
    if gen > th.gen then th.gen = gen end
  end
  for i = 1, #hits, 4 do
    local ip, tid, slots, n = hits[i], hits[i + 1], hits[i + 2], hits[i + 3]
    for s = 0, MAX - 1 do
      local q = veh.queues[s]
      if slots & 1 << s ~= 0 and q then q[#q + 1], q[#q + 2], q[#q + 3] = ip, tid, n end
    end
  end
end

--- Windows: brings every thread to the state last published. Threads the
-- handler updated (an entry of this generation) are left alone; under Wine
-- so are those with rmem's registers that hit within QUIET seconds (they
-- update themselves on their next hit): for up to `wait` seconds until none
-- is left (false when some still are), else once.
local function settle(p, veh, op, wait)
  local h = p:_handle(op)
  local g, st = veh.gen, veh.state
  local give_up = clock() + (wait or 0)
  while true do
    read_ring(p, veh)
    local now, skip, busy = clock(), {}, false
    for tid, t in pairs(veh.threads) do
      if t.gen >= g then
        skip[tid] = true
      elseif wine and not t.clear and now - t.seen < QUIET then
        skip[tid], busy = true, true
      end
    end
    local tids, msg, code = h:debug_registers(st.addrs, veh.ours, st.mask, st.dr7, skip)
    if not tids then os_fail(p, op, msg, code) end
    local present = {}
    for _, tid in ipairs(tids) do
      present[tid] = true
      local t = veh.threads[tid]
      if not t then
        veh.threads[tid] = { gen = g, seen = now, clear = st.dr7 == 0 } -- new: watched from now on
      elseif not skip[tid] then
        t.gen, t.clear = g, st.dr7 == 0
      end
    end
    for tid in pairs(veh.threads) do
      if not present[tid] then veh.threads[tid] = nil end -- ended
    end
    if not busy then return true end
    if not wait or clock() > give_up then return false end
    core.sleep(1)
  end
end

--- settle until every thread has the state, or WATCH_BUSY after SETTLE_MAX s.
local function settle_all(p, veh, op)
  if not settle(p, veh, op, SETTLE_MAX) then
    fail(op, p.pid, "WATCH_BUSY", ("a thread of process %d kept its debug registers busy for %d s.")
      :format(p.pid, SETTLE_MAX))
  end
end

--- Windows: whether the handler is still this host's: a host that took it
-- over wrote a nonce of its own (true also when it cannot be read: the
-- process has exited, which the caller finds out).
local function owned(p, veh)
  local ok, nonce = pcall(p.read_u64, p, veh.data + D_NONCE)
  return not ok or nonce == veh.nonce
end

--- Whether the process is still open and running.
local function running(p)
  local h = p._h
  return h ~= nil and h:is_alive() ~= false
end

--- An earlier host's handler in the process (found by its signature at the
-- start of an RWX allocation), or nil.
local function find_handler(p)
  for r in p:regions { protect = "rwx" } do
    if r.base == r.allocation_base and r.size >= DATA + D_RING then
      local ok, bytes = pcall(p.read, p, r.base, DATA + D_SIG + #SIGNATURE)
      if ok and bytes:sub(1, #HANDLER) == HANDLER and bytes:sub(-#SIGNATURE) == SIGNATURE then
        return r.base
      end
    end
  end
end

--- The handler in the target (installed once, kept for the process's life).
local function handler_of(p)
  local h = installed[p.pid]
  if h then
    local ok, nonce = pcall(p.read_u64, p, h.data + D_NONCE)
    if ok and nonce == h.nonce then return h end
    installed[p.pid] = nil -- another process with that pid
  end
  if p.bits ~= 64 then
    fail("watch", p.pid, "NOT_SUPPORTED", "watches on 32-bit Windows processes are not supported.")
  end
  local nonce = math.random(1, math.maxinteger)
  local base = find_handler(p)
  if base then
    -- an earlier host's: its watches are over (their slots closed, their
    -- hits dropped); threads may still hold its registers
    local data = base + DATA
    local tail = p:read_u64(data + D_HEAD)
    p:write_u64(data + D_HEAD + 8, tail)
    p:write_u64(data + D_NONCE, nonce)
    h = record_of(p, base, nonce, tail)
    h.ours = p:read_u32(h.data + D_ACTIVE + 4)
    h.gen = p:read_u32(h.data + D_GEN)
    local now = clock()
    local tids, msg, code = p:_handle("watch"):debug_registers()
    if not tids then os_fail(p, "watch", msg, code) end
    for _, tid in ipairs(tids) do
      h.threads[tid] = { gen = -1, seen = now }
    end
    publish(p, h)
    settle_all(p, h, "watch")
    installed[p.pid] = h
    return h
  end
  local add = p:proc_address("kernel32.dll", "AddVectoredExceptionHandler")
  if not add then fail("watch", p.pid, "NO_VEH", "the process has no AddVectoredExceptionHandler.") end
  local r = p:alloc(SIZE, { protect = "rwx" })
  local ok, err = pcall(function()
    r:write(0, HANDLER)
    r:write(DATA + D_NONCE, string.pack("<I8", nonce))
  end)
  if not ok then
    r:free()
    error(err, 0)
  end
  -- From the call on, the handler may be registered (a call that timed out
  -- may have run), and one that may still run is never freed. The
  -- signature, which a later host's find_handler looks for, is written only
  -- once AddVectoredExceptionHandler has returned: a host that dies before
  -- leaves memory that no one takes for a handler.
  r:keep()
  local registered
  ok, registered = pcall(p.call_with, p, add, { 1, r.address })
  if ok and registered == 0 then
    r:free()
    fail("watch", p.pid, "NO_VEH", "AddVectoredExceptionHandler failed in the process.")
  end
  if not ok then error(registered, 0) end
  r:write(DATA + D_SIG, SIGNATURE)
  h = record_of(p, r.address, nonce, 0)
  installed[p.pid] = h
  return h
end

-- The instruction before each reported address ------------------------------

local function decoder()
  local ok, mod = pcall(require, "rmem.disasm")
  return ok and mod or nil
end

-- string instructions (rep stos, movs, ...): the CPU reports one with
-- iterations left at its own address
local STRING_OPS = { movs = true, stos = true, lods = true, cmps = true, scas = true, ins = true,
  outs = true }

--- The instruction at address, or nil where it cannot be read or decoded.
local function insn_at(p, dis, address)
  local ok, bytes = pcall(p.read, p, address, 15)
  return ok and dis.disasm(bytes, address, p.bits, 1)[1] or nil
end

--- The instruction that ends at `after` (the one the CPU reported for a data
-- access), and its text: decoded forward from each of 64 bytes before it,
-- the boundary most decodings reach exactly is taken. A rep string
-- instruction at `after` itself is the one when the one before accesses no
-- memory.
local function instruction_before(p, dis, after)
  local from = math.max(after - 64, 0)
  local ok, bytes = pcall(p.read, p, from, after - from)
  if not ok then
    from = after - after % core.page_size
    ok, bytes = pcall(p.read, p, from, after - from)
    if not ok or after == from then return nil end
  end
  local votes, best, text = {}, nil, nil
  for start = 1, #bytes do
    local list = dis.disasm(bytes:sub(start), from + start - 1, p.bits)
    local last = list[#list]
    if last and last.address + last.size == after then
      local v = (votes[last.address] or 0) + 1
      votes[last.address] = v
      if not best or v > votes[best] then best, text = last.address, last.text end
    end
  end
  local rep = insn_at(p, dis, after)
  local op = rep and rep.text:match("^rep%a* (%a+)[bwdq] ")
  if op and STRING_OPS[op] and not (text and text:find("%[") and not text:match("^lea")
      and not text:match("^nop")) then
    return after, rep.text
  end
  return best, text
end

--- Linux: the process instance ("pid:start time"): a pid may be reused.
local function instance_of(p)
  local f = io.open(("/proc/%d/stat"):format(p.pid))
  local stat = f and f:read("a")
  if f then f:close() end
  -- the fields after the command's closing parenthesis; the 22nd is the start time
  local rest = stat and stat:match("%) (.*)")
  local start = rest and select(20, rest:match(("(%S+) "):rep(20)))
  return ("%d:%s"):format(p.pid, start or "?")
end

-- The Watch object -------------------------------------------------------------

local Watch = { __name = "rmem.Watch" }
Watch.__index = Watch

--- Moves what the OS recorded into the groups.
local function collect(w)
  if w._closed then return end
  local raw, dropped
  if windows then
    local p, veh = w._p, w._veh
    if not owned(p, veh) then
      fail("hits", p.pid, "WATCH_TAKEN_OVER", "another host took over the process's watch "
        .. "handler: this watch has ended.", "two hosts cannot watch one process at once; "
        .. "close this watch (p:watch again takes the handler back)")
    end
    -- takes what the ring's thread drained, arms new threads; of a target
    -- that has exited, what was drained until then
    local ok, err = pcall(function()
      drain_for(p, veh, "hits")
      settle(p, veh, "hits", false)
    end)
    if not ok and running(p) then error(err, 0) end
    raw = veh.queues[w._slot]
    veh.queues[w._slot] = {}
    dropped = veh.dropped_by[w._slot] - w._dropped_before
  else
    local code
    raw, dropped, code = w._core:poll()
    if not raw then linux_fail(w._p, "hits", dropped, code, w.address) end
  end
  w.dropped = dropped
  local p, dis = w._p, w._dis
  for i = 1, #raw, 3 do
    local ip, tid, n = raw[i], raw[i + 1], raw[i + 2]
    local at = w._before[ip]
    if at == nil then
      if w.kind == "x" then
        local insn = dis and insn_at(p, dis, ip)
        at = { ip, insn and insn.text }
      elseif dis then
        at = { instruction_before(p, dis, ip) }
        if at[1] == nil then at = { ip } end
      else
        at = { ip } -- without a decoder: the address the CPU reported
      end
      w._before[ip] = at
    end
    local g = w._groups[at[1]]
    if not g then
      g = { address = at[1], count = 0, threads = {}, text = at[2], _tids = {} }
      w._groups[at[1]] = g
    end
    g.count = g.count + n
    if not g._tids[tid] then
      g._tids[tid] = true
      g.threads[#g.threads + 1] = tid
    end
    w._total = w._total + n
  end
end

--- w:hits() -> { { address, count, threads = {tid, ...}, text }, ... }, the
-- hits since the watch started grouped by instruction, most frequent first.
function Watch:hits()
  if self._closed then
    fail("hits", self._p.pid, "WATCH_CLOSED", "the watch is closed.")
  end
  collect(self)
  local list = {}
  for _, g in pairs(self._groups) do
    list[#list + 1] = { address = g.address, count = g.count, threads = { table.unpack(g.threads) },
      text = g.text }
  end
  table.sort(list, function(a, b)
    if a.count ~= b.count then return a.count > b.count end
    return a.address < b.address
  end)
  return list
end

--- Disarms every thread and frees the slot; twice is fine.
function Watch:close()
  if self._closed then return true end
  local p = self._p
  self._closed = true
  if windows then
    local veh, h = self._veh, p._h
    if veh.used[self._slot] == self then
      veh.used[self._slot] = nil
      veh.want[self._slot] = nil
      veh.queues[self._slot] = nil
      -- the handler keeps swallowing the slot's hits in flight (it stays
      -- one of rmem's) and clears it on each thread that hits it again; a
      -- handler another host took over is that host's
      if h and h:is_alive() and owned(p, veh) then
        publish(p, veh)
        settle(p, veh, "close", not self._collected and CLOSE_MAX)
      end
      if next(veh.used) == nil then veh.ring:stop() end
    end
  else
    if self._used[self._slot] == self then self._used[self._slot] = nil end
    self._core:close()
  end
  return true
end

Watch.__close = Watch.close
Watch.__gc = function(w)
  w._collected = true -- at the host's exit too: no waiting
  pcall(Watch.close, w)
end

function Watch:__tostring()
  return ("rmem.Watch 0x%X %d bytes %s, %d hits%s%s"):format(self.address, self.size, self.kind,
    self._total, self.method and " (" .. self.method .. ")" or "", self._closed and ", closed" or "")
end

--- p:watch(address, size, kind): kind "w" (default), "rw" or "x".
local function new_watch(p, address, size, kind)
  local a = check.address(address, 1, "watch")
  kind = kind == nil and "w" or kind
  if KINDS[kind] == nil then
    check.argerror(3, "watch", ("kind must be \"w\", \"rw\" or \"x\", got %s"):format(tostring(kind)))
  end
  -- an instruction: DR7's LEN 0 (one byte), at any address
  size = check.integer(size == nil and (kind == "x" and 1 or 4) or size, 2, "watch", "size")
  if kind == "x" then
    if size ~= 1 then
      check.argerror(2, "watch", ("size must be 1 for \"x\" (an instruction), got %d"):format(size))
    end
  elseif size ~= 1 and size ~= 2 and size ~= 4 and size ~= 8 then
    check.argerror(2, "watch", ("size must be 1, 2, 4 or 8, got %d"):format(size))
  elseif a % size ~= 0 then
    check.argerror(1, "watch", ("address 0x%X is not aligned to the size (%d)"):format(a, size))
  end
  local h = p:_handle("watch")
  local used, veh
  if windows then
    if p._access & ACCESS_NEEDED ~= ACCESS_NEEDED then
      fail("watch", p.pid, "ERROR_ACCESS_DENIED", ("process %d was opened without the access a "
        .. "watch needs (it writes a handler into the process and runs a thread there)."):format(p.pid),
        "open it with rmem.open(pid, { access = \"all\" })")
    end
    veh = handler_of(p)
    used = veh.used
  else
    local key = instance_of(p)
    used = in_use[key] or {}
    in_use[key] = used
  end
  local slot
  for s = 0, MAX - 1 do
    if used[s] == nil then slot = s break end
  end
  if not slot then
    fail("watch", p.pid, "NO_DEBUG_REGISTER", ("the %d debug registers of process %d are all "
      .. "watching already."):format(MAX, p.pid), "close a watch first (w:close())")
  end
  -- closed until armed: a watch whose arming fails must not free, when
  -- collected, the slot that a later watch holds
  local w = setmetatable({ address = a, size = size, kind = kind, dropped = 0, _p = p, _slot = slot,
    _groups = {}, _before = {}, _total = 0, _dis = decoder(), _closed = true, _used = used }, Watch)
  if windows then
    w._veh = veh
    read_ring(p, veh) -- what an earlier watch of this slot left is not this one's
    veh.queues[slot] = {}
    w._dropped_before = veh.dropped_by[slot]
    veh.want[slot] = w
    veh.ours = veh.ours | 1 << slot
    local ok, err = pcall(function()
      drain_for(p, veh, "watch")
      publish(p, veh)
      settle_all(p, veh, "watch")
    end)
    if not ok then -- undone: the slot closed again on every thread that took it
      veh.want[slot], veh.queues[slot] = nil, nil
      pcall(function()
        publish(p, veh)
        settle_all(p, veh, "watch")
      end)
      if next(veh.used) == nil then veh.ring:stop() end
      error(err, 0)
    end
  else
    local c, msg, code = h:watch(a, size, KINDS[kind])
    if not c then linux_fail(p, "watch", msg, code, a) end
    w._core = c
    w.method = c:method()
  end
  used[slot] = w
  w._closed = nil
  p._watches = rawget(p, "_watches") or setmetatable({}, { __mode = "k" }) -- for p:close()
  p._watches[w] = true
  return w
end

function watch.install(Process)
  Process.watch = new_watch
  -- a process closes its watches before its handle (which they need to
  -- disarm the threads), and stops the ring threads it started; the handle
  -- closes also when a watch's close fails
  local close = Process.close
  function Process:close()
    local first
    for w in pairs(rawget(self, "_watches") or {}) do
      local ok, err = pcall(w.close, w)
      first = first or not ok and err or nil
    end
    for veh in pairs(rawget(self, "_watch_records") or {}) do veh.ring:stop() end
    close(self)
    if first then error(first, 0) end
  end
  Process.__close = Process.close
end

return watch
