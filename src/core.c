/*
 * rmem.core: process handles as full userdata with raw methods that map one
 * to one onto the OS memory calls. The only file that talks to Lua; the OS
 * calls live in a backend behind backend.h.
 *
 * Conventions (liolib.c): an OS failure returns nil, "op: message", code
 * (and, for a partial read or write, the bytes done); a wrong argument type
 * or range raises.
 */
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "backend.h"
#include "core.h"
#include "scan.h"
#include "ptrmap.h"
#include "valscan.h"
#include "watch.h"

#define RMEM_VERSION "rmem.core 0.1.0"
#define WATCH_META "rmem.core.watch"

/* Windows' least access for alloc/free/protect/read/write/query. */
#define DEFAULT_ACCESS (0x0008UL | 0x0010UL | 0x0020UL | 0x0400UL | 0x100000UL)

/* Reads up to this size go through a buffer the handle keeps, so that the
 * small reads of scans and typed access allocate nothing but their string. */
#define SCRATCH_MAX ((size_t)2 << 20)

typedef struct lhandle {
  rb_proc *p; /* NULL once closed */
  char *scratch;
  size_t scratch_cap;
} lhandle;

/* ---- results and arguments ---------------------------------------------- */

static int os_fail(lua_State *L, const char *op, rb_err code) {
  char msg[512];
  rb_message(code, msg, sizeof msg);
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", op, msg);
  lua_pushinteger(L, (lua_Integer)code);
  return 3;
}

/* A non-negative integer argument that fits in a pointer. */
static lua_Integer check_nonneg(lua_State *L, int arg, const char *what) {
  lua_Integer v = luaL_checkinteger(L, arg);
  if (v < 0)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must not be negative", what));
  if ((lua_Unsigned)v > (lua_Unsigned)UINTPTR_MAX)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s does not fit in a pointer", what));
  return v;
}

static uintptr_t check_address(lua_State *L, int arg) {
  return (uintptr_t)check_nonneg(L, arg, "address");
}

/* size at arg, for a range that starts at address: it must not wrap. */
static size_t check_size(lua_State *L, int arg, uintptr_t address) {
  lua_Integer size = check_nonneg(L, arg, "size");
  if ((lua_Unsigned)size > (lua_Unsigned)LUA_MAXINTEGER - address ||
      (uintptr_t)size > UINTPTR_MAX - address)
    luaL_argerror(L, arg, "range wraps past the end of the address space");
  return (size_t)size;
}

/* [address, address + size) at args arg, arg + 1 must lie where p can
 * address: a 32-bit process's calls would truncate anything above 4 GiB
 * and act on another address. */
static void check_reach(lua_State *L, rb_proc *p, int arg, uintptr_t address, size_t size) {
  uintptr_t end = rb_addr_end(p);
  if (end == 0)
    return;
  if (address >= end)
    luaL_argerror(L, arg, lua_pushfstring(L, "address beyond the %d-bit process's address space",
                                          rb_bits(p)));
  if (size > end - address)
    luaL_argerror(L, arg + 1, lua_pushfstring(L, "range beyond the %d-bit process's address space",
                                              rb_bits(p)));
}

/* A 32-bit flag, protection or access mask. */
static unsigned long check_mask(lua_State *L, int arg) {
  lua_Integer v = luaL_checkinteger(L, arg);
  luaL_argcheck(L, v >= 0 && v <= 0xFFFFFFFF, arg, "must be a 32-bit mask");
  return (unsigned long)v;
}

/* ---- handles -------------------------------------------------------------- */

/* Created closed, so a failed open leaves a consistent object (newprefile). */
static lhandle *new_handle(lua_State *L) {
  lhandle *h = (lhandle *)lua_newuserdatauv(L, sizeof(lhandle), 0);
  h->p = NULL;
  h->scratch = NULL;
  h->scratch_cap = 0;
  luaL_setmetatable(L, HANDLE_META);
  return h;
}

/* The open process of the handle at arg. */
static rb_proc *proc_at(lua_State *L, int arg) {
  lhandle *h = (lhandle *)luaL_checkudata(L, arg, HANDLE_META);
  if (h->p == NULL)
    luaL_error(L, "attempt to use a closed process handle");
  return h->p;
}

static rb_proc *check_proc(lua_State *L) {
  return proc_at(L, 1);
}

/* __gc and __close: idempotent, never raises. */
static int h_gc(lua_State *L) {
  lhandle *h = (lhandle *)luaL_checkudata(L, 1, HANDLE_META);
  rb_proc *p = h->p;
  if (p != NULL) {
    h->p = NULL;
    rb_close(p);
  }
  free(h->scratch);
  h->scratch = NULL;
  h->scratch_cap = 0;
  return 0;
}

static int h_close(lua_State *L) {
  check_proc(L);
  h_gc(L);
  lua_pushboolean(L, 1);
  return 1;
}

static int h_tostring(lua_State *L) {
  lhandle *h = (lhandle *)luaL_checkudata(L, 1, HANDLE_META);
  if (h->p == NULL)
    lua_pushliteral(L, HANDLE_META " (closed)");
  else
    lua_pushfstring(L, HANDLE_META " (pid %I)", (lua_Integer)rb_pid(h->p));
  return 1;
}

static int h_pid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)rb_pid(check_proc(L)));
  return 1;
}

static int h_bits(lua_State *L) {
  lua_pushinteger(L, rb_bits(check_proc(L)));
  return 1;
}

static int h_name(lua_State *L) {
  char name[1024];
  rb_name(check_proc(L), name, sizeof name);
  lua_pushstring(L, name);
  return 1;
}

/* The process's status into *alive and *code (nil: still running, or an
 * exit code the OS cannot tell); on failure, pushes nil, msg, code. */
static int get_status(lua_State *L, const char *op, int *alive, int *has_code,
                      lua_Integer *code) {
  unsigned long c;
  int known;
  rb_err e = rb_status(check_proc(L), alive, &c, &known);
  if (e)
    return os_fail(L, op, e);
  *has_code = !*alive && known;
  *code = (lua_Integer)c;
  return 0;
}

static int h_is_alive(lua_State *L) {
  int alive, has_code;
  lua_Integer code;
  if (get_status(L, "is_alive", &alive, &has_code, &code))
    return 3;
  lua_pushboolean(L, alive);
  return 1;
}

/* h:exit_code() -> the code, or nil while the process runs (or where the
 * OS cannot tell it) */
static int h_exit_code(lua_State *L) {
  int alive, has_code;
  lua_Integer code;
  if (get_status(L, "exit_code", &alive, &has_code, &code))
    return 3;
  if (has_code)
    lua_pushinteger(L, code);
  else
    lua_pushnil(L);
  return 1;
}

/* h:replaced() -> true once another program replaced the one opened */
static int h_replaced(lua_State *L) {
  lua_pushboolean(L, rb_replaced(check_proc(L)));
  return 1;
}

