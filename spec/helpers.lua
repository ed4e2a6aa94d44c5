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
helpers.testproc = testproc

--- The executable names the specs see: the target's and the host's.
helpers.target_name = helpers.windows and "rmem-target.exe" or "rmem-target"
helpers.host_name = helpers.windows and "lua.exe" or "lua5.4"

--- Wine's version when the tests run under Wine, else nil: a few Win32
-- behaviours differ there, and the specs that meet them say so.
helpers.wine = testproc.wine_version()

-- The Win32 error names the specs expect, and what the Linux backend gives
-- for the same failure (the same meaning, errno-based codes).
local linux_errors = {
  ERROR_INVALID_PARAMETER = { "EINVAL", 22 },
  ERROR_INVALID_ADDRESS = { "EFAULT", 14 },
  ERROR_ACCESS_DENIED = { "EACCES", 13 },
  ERROR_PARTIAL_COPY = { "EFAULT", 14 },
  ERROR_NOACCESS = { "EFAULT", 14 },
}
local windows_codes = {
  ERROR_INVALID_PARAMETER = 87, ERROR_INVALID_ADDRESS = 487, ERROR_ACCESS_DENIED = 5,
  ERROR_PARTIAL_COPY = 299, ERROR_NOACCESS = 998,
}

--- This platform's name for a Win32 error name.
function helpers.name(win_name)
  return helpers.windows and win_name or linux_errors[win_name][1]
end

--- This platform's code for a Win32 error name.
function helpers.code(win_name)
  return helpers.windows and windows_codes[win_name] or linux_errors[win_name][2]
end

--- The error of a call on a process that has exited, and of opening a pid
-- that does not exist.
helpers.exited_name = helpers.windows and "ERROR_ACCESS_DENIED" or "ESRCH"
helpers.no_pid_name = helpers.windows and "ERROR_INVALID_PARAMETER" or "ESRCH"

--- The target program the tests build.
helpers.target_path = helpers.windows and helpers.root .. "/build/windows/bin/rmem-target.exe"
  or helpers.root .. "/build/linux/rmem-target"

--- The library examples/payload.c, built for the target (bits = 32: Linux's
-- 32-bit one), as the target's platform writes its path.
function helpers.payload_path(bits)
  if helpers.windows then
    return helpers.native_path(helpers.root .. "/build/windows/bin/rmem-payload.dll")
  end
  return helpers.root .. (bits == 32 and "/build/linux/rmem-payload32.so" or "/build/linux/rmem-payload.so")
end

--- A path as the target's platform writes it.
function helpers.native_path(path)
  return helpers.windows and path:gsub("/", "\\") or path
end

