--- Argument checks for the rmem layer. A bad argument raises a Lua error
-- string, "bad argument #N to 'fname' (...)", located at the user's line
-- (the first caller outside lua/rmem/).
local check = {}

local maxinteger = math.maxinteger

--- The stack level of the first function outside the rmem package, for
-- error(): the checks run at different depths below the public functions.
local function user_level()
  local level = 3 -- the caller of this function's caller
  while true do
    local info = debug.getinfo(level, "S")
    if info == nil then return 1 end
    if not info.source:match("[/\\]rmem[/\\][%w_]+%.lua$") then
      return level - 1 -- error() counts from its caller
    end
    level = level + 1
  end
end

function check.argerror(n, fname, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), user_level())
end

local function describe(v)
  if type(v) == "number" then return tostring(v) end
  return type(v)
end

--- An integer: floats with an exact integer value are accepted (4.0), not
-- 3.5, NaN or infinities; strings are not numbers here.
function check.integer(v, n, fname, what)
  local i = math.type(v) == "float" and math.tointeger(v) or v
  if math.type(i) ~= "integer" then
    check.argerror(n, fname, ("%s must be an integer, got %s"):format(what, describe(v)))
  end
  return i
end

local function nonneg(v, n, fname, what)
  local i = check.integer(v, n, fname, what)
  if i < 0 then
    check.argerror(n, fname, ("%s must not be negative, got %d"):format(what, i))
  end
  return i
end

function check.address(v, n, fname)
  return nonneg(v, n, fname, "address")
end

function check.size(v, n, fname)
  return nonneg(v, n, fname, "size")
end

--- A range [address, address + size): both valid and not wrapping. `what`
-- names the first argument ("address" unless told).
function check.range(address, size, n, fname, what)
  local a = nonneg(address, n, fname, what or "address")
  local s = check.size(size, n + 1, fname)
  if s > maxinteger - a then
    check.argerror(n + 1, fname, "range wraps past the end of the address space")
  end
  return a, s
end

--- An options table (or nil) whose keys are all in `known`.
function check.options(opts, n, fname, known)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    check.argerror(n, fname, "options must be a table, got " .. type(opts))
  end
  for k in pairs(opts) do
    if not known[k] then
      check.argerror(n, fname, ("unknown option '%s'"):format(tostring(k)))
    end
  end
  return opts
end

return check
