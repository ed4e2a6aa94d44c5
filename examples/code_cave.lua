--- A code cave: divert a function of a running program into new code
-- allocated next to it, watch the program behave differently, then undo it.
--   lua code_cave.lua PID
-- The target is examples/target.c started with --tick: a thread calls
-- tick() every millisecond, and tick() adds 1 to a global, score. The cave
-- makes it add 100.
local rmem = require "rmem"

local pid = assert(tonumber(arg[1]), "usage: lua code_cave.lua PID")
local p <close> = rmem.open(pid)

-- tick(): mov eax, [rip+d1]; add eax, 1; mov [rip+d2], eax; ret
local tick, score
for _, at in ipairs(p:scan_all("8B 05 ?? ?? ?? ?? 83 C0 01 89 05 ?? ?? ?? ?? C3",
    { module = p:modules()[1] })) do
  local load = at + 6 + p:read_i32(at + 2)
  if load == at + 15 + p:read_i32(at + 11) then tick, score = at, load end
end
assert(tick, "tick() not found: is this examples/target.c?")
print(("tick() at %s, score at %s"):format(rmem.hex(tick), rmem.hex(score)))

--- How much score grows per tick: the smallest of a few increases seen.
local function per_tick()
  local seen, last, deadline = {}, p:read_i32(score), os.clock() + 5
  while #seen < 5 and os.clock() < deadline do
    local now = p:read_i32(score)
    if now ~= last then seen[#seen + 1], last = now - last, now end
  end
  assert(#seen == 5, "score does not change: was the target started with --tick?")
  return math.min(table.unpack(seen))
end
print(("before: +%d per tick"):format(per_tick()))

-- The cave, within reach of a 32-bit jump: the first instruction of tick()
-- moved there with its rip-relative displacement fixed, add 99, jump back.
local cave <close> = p:alloc(rmem.page_size, { near = tick, protect = "rx" })
local function rel32(from, to) return string.pack("<i4", to - from) end
cave:write(0, "\x8B\x05" .. rel32(cave.address + 6, score) -- mov eax, [score]
  .. "\x83\xC0\x63"                                         -- add eax, 99
  .. "\xE9" .. rel32(cave.address + 14, tick + 6), { force = true }) -- jmp tick+6
print(("cave at %s, %d bytes from tick()"):format(rmem.hex(cave.address), cave.address - tick))

do
  -- jmp cave; nop: replaces exactly one instruction, so no thread can be
  -- halfway through the bytes it covers
  local jump <close> = p:patch(tick, "\xE9" .. rel32(tick + 5, cave.address) .. "\x90")
  print(jump)
  print(("with the cave: +%d per tick"):format(per_tick()))
end -- the patch restores tick() here

print(("restored: +%d per tick"):format(per_tick()))
