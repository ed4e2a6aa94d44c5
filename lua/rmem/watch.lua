--- Hardware watches: p:watch(address, size, kind) -> an rmem.Watch.
--
-- Linux: perf_event_open breakpoints on every thread (src/watch_linux.c).
-- Windows: a debug register on every thread (rb_debug_registers), and a
-- vectored exception handler written into the target that records each
-- hit into a ring in target memory and resumes: the target never stops,
-- and a host that dies leaves a handler that keeps swallowing the hits.
--
-- The CPU reports a data access after the instruction that made it: the
-- instruction before is found by decoding forward from 64 starting points
-- before that address (x86 code resynchronises within a few instructions)
-- and taking the boundary most of them reach, cached per address.
local core = require "rmem.core"
local check = require "rmem.check"
local Error = require "rmem.error"

local windows = core.platform == "windows"
local watch = {}

local KINDS = { w = 1, rw = 3, x = 0 } -- DR7's RW bits
local MAX = 4

-- Debug register slots in use in each process, by pid: slot -> Watch.
local in_use = {}

-- Windows: the handler installed in each process, by pid.
local installed = {}

local RING = 32768 -- entries of 16 bytes: { u64 ip, u32 tid, u16 sequence, u16 slots }
local DATA = 256   -- where the handler's data starts, after its code

