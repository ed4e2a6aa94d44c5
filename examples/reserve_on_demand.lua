--- Reserve a large range once, commit pages only when they are first used:
-- a sparse table of 64-bit counters in another process (or in this one).
--   lua reserve_on_demand.lua [pid]
local rmem = require "rmem"

local PAGE = rmem.page_size
local SLOTS = 8 * 1024 * 1024 -- 64 MiB of address space, 8 bytes a slot

local p <close> = arg and tonumber(arg[1]) and rmem.open(tonumber(arg[1])) or rmem.self()
local area <close> = p:alloc(SLOTS * 8, { commit = false })
print(("reserved %d MiB at 0x%x in %s"):format(area.size >> 20, area.address, tostring(p)))

local committed = 0

--- Adds n to the counter in slot i, committing its page on first use.
local function add(i, n)
  local offset = i * 8
  if area:query(offset).state ~= "commit" then
    area:commit(offset - offset % PAGE, PAGE)
    committed = committed + 1
  end
  local old = string.unpack("<i8", area:read(offset, 8))
  area:write(offset, string.pack("<i8", old + n))
end

-- a few hundred updates spread over the whole range
local seed = 12345
for _ = 1, 300 do
  seed = (seed * 1103515245 + 12345) % 2147483648
  add(seed % SLOTS, 1)
end
add(42, 10)
add(42, 5)

print(("committed %d of %d pages (%.2f%%)"):format(committed, area.size // PAGE,
  100 * committed / (area.size // PAGE)))
print(("slot 42 holds %d"):format(string.unpack("<i8", area:read(42 * 8, 8))))