/* h:alloc(address_or_nil, size, alloc_type, protect) -> address */
static int h_alloc(lua_State *L) {
  rb_proc *p = check_proc(L);
  uintptr_t addr = lua_isnoneornil(L, 2) ? 0 : check_address(L, 2);
  size_t size = check_size(L, 3, addr);
  unsigned long type = check_mask(L, 4), prot = check_mask(L, 5);
  uintptr_t out;
  rb_err e;
  check_reach(L, p, 2, addr, size);
  e = rb_alloc(p, addr, size, type, prot, &out);
  if (e)
    return os_fail(L, "alloc", e);
  lua_pushinteger(L, (lua_Integer)out);
  return 1;
}

/* VirtualFreeEx with the arguments at 2 (address) and 3 (size) -> true */
static int free_range(lua_State *L, const char *op, rb_proc *p, unsigned long type) {
  uintptr_t addr = check_address(L, 2);
  size_t size = check_size(L, 3, addr);
  rb_err e;
  check_reach(L, p, 2, addr, size);
  e = rb_free(p, addr, size, type);
  if (e)
    return os_fail(L, op, e);
  lua_pushboolean(L, 1);
  return 1;
}

/* h:free(address, size, free_type) -> true */
static int h_free(lua_State *L) {
  return free_range(L, "free", check_proc(L), check_mask(L, 4));
}

/* h:decommit(address, size) -> true */
static int h_decommit(lua_State *L) {
  return free_range(L, "decommit", check_proc(L), 0x4000UL /* MEM_DECOMMIT */);
}

/* h:protect(address, size, protect) -> old protect */
static int h_protect(lua_State *L) {
  rb_proc *p = check_proc(L);
  uintptr_t addr = check_address(L, 2);
  size_t size = check_size(L, 3, addr);
  unsigned long old;
  rb_err e;
  check_reach(L, p, 2, addr, size);
  e = rb_protect(p, addr, size, check_mask(L, 4), &old);
  if (e)
    return os_fail(L, "protect", e);
  lua_pushinteger(L, (lua_Integer)old);
  return 1;
}

