--- rmem's benchmarks: each figure against a baseline measured in the same
-- run (bench/baseline.c making the same OS calls from C, memcpy, a naive
-- scanner, scanmem), as the median of several batches.
--   lua bench.lua PID BASELINE_COMMAND [SIZE_MIB [VALUE_SCAN_MIB]]
-- PID is an idle examples/target.c; prints a markdown table.
local rmem = require "rmem"
local core = require "rmem.core"
local monotime = require("system").monotime

local USAGE = "usage: lua bench.lua PID BASELINE_COMMAND [SIZE_MIB [VALUE_SCAN_MIB]]"
local pid = assert(tonumber(arg[1]), USAGE)
local baseline = assert(arg[2], USAGE)
local MIB = 1024 * 1024
local BULK = (tonumber(arg[3]) or 256) * MIB
local VS_SIZE = (tonumber(arg[4]) or 1024) * MIB -- the value scans' random data
local BATCHES = 7
local linux = rmem.platform == "linux"
local platform = linux and "native Linux" or "Windows build under Wine"

local p <close> = rmem.open(pid, { access = "all" })

--- The median over BATCHES (or batches) batches of reps calls of fn:
-- seconds per call. setup, if given, runs untimed before each batch.
local function measure(fn, reps, setup, batches)
  batches = batches or BATCHES
  if setup then setup() end
  fn()
  local t = {}
  for b = 1, batches do
    if setup then setup() end
    local t0 = monotime()
    for _ = 1, reps do fn() end
    t[b] = (monotime() - t0) / reps
  end
  table.sort(t)
  return t[(batches + 1) // 2]
end

--- Runs the C baseline; returns its figures by name.
local function run_baseline(...)
  local cmd = ('"%s" %s'):format(baseline, table.concat({ pid, ... }, " "))
  -- cmd.exe strips the outer quotes of what _popen hands it
  if not linux then cmd = '"' .. cmd .. '"' end
  local out = assert(io.popen(cmd)):read("a")
  local figures = {}
  for name, value in out:gmatch("(%S+) (%S+)\n") do figures[name] = tonumber(value) end
  assert(next(figures), "the baseline printed nothing: " .. cmd)
  return figures
end

local rows = {}
local function row(what, ours, base, base_name, goal)
  rows[#rows + 1] = { what, ours, base, base_name, goal }
end

-- The target's memory: a page for the small calls and a bulk region of
-- pseudo-random bytes with a 12-byte signature planted at chunk borders
-- and near the end.
local page <close> = p:alloc(rmem.page_size)
local bulk <close> = p:alloc(BULK)
local SIG = "\x48\x8B\x05\x11\x22\x33\x44\x48\x85\xC0\x74\x05"
local PATTERN = "48 8B 05 ?? ?? ?? ?? 48 85 C0 74 ??"

-- 1. call overhead
local addr = page.address
local four_k = ("x"):rep(4096)
local small = {
  { "open + close", "open_close", function() rmem.open(pid):close() end, 200 },
  { "query", "query", function() p:query(addr) end, 1000 },
  { "read 8 B", "read8", function() p:read(addr, 8) end, 10000 },
  { "read 4 KiB", "read4k", function() p:read(addr, 4096) end, 10000 },
  { "write 4 KiB", "write4k", function() p:write(addr, four_k) end, 10000 },
}
if not linux then
  small[#small + 1] = { "alloc + free 4 KiB", "alloc_free", function() p:alloc(4096):free() end, 200 }
  small[#small + 1] = { "protect", "protect", function() p:protect(addr, 4096, "rw") end, 1000 }
end
for _, s in ipairs(small) do s.t = measure(s[3], s[4]) end

-- the bulk data, made after the small calls so that they run in a small heap
local data
do
  math.randomseed(42)
  local block = {}
  for i = 1, MIB // 8 do block[i] = string.pack("<i8", math.random(math.mininteger, math.maxinteger)) end
  local mib = table.concat(block)
  local planted = { MIB - 5, 2 * MIB - 6, 3 * MIB - 11, BULK - 100 }
  local pieces = {}
  for i = 1, BULK // MIB do pieces[i] = mib end
  data = table.concat(pieces)
  for _, at in ipairs(planted) do data = data:sub(1, at) .. SIG .. data:sub(at + #SIG + 1) end
  for off = 0, BULK - 1, 16 * MIB do bulk:write(off, data:sub(off + 1, off + 16 * MIB)) end
  data = { text = data, planted = #planted }
end

-- the C baseline, on the same memory, once the bulk region holds its data
local c = run_baseline("calls", page.address, bulk.address, BULK)
for _, s in ipairs(small) do
  row(s[1], s.t, c[s[2]], "the same calls in C", linux and s[2] ~= "open_close" and "≤ 1.2×" or "")
end

-- 2. bulk read
for n = 64 * MIB, BULK, 192 * MIB do
  local name = ("bulk_read_%d"):format(n // MIB)
  local t = measure(function() p:read(bulk.address, n) end, 1)
  row(("read %d MiB"):format(n // MIB), t, c[name], "one read call in C", "≤ 1.11× (speed ≥ 0.9×)")
  row(("read %d MiB (vs memcpy)"):format(n // MIB), t, c.memcpy * n / BULK, "memcpy, local", "")
end

-- 3. pattern scan
local found
local t_scan = measure(function()
  found = #p:scan_all(PATTERN, { from = bulk.address, to = bulk.address + BULK })
end, 1)
assert(found == data.planted, ("the scan found %d of %d planted signatures"):format(found, data.planted))
local bytes, mask = require("rmem.scan").parse(PATTERN, 1, "bench")
local hits
local t_find = measure(function()
  hits = #core.find(data.text, bytes, mask, 0, 1, true, math.maxinteger)
end, 1)
assert(hits == data.planted)
row(("scan %d MiB, in a local buffer"):format(BULK // MIB), t_find, c.naive_scan, "naive C loop",
  ("≥ 5 GB/s: %.1f GB/s"):format(BULK / t_find / 1e9))
row(("scan %d MiB in the target"):format(BULK // MIB), t_scan, c[("bulk_read_%d"):format(BULK // MIB)],
  "one read call in C", ("≥ 0.5× copy: %.2f×"):format(c[("bulk_read_%d"):format(BULK // MIB)] / t_scan))
if linux then
  local cmd = ("scanmem -p %d -c 'option scan_data_type bytearray;option region_scan_level 2;%s;exit' "
    .. ">/dev/null 2>&1"):format(pid, PATTERN:lower())
  local t_scanmem = measure(function() os.execute(cmd) end, 1)
  row(("scan %d MiB in the target"):format(BULK // MIB), t_scan, t_scanmem, "scanmem 0.17 (whole run)",
    "far ahead")
end
-- 6. many values at once: 1,000 u32 scattered over the bulk region (the
-- addresses bench/baseline.c reads too), and a bulk read into a warm buffer
do
  local addrs = {}
  for i = 1, 1000 do addrs[i] = bulk.address + i * 2654435761 % (BULK // 4) * 4 end
  local values
  local t_many = measure(function() values = p:read_many(addrs, "u32") end, 100)
  for i = 1, 1000, 97 do assert(values[i] == p:read_u32(addrs[i])) end
  local t_each = measure(function()
    for i = 1, 1000 do p:read_u32(addrs[i]) end
  end, 10)
  row("read_many 1,000 scattered u32", t_many, t_each, "1,000 p:read_u32 calls",
    ("≥ 10× faster: %.1f×"):format(t_each / t_many))
  row("read_many 1,000 scattered u32", t_many, c.read_many, linux
    and "process_vm_readv of 1,024 pieces, in C" or "a ReadProcessMemory loop in C", "≤ 2×")
  -- close together (a table of structs): read as a few spans
  local near = {}
  for i = 1, 1000 do near[i] = bulk.address + i * 2654435761 % (64 * 1024 // 4) * 4 end
  local t_near = measure(function() p:read_many(near, "u32") end, 100)
  local t_near_each = measure(function()
    for i = 1, 1000 do p:read_u32(near[i]) end
  end, 10)
  row("read_many 1,000 u32 within 64 KiB", t_near, t_near_each, "1,000 p:read_u32 calls",
    ("%.1f× faster"):format(t_near_each / t_near))
  local buf = rmem.buffer(BULK)
  local t_into = measure(function() p:read_into(buf, bulk.address, BULK) end, 1)
  assert(buf:tostring(1, MIB) == data.text:sub(1, MIB))
  row(("read_into %d MiB, a warm buffer"):format(BULK // MIB), t_into,
    c[("bulk_read_%d"):format(BULK // MIB)], "one read call in C, a warm buffer",
    ("speed ≥ 0.9×: %.2f×"):format(c[("bulk_read_%d"):format(BULK // MIB)] / t_into))
end

data = nil

-- 6. pointer map and pointer scan: one pointer in every 64 bytes of the
-- bulk region (4 Mi of them for 256 MiB), each aimed at a random place in it
do
  local filler = ("<I8" .. ("x"):rep(56))
  for off = 0, BULK - 1, MIB do
    local block = {}
    for i = 1, MIB // 64 do block[i] = filler:pack(bulk.address + math.random(0, BULK // 8 - 1) * 8) end
    bulk:write(off, table.concat(block))
  end
  local map
  local t_map = measure(function()
    if map then map:close() end
    map = p:pointer_map()
  end, 1)
  local read = c[("bulk_read_%d"):format(BULK // MIB)]
  row(("pointer map, %d MiB holding %d pointers"):format(BULK // MIB, map.count), t_map, read,
    "one read call in C", ("≤ 3×: %.2f×"):format(t_map / read))
  local file = os.tmpname()
  if not linux then file = os.getenv("TEMP") .. file end
  map:save(file)
  local size = assert(io.open(file, "rb")):seek("end")
  local map2 = rmem.load_pointer_map(file)
  os.remove(file)
  local target = bulk.address + BULK // 2 + 8
  local chains
  local t_ptr = measure(function()
    chains = rmem.pointer_scan { maps = { map, map2 }, targets = { target, target }, depth = 5,
      max_offset = 0x1000, limit = 1000 }
  end, 1)
  row(("pointer scan, depth 5, 2 maps (%d chains%s)"):format(#chains,
    chains.truncated and ", levels capped" or ""), t_ptr, 10, "the goal: 10 s",
    ("≤ 10 s; map file %.1f bytes/pointer (≤ 16)"):format(size / map.count))
  map:close()
  map2:close()
end
bulk:free()

-- 5. the Linux allocation path: ptrace sessions
if linux then
  local session = c.ptrace_session
  row("alloc + free 4 KiB (2 sessions)", measure(function() p:alloc(4096):free() end, 50),
    2 * session, "2 × ptrace attach+syscall+detach in C", "")
  row("protect (1 session)", measure(function() p:protect(addr, 4096, "rw") end, 50), session,
    "ptrace attach+syscall+detach in C", "")
  -- 64 runs: 32 committed pages between 32 reserved ones, committed in one call
  local r <close> = p:alloc(64 * rmem.page_size, { commit = false })
  local function alternate()
    r:decommit(0, 64 * rmem.page_size)
    for i = 0, 63, 2 do r:commit(i * rmem.page_size, rmem.page_size) end
  end
  local t64 = measure(function() r:commit(0, 64 * rmem.page_size) end, 1, alternate)
  local one = measure(function() p:protect(addr, 4096, "rw") end, 50)
  row("commit 64 alternating pages (64 calls)", t64, one, "a one-call rmem session",
    ("≤ 2×: %.2f×"):format(t64 / one))
end

-- 4. region walk over 10,000 more mappings (alternating protections, so
-- that none merge)
local many = {}
for i = 1, 10000 do
  many[i] = p:alloc(rmem.page_size, { protect = i % 2 == 0 and "r" or "rw" })
end
local regions = 0
local t_walk = measure(function()
  regions = 0
  for _ in p:regions() do regions = regions + 1 end
end, 1)
local w = run_baseline("walk")
row(("walk %d regions"):format(regions), t_walk, w.walk,
  linux and "parse /proc/PID/maps in C" or "VirtualQueryEx loop in C", "≤ 1.5×")
for _, r in ipairs(many) do r:free() end

-- 6. remote calls: a typed call (scratch memory, stub; on Windows the
-- exception handler) against the bare one-argument call underneath
do
  local exe = assert(p:modules()[1])
  local fn = assert(p:proc_address(exe, "rmem_test_i32"), "the target has no rmem_test_i32")
  local f = p:func(fn, "i32", { "i32" })
  local h = rawget(p, "_h")
  row("p:func(i32) call", measure(function() f(1) end, 20), measure(function() h:call(fn, 1, 5000) end, 20),
    linux and "rmem.core call (one injection)" or "rmem.core call (CreateRemoteThread)", "")
end

-- 7. value scans, over a region of pseudo-random data (a random MiB,
-- salted per MiB) holding a value planted at 4 places and, from its
-- middle, 10,000,000 copies of another in a row (40 MB): the candidates of
-- the next scan
do
  local vs = p:alloc(VS_SIZE)
  local PLANTED, MANY, N_MANY = 0x7EADBEEF, 0x11223344, 10000000
  math.randomseed(7)
  local block = {}
  for i = 1, MIB // 8 do block[i] = string.pack("<i8", math.random(math.mininteger, math.maxinteger)) end
  local mib = table.concat(block)
  for off = 0, VS_SIZE - 1, MIB do vs:write(off, string.pack("<i8", off) .. mib:sub(9)) end
  local copies = string.pack("<i4", MANY):rep(MIB // 4)
  for off = 0, N_MANY * 4 - 1, MIB do
    vs:write(VS_SIZE // 2 + off, copies:sub(1, math.min(MIB, N_MANY * 4 - off)))
  end
  for i = 1, 4 do vs:write_i32(VS_SIZE // 5 * i + 4 * i, PLANTED) end
  local read = run_baseline("read", vs.address, VS_SIZE).bulk_read
  local batches = linux and BATCHES or 3 -- (each pass over 1 GiB takes seconds under Wine)
  local gib = ("%d MiB"):format(VS_SIZE // MIB)

  local exact
  local t_exact = measure(function()
    local s <close> = p:value_scan("i32", "==", PLANTED)
    exact = s.count
  end, 1, nil, batches)
  assert(exact >= 4, "the exact scan missed planted values")
  row(("value scan i32 == (target holding %s)"):format(gib), t_exact, read, "one read call in C of the " .. gib,
    "")
  if linux then
    local cmd = ("scanmem -p %d -c 'option scan_data_type int32;option region_scan_level 2;%d;exit' 2>&1")
      :format(pid, PLANTED)
    local matches = tonumber(assert(io.popen(cmd)):read("a"):match("we currently have (%d+) matches"))
    assert(matches and matches >= 4, "scanmem did not find the planted values")
    local quiet = cmd:gsub(" 2>&1$", " >/dev/null 2>&1")
    local t_scanmem = measure(function() os.execute(quiet) end, 1, nil, 3)
    row(("value scan i32 == (target holding %s)"):format(gib), t_exact, t_scanmem, "scanmem 0.17 (whole run)",
      ("≥ 10× faster: %.1f×"):format(t_scanmem / t_exact))
  end

  -- unknown + unchanged over the region, with the host's peak RSS growth
  local range = { from = vs.address, to = vs.address + VS_SIZE }
  local function unknown_unchanged()
    local s <close> = p:value_scan("i32", "unknown", range)
    s:next("unchanged")
    assert(s.count == VS_SIZE // 4)
  end
  local rss_note = ""
  if linux then
    local function status(field)
      return tonumber(assert(io.open("/proc/self/status")):read("a"):match(field .. ":%s*(%d+) kB")) * 1024
    end
    collectgarbage()
    local f = io.open("/proc/self/clear_refs", "w")
    if f then f:write("5") f:close() end -- resets the peak
    local before = status("VmRSS")
    unknown_unchanged()
    local growth = status("VmHWM") - before
    rss_note = ("; peak RSS +%.2f GiB (≤ 1.25)"):format(growth / (1 << 30))
  end
  local t_uu = measure(unknown_unchanged, 1, nil, batches)
  row(("unknown + unchanged, %s"):format(gib), t_uu, read, "one read call in C of the " .. gib,
    ("≤ 4×: %.2f×%s"):format(t_uu / read, rss_note))

  -- next scan over 10 million candidates, against the first scan that found them
  local s <close> = p:value_scan("i32", "==", MANY)
  assert(s.count >= N_MANY)
  local t_first = measure(function() p:value_scan("i32", "==", MANY):close() end, 1, nil, batches)
  local t_next = measure(function() s:next("unchanged") end, 1, nil, batches)
  assert(s.count >= N_MANY)
  row("next scan, 10,000,000 candidates", t_next, t_first, "the first scan that found them",
    ("≤ 0.5×: %.2f×"):format(t_next / t_first))
  s:close()
  vs:free()
end

-- the table
local function human(s)
  if s >= 1 then return ("%.2f s"):format(s) end
  if s >= 1e-3 then return ("%.2f ms"):format(s * 1e3) end
  return ("%.2f µs"):format(s * 1e6)
end
print(("### %s (%s)\n"):format(platform, rmem._VERSION))
print("| what | rmem | baseline | baseline is | rmem / baseline | goal |")
print("|---|---|---|---|---|---|")
for _, r in ipairs(rows) do
  print(("| %s | %s | %s | %s | %.2f× | %s |"):format(r[1], human(r[2]), human(r[3]), r[4], r[2] / r[3], r[5]))
end
