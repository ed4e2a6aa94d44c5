-- Linux only: a handle never acts on a process it did not open (a reused
-- pid, a program replaced by exec), injections do not disturb the target,
-- and nothing is left half-done or costs the host more than it must.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local PAGE = rmem.page_size
local linux_it = helpers.linux_it
local read_file = helpers.read_file
local testproc = helpers.testproc

--- The system call number thread pid is blocked in, or nil.
local function blocked_in(pid)
  local ok, s = pcall(read_file, ("/proc/%d/syscall"):format(pid))
  return ok and tonumber(s:match("^(%-?%d+)")) or nil
end

--- Waits until cond() holds (at most about 5 s); fails otherwise.
local function wait_for(what, cond)
  for _ = 1, 500 do
    if cond() then return end
    os.execute("sleep 0.01")
  end
  error("timed out waiting for " .. what)
end

--- The host's resident set, in bytes.
local function host_rss()
  return tonumber(read_file("/proc/self/status"):match("VmRSS:%s*(%d+)")) * 1024
end

--- Errors of fn(...) must be the exited error; returns it.
local function refused(fn, ...)
  local e = helpers.error_of(fn, ...)
  assert.is_true(rmem.is_error(e), tostring(e))
  assert.equal("ESRCH", e.name)
  return e
end

--- A target that has exited, its handle and a region of that handle, and
-- a new target on the same pid: as root, writing ns_last_pid makes the
-- kernel hand out that pid next. Other processes may take it first: then
-- try again, with another pid.
local function reused_pid()
  for _ = 1, 20 do
    local t1 = helpers.start_target()
    local pid = t1.pid
    local old = rmem.open(pid)
    local r1 = old:alloc(PAGE)
    t1:stop()
    t1 = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage() -- testproc reaps it: its pid is free again
    for _ = 1, 5 do
      local f = assert(io.open("/proc/sys/kernel/ns_last_pid", "w"))
      f:write(tostring(pid - 1))
      f:close()
      local t2 = helpers.start_target()
      if t2.pid == pid then return old, r1, t2 end
      t2:stop()
      local taken = io.open("/proc/" .. pid .. "/stat") -- by another process
      if taken then
        taken:close()
        break
      end
    end
    old:close()
  end
  error("the kernel did not reuse a pid")
end

--- Every operation that acts on the process, on p, at address a.
local function every_operation_refused(p, a)
  refused(p.write, p, a, "CLOBBER!")
  refused(p.read, p, a, 8)
  refused(p.alloc, p, PAGE)
  refused(p.alloc, p, PAGE, { address = a })
  refused(p.protect, p, a, PAGE, "r")
  refused(p.decommit, p, a, PAGE)
  refused(p.free, p, a)
  refused(p.query, p, a)
  refused(p.modules, p)
  refused(p.call, p, a)
  refused(function() for _ in p:regions() do end end)
  assert.is_false(p:is_alive())
end

