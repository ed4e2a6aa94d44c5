/* lua-term's term.core (isatty) for the Windows Lua that runs the tests
 * under Wine: busted asks it whether to print colours. */
#include <io.h>
#include <stdio.h>
#include "lua.h"
#include "lauxlib.h"

static int term_isatty(lua_State *L) {
  FILE **f = (FILE **)luaL_checkudata(L, 1, LUA_FILEHANDLE);
  lua_pushboolean(L, *f != NULL && _isatty(_fileno(*f)));
  return 1;
}

static const luaL_Reg funcs[] = {
  {"isatty", term_isatty},
  {NULL, NULL}
};

__declspec(dllexport) int luaopen_term_core(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
