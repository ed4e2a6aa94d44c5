--- The Lua side of fuzz/lua_fuzz.c: returns fuzz_one(data, child_pid),
-- which feeds data to one parser or one function with arguments decoded
-- from it, and raises only for an error that is neither an argument error
-- nor an rmem.Error (or a memory error).
local rmem = require "rmem"
local core = require "rmem.core"
local scan = require "rmem.scan"
local protect = require "rmem.protect"

local me = rmem.self()
local processes = {} -- by pid: the child is opened once per pid
local MAX_SIZE = 16 * 1024 * 1024 -- bigger sizes would trip libFuzzer's malloc limit

--- Decodes one Lua value from data at i; returns it and the next index.
local function value(data, i)
  local k = data:byte(i) or 0
  i = i + 1
  local kind = k % 16
  if kind == 0 then return nil, i end
  if kind == 1 then return k >= 128, i end
  if kind == 2 then return {}, i end
  if kind == 3 then return 0 / 0, i end
  if kind == 4 then return math.huge * (k >= 128 and 1 or -1), i end
  if kind == 5 then return (k // 16) + 0.5, i end
  if kind == 6 then return math.maxinteger - (k // 16), i end
  if kind == 7 then return math.mininteger + (k // 16), i end
  if kind == 8 then -- a string of up to 32 bytes
    local n = (k // 16) * 2
    return data:sub(i, i + n - 1), i + n
  end
  if kind == 9 then return -(k // 16), i end
  -- an integer from the next 8 bytes, mostly small or page-like
  local raw = data:sub(i, i + 7)
  i = i + 8
  local v = #raw == 8 and string.unpack("<i8", raw) or 0
  if kind <= 12 then v = v % MAX_SIZE end
  if kind == 13 then v = v & ~0xFFF end
  return v, i
end

local function args_of(data, i, n)
  local list = {}
  for k = 1, n do list[k], i = value(data, i) end
  return list
end

local function acceptable(err)
  if rmem.is_error(err) then return true end
  return type(err) == "string" and (err:find("bad argument", 1, true) or err:find("not enough memory", 1, true)
    or err:find("closed process handle", 1, true)) ~= nil
end

local function try(fn, ...)
  local ok, err = pcall(fn, ...)
  if not ok and not acceptable(err) then error(err, 0) end
end

-- Methods that only read or describe, and those that change the child.
local PROCESS_METHODS = { "read", "query", "read_u32", "read_ptr", "read_string", "read_wstring",
  "unpack", "hexdump", "alloc", "commit", "decommit", "free", "protect", "write", "write_u16",
  "write_string", "pack", "scan_all", "module", "resolve", "regions", "with_protection", "patch",
  "value_scan" }
local CORE_METHODS = { "read", "query", "regions", "find", "alloc", "free", "decommit", "protect",
  "write", "modules", "is_alive", "exit_code" }

return function(data, pid)
  local op = (data:byte(1) or 0) % 8
  local rest = data:sub(2)
  if op == 0 then
    try(scan.parse, rest, 1, "scan")
  elseif op == 1 then
    try(protect.value, rest, 1, "protect")
  elseif op == 2 then
    try(me.resolve, me, rest, 8)
  elseif op == 3 then
    local a = args_of(rest, 1, 6)
    try(core.find, rest, a[1], a[2], a[3], a[4], a[5], a[6])
  else
    local p = processes[pid]
    if not p then
      local ok, opened = pcall(rmem.open, pid)
      if not ok then return end -- the child is being replaced
      p = opened
      processes = { [pid] = p }
    end
    local which = (rest:byte(1) or 0)
    local a = args_of(rest, 2, 4)
    if op <= 5 then
      local name = PROCESS_METHODS[which % #PROCESS_METHODS + 1]
      if name == "with_protection" then a[4] = function() end end
      if name == "regions" then
        try(function() for _ in p:regions(a[1]) do end end)
      elseif name == "scan_all" then
        try(p.scan_all, p, a[1], { from = a[2], to = a[3], limit = 4 })
      elseif name == "value_scan" then
        -- always bounded: the options come right after one value (other ops
        -- then fail on their arguments)
        local to = math.type(a[4]) == "integer" and a[4] + 65536 or 65536
        try(function()
          local s <close> = p:value_scan(a[1], a[2], a[3], { from = a[4], to = to, limit = 64 })
          s:next(a[2], a[3])
          for _ in s:each() do end
        end)
      else
        try(p[name], p, a[1], a[2], a[3], a[4])
      end
    else
      local h = p._h
      try(h[CORE_METHODS[which % #CORE_METHODS + 1]], h, a[1], a[2], a[3], a[4])
    end
  end
end
