/*
 * libFuzzer harness for everything that parses or validates input through
 * Lua: the pattern parser, the protection-string parser, the pointer-chain
 * expression parser, and the argument checks of rmem.core's functions and
 * handle methods (and the Lua layer over them), driven by fuzz/driver.lua
 * against a child process the harness keeps alive. A Lua error that is
 * neither an argument error nor an rmem.Error is a bug: abort().
 *
 * Built with the whole rmem.core linked in; RMEM_ROOT is the repository.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

int luaopen_rmem_core(lua_State *L);

static lua_State *L;
static pid_t child;

static void spawn_child(void) {
  if (child > 0 && waitpid(child, NULL, WNOHANG) == 0)
    return; /* still running */
  /* a clean program, not a fork of this one: an ASan process has terabytes
   * of readable shadow memory that a scan would walk through */
  child = fork();
  if (child == 0) {
    /* dies with the harness, and holds none of its output pipes */
    int null = open("/dev/null", O_RDWR);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    execl("/bin/sleep", "sleep", "1000000", (char *)NULL);
    _exit(127);
  }
}

static void setup(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_rmem_core);
  lua_setfield(L, -2, "rmem.core");
  lua_pop(L, 1);
  lua_getglobal(L, "package");
  lua_pushstring(L, RMEM_ROOT "/lua/?.lua;" RMEM_ROOT "/lua/?/init.lua");
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  if (luaL_dofile(L, RMEM_ROOT "/fuzz/driver.lua")) {
    fprintf(stderr, "driver: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_setglobal(L, "fuzz_one");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (L == NULL)
    setup();
  spawn_child();
  lua_getglobal(L, "fuzz_one");
  lua_pushlstring(L, (const char *)data, size);
  lua_pushinteger(L, child);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    fprintf(stderr, "unexpected Lua error: %s\n", lua_tostring(L, -1));
    abort();
  }
  return 0;
}
