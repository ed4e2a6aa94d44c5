--- "Find out what writes to this address": watch a value with a hardware
-- watch for a while, then print the instructions that changed it, most
-- frequent first, with their disassembly.
--   lua find_writer.lua PID [ADDRESS [MS]]
-- Without an address, the variable of examples/target.c started with
-- --writer N (it follows the text "rmem-watched-var" in the target).
local rmem = require "rmem"

local pid = assert(tonumber(arg[1]), "usage: lua find_writer.lua PID [ADDRESS [MS]]")
local p <close> = rmem.open(pid, { access = "all" }) -- Windows: the watch runs code in the target
local address = tonumber(arg[2] or "")
if not address then
  for _, at in ipairs(p:scan_all { bytes = "rmem-watched-var", mask = ("x"):rep(16) }) do
    if at % 16 == 0 then address = at + 16 end
  end
  assert(address, "no address given, and this is not examples/target.c")
end
local ms = tonumber(arg[3] or "") or 1000

local w <close> = p:watch(address, 4, "w")
print(("watching %s (4 bytes) for %d ms: %s"):format(rmem.hex(address), ms, tostring(w)))
rmem.sleep(ms)
local hits = w:hits()
if #hits == 0 then print("nothing wrote to it") end
for _, h in ipairs(hits) do
  print(("%s  %-40s %d writes from %d thread(s)"):format(rmem.hex(h.address),
    h.text or "(no disassembler: rmem.disasm)", h.count, #h.threads))
end
if w.dropped > 0 then print(("%d hits were not recorded (too many)"):format(w.dropped)) end
print(tostring(w))
