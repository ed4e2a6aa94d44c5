--- The `rmem` command (scripts/rmem): a REPL with rmem loaded, and a script
-- runner. Shared by both platforms; line editing, history and completion
-- come from Debian's lua-readline where it is installed, plain `io.read`
-- input where not (Windows).
--
--    rmem                      the REPL (stdin not a terminal: one line at a time, no prompt)
--    rmem PID|NAME             the REPL with that process opened as `p`
--    rmem -e CODE              evaluates CODE as a REPL line, then exits
--    rmem script.lua [args]    runs a script, with `arg` set as lua does
--
-- At exit the command undoes, newest first, what the script or session
-- left live (patches restored, regions freed) and says so in one line on
-- stderr, with those that stay: kept ones, and those of a process the
-- script closed (closing a process leaves its regions and patches alone). `RMEM_TRACEBACK=1` prints a
-- traceback with every error; `.traceback` prints the last one's.
-- @module rmem.repl
local rmem = require "rmem"
local live = require "rmem.live"

local repl = {}

-- Integers in this range print with their hex form beside them: the
-- lowest address either OS maps up to the top of x86-64 user space.
local ADDRESS_LOW, ADDRESS_HIGH = 0x10000, 0x800000000000
local MAX_ENTRIES = 500 -- a table prints at most this many lines

local function is_address(v)
  return math.type(v) == "integer" and v >= ADDRESS_LOW and v < ADDRESS_HIGH
end

-- Debian's lua-inspect installs for Lua 5.1 to 5.3 only; the file is plain
-- Lua that 5.4 runs, so it is loaded from there when require cannot.
local function load_inspect()
  local ok, inspect = pcall(require, "inspect")
  if ok then return inspect end
  for _, v in ipairs { "5.3", "5.2", "5.1" } do
    local chunk = loadfile("/usr/share/lua/" .. v .. "/inspect.lua", "t")
    if chunk then
      local loaded, m = pcall(chunk)
      if loaded and type(m) == "table" then return m end
    end
  end
end
local inspect = load_inspect()

local function quote(s)
  return (("%q"):format(s):gsub("\\\n", "\\n"))
end

