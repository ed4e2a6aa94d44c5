-- Least privilege: the default access, the debug privilege, and (Linux) the
-- rights of the helper process that injects system calls.
local rmem = require "rmem"
local helpers = require "spec.helpers"

local read_file = helpers.read_file

describe("least privilege", function()
  it("a process opened by default cannot run code in the target; \"read\" cannot change it", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid)
    local code = p:alloc(rmem.page_size, { protect = "rwx" })
    code:write(0, "\xC3")
    local q <close> = rmem.open(t.pid, { access = "read" })
    for _, call in ipairs {
      function() q:alloc(rmem.page_size) end,
      function() q:write(code.address, "x") end,
      function() q:protect(code.address, rmem.page_size, "r") end,
      function() q:call(code.address) end,
    } do
      local e = helpers.error_of(call)
      assert.equal(helpers.name("ERROR_ACCESS_DENIED"), e.name)
      assert.matches("access", e.hint)
    end
    if helpers.windows then -- remote threads need PROCESS_CREATE_THREAD: "all" only
      assert.equal("ERROR_ACCESS_DENIED", helpers.error_of(p.call, p, code.address).name)
    end
    t:stop()
  end)

  it("nothing enables the debug privilege but rmem.enable_debug_privilege()", function()
    -- the only Lua that reaches it is the explicit function in init.lua
    for _, name in ipairs { "check", "error", "func", "patch", "process", "protect", "region", "remote",
      "scan", "tools", "typed" } do
      local src = read_file(helpers.root .. "/lua/rmem/" .. name .. ".lua")
      assert.is_nil(src:find("core.enable_debug_privilege", 1, true), name .. ".lua")
    end
    assert.truthy(read_file(helpers.root .. "/lua/rmem/init.lua"):find("core.enable_debug_privilege()", 1, true))
    -- and the only C that adjusts the token is the backend function behind it
    local win = read_file(helpers.root .. "/src/backend_win.c")
    local first = win:find("AdjustTokenPrivileges", 1, true)
    assert.truthy(first)
    assert.is_nil(win:find("AdjustTokenPrivileges", first + 1, true))
    assert.truthy(win:sub(1, first):match("rb_enable_debug_privilege%(void%) {[^}]*$"))
  end)

  helpers.linux_it("the helper process that injects has exactly the host's rights", function()
    local t = helpers.start_target()
    local p <close> = rmem.open(t.pid)
    local hang = p:alloc(rmem.page_size, { protect = "rwx" })
    hang:write(0, "\xEB\xFE") -- jmp $: the helper waits out the timeout
    local host = read_file("/proc/self/stat"):match("^(%d+)")
    local out = os.tmpname()
    -- an observer that reads the helper's status while the call runs: the
    -- host's one child that is not the target (one grep finds it fast)
    os.execute(([==[(sleep 0.3
      for s in $(grep -l '^PPid:[[:space:]]*%s$' /proc/[0-9]*/status 2>/dev/null); do
        grep -q '^Name:[[:space:]]*rmem-target' $s ||
          grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' $s
      done > %s) &]==]):format(host, out))
    assert.equal("ETIMEDOUT", helpers.error_of(p.call, p, hang.address, 0, { timeout = 1500 }).name)
    local seen = read_file(out)
    os.remove(out)
    local mine = {}
    for line in read_file("/proc/self/status"):gmatch("[^\n]+") do
      if line:match("^(%w+):") and seen:find(line:match("^(%w+):") .. ":", 1, true) then
        mine[#mine + 1] = line
      end
    end
    assert.is_true(#mine >= 9, "the observer did not see the helper:\n" .. seen)
    assert.equal(table.concat(mine, "\n") .. "\n", seen)
    t:stop()
  end)
end)
