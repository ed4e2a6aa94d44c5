-- p:watch: hardware watches on a real target whose thread writes a known
-- variable from a known function (examples/target.c --writer).
local rmem = require "rmem"
local helpers = require "spec.helpers"
local testproc = helpers.testproc

local ACCESS = { access = "all" }
local has_disasm = pcall(require, "rmem.disasm")
-- Wine's exception path is slow: its threads need longer to start and to hit
local SLOW = helpers.wine and 3 or 1

--- Starts a target with these options, opens it; returns the process, the
-- target and the watched variable's layout (examples/target.c "watched").
local function writer_target(args)
  local t = helpers.start_target { args = args }
  local p = rmem.open(t.pid, ACCESS)
  local magic = helpers.watched_record(p)
  return p, t, { value = magic + 16, writes = magic + 24, writer = p:read_u64(magic + 32),
    reader = p:read_u64(magic + 40) }
end

--- [fn, end of its first ret): the function's range (16 bytes without a decoder).
local function range_of(p, fn)
  if not has_disasm then return fn, fn + 16 end
  for _, i in ipairs(require("rmem.disasm").disasm(p:read(fn, 64), fn, p.bits)) do
    if i.text:match("^ret") then return fn, i.address + i.size end
  end
  error("no ret in the function")
end

local function inside(a, fn_lo, fn_hi) return a >= fn_lo and a < fn_hi end

local function total(hits)
  local n = 0
  for _, h in ipairs(hits) do n = n + h.count end
  return n
end

