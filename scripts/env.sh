# Shared settings for the project's scripts: sourced, never run.
# ROOT is the repository; everything built or downloaded lives under BUILD,
# which git ignores.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/build"
WIN="$BUILD/windows"

export WINEPREFIX="$WIN/prefix"
export WINEDEBUG=-all
# No Mono/Gecko installers, no debugger (a crash must exit non-zero, not
# print a backtrace and exit 0), no menu entries.
export WINEDLLOVERRIDES='mscoree,mshtml=;winedbg.exe=d;winemenubuilder.exe=d'

# Lua paths for the Windows interpreter. LUA_PATH_5_4 and LUA_CPATH_5_4 (not
# LUA_PATH): Wine passes the whole Unix environment through, and a Linux
# LUA_PATH must not leak into the Windows Lua.
win_lua_env() {
  local z="Z:$ROOT" s="Z:/usr/share/lua/5.4"
  export LUA_PATH_5_4="$z/lua/?.lua;$z/lua/?/init.lua;$z/?.lua;$z/?/init.lua;$s/?.lua;$s/?/init.lua"
  export LUA_CPATH_5_4="Z:$WIN/lib/?.dll"
}

# Lua paths for the native lua5.4; $1 is the folder of the C modules.
linux_lua_env() {
  export LUA_PATH_5_4="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;$ROOT/?.lua;$ROOT/?/init.lua;;"
  export LUA_CPATH_5_4="$1/?.so;;"
}
