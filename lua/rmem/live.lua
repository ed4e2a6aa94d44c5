--- The rmem objects that change a target until they are undone (regions,
-- patches): the rmem command lists them at exit and undoes them, newest
-- first, so that a patch that jumps into a region goes before the region.
-- A weak table: tracking never keeps an object alive.
local live = {}

local objects = setmetatable({}, { __mode = "k" })
local serial = 0

--- Tracks obj, which has `_at_exit()` (returns "undo", "keep" when it stays
-- in the target, or nil when there is nothing left to do) and `__gc` (undoes it, never raises).
function live.track(obj)
  serial = serial + 1
  objects[obj] = serial
  return obj
end

--- The tracked objects that still change a target, newest first: two lists,
-- those to undo and those that stay (kept, or of a process closed already).
function live.pending()
  local all = {}
  for obj, n in pairs(objects) do all[#all + 1] = { obj = obj, n = n } end
  table.sort(all, function(a, b) return a.n > b.n end)
  local undo, keep = {}, {}
  for _, e in ipairs(all) do
    local fate = e.obj:_at_exit()
    if fate == "undo" then undo[#undo + 1] = e.obj elseif fate == "keep" then keep[#keep + 1] = e.obj end
  end
  return undo, keep
end

return live
