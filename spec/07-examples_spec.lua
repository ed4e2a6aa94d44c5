-- The examples run and do what they print.
local helpers = require "spec.helpers"

--- Runs an example with the given arguments; returns what it printed.
local function run_example(name, ...)
  local out = {}
  local env = setmetatable({
    arg = { [0] = name, ... },
    print = function(...)
      local parts = table.pack(...)
      for i = 1, parts.n do parts[i] = tostring(parts[i]) end
      out[#out + 1] = table.concat(parts, "\t")
    end,
  }, { __index = _G })
  local chunk = assert(loadfile(helpers.root .. "/examples/" .. name, "t", env))
  chunk()
  return table.concat(out, "\n")
end

describe("examples", function()
  it("demo.lua walks one allocation's life in a target it starts", function()
    local out = run_example("demo.lua", helpers.target_path)
    assert.matches(("opened rmem.Process(pid %s, %s, 64-bit)"):format(out:match("pid (%d+)"),
      helpers.target_name), out, 1, true)
    assert.matches("page 0: commit  rw   | page 1: commit  rw   | page 2: commit  rw   | page 3: reserve", out, 1, true)
    assert.matches('read back: "HELLO from rmem!"', out, 1, true)
    assert.matches("page 0: commit  r    | page 1: reserve -    | page 2: reserve -    | page 3: reserve", out, 1, true)
    assert.matches(("%s (%d)"):format(helpers.name("ERROR_INVALID_ADDRESS"),
      helpers.code("ERROR_INVALID_ADDRESS")), out, 1, true)
    assert.matches("state = free", out, 1, true)
    local pid = tonumber(out:match("target exited %(pid (%d+)%)"))
    local found = false
    for _, info in ipairs(require("rmem").processes()) do
      if info.pid == pid then found = true end
    end
    assert.is_false(found)
  end)

  it("reserve_on_demand.lua commits only the pages it uses", function()
    local t = helpers.start_target()
    local out = run_example("reserve_on_demand.lua", tostring(t.pid))
    t:stop()
    assert.matches("reserved 64 MiB", out, 1, true)
    local used, total = out:match("committed (%d+) of (%d+) pages")
    assert.equal(16384, tonumber(total))
    assert.is_true(tonumber(used) > 250 and tonumber(used) <= 302)
    assert.matches("slot 42 holds 15", out, 1, true)
  end)
end)

describe("examples for tools", function()
  it("scan.lua finds the main module's header and dumps it", function()
    local t = helpers.start_target()
    local out = run_example("scan.lua", tostring(t.pid))
    t:stop()
    assert.matches("scanning " .. helpers.target_name:gsub("%p", "%%%0"), out)
    assert.matches("1 match%(es%)", out)
    assert.matches("= " .. helpers.target_name:gsub("%p", "%%%0") .. "%+0x0\n", out)
    assert.matches(helpers.windows and "|MZ" or "|.ELF", out)
  end)

  it("pointer_chain.lua follows the chain, writes the value, and explains a broken link", function()
    local t = helpers.start_target()
    local out = run_example("pointer_chain.lua", tostring(t.pid))
    t:stop()
    assert.matches("health at 0x%x+ = 100", out)
    assert.matches("after writing: 999", out, 1, true)
    assert.matches("step 3: cannot read the pointer at 0x8", out, 1, true)
  end)
end)

describe("examples for tracing back", function()
  it("pointer_scan.lua keeps the chains that hold after a restart", function()
    local t1, t2 = helpers.start_target { chain = true }, helpers.start_target { chain = true }
    local out = run_example("pointer_scan.lua", tostring(t1.pid), tostring(t2.pid))
    t1:stop()
    t2:stop()
    assert.matches("run 1: the value is at 0x%x+; rmem.PointerMap of", out)
    local n = tonumber(out:match("(%d+) chains hold in both runs"))
    assert.is_true(n >= 1)
    -- the chain the target built is among them, and reads the value in run 2
    assert.matches("\n  " .. helpers.target_name:gsub("%p", "%%%0")
      .. "%+0x%x+ %-> 0x48 %-> 0x10  => 0x%x+ = 0x5EED5EED00C0FFEE", out)
    local shown = 0
    for line in out:gmatch("  [^\n]+ => 0x%x+ = (0x%x+)") do
      assert.equal("0x5EED5EED00C0FFEE", line)
      shown = shown + 1
    end
    assert.equal(math.min(n, 5), shown)
  end)
end)

describe("examples for modding", function()
  it("hook_log.lua logs the arguments of a function for a second", function()
    local t = helpers.start_target { calls = 1 }
    local out = run_example("hook_log.lua", tostring(t.pid))
    local p <close> = require("rmem").open(t.pid)
    local fn = tonumber(out:match("hooking 0x(%x+)"), 16)
    assert.equal(0xE8, p:read_u8(fn + (helpers.windows and 2 or 3))) -- imul's 1000, as it was
    assert.is_true(p:is_alive())
    p:close()
    t:stop()
    assert.matches("imul", out, 1, true)
    assert.matches("rmem.Hook 0x%x+ %(log, %d+ bytes moved", out)
    local calls = tonumber(out:match("logged (%d+) calls from 1 thread"))
    assert.is_true(calls > 100)
    assert.matches(("first call: thread %%d+, %s = %%d+, %s = 7"):format(
      helpers.windows and "rcx" or "rdi", helpers.windows and "rdx" or "rsi"), out)
  end)

  it("code_cave.lua makes tick() add 100 through a cave, then puts it back", function()
    local t = helpers.start_target { tick = true }
    local out = run_example("code_cave.lua", tostring(t.pid))
    local p <close> = require("rmem").open(t.pid)
    local tick = tonumber(out:match("tick%(%) at 0x(%x+)"), 16)
    local cave = tonumber(out:match("cave at 0x(%x+)"), 16)
    local original = p:read(tick, 6)
    assert.is_true(p:is_alive())
    p:close()
    t:stop()
    assert.matches("before: +1 per tick\n", out, 1, true)
    assert.matches("with the cave: +100 per tick\n", out, 1, true)
    assert.matches("restored: +1 per tick", out, 1, true)
    assert.equal("\x8B\x05", original:sub(1, 2)) -- tick() starts as it did
    assert.is_true(math.abs(cave - tick) < 0x7FFF0000)
  end)

  it("find_writer.lua names the instruction that writes the value", function()
    local t = helpers.start_target { args = { "--writer", "1" } }
    local out = run_example("find_writer.lua", tostring(t.pid))
    local p <close> = require("rmem").open(t.pid)
    assert.is_true(p:is_alive())
    p:close()
    t:stop()
    assert.matches("watching 0x%x+ %(4 bytes%) for 1000 ms: rmem%.Watch 0x%x+ 4 bytes w, 0 hits", out)
    local first = out:match("\n(0x%x+  [^\n]+)")
    assert.matches("^0x%x+  .+ %d+ writes from 1 thread%(s%)$", first)
    if pcall(require, "rmem.disasm") then assert.matches("mov dword ptr %[", first) end
    assert.matches("rmem%.Watch 0x%x+ 4 bytes w, %d+ hits", out)
  end)

  it("inject_library.lua loads the payload, greets, and unloads it", function()
    local t = helpers.start_target()
    local out = run_example("inject_library.lua", tostring(t.pid), helpers.payload_path())
    t:stop()
    assert.matches("loaded rmem%-payload%.%a+ at 0x%x+", out)
    assert.matches('before: "not greeted yet"', out, 1, true)
    assert.matches(('payload_greet returned %d; the target now holds "hello, rmem, from %d"'):format(
      #("hello, rmem, from " .. t.pid), t.pid), out, 1, true)
    assert.matches("unloaded; rmem%-payload%.%a+ is gone", out)
  end)

  it("find_value.lua finds health in three scans, freezes it, and lets it go", function()
    local out = run_example("find_value.lua", helpers.target_path)
    assert.matches("first scan, for 100\n  %d+ candidates\n", out)
    assert.matches("third scan, for 93\n  1 candidate%(s%)\n", out)
    local at = assert(out:match("health is at (0x%x+) and holds 93\n"))
    assert.matches("frozen at 100, took a hit: " .. at .. " holds 100", out, 1, true)
    assert.matches("unfrozen, another hit: " .. at .. " holds 95", out, 1, true)
  end)
end)

describe("README", function()
  it("the example runs and prints what its comments say", function()
    local f = assert(io.open(helpers.root .. "/README.md"))
    local readme = f:read("a")
    f:close()
    local code = assert(readme:match("```lua\n(.-)```"))
    local t = helpers.start_target()
    code = code:gsub('rmem%.open%("game%.exe"%)', "rmem.open(" .. t.pid .. ")")
    local out = {}
    local env = setmetatable({ print = function(...)
      out[#out + 1] = table.concat({ ... }, " ")
    end }, { __index = _G })
    assert(load(code, "README example", "t", env))()
    t:stop()
    assert.same({ "hello commit", "free" }, out)
  end)
end)
