--- Value scans: p:value_scan(type, op, value [, value2] [, opts]) and the
-- ValueScan it returns (s:next, s.count, s:each, s:list, s:close). The
-- candidates and the compare loops live in C (src/valscan.c, through
-- rmem.core); this file checks arguments, picks the memory and reports
-- progress.
local core = require "rmem.core"
local Error = require "rmem.error"
local check = require "rmem.check"
local scan = require "rmem.scan"
local typed = require "rmem.typed"

local valscan = {}

local STEP = 4 << 20 -- bytes of address space between two progress calls
local BATCH = 256    -- candidates each() takes from the core at a time
local MAX_BYTES = 65536

-- name -> the core's type, size, and the range of an integer value
local TYPES = {
  i8 = { "i8", 1, -0x80, 0x7F }, u8 = { "u8", 1, 0, 0xFF },
  i16 = { "i16", 2, -0x8000, 0x7FFF }, u16 = { "u16", 2, 0, 0xFFFF },
  i32 = { "i32", 4, -0x80000000, 0x7FFFFFFF }, u32 = { "u32", 4, 0, 0xFFFFFFFF },
  -- u64 takes Lua's integers as they are: above 2^63 they are negative
  i64 = { "i64", 8, math.mininteger, math.maxinteger }, u64 = { "u64", 8, math.mininteger, math.maxinteger },
  f32 = { "f32", 4, float = true }, f64 = { "f64", 8, float = true },
  string = { "bytes", text = true, align = 1 }, wstring = { "bytes", text = true, align = 2, utf16 = true },
}
for name, t in pairs(TYPES) do t.name = name end
local TYPE_LIST = "i8, u8, i16, u16, i32, u32, i64, u64, f32, f64, string or wstring"

-- op -> the number of values it takes
local FIRST_OPS = { ["=="] = 1, ["~="] = 1, ["<"] = 1, ["<="] = 1, [">"] = 1, [">="] = 1,
  between = 2, unknown = 0 }
local NEXT_OPS = { changed = 0, unchanged = 0, increased = 0, decreased = 0, increased_by = 1,
  decreased_by = 1 }
for op, n in pairs(FIRST_OPS) do NEXT_OPS[op] = n end
local OP_LIST = "==, ~=, <, <=, >, >=, between, unknown"
local NEXT_LIST = OP_LIST .. ", changed, unchanged, increased, decreased, increased_by, decreased_by"
-- a string scan compares bytes, not numbers
local TEXT_OPS = { ["=="] = true, ["~="] = true, changed = true, unchanged = true }
-- ops whose float value gets a tolerance
local TOLERANT = { ["=="] = true, ["~="] = true, increased_by = true, decreased_by = true }

local WRITABLE = { "rw", "wc", "rwx", "xwc" }
-- (["module"] quoted: LDoc takes a bare `module =` for an old-style module declaration)
local OPTS = { ["module"] = true, from = true, to = true, protect = true, align = true, progress = true,
  limit = true, tolerance = true }

local function show(v)
  return type(v) == "string" and ("'%s'"):format(v) or tostring(v)
end

