/*
 * What core.c shares with the other files that talk to Lua (buffer.c,
 * freeze.c, ptrmap.c, ...): the handle accessor, the argument and result helpers, and the
 * functions that register those files' methods.
 */
#ifndef RMEM_CORE_H
#define RMEM_CORE_H

#include "lua.h"
#include "lauxlib.h"

#include "backend.h"

#define HANDLE_META "rmem.core.handle"

/* Argument 1 as an open handle's process (raises for a closed one). */
rb_proc *rmem_check_proc(lua_State *L);
uintptr_t rmem_check_address(lua_State *L, int arg);
/* A size at arg for a range from address that must not wrap. */
size_t rmem_check_size(lua_State *L, int arg, uintptr_t address);
/* Pushes nil, "op: message", code: 3 results. */
int rmem_os_fail(lua_State *L, const char *op, rb_err code);

/* The metatable `name` with its metamethods, and __index the methods. */
void rmem_createmeta(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *funcs);
/* Adds methods to the handle's. */
void rmem_add_methods(lua_State *L, const luaL_Reg *funcs);

/* Each adds its functions to the module table at the top of the stack and
 * its methods to the handle's. */
void rmem_open_buffer(lua_State *L);
void rmem_open_freeze(lua_State *L);

#endif
