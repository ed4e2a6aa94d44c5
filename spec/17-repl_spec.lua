-- The rmem command (scripts/rmem, lua/rmem/repl.lua): driven through a real
-- terminal (tmux) natively, and its non-interactive paths (-e, lines piped
-- on stdin, scripts) natively and under Wine. Run from the native suite:
-- it starts its own processes, without the sanitizer runtime.
local rmem = require "rmem"
local helpers = require "spec.helpers"
local linux_it = helpers.linux_it

local root = helpers.root
-- the children run the plain build: no sanitizer runtime, no test paths
local CLEAN_ENV = "env -u LD_PRELOAD -u ASAN_OPTIONS -u UBSAN_OPTIONS -u LUA_PATH_5_4 -u LUA_CPATH_5_4 "

local function sh_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

--- Runs a shell command line; returns its stdout, its stderr and its exit status.
local function run(cmdline, stdin_text)
  local tmp = os.tmpname()
  if stdin_text then write_file(tmp .. ".in", stdin_text) end
  local ok, _, status = os.execute(("%s%s <%s >%s.out 2>%s.err"):format(CLEAN_ENV, cmdline,
    stdin_text and tmp .. ".in" or "/dev/null", tmp, tmp))
  local out, err = helpers.read_file(tmp .. ".out"), helpers.read_file(tmp .. ".err")
  os.remove(tmp); os.remove(tmp .. ".in"); os.remove(tmp .. ".out"); os.remove(tmp .. ".err")
  -- the Windows Lua writes text-mode CRLF
  return out:gsub("\r\n", "\n"), err:gsub("\r\n", "\n"), ok and 0 or status
end

local runners = {
  native = sh_quote(root .. "/scripts/rmem"),
  wine = sh_quote(root .. "/scripts/lua-windows") .. " " .. sh_quote(root .. "/scripts/rmem"),
}

describe("the rmem command, in a terminal", function()
  linux_it("opens a target, prints a region and an address, says where a typo is, completes, "
    .. "keeps history, and undoes at exit what it lists", function()
    local t = helpers.start_target()
    local me = rmem.open(t.pid)
    local home = os.tmpname()
    os.remove(home)
    assert(os.execute("mkdir " .. home))
    local sock = home .. ".tmux" -- a server of its own
    local function tmux(args)
      return run("tmux -S " .. sh_quote(sock) .. " " .. args)
    end
    local function screen()
      -- without the blank lines below and the blanks after each line
      return (tmux("capture-pane -p -t s"):gsub("[ \t]+\n", "\n"):gsub("\n+$", ""))
    end
    local function wait_for(pattern, what)
      for _ = 1, 200 do
        local s = screen()
        if s:find(pattern) then return s end
        os.execute("sleep 0.05")
      end
      error("the screen never showed " .. what .. ":\n" .. screen())
    end
    local function keys(...)
      local args = {}
      for i, k in ipairs { ... } do args[i] = sh_quote(k) end
      assert.equal(0, select(3, tmux("send-keys -t s " .. table.concat(args, " "))))
    end
    finally(function()
      tmux("kill-server")
      os.execute("rm -rf " .. sh_quote(home) .. " " .. sh_quote(sock))
      me:close()
      t:stop()
    end)
    -- HOME: the history file goes to a scratch folder; the sleep keeps the
    -- pane readable after rmem exits
    local cmd = ("cd %s && HOME=%s scripts/rmem %d; echo \"[rmem exited $?]\"; sleep 60")
      :format(sh_quote(root), sh_quote(home), t.pid)
    local _, err, code = tmux("new-session -d -s s -x 200 -y 50 " .. sh_quote(cmd))
    assert.equal(0, code, err)
    wait_for("rmem>$", "the prompt")
    assert.matches("p = rmem.Process", screen())

    keys("r = p:alloc(4096)", "Enter", "r", "Enter", "r.address", "Enter")
    local s = wait_for("\n(%d+)  %-%- (0x%x+)\n", "an address with its hex form")
    local dec, hex = s:match("\n(%d+)  %-%- (0x%x+)\n")
    local address = math.tointeger(tonumber(dec))
    assert.equal(rmem.hex(address), hex)
    assert.matches(("rmem.Region 0x%016X +0x1000 (pid %d)"):format(address, t.pid), s, 1, true)
    assert.equal("commit", me:query(address).state) -- the REPL really allocated it

    keys("r:raed(0, 4)", "Enter")
    s = wait_for("raed", "the typo's error")
    assert.matches("\nstdin:1: attempt to call a nil value %(method 'raed'%)\nrmem>$", s)

    keys("p:is_al", "Tab")
    wait_for("p:is_alive", "the completed method")
    keys("()", "Enter")
    wait_for("\ntrue\nrmem>$", "the method's result")
    keys("Up", "Enter")
    wait_for("\ntrue\nrmem> p:is_alive%(%)\ntrue\nrmem>$", "the line from history")

    keys("C-d")
    s = wait_for("%[rmem exited %d+%]", "the exit")
    assert.matches(("\nrmem: at exit, undoing Region 0x%016X +0x1000 (pid %d)\n"):format(address, t.pid), s,
      1, true)
    assert.matches("[rmem exited 1]", s, 1, true) -- a line failed
    assert.equal("free", me:query(address).state)
    assert.matches("p:is_alive", helpers.read_file(home .. "/.rmem_history"), 1, true)
  end)
end)