-- The handler, x86-64 (LONG handler(EXCEPTION_POINTERS *ep)), and the data
-- at rip-relative DATA: u32 active slots, u32 slots ever used, u64 head,
-- u64 tail (the host's), u64 dropped[4] (by slot), then at +64 the ring.
--   mov rax,[rcx]; cmp dword [rax],0x80000004; jne pass   ; single-steps only
--   mov rdx,[rcx+8]; mov r8,[rdx+0x68]                     ; Dr6
--   test r8d,0x4000; jnz pass                              ; a TF step: not ours
--   lea r9,[rip+data]; mov eax,r8d; and eax,[r9+4]; jz pass ; none of our slots
--   and r8d,[r9]; jz done                                  ; closed: swallow only
--   mov rax,[r9+8]
--   retry: mov r10,rax; sub r10,[r9+16]; cmp r10,RING; jae full
--   lea r10,[rax+1]; lock cmpxchg [r9+8],r10; jne retry    ; reserve entry rax
--   entry = data+64+16*(rax%RING): ip = ctx.Rip, tid = gs:[0x48], slots = r8w,
--     then (last) seq = ax+1
--   jmp done; full: bsf r8d,r8d; lock inc qword [r9+24+8*r8] ; dropped[slot]
--   done: and dword [rdx+0x30],~0x10   ; resume without CONTEXT_DEBUG_REGISTERS:
--     the registers stay as the host set them (a close meanwhile is not undone),
--     and Wine makes no server call per hit
--   or dword [rdx+0x44],0x10000                            ; RF, for "x"
--   mov eax,-1; ret                                        ; CONTINUE_EXECUTION
--   pass: xor eax,eax; ret                                 ; CONTINUE_SEARCH
local HANDLER = ("488b018138040000800f859d000000488b51084c8b426841f7c0004000000f85880000004c8d0dd5"
  .. "0000004489c04123410474784523017462498b41084989c24d2b51104981fa0080000073444c8d50"
  .. "01f04d0fb1510875e44989c24981e2ff7f000049c1e2044f8d5411404c8b9af80000004d891a654c"
  .. "8b1c254800000045895a08664589420effc0664189420ceb0a450fbcc0f04bff44c118836230ef81"
  .. "4a4400000100b8ffffffffc331c0c3"):gsub("..", function(h)
    return string.char(tonumber(h, 16))
  end)

local function fail(op, pid, name, message, hint)
  error(Error.new { op = op, name = name, pid = pid, message = message, hint = hint }, 0)
end

local function os_fail(p, op, msg, code, address)
  error(Error.from_os(op, msg, code, { pid = p.pid, address = address }), 0)
end

local function handle_of(p, op)
  return p:_handle(op)
end

--- The handler in the target (installed once, kept for the process's life).
local function handler_of(p)
  local h = installed[p.pid]
  if h then return h end
  if p.bits ~= 64 then
    fail("watch", p.pid, "NOT_SUPPORTED", "watches on 32-bit Windows processes are not supported.")
  end
  local add = p:proc_address("kernel32.dll", "AddVectoredExceptionHandler")
  if not add then fail("watch", p.pid, "NO_VEH", "the process has no AddVectoredExceptionHandler.") end
  local r = p:alloc(DATA + 64 + RING * 16, { protect = "rwx" })
  local ok, err = pcall(function()
    r:write(0, HANDLER)
    if p:call_with(add, { 1, r.address }) == 0 then
      fail("watch", p.pid, "NO_VEH", "AddVectoredExceptionHandler failed in the process.")
    end
  end)
  if not ok then
    r:free()
    error(err, 0)
  end
  r:keep() -- a handler that may still run must never be freed
  h = { base = r.address, data = r.address + DATA, tail = 0, queues = {} }
  installed[p.pid] = h
  return h
end

--- Windows: the slot bits the handler sees (active, ever used).
local function set_masks(p, veh, slot, active)
  local m = p:read_u32(veh.data)
  p:write_u32(veh.data, active and m | 1 << slot or m & ~(1 << slot))
  p:write_u32(veh.data + 4, p:read_u32(veh.data + 4) | 1 << slot)
end

--- Windows: moves the ring's new entries into each slot's queue
-- ({ ip, tid, 1, ... }); the ring is the process's, shared by its watches.
local function read_ring(p, veh)
  local head = p:read_u64(veh.data + 8)
  local t = veh.tail
  while t < head do
    local at = veh.data + 64 + 16 * (t % RING)
    local ip, tid, seq, slots = string.unpack("<I8I4I2I2", p:read(at, 16))
    if seq ~= (t + 1) & 0xFFFF then break end -- reserved, not written yet
    for s = 0, MAX - 1 do
      local q = veh.queues[s]
      if slots & 1 << s ~= 0 and q then q[#q + 1], q[#q + 2], q[#q + 3] = ip, tid, 1 end
    end
    t = t + 1
  end
  veh.tail = t
  p:write_u64(veh.data + 16, t)
end

-- The instruction before each reported address ------------------------------

local function decoder()
  local ok, mod = pcall(require, "rmem.disasm")
  return ok and mod or nil
end

--- The instruction that ends at `after` (the one the CPU reported for a data
-- access), and its text: decoded forward from each of 64 bytes before it,
-- the boundary most decodings reach exactly is taken.
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
  return best, text
end

local function disasm_one(p, dis, address)
  local ok, bytes = pcall(p.read, p, address, 15)
  if not ok then return nil end
  local list = dis.disasm(bytes, address, p.bits, 1)
  return list[1] and list[1].text
end

-- The Watch object -------------------------------------------------------------

local Watch = { __name = "rmem.Watch" }
Watch.__index = Watch

--- Moves what the OS recorded into the groups.
local function collect(w)
  if w._closed then return end
  local raw, dropped
  if windows then
    local veh = w._veh
    read_ring(w._p, veh)
    raw = veh.queues[w._slot]
    veh.queues[w._slot] = {}
    dropped = w._p:read_u64(veh.data + 24 + 8 * w._slot) - w._dropped_before
    -- new threads: those armed already are not suspended again
    local tids, msg, code = handle_of(w._p, "hits"):debug_registers(w._slot, w.address, w.size,
      KINDS[w.kind], w._armed)
    if not tids then os_fail(w._p, "hits", msg, code, w.address) end
    w._armed = {}
    for _, tid in ipairs(tids) do w._armed[tid] = true end
  else
    local msg, code
    raw, dropped = w._core:poll()
    if not raw then
      msg, code = dropped, nil
      os_fail(w._p, "hits", msg, code, w.address)
    end
  end
  w.dropped = dropped
  local p, dis = w._p, w._dis
  for i = 1, #raw, 3 do
    local ip, tid, n = raw[i], raw[i + 1], raw[i + 2]
    local at = w._before[ip]
    if at == nil then
      if w.kind == "x" then
        at = { ip, dis and disasm_one(p, dis, ip) }
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
  if in_use[p.pid][self._slot] == self then in_use[p.pid][self._slot] = nil end
  if windows then
    local h = p._h
    if h and h:is_alive() then
      -- registers first, then the active bit: a hit in flight is still swallowed
      h:debug_registers(self._slot, 0, 0, 0)
      pcall(set_masks, p, self._veh, self._slot, false)
      self._veh.queues[self._slot] = nil
    end
  else
    self._core:close()
  end
  return true
end

Watch.__close = Watch.close
Watch.__gc = function(w) pcall(Watch.close, w) end

function Watch:__tostring()
  return ("rmem.Watch 0x%X %d bytes %s, %d hits%s%s"):format(self.address, self.size, self.kind,
    self._total, self.method and " (" .. self.method .. ")" or "", self._closed and ", closed" or "")
end

--- p:watch(address, size, kind): kind "w" (default), "rw" or "x".
local function new_watch(p, address, size, kind)
  local a = check.address(address, 1, "watch")
  size = check.integer(size == nil and 4 or size, 2, "watch", "size")
  if size ~= 1 and size ~= 2 and size ~= 4 and size ~= 8 then
    check.argerror(2, "watch", ("size must be 1, 2, 4 or 8, got %d"):format(size))
  end
  if a % size ~= 0 then
    check.argerror(1, "watch", ("address 0x%X is not aligned to the size (%d)"):format(a, size))
  end
  kind = kind == nil and "w" or kind
  if KINDS[kind] == nil then
    check.argerror(3, "watch", ("kind must be \"w\", \"rw\" or \"x\", got %s"):format(tostring(kind)))
  end
  local h = handle_of(p, "watch")
  local used = in_use[p.pid] or {}
  in_use[p.pid] = used
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
    _groups = {}, _before = {}, _total = 0, _dis = decoder(), _closed = true }, Watch)
  if windows then
    w._veh = handler_of(p)
    w.method = nil
    read_ring(p, w._veh) -- what an earlier watch of this slot left is not this one's
    w._veh.queues[slot] = {}
    w._dropped_before = p:read_u64(w._veh.data + 24 + 8 * slot)
    set_masks(p, w._veh, slot, true)
    local tids, msg, code = h:debug_registers(slot, a, size, KINDS[kind])
    if not tids then
      h:debug_registers(slot, 0, 0, 0)
      pcall(set_masks, p, w._veh, slot, false)
      os_fail(p, "watch", msg, code, a)
    end
    w._armed = {}
    for _, tid in ipairs(tids) do w._armed[tid] = true end
  else
    local c, msg, code = h:watch(a, size, KINDS[kind])
    if not c then os_fail(p, "watch", msg, code, a) end
    w._core = c
    w.method = c:method()
  end
  used[slot] = w
  w._closed = nil
  return w
end

function watch.install(Process)
  Process.watch = new_watch
end

return watch
