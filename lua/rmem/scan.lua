--- Pattern scans over a process's memory: p:scan (an iterator) and
-- p:scan_all (a list). The inner loop is C (core.find); this file parses
-- patterns, picks the readable memory and reads it in overlapping chunks.
local core = require "rmem.core"
local check = require "rmem.check"
local protect = require "rmem.protect"
local tools = require "rmem.tools"

local scan = {}

local CHUNK = 1 << 20 -- bytes read at a time

-- readable, non-guard protections: what a scan covers by default
local READABLE = { r = true, rw = true, wc = true, rx = true, rwx = true, xwc = true }

--- Parses "48 8B ?? 4? ?F" into (bytes, mask): bytes pre-masked, mask 0xFF
-- for a known byte, 0xF0 / 0x0F for a known nibble, 0 for a wildcard.
-- Raises an argument error (#n of fname) naming the offending token.
function scan.parse(pattern, n, fname)
  if type(pattern) == "table" then
    -- the bytes-plus-mask form: { bytes = "\x48\x8B", mask = "x?" }
    local bytes, mask = pattern.bytes, pattern.mask
    if type(bytes) ~= "string" or type(mask) ~= "string" or #bytes ~= #mask or #bytes == 0 then
      check.argerror(n, fname, "a pattern table needs bytes and mask strings of one "
        .. "non-zero length")
    end
    local b, m = {}, {}
    for i = 1, #mask do
      local c = mask:sub(i, i)
      if c ~= "x" and c ~= "?" then
        check.argerror(n, fname, ("mask character %d is '%s' (expected x or ?)"):format(i, c))
      end
      m[i] = c == "x" and "\xFF" or "\0"
      b[i] = c == "x" and bytes:sub(i, i) or "\0"
    end
    return table.concat(b), table.concat(m)
  end
  if type(pattern) ~= "string" then
    check.argerror(n, fname, "pattern must be a string or a { bytes, mask } table, got "
      .. type(pattern))
  end
  local b, m = {}, {}
  for pos, token in pattern:gmatch("()(%S+)") do
    local hi, lo = token:match("^([%x?])([%x?])$")
    if not hi and token == "?" then hi, lo = "?", "?" end
    if not hi then
      check.argerror(n, fname, ("bad token '%s' at position %d of the pattern (expected "
        .. "a hex byte, ?? or a nibble wildcard like 4? or ?F)"):format(token, pos))
    end
    local mask = (hi == "?" and 0 or 0xF0) | (lo == "?" and 0 or 0x0F)
    local value = (hi == "?" and 0 or tonumber(hi, 16) << 4) | (lo == "?" and 0 or tonumber(lo, 16))
    b[#b + 1], m[#m + 1] = string.char(value), string.char(mask)
  end
  if #b == 0 then check.argerror(n, fname, "the pattern is empty") end
  return table.concat(b), table.concat(m)
end

--- The set of protections a scan covers (opts at argument n of fname).
function scan.protections(opt, n, fname)
  if opt == nil then return READABLE end
  return protect.set(opt, n, fname)
end

--- The runs of adjacent committed pages with a covered protection inside
-- [from, to), as { start, stop } pairs, ascending.
function scan.runs(p, from, to, prots)
  local list = {}
  for info in p:regions { state = "commit" } do
    local lo, hi = math.max(info.base, from), math.min(info.base + info.size, to)
    if lo < hi and prots[info.protect] then
      local last = list[#list]
      if last and last[2] == lo then last[2] = hi else list[#list + 1] = { lo, hi } end
    end
    if info.base >= to then break end
  end
  return list
end

local SCAN_OPTS = { module = true, from = true, to = true, protect = true, limit = true,
  overlapping = true, align = true, progress = true }

--- The bounds [from, to) a scan covers (opts at argument n of fname).
function scan.bounds(p, opts, n, fname)
  local from, to = 0, core.user_end
  if opts.module ~= nil then
    local m = tools.module_of(p, opts.module, n, fname, "size")
    from, to = m.base, m.base + m.size
  end
  if opts.from ~= nil then from = math.max(from, check.address(opts.from, n, fname)) end
  if opts.to ~= nil then to = math.min(to, check.address(opts.to, n, fname)) end
  return from, to
end

--- Reads [a, b) for the scan: the bytes, or, where part of it cannot be
-- read (it changed under the scan), the readable pages as pieces.
local function read_pieces(p, a, b)
  local ok, data = pcall(p.read, p, a, b - a)
  if ok then return { { a, data } } end
  -- a target that exited (or a closed process) ends the scan with its error
  if not p:is_alive() then error(data, 0) end
  local pieces, page = {}, core.page_size
  local x = a
  while x < b do
    local y = math.min(b, (x // page + 1) * page)
    local got, bytes = pcall(p.read, p, x, y - x)
    if got then
      local last = pieces[#pieces]
      if last and last[1] + #last[2] == x then last[2] = last[2] .. bytes
      else pieces[#pieces + 1] = { x, bytes } end
    end
    x = y
  end
  return pieces
end

--- for address in p:scan(pattern [, opts]) do ... end
-- opts: module (a name or a module table), from (inclusive), to
-- (exclusive), protect (a protection, a group "readable", "writable" or
-- "executable", or a list of them; default every readable,
-- non-guard one), limit, overlapping (default true), align, progress
-- (called as progress(done, total) in bytes after each chunk; returning
-- false stops the scan after the matches found so far).
local function scanner(p, pattern, opts)
  local bytes, mask = scan.parse(pattern, 1, "scan")
  if #bytes > CHUNK then
    check.argerror(1, "scan", ("the pattern is %d bytes long: at most %d (the scan reads "
      .. "1 MiB at a time)"):format(#bytes, CHUNK))
  end
  opts = check.options(opts, 2, "scan", SCAN_OPTS)
  local from, to = scan.bounds(p, opts, 2, "scan")
  local limit = opts.limit and check.size(opts.limit, 2, "scan") or math.maxinteger
  local align = opts.align and check.integer(opts.align, 2, "scan", "align") or 1
  if align < 1 then check.argerror(2, "scan", "align must be at least 1") end
  local overlapping = opts.overlapping ~= false
  local progress = opts.progress
  if progress ~= nil and type(progress) ~= "function" then
    check.argerror(2, "scan", "progress must be a function, got " .. type(progress))
  end
  local list = scan.runs(p, from, to, scan.protections(opts.protect, 2, "scan"))
  local done, total, stopped = 0, 0, false
  for _, r in ipairs(list) do total = total + (r[2] - r[1]) end
  local len, queue, qi, count = #bytes, {}, 1, 0
  local run, at = 0, nil -- the run being read and the next address in it
  local next_start = 0    -- non-overlapping: where the last match ended

  local function refill()
    while qi > #queue do
      if count >= limit or stopped then return false end
      if at == nil or at >= list[run][2] then
        run = run + 1
        if run > #list then return false end
        at = list[run][1]
      end
      local stop = math.min(list[run][2], at + CHUNK + len - 1)
      -- non-overlapping, a match of the last chunk may reach into this one:
      -- scanning on from its end finds what one scan of the whole run would
      local start = math.max(at, next_start)
      queue, qi = {}, 1
      -- the chunk is read and scanned in C; only a chunk that cannot be read
      -- whole comes to Lua, in readable pieces
      local hits = p._h and p._h:find(start, stop - start, bytes, mask, align, overlapping, limit - count)
      local pieces = hits and { { start, hits } } or read_pieces(p, start, stop)
      for _, piece in ipairs(pieces) do
        if type(piece[2]) == "string" then
          piece[2] = core.find(piece[2], bytes, mask, piece[1], align, overlapping, limit - count)
        end
        for _, hit in ipairs(piece[2]) do
          if #queue < limit - count then queue[#queue + 1] = hit end
        end
      end
      if not overlapping and #queue > 0 then next_start = queue[#queue] + len end
      -- the next chunk overlaps this one by len - 1 bytes: no match on a
      -- chunk border is lost, and none is found twice
      local was = at
      at = stop >= list[run][2] and stop or stop - (len - 1)
      done = done + (at - was)
      if progress and progress(done, total) == false then stopped = true end
    end
    return true
  end

  return function()
    if not refill() then return nil end
    local hit = queue[qi]
    qi, count = qi + 1, count + 1
    return hit
  end
end

function scan.install(Process)
  Process.scan = scanner
  --- Every match of p:scan, as a list.
  function Process:scan_all(pattern, opts)
    local list = {}
    for hit in scanner(self, pattern, opts) do list[#list + 1] = hit end
    return list
  end
end

return scan