describe("the rmem command without a terminal", function()
  for _, platform in ipairs { "native", "wine" } do
    local rmem_cmd = runners[platform]

    linux_it(platform .. ": -e prints the value, addresses with hex beside them", function()
      local out, err, code = run(rmem_cmd .. " -e " .. sh_quote("0x7FF6A0010000, rmem.platform"))
      assert.equal(0, code, err)
      assert.equal(("140697223102464  -- 0x7FF6A0010000\t%s\n"):format(platform == "wine" and "windows" or "linux"),
        out)
    end)

    linux_it(platform .. ": evaluates lines piped on stdin, tables one entry per line, errors on one line",
      function()
      local out, err, code = run(rmem_cmd, table.concat({
        "t = { 10, 20, name = 'x', base = 0x10000 }",
        "t",
        "nil + 1",
        "r = rmem.self():alloc(100)",
        "r:write(0, 'hi')",
        "r:read(0, 2)",
        "kept = rmem.self():alloc(100); kept:keep()",
        "",
      }, "\n"))
      assert.equal(1, code) -- one line failed
      assert.equal(table.concat({
        "{", "  10,", "  20,", "  base = 65536,  -- 0x10000", '  name = "x",', "}", "2", "hi", "",
      }, "\n"), out)
      local lines = {}
      for line in err:gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert.equal(2, #lines, err)
      assert.equal("stdin:1: attempt to perform arithmetic on a nil value", lines[1])
      assert.matches("^rmem: at exit, undoing Region 0x%x+ %+0x%x+ %(pid %d+%); "
        .. "left in the target: Region 0x%x+ %+0x%x+ %(pid %d+, kept%)$", lines[2])
    end)

    linux_it(platform .. ": runs a script with arg set; its error is one line, a traceback on request",
      function()
      local dir = os.tmpname()
      local script = dir .. ".lua"
      write_file(script, table.concat({
        "local rmem = require 'rmem'",
        "print(#arg, arg[1], arg[2])",
        "R = rmem.self():alloc(4096)",
        "do local me <close> = rmem.self(); OF_CLOSED = me:alloc(8192) end",
        "local function boom() error('boom') end",
        "boom()",
      }, "\n"))
      finally(function() os.remove(dir); os.remove(script) end)
      local out, err, code = run(rmem_cmd .. " " .. sh_quote(script) .. " one two")
      assert.equal(1, code)
      assert.equal("2\tone\ttwo\n", out)
      local first, second, rest = err:match("^([^\n]*)\n([^\n]*)\n(.*)$")
      assert.equal(script .. ":5: boom", first)
      -- closing a process leaves its regions alone: the line says so
      assert.matches("^rmem: at exit, undoing Region 0x%x+ %+0x1000 %(pid %d+%); "
        .. "left in the target: Region 0x%x+ %+0x2000 %(pid %d+%)$", second)
      assert.equal("", rest)

      _, err, code = run("RMEM_TRACEBACK=1 " .. rmem_cmd .. " " .. sh_quote(script) .. " one two")
      assert.equal(1, code)
      assert.matches("^" .. script:gsub("%p", "%%%0") .. ":5: boom\nstack traceback:\n", err)
      assert.matches(":6: in main chunk", err, 1, true)
      assert.not_matches("xpcall", err, 1, true)
    end)

    linux_it(platform .. ": runs a file that starts with #! as a script; other names are processes", function()
      local tool = os.tmpname()
      write_file(tool, "#!/usr/bin/env rmem\nprint('tool', arg[1])\n")
      finally(function() os.remove(tool) end)
      local out, err, code = run(rmem_cmd .. " " .. sh_quote(tool) .. " x")
      assert.equal(0, code, err)
      assert.equal("tool\tx\n", out)
      -- an executable is a file, but names a process (none by that path)
      _, err, code = run(rmem_cmd .. " " .. sh_quote(root .. "/build/linux/rmem-target"))
      assert.equal(1, code)
      assert.matches("PROCESS_NOT_FOUND", err, 1, true)
    end)
  end
end)