static void set_int(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

static void set_index(lua_State *L, size_t i, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_rawseti(L, -2, (lua_Integer)i);
}

static void push_region(lua_State *L, const rb_region *r) {
  lua_createtable(L, 0, 7);
  set_int(L, "base", (lua_Integer)r->base);
  set_int(L, "size", (lua_Integer)r->size);
  set_int(L, "allocation_base", (lua_Integer)r->allocation_base);
  set_int(L, "allocation_protect", (lua_Integer)r->allocation_protect);
  set_int(L, "state", (lua_Integer)r->state);
  set_int(L, "protect", (lua_Integer)r->protect);
  set_int(L, "type", (lua_Integer)r->type);
}

/* h:query(address) -> { base, size, allocation_base, allocation_protect,
 * state, protect, type } */
static int h_query(lua_State *L) {
  rb_proc *p = check_proc(L);
  rb_region r;
  rb_err e = rb_query(p, check_address(L, 2), &r);
  if (e)
    return os_fail(L, "query", e);
  push_region(L, &r);
  return 1;
}

/* h:regions(address [, max]) -> the list of at most max (256) regions from
 * address upwards, as successive queries would give them */
static int h_regions(lua_State *L) {
  rb_proc *p = check_proc(L);
  uintptr_t addr = check_address(L, 2);
  lua_Integer max = luaL_optinteger(L, 3, 256);
  size_t n, i;
  rb_region *list;
  rb_err e;
  luaL_argcheck(L, max >= 1 && max <= 65536, 3, "max out of range (1 to 65536)");
  /* a userdata, not malloc: a memory error while building the list leaks
   * nothing; only the entries filled are ever touched */
  list = (rb_region *)lua_newuserdatauv(L, (size_t)max * sizeof *list, 0);
  if ((e = rb_regions(p, addr, list, (size_t)max, &n)))
    return os_fail(L, "query", e);
  lua_createtable(L, (int)n, 0);
  for (i = 0; i < n; i++) {
    push_region(L, &list[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* The handle's buffer, at least n bytes long; 0 when out of memory. */
static int grow_scratch(lhandle *h, size_t n) {
  if (n > h->scratch_cap) {
    char *grown = (char *)realloc(h->scratch, n);
    if (grown == NULL)
      return 0;
    h->scratch = grown;
    h->scratch_cap = n;
  }
  return 1;
}

/* h:read(address, n) -> string; partial: nil, msg, code, bytes_read */
static int h_read(lua_State *L) {
  rb_proc *p = check_proc(L);
  lhandle *h = (lhandle *)lua_touserdata(L, 1);
  uintptr_t addr = check_address(L, 2);
  size_t n = check_size(L, 3, addr), done = 0;
  rb_err e;
  check_reach(L, p, 2, addr, n);
  if (n > SCRATCH_MAX) { /* straight into a Lua buffer: no large buffer kept */
    luaL_Buffer b;
    char *buf = luaL_buffinitsize(L, &b, n);
    rb_large_buffer(buf, n);
    if ((e = rb_read(p, addr, buf, n, &done)) == 0) {
      luaL_pushresultsize(&b, n);
      return 1;
    }
    luaL_pushresultsize(&b, 0);
    lua_pop(L, 1);
  } else {
    if (!grow_scratch(h, n))
      return luaL_error(L, "not enough memory");
    if ((e = n ? rb_read(p, addr, h->scratch, n, &done) : 0) == 0) {
      lua_pushlstring(L, h->scratch, n);
      return 1;
    }
  }
  os_fail(L, "read", e);
  lua_pushinteger(L, (lua_Integer)done);
  return 4;
}

/* h:write(address, bytes) -> bytes written; partial: nil, msg, code, done */
static int h_write(lua_State *L) {
  rb_proc *p = check_proc(L);
  uintptr_t addr = check_address(L, 2);
  size_t n, done = 0;
  const char *s = luaL_checklstring(L, 3, &n);
  rb_err e;
  if (n > UINTPTR_MAX - addr || n > (lua_Unsigned)LUA_MAXINTEGER - addr)
    return luaL_argerror(L, 3, "range wraps past the end of the address space");
  check_reach(L, p, 2, addr, n);
  e = n ? rb_write(p, addr, s, n, &done) : 0;
  if (e) {
    os_fail(L, "write", e);
    lua_pushinteger(L, (lua_Integer)done);
    return 4;
  }
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

/* h:call(fn [, arg [, timeout_ms]]) -> fn's result; on failure nil, msg,
 * code and what the backend left in the result (Linux EFAULT: the address
 * that faulted) */
static int h_call(lua_State *L) {
  rb_proc *p = check_proc(L);
  uintptr_t fn = check_address(L, 2), arg = lua_isnoneornil(L, 3) ? 0 : check_address(L, 3);
  lua_Integer timeout = luaL_optinteger(L, 4, 5000);
  uintptr_t result = 0;
  rb_err e;
  luaL_argcheck(L, timeout >= 0 && timeout <= 0x7FFFFFFF, 4, "timeout out of range");
  check_reach(L, p, 2, fn, 0);
  luaL_argcheck(L, rb_addr_end(p) == 0 || arg < rb_addr_end(p), 3,
                "arg beyond the 32-bit process's reach");
  if ((e = rb_call(p, fn, arg, (unsigned long)timeout, &result))) {
    os_fail(L, "call", e);
    lua_pushinteger(L, (lua_Integer)result);
    return 4;
  }
  lua_pushinteger(L, (lua_Integer)result);
  return 1;
}

/* h:peb() -> the address of the process environment block (Windows) */
static int h_peb(lua_State *L) {
  rb_proc *p = check_proc(L);
  uintptr_t a;
  rb_err e;
  if ((e = rb_peb(p, &a)))
    return os_fail(L, "peb", e);
  lua_pushinteger(L, (lua_Integer)a);
  return 1;
}

/* h:tebs() -> { teb address, ... } of the threads that can be queried */
static int h_tebs(lua_State *L) {
  rb_proc *p = check_proc(L);
  size_t cap = 256, count, i;
  uintptr_t *list;
  rb_err e;
  for (;;) {
    /* a userdata, so an error while pushing leaks nothing */
    list = (uintptr_t *)lua_newuserdatauv(L, cap * sizeof *list, 0);
    if ((e = rb_tebs(p, list, cap, &count)))
      return os_fail(L, "tebs", e);
    if (count <= cap)
      break;
    cap = count + 64;
    lua_pop(L, 1);
  }
  lua_createtable(L, (int)count, 0);
  for (i = 0; i < count; i++) {
    lua_pushinteger(L, (lua_Integer)list[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* h:patch_code(addr, bytes, moves [, busy_lo, busy_hi [, counter]]) -> threads moved:
 * bytes written with every thread stopped; moves is {from1, to1, from2, to2, ...}
 * (see rb_patch_code) */
static int h_patch_code(lua_State *L) {
  rb_proc *p = check_proc(L);
  rb_patch patch;
  rb_move *moves;
  size_t i, moved = 0;
  rb_err e;
  patch.addr = check_address(L, 2);
  patch.bytes = luaL_checklstring(L, 3, &patch.n);
  luaL_checktype(L, 4, LUA_TTABLE);
  patch.nmoves = (size_t)lua_rawlen(L, 4) / 2;
  patch.busy_lo = lua_isnoneornil(L, 5) ? 0 : check_address(L, 5);
  patch.busy_hi = lua_isnoneornil(L, 6) ? 0 : check_address(L, 6);
  patch.counter = lua_isnoneornil(L, 7) ? 0 : check_address(L, 7);
  if (patch.n > UINTPTR_MAX - patch.addr)
    return luaL_argerror(L, 3, "range wraps past the end of the address space");
  /* a userdata, so an error below leaks nothing */
  moves = (rb_move *)lua_newuserdatauv(L, (patch.nmoves ? patch.nmoves : 1) * sizeof *moves, 0);
  for (i = 0; i < patch.nmoves; i++) {
    lua_rawgeti(L, 4, (lua_Integer)(2 * i + 1));
    lua_rawgeti(L, 4, (lua_Integer)(2 * i + 2));
    if (!lua_isinteger(L, -2) || !lua_isinteger(L, -1))
      return luaL_argerror(L, 4, "moves must be integer addresses");
    moves[i].from = (uintptr_t)lua_tointeger(L, -2);
    moves[i].to = (uintptr_t)lua_tointeger(L, -1);
    lua_pop(L, 2);
  }
  patch.moves = moves;
  if ((e = rb_patch_code(p, &patch, &moved)))
    return os_fail(L, "patch_code", e);
  lua_pushinteger(L, (lua_Integer)moved);
  return 1;
}

/* h:modules() -> { {name=, base=, size=, path=}, ... } */
static int h_modules(lua_State *L) {
  rb_proc *p = check_proc(L);
  size_t cap = 64, count, i;
  rb_module *list;
  rb_err e;
  for (;;) {
    /* a userdata, so an error while pushing leaks nothing */
    list = (rb_module *)lua_newuserdatauv(L, cap * sizeof *list, 0);
    if ((e = rb_modules(p, list, cap, &count)))
      return os_fail(L, "modules", e);
    if (count <= cap)
      break;
    lua_pop(L, 1);
    cap = count + 16;
  }
  lua_createtable(L, (int)count, 0);
  for (i = 0; i < count; i++) {
    lua_createtable(L, 0, 4);
    set_int(L, "base", (lua_Integer)list[i].base);
    set_int(L, "size", (lua_Integer)list[i].size);
    lua_pushstring(L, list[i].name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, list[i].path);
    lua_setfield(L, -2, "path");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* ---- hardware watches (watch.h) ------------------------------------------ */

typedef struct lwatch {
  rw_watch *w; /* NULL once closed */
} lwatch;

/* h:watch(address, size, kind) -> a watch (Linux); kind is watch.h's */
static int h_watch(lua_State *L) {
  rb_proc *p = check_proc(L);
  uintptr_t addr = check_address(L, 2);
  lua_Integer size = luaL_checkinteger(L, 3), kind = luaL_checkinteger(L, 4);
  lwatch *lw;
  rb_err e;
  luaL_argcheck(L, size == 1 || size == 2 || size == 4 || size == 8, 3, "size must be 1, 2, 4 or 8");
  luaL_argcheck(L, kind == RW_EXECUTE || kind == RW_WRITE || kind == RW_READWRITE, 4, "bad kind");
  lw = (lwatch *)lua_newuserdatauv(L, sizeof *lw, 0);
  lw->w = NULL;
  luaL_setmetatable(L, WATCH_META);
  if ((e = rw_open(p, addr, (int)size, (int)kind, &lw->w)))
    return os_fail(L, "watch", e);
  return 1;
}

static rw_watch *check_watch(lua_State *L) {
  lwatch *lw = (lwatch *)luaL_checkudata(L, 1, WATCH_META);
  if (lw->w == NULL)
    luaL_error(L, "attempt to use a closed watch");
  return lw->w;
}

/* w:poll() -> { ip, tid, count, ip, tid, count, ... }, dropped */
static int w_poll(lua_State *L) {
  rw_watch *w = check_watch(L);
  size_t cap = 256, n, i;
  unsigned long long dropped;
  rw_hit *list;
  rb_err e;
  for (;;) {
    list = (rw_hit *)lua_newuserdatauv(L, cap * sizeof *list, 0);
    if ((e = rw_poll(w, list, cap, &n, &dropped)))
      return os_fail(L, "hits", e);
    if (n <= cap)
      break;
    lua_pop(L, 1);
    cap = n + 256;
  }
  lua_createtable(L, (int)(3 * n), 0);
  for (i = 0; i < n; i++) {
    lua_pushinteger(L, (lua_Integer)list[i].ip);
    lua_rawseti(L, -2, (lua_Integer)(3 * i + 1));
    lua_pushinteger(L, (lua_Integer)list[i].tid);
    lua_rawseti(L, -2, (lua_Integer)(3 * i + 2));
    lua_pushinteger(L, (lua_Integer)list[i].count);
    lua_rawseti(L, -2, (lua_Integer)(3 * i + 3));
  }
  lua_pushinteger(L, (lua_Integer)dropped);
  return 2;
}

static int w_method(lua_State *L) {
  lua_pushstring(L, rw_method(check_watch(L)));
  return 1;
}

/* __gc, __close and close: idempotent, never raises */
static int w_gc(lua_State *L) {
  lwatch *lw = (lwatch *)luaL_checkudata(L, 1, WATCH_META);
  rw_watch *w = lw->w;
  lw->w = NULL;
  rw_close(w);
  return 0;
}

/* h:debug_registers({a0, a1, a2, a3}, slots, mask, dr7 [, skip]) -> { tid, ... }
 * (Windows): every thread of the process set to that state of rmem's debug
 * registers (watch.h) but those whose ids are keys of the table skip;
 * h:debug_registers() only lists them */
static int h_debug_registers(lua_State *L) {
  rb_proc *p = check_proc(L);
  rb_dr_state want;
  lua_Integer slots = luaL_optinteger(L, 3, 0);
  size_t nskip = 0, cap = 4096, threads, i;
  unsigned long *skip, *seen;
  int list_only = lua_isnoneornil(L, 2);
  rb_err e;
  if (!list_only)
    luaL_checktype(L, 2, LUA_TTABLE);
  luaL_argcheck(L, slots >= 0 && slots <= 15, 3, "slots must be a mask of 4 bits");
  want.slots = (unsigned)slots;
  want.mask = (unsigned long long)luaL_optinteger(L, 4, 0);
  want.dr7 = (unsigned long long)luaL_optinteger(L, 5, 0);
  luaL_argcheck(L, (want.dr7 & ~want.mask) == 0, 5, "dr7 has bits outside the mask");
  for (i = 0; i < 4; i++) {
    want.addr[i] = 0;
    if (!list_only) {
      lua_geti(L, 2, (lua_Integer)i + 1);
      want.addr[i] = (uintptr_t)luaL_optinteger(L, -1, 0);
      lua_pop(L, 1);
    }
  }
  if (!lua_isnoneornil(L, 6)) {
    luaL_checktype(L, 6, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 6)) {
      nskip++;
      lua_pop(L, 1);
    }
  }
  /* userdata, so that an error frees them */
  skip = (unsigned long *)lua_newuserdatauv(L, (nskip + 1) * sizeof *skip, 0);
  seen = (unsigned long *)lua_newuserdatauv(L, cap * sizeof *seen, 0);
  if (nskip) {
    i = 0;
    lua_pushnil(L);
    while (lua_next(L, 6)) {
      lua_pop(L, 1);
      if (i < nskip)
        skip[i++] = (unsigned long)luaL_checkinteger(L, -1);
    }
  }
  if ((e = rb_debug_registers(p, list_only ? NULL : &want, skip, nskip, seen, cap, &threads)))
    return os_fail(L, "watch", e);
  if (threads > cap)
    threads = cap;
  lua_createtable(L, (int)threads, 0);
  for (i = 0; i < threads; i++) {
    lua_pushinteger(L, (lua_Integer)seen[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* Windows: the handler's ring, drained by a host thread (watch.h, rw_ring) */
#define RING_META "rmem.core.watch_ring"

typedef struct lring {
  rw_ring *r; /* NULL once freed */
} lring;

/* h:watch_ring(data, tail, nonce) -> the ring of the handler data at data */
static int h_watch_ring(lua_State *L) {
  uintptr_t data;
  lua_Integer tail = luaL_checkinteger(L, 3), nonce = luaL_checkinteger(L, 4);
  lring *lr;
  rb_err e;
  check_proc(L);
  data = check_address(L, 2);
  luaL_argcheck(L, tail >= 0, 3, "tail must not be negative");
  lr = (lring *)lua_newuserdatauv(L, sizeof *lr, 0);
  lr->r = NULL;
  luaL_setmetatable(L, RING_META);
  if ((e = rw_ring_new(data, (uint64_t)tail, (uint64_t)nonce, &lr->r)))
    return os_fail(L, "watch", e);
  return 1;
}

static rw_ring *check_ring(lua_State *L) {
  lring *lr = (lring *)luaL_checkudata(L, 1, RING_META);
  if (lr->r == NULL)
    luaL_error(L, "attempt to use a freed watch ring");
  return lr->r;
}

/* ring:start(h) -> true: drains from now on through a copy of h's handle */
static int ring_start(lua_State *L) {
  rb_err e = rw_ring_start(check_ring(L), proc_at(L, 2));
  if (e)
    return os_fail(L, "watch", e);
  lua_pushboolean(L, 1);
  return 1;
}

/* ring:stop(): idempotent, also on a freed ring */
static int ring_stop(lua_State *L) {
  lring *lr = (lring *)luaL_checkudata(L, 1, RING_META);
  if (lr->r != NULL)
    rw_ring_stop(lr->r);
  return 0;
}

/* ring:take(h) -> { ip, tid, slots, count, ... }, { tid, gen, age_ms, clear, ... },
 * dropped0, dropped1, dropped2, dropped3, dropped_age_ms (rw_ring_take) */
static int ring_take(lua_State *L) {
  rw_ring *r = check_ring(L);
  rb_proc *p = proc_at(L, 2);
  size_t hcap = 64, tcap = 64, nh, nt, i;
  unsigned long long dropped[4];
  unsigned long age;
  rw_ring_hit *hits;
  rw_ring_thread *threads;
  rb_err e;
  for (;;) {
    /* userdata, so that an error frees them */
    hits = (rw_ring_hit *)lua_newuserdatauv(L, hcap * sizeof *hits, 0);
    threads = (rw_ring_thread *)lua_newuserdatauv(L, tcap * sizeof *threads, 0);
    if ((e = rw_ring_take(r, p, hits, hcap, &nh, threads, tcap, &nt, dropped, &age)))
      return os_fail(L, "hits", e);
    if (nh <= hcap && nt <= tcap)
      break;
    lua_pop(L, 2);
    hcap = nh + 64;
    tcap = nt + 64;
  }
  lua_createtable(L, (int)(4 * nh), 0);
  for (i = 0; i < nh; i++) {
    set_index(L, 4 * i + 1, (lua_Integer)hits[i].ip);
    set_index(L, 4 * i + 2, (lua_Integer)hits[i].tid);
    set_index(L, 4 * i + 3, (lua_Integer)hits[i].slots);
    set_index(L, 4 * i + 4, (lua_Integer)hits[i].count);
  }
  lua_createtable(L, (int)(4 * nt), 0);
  for (i = 0; i < nt; i++) {
    set_index(L, 4 * i + 1, (lua_Integer)threads[i].tid);
    set_index(L, 4 * i + 2, (lua_Integer)threads[i].gen);
    set_index(L, 4 * i + 3, (lua_Integer)threads[i].age_ms);
    set_index(L, 4 * i + 4, threads[i].clear);
  }
  for (i = 0; i < 4; i++)
    lua_pushinteger(L, (lua_Integer)dropped[i]);
  lua_pushinteger(L, (lua_Integer)age);
  return 7;
}

/* __gc: stops the thread and frees the tables; idempotent, never raises */
static int ring_gc(lua_State *L) {
  lring *lr = (lring *)luaL_checkudata(L, 1, RING_META);
  rw_ring *r = lr->r;
  lr->r = NULL;
  rw_ring_free(r);
  return 0;
}

static const luaL_Reg ring_methods[] = {
  {"start", ring_start},
  {"stop", ring_stop},
  {"take", ring_take},
  {NULL, NULL}
};

static const luaL_Reg ring_metamethods[] = {
  {"__index", NULL}, /* the methods table */
  {"__gc", ring_gc},
  {NULL, NULL}
};

static const luaL_Reg watch_methods[] = {
  {"poll", w_poll},
  {"method", w_method},
  {"close", w_gc},
  {NULL, NULL}
};

static void create_watch_meta(lua_State *L) {
  luaL_newmetatable(L, WATCH_META);
  lua_pushcfunction(L, w_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, w_gc);
  lua_setfield(L, -2, "__close");
  luaL_newlib(L, watch_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  rmem_createmeta(L, RING_META, ring_metamethods, ring_methods);
}

/* ---- module functions ------------------------------------------------------ */

/* core.open(pid [, access]) -> handle */
static int core_open(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  unsigned long access = lua_isnoneornil(L, 2) ? DEFAULT_ACCESS : check_mask(L, 2);
  lhandle *h;
  rb_err e;
  luaL_argcheck(L, pid >= 0 && pid <= 0xFFFFFFFF, 1, "pid out of range");
  h = new_handle(L);
  e = rb_open((unsigned long)pid, access, &h->p);
  if (e)
    return os_fail(L, "open", e);
  return 1;
}

/* core.self() -> a handle on the current process */
static int core_self(lua_State *L) {
  lhandle *h = new_handle(L);
  rb_err e = rb_open_self(&h->p);
  if (e)
    return os_fail(L, "self", e);
  return 1;
}

/* core.processes() -> { {pid=, parent_pid=, name=}, ... } */
static int core_processes(lua_State *L) {
  size_t cap = 256, count, i;
  rb_procinfo *list;
  rb_err e;
  for (;;) {
    /* a userdata, so an error while pushing leaks nothing */
    list = (rb_procinfo *)lua_newuserdatauv(L, cap * sizeof *list, 0);
    e = rb_processes(list, cap, &count);
    if (e)
      return os_fail(L, "processes", e);
    if (count <= cap)
      break;
    lua_pop(L, 1);
    cap = count + 64; /* a few more in case processes start meanwhile */
  }
  lua_createtable(L, (int)count, 0);
  for (i = 0; i < count; i++) {
    lua_createtable(L, 0, 3);
    set_int(L, "pid", (lua_Integer)list[i].pid);
    set_int(L, "parent_pid", (lua_Integer)list[i].parent_pid);
    lua_pushstring(L, list[i].name);
    lua_setfield(L, -2, "name");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int core_enable_debug_privilege(lua_State *L) {
  rb_err e = rb_enable_debug_privilege();
  if (e)
    return os_fail(L, "enable_debug_privilege", e);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.wine_version() -> "8.0" where rmem runs under Wine, else nil */
static int core_wine_version(lua_State *L) {
  const char *v = rb_wine_version();
  if (v == NULL)
    lua_pushnil(L);
  else
    lua_pushstring(L, v);
  return 1;
}

/* core.error_name(code) -> "ERROR_ACCESS_DENIED" or nil */
static int core_error_name(lua_State *L) {
  lua_Integer code = luaL_checkinteger(L, 1);
  const rb_error_entry *e;
  for (e = rb_error_names; e->name != NULL; e++)
    if ((lua_Integer)e->code == code) {
      lua_pushstring(L, e->name);
      return 1;
    }
  lua_pushnil(L);
  return 1;
}

/* core.error_message(code) -> the OS's text */
static int core_error_message(lua_State *L) {
  lua_Integer code = luaL_checkinteger(L, 1);
  char msg[512];
  luaL_argcheck(L, code >= 0 && code <= 0xFFFFFFFF, 1, "error code out of range");
  rb_message((rb_err)code, msg, sizeof msg);
  lua_pushstring(L, msg);
  return 1;
}

/* The pattern at args i (bytes) and i + 1 (mask), checked and prepared. */
static void check_pattern(lua_State *L, int i, rm_pattern *pat) {
  size_t len, mlen, k;
  pat->bytes = (const unsigned char *)luaL_checklstring(L, i, &len);
  pat->mask = (const unsigned char *)luaL_checklstring(L, i + 1, &mlen);
  pat->len = len;
  luaL_argcheck(L, len > 0 && mlen == len, i + 1,
                "mask must be as long as the pattern, and not empty");
  for (k = 0; k < len; k++)
    luaL_argcheck(L, (pat->bytes[k] & ~pat->mask[k]) == 0, i, "pattern bytes must be masked");
  rm_pattern_prepare(pat);
}

/* Pushes { base + offset, ... } for the matches of pat in data[0..n) at
 * args i.. [align [, overlapping [, limit]]]. */
static int push_matches(lua_State *L, const rm_pattern *pat, const unsigned char *data, size_t n,
                        lua_Integer base, int i) {
  lua_Integer align = luaL_optinteger(L, i, 1), limit = luaL_optinteger(L, i + 2, LUA_MAXINTEGER);
  int overlapping = lua_isnoneornil(L, i + 1) || lua_toboolean(L, i + 1);
  size_t offs[256], found, k, from = 0, count = 0;
  luaL_argcheck(L, align >= 1, i, "align must be at least 1");
  luaL_argcheck(L, limit >= 0, i + 2, "limit must not be negative");
  lua_newtable(L);
  while (from < n && (lua_Integer)count < limit) {
    size_t want = sizeof offs / sizeof offs[0];
    if ((lua_Integer)want > limit - (lua_Integer)count)
      want = (size_t)(limit - (lua_Integer)count);
    found = rm_scan(pat, data, n, from, (size_t)base, (size_t)align, overlapping, offs, want, &from);
    for (k = 0; k < found; k++)
      set_index(L, ++count, base + (lua_Integer)offs[k]);
    if (found < want)
      break;
  }
  return 1;
}

/* core.find(data, bytes, mask, base [, align [, overlapping [, limit]]])
 * -> { base + offset, ... }: the matches of the pattern (bytes under mask,
 * strings of one length) inside data, ascending. */
static int core_find(lua_State *L) {
  size_t n;
  const unsigned char *data = (const unsigned char *)luaL_checklstring(L, 1, &n);
  lua_Integer base = luaL_checkinteger(L, 4);
  rm_pattern pat;
  check_pattern(L, 2, &pat);
  luaL_argcheck(L, base >= 0, 4, "base must not be negative");
  luaL_argcheck(L, (lua_Unsigned)base <= (lua_Unsigned)LUA_MAXINTEGER - n, 4,
                "base + #data wraps past the largest integer");
  return push_matches(L, &pat, data, n, base, 5);
}

/* The chunk [address, address + n) of arguments 2 and 3 (at most 2 MiB),
 * read into the handle's buffer with no string in between: the bytes, or
 * NULL and the error in *e. */
static const unsigned char *read_chunk(lua_State *L, uintptr_t *addr, size_t *n, rb_err *e) {
  rb_proc *p = check_proc(L);
  lhandle *h = (lhandle *)lua_touserdata(L, 1);
  size_t done;
  *addr = check_address(L, 2);
  *n = check_size(L, 3, *addr);
  luaL_argcheck(L, *n <= SCRATCH_MAX, 3, "at most 2 MiB at a time");
  check_reach(L, p, 2, *addr, *n);
  if (!grow_scratch(h, *n))
    luaL_error(L, "not enough memory");
  *e = *n ? rb_read(p, *addr, h->scratch, *n, &done) : 0;
  return *e ? NULL : (const unsigned char *)h->scratch;
}

/* h:find(address, n, bytes, mask [, align [, overlapping [, limit]]]): reads
 * [address, address + n) into the handle's buffer and returns core.find's
 * list for it, with no string in between; a failed read: nil, msg, code. */
static int h_find(lua_State *L) {
  rm_pattern pat;
  uintptr_t addr;
  size_t n;
  rb_err e;
  const unsigned char *data;
  check_pattern(L, 4, &pat);
  if ((data = read_chunk(L, &addr, &n, &e)) == NULL)
    return os_fail(L, "read", e);
  return push_matches(L, &pat, data, n, (lua_Integer)addr, 6);
}

/* h:pointers(address, n, map): reads [address, address + n) into the
 * handle's buffer and adds the pointers in it to the pointer map; returns
 * how many, or nil, msg, code when the read fails. */
static int h_pointers(lua_State *L) {
  uintptr_t addr;
  size_t n;
  rb_err e;
  const unsigned char *data = read_chunk(L, &addr, &n, &e);
  if (data == NULL)
    return os_fail(L, "read", e);
  lua_pushinteger(L, rm_ptrmap_collect(L, 4, data, n, addr));
  return 1;
}

/* ---- for buffer.c and freeze.c (core.h) ----------------------------------------- */

rb_proc *rmem_check_proc(lua_State *L) { return check_proc(L); }
uintptr_t rmem_check_address(lua_State *L, int arg) { return check_address(L, arg); }
size_t rmem_check_size(lua_State *L, int arg, uintptr_t address) {
  return check_size(L, arg, address);
}
int rmem_os_fail(lua_State *L, const char *op, rb_err code) { return os_fail(L, op, code); }
/* ---- value scans (valscan.c) ------------------------------------------------------ */

#define VALSCAN_META "rmem.core.valscan"

typedef struct lvalscan {
  vs_scan *s; /* NULL once closed */
  int type;
  size_t size;
} lvalscan;

static const char *const vs_type_names[] = {"i8", "u8", "i16", "u16", "i32", "u32", "i64",
                                            "u64", "f32", "f64", "bytes", NULL};
static const size_t vs_type_sizes[] = {1, 1, 2, 2, 4, 4, 8, 8, 4, 8, 0};
static const char *const vs_op_names[] = {"==", "~=", "<", "<=", ">", ">=", "between",
                                          "unknown", "changed", "unchanged", "increased",
                                          "decreased", "increased_by", "decreased_by", NULL};

static lvalscan *check_valscan(lua_State *L) {
  lvalscan *v = (lvalscan *)luaL_checkudata(L, 1, VALSCAN_META);
  if (v->s == NULL)
    luaL_error(L, "attempt to use a closed value scan");
  return v;
}

/* core.value_scan(type, size, align, limit) -> a scan that has not run yet;
 * type "bytes" is any size up to 64 KiB */
static int core_value_scan(lua_State *L) {
  int type = luaL_checkoption(L, 1, NULL, vs_type_names);
  lua_Integer size = luaL_checkinteger(L, 2), align = luaL_checkinteger(L, 3);
  lua_Integer limit = luaL_checkinteger(L, 4);
  lvalscan *v;
  luaL_argcheck(L, type == VS_BYTES ? size >= 1 && size <= VS_MAX_BYTES
                                    : (size_t)size == vs_type_sizes[type], 2, "wrong size for the type");
  luaL_argcheck(L, align >= 1 && align <= VS_MAX_ALIGN, 3, "align out of range (1 to 65536)");
  luaL_argcheck(L, limit >= 0, 4, "limit must not be negative");
  v = (lvalscan *)lua_newuserdatauv(L, sizeof *v, 0);
  v->s = NULL;
  v->type = type;
  v->size = (size_t)size;
  luaL_setmetatable(L, VALSCAN_META);
  if ((v->s = vs_new((vs_type)type, (size_t)size, (size_t)align, rb_page_size(), (uint64_t)limit)) == NULL)
    return luaL_error(L, "not enough memory");
  return 1;
}

/* s:set_runs({lo, hi, lo, hi, ...}): the memory a pass may read, ascending */
static int vsl_set_runs(lua_State *L) {
  vs_scan *s = check_valscan(L)->s;
  lua_Integer i, n, prev = 0;
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_argcheck(L, !vs_active(s), 1, "a pass is running");
  n = (lua_Integer)lua_rawlen(L, 2);
  vs_clear_runs(s);
  for (i = 1; i + 1 <= n; i += 2) {
    lua_Integer lo, hi;
    lua_rawgeti(L, 2, i);
    lua_rawgeti(L, 2, i + 1);
    lo = lua_tointeger(L, -2);
    hi = lua_tointeger(L, -1);
    lua_pop(L, 2);
    luaL_argcheck(L, lo >= prev && lo < hi, 2, "runs must be ascending, non-empty ranges");
    prev = hi;
    if (!vs_add_run(s, (uintptr_t)lo, (uintptr_t)hi))
      return luaL_error(L, "not enough memory");
  }
  return 0;
}

/* s:bounds() -> lo, hi: where the candidates lie; nil if there are none */
static int vsl_bounds(lua_State *L) {
  uintptr_t lo, hi;
  if (!vs_bounds(check_valscan(L)->s, &lo, &hi))
    return 0;
  lua_pushinteger(L, (lua_Integer)lo);
  lua_pushinteger(L, (lua_Integer)hi);
  return 2;
}

/* s:begin(op [, v1 [, v2 [, tolerance]]]): integers for the integer types,
 * numbers for f32 and f64, a string of the scan's size for bytes */
static int vsl_begin(lua_State *L) {
  lvalscan *v = check_valscan(L);
  vs_query q;
  memset(&q, 0, sizeof q);
  q.op = (vs_op)luaL_checkoption(L, 2, NULL, vs_op_names);
  if (v->type == VS_F32 || v->type == VS_F64) {
    q.f1 = luaL_optnumber(L, 3, 0);
    q.f2 = luaL_optnumber(L, 4, 0);
    q.tol = luaL_optnumber(L, 5, 0);
    luaL_argcheck(L, q.f1 == q.f1 && q.f2 == q.f2, 3, "NaN never matches");
    luaL_argcheck(L, q.tol >= 0, 5, "tolerance must not be negative");
  } else if (v->type == VS_BYTES) {
    size_t n = 0;
    if (q.op == VS_EQ || q.op == VS_NE) {
      q.bytes = (const unsigned char *)luaL_checklstring(L, 3, &n);
      luaL_argcheck(L, n == v->size, 3, "the value must be as long as the scan's");
    }
  } else {
    q.i1 = luaL_optinteger(L, 3, 0);
    q.i2 = luaL_optinteger(L, 4, 0);
  }
  luaL_argcheck(L, vs_begin(v->s, &q), 2, "this op compares with a previous pass");
  return 0;
}

static unsigned long vs_rb_read(void *ctx, uintptr_t addr, void *buf, size_t n) {
  size_t done;
  return (unsigned long)rb_read((rb_proc *)ctx, addr, buf, n, &done);
}

static int vs_rb_gone(void *ctx) {
  int alive = 0, known;
  unsigned long code;
  return rb_status((rb_proc *)ctx, &alive, &code, &known) != 0 || !alive;
}

/* s:step(h, budget) -> done, total, finished: the pass goes on for about
 * budget bytes of address space, reading through the handle h; the process
 * gone: nil, msg, code (the pass is over) */
static int vsl_step(lua_State *L) {
  vs_scan *s = check_valscan(L)->s;
  rb_proc *p = proc_at(L, 2);
  lua_Integer budget = luaL_checkinteger(L, 3);
  vs_reader r;
  unsigned long err = 0;
  int rc;
  luaL_argcheck(L, budget >= 1 && (lua_Unsigned)budget <= SIZE_MAX, 3, "budget out of range");
  r.read = vs_rb_read;
  r.gone = vs_rb_gone;
  r.ctx = p;
  rc = vs_step(s, &r, (size_t)budget, &err);
  if (rc == VS_NOMEM)
    return luaL_error(L, "not enough memory");
  if (rc == VS_GONE)
    return os_fail(L, "read", (rb_err)err);
  lua_pushinteger(L, (lua_Integer)vs_done(s));
  lua_pushinteger(L, (lua_Integer)vs_total(s));
  lua_pushboolean(L, rc == VS_DONE);
  return 3;
}

static int vsl_stop(lua_State *L) {
  vs_stop(check_valscan(L)->s);
  return 0;
}

static int vsl_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)vs_count(check_valscan(L)->s));
  return 1;
}

/* s:memory() -> the bytes its candidates take */
static int vsl_memory(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)vs_memory(check_valscan(L)->s));
  return 1;
}

static void push_value(lua_State *L, const lvalscan *v, const unsigned char *p) {
  union { int8_t i8; uint8_t u8; int16_t i16; uint16_t u16; int32_t i32; uint32_t u32;
          int64_t i64; float f32; double f64; } x;
  if (v->type != VS_BYTES)
    memcpy(&x, p, v->size);
  switch (v->type) {
  case VS_I8: lua_pushinteger(L, x.i8); break;
  case VS_U8: lua_pushinteger(L, x.u8); break;
  case VS_I16: lua_pushinteger(L, x.i16); break;
  case VS_U16: lua_pushinteger(L, x.u16); break;
  case VS_I32: lua_pushinteger(L, x.i32); break;
  case VS_U32: lua_pushinteger(L, (lua_Integer)x.u32); break;
  case VS_I64: case VS_U64: lua_pushinteger(L, (lua_Integer)x.i64); break; /* u64: wrapped */
  case VS_F32: lua_pushnumber(L, (lua_Number)x.f32); break;
  case VS_F64: lua_pushnumber(L, (lua_Number)x.f64); break;
  default: lua_pushlstring(L, (const char *)p, v->size); break;
  }
}

#define ITEMS_MAX 256

/* s:items(pos, max) -> { address, ... }, { value, ... }, next pos, for up
 * to max candidates from pos (0 at first), ascending; nil after the last */
static int vsl_items(lua_State *L) {
  lvalscan *v = check_valscan(L);
  lua_Integer pos = luaL_checkinteger(L, 2), max = luaL_checkinteger(L, 3);
  uintptr_t addrs[ITEMS_MAX];
  const unsigned char *vals[ITEMS_MAX];
  uint64_t at = (uint64_t)pos;
  size_t n, i;
  luaL_argcheck(L, max >= 1 && max <= ITEMS_MAX, 3, "max out of range (1 to 256)");
  luaL_argcheck(L, !vs_active(v->s), 1, "a pass is running");
  if ((n = vs_items(v->s, &at, addrs, vals, (size_t)max)) == 0) {
    lua_pushnil(L);
    return 1;
  }
  lua_createtable(L, (int)n, 0);
  for (i = 0; i < n; i++)
    set_index(L, i + 1, (lua_Integer)addrs[i]);
  lua_createtable(L, (int)n, 0);
  for (i = 0; i < n; i++) {
    push_value(L, v, vals[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_pushinteger(L, (lua_Integer)at);
  return 3;
}

/* s:list(limit) -> { address, ... }: the first limit candidates, ascending */
static int vsl_list(lua_State *L) {
  lvalscan *v = check_valscan(L);
  lua_Integer limit = luaL_checkinteger(L, 2), count = 0;
  uintptr_t addrs[ITEMS_MAX];
  uint64_t at = 0;
  size_t n, i;
  luaL_argcheck(L, limit >= 0, 2, "limit must not be negative");
  luaL_argcheck(L, !vs_active(v->s), 1, "a pass is running");
  lua_newtable(L);
  while (count < limit) {
    size_t want = limit - count < ITEMS_MAX ? (size_t)(limit - count) : ITEMS_MAX;
    if ((n = vs_items(v->s, &at, addrs, NULL, want)) == 0)
      break;
    for (i = 0; i < n; i++)
      set_index(L, (size_t)++count, (lua_Integer)addrs[i]);
  }
  return 1;
}

/* __gc, __close and close: frees the candidates at once; idempotent */
static int vsl_gc(lua_State *L) {
  lvalscan *v = (lvalscan *)luaL_checkudata(L, 1, VALSCAN_META);
  vs_scan *s = v->s;
  v->s = NULL;
  vs_free(s);
  return 0;
}

static int vsl_tostring(lua_State *L) {
  lvalscan *v = (lvalscan *)luaL_checkudata(L, 1, VALSCAN_META);
  if (v->s == NULL)
    lua_pushliteral(L, VALSCAN_META " (closed)");
  else
    lua_pushfstring(L, VALSCAN_META " (%s, %I candidates)", vs_type_names[v->type],
                    (lua_Integer)vs_count(v->s));
  return 1;
}

static const luaL_Reg valscan_methods[] = {
  {"set_runs", vsl_set_runs},
  {"bounds", vsl_bounds},
  {"begin", vsl_begin},
  {"step", vsl_step},
  {"stop", vsl_stop},
  {"count", vsl_count},
  {"memory", vsl_memory},
  {"items", vsl_items},
  {"list", vsl_list},
  {"close", vsl_gc},
  {NULL, NULL}
};

static const luaL_Reg valscan_metamethods[] = {
  {"__index", NULL}, /* set to the methods table below */
  {"__gc", vsl_gc},
  {"__close", vsl_gc},
  {"__tostring", vsl_tostring},
  {NULL, NULL}
};

/* ---- registration ------------------------------------------------------------ */

/* The Win32 numbers, on every platform (the backends give them meaning). */
static const struct {
  const char *name;
  lua_Integer value;
} flags[] = {
  {"MEM_COMMIT", 0x1000}, {"MEM_RESERVE", 0x2000}, {"MEM_DECOMMIT", 0x4000},
  {"MEM_RELEASE", 0x8000}, {"MEM_FREE", 0x10000}, {"MEM_PRIVATE", 0x20000},
  {"MEM_MAPPED", 0x40000}, {"MEM_RESET", 0x80000}, {"MEM_TOP_DOWN", 0x100000},
  {"MEM_WRITE_WATCH", 0x200000}, {"MEM_PHYSICAL", 0x400000},
  {"MEM_RESET_UNDO", 0x1000000}, {"MEM_IMAGE", 0x1000000},
  {"MEM_LARGE_PAGES", 0x20000000},
  {"PAGE_NOACCESS", 0x01}, {"PAGE_READONLY", 0x02}, {"PAGE_READWRITE", 0x04},
  {"PAGE_WRITECOPY", 0x08}, {"PAGE_EXECUTE", 0x10},
  {"PAGE_EXECUTE_READ", 0x20}, {"PAGE_EXECUTE_READWRITE", 0x40},
  {"PAGE_EXECUTE_WRITECOPY", 0x80}, {"PAGE_GUARD", 0x100},
  {"PAGE_NOCACHE", 0x200}, {"PAGE_WRITECOMBINE", 0x400},
  {"PAGE_TARGETS_INVALID", 0x40000000}, {"PAGE_TARGETS_NO_UPDATE", 0x40000000},
  {"PROCESS_TERMINATE", 0x0001}, {"PROCESS_CREATE_THREAD", 0x0002},
  {"PROCESS_SET_SESSIONID", 0x0004}, {"PROCESS_VM_OPERATION", 0x0008},
  {"PROCESS_VM_READ", 0x0010}, {"PROCESS_VM_WRITE", 0x0020},
  {"PROCESS_DUP_HANDLE", 0x0040}, {"PROCESS_CREATE_PROCESS", 0x0080},
  {"PROCESS_SET_QUOTA", 0x0100}, {"PROCESS_SET_INFORMATION", 0x0200},
  {"PROCESS_QUERY_INFORMATION", 0x0400}, {"PROCESS_SUSPEND_RESUME", 0x0800},
  {"PROCESS_QUERY_LIMITED_INFORMATION", 0x1000},
  {"PROCESS_SET_LIMITED_INFORMATION", 0x2000}, {"SYNCHRONIZE", 0x100000},
  {"PROCESS_ALL_ACCESS", 0x1FFFFF},
  {NULL, 0}
};

static const luaL_Reg funcs[] = {
  {"open", core_open},
  {"self", core_self},
  {"processes", core_processes},
  {"enable_debug_privilege", core_enable_debug_privilege},
  {"error_name", core_error_name},
  {"error_message", core_error_message},
  {"find", core_find},
  {"wine_version", core_wine_version},
  {"value_scan", core_value_scan},
  {NULL, NULL}
};

static const luaL_Reg methods[] = {
  {"alloc", h_alloc},
  {"free", h_free},
  {"decommit", h_decommit},
  {"protect", h_protect},
  {"query", h_query},
  {"regions", h_regions},
  {"read", h_read},
  {"find", h_find},
  {"pointers", h_pointers},
  {"write", h_write},
  {"is_alive", h_is_alive},
  {"exit_code", h_exit_code},
  {"replaced", h_replaced},
  {"modules", h_modules},
  {"peb", h_peb},
  {"tebs", h_tebs},
  {"call", h_call},
  {"patch_code", h_patch_code},
  {"watch", h_watch},
  {"debug_registers", h_debug_registers},
  {"watch_ring", h_watch_ring},
  {"pid", h_pid},
  {"bits", h_bits},
  {"name", h_name},
  {"close", h_close},
  {NULL, NULL}
};

static const luaL_Reg metamethods[] = {
  {"__index", NULL}, /* set to the methods table below */
  {"__gc", h_gc},
  {"__close", h_gc},
  {"__tostring", h_tostring},
  {NULL, NULL}
};

/* The metatable `name` with its metamethods, and __index the methods. */
void rmem_createmeta(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *funcs) {
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, funcs, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

void rmem_add_methods(lua_State *L, const luaL_Reg *funcs) {
  luaL_getmetatable(L, HANDLE_META);
  lua_getfield(L, -1, "__index");
  luaL_setfuncs(L, funcs, 0);
  lua_pop(L, 2);
}

RMEM_EXPORT int luaopen_rmem_core(lua_State *L) {
  int i;
  luaL_newlib(L, funcs);
  rmem_createmeta(L, HANDLE_META, metamethods, methods);
  rmem_createmeta(L, VALSCAN_META, valscan_metamethods, valscan_methods);
  rmem_open_buffer(L);
  rmem_open_freeze(L);
  create_watch_meta(L);
  lua_createtable(L, 0, (int)(sizeof flags / sizeof flags[0]));
  for (i = 0; flags[i].name != NULL; i++)
    set_int(L, flags[i].name, flags[i].value);
  lua_setfield(L, -2, "flags");
  set_int(L, "page_size", (lua_Integer)rb_page_size());
  set_int(L, "granularity", (lua_Integer)rb_granularity());
  set_int(L, "user_end", (lua_Integer)rb_user_end());
  lua_pushstring(L, rb_platform);
  lua_setfield(L, -2, "platform");
  lua_pushliteral(L, RMEM_VERSION);
  lua_setfield(L, -2, "_VERSION");
  rm_ptrmap_open(L);
  return 1;
}