describe("Linux hardening", function()
  linux_it("a handle whose process exited never acts on the process that got its pid", function()
    assert.equal("0", io.popen("id -u"):read("l"), "this spec drives pid reuse as root")
    local old, r1, t2 = reused_pid()
    local pid = t2.pid
    -- idle: its stdin buffer allocated, blocked in read(2)
    wait_for("the new target to idle", function() return blocked_in(pid) == 0 end)
    local new <close> = rmem.open(pid)
    -- the new process's memory where the old handle's region was
    local ok, r2 = pcall(new.alloc, new, PAGE, { address = r1.address })
    if not ok then r2 = new:alloc(PAGE) end
    r2:write(0, "ORIGINAL")
    local mapped = helpers.mapped_count(new)

    every_operation_refused(old, r2.address)
    refused(r1.free, r1)
    r1 = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage() -- the old region's collector

    assert.equal("ORIGINAL", new:read(r2.address, 8))
    local info = new:query(r2.address)
    assert.equal("commit", info.state)
    assert.equal("rw", info.protect)
    assert.equal(mapped, helpers.mapped_count(new))
    r2:free()
    old:close()
    t2:stop()
  end)

  linux_it("after exec, the handle has ended: its regions never unmap the new program's memory", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid)
    local r, by_gc = p:alloc(PAGE), p:alloc(PAGE)
    local a, b = r.address, by_gc.address
    assert.is_true(t.proc:send("exec /bin/sleep 30\n"))
    wait_for("the exec", function()
      local ok, q = pcall(rmem.open, t.pid)
      return ok and q.name == "sleep"
    end)
    local new <close> = rmem.open(t.pid)
    -- the new program's memory at the old regions' addresses: a new page,
    -- or whatever the new program has there already
    local function claim(addr, bytes)
      local ok, n = pcall(new.alloc, new, PAGE, { address = addr })
      if ok then n:write(0, bytes) end
      local info = new:query(addr)
      assert.equal("commit", info.state)
      local ok_read, was = pcall(new.read, new, addr, PAGE)
      return function()
        if ok then assert.is_false(n:is_freed()) end -- (n stays reachable until here)
        assert.same(info, new:query(addr))
        if ok_read then assert.equal(was, new:read(addr, PAGE)) end
      end
    end
    local same_at_a, same_at_b = claim(a, "NEWPROG1"), claim(b, "NEWPROG2")

    every_operation_refused(p, a)
    local e = refused(r.free, r)
    assert.matches("exec", e.hint)
    assert.is_false(r:is_freed())
    by_gc = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage() -- the stale region's collector
    p:close()

    same_at_a()
    same_at_b()
    assert.is_true(new:is_alive())
    os.execute("kill -KILL " .. t.pid)
    t:stop()
  end)

  linux_it("protect over a mapping followed by a hole changes nothing", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid)
    -- a mapping p did not make (another handle's), with a hole after it
    local other <close> = rmem.open(t.pid)
    local two = other:alloc(2 * PAGE)
    local base = two.address
    two:free()
    other:alloc(PAGE, { address = base }):keep()
    assert.equal("free", p:query(base + PAGE).state)
    local e = helpers.error_of(p.protect, p, base, 2 * PAGE, "r")
    assert.equal("EFAULT", e.name)
    assert.equal("rw", p:query(base).protect)
    assert.equal(6, p:write(base, "intact"))
    t:stop()
  end)

  linux_it("a 32-bit target: what it cannot address is an argument error", function()
    local t = helpers.start_target { bits = 32 }
    local p <close> = rmem.open(t.pid)
    assert.equal(32, p.bits)
    local r = p:alloc(PAGE)
    r:write(0, "32-bit!")
    local above = 1 << 32
    local function bad(fn, ...)
      local ok, err = pcall(fn, ...)
      assert.is_false(ok)
      assert.is_string(err)
      assert.matches("bad argument #%d+ to '%a+' %(.*32%-bit", err)
    end
    bad(p.alloc, p, above + PAGE)
    bad(p.alloc, p, PAGE, { address = above })
    bad(p.read, p, above + r.address, 7)
    bad(p.read, p, above - 4, 8)
    bad(p.write, p, above + r.address, "CLOBBER")
    bad(p.protect, p, above + r.address, PAGE, "r")
    bad(p.decommit, p, above + r.address, PAGE)
    bad(p.free, p, above + r.address)
    bad(p.call, p, above + r.address)
    bad(p.call, p, r.address, above + 1)
    assert.equal("32-bit!", r:read(0, 7))
    assert.equal("rw", p:query(r.address).protect)
    r:free()
    t:stop()
  end)

  for _, case in ipairs {
    { wait = "sigwaitinfo", nr = 128, finish = function(t) os.execute("kill -USR1 " .. t:pid()) end,
      code = 10 },
    { wait = "epoll", nr = 232, finish = function(t) t:send("exit 7\n") end, code = 7 },
  } do
    linux_it(("a target whose only thread waits in %s never sees EINTR"):format(case.wait), function()
      local t = testproc.start(helpers.target_path, "--wait", case.wait)
      local pid = t:pid()
      wait_for(case.wait, function() return blocked_in(pid) == case.nr end)
      local p <close> = rmem.open(pid)
      for _ = 1, 3 do
        local r = p:alloc(2 * PAGE)
        r:protect(0, PAGE, "r")
        r:write(PAGE, "x")
        r:free()
      end
      assert.is_true(p:is_alive())
      assert.equal(case.nr, blocked_in(pid)) -- waiting again, in the same call
      case.finish(t)
      assert.equal(case.code, t:wait())
      t:stop()
    end)
  end

  linux_it("a process whose main thread has exited is listed, opened and worked on", function()
    local t = testproc.start(helpers.target_path, "--main-exits")
    local pid = t:pid()
    wait_for("the main thread to exit", function()
      return read_file(("/proc/%d/stat"):format(pid)):match("%) (%a)") == "Z"
    end)
    local listed = false
    for _, info in ipairs(rmem.processes()) do
      if info.pid == pid then
        listed = true
        assert.equal(helpers.target_name, info.name)
      end
    end
    assert.is_true(listed)
    local p <close> = rmem.open(pid)
    assert.equal(helpers.target_name, p.name)
    assert.is_true(p:is_alive())
    local r = p:alloc(2 * PAGE, { commit = false })
    r:commit(PAGE, PAGE)
    r:write(PAGE, "alive")
    assert.equal("alive", r:read(PAGE, 5))
    assert.equal("rw", r:protect(PAGE, PAGE, "r"))
    assert.is_table(p:module(helpers.target_name))
    r:free()
    assert.equal("free", p:query(r.address).state)
    t:send("exit 3\n")
    assert.equal(3, t:wait())
    assert.is_false(p:is_alive())
    t:stop()
  end)

  linux_it("reserving 1 TiB costs the host next to nothing; commits inside it are tracked", function()
    local p, t = helpers.open_target()
    local TIB = 1 << 40
    local before = host_rss()
    local r = p:alloc(TIB, { commit = false })
    assert.is_true(host_rss() - before < 16 << 20, "the host grew by " .. (host_rss() - before))
    -- the commit map of a sparse reservation
    local mid = TIB // 2
    r:commit(mid, 3 * PAGE)
    r:decommit(mid + PAGE, PAGE)
    r:write(mid + 2 * PAGE, "far in")
    assert.same({ "reserve", "commit", "reserve", "commit", "reserve" },
      helpers.page_states(p, r.address + mid - PAGE, 5 * PAGE))
    assert.equal(mid, p:query(r.address).size)
    assert.equal(TIB - mid - 3 * PAGE, p:query(r.address + mid + 3 * PAGE).size)
    r:free()
    assert.equal("free", p:query(r.address + mid).state)
    p:close()
    t:stop()
  end)

  linux_it("page states follow any sequence of commits and decommits", function()
    local p, t = helpers.open_target()
    local N = 24
    local r = p:alloc(N * PAGE, { commit = false })
    local model = {}
    for i = 1, N do model[i] = "reserve" end
    local seed = 12345
    local function rand(n) -- a fixed sequence, the same on every run
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n
    end
    for _ = 1, 150 do
      local first, count = rand(N), 1 + rand(6)
      if first + count > N then count = N - first end
      local commit = rand(2) == 0
      if commit then r:commit(first * PAGE, count * PAGE) else r:decommit(first * PAGE, count * PAGE) end
      for i = first + 1, first + count do model[i] = commit and "commit" or "reserve" end
      assert.same(model, helpers.page_states(p, r.address, N * PAGE))
    end
    r:free()
    p:close()
    t:stop()
  end)
end)