--- Half a unit in the last decimal place that tostring(v) shows: 3.14 ->
-- 0.005, 3.0 -> 0.05, 100 -> 0.5, 1e+20 -> 5e+19; 0 for infinities.
function valscan.tolerance(v)
  local text = tostring(v)
  local digits, exp = text:match("^%-?([%d%.]+)e([-+]%d+)$")
  if not digits then digits, exp = text:match("^%-?([%d%.]+)$"), 0 end
  if not digits then return 0 end
  return 0.5 * 10.0 ^ (tonumber(exp) - #(digits:match("%.(%d*)$") or ""))
end

local function check_op(t, op, ops, n, fname)
  if ops[op] == nil then
    if NEXT_OPS[op] ~= nil then
      check.argerror(n, fname, ("'%s' compares with the values a scan kept: use it in s:next"):format(op))
    end
    check.argerror(n, fname, ("unknown op %s (expected %s)"):format(show(op),
      ops == NEXT_OPS and NEXT_LIST or OP_LIST))
  end
  if t.text and not TEXT_OPS[op] then
    check.argerror(n, fname, ("'%s' compares numbers: a %s scan takes ==, ~= (and in s:next also "
      .. "changed, unchanged)"):format(op, t.name))
  end
end

--- A value for type t at argument n, as the core takes it; size: the
-- length a string value must have (that of the first scan's).
local function value_of(t, v, n, fname, size)
  if t.text then
    if type(v) ~= "string" then
      check.argerror(n, fname, ("value must be a string for %s, got %s"):format(t.name, type(v)))
    end
    local bytes = t.utf16 and typed.utf8_to_utf16(v, fname, n) or v
    if #bytes == 0 then check.argerror(n, fname, "value must not be empty") end
    if #bytes > MAX_BYTES then check.argerror(n, fname, "value is longer than 65536 bytes") end
    if size and #bytes ~= size then
      check.argerror(n, fname, ("value must be as long as the first scan's (%d bytes), got %d bytes")
        :format(size, #bytes))
    end
    return bytes
  end
  if type(v) ~= "number" then
    check.argerror(n, fname, ("value must be a number for %s, got %s"):format(t.name, type(v)))
  end
  if t.float then
    if v ~= v then check.argerror(n, fname, "value must not be NaN (NaN never matches)") end
    return v -- (as typed: its default tolerance comes from how it prints)
  end
  local i = check.integer(v, n, fname, "value")
  if i < t[3] or i > t[4] then
    check.argerror(n, fname, ("value %d does not fit in %s (%d to %d)"):format(i, t.name, t[3], t[4]))
  end
  return i
end

local COUNT_WORDS = { [0] = "no value", "one value", "two values" }

--- The op's values among the arguments from n on, checked; and whether an
-- argument follows them (the options), with its position.
local function values_of(t, op, ops, fname, n, size, ...)
  local need, args = ops[op], table.pack(...)
  local v = {}
  for i = 1, need do
    if args[i] == nil then
      check.argerror(n + i - 1, fname, ("'%s' takes %s"):format(op, COUNT_WORDS[need]))
    end
    v[i] = value_of(t, args[i], n + i - 1, fname, size)
  end
  local last = args.n -- (trailing nils do not count)
  while last > 0 and args[last] == nil do last = last - 1 end
  return v[1], v[2], args[need + 1], n + need, math.max(0, last - need)
end

local ValueScan = { __name = "rmem.ValueScan" }

function ValueScan.__index(s, k)
  if k == "count" then
    local st = rawget(s, "_st")
    return st and st:count() or 0
  end
  return ValueScan[k]
end

--- The core scan of s, checked for the method fname.
local function state(s, fname)
  if getmetatable(s) ~= ValueScan then
    check.selferror(fname, "call it with a colon: s:" .. fname .. "(...)")
  end
  local st = rawget(s, "_st")
  if st == nil then check.selferror(fname, "the value scan is closed") end
  if s._running then check.selferror(fname, "the scan is running (called from its progress function)") end
  return st
end

--- Raises the error of a scan whose process has gone: from the core's
-- failed read (msg, code), or else what reading the process gives now.
local function exited(s, fname, msg, code)
  local p = s.process
  -- process.lua's hints: exited (with the exit code where it is known), or exec
  if msg then p._fail(p, fname, msg, code) end
  local ok, e = pcall(p.read, p, s._probe, 1)
  if ok then return end -- readable after all: the pass will tell
  if not Error.is_error(e) then error(e, 0) end
  e.op, e.address, e.size, e.bytes_done = fname, nil, nil, nil
  error(e, 0)
end

--- The core handle of p, or the closed-process error for fname.
local function handle(p, fname)
  return p:_handle(fname)
end

--- Tells the core the memory a pass may read: for the first one the whole
-- range, for a later one where the candidates still lie.
local function set_runs(s, from, to)
  local flat = {}
  for _, r in ipairs(scan.runs(s.process, from, to, s._prots)) do
    flat[#flat + 1], flat[#flat + 2] = r[1], r[2]
  end
  s._st:set_runs(flat)
  return flat[1]
end

--- Runs a pass of s: op with values a, b, reporting progress.
local function run_pass(s, fname, op, a, b)
  local st = s._st
  local h = handle(s.process, fname)
  local tol = 0
  if TYPES[s.type].float and TOLERANT[op] then tol = s._tolerance or valscan.tolerance(a) end
  st:begin(op, a, b, tol)
  s._gen = (s._gen or 0) + 1
  s._running = true
  local progress = s._progress
  local ok, err = pcall(function()
    local finished
    repeat
      local done, total
      done, total, finished = st:step(h, STEP)
      if done == nil then exited(s, fname, total, finished) end
      if progress and progress(done, total) == false then finished = true end
    until finished
  end)
  s._running = nil
  -- a pass that progress stopped ends here (one that ended has nothing left)
  if rawget(s, "_st") then st:stop() end
  if not ok then error(err, 0) end
  s._last = b ~= nil and ("%s %s %s"):format(op, tostring(a), tostring(b))
    or a ~= nil and ("%s %s"):format(op, TYPES[s.type].text and "..." or tostring(a)) or op
end

--- The first scan: see the README ("Find a value").
local function value_scan(p, vtype, op, ...)
  local fname = "value_scan"
  local t = TYPES[vtype]
  if not t then check.argerror(1, fname, ("unknown type %s (expected %s)"):format(show(vtype), TYPE_LIST)) end
  check_op(t, op, FIRST_OPS, 2, fname)
  local a, b, opts, n, rest = values_of(t, op, FIRST_OPS, fname, 3, nil, ...)
  if rest > 1 or (opts ~= nil and type(opts) ~= "table") then
    if rest > 1 or type(opts) == "number" or type(opts) == "string" then
      check.argerror(n, fname, ("'%s' takes %s, then the options"):format(op, COUNT_WORDS[FIRST_OPS[op]]))
    end
  end
  opts = check.options(opts, n, fname, OPTS)
  local size = t[2] or #a
  local align = t.align or size
  if opts.align ~= nil then
    align = check.integer(opts.align, n, fname, "align")
    if align < 1 or align > 65536 then check.argerror(n, fname, "align must be 1 to 65536, got " .. align) end
  end
  local limit = opts.limit ~= nil and check.size(opts.limit, n, fname) or math.maxinteger
  if opts.progress ~= nil and type(opts.progress) ~= "function" then
    check.argerror(n, fname, "progress must be a function, got " .. type(opts.progress))
  end
  if opts.tolerance ~= nil then
    if not t.float then check.argerror(n, fname, "tolerance is for f32 and f64 scans") end
    local tol = opts.tolerance
    if type(tol) ~= "number" or tol ~= tol or tol < 0 then
      check.argerror(n, fname, "tolerance must be a number >= 0, got " .. show(tol))
    end
  end
  handle(p, fname)
  local from, to = scan.bounds(p, opts, n, fname)
  local prots = scan.protections(opts.protect or WRITABLE, n, fname)
  local st = core.value_scan(t[1], size, align, limit)
  local s = setmetatable({ process = p, type = vtype, _st = st, _size = size, _prots = prots,
    _progress = opts.progress, _tolerance = opts.tolerance }, ValueScan)
  local ok, err = pcall(function()
    s._probe = set_runs(s, from, to) or 0
    run_pass(s, fname, op, a, b)
  end)
  if not ok then
    s:close() -- its memory goes now, not at the next collection
    error(err, 0)
  end
  return s
end

--- Keeps the candidates that pass op now; returns how many are left.
function ValueScan:next(op, ...)
  state(self, "next")
  local t = TYPES[self.type]
  check_op(t, op, NEXT_OPS, 1, "next")
  local a, b, _, n, rest = values_of(t, op, NEXT_OPS, "next", 2, self._size, ...)
  if rest > 0 then check.argerror(n, "next", ("'%s' takes %s"):format(op, COUNT_WORDS[NEXT_OPS[op]])) end
  if not self.process:is_alive() then exited(self, "next") end
  local lo, hi = self._st:bounds()
  if lo then set_runs(self, lo, hi) end
  run_pass(self, "next", op, a, b)
  return self._st:count()
end

--- for address, value in s:each() do ... end: the candidates, ascending,
-- with the values the last scan read.
function ValueScan:each()
  local st = state(self, "each")
  local gen, pos = self._gen, 0
  local addrs, vals, i = {}, {}, 0
  local utf16 = TYPES[self.type].utf16
  return function()
    if pos == nil and i >= #addrs then return nil end
    if rawget(self, "_st") == nil or self._gen ~= gen then
      error("the value scan changed (next or close) while each() went through it", 2)
    end
    if i >= #addrs then
      addrs, vals, pos = st:items(pos, BATCH)
      if addrs == nil then
        addrs, pos = {}, nil
        return nil
      end
      i = 0
    end
    i = i + 1
    local v = vals[i]
    if utf16 then v = typed.utf16_to_utf8(v) end
    return addrs[i], v
  end
end

--- The candidates' addresses, ascending (the first limit of them).
function ValueScan:list(limit)
  local st = state(self, "list")
  return st:list(limit == nil and math.maxinteger or check.size(limit, 1, "list"))
end

--- Frees the candidates now (also on leaving a <close> scope, or by the
-- collector); a second close does nothing.
function ValueScan:close()
  local st = rawget(self, "_st")
  if st then
    self._st = nil
    st:close()
  end
end
ValueScan.__close = ValueScan.close

function ValueScan:__tostring()
  local st = rawget(self, "_st")
  if not st then
    return ("rmem.ValueScan(pid %d, %s, closed)"):format(self.process.pid, self.type)
  end
  local count = st:count()
  return ("rmem.ValueScan(pid %d, %s, %d candidate%s after %s)"):format(self.process.pid, self.type,
    count, count == 1 and "" or "s", self._last or "nothing")
end

function valscan.install(Process)
  Process.value_scan = value_scan
end

valscan.ValueScan = ValueScan

return valscan
