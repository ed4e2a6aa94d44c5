--- Protection strings and PAGE_* numbers, both ways.
-- "none" "r" "rw" "wc" "x" "rx" "rwx" "xwc", each with optional "+guard",
-- "+nocache" and "+writecombine" suffixes.
local check = require "rmem.check"

local protect = {}

local base_values = {
  none = 0x01, r = 0x02, rw = 0x04, wc = 0x08,
  x = 0x10, rx = 0x20, rwx = 0x40, xwc = 0x80,
}
local modifiers = { { "guard", 0x100 }, { "nocache", 0x200 }, { "writecombine", 0x400 } }
local modifier_values = {}
local base_names = {}
for name, v in pairs(base_values) do base_names[v] = name end
for _, m in ipairs(modifiers) do modifier_values[m[1]] = m[2] end

local EXPECTED = "none, r, rw, wc, x, rx, rwx or xwc, optionally with +guard, "
  .. "+nocache or +writecombine; filters also take readable, writable or executable"

--- The PAGE_* number for a protection string, or an integer as it is.
-- Raises an argument error (#n of fname) for anything else.
function protect.value(p, n, fname)
  n, fname = n or 1, fname or "protect_value"
  if type(p) == "number" then
    local v = check.integer(p, n, fname, "protection")
    if v < 0 or v > 0xFFFFFFFF then
      check.argerror(n, fname, "protection must be a 32-bit PAGE_* value")
    end
    return v
  end
  if type(p) ~= "string" then
    check.argerror(n, fname, "protection must be a string or a PAGE_* number, got " .. type(p))
  end
  local base, rest = p:match("^(%w+)(.*)$")
  local v = base and base_values[base]
  if v then
    for m in rest:gmatch("%+(%w+)") do
      local mv = modifier_values[m]
      if not mv then v = nil break end
      v = v | mv
    end
    -- everything after the base must have been "+modifier" tokens
    if v and rest:gsub("%+%w+", "") ~= "" then v = nil end
  end
  if not v then
    check.argerror(n, fname, ("unknown protection '%s' (expected %s)"):format(p, EXPECTED))
  end
  return v
end

local named = {} -- name by value, for the values seen: walks name every region

--- The canonical string for a PAGE_* number; nil for 0 (reserved and free
-- pages have none); "0x..." for a value outside the known set.
function protect.name(v)
  if v == 0 then return nil end
  if named[v] then return named[v] end
  local name = base_names[v & 0xFF]
  if not name then return ("0x%x"):format(v) end
  local rest = v & ~0xFF
  for _, m in ipairs(modifiers) do
    if rest & m[2] ~= 0 then
      name = name .. "+" .. m[1]
      rest = rest & ~m[2]
    end
  end
  if rest ~= 0 then return ("0x%x"):format(v) end
  named[v] = name
  return name
end

-- The groups a filter may name (scans, p:regions): the base protections
-- with that access. A Windows program's .data is wc, which "rw" misses.
local GROUPS = {
  readable = { "r", "rw", "wc", "rx", "rwx", "xwc" },
  writable = { "rw", "wc", "rwx", "xwc" },
  executable = { "x", "rx", "rwx", "xwc" },
}

--- The set of canonical protection names that opt (a protection, a group
-- name, or a list of them) names, for argument n of fname.
function protect.set(opt, n, fname)
  local set = {}
  for _, s in ipairs(type(opt) == "table" and opt or { opt }) do
    if GROUPS[s] then
      for _, name in ipairs(GROUPS[s]) do set[name] = true end
    else
      set[protect.name(protect.value(s, n, fname))] = true
    end
  end
  return set
end

local writable = { [0x04] = true, [0x08] = true, [0x40] = true, [0x80] = true }
local made_writable = { [0x01] = 0x04, [0x02] = 0x04, [0x10] = 0x40, [0x20] = 0x40 }

--- For a forced write: nil if pages with protection v are writable, else
-- the writable protection to use for the write (guard dropped, the
-- caching modifiers kept).
function protect.for_write(v)
  local base = v & 0xFF
  if writable[base] then return nil end
  return (made_writable[base] or 0x04) | (v & 0x600)
end

return protect
