--- A code cave: divert a function of a running program into new code, watch
-- the program behave differently, then undo it. p:hook does the delicate
-- parts: it moves the instructions its jump covers next to it (their
-- RIP-relative operands re-aimed), stops every thread while it writes the
-- jump, and removes it all when the block ends.
--   lua code_cave.lua PID
-- The target is examples/target.c started with --tick: a thread calls
-- tick() every millisecond, and tick() adds 1 to a global, score. The cave
-- makes it add 100.
local rmem = require "rmem"

local pid = assert(tonumber(arg[1]), "usage: lua code_cave.lua PID")
local p <close> = rmem.open(pid, { access = "all" }) -- hooks run code in the target

-- tick(): mov eax, [rip+d1]; add eax, 1; mov [rip+d2], eax; ret
local tick, score
for _, at in ipairs(p:scan_all("8B 05 ?? ?? ?? ?? 83 C0 01 89 05 ?? ?? ?? ?? C3",
    { module = p:modules()[1] })) do
  local load = at + 6 + p:read_i32(at + 2)
  if load == at + 15 + p:read_i32(at + 11) then tick, score = at, load end
end
assert(tick, "tick() not found: is this examples/target.c?")
print(("tick() at %s, score at %s"):format(rmem.hex(tick), rmem.hex(score)))
print(p:disasm(tick, 4))

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

do
  -- the payload runs before tick()'s own code: mov rax, score; add dword [rax], 99
  -- (rax is free: tick() loads it next)
  local cave <close> = p:hook(tick, "\x48\xB8" .. string.pack("<I8", score) .. "\x83\x00\x63")
  print(cave)
  print(("cave at %s, %d bytes from tick()"):format(rmem.hex(cave.trampoline), cave.trampoline - tick))
  print(("with the cave: +%d per tick"):format(per_tick()))
end -- the hook restores tick() here

print(("restored: +%d per tick"):format(per_tick()))
