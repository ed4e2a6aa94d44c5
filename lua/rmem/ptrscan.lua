--- Pointer maps and the pointer scan: `p:pointer_map()`, `rmem.load_pointer_map`,
-- `rmem.pointer_scan`. Finding, sorting and searching the pointers is C
-- (src/ptrmap.c); this file picks the memory, names the modules, checks
-- arguments and makes the results readable.
local core = require "rmem.core"
local Error = require "rmem.error"
local check = require "rmem.check"

local ptrscan = {}

local CHUNK = 1 << 20 -- bytes read at a time
local HEADER = "rmem pointer map"
-- where pointers are looked for: readable pages that are writable or part
-- of a module's image (the statics and the heap)
local READABLE = { r = true, rw = true, wc = true, rx = true, rwx = true, xwc = true }
local WRITABLE = { rw = true, wc = true, rwx = true, xwc = true }

local PointerMap = {}
PointerMap.__index = PointerMap
PointerMap.__name = "rmem.PointerMap"

local Chain = {}
Chain.__index = Chain
Chain.__name = "rmem.PointerChain"

--- "game.exe+0x1A2B30 -> 0x48 -> 0x8": the form `p:resolve` takes.
function Chain:__tostring()
  local parts = { ("%s+0x%X"):format(self.module, self.offset) }
  for i, off in ipairs(self.offsets) do parts[i + 1] = ("0x%X"):format(off) end
  return table.concat(parts, " -> ")
end

local function map_of(m, n, fname)
  if getmetatable(m) ~= PointerMap then
    check.argerror(n, fname, "expected a pointer map (p:pointer_map() or "
      .. "rmem.load_pointer_map()), got " .. type(m))
  end
  if not m._m then check.argerror(n, fname, "the pointer map is closed") end
  return m
end

