-- Faults (make stress): targets killed at random points of alloc, protect,
-- scan and remote-call sequences, and (Linux) the host killed in the middle
-- of injections. Every call ends in a readable rmem.Error, nothing hangs,
-- nothing leaks, and a target never stays stopped or with foreign registers.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local RUNS = tonumber(os.getenv("RMEM_FAULT_RUNS")) or 100
local PAGE = rmem.page_size
local monotime = require("system").monotime


-- `ret` in each convention: a function that returns at once
local RET = "\xC3"

--- One of four sequences, over and over until something fails.
local function sequence(p, kind, code)
  if kind == 0 then
    local r = p:alloc(4 * PAGE, { commit = false })
    r:commit(0, 2 * PAGE)
    r:write(0, ("x"):rep(100))
    r:protect(0, PAGE, "r")
    r:decommit(PAGE, PAGE)
    r:free()
  elseif kind == 1 then
    code.r:protect(0, PAGE, "r")
    code.r:protect(0, PAGE, "rwx")
  elseif kind == 2 then
    p:scan_all("12 34 ?? 78", { from = code.r.address, to = code.r.address + PAGE })
    p:scan_all("7F 45 4C 46", { protect = "r", limit = 2 })
  else
    p:call(code.r.address, 0, { timeout = 2000 })
  end
end

describe("faults", function()
  -- Not under Wine: it runs VirtualAllocEx, VirtualProtectEx and VirtualQueryEx
  -- on another process as calls queued to that process, and a caller whose
  -- target is killed with the call queued can wait forever (seen here).
  helpers.linux_it(("a target killed at random points, %d times: readable errors, no hang, no leak")
      :format(RUNS), function()
    math.randomseed(7)
    local handles = helpers.handle_count()
    local ended = {}
    for run = 1, RUNS do
      local t = helpers.start_target { die_after = math.random(5, 60) }
      local ok, p = pcall(rmem.open, t.pid, { access = "all" })
      if ok then
        local code = {}
        local prepared, err = pcall(function()
          code.r = p:alloc(PAGE, { protect = "rwx" })
          code.r:write(0, RET)
        end)
        local deadline = monotime() + 20
        while prepared and monotime() < deadline do
          prepared, err = pcall(sequence, p, run % 4, code)
        end
        assert(not prepared, "the target never died")
        assert(rmem.is_error(err), "not an rmem.Error: " .. tostring(err))
        assert.matches("^rmem: %w+%(", tostring(err))
        ended[err.name] = (ended[err.name] or 0) + 1
        p:close()
      end
      t:stop()
    end
    assert.equal(handles, helpers.handle_count())
    assert.is_not_nil(next(ended))
  end)

  helpers.linux_it("the host killed mid-injection: the target is restored and carries on", function()
    local t = helpers.start_target()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
      local rmem = require "rmem"
      local p = rmem.open(tonumber(arg[1]))
      local r = p:alloc(4096)
      io.stdout:write("ready\n") io.stdout:flush()
      while true do r:protect(0, 4096, "r") r:protect(0, 4096, "rw") end
    ]])
    f:close()
    local env = ("env -u LD_PRELOAD LUA_PATH_5_4='%s/lua/?.lua;%s/lua/?/init.lua' LUA_CPATH_5_4='%s/build/linux/?.so'")
      :format(helpers.root, helpers.root, helpers.root)
    math.randomseed(11)
    for _ = 1, 30 do
      -- SIGKILL at a random moment of the protect loop (0.1 s of warm-up)
      os.execute(("%s timeout -s KILL %.3f lua5.4 %s %d >/dev/null"):format(env,
        0.1 + math.random() * 0.15, script, t.pid))
      -- the helper outlives the host, finishes its session and detaches
      local status, deadline = "", monotime() + 2
      repeat
        local s = io.open(("/proc/%d/status"):format(t.pid))
        status = s:read("a")
        s:close()
      until status:match("TracerPid:%s*0\n") and status:match("State:%s*S") or monotime() > deadline
      assert.matches("TracerPid:%s*0\n", status)
      assert.matches("State:%s*S", status) -- back in its read(), not stopped (t)
    end
    os.remove(script)
    -- its registers were put back: the read it was blocked in completes
    t.proc:send("exit 7\n")
    assert.equal(7, t.proc:wait())
  end)
end)
