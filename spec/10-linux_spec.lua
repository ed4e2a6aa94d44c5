-- Linux only: system calls injected into the target leave it running as if
-- nothing happened, and every way ptrace can be refused reads clearly.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local PAGE = rmem.page_size
local linux_it = helpers.linux_it

local read_file = helpers.read_file

--- A sequence that injects every kind of call: reserve, commit, protect,
-- decommit, release.
local function exercise(p)
  for _ = 1, 5 do
    local r = p:alloc(4 * PAGE, { commit = false })
    r:commit(PAGE, 2 * PAGE)
    r:write(PAGE, "still here")
    assert.equal("still here", r:read(PAGE, 10))
    r:protect(PAGE, PAGE, "r")
    r:decommit(2 * PAGE, PAGE)
    assert.same({ "reserve", "commit", "reserve", "reserve" },
      helpers.page_states(p, r.address, 4 * PAGE))
    r:free()
    assert.equal("free", p:query(r.address).state)
  end
end

--- The thread ids of pid and the CPU time of each (utime + stime, ticks).
local function threads(pid)
  local out = {}
  local ls = assert(io.popen("ls /proc/" .. pid .. "/task"))
  for tid in ls:lines() do
    local stat = read_file(("/proc/%d/task/%s/stat"):format(pid, tid))
    local fields = {}
    for f in stat:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = f end
    out[tonumber(tid)] = { state = fields[1], cpu = tonumber(fields[12]) + tonumber(fields[13]) }
  end
  ls:close()
  return out
end

describe("Linux injection", function()
  linux_it("a target blocked in read() on a pipe still completes its read", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid)
    -- (it says it is ready just before it starts reading)
    local syscall
    for _ = 1, 100 do
      syscall = read_file(("/proc/%d/syscall"):format(t.pid))
      if syscall:match("^0 ") then break end
      os.execute("sleep 0.01")
    end
    assert.equal("0", syscall:match("^(%d+)"), syscall) -- blocked in read(2)
    exercise(p)
    -- the read restarted by itself and gets this line: the exit code proves it
    assert.is_true(t.proc:send("exit 5\n"))
    assert.equal(5, t.proc:wait())
    assert.equal(5, p:exit_code())
  end)

  linux_it("a multi-threaded target keeps running, every thread", function()
    local t = helpers.start_target { threads = 4 }
    local p <close> = rmem.open(t.pid)
    local before = threads(t.pid)
    exercise(p)
    local t0 = os.clock() while os.clock() - t0 < 0.2 do end
    local after = threads(t.pid)
    local busy_ran, count = false, 0
    for tid, info in pairs(before) do
      count = count + 1
      assert.is_table(after[tid])
      assert.is_nil(("ZXtT"):find(after[tid].state, 1, true))
      if after[tid].cpu > info.cpu + 5 then busy_ran = true end
    end
    assert.equal(5, count)
    assert.is_true(busy_ran)
    t.proc:send("exit 9\n")
    assert.equal(9, t.proc:wait())
  end)

  linux_it("a target traced by another process: a clear error, and reading still works", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid)
    local tracer = t.proc:trace()
    local e = helpers.error_of(p.alloc, p, PAGE)
    assert.equal("alloc", e.op)
    assert.equal("EPERM", e.name)
    assert.matches(("already traced by pid %d"):format(tracer), e.hint)
    local image
    for info in p:regions { state = "commit" } do
      if info.type == "image" then image = image or info end
    end
    assert.equal("\127ELF", p:read(image.base, 4))
    assert.equal("commit", p:query(image.base).state)
    t.proc:untrace()
    local r = p:alloc(PAGE)
    assert.equal("commit", r:query().state)
    r:free()
    t:stop()
  end)

  linux_it("a target under a seccomp filter is refused, with the cause", function()
    local t = helpers.start_target { seccomp = true }
    local p <close> = rmem.open(t.pid)
    assert.matches("Seccomp:%s*2", read_file(("/proc/%d/status"):format(t.pid)))
    local e = helpers.error_of(p.alloc, p, PAGE)
    assert.equal("EPERM", e.name)
    assert.matches("seccomp filter", e.hint)
    t:stop()
  end)

  linux_it("the host gets no SIGCHLD from injection and keeps its children's exit codes", function()
    local child = helpers.start_target()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid)
    helpers.testproc.count_sigchld(true)
    local ok, err = pcall(exercise, p)
    local during = helpers.testproc.sigchld_count()
    child.proc:send("exit 4\n")
    local code = child.proc:wait()
    local after = helpers.testproc.sigchld_count()
    helpers.testproc.count_sigchld(false)
    assert(ok, err)
    assert.equal(0, during)
    assert.equal(4, code)
    assert.equal(1, after) -- the child's own exit
    t:stop()
  end)

  linux_it("a target that dies mid-sequence gives ESRCH errors that say so", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid)
    local r = p:alloc(2 * PAGE)
    r:write(0, "before")
    t:stop(0)
    for _, call in ipairs {
      function() p:alloc(PAGE) end,
      function() r:protect("r") end,
      function() r:decommit() end,
      function() r:read(0, 6) end,
      function() r:write(0, "after") end,
      function() p:query(r.address) end,
      function() r:free() end,
    } do
      local e = helpers.error_of(call)
      assert.is_true(rmem.is_error(e))
      assert.equal("ESRCH", e.name)
      assert.equal("the process has exited (exit code 0)", e.hint)
    end
    assert.is_false(p:is_alive())
  end)

  linux_it("a 32-bit target: bits, allocation, protection, read and write", function()
    local t = helpers.start_target { bits = 32 }
    local p <close> = rmem.open(t.pid)
    assert.equal(32, p.bits)
    local r = p:alloc(4 * PAGE, { commit = false })
    assert.is_true(r.address + r.size <= 1 << 32)
    r:commit(0, 3 * PAGE)
    local data = ("0123456789abcdef"):rep(512)
    r:write(100, data)
    assert.equal(data, r:read(100, #data))
    assert.equal("rw", r:protect(0, PAGE, "rx"))
    assert.equal("rx", r:query(0).protect)
    r:decommit(PAGE, 1)
    assert.same({ "commit", "reserve", "commit", "reserve" },
      helpers.page_states(p, r.address, 4 * PAGE))
    r:free()
    assert.equal("free", p:query(r.address).state)
    t.proc:send("exit 3\n")
    assert.equal(3, t.proc:wait())
  end)
end)
