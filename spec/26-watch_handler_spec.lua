-- The bytes of the watch handler that lua/rmem/watch.lua writes into a
-- Windows target are what its source, src/watch_handler_x64.s, assembles
-- to: checked natively where binutils for x86-64 are installed (MinGW-w64's,
-- or GNU as and objcopy configured for x86-64), pending elsewhere.
local helpers = require "spec.helpers"
local watch = require "rmem.watch"

--- Runs cmd in sh, outside the sanitizer that scripts/busted-linux preloads
-- (binutils' leaks would fail it).
local function succeeds(cmd)
  return os.execute(("env -u LD_PRELOAD sh -c %q >/dev/null 2>&1"):format(cmd)) == true
end

--- The assembler and objcopy to use, or nil and why not.
local function binutils()
  if not helpers.linux then return nil, "native only" end
  if succeeds("command -v x86_64-w64-mingw32-as && command -v x86_64-w64-mingw32-objcopy") then
    return "x86_64-w64-mingw32-as", "x86_64-w64-mingw32-objcopy"
  end
  if succeeds("command -v objcopy && as --version | grep -q x86_64") then return "as", "objcopy" end
  return nil, "no x86-64 assembler"
end

--- The .text of the source assembled (without the section's padding).
local function assemble(as, objcopy, source)
  local obj, bin = os.tmpname(), os.tmpname()
  local ok = succeeds(("%s -o %q %q && %s -O binary -j .text %q %q"):format(as, obj, source, objcopy,
    obj, bin))
  local f = ok and io.open(bin, "rb")
  local bytes = f and f:read("a")
  if f then f:close() end
  os.remove(obj)
  os.remove(bin)
  assert(bytes, "the handler's source did not assemble")
  return (bytes:gsub("\x90+$", "")) -- COFF pads .text with nops to 16 bytes
end

describe("the watch handler", function()
  local as, objcopy = binutils()
  local case = as and it or function(name) pending(name .. " (" .. objcopy .. ")") end
  case("is the bytes src/watch_handler_x64.s assembles to", function()
    local built = assemble(as, objcopy, helpers.root .. "/src/watch_handler_x64.s")
    local used = watch._HANDLER
    local at = 1
    while at <= #built and built:byte(at) == used:byte(at) do at = at + 1 end
    assert.is_true(built == used, ("lua/rmem/watch.lua's %d bytes differ from the source's %d at "
      .. "offset %d: regenerate them (the .s says how)"):format(#used, #built, at - 1))
    assert.is_true(#used <= 512, "the handler runs into its data (at +512)")
  end)
end)
