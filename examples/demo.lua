--- The life of one allocation in another process, step by step.
--   lua demo.lua [target command]
-- Starts the target (by default the rmem-target program built next to the
-- interpreter), opens it, and allocates, writes, reads, protects,
-- decommits, queries and releases memory in it, printing the page states
-- as it goes.
local rmem = require "rmem"

local PAGE = rmem.page_size
local sep = package.config:sub(1, 1)

local function say(fmt, ...) print(fmt:format(...)) end

local function pages(p, r)
  local parts = {}
  for i = 0, r.size // PAGE - 1 do
    local q = p:query(r.address + i * PAGE)
    parts[#parts + 1] = ("page %d: %-7s %-4s"):format(i, q.state, q.protect or "-")
  end
  say("     %s", table.concat(parts, " | "))
end

-- Start the target with a pipe on its standard input: it runs until the
-- pipe closes, and writes its pid to a file once it is ready.
local command = arg[1] or (arg[-1]:match("^(.*)[/\\]") or ".") .. sep
  .. (rmem.platform == "windows" and "rmem-target.exe" or "rmem-target")
local pidfile = (os.getenv("TEMP") or os.getenv("TMPDIR") or "/tmp") .. sep
  .. ("rmem-demo-%d.pid"):format(os.time())
local cmdline = ('"%s" --pid-file "%s" --until-eof'):format(command, pidfile)
if sep == "\\" then
  -- cmd.exe strips the outer quotes of what _popen hands it
  cmdline = '"' .. cmdline:gsub("/", "\\") .. '"'
end
local target = assert(io.popen(cmdline, "w"))
local pid
for _ = 1, 500 do
  local f = io.open(pidfile)
  pid = f and tonumber(f:read("l"))
  if f then f:close() end
  if pid then break end
  local t = os.clock() while os.clock() - t < 0.01 do end
end
os.remove(pidfile)
assert(pid, "the target did not start")

say("rmem demo on %s: one allocation's life in another process", rmem.platform)
local p <close> = rmem.open(pid)
say("opened %s", tostring(p))

say("1. reserve 4 pages, commit none")
local r <close> = p:alloc(4 * PAGE, { commit = false })
say("   %s", tostring(r))
pages(p, r)

say("2. commit pages 0-2 read-write")
r:commit(0, 3 * PAGE, "rw")
pages(p, r)

local text = "Hello from rmem!"
say("3. write %q at +0x10, read it back", text)
r:write(0x10, text)
say("   read back: %q", r:read(0x10, #text))

say("4. make page 0 read-only")
say("   old protection: %s", r:protect(0, PAGE, "r"))
pages(p, r)

say("5. write to the read-only page with force (protection restored after)")
r:write(0x10, "HELLO", { force = true })
say("   read back: %q", r:read(0x10, #text))
pages(p, r)

say("6. decommit the 2 bytes at +0x1fff..+0x2000: both pages they touch")
r:decommit(2 * PAGE - 1, 2)
pages(p, r)

say("7. what query says about page 1")
local q = r:query(PAGE)
say("   base 0x%x, size 0x%x, state %s, allocation base 0x%x, type %s",
  q.base, q.size, q.state, q.allocation_base, q.type)

say("8. a mistake: free with an address inside the allocation")
local ok, err = pcall(p.free, p, r.address + PAGE)
say("   %s", ok and "unexpectedly succeeded" or tostring(err))

say("9. release the whole allocation, whatever state its pages are in")
local address = r.address
r:free()
say("   %s", tostring(r))
say("     query(0x%x).state = %s", address, p:query(address).state)

target:close() -- the target exits when its input closes
say("done: the target exited (pid %d)", pid)
