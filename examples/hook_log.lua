--- Log the arguments of a function of a running program for a second, with
-- a hook: every call records the registers that hold them into a ring in
-- the target, and the script drains it.
--   lua hook_log.lua PID [ADDRESS]
-- Without an address it hooks hook_add(a, b) of examples/target.c (started
-- with --calls 1: a thread calls hook_add(n % 1000, 7) in a loop).
local rmem = require "rmem"

local pid = assert(tonumber(arg[1]), "usage: lua hook_log.lua PID [ADDRESS]")
local p <close> = rmem.open(pid, { access = "all" }) -- hooks run code in the target

-- the first two integer arguments: rcx, rdx on Windows; rdi, rsi on Linux
local a1, a2 = "rcx", "rdx"
if rmem.platform == "linux" then a1, a2 = "rdi", "rsi" end

local fn = tonumber(arg[2])
if not fn then
  -- hook_add: imul a, a, 1000; lea eax/rax, [a + b]; ret
  local pattern = rmem.platform == "linux" and "48 69 FF E8 03 00 00 48 8D 04 37 C3"
    or "69 C9 E8 03 00 00 8D 04 11 C3"
  fn = p:scan_all(pattern, { module = p:modules()[1] })[1]
  assert(fn, "hook_add() not found: is this examples/target.c?")
end
print(("hooking %s:"):format(rmem.hex(fn)))
print(p:disasm(fn, 3))

local calls, threads, first = 0, {}, nil
do
  local h <close> = p:hook(fn, { log = { a1, a2 } })
  print(h)
  local stop = os.time() + 1
  repeat
    for _, hit in ipairs(h:hits()) do
      calls = calls + 1
      threads[hit.thread] = true
      first = first or hit
    end
  until os.time() > stop
  print(("%d calls could not be logged (the ring was full)"):format(h.dropped))
end -- the hook is removed here, the function is as it was

local nthreads = 0
for _ in pairs(threads) do nthreads = nthreads + 1 end
print(("logged %d calls from %d thread(s)"):format(calls, nthreads))
if first then
  print(("first call: thread %d, %s = %d, %s = %d"):format(first.thread, a1, first[a1], a2, first[a2]))
end
