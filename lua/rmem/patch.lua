--- Patches that undo themselves, and scoped protection changes.
local core = require "rmem.core"
local check = require "rmem.check"
local Error = require "rmem.error"
local registry = require "rmem.live"

local Patch = {}
Patch.__index = Patch
Patch.__name = "rmem.Patch"

--- Writes bytes at address (forcing protection where needed) and returns a
-- Patch that restores the original bytes on restore(), on leaving a
-- `<close>` scope or when collected, unless keep() was called.
local function patch(p, address, bytes)
  local a = check.address(address, 1, "patch")
  if type(bytes) ~= "string" or #bytes == 0 then
    check.argerror(2, "patch", "bytes must be a non-empty string")
  end
  local original = p:read(a, #bytes)
  p:write(a, bytes, { force = true })
  return registry.track(setmetatable({ process = p, address = a, original = original, bytes = bytes }, Patch))
end

--- Puts the original bytes back (once).
function Patch:restore()
  if self._done then
    error(Error.new { op = "restore", name = "PATCH_DONE", pid = self.process.pid,
      address = self.address, message = "the patch was already restored or kept.",
      hint = "a patch is restored at most once" }, 0)
  end
  self.process:write(self.address, self.original, { force = true })
  self._done = true
end

--- The patched bytes stay; returns the address.
function Patch:keep()
  self._done, self._kept = true, true
  return self.address
end

function Patch:is_active()
  return not self._done
end

function Patch:__close()
  if not self._done then self:restore() end
end

-- For the rmem command's exit line (rmem.live): a patch of a closed
-- process stays in the target, as a kept one does.
function Patch:_at_exit()
  if self._kept or (not self._done and not self.process._h) then return "keep" end
  return not self._done and "undo" or nil
end

function Patch:__gc()
  if not self._done and self.process._h then
    self._done = true
    pcall(self.process.write, self.process, self.address, self.original, { force = true })
  end
end

function Patch:__tostring()
  return ("rmem.Patch 0x%X +%d (pid %d%s)"):format(self.address, #self.bytes, self.process.pid,
    self._done and ", done" or "")
end

--- Sets prot on [address, address + size), calls fn(), and puts back the
-- exact previous protection of every page, also if fn raises; returns
-- fn's results.
local function with_protection(p, address, size, prot, fn)
  local a, n = check.range(address, size, 1, "with_protection")
  if type(fn) ~= "function" then
    check.argerror(4, "with_protection", "fn must be a function, got " .. type(fn))
  end
  local saved, x, stop = {}, a - a % core.page_size, a + n
  while x < stop do
    local info = p:query(x)
    local piece = math.min(info.base + info.size, stop) - x
    saved[#saved + 1] = { x, piece, info.protect }
    x = x + piece
  end
  p:protect(a, n, prot)
  local results = table.pack(pcall(fn))
  -- every piece is restored, even after one fails (fn may have freed it)
  local restored, err = true, nil
  for i = #saved, 1, -1 do
    local s = saved[i]
    if s[3] then
      local ok, e = pcall(p.protect, p, s[1], s[2], s[3])
      if not ok and restored then restored, err = false, e end
    end
  end
  if not results[1] then error(results[2], 0) end
  if not restored then error(err, 0) end
  return table.unpack(results, 2, results.n)
end

return {
  install = function(Process)
    Process.patch = patch
    Process.with_protection = with_protection
  end,
}
