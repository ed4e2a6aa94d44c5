--- Find a path to a value that survives a restart of the program, as Cheat
-- Engine's pointer scanner does, in a script.
--   lua pointer_scan.lua PID_OF_RUN_1 PID_OF_RUN_2
-- Both processes are runs of `rmem-target --chain`, whose value
-- 0x5EED5EED00C0FFEE sits in the heap at a new address on every run, behind
-- static -> heap (+0x48) -> heap (+0x10). A modder would find the value with
-- a value scan; here a pattern scan finds it.
local rmem = require "rmem"

local run1, run2 = tonumber(arg[1]), tonumber(arg[2])
assert(run1 and run2, "usage: lua pointer_scan.lua PID_OF_RUN_1 PID_OF_RUN_2")
local VALUE = "EE FF C0 00 ED 5E ED 5E"
local file = (os.getenv("TEMP") or os.getenv("TMPDIR") or "/tmp") .. package.config:sub(1, 1)
  .. ("rmem-example-%d.ptrmap"):format(run1)

local function value_of(p)
  local hits = p:scan_all(VALUE)
  assert(#hits == 1, "the value is not in this process")
  return hits[1]
end

-- run 1: map every pointer, keep the map in a file
local target1
do
  local p <close> = rmem.open(run1)
  target1 = value_of(p)
  local map <close> = p:pointer_map()
  map:save(file)
  print(("run 1: the value is at %s; %s"):format(rmem.hex(target1), tostring(map)))
  local chains = rmem.pointer_scan { map = map, target = target1, depth = 3, limit = 5 }
  print(("run 1 alone: %d chains, the first ones:"):format(#chains))
  for _, c in ipairs(chains) do print("  " .. tostring(c)) end
end

-- the program restarted: the value moved; keep the chains that hold in both runs
local p <close> = rmem.open(run2)
local target2 = value_of(p)
local map1 <close> = rmem.load_pointer_map(file)
local map2 <close> = p:pointer_map()
os.remove(file)
local chains = rmem.pointer_scan { maps = { map1, map2 }, targets = { target1, target2 },
  depth = 3, limit = 5 }
print(("run 2: the value is at %s; %d chains hold in both runs:"):format(rmem.hex(target2), #chains))
for _, c in ipairs(chains) do
  local address = p:resolve(tostring(c))
  print(("  %s  => %s = 0x%X"):format(tostring(c), rmem.hex(address), p:read_u64(address)))
end
