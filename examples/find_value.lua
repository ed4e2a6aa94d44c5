--- Find a value without knowing where it is, as a modder finds a game's
-- health: scan for the value on screen, take a hit, scan for what went
-- down, scan for the new value; then freeze it.
--   lua find_value.lua [target command]
-- Starts the target (examples/target.c, built next to the interpreter by
-- default) with health 100: each "hit N" line on its standard input takes
-- N from it, as a hit in a game would.
local rmem = require "rmem"

local windows = rmem.platform == "windows"
local sep = windows and "\\" or "/"
local exe = arg[1] or ("%s%s%s"):format(arg[-1]:match("^(.*)[/\\]") or ".", sep,
  windows and "rmem-target.exe" or "rmem-target")
local pid_path = ("%s%srmem-find-value-%d.pid"):format(os.getenv("TEMP") or os.getenv("TMPDIR") or "/tmp",
  sep, os.time())
local command = ('"%s" --health 100 --pid-file "%s" --until-eof'):format(exe, pid_path)
-- (cmd.exe strips the outer quotes of what _popen hands it)
local game = assert(io.popen(windows and '"' .. command:gsub("/", "\\") .. '"' or command, "w"))

local pid
local started = os.time()
repeat -- the target writes its pid once it runs
  local f = io.open(pid_path)
  pid = f and tonumber(f:read("a"))
  if f then f:close() end
until pid or os.time() > started + 10
assert(pid, "the target did not start: " .. command)
os.remove(pid_path)
local p <close> = rmem.open(pid)

local function hit(n)
  game:write(("hit %d\n"):format(n))
  game:flush()
end

--- Waits until one of the scan's candidates holds value: the target has
-- read the line (as a player waits for the screen to show the hit).
local function wait_for(s, value)
  local list, deadline = s:list(), os.time() + 5
  repeat
    for _, address in ipairs(list) do
      local ok, now = pcall(p.read_i32, p, address)
      if ok and now == value then return end
    end
  until os.time() > deadline
  error("the target did not take the hit")
end

-- Health is one of the program's globals: scanning its module is quicker
-- than scanning the whole process (leave module out for that).
local scope = { module = p:modules()[1] }
print("health shows 100: first scan, for 100")
local s <close> = p:value_scan("i32", "==", 100, scope)
print(("  %d candidates"):format(s.count))

hit(7)
wait_for(s, 93)
print("took a hit: second scan, for what decreased")
print(("  %d candidate(s)"):format(s:next("decreased")))

print("health shows 93: third scan, for 93")
print(("  %d candidate(s)"):format(s:next("==", 93)))
local health = s:list(1)[1]
print(("health is at %s and holds %d"):format(rmem.hex(health), p:read_i32(health)))

do -- freeze it: a thread of this host writes 100 back every 10 ms
  local f <close> = p:freeze(health, "i32", 100)
  print(f)
  rmem.sleep(50)
  hit(7)
  rmem.sleep(200)
  print(("frozen at 100, took a hit: %s holds %d"):format(rmem.hex(health), p:read_i32(health)))
end -- the freeze stops here

hit(5)
wait_for(s, 95)
print(("unfrozen, another hit: %s holds %d"):format(rmem.hex(health), p:read_i32(health)))

game:write("exit 0\n")
game:close()