local function has_tostring(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__tostring ~= nil
end

-- Integer tokens outside string literals of a one-line rendering, in hex
-- where they look like addresses (0x... is a valid Lua literal still).
local function hex_addresses(s)
  local out, i = {}, 1
  local function code(part)
    out[#out + 1] = part:gsub("%f[%w_.]%d+%f[^%w_.]", function(digits)
      local n = math.tointeger(tonumber(digits))
      return n and is_address(n) and rmem.hex(n) or digits
    end)
  end
  while i <= #s do
    local q = s:find("[\"']", i)
    if not q then code(s:sub(i)) break end
    code(s:sub(i, q - 1))
    local j, c = q + 1, s:sub(q, q)
    while j <= #s and s:sub(j, j) ~= c do
      j = j + (s:sub(j, j) == "\\" and 2 or 1)
    end
    out[#out + 1] = s:sub(q, j)
    i = j + 1
  end
  return table.concat(out)
end

local function sorted_keys(t)
  local n, keys = #t, {}
  for k in pairs(t) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "number" or ta == "string" then return a < b end
    return tostring(a) < tostring(b)
  end)
  return n, keys
end

local function key_repr(k)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") then return k end
  return "[" .. (type(k) == "string" and quote(k) or tostring(k)) .. "]"
end

-- A nested value on one line, without lua-inspect.
local function compact(v, depth, seen)
  if type(v) == "string" then return quote(v) end
  if type(v) ~= "table" or has_tostring(v) then return tostring(v) end
  if seen[v] then return "<cycle>" end
  if depth > 3 then return "{...}" end
  seen[v] = true
  local n, keys = sorted_keys(v)
  local parts = {}
  for i = 1, n do parts[#parts + 1] = compact(v[i], depth + 1, seen) end
  for _, k in ipairs(keys) do
    parts[#parts + 1] = key_repr(k) .. " = " .. compact(v[k], depth + 1, seen)
  end
  seen[v] = nil
  return #parts == 0 and "{}" or "{ " .. table.concat(parts, ", ") .. " }"
end

-- lua-inspect: objects that print themselves do so, metatables are left out.
local function inspect_process(item, path)
  if path[#path] == inspect.METATABLE then return nil end
  if #path > 0 and type(item) == "table" and has_tostring(item) then return tostring(item) end
  return item
end

local function one_line(v)
  if inspect and type(v) == "table" and not has_tostring(v) then
    return hex_addresses(inspect(v, { newline = " ", indent = "", depth = 4, process = inspect_process }))
  end
  return hex_addresses(compact(v, 1, {}))
end

local function scalar(v)
  if type(v) == "string" then return quote(v) end
  if type(v) == "table" then return one_line(v) end
  return tostring(v)
end

--- How the REPL shows a value: addresses with their hex form beside them,
-- text as it is (binary data quoted), objects by their own tostring, plain
-- tables one entry per line.
function repl.format(v)
  if is_address(v) then return ("%d  -- %s"):format(v, rmem.hex(v)) end
  if type(v) == "string" then
    if utf8.len(v) and not v:find("[%z\1-\8\11\12\14-\31\127]") then return v end
    return quote(v)
  end
  if type(v) ~= "table" or has_tostring(v) then return tostring(v) end
  local n, keys = sorted_keys(v)
  if n + #keys == 0 then return "{}" end
  local lines, shown = { "{" }, 0
  local function entry(k, val)
    shown = shown + 1
    if shown > MAX_ENTRIES then return end
    local line = "  " .. (k and key_repr(k) .. " = " or "") .. scalar(val) .. ","
    if is_address(val) then line = line .. "  -- " .. rmem.hex(val) end
    lines[#lines + 1] = line
  end
  for i = 1, n do entry(nil, v[i]) end
  for _, k in ipairs(keys) do entry(k, v[k]) end
  if shown > MAX_ENTRIES then
    lines[#lines + 1] = ("  -- ... %d more"):format(shown - MAX_ENTRIES)
  end
  lines[#lines + 1] = "}"
  return table.concat(lines, "\n")
end

--- One line for an error value: an rmem.Error's tostring (it starts with the
-- user's file:line), a message as Lua gives it.
function repl.describe_error(e)
  if type(e) == "string" then return e end
  if has_tostring(e) then return tostring(e) end
  return ("(error object is a %s value)"):format(type(e))
end

local last_traceback
local always_traceback = os.getenv("RMEM_TRACEBACK") == "1"

local function handler(e)
  local tb = debug.traceback(repl.describe_error(e), 2)
  -- the REPL's own frames below the user's code say nothing
  last_traceback = tb:gsub("\n[^\n]*%[C%]: in function 'xpcall'.*$", "")
  return e
end

local function report(e)
  io.stderr:write(always_traceback and last_traceback or repl.describe_error(e), "\n")
end

--- Runs f(...) and prints its results as the REPL does; false on error.
local function run_printing(f, ...)
  local results = table.pack(xpcall(f, handler, ...))
  if not results[1] then
    report(results[2])
    return false
  end
  local shown, multiline = {}, false
  for i = 2, results.n do
    shown[#shown + 1] = repl.format(results[i])
    multiline = multiline or shown[#shown]:find("\n") ~= nil
  end
  if #shown > 0 then io.stdout:write(table.concat(shown, multiline and "\n" or "\t"), "\n") end
  io.stdout:flush()
  return true
end

--- Compiles a REPL chunk: as an expression first (`return <line>`, as
-- Lua 5.4's own REPL does), then as statements. Returns the function, or
-- nil, message, and whether the chunk is only incomplete.
local function compile(src)
  local f = load("return " .. src, "=stdin", "t")
  if f then return f end
  local err
  f, err = load(src, "=stdin", "t")
  if f then return f end
  return nil, err, err:sub(-5) == "<eof>"
end

--- Evaluates one complete chunk of REPL input and prints what it gives.
function repl.eval(src)
  local f, err = compile(src)
  if not f then
    io.stderr:write(err, "\n")
    return false
  end
  return run_printing(f)
end

-- Completion: the word being typed is a chain of names (`p:re`,
-- `rmem.fl`); the object is looked up with rawget and __index tables only,
-- so completing never runs user code.
local function field(obj, name)
  for _ = 1, 10 do
    if type(obj) ~= "table" then return nil end
    local v = rawget(obj, name)
    if v ~= nil then return v end
    local mt = getmetatable(obj)
    obj = type(mt) == "table" and rawget(mt, "__index") or nil
  end
end

local function names_of(obj, methods_only)
  local names, seen = {}, {}
  for _ = 1, 10 do
    if type(obj) ~= "table" then break end
    for k, v in pairs(obj) do
      if type(k) == "string" and k:match("^[%a_][%w_]*$") and not seen[k]
        and (not methods_only or type(v) == "function") then
        seen[k] = true
        names[#names + 1] = k
      end
    end
    local mt = getmetatable(obj)
    obj = type(mt) == "table" and rawget(mt, "__index") or nil
  end
  return names
end

local KEYWORDS = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function",
  "goto", "if", "in", "local", "nil", "not", "or", "repeat", "return", "then", "true",
  "until", "while" }

--- Completions of word (the text before the cursor up to a space or an
-- opening bracket): methods after `:`, fields after `.`, globals and
-- keywords otherwise.
function repl.complete(word)
  local prefix, sep, partial = word:match("^(.-)([%.:])([%w_]*)$")
  local names
  if prefix then
    if not prefix:match("^[%a_][%w_]*$") and not prefix:match("^[%a_][%w_.]*[%w_]$") then return {} end
    local obj = _G
    for name in prefix:gmatch("[^.]+") do obj = field(obj, name) end
    names = names_of(obj, sep == ":")
  else
    prefix, sep, partial = "", "", word
    names = names_of(_G, false)
    table.move(KEYWORDS, 1, #KEYWORDS, #names + 1, names)
  end
  local matches = {}
  for _, name in ipairs(names) do
    if name:sub(1, #partial) == partial and (partial:sub(1, 1) == "_" or name:sub(1, 1) ~= "_") then
      matches[#matches + 1] = prefix .. sep .. name
    end
  end
  table.sort(matches)
  return matches
end

local function stdin_is_tty()
  local ok, term = pcall(require, "term.core") -- lua-term (busted's dependency; built for Windows)
  if ok and type(term.isatty) == "function" then return term.isatty(io.stdin) end
  return true
end

-- A line reader: readline where it is installed and stdin is a terminal
-- (it talks to the terminal itself), else io.read with a prompt on a
-- terminal and none on a pipe.
local function make_reader(interactive)
  local RL
  if interactive then
    local ok, m = pcall(require, "readline")
    RL = ok and m or nil
  end
  if RL then
    -- no history file where there is no home to keep it in (readline would
    -- complain at exit)
    local home = os.getenv("HOME")
    local hist = home and io.open(home .. "/.rmem_history", "a")
    if hist then hist:close() end
    RL.set_options { histfile = hist and home .. "/.rmem_history" or "", keeplines = 1000 }
    RL.set_complete_function(function(text, from, to)
      -- readline resets it to a space before each completion: `p:read(` wants none
      RL.set_completion_append_character("")
      return repl.complete(text:sub(from, to))
    end)
    return RL.readline, RL.save_history, "readline"
  end
  return function(prompt)
    if interactive then io.stdout:write(prompt); io.stdout:flush() end
    return io.read("l")
  end, function() end, "plain"
end

local HELP = [[
  expressions print their value; addresses show their hex form beside them
  .traceback   the traceback of the last error (RMEM_TRACEBACK=1: with every error)
  .help        this text
  .exit        leave (so does end of input); live patches and regions are undone,
               kept ones stay (r:keep(), patch:keep())
  Ctrl-C       stops a running line; at the prompt it ends rmem without undoing]]

--- The read-eval-print loop; returns how many chunks failed.
function repl.loop(interactive)
  local read, save, kind = make_reader(interactive)
  if interactive then
    io.stdout:write(("%s on %s (%s, %s input); .help for help\n"):format(rmem._VERSION,
      rmem.platform, _VERSION, kind))
  end
  local failures = 0
  while true do
    local line = read("rmem> ")
    if not line then break end
    local cmd = line:match("^%s*(%.%a+)%s*$")
    if cmd == ".exit" then
      break
    elseif cmd == ".help" then
      print(HELP)
    elseif cmd == ".traceback" then
      print(last_traceback or "no error yet")
    elseif line:find("%S") then
      local src = line
      local f, err, incomplete = compile(src)
      while not f and incomplete do
        local more = read(">> ")
        if not more then break end
        src = src .. "\n" .. more
        f, err, incomplete = compile(src)
      end
      if f then
        if not run_printing(f) then failures = failures + 1 end
      else
        io.stderr:write(err, "\n")
        failures = failures + 1
      end
    end
  end
  save()
  if interactive then io.stdout:write("\n") end
  return failures
end

local function short(obj)
  return tostring(obj):gsub("^rmem%.", "")
end

--- The exit line: what is being undone, and what stays in the target
-- (kept, or of a process closed already, whose regions and patches are left
-- alone).
function repl.exit_line(undo, keep)
  local parts = {}
  local function list(objs)
    local s = {}
    for _, o in ipairs(objs) do s[#s + 1] = short(o) end
    return table.concat(s, ", ")
  end
  if #undo > 0 then parts[#parts + 1] = "undoing " .. list(undo) end
  if #keep > 0 then parts[#parts + 1] = "left in the target: " .. list(keep) end
  return "rmem: at exit, " .. table.concat(parts, "; ")
end

--- Undoes, newest first, what is live (a patch before the region it jumps
-- into), after one line that lists it; nothing when nothing is live.
function repl.finish()
  local undo, keep = live.pending()
  if #undo + #keep > 0 then
    io.stdout:flush()
    io.stderr:write(repl.exit_line(undo, keep), "\n")
  end
  for _, obj in ipairs(undo) do pcall(obj.__gc, obj) end
end

local USAGE = [[
usage: rmem [PID|NAME]          a REPL with rmem loaded (and that process as p)
       rmem -e CODE             evaluate CODE, print its value, exit
       rmem script.lua [args]   run a script (arg as lua sets it; a file named
                                *.lua or starting with #!)]]

-- A script is named *.lua or starts with `#!`: an executable that is there
-- too (`rmem game.exe` in the game's folder) names a process.
local function is_script(path)
  if path:match("%.lua$") then return true end
  local f = io.open(path, "rb")
  if not f then return false end
  local head = f:read(2)
  f:close()
  return head == "#!"
end

--- The command line: returns the exit code.
function repl.main(argv)
  local a1 = argv[1]
  local real_exit = os.exit
  -- a script's own os.exit still undoes and closes Lua (so that __gc runs)
  os.exit = function(code) -- luacheck: ignore 122
    repl.finish()
    real_exit(code, true)
  end
  _G.rmem = rmem
  local code = 0
  if a1 == "-h" or a1 == "--help" then
    print(USAGE)
  elseif a1 == "-e" then
    if not argv[2] then
      io.stderr:write(USAGE, "\n")
      return 2
    end
    code = repl.eval(argv[2]) and 0 or 1
  elseif a1 and is_script(a1) then
    _G.arg = table.move(argv, 1, #argv, 0, { [-1] = argv[0] })
    local f, err = loadfile(a1)
    if not f then
      io.stderr:write(err, "\n")
      return 1
    end
    local ok, e = xpcall(f, handler, table.unpack(argv, 2))
    if not ok then
      report(e)
      code = 1
    end
  else
    local interactive = stdin_is_tty()
    if a1 then
      local ok, p = xpcall(rmem.open, handler, math.tointeger(tonumber(a1)) or a1)
      if not ok then
        report(p)
        return 1
      end
      _G.p = p
      if interactive then print("p = " .. tostring(p)) end
    end
    code = repl.loop(interactive) == 0 and 0 or 1
  end
  repl.finish()
  return code
end

return repl