function PointerMap:__tostring()
  if not self._m then return "rmem.PointerMap (closed)" end
  return ("rmem.PointerMap of %s (pid %d, %d-bit): %d pointers, %d modules"):format(
    self.name, self.pid, self.bits, self.count, #self.modules)
end

--- Frees the map's memory at once (the collector would, later).
function PointerMap:close()
  if self._m then
    self._m:close()
    self._m = nil
  end
end
PointerMap.__close = PointerMap.close

--- Writes the map to a file, 16 bytes a pointer, for rmem.load_pointer_map.
function PointerMap:save(path)
  map_of(self, 1, "save")
  if type(path) ~= "string" then check.argerror(1, "save", "path must be a string") end
  local lines = { HEADER, ("process\t%s\t%d"):format(self.name, self.pid) }
  for _, m in ipairs(self.modules) do
    lines[#lines + 1] = ("module\t%s\t%d\t%d\t%d"):format(m.name, m.base, m.size, m.static_end)
  end
  local ok, msg = self._m:save(path, table.concat(lines, "\n"))
  if not ok then
    error(Error.new { op = "save", name = "FILE_ERROR", message = msg .. ".",
      hint = "check the folder exists and is writable" }, 0)
  end
  return true
end

local function new_map(ud, name, pid, modules)
  return setmetatable({ _m = ud, name = name, pid = pid, bits = ud:bits(), count = ud:count(),
    modules = modules }, PointerMap)
end

--- The process's modules, the program first (a modder's chains start in
-- game.exe), then by name, each with static_end: the end of its image,
-- taking in the zero-filled data (.bss) that Linux maps right after a
-- program's file as anonymous memory.
local function statics(p, regions)
  local list = {}
  for _, m in ipairs(p:modules()) do
    local stop = m.base + m.size
    for _, info in ipairs(regions) do
      if info.base == stop and info.type == "private" and WRITABLE[info.protect] then
        stop = info.base + info.size
      end
    end
    list[#list + 1] = { name = m.name, base = m.base, size = m.size, static_end = stop }
  end
  local program = (p.name or ""):lower()
  table.sort(list, function(a, b)
    local pa, pb = a.name:lower() == program, b.name:lower() == program
    if pa ~= pb then return pa end
    if a.name ~= b.name then return a.name < b.name end
    return a.base < b.base
  end)
  return list
end

local MAP_OPTS = { progress = true }

--- Adds the pointers of the process's memory to ud, then finishes it.
local function fill(p, h, ud, regions, progress)
  local sources, total = {}, 0
  for _, info in ipairs(regions) do
    ud:target(info.base, info.base + info.size)
    if READABLE[info.protect] and (WRITABLE[info.protect] or info.type == "image") then
      sources[#sources + 1] = info
      total = total + info.size
    end
  end
  local done, page = 0, core.page_size
  for _, info in ipairs(sources) do
    local stop = info.base + info.size
    for a = info.base, stop - 1, CHUNK do
      local n = math.min(CHUNK, stop - a)
      if not h:pointers(a, n, ud) then
        -- the target exited, or part of the chunk went: the pages that are left
        if not p:is_alive() then p:query(a) end -- raises the exited error
        for x = a, a + n - 1, page do h:pointers(x, page, ud) end
      end
      done = done + n
      if progress then progress(done, total) end
    end
  end
  ud:finish()
end

--- A snapshot of every pointer in the process: each aligned pointer-sized
-- value in writable or image memory that points into a committed region.
-- opts.progress(done, total) is called after each chunk (bytes).
local function pointer_map(p, opts)
  opts = check.options(opts, 1, "pointer_map", MAP_OPTS)
  local progress = opts.progress
  if progress ~= nil and type(progress) ~= "function" then
    check.argerror(1, "pointer_map", "progress must be a function, got " .. type(progress))
  end
  local h = p:_handle("pointer_map")
  local regions = {}
  for info in p:regions { state = "commit" } do regions[#regions + 1] = info end
  local ud = core.ptrmap(p.bits)
  -- a walk that fails (the target exited) gives the map's memory back at once
  local ok, result = pcall(fill, p, h, ud, regions, progress)
  if ok then ok, result = pcall(statics, p, regions) end -- the modules, or the error
  if not ok then
    ud:close()
    error(result, 0)
  end
  return new_map(ud, p.name, p.pid, result)
end

--- Reads a map that PointerMap:save wrote; a file that is not one, or is
-- damaged or truncated, is an rmem.Error named BAD_POINTER_MAP.
function ptrscan.load_pointer_map(path)
  if type(path) ~= "string" then
    check.argerror(1, "load_pointer_map", "path must be a string, got " .. type(path))
  end
  local ud, header = core.ptrmap_load(path)
  -- the map's memory goes back at once with the error
  local function bad(message, hint)
    if ud then ud:close() end
    error(Error.new { op = "load_pointer_map", name = "BAD_POINTER_MAP", message = message,
      hint = hint }, 0)
  end
  local lines = ud and {}
  if ud then for line in (header .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end end
  if not ud or lines[1] ~= HEADER then
    bad((ud and path .. ": not an rmem pointer map" or header) .. ".",
      "the file must be one that map:save() wrote, whole")
  end
  local name, pid = (lines[2] or ""):match("^process\t(.*)\t(%d+)$")
  if not name then bad(("%s: damaged pointer map header (no process line)."):format(path)) end
  local modules = {}
  for i = 3, #lines do
    local mname, base, size, stop = lines[i]:match("^module\t(.*)\t(%d+)\t(%d+)\t(%d+)$")
    if not mname then bad(("%s: damaged module list (line %d)."):format(path, i)) end
    modules[#modules + 1] = { name = mname, base = math.tointeger(base),
      size = math.tointeger(size), static_end = math.tointeger(stop) }
  end
  return new_map(ud, name, math.tointeger(pid), modules)
end

local SCAN_OPTS = { map = true, maps = true, target = true, targets = true, depth = true,
  max_offset = true, limit = true }

--- rmem.pointer_scan{ map = m, target = a | maps = {m1, m2}, targets = {a1, a2},
--   depth = 5, max_offset = 0x1000, limit = 1000 } -> list of chains, each
-- { module, offset, offsets } printing as "game.exe+0x1A2B30 -> 0x48 -> 0x8";
-- shortest first, then those from the program's own module, then by module
-- name and offsets. Every chain resolves to the
-- target in every map. list.truncated is true when a level of the search
-- grew past its cap (4 Mi links) and was cut.
function ptrscan.pointer_scan(opts)
  local F = "pointer_scan"
  if type(opts) ~= "table" then check.argerror(1, F, "expected an options table, got " .. type(opts)) end
  check.options(opts, 1, F, SCAN_OPTS)
  local maps, targets
  if opts.map ~= nil or opts.target ~= nil then
    if opts.maps ~= nil or opts.targets ~= nil then
      check.argerror(1, F, "give map and target, or maps and targets, not both")
    end
    if opts.map == nil or opts.target == nil then
      check.argerror(1, F, "needs map and target, or maps and targets: lists of one length")
    end
    maps, targets = { opts.map }, { opts.target }
  else
    maps, targets = opts.maps, opts.targets
    if type(maps) ~= "table" or type(targets) ~= "table" or #maps == 0 or #maps ~= #targets then
      check.argerror(1, F, "needs map and target, or maps and targets: lists of one length")
    end
  end
  local uds = {}
  for i, m in ipairs(maps) do
    uds[i] = map_of(m, 1, F)._m
    local t = check.address(targets[i], 1, F)
    if t == 0 then check.argerror(1, F, "the target address must not be 0") end
    if m.bits ~= maps[1].bits then
      check.argerror(1, F, ("the maps are of a %d-bit and a %d-bit process"):format(
        maps[1].bits, m.bits))
    end
  end
  local depth = opts.depth == nil and 5 or check.integer(opts.depth, 1, F, "depth")
  if depth < 1 or depth > 12 then
    check.argerror(1, F, ("depth must be 1 to 12, got %d"):format(depth))
  end
  local max_offset = opts.max_offset == nil and 0x1000
    or check.integer(opts.max_offset, 1, F, "max_offset")
  if max_offset < 0 or max_offset > 0xFFFFFFFF then
    check.argerror(1, F, "max_offset must be 0 to 0xFFFFFFFF")
  end
  local limit = opts.limit == nil and 1000 or check.size(opts.limit, 1, F)
  -- modules of the first map, and their bases in each map (by name)
  local mods, static_ranges, bases = maps[1].modules, {}, {}
  for _, m in ipairs(mods) do
    static_ranges[#static_ranges + 1] = m.base
    static_ranges[#static_ranges + 1] = m.static_end
  end
  for i, map in ipairs(maps) do
    local by_name, list = {}, {}
    for _, m in ipairs(map.modules) do
      by_name[m.name] = by_name[m.name] or m.base
    end
    for j, m in ipairs(mods) do list[j] = by_name[m.name] or false end
    bases[i] = list
  end
  local found, truncated = core.ptrscan(uds, targets, static_ranges, bases, depth, max_offset, limit)
  local chains = { truncated = truncated }
  for i, c in ipairs(found) do
    chains[i] = setmetatable({ module = mods[c[1]].name, offset = c[2],
      offsets = { table.unpack(c, 3) } }, Chain)
  end
  return chains
end

function ptrscan.install(Process)
  Process.pointer_map = pointer_map
end

return ptrscan
