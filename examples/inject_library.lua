--- Load a library into a running process, call one of its functions with a
-- string argument, read what it left in the target, and unload it again.
--   lua inject_library.lua PID LIBRARY
-- LIBRARY is examples/payload.c built for the target (`make` builds
-- build/linux/rmem-payload.so and build/windows/bin/rmem-payload.dll).
local rmem = require "rmem"

local pid, path = tonumber(arg[1]), arg[2]
assert(pid and path, "usage: lua inject_library.lua PID LIBRARY")
-- Windows needs { access = "all" } for remote threads
local p <close> = rmem.open(pid, { access = rmem.platform == "windows" and "all" or "write" })

local lib = p:load_library(path)
print(("loaded %s at %s"):format(lib.name, rmem.hex(lib.base)))

local message = p:proc_address(lib, "payload_message")
print(("before: %q"):format(p:read_string(message)))
local n = p:call_with(p:proc_address(lib, "payload_greet"), { "rmem", pid })
print(("payload_greet returned %d; the target now holds %q"):format(n, p:read_string(message)))

p:unload_library(lib)
print(("unloaded; %s is %s"):format(lib.name, p:module(lib.name) and "still there" or "gone"))
