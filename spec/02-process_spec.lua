-- rmem: opening processes, access modes, closing, exit.
local rmem = require "rmem"
local helpers = require "spec.helpers"

describe("rmem processes", function()
  local t

  before_each(function() t = helpers.start_target() end)
  after_each(function() t:stop() end)

  describe("rmem.open()", function()
    it("opens by pid and fills pid, name and bits", function()
      local p <close> = rmem.open(t.pid)
      assert.equal(t.pid, p.pid)
      assert.equal(helpers.target_name, p.name)
      assert.equal(64, p.bits)
      assert.equal(("rmem.Process(pid %d, %s, 64-bit)"):format(t.pid, helpers.target_name), tostring(p))
    end)

    it("opens by name, case-insensitively", function()
      -- each case starts one target, so its name is unique in this run
      local q <close> = rmem.open(helpers.target_name:upper())
      assert.equal(t.pid, q.pid)
      assert.equal(helpers.target_name, q.name)
    end)

    it("raises AMBIGUOUS_NAME when several processes match", function()
      local t2 = helpers.start_target()
      local e = helpers.error_of(rmem.open, helpers.target_name)
      t2:stop()
      assert.is_true(rmem.is_error(e))
      assert.equal("open", e.op)
      assert.equal("AMBIGUOUS_NAME", e.name)
      assert.matches("pids .*" .. t.pid, e.message)
      assert.matches("rmem.open%(pid%)", e.hint)
    end)

    it("raises PROCESS_NOT_FOUND for an unknown name", function()
      local e = helpers.error_of(rmem.open, "no-such-program.exe")
      assert.equal("PROCESS_NOT_FOUND", e.name)
      assert.equal("no running process is named 'no-such-program.exe'.", e.message)
    end)

    it("raises a readable error for a pid that does not exist", function()
      local e = helpers.error_of(rmem.open, 0x7FFFFFF0)
      assert.equal("open", e.op)
      assert.equal(0x7FFFFFF0, e.pid)
      assert.equal(helpers.no_pid_name, e.name)
      assert.is_number(e.code)
      assert.matches("no process has this pid", e.hint)
    end)

    it("rejects unknown access modes and options", function()
      assert.has_error(function() rmem.open(t.pid, { access = "rw" }) end,
        "bad argument #2 to 'open' (access must be \"read\", \"write\", \"all\" or a PROCESS_* mask, got rw)")
      assert.has_error(function() rmem.open(t.pid, { acess = "read" }) end,
        "bad argument #2 to 'open' (unknown option 'acess')")
    end)
  end)

  describe("access modes", function()
    it("\"read\" can read and query but not allocate", function()
      local rw <close> = rmem.open(t.pid)
      local r <close> = rw:alloc(4096)
      r:write(0, "seen")
      local p <close> = rmem.open(t.pid, { access = "read" })
      assert.equal("seen", p:read(r.address, 4))
      assert.equal("commit", p:query(r.address).state)
      local e = helpers.error_of(p.alloc, p, 4096)
      assert.equal("alloc", e.op)
      assert.equal(helpers.name("ERROR_ACCESS_DENIED"), e.name)
      assert.equal(helpers.code("ERROR_ACCESS_DENIED"), e.code)
      assert.matches("access", e.hint)
      assert.matches("read", e.hint)
      e = helpers.error_of(p.write, p, r.address, "x")
      assert.equal(helpers.name("ERROR_ACCESS_DENIED"), e.name)
      assert.equal("seen", p:read(r.address, 4))
    end)

    it("\"all\" and a numeric mask work too", function()
      local p <close> = rmem.open(t.pid, { access = "all" })
      local r <close> = p:alloc(4096)
      assert.equal("commit", r:query().state)
      local q <close> = rmem.open(t.pid, { access = rmem.flags.PROCESS_VM_READ
        | rmem.flags.PROCESS_QUERY_INFORMATION })
      assert.equal(r:read(0, 8), q:read(r.address, 8))
    end)
  end)

  describe("p:close()", function()
    it("makes every later use raise PROCESS_CLOSED; closing twice is fine", function()
      local p = rmem.open(t.pid)
      p:close()
      p:close()
      assert.is_true(p:is_closed())
      for _, call in ipairs {
        function() p:read(0x10000, 4) end,
        function() p:alloc(4096) end,
        function() p:query(0x10000) end,
        function() p:is_alive() end,
        function() for _ in p:regions() do end end,
      } do
        local e = helpers.error_of(call)
        assert.equal("PROCESS_CLOSED", e.name)
        assert.equal(t.pid, e.pid)
        assert.matches("process handle is closed", tostring(e))
      end
      assert.matches("closed%)$", tostring(p))
    end)
  end)

  describe("a process that exits", function()
    it("reports is_alive and exit_code", function()
      local p <close> = rmem.open(t.pid)
      assert.is_true(p:is_alive())
      assert.is_nil(p:exit_code())
      t:stop(7)
      assert.is_false(p:is_alive())
      assert.equal(7, p:exit_code())
    end)

    it("gives errors that say it exited, between two calls", function()
      local p <close> = rmem.open(t.pid)
      local r = p:alloc(4096)
      r:keep() -- the target's memory goes with it
      t:stop(3)
      local e = helpers.error_of(p.alloc, p, 4096)
      assert.equal("alloc", e.op)
      assert.equal(helpers.exited_name, e.name)
      assert.equal("the process has exited (exit code 3)", e.hint)
      e = helpers.error_of(p.protect, p, r.address, 4096, "r")
      assert.equal("the process has exited (exit code 3)", e.hint)
    end)
  end)

  describe("rmem.self() and rmem.processes()", function()
    it("self works on the host's own memory", function()
      local me <close> = rmem.self()
      local r <close> = me:alloc(4096)
      r:write(0, "mine")
      assert.equal("mine", r:read(0, 4))
      assert.equal(helpers.host_name, me.name)
    end)

    it("processes lists pid, name and parent_pid", function()
      local me <close> = rmem.self()
      local target, host
      for _, info in ipairs(rmem.processes()) do
        if info.pid == t.pid then target = info end
        if info.pid == me.pid then host = info end
      end
      assert.equal(helpers.target_name, target.name)
      assert.equal(me.pid, target.parent_pid)
      assert.equal(helpers.host_name, host.name)
    end)

    helpers.linux_it("has the Linux platform facts", function()
      assert.equal("linux", rmem.platform)
      assert.equal(4096, rmem.page_size)
      assert.equal(4096, rmem.granularity)
    end)

    helpers.win_it("has the Windows platform facts", function()
      assert.equal("windows", rmem.platform)
      assert.equal(4096, rmem.page_size)
      assert.equal(65536, rmem.granularity)
    end)
  end)
end)
