--- rmem.Region: an allocation that releases itself exactly once, by free(),
-- by leaving a `<close>` scope, or by the garbage collector, whichever comes
-- first (unless keep() was called). Methods take offsets from r.address and
-- are bounds-checked against the region.
local Error = require "rmem.error"
local check = require "rmem.check"
local registry = require "rmem.live"

local MEM_RELEASE = 0x8000

local Region = {}
Region.__index = Region
Region.__name = "rmem.Region"

function Region.new(process, address, size)
  return registry.track(setmetatable({ process = process, address = address, size = size }, Region))
end

-- Called by the process when this allocation is released by any path.
function Region:_mark_freed()
  self._freed = true
end

function Region:is_freed()
  return self._freed == true
end

--- The region's address for a live region, or the region-freed error.
local function live(r, op)
  if r._freed then
    error(Error.new { op = op, name = "REGION_FREED", pid = r.process.pid, address = r.address,
      message = "the region was already freed." }, 0)
  end
  return r.address
end

--- The absolute address of [offset, offset + size) inside r.
local function span(r, op, offset, size, n)
  local base = live(r, op)
  local o, s = check.range(offset, size, n, op, "offset")
  if o + s > r.size then
    check.argerror(n + 1, op, ("range +0x%x..+0x%x is outside the region (size 0x%x)")
      :format(o, o + s, r.size))
  end
  return base + o, s
end

Region._span = span -- for the methods other modules add

function Region:read(offset, n)
  return self.process:read(span(self, "read", offset, n, 1))
end

function Region:write(offset, bytes, opts)
  if type(bytes) ~= "string" then
    check.argerror(2, "write", "bytes must be a string, got " .. type(bytes))
  end
  local a = span(self, "write", offset, #bytes, 1)
  return self.process:write(a, bytes, opts)
end

function Region:commit(offset, size, prot)
  local a, s = span(self, "commit", offset, size, 1)
  return self.process:commit(a, s, prot)
end

--- r:decommit() decommits the whole region; r:decommit(offset, size) a part.
function Region:decommit(offset, size)
  if offset == nil and size == nil then
    return self.process:decommit(live(self, "decommit"), 0)
  end
  return self.process:decommit(span(self, "decommit", offset, size, 1))
end

function Region:reset(offset, size)
  return self.process:reset(span(self, "reset", offset, size, 1))
end

--- r:protect(prot) for the whole region, r:protect(offset, size, prot) for a
-- part; returns the old protection of the first page.
function Region:protect(offset, size, prot)
  if size == nil and prot == nil then
    return self.process:protect(live(self, "protect"), self.size, offset)
  end
  local a, s = span(self, "protect", offset, size, 1)
  return self.process:protect(a, s, prot)
end

function Region:query(offset)
  local base = live(self, "query")
  local o = check.size(offset or 0, 1, "query")
  if o >= self.size then
    check.argerror(1, "query", ("offset 0x%x is outside the region (size 0x%x)"):format(o, self.size))
  end
  return self.process:query(base + o)
end

--- Releases the allocation. A second free() is an error, and never touches
-- an allocation that later reused the address.
function Region:free()
  self.process:free(live(self, "free"))
end

--- The region no longer frees itself (free() still does); returns the address.
function Region:keep()
  self._kept = true
  return self.address
end

function Region:__close()
  if not self._freed and not self._kept then self:free() end
end

-- For the rmem command's exit line (rmem.live): a region of a closed
-- process stays in the target, as a kept one does.
function Region:_at_exit()
  if self._freed then return nil end
  return (self._kept or not self.process._h) and "keep" or "undo"
end

function Region:__gc()
  local h = self.process._h
  if not self._freed and not self._kept and h then
    self._freed = true
    -- never raises: the target may have exited or released it itself
    pcall(h.free, h, self.address, 0, MEM_RELEASE)
  end
end

function Region:__tostring()
  local state = self._freed and ", freed" or self._kept and ", kept" or ""
  return ("rmem.Region 0x%016X +0x%X (pid %d%s)"):format(self.address, self.size,
    self.process.pid, state)
end

return Region
