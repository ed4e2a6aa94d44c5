--- Build a chain of pointers in a process, then follow it the way a game
-- trainer follows "module+0x1234" -> +0x10 -> +0x48 to a value.
--   lua pointer_chain.lua PID
local rmem = require "rmem"

local pid = assert(tonumber(arg[1]), "usage: lua pointer_chain.lua PID")
local p <close> = rmem.open(pid)

-- three heap objects: a player that points to its stats, stats that hold health
local world <close> = p:alloc(rmem.page_size)
local player, stats = world.address + 0x100, world.address + 0x200
world:write_ptr(0x10, player)        -- world+0x10 -> player
world:write_ptr(0x100 + 0x48, stats) -- player+0x48 -> stats
world:write_i32(0x200 + 0x8, 100)    -- stats+0x8 = health

local health = p:resolve(world.address + 0x10, 0x48, 0x8)
print(("world %s -> player %s -> stats %s; health at %s = %d"):format(rmem.hex(world.address),
  rmem.hex(player), rmem.hex(stats), rmem.hex(health), p:read_i32(health)))
p:write_i32(health, 999)
print(("after writing: %d"):format(world:read_i32(0x208)))

-- a broken link: the error names the step and the address
world:write_ptr(0x100 + 0x48, 0)
local ok, err = pcall(p.resolve, p, world.address + 0x10, 0x48, 0x8, 0)
print(ok and "unexpectedly resolved" or tostring(err))
