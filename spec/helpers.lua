--- Test helpers: real target processes, and platform-only cases.
--
--   local helpers = require "spec.helpers"
--   local t = helpers.start_target()  -- returns once the target is idle
--   t.pid ; t:stop([exit_code])      -- stop returns once it has exited; twice is fine
local rmem = require "rmem"

local helpers = {}

helpers.platform = rmem.platform
helpers.windows = rmem.platform == "windows"
helpers.linux = rmem.platform == "linux"

-- The repository root, from this file's own path.
local here = debug.getinfo(1, "S").source:match("^@(.*)$")
helpers.root = here:match("^(.*)[/\\]spec[/\\]helpers%.lua$") or "."

local testproc = require "testproc"

--- The executable names the specs see: the target's and the host's.
helpers.target_name = "rmem-target.exe"
helpers.host_name = "lua.exe"

--- Wine's version when the tests run under Wine, else nil: a few Win32
-- behaviours differ there, and the specs that meet them say so.
helpers.wine = testproc.wine_version()

local function target_command()
  local exe = helpers.root .. "/build/windows/bin/rmem-target.exe"
  return '"' .. exe:gsub("/", "\\") .. '"'
end

--- Starts a target process and returns { pid = ..., stop = function }
-- once the target has finished starting and is idle. On Windows it runs
-- in a job object that kills it when the test run ends.
function helpers.start_target()
  local proc = testproc.start(target_command())
  local t = { pid = proc:pid() }
  function t.stop(_, code)
    proc:stop(code)
  end
  return t
end

--- Starts a target and opens it; returns the process and the target.
function helpers.open_target(opts)
  local t = helpers.start_target()
  return rmem.open(t.pid, opts), t
end

--- it() for one platform; elsewhere the case is pending, with the reason.
-- busted's it/pending live in the spec files' environment, not in _G;
-- require("busted") gives them to a module.
local function platform_it(platform)
  return function(name, fn)
    local busted = require "busted"
    if rmem.platform == platform then
      return busted.it(name, fn)
    end
    return busted.pending(name .. " (" .. platform .. " only)")
  end
end
helpers.win_it = platform_it("windows")
helpers.linux_it = platform_it("linux")

--- The state of every page of [address, address + size), as query reports
-- it page by page (Wine may split regions differently from Windows).
function helpers.page_states(p, address, size)
  local states = {}
  for a = address, address + size - 1, rmem.page_size do
    states[#states + 1] = p:query(a).state
  end
  return states
end

--- Calls fn and returns the error it raised; fails if it did not raise.
function helpers.error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error, but the call succeeded")
  return err
end

return helpers
