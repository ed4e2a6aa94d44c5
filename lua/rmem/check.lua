--- Argument checks for the rmem layer. A bad argument raises a Lua error
-- string, "bad argument #N to 'fname' (...)", located at the user's line
-- (the first caller outside lua/rmem/).
local check = {}

local maxinteger = math.maxinteger

-- rmem's own files: every module lives in the folder of this one.
local own = debug.getinfo(1, "S").source:match("^(@.*[/\\])check%.lua$") or "@rmem/"

--- The first Lua function outside rmem's files, counting up from the
-- caller of this function's caller (C functions such as pcall are passed
-- over): its level counted from that caller, and the outermost rmem
-- function below it, whose public name (`names`) the user called.
local names = setmetatable({}, { __mode = "k" })
local function user_frame()
  local level, outer = 3, nil
  while true do
    local info = debug.getinfo(level, "Sf")
    if info == nil then return nil, outer end
    if info.what ~= "C" then
      if info.source:sub(1, #own) ~= own then return level - 1, outer end
      outer = info.func
    end
    level = level + 1
  end
end

--- The user's `file:line` that called into rmem, or nil (no such frame).
function check.where()
  local level = user_frame()
  local info = level and debug.getinfo(level, "Sl")
  if info and info.currentline > 0 then
    return ("%s:%d"):format(info.short_src, info.currentline)
  end
  return nil
end

--- Raises "bad argument #n to 'fname' (msg)" at the user's line; fname is
-- the public method the user called where the check runs inside another.
function check.argerror(n, fname, msg)
  local level, outer = user_frame()
  fname = outer and names[outer] or fname
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), level or 1)
end

--- The error for a method called with a dot instead of the colon.
function check.self_error(class, var, name, self)
  local _, outer = user_frame()
  name = outer and names[outer] or name
  check.argerror(1, name, ("%s expected, got %s: call it with a colon, %s:%s(...)")
    :format(class.__name, type(self), var, name))
end

local function pass(...) return ... end

--- Wraps every method of class (names not starting with "_", none of
-- `skip`) so that a call with a dot for the colon (p.read_i32(addr)) says
-- so, and records each method's name for argerror. The methods in `inline`
-- (the hot paths) are not wrapped: they check their self themselves.
function check.methods(class, var, skip, inline)
  for name, f in pairs(class) do
    if type(f) == "function" and not name:find("^_") and not skip[name] then
      names[f] = name
      if not inline[name] then
        local function method(self, ...)
          if getmetatable(self) ~= class then check.self_error(class, var, name, self) end
          return pass(f(self, ...)) -- (not a tail call: this frame names the method)
        end
        names[method] = name
        class[name] = method
      end
    end
  end
end

--- The error for a method called on an object that cannot serve it (a
-- closed one), worded as Lua words its own: "calling 'f' on bad self".
function check.selferror(fname, msg)
  error(("calling '%s' on bad self (%s)"):format(fname, msg), user_frame() or 1)
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

--- A non-negative integer (what: the argument's name in the message).
function check.nonneg(v, n, fname, what)
  local i = check.integer(v, n, fname, what)
  if i < 0 then
    check.argerror(n, fname, ("%s must not be negative, got %d"):format(what, i))
  end
  return i
end

function check.address(v, n, fname)
  return check.nonneg(v, n, fname, "address")
end

function check.size(v, n, fname)
  return check.nonneg(v, n, fname, "size")
end

--- A range [address, address + size): both valid and not wrapping. `what`
-- names the first argument ("address" unless told).
function check.range(address, size, n, fname, what)
  local a = check.nonneg(address, n, fname, what or "address")
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
