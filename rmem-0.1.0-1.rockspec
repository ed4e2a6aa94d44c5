rockspec_format = "3.0"
package = "rmem"
version = "0.1.0-1"

source = {
  url = "git+file://.",
  tag = "v0.1.0",
}

description = {
  summary = "Work with the memory of another process from Lua",
  detailed = [[
rmem lets Lua scripts allocate, commit, decommit, release, protect, query,
read and write the memory of another process (VirtualAllocEx / VirtualFreeEx
and friends on Windows; process_vm_readv and ptrace-injected mmap/mprotect/munmap
on Linux), with region objects that release themselves exactly
once and errors that say what went wrong and what to do.]],
  license = "MIT",
  labels = { "memory", "process", "windows", "modding" },
}

dependencies = {
  "lua >= 5.4, < 5.5",
}

supported_platforms = { "windows", "linux" }

-- Capstone 4 for rmem.disasm (p:disasm, p:make_signature, p:hook), found as
-- luasec finds OpenSSL: CAPSTONE_DIR, or CAPSTONE_INCDIR and CAPSTONE_LIBDIR.
external_dependencies = {
  platforms = {
    unix = { CAPSTONE = { header = "capstone/capstone.h", library = "capstone" } },
    windows = { CAPSTONE = { header = "capstone/capstone.h" } },
  },
}

-- The whole modules table for one platform: LuaRocks merges platform
-- overrides key by key, so a per-platform `sources` list would be replaced
-- entry by entry rather than swapped.
local function make_platform(plat)
  local core = {
    windows = {
      sources = { "src/core.c", "src/backend_win.c", "src/scan.c", "src/ptrmap.c", "src/threads_win.c",
        "src/buffer.c", "src/freeze.c", "src/thread_win.c",
        "src/valscan.c", "src/watch_win.c" },
      libraries = { "kernel32", "advapi32" },
      incdirs = { "src" },
    },
    linux = {
      sources = { "src/core.c", "src/backend_linux.c", "src/inject_linux.c", "src/scan.c", "src/ptrmap.c",
        "src/threads_linux.c", "src/buffer.c", "src/freeze.c", "src/thread_linux.c",
        "src/valscan.c", "src/watch_linux.c",
        "src/watch_ptrace_linux.c" },
      libraries = { "pthread" },
      incdirs = { "src" },
    },
  }
  return {
    modules = {
      ["rmem"] = "lua/rmem/init.lua",
      ["rmem.check"] = "lua/rmem/check.lua",
      ["rmem.code"] = "lua/rmem/code.lua",
      ["rmem.error"] = "lua/rmem/error.lua",
      ["rmem.func"] = "lua/rmem/func.lua",
      ["rmem.hook"] = "lua/rmem/hook.lua",
      ["rmem.live"] = "lua/rmem/live.lua",
      ["rmem.many"] = "lua/rmem/many.lua",
      ["rmem.patch"] = "lua/rmem/patch.lua",
      ["rmem.process"] = "lua/rmem/process.lua",
      ["rmem.protect"] = "lua/rmem/protect.lua",
      ["rmem.region"] = "lua/rmem/region.lua",
      ["rmem.ptrscan"] = "lua/rmem/ptrscan.lua",
      ["rmem.remote"] = "lua/rmem/remote.lua",
      ["rmem.repl"] = "lua/rmem/repl.lua",
      ["rmem.scan"] = "lua/rmem/scan.lua",
      ["rmem.tools"] = "lua/rmem/tools.lua",
      ["rmem.typed"] = "lua/rmem/typed.lua",
      ["rmem.valscan"] = "lua/rmem/valscan.lua",
      ["rmem.watch"] = "lua/rmem/watch.lua",
      ["rmem.core"] = core[plat],
      -- a module of its own: rmem.core builds and works without Capstone
      ["rmem.disasm"] = {
        sources = { "src/disasm.c" },
        libraries = { "capstone" },
        incdirs = { "$(CAPSTONE_INCDIR)" },
        libdirs = { "$(CAPSTONE_LIBDIR)" },
      },
    },
  }
end

-- No top-level modules: an override would be merged into it key by key and
-- leave one platform's sources and libraries in the other's build.
build = {
  type = "builtin",
  platforms = {
    windows = make_platform("windows"),
    linux = make_platform("linux"),
  },
  install = {
    bin = { rmem = "scripts/rmem" }, -- the rmem command (a REPL, or a script runner)
  },
  -- docs/ is the API reference (make docs) that `luarocks doc rmem` opens
  copy_directories = { "examples", "docs" },
}

test = {
  type = "busted",
}
