/* Pointer maps and the pointer scan (ptrmap.c), for rmem.core. */
#ifndef RMEM_PTRMAP_H
#define RMEM_PTRMAP_H

#include <stddef.h>
#include <stdint.h>

#include "lua.h"

/* Adds the pointers in data (n bytes of the process at base) to the map at
 * stack index arg; returns how many it added. Raises for a wrong map. */
int rm_ptrmap_collect(lua_State *L, int arg, const unsigned char *data, size_t n, uint64_t base);

/* Sets core.ptrmap, core.ptrmap_load and core.ptrscan in the table on top. */
void rm_ptrmap_open(lua_State *L);

#endif