local function start(path, opts)
  local args = {}
  if opts.threads then args = { "--threads", tostring(opts.threads) } end
  if opts.seccomp then args[#args + 1] = "--seccomp" end
  if opts.tick then args[#args + 1] = "--tick" end
  if opts.chain then args[#args + 1] = "--chain" end
  if opts.calls then
    args[#args + 1] = "--calls"
    args[#args + 1] = tostring(opts.calls)
  end
  if opts.countdown then
    args[#args + 1] = "--countdown"
    args[#args + 1] = helpers.native_path(opts.countdown)
  end
  if opts.die_after then
    args[#args + 1] = "--die-after"
    args[#args + 1] = tostring(opts.die_after)
  end
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  if helpers.windows then
    return testproc.start(table.concat({ '"' .. helpers.native_path(path) .. '"', table.unpack(args) }, " "))
  end
  return testproc.start(path, table.unpack(args))
end

--- Starts a target process and returns { pid = ..., stop = function }
-- once the target has finished starting and is idle. On Windows it runs
-- in a job object that kills it when the test run ends; on Linux it gets
-- SIGKILL when the host dies. opts (Linux): bits = 32 for the 32-bit
-- target, threads = N for N more threads, seccomp = true for a target
-- under a seccomp filter; tick = true (both) for a thread calling tick()
-- every millisecond (examples/code_cave.lua); die_after = ms (both) for a
-- target killed that long after it started; chain = true (both) for a
-- static -> heap -> heap -> value chain (examples/target.c --chain); countdown
-- = path (both) for a target that writes the address of an int it decrements
-- every 10 ms to that file;
-- calls = N (both) for N threads calling the target's game functions in a
-- loop; path = another build of the target; args = { ... } (both) for more
-- of examples/target.c's options. On Linux the object also has
-- proc, testproc's own handle (send, wait, trace, untrace).
function helpers.start_target(opts)
  opts = opts or {}
  local path = opts.path or opts.bits == 32 and helpers.root .. "/build/linux/rmem-target32"
    or helpers.target_path
  local proc = start(path, opts)
  local t = { pid = proc:pid(), proc = proc }
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

--- The host's open handles (file descriptors on Linux), once the collector
-- has closed whatever is unreachable: leak checks compare it. (A host always
-- holds some: a count of 0 is a counter that cannot see a leak, as Wine's
-- GetProcessHandleCount was.)
function helpers.handle_count()
  collectgarbage()
  collectgarbage()
  local n = testproc.handle_count()
  assert(n > 0, "the host's handle count reads 0")
  return n
end

--- The number of regions of p that are not free: leak checks compare it.
function helpers.mapped_count(p)
  local n = 0
  for _ in p:regions { state = { "commit", "reserve" } } do n = n + 1 end
  return n
end

--- The whole of a file (fails if it cannot be opened).
function helpers.read_file(path)
  return assert(require("rmem.tools").read_file(path), path)
end

--- Calls fn and returns the error it raised; fails if it did not raise.
function helpers.error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error, but the call succeeded")
  return err
end

--- describe(name, body) once per p:watch method: on Linux "perf" and
-- "ptrace" (RMEM_WATCH_METHOD set meanwhile, named in the block), elsewhere
-- once with method false.
function helpers.describe_watch_methods(name, body)
  local busted = require "busted"
  for _, method in ipairs(helpers.linux and { "perf", "ptrace" } or { false }) do
    busted.describe(name .. (method and " (" .. method .. ")" or ""), function()
      if method then
        busted.setup(function() helpers.testproc.setenv("RMEM_WATCH_METHOD", method) end)
        busted.teardown(function() helpers.testproc.setenv("RMEM_WATCH_METHOD", nil) end)
      end
      body(method)
    end)
  end
end

--- The functions and data of a build of the target (a name in build/linux/
-- or build/windows/bin/, e.g. "rmem-target"), from the symbol table the
-- Makefile writes with nm: two tables name -> offset from the module's base.
function helpers.target_symbols(build)
  local bin = helpers.windows and helpers.root .. "/build/windows/bin/" or helpers.root .. "/build/linux/"
  local text, image_base = helpers.read_file(bin .. build .. ".syms"), 0
  if helpers.windows then -- nm gives addresses at the PE's ImageBase
    local pe = helpers.read_file(bin .. build .. ".exe")
    image_base = string.unpack("<I8", pe, string.unpack("<I4", pe, 0x3C + 1) + 24 + 24 + 1)
  end
  local funcs, data = {}, {}
  for a, kind, name in text:gmatch("(%x+) (%a) ([%w_%.]+)") do
    local v = tonumber(a, 16) - image_base
    if kind == "T" or kind == "t" then funcs[name] = v
    elseif kind == "D" or kind == "d" or kind == "B" or kind == "b" then data[name] = v end
  end
  return funcs, data
end

--- The address of examples/target.c's watched variable's record in p (its
-- 16-byte magic "rmem-watched-var", 16-byte aligned; the value follows at
-- +16, its write count at +24, the writer's and reader's addresses at +32, +40).
function helpers.watched_record(p)
  local magic
  for _, at in ipairs(p:scan_all { bytes = "rmem-watched-var", mask = ("x"):rep(16) }) do
    if at % 16 == 0 then magic = at end
  end
  return assert(magic, "the watched variable was not found")
end

--- Linux: the pid tracing the process (0: none).
function helpers.tracer_of(pid)
  return tonumber(helpers.read_file("/proc/" .. pid .. "/status"):match("TracerPid:%s*(%d+)"))
end

return helpers
