--- Find a byte signature in a process's main module and show it.
--   lua scan.lua PID [PATTERN]
-- The default pattern is the executable's own header, which every module
-- starts with ("MZ" and the DOS header's next fields as linkers write them on
-- Windows, "\x7FELF" on Linux): "4D 5A" alone may also stand in code.
local rmem = require "rmem"

local pid = assert(tonumber(arg[1]), "usage: lua scan.lua PID [PATTERN]")
local p <close> = rmem.open(pid, { access = "read" })
local main = p:modules()[1]
local pattern = arg[2] or (rmem.platform == "windows" and "4D 5A 90 00 03 00" or "7F 45 4C 46 0?")

print(("scanning %s (%s, %d KiB) for %s"):format(main.name, rmem.hex(main.base), main.size // 1024,
  pattern))
local hits = p:scan_all(pattern, { module = main, limit = 5 })
print(("%d match(es)"):format(#hits))
for _, address in ipairs(hits) do
  print(("%s = %s+0x%X"):format(rmem.hex(address), main.name, address - main.base))
  print(p:hexdump(address, 32))
end