--- Every thread's debug registers clear (Dr0-3 and Dr7's enable bits).
local function assert_clear(pid)
  local threads = testproc.debug_registers(pid)
  assert.is_true(#threads >= 1)
  if helpers.linux then -- every thread read (testproc skips one it cannot attach to)
    local ls, n = io.popen("ls /proc/" .. pid .. "/task"), 0
    for _ in ls:lines() do n = n + 1 end
    ls:close()
    assert.are.equal(n, #threads, "threads whose registers were read")
  end
  for _, th in ipairs(threads) do
    assert.are.equal(0, th.dr7 & 0xFF, ("thread %d dr7 0x%X"):format(th.tid, th.dr7))
    for _, k in ipairs { "dr0", "dr1", "dr2", "dr3" } do assert.are.equal(0, th[k]) end
  end
end

--- Waits up to 3 s for the target to have no tracer (a ptrace watch's
-- tracer detaches once its host has gone); returns the tracer left.
local function untraced(pid)
  for _ = 1, 300 do
    if helpers.tracer_of(pid) == 0 then return 0 end
    testproc.sleep(10)
  end
  return helpers.tracer_of(pid)
end

--- Runs a child host (lua5.4) with this script and returns what it printed
-- (standard error too); shell: a command to run first (in the same shell).
local function child_host(script, shell)
  local cmd = ("%slua5.4 -e %q 2>&1"):format(shell and shell .. " && " or "", ("package.path=%q "
    .. "package.cpath=%q "):format(package.path, package.cpath) .. script:gsub("\n", " "))
  local child = io.popen(cmd, "r")
  local out = child:read("a")
  child:close()
  return out
end

-- Every case runs on both platforms (under Wine 8 rmem never suspends a
-- thread that may be inside a debug exception: README, "Watches"); on Linux
-- with each method: perf events, and the ptrace fallback (chosen here by
-- RMEM_WATCH_METHOD, as it is where perf_event_paranoid forbids perf events)
helpers.describe_watch_methods("p:watch()", function(method)
  it("reports the store inside the writing function, and reads only for \"rw\"", function()
    local p, t, v = writer_target { "--writer", "1" }
    local w_lo, w_hi = range_of(p, v.writer)
    local r_lo, r_hi = range_of(p, v.reader)
    local w = p:watch(v.value, 4, "w")
    testproc.sleep(500 * SLOW)
    local hits = w:hits()
    assert.is_true(#hits >= 1 and hits[1].count > 10, "hits: " .. #hits)
    for _, h in ipairs(hits) do
      assert.is_true(inside(h.address, w_lo, w_hi), ("0x%X not in the writer"):format(h.address))
      assert.is_false(inside(h.address, r_lo, r_hi))
      if has_disasm then assert.matches("^mov dword ptr %[", h.text) end
    end
    assert.matches("^rmem%.Watch 0x%x+ 4 bytes w, %d+ hits", tostring(w))
    if method then assert.matches(" %(" .. method .. "%)$", tostring(w)) end
    w:close()
    local rw = p:watch(v.value, 4, "rw")
    testproc.sleep(500 * SLOW)
    local reads, writes = 0, 0
    for _, h in ipairs(rw:hits()) do
      if inside(h.address, r_lo, r_hi) then reads = reads + h.count end
      if inside(h.address, w_lo, w_hi) then writes = writes + h.count end
    end
    assert.is_true(reads > 10 and writes > 10, ("reads %d writes %d"):format(reads, writes))
    rw:close()
    p:close()
    t:stop()
  end)

  it("catches a thread created after the watch started", function()
    local p, t, v = writer_target { "--spawn-writer-after", tostring(1500 * SLOW) }
    local before = {}
    for _, th in ipairs(testproc.debug_registers(t.pid)) do before[th.tid] = true end
    local w <close> = p:watch(v.value, 4, "w")
    assert.are.equal(0, #w:hits())
    -- Windows arms new threads when w:hits() looks (Linux every 10 ms too)
    for _ = 1, 25 do
      testproc.sleep(100 * SLOW)
      w:hits()
    end
    local hits = w:hits()
    assert.is_true(#hits >= 1 and hits[1].count > 10)
    assert.is_nil(before[hits[1].threads[1]])
    w:close()
    p:close()
    t:stop()
  end)

  it("leaves every thread's debug registers clear and the target running", function()
    local p, t, v = writer_target { "--writer", "1", "--writer", "1" }
    local watches = {}
    for i = 1, 4 do watches[i] = p:watch(v.value, 4, i % 2 == 0 and "rw" or "w") end
    testproc.sleep(200 * SLOW)
    if helpers.wine then
      -- the registers really were set, on both writers: seen by their hits
      -- (GetThreadContext from the test would itself stop a thread inside a
      -- debug exception, which Wine 8 deadlocks)
      for i = 1, 4 do
        local hits = watches[i]:hits()
        local tids = {}
        for _, h in ipairs(hits) do for _, tid in ipairs(h.threads) do tids[tid] = true end end
        local n = 0
        for _ in pairs(tids) do n = n + 1 end
        assert.is_true(n >= 2, ("watch %d: hits from %d threads"):format(i, n))
      end
    elseif helpers.windows then -- the registers really were set
      local armed = 0
      for _, th in ipairs(testproc.debug_registers(t.pid)) do
        if th.dr7 & 0xFF == 0x55 then armed = armed + 1 end
      end
      assert.is_true(armed >= 2)
    end
    for i = 1, 4 do watches[i]:close() end
    assert_clear(t.pid)
    if helpers.linux then assert.are.equal(0, testproc.perf_events()) end
    local w0 = p:read_u64(v.writes)
    testproc.sleep(300 * SLOW)
    assert.is_true(p:is_alive())
    assert.is_true(p:read_u64(v.writes) > w0)
    p:close()
    t:stop()
  end)

  it("survives 50 open/close cycles on a writer in a tight loop", function()
    local p, t, v = writer_target { "--writer", "0" }
    for i = 1, 50 do
      local w <close> = p:watch(v.value, 4, i % 2 == 0 and "rw" or "w")
      if i % 10 == 0 then -- really watching (the writer may wait for a CPU a while)
        local n = 0
        for _ = 1, 100 do
          testproc.sleep(20)
          n = total(w:hits()) + w.dropped
          if n > 0 then break end
        end
        assert.is_true(n > 0)
      end
    end
    testproc.sleep(200)
    assert.is_true(p:is_alive())
    assert_clear(t.pid)
    p:close()
    t:stop()
  end)

  -- Windows: the case after this one
  helpers.linux_it("leaves the target running when the host dies mid-watch", function()
    local p, t, v = writer_target { "--writer", "1" }
    local script = ([[
      local rmem = require "rmem"
      local p = rmem.open(%d, { access = "all" })
      W = p:watch(%d, 4, "w")
      io.write(rmem.self().pid, "\n") io.flush()
      require("testproc").sleep(60000)
    ]]):gsub("\n", " "):format(t.pid, v.value)
    local cmd = ("lua5.4 -e %q"):format(("package.path=%q package.cpath=%q "):format(package.path,
      package.cpath) .. script)
    local child = io.popen(cmd, "r")
    local child_pid = tonumber(child:read("l"))
    assert.is_number(child_pid)
    testproc.sleep(100)
    os.execute(("kill -9 %d"):format(child_pid))
    child:close()
    local w0 = p:read_u64(v.writes)
    testproc.sleep(500)
    assert.is_true(p:is_alive())
    assert.is_true(p:read_u64(v.writes) > w0)
    -- a ptrace watch's tracer cleared the registers and left
    assert.are.equal(0, untraced(t.pid))
    assert_clear(t.pid)
    p:close()
    t:stop()
  end)

  --- Where the handlers rmem wrote into the process have their signature.
  local function handler_signatures(p)
    return p:scan_all { bytes = "rmem-watch-veh-2", mask = ("x"):rep(16) }
  end

  --- How many handlers rmem wrote into the process.
  local function handlers(p) return #handler_signatures(p) end

  --- A watch on the writer's variable that sees hits, closed.
  local function watch_briefly(p, v)
    local w = p:watch(v.value, 4, "w")
    testproc.sleep(300 * SLOW)
    assert.is_true(total(w:hits()) > 10)
    w:close()
  end

  -- The child host starts through testproc.spawn: a child lua.exe through
  -- io.popen hangs under Wine 8 (its pipe and console handling).
  helpers.win_it("leaves the target running when the host dies mid-watch; a new host takes over",
    function()
    local p, t, v = writer_target { "--writer", "1" }
    local dir = (os.getenv("TEMP") or "."):gsub("\\$", "")
    local ready = ("%s\\rmem-watch-host-%d.txt"):format(dir, t.pid)
    local script = ("%s\\rmem-watch-host-%d.lua"):format(dir, t.pid)
    os.remove(ready)
    local f = assert(io.open(script, "w"))
    f:write(([[
      package.path, package.cpath = %q, %q
      local rmem = require "rmem"
      local testproc = require "testproc"
      local p = rmem.open(%d, { access = "all" })
      W = p:watch(%d, 4, "w")
      repeat testproc.sleep(10) until #W:hits() > 0
      local f = io.open(%q, "w") f:write("ready") f:close()
      testproc.sleep(60000)
    ]]):format(package.path, package.cpath, t.pid, v.value, ready))
    f:close()
    local child = testproc.spawn(('"%s" "%s"'):format(helpers.native_path(arg[-1]), script))
    local up
    for _ = 1, 300 do
      up = io.open(ready)
      if up then break end
      testproc.sleep(50)
    end
    assert.is_truthy(up, "the child host never watched")
    up:close()
    child:stop() -- killed as a crash would: no close, no collector
    os.remove(ready)
    os.remove(script)
    local w0 = p:read_u64(v.writes)
    testproc.sleep(500 * SLOW)
    assert.is_true(p:is_alive())
    assert.is_true(p:read_u64(v.writes) > w0)
    -- this host finds the dead host's handler: no second one, its registers
    -- taken over, hits of its own, and clear after close
    watch_briefly(p, v)
    assert.are.equal(1, handlers(p))
    assert_clear(t.pid)
    p:close()
    t:stop()
  end)

  -- The handler's record is checked against the process's memory: a process
  -- that holds an earlier one's pid (here: one whose handler memory no
  -- longer says so) gets a handler of its own, not the earlier addresses.
  helpers.win_it("does not take a stale handler record for the process's", function()
    local p, t, v = writer_target { "--writer", "1" }
    watch_briefly(p, v)
    local at = handler_signatures(p)
    assert.are.equal(1, #at)
    p:write(at[1] - 16, ("\0"):rep(32)) -- nonce and signature gone
    local p2 = rmem.open(t.pid, ACCESS)
    watch_briefly(p2, v)
    assert.are.equal(1, handlers(p2)) -- a new one
    assert_clear(t.pid)
    p:close()
    p2:close()
    t:stop()
  end)

  -- The handler's ring is drained by a thread of the host's, on a process
  -- handle of its own: both exist while a watch is open, and only then.
  helpers.win_it("drains the ring from a host thread that ends with the last watch and p:close()",
    function()
    local p, t, v = writer_target { "--writer", "1" }
    watch_briefly(p, v) -- the handler installed (its remote call done)
    local base = helpers.handle_count()
    local w1, w2 = p:watch(v.value, 4, "w"), p:watch(v.value, 4, "rw")
    local running = helpers.handle_count()
    assert.is_true(running > base, ("%d handles, %d before"):format(running, base))
    w1:close()
    assert.are.equal(running, helpers.handle_count())
    w2:close()
    assert.are.equal(base, helpers.handle_count())
    local w = p:watch(v.value, 4, "w")
    testproc.sleep(100 * SLOW)
    assert.is_true(total(w:hits()) > 0)
    p:close() -- stops the thread before the process handle closes
    assert.are.equal(base - 1, helpers.handle_count())
    w:close()
    assert.are.equal(base - 1, helpers.handle_count())
    t:stop()
  end)

  -- A host that dies between writing the handler and the return of
  -- AddVectoredExceptionHandler leaves memory that is not a registered
  -- handler: the next host must not take it over (the first hit would then
  -- find no handler and kill the target).
  helpers.win_it("takes over no handler that a host left before it was registered", function()
    local p, t, v = writer_target { "--writer", "1" }
    local left
    local call_with = p.call_with
    p.call_with = function(self, fn, args, opts) -- the memory as the call finds it
      left = self:read(args[2], 1024)
      return call_with(self, fn, args, opts)
    end
    watch_briefly(p, v)
    p.call_with = nil
    p:close()
    t:stop()
    local p2, t2, v2 = writer_target { "--writer", "1" }
    local r = p2:alloc(4096, { protect = "rwx" })
    r:write(0, left)
    r:keep()
    watch_briefly(p2, v2)
    testproc.sleep(200 * SLOW)
    assert.is_true(p2:is_alive())
    p2:close()
    t2:stop()
  end)

  -- A call that timed out may still have registered the handler: its memory
  -- stays (an exception in the target runs through it).
  helpers.win_it("keeps the handler's memory when installing it timed out", function()
    local p, t, v = writer_target { "--writer", "1" }
    local call_with, at = p.call_with, nil
    p.call_with = function(self, fn, args, opts) -- registered, then timed out
      at = args[2]
      call_with(self, fn, args, opts)
      error(rmem.Error.new { op = "call_with", name = "ERROR_TIMEOUT", code = 1460, pid = self.pid,
        message = "This operation returned because the timeout period expired." }, 0)
    end
    assert.are.equal("ERROR_TIMEOUT", helpers.error_of(p.watch, p, v.value, 4, "w").name)
    p.call_with = nil
    assert.are.equal(16, #p:read(at, 16))
    -- an access violation passes through it to rmem's call handler
    assert.are.equal("EXCEPTION_ACCESS_VIOLATION", helpers.error_of(p.call_with, p, 16, {}).name)
    assert.is_true(p:is_alive())
    watch_briefly(p, v) -- a handler of its own: that one never said it was registered
    assert.are.equal(1, handlers(p))
    p:close()
    t:stop()
  end)

  -- Two hosts: the later one takes the handler over; the earlier one's
  -- watches end (here the second host is a second copy of the module, with a
  -- handler record of its own).
  helpers.win_it("ends the earlier host's watches when another host takes the handler over", function()
    local p, t, v = writer_target { "--writer", "1" }
    local a = p:watch(v.value, 4, "w")
    local saved, other = package.loaded["rmem.watch"], {}
    package.loaded["rmem.watch"] = nil
    local ok, err = pcall(function() require("rmem.watch").install(other) end)
    package.loaded["rmem.watch"] = saved
    assert(ok, err)
    local b = other.watch(p, v.value, 4, "w")
    local e = helpers.error_of(a.hits, a)
    assert.are.equal("WATCH_TAKEN_OVER", e.name)
    assert.is_true(a:close()) -- publishes nothing: b keeps its register
    local n0 = total(b:hits())
    testproc.sleep(300 * SLOW)
    assert.is_true(total(b:hits()) > n0 + 10)
    b:close()
    assert_clear(t.pid)
    p:close()
    t:stop()
  end)

  -- The handler's code run on made-up arguments in the target: a hit of
  -- slots 0 and 1 that finds the ring full (data layout: watch.lua).
  helpers.win_it("counts a hit of several slots that finds the ring full in each slot's dropped", function()
    local p, t, v = writer_target {}
    p:watch(v.value, 4, "w"):close() -- installs the handler
    local sig = handler_signatures(p)
    assert.are.equal(1, #sig)
    local DATA = 512
    local code = p:read(sig[1] - 128 - DATA, DATA)
    local r = p:alloc(16384, { protect = "rwx" })
    local rec, ctx, ep = 0x1000, 0x2000, 0x3000
    r:write(0, code)
    -- slots 0 and 1 active and rmem's; head - tail = the ring's size
    r:write(DATA, string.pack("<I4I4I8I8", 3, 3, 32768, 0))
    r:write(rec, string.pack("<I4", 0x80000004))
    r:write(ctx + 0x30, string.pack("<I4", 0x100010))
    r:write(ctx + 0x68, string.pack("<I8", 3)) -- Dr6: slots 0 and 1 hit
    r:write(ep, string.pack("<I8I8", r.address + rec, r.address + ctx))
    assert.are.equal(0xFFFFFFFF, p:call_with(r.address, { r.address + ep }))
    local d0, d1, d2, d3 = string.unpack("<I8I8I8I8", r:read(DATA + 24, 32))
    assert.are.same({ 1, 1, 0, 0 }, { d0, d1, d2, d3 })
    r:free()
    p:close()
    t:stop()
  end)

  helpers.win_it("says to open the process with access \"all\"", function()
    local p, t, v = writer_target {}
    local plain = rmem.open(t.pid)
    local e = helpers.error_of(plain.watch, plain, v.value, 4, "w")
    assert.are.equal("watch", e.op)
    assert.are.equal("ERROR_ACCESS_DENIED", e.name)
    assert.matches('{ access = "all" }', e.hint, 1, true)
    plain:close()
    p:close()
    t:stop()
  end)

  -- The host's own thread (on Windows armed by a short-lived thread of the
  -- host: a thread cannot suspend itself)
  it("sees the host's own thread in a watch on rmem.self()", function()
    local me = rmem.self()
    local tbl, mt1, mt2 = {}, {}, {}
    -- Lua 5.4's Table: its metatable pointer at +40, written by setmetatable
    local at = tonumber(("%p"):format(tbl):gsub("^0x", ""), 16) + 40
    local w <close> = me:watch(at, 8, "w")
    for i = 1, 200 do setmetatable(tbl, i % 2 == 0 and mt1 or mt2) end
    assert.are.equal(200, total(w:hits()) + w.dropped)
    w:close()
    me:close()
  end)

  -- The writer attempts 100 writes a millisecond (catching up late ones); a
  -- watched write costs it about 10 us with perf events (so 100,000 a second
  -- take a whole CPU: reached on an idle machine, about 30,000 with 8 busy
  -- test runs on 2 cores, hence the floor) and 25-65 us with ptrace (two
  -- switches to the tracer and back per hit); under Wine 8 each hit takes the
  -- server's exception path (about 15,000 a second).
  local FLOOR = method == "ptrace" and 2000 or helpers.wine and 5000 or 15000
  it(("counts hits plus dropped as the writes of a writer attempting 100,000 a second "
    .. "for 5 s (at least %d a second)"):format(FLOOR), function()
    local p, t, v = writer_target { "--writer", "100" }
    local w = p:watch(v.value, 4, "w")
    local w0 = p:read_u64(v.writes)
    testproc.sleep(5000)
    local writes = p:read_u64(v.writes) - w0
    local seen = total(w:hits())
    local dropped = w.dropped
    w:close()
    assert.is_true(p:is_alive())
    local msg = ("%s: %d writes (%d a second), %d hits, %d dropped"):format(method or "veh", writes, writes // 5,
      seen, dropped)
    print(msg)
    assert.is_true(writes >= 5 * FLOOR, msg)
    assert.is_true(math.abs(seen + dropped - writes) <= writes // 100 + 10, msg)
    -- Windows: a host thread drains the handler's ring every few ms
    if helpers.windows then assert.is_true(dropped <= writes // 100, msg) end
    p:close()
    t:stop()
  end)

  helpers.linux_it("keeps watching when a process the host forked closes its copy", function()
    local p, t, v = writer_target { "--writer", "1" }
    local w = p:watch(v.value, 4, "w")
    local child = testproc.fork()
    if child == 0 then -- what its collector would do (the events, the tracer are the host's)
      pcall(w.close, w)
      testproc.exit(0)
    end
    assert.is_true(testproc.reap(child))
    w:hits()
    testproc.sleep(300)
    assert.is_true(total(w:hits()) > 10, "the host's watch stopped")
    -- a forked process that outlives the host's close: the close does not wait for it
    child = testproc.fork()
    if child == 0 then
      testproc.sleep(3000)
      testproc.exit(0)
    end
    w:close()
    assert.is_false(testproc.reap(child, true), "the close waited for the forked process")
    assert.are.equal(0, helpers.tracer_of(t.pid))
    assert.is_true(testproc.reap(child))
    assert_clear(t.pid)
    p:close()
    t:stop()
  end)

  --- Has the target make n threads one after another that each write the
  -- variable once (w:hits() every 100 ms meanwhile); returns the hits
  -- counted and a message.
  local function churn(p, t, v, w, n)
    t.proc:send(("churn %d\n"):format(n))
    for _ = 1, 600 do
      if p:read_u64(v.writes) >= n then break end
      testproc.sleep(100)
      w:hits()
    end
    assert.are.equal(n, p:read_u64(v.writes))
    local hits = total(w:hits())
    return hits, ("%d hits, %d dropped"):format(hits, w.dropped)
  end

  helpers.linux_it("counts every hit of 2,000 threads that each live for one write", function()
    local p, t, v = writer_target { "--until-eof" }
    local w = p:watch(v.value, 4, "w")
    local hits, msg = churn(p, t, v, w, 2000)
    assert.are.equal(2000, hits + w.dropped, msg)
    assert.is_true(hits >= 1900, msg)
    w:close()
    assert.is_true(p:is_alive())
    assert_clear(t.pid)
    if method == "perf" then assert.are.equal(0, testproc.perf_events()) end
    p:close()
    t:stop()
  end)

  --- Where the program (rmem-target) starts in a process, from a thread's maps.
  local function program_base(path)
    return tonumber(helpers.read_file(path):match("^(%x+)%-"), 16)
  end

  helpers.linux_it("watches a process whose main thread has ended", function()
    -- the variable's offset in the program, from a target that has its main thread
    local p0, t0, v0 = writer_target {}
    local offset = v0.value - program_base("/proc/" .. t0.pid .. "/maps")
    p0:close()
    t0:stop()
    local t = helpers.start_target { args = { "--writer", "1", "--until-eof", "--main-exits" } }
    local tid, zombie -- a thread still running (a zombie leader has no maps)
    for _ = 1, 100 do
      local ls = io.popen("ls /proc/" .. t.pid .. "/task")
      for line in ls:lines() do
        if tonumber(line) ~= t.pid then tid = tonumber(line) end
      end
      ls:close()
      zombie = helpers.read_file("/proc/" .. t.pid .. "/status"):match("State:%s*Z") ~= nil
      if zombie then break end
      testproc.sleep(20)
    end
    assert.is_true(zombie, "the main thread did not end")
    assert.is_number(tid)
    local p = rmem.open(t.pid, ACCESS)
    local value = program_base(("/proc/%d/task/%d/maps"):format(t.pid, tid)) + offset
    local w = p:watch(value, 4, "w")
    testproc.sleep(300)
    assert.is_true(total(w:hits()) > 10)
    local w2 = p:watch(value, 4, "rw")
    w2:close()
    w:close()
    p:close()
    t:stop()
  end)

  -- (perf: the ptrace method's tracer leaves no room for p:call's)
  if method == "perf" and has_disasm then
    it("names a rep string instruction with iterations left, not the one before", function()
      local p, t = writer_target {}
      local code = p:alloc(4096, { protect = "rwx" })
      local buf = code.address + 2048
      local rep = code.address + 17
      -- mov rdi, buf; mov ecx, 64; mov al, 1; rep stosb; ret
      code:write(0, "\x48\xBF" .. string.pack("<I8", buf) .. "\xB9\x40\0\0\0\xB0\x01\xF3\xAA\xC3")
      local w = p:watch(buf + 8, 8, "w")
      p:call(code.address)
      local hits = w:hits()
      assert.are.equal(1, #hits)
      assert.are.equal(rep, hits[1].address)
      assert.are.equal(8, hits[1].count)
      assert.matches("^rep stosb", hits[1].text)
      w:close()
      code:free()
      p:close()
      t:stop()
    end)
  end

  helpers.linux_it("says that a process that ended, not yet reaped, has exited", function()
    local p, t, v = writer_target {}
    t:stop() -- (a zombie until reaped)
    local e = helpers.error_of(p.watch, p, v.value, 4, "w")
    assert.are.equal("ESRCH", e.name)
    assert.matches("has exited", e.hint)
    p:close()
  end)

  if method == "ptrace" then
    it("says why a call needing ptrace fails while the watch traces the target", function()
      local p, t, v = writer_target { "--writer", "1" }
      local w = p:watch(v.value, 4, "w")
      local e = helpers.error_of(p.alloc, p, 4096)
      assert.are.equal("EPERM", e.name)
      assert.matches("a watch with the ptrace method %(p:watch, tracer pid %d+%) traces", e.hint)
      w:close()
      p:alloc(4096):free() -- the tracer is gone with the last watch
      p:close()
      t:stop()
    end)

    it("works with few descriptors allowed (RLIMIT_NOFILE 32)", function()
      local p, t, v = writer_target { "--writer", "1" }
      local out = child_host(([[
        local rmem = require "rmem"
        local w <close> = rmem.open(%d, { access = "all" }):watch(%d, 4, "w")
        require("testproc").sleep(300)
        print(#w:hits())
      ]]):format(t.pid, v.value), "ulimit -n 32")
      assert.are.equal("1\n", out)
      assert.are.equal(0, untraced(t.pid))
      p:close()
      t:stop()
    end)

    it("says that another host's ptrace watch traces the target", function()
      local p, t, v = writer_target { "--writer", "1" }
      local w = p:watch(v.value, 4, "w")
      local out = child_host(([[
        local p = require("rmem").open(%d, { access = "all" })
        local _, e = pcall(p.watch, p, %d, 4, "w")
        print(e.name, e.hint)
      ]]):format(t.pid, v.value))
      assert.matches("^EPERM\ta watch with the ptrace method %(p:watch, tracer pid %d+%) traces", out)
      w:close()
      p:close()
      t:stop()
    end)

    -- the tracer's table holds 16,384 (instruction, thread) pairs: those of
    -- threads that ended are freed once w:hits() took their counts
    it("counts the hits of 17,000 threads over time (more than its table holds)", function()
      local p, t, v = writer_target { "--until-eof" }
      local w = p:watch(v.value, 4, "w")
      local hits, msg = churn(p, t, v, w, 17000)
      assert.are.equal(17000, hits, msg)
      assert.are.equal(0, w.dropped)
      w:close()
      p:close()
      t:stop()
    end)

    it("lets the target go when it runs another program (exec)", function()
      local p, t, v = writer_target { "--until-eof", "--writer", "1" }
      local w = p:watch(v.value, 4, "w")
      testproc.sleep(200)
      t.proc:send("exec /bin/cat\n") -- (ends when its input closes)
      assert.are.equal(0, untraced(t.pid))
      local e = helpers.error_of(function()
        for _ = 1, 3 do w:hits() end -- (the first gives the hits made before)
      end)
      assert.are.equal("ESRCH", e.name)
      assert.matches("replaced its program", e.hint)
      w:close()
      p:close()
      t:stop()
    end)

    it("starts another tracer when the last one was killed", function()
      local p, t, v = writer_target {} -- no writer: no hit for the registers left set
      local w1 = p:watch(v.value, 4, "w")
      local killed = helpers.tracer_of(t.pid)
      os.execute("kill -9 " .. killed)
      assert.are.equal(0, untraced(t.pid))
      local w2 = p:watch(v.value, 4, "w")
      assert.matches("%(ptrace%)$", tostring(w2))
      assert.are_not.equal(killed, helpers.tracer_of(t.pid))
      assert.is_true(w1:close())
      w2:close() -- the register the killed tracer left is the one the new one cleared
      assert_clear(t.pid)
      assert.is_true(p:is_alive())
      p:close()
      t:stop()
    end)
  end

  it("p:close() closes the process's watches first", function()
    local p, t, v = writer_target { "--writer", "1" }
    local w = p:watch(v.value, 4, "w")
    testproc.sleep(200 * SLOW)
    p:close()
    assert.are.equal("WATCH_CLOSED", helpers.error_of(w.hits, w).name)
    assert.is_true(w:close())
    if helpers.linux then
      assert.are.equal(0, testproc.perf_events())
      assert.are.equal(0, untraced(t.pid))
    end
    assert_clear(t.pid)
    t:stop()
  end)

  it("gives the hits collected until the target exited", function()
    local p, t, v = writer_target { "--writer", "1" }
    local w = p:watch(v.value, 4, "w")
    testproc.sleep(300 * SLOW)
    t:stop() -- none taken before
    assert.is_true(total(w:hits()) > 10)
    assert.is_true(w:close())
    p:close()
  end)

  it("watches execution of an instruction at any address, one byte by default", function()
    local p, t, v = writer_target { "--writer", "1" }
    local _, hi = range_of(p, v.writer)
    local ret = has_disasm and hi - 1 or v.writer -- the writer's ret: 6 bytes in
    local w = p:watch(ret, nil, "x")
    assert.are.equal(1, w.size)
    testproc.sleep(500 * SLOW)
    local hits = w:hits()
    assert.is_true(#hits >= 1 and hits[1].count > 10, "hits: " .. #hits)
    assert.are.equal(ret, hits[1].address)
    if has_disasm then assert.matches("^ret", hits[1].text) end
    w:close()
    assert.has_error(function() p:watch(ret, 4, "x") end,
      "bad argument #2 to 'watch' (size must be 1 for \"x\" (an instruction), got 4)")
    assert.is_true(p:is_alive())
    p:close()
    t:stop()
  end)

  it("refuses bad input with clear errors", function()
    local p, t, v = writer_target {}
    for _, size in ipairs { 0, 3, 16 } do
      assert.has_error(function() p:watch(v.value, size, "w") end,
        ("bad argument #2 to 'watch' (size must be 1, 2, 4 or 8, got %d)"):format(size))
    end
    assert.has_error(function() p:watch(v.value + 2, 4, "w") end,
      ("bad argument #1 to 'watch' (address 0x%X is not aligned to the size (4))"):format(v.value + 2))
    assert.has_error(function() p:watch(v.value, 4, "r") end,
      "bad argument #3 to 'watch' (kind must be \"w\", \"rw\" or \"x\", got r)")
    local ws = {}
    for i = 1, 4 do ws[i] = p:watch(v.value, 4, "w") end
    local ok, e = pcall(p.watch, p, v.value, 4, "w")
    assert.is_false(ok)
    assert.are.equal("NO_DEBUG_REGISTER", e.name)
    ws[1]:close()
    ws[1] = p:watch(v.value, 4, "w") -- a closed watch frees its register
    for i = 1, 4 do ws[i]:close() end
    assert.equal("WATCH_CLOSED", helpers.error_of(ws[1].hits, ws[1]).name)
    p:close()
    ok, e = pcall(p.watch, p, v.value, 4, "w")
    assert.is_false(ok)
    assert.are.equal("PROCESS_CLOSED", e.name)
    t:stop()
  end)
end)

describe("p:watch() where perf events are refused", function()
  helpers.linux_it("falls back to ptrace", function()
    local p, t, v = writer_target { "--writer", "1" }
    local out = child_host(([[
      local rmem = require "rmem"
      local testproc = require "testproc"
      testproc.deny_perf()
      local p = rmem.open(%d, { access = "all" })
      local w <close> = p:watch(%d, 4, "w")
      testproc.sleep(300)
      local n = 0
      for _, h in ipairs(w:hits()) do n = n + h.count end
      print(tostring(w), n)
    ]]):format(t.pid, v.value))
    local shown, n = out:match("^(rmem%.Watch .-)\t(%d+)")
    assert.matches("%(ptrace%)$", shown, 1, false, out)
    assert.is_true(tonumber(n) > 10, out)
    assert.are.equal(0, untraced(t.pid))
    assert_clear(t.pid)
    assert.is_true(p:is_alive())
    p:close()
    t:stop()
  end)
end)
