--- Many values at once and values that hold: p:read_many (one batched
-- read for a list of addresses), rmem.buffer with p:read_into and p:dump
-- (large reads without a Lua string), p:freeze (a value rewritten from a
-- thread of the host's own) and rmem.sleep.
local core = require "rmem.core"
local check = require "rmem.check"
local Error = require "rmem.error"
local typed = require "rmem.typed"

local many = {}

local FORMATS = typed.formats
local BUFFER_META = getmetatable(core.buffer(0))
local DUMP_CHUNK = 1 << 20
local INTERVAL_MAX = 0x7FFFFFFF

--- A type name, with ptr resolved for p: the name the core knows.
local function type_of(p, name, n, fname)
  if name == "ptr" then return p.bits == 32 and "u32" or "u64" end
  if type(name) ~= "string" or not FORMATS[name] then
    check.argerror(n, fname, ("unknown type '%s' (u8, u16, u32, u64, i8, i16, i32, i64, f32, f64 "
      .. "or ptr)"):format(tostring(name)))
  end
  return name
end

--- A new buffer of n zero bytes.
function many.buffer(n)
  return core.buffer(check.size(n, 1, "buffer"))
end

--- Sleeps ms milliseconds without using a CPU; freezes go on meanwhile.
function many.sleep(ms)
  local n = check.integer(ms, 1, "sleep", "ms")
  if n < 0 or n > INTERVAL_MAX then
    check.argerror(1, "sleep", ("ms must be 0 to %d, got %d"):format(INTERVAL_MAX, n))
  end
  core.sleep(n)
end

--- p:read_many(list [, type]): the values of type at the addresses in list,
-- or with a size (or no type and { address, size } entries) byte strings;
-- an entry that cannot be read is false.
local function read_many(p, list, kind)
  local h = p._handle(p, "read_many")
  if type(list) ~= "table" then
    check.argerror(1, "read_many", "list must be a table, got " .. type(list))
  end
  if type(kind) == "string" then
    kind = type_of(p, kind, 2, "read_many")
  elseif kind ~= nil then
    kind = check.size(kind, 2, "read_many")
  end
  -- the entries are checked in C, as they are read: its argument error is
  -- raised again at the user's line
  local ok, values, msg, code = pcall(h.read_many, h, list, kind)
  if not ok then
    local why = type(values) == "string" and values:match("^bad argument #%d+ to '[^']*' %((.*)%)$")
    if why then check.argerror(1, "read_many", why) end
    error(values, 0)
  end
  if not values then p._fail(p, "read_many", msg, code) end
  return values
end

--- Checks read_into's arguments; returns the address, size and offset.
local function into_args(buf, address, n, offset)
  if getmetatable(buf) ~= BUFFER_META then
    check.argerror(1, "read_into", "buf must be an rmem.buffer, got " .. type(buf))
  end
  local a, size = check.range(address, n, 2, "read_into")
  local off = offset == nil and 0 or check.nonneg(offset, 4, "read_into", "offset")
  if off > #buf or size > #buf - off then
    check.argerror(3, "read_into", ("buffer too small: %d bytes at offset %d, the buffer has %d")
      :format(size, off, #buf))
  end
  return a, size, off
end

--- p:read_into(buf, address, n [, offset]): reads n bytes into buf at
-- offset (0); returns n. A partial read raises, with e.bytes_done.
local function read_into(p, buf, address, n, offset)
  local h = p._handle(p, "read_into", address)
  local a, size, off = into_args(buf, address, n, offset)
  local got, msg, code, done = h:read_into(buf, a, size, off)
  if not got then p._fail(p, "read_into", msg, code, a, size, { bytes_done = done }) end
  return got
end

--- p:dump(address, size, path): saves the memory to a file, a chunk at a
-- time; returns size. A failure removes the file it was writing.
local function dump(p, address, size, path)
  local h = p._handle(p, "dump", address)
  local a, n = check.range(address, size, 1, "dump")
  if type(path) ~= "string" then check.argerror(3, "dump", "path must be a string, got " .. type(path)) end
  local f, why = io.open(path, "wb")
  if not f then
    error(Error.new { op = "dump", name = "FILE_ERROR", pid = p.pid, address = a, size = n,
      message = why .. ".", hint = "the path must name a file that can be written" }, 0)
  end
  local buf, done = core.buffer(math.min(n, DUMP_CHUNK)), 0
  local ok, err = pcall(function()
    while done < n do
      local k = math.min(DUMP_CHUNK, n - done)
      local got, msg, code, partial = h:read_into(buf, a + done, k, 0)
      if not got then
        p._fail(p, "dump", msg, code, a + done, k, { bytes_done = done + partial })
      end
      local written, werr = f:write(buf:tostring(1, k))
      if not written then
        error(Error.new { op = "dump", name = "FILE_ERROR", pid = p.pid, address = a, size = n,
          message = tostring(werr) .. ".", bytes_done = done }, 0)
      end
      done = done + k
    end
  end)
  f:close()
  if not ok then
    os.remove(path)
    error(err, 0)
  end
  return n
end

-- ---- freezes ------------------------------------------------------------------

local Freeze = {}
Freeze.__index = Freeze
Freeze.__name = "rmem.Freeze"

--- "running", "stopped", "exited" (the process has exited), or "failed"
-- and the rmem.Error of the write that failed (the page went away or
-- became read-only).
function Freeze:status()
  local state, msg, code = self._f:status()
  if state == "failed" then
    return state, Error.from_os("freeze", msg, code, { pid = self.process.pid, address = self.address,
      size = self.size })
  end
  return state
end

function Freeze:is_running()
  return self._f:status() == "running"
end

--- Stops writing; the value stays as it is. Idempotent, also after the
-- process has exited.
function Freeze:stop()
  self._f:stop()
end
Freeze.close = Freeze.stop
Freeze.__close = Freeze.stop

function Freeze:__tostring()
  local state, err = self:status()
  return ("rmem.Freeze %s = %s at 0x%X every %d ms (pid %d, %s%s)"):format(self.type,
    tostring(self.value), self.address, self.interval, self.process.pid, state,
    err and ": " .. err.name or "")
end

local FREEZE_OPTS = { interval = true }

--- p:freeze(address, type, value [, { interval = ms }]) -> a Freeze that
-- writes the value every interval ms (10) until stopped, closed, collected,
-- or the process exits. The first write happens here: an address that
-- cannot be written raises at once.
local function freeze(p, address, type_name, value, opts)
  local h = p._handle(p, "freeze", address)
  local a = check.address(address, 1, "freeze")
  local name = type_of(p, type_name, 2, "freeze")
  if type(value) ~= "number" then
    check.argerror(3, "freeze", "value must be a number, got " .. type(value))
  end
  local fits, bytes = pcall(string.pack, FORMATS[name], value)
  if not fits then
    check.argerror(3, "freeze", ("%s does not fit in %s"):format(tostring(value), type_name))
  end
  opts = check.options(opts, 4, "freeze", FREEZE_OPTS)
  local interval = 10
  if opts.interval ~= nil then
    interval = check.integer(opts.interval, 4, "freeze", "interval")
    if interval < 1 or interval > INTERVAL_MAX then
      check.argerror(4, "freeze", ("interval must be 1 to %d ms, got %d"):format(INTERVAL_MAX, interval))
    end
  end
  check.range(a, #bytes, 1, "freeze")
  local n, msg, code, done = h:write(a, bytes)
  if not n then p._fail(p, "freeze", msg, code, a, #bytes, { bytes_done = done }) end
  local f
  f, msg, code = h:freeze(a, bytes, interval)
  if not f then p._fail(p, "freeze", msg, code, a, #bytes) end
  local obj = setmetatable({ process = p, address = a, size = #bytes, type = type_name, value = value,
    interval = interval, _f = f }, Freeze)
  local set = rawget(p, "_freezes")
  if not set then
    set = setmetatable({}, { __mode = "k" })
    p._freezes = set
  end
  set[obj] = true
  return obj
end

function many.install(Process)
  Process.read_many = read_many
  Process.read_into = read_into
  Process.dump = dump
  Process.freeze = freeze
  -- a process stops its freezes before its handle closes
  local close = Process.close
  function Process:close()
    for f in pairs(rawget(self, "_freezes") or {}) do f:stop() end
    return close(self)
  end
  Process.__close = Process.close
end

return many
