-- The test helpers keep their promises: targets start idle, stop for good,
-- and never outlive the host that started them.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local function running(pid)
  for _, info in ipairs(rmem.processes()) do
    if info.pid == pid then return true end
  end
  return false
end

describe("spec.helpers", function()
  it("start_target returns a running target; stop() ends it and may be called twice", function()
    local t = helpers.start_target()
    assert.is_true(running(t.pid))
    local p <close> = rmem.open(t.pid)
    assert.is_true(p:is_alive())
    t:stop()
    assert.is_false(p:is_alive())
    assert.is_false(running(t.pid))
    t:stop()
  end)

  it("a target never outlives the host that started it, even one killed", function()
    local dir = helpers.root .. "/build"
    local script, pidfile = dir .. "/orphan-host.lua", dir .. "/orphan.pid"
    local f = assert(io.open(script, "w"))
    f:write(([[
      local helpers = require "spec.helpers"
      local t = helpers.start_target()
      local f = assert(io.open(%q, "w"))
      f:write(t.pid)
      f:close()
      os.exit(3) -- no lua_close, no finalizers: as if the host were killed
    ]]):format(pidfile))
    f:close()
    -- os.execute waits for the host only, not for what it leaves behind
    if helpers.windows then
      local lua = (dir .. "/windows/bin/lua.exe"):gsub("/", "\\")
      os.execute(('""%s" "%s" >NUL 2>NUL"'):format(lua, script:gsub("/", "\\")))
    else
      os.execute(("lua5.4 '%s' >/dev/null 2>&1"):format(script))
    end
    f = assert(io.open(pidfile))
    local pid = tonumber(f:read("a"))
    f:close()
    os.remove(pidfile)
    os.remove(script)
    assert.is_number(pid)
    -- the kill is asynchronous on Linux (PR_SET_PDEATHSIG): give it 2 s
    for _ = 1, 200 do
      if not running(pid) then break end
      local t0 = os.clock() while os.clock() - t0 < 0.01 do end
    end
    assert.is_false(running(pid))
  end)
end)
