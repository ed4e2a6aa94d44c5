/*
 * Many values at once: h:read_many (one batched read for a list of
 * addresses), reusable byte buffers (core.buffer) and h:read_into, which
 * fills a buffer without making a Lua string.
 */
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "core.h"

#define BUFFER_META "rmem.core.buffer"

/* The bytes follow the header in one userdata, so the collector knows the
 * buffer's whole size and frees it with the object. */
typedef struct lbuffer {
  size_t n;
} lbuffer;

static unsigned char *bytes_of(lbuffer *b) { return (unsigned char *)(b + 1); }

static lbuffer *check_buffer(lua_State *L, int arg) {
  return (lbuffer *)luaL_checkudata(L, arg, BUFFER_META);
}

/* The value types of read_many and the buffer getters, little-endian. */
static const char *const type_names[] = {"u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64",
                                         "f32", "f64", NULL};
static const size_t type_sizes[] = {1, 2, 4, 8, 1, 2, 4, 8, 4, 8};

static void push_value(lua_State *L, int type, const unsigned char *s) {
  uint8_t u8;
  uint16_t u16;
  uint32_t u32;
  uint64_t u64;
  float f;
  double d;
  switch (type) {
  case 0: memcpy(&u8, s, 1); lua_pushinteger(L, (lua_Integer)u8); break;
  case 1: memcpy(&u16, s, 2); lua_pushinteger(L, (lua_Integer)u16); break;
  case 2: memcpy(&u32, s, 4); lua_pushinteger(L, (lua_Integer)u32); break;
  case 3: memcpy(&u64, s, 8); lua_pushinteger(L, (lua_Integer)u64); break; /* as string.unpack */
  case 4: memcpy(&u8, s, 1); lua_pushinteger(L, (lua_Integer)(int8_t)u8); break;
  case 5: memcpy(&u16, s, 2); lua_pushinteger(L, (lua_Integer)(int16_t)u16); break;
  case 6: memcpy(&u32, s, 4); lua_pushinteger(L, (lua_Integer)(int32_t)u32); break;
  case 7: memcpy(&u64, s, 8); lua_pushinteger(L, (lua_Integer)(int64_t)u64); break;
  case 8: memcpy(&f, s, 4); lua_pushnumber(L, (lua_Number)f); break;
  default: memcpy(&d, s, 8); lua_pushnumber(L, (lua_Number)d); break;
  }
}

/* ---- buffers ---------------------------------------------------------------------- */

/* core.buffer(n) -> a buffer of n zero bytes */
static int core_buffer(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  lbuffer *b;
  luaL_argcheck(L, n >= 0, 1, "size must not be negative");
  luaL_argcheck(L, (lua_Unsigned)n <= (lua_Unsigned)(SIZE_MAX / 2 - sizeof *b), 1, "size too large");
  b = (lbuffer *)lua_newuserdatauv(L, sizeof *b + (size_t)n, 0);
  b->n = (size_t)n;
  rb_large_buffer(bytes_of(b), b->n);
  memset(bytes_of(b), 0, b->n);
  luaL_setmetatable(L, BUFFER_META);
  return 1;
}

static int buf_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_buffer(L, 1)->n);
  return 1;
}

static int buf_tostring_meta(lua_State *L) {
  lua_pushfstring(L, "rmem.Buffer (%I bytes)", (lua_Integer)check_buffer(L, 1)->n);
  return 1;
}

/* buf:tostring([i [, j]]) -> the bytes i..j, positions as string.sub takes them */
static int buf_tostring(lua_State *L) {
  lbuffer *b = check_buffer(L, 1);
  lua_Integer len = (lua_Integer)b->n;
  lua_Integer i = luaL_optinteger(L, 2, 1), j = luaL_optinteger(L, 3, -1);
  if (i < 0)
    i = i < -len ? 1 : len + i + 1;
  else if (i == 0)
    i = 1;
  if (j > len)
    j = len;
  else if (j < 0)
    j = j < -len ? 0 : len + j + 1;
  if (i > j)
    lua_pushliteral(L, "");
  else
    lua_pushlstring(L, (const char *)bytes_of(b) + i - 1, (size_t)(j - i + 1));
  return 1;
}

/* The typed getters: buf:u32(offset), offsets from 0. */
static int buf_get(lua_State *L, int type) {
  lbuffer *b = check_buffer(L, 1);
  lua_Integer off = luaL_checkinteger(L, 2);
  size_t size = type_sizes[type];
  if (off < 0 || (lua_Unsigned)off > (lua_Unsigned)b->n || b->n - (size_t)off < size)
    return luaL_argerror(L, 2, lua_pushfstring(L, "offset %I out of range (%s at it needs %I bytes "
                                               "of a %I-byte buffer)", off, type_names[type],
                                               (lua_Integer)size, (lua_Integer)b->n));
  push_value(L, type, bytes_of(b) + off);
  return 1;
}

static int buf_u8(lua_State *L) { return buf_get(L, 0); }
static int buf_u16(lua_State *L) { return buf_get(L, 1); }
static int buf_u32(lua_State *L) { return buf_get(L, 2); }
static int buf_u64(lua_State *L) { return buf_get(L, 3); }
static int buf_i8(lua_State *L) { return buf_get(L, 4); }
static int buf_i16(lua_State *L) { return buf_get(L, 5); }
static int buf_i32(lua_State *L) { return buf_get(L, 6); }
static int buf_i64(lua_State *L) { return buf_get(L, 7); }
static int buf_f32(lua_State *L) { return buf_get(L, 8); }
static int buf_f64(lua_State *L) { return buf_get(L, 9); }

/* ---- reads ------------------------------------------------------------------------- */

/* h:read_into(buf, address, n, offset) -> n; partial: nil, msg, code, done */
static int h_read_into(lua_State *L) {
  rb_proc *p = rmem_check_proc(L);
  lbuffer *b = check_buffer(L, 2);
  uintptr_t addr = rmem_check_address(L, 3);
  size_t n = rmem_check_size(L, 4, addr), done = 0;
  lua_Integer off = luaL_optinteger(L, 5, 0);
  rb_err e;
  luaL_argcheck(L, off >= 0, 5, "offset must not be negative");
  if ((lua_Unsigned)off > (lua_Unsigned)b->n || b->n - (size_t)off < n)
    return luaL_argerror(L, 4, lua_pushfstring(L, "buffer too small (%I bytes at offset %I in a "
                                               "%I-byte buffer)", (lua_Integer)n, off,
                                               (lua_Integer)b->n));
  if ((e = n ? rb_read(p, addr, bytes_of(b) + off, n, &done) : 0)) {
    rmem_os_fail(L, "read", e);
    lua_pushinteger(L, (lua_Integer)done);
    return 4;
  }
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

/* The value at idx, of entry i of the list at arg 2, as an address or a
 * size, or an argument error. */
static uintptr_t entry_integer(lua_State *L, lua_Integer i, int idx, const char *what) {
  int isnum = 0;
  lua_Integer v = lua_type(L, idx) == LUA_TNUMBER ? lua_tointegerx(L, idx, &isnum) : 0;
  if (!isnum)
    luaL_argerror(L, 2, lua_pushfstring(L, "entry %I: %s must be an integer, got %s", i, what,
                                        luaL_typename(L, idx)));
  if (v < 0)
    luaL_argerror(L, 2, lua_pushfstring(L, "entry %I: %s must not be negative", i, what));
  if ((lua_Unsigned)v > (lua_Unsigned)UINTPTR_MAX)
    luaL_argerror(L, 2, lua_pushfstring(L, "entry %I: %s does not fit in a pointer", i, what));
  return (uintptr_t)v;
}

/* The piece of entry i: an address (with the size given) or { address, n }. */
static void entry_piece(lua_State *L, lua_Integer i, size_t size, int pairs, rb_piece *piece) {
  lua_rawgeti(L, 2, i);
  if (pairs) {
    if (!lua_istable(L, -1))
      luaL_argerror(L, 2, lua_pushfstring(L, "entry %I must be an { address, size } table, got %s",
                                          i, luaL_typename(L, -1)));
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    piece->addr = entry_integer(L, i, -2, "address");
    piece->n = (size_t)entry_integer(L, i, -1, "size");
    lua_pop(L, 3);
  } else {
    piece->addr = entry_integer(L, i, -1, "address");
    piece->n = size;
    lua_pop(L, 1);
  }
  if (piece->n > (size_t)LUA_MAXINTEGER - piece->addr || piece->n > UINTPTR_MAX - piece->addr)
    luaL_argerror(L, 2, lua_pushfstring(L, "entry %I: range wraps past the end of the address space", i));
}

/* Entries close together are read as one span: the OS's cost is mostly per
 * piece (on Linux about a microsecond, as much as copying 8 KiB), little per
 * byte. A span that fails (one of its entries, or a page between them,
 * cannot be read) is read again entry by entry. */
#define MERGE_GAP ((uintptr_t)8 << 10)
#define MERGE_MAX ((size_t)256 << 10) /* the longest span merging makes */

typedef struct entry {
  rb_piece piece;
  size_t span;              /* the span read that holds it */
  const unsigned char *src; /* its bytes once read; NULL: unreadable */
} entry;

static int by_address(const void *a, const void *b) {
  uintptr_t x = (*(entry *const *)a)->piece.addr, y = (*(entry *const *)b)->piece.addr;
  return (x > y) - (x < y);
}

/* Groups the entries (in address order) into spans; returns their number.
 * spans[s].n is the span's size, off[s] where it goes in the buffer. */
static size_t make_spans(entry **order, size_t count, rb_piece *spans, size_t *off, size_t *total) {
  size_t k, ns = 0;
  *total = 0;
  for (k = 0; k < count; k++) {
    entry *e = order[k];
    uintptr_t lo = e->piece.addr, hi = lo + e->piece.n;
    if (e->piece.n == 0)
      continue;
    if (ns > 0) {
      rb_piece *last = &spans[ns - 1];
      uintptr_t end = last->addr + last->n;
      if ((lo <= end || lo - end <= MERGE_GAP) && (hi > end ? hi : end) - last->addr <= MERGE_MAX) {
        if (hi > end)
          last->n = hi - last->addr;
        e->span = ns - 1;
        continue;
      }
      *total += last->n;
    }
    off[ns] = *total;
    spans[ns].addr = lo;
    spans[ns].n = e->piece.n;
    e->span = ns++;
  }
  if (ns > 0)
    *total += spans[ns - 1].n;
  return ns;
}

/* h:read_many(list [, kind]) -> { value or string or false, ... }: kind is a
 * type name (values), a size (strings of that size) or nil (the entries are
 * { address, size } pairs: strings). */
static int h_read_many(lua_State *L) {
  rb_proc *p = rmem_check_proc(L);
  lua_Integer count, i;
  int type = -1, pairs = lua_isnoneornil(L, 3);
  size_t size = 0, total = 0, nspans, nretry = 0, k;
  entry *entries, **order;
  rb_piece *spans;
  size_t *off;
  unsigned char *buf;
  rb_err e;
  luaL_checktype(L, 2, LUA_TTABLE);
  if (lua_type(L, 3) == LUA_TSTRING)
    size = type_sizes[type = luaL_checkoption(L, 3, NULL, type_names)];
  else if (!pairs) {
    lua_Integer n = luaL_checkinteger(L, 3);
    luaL_argcheck(L, n >= 0, 3, "size must not be negative");
    size = (size_t)n;
  }
  count = (lua_Integer)lua_rawlen(L, 2);
  k = sizeof *entries + sizeof *order + sizeof *spans + sizeof *off;
  luaL_argcheck(L, (lua_Unsigned)count <= SIZE_MAX / k, 2, "too many entries");
  /* userdata, not malloc: an error while filling or pushing leaks nothing */
  entries = (entry *)lua_newuserdatauv(L, (size_t)count * k + 1, 0);
  order = (entry **)(entries + count);
  spans = (rb_piece *)(order + count);
  off = (size_t *)(spans + count);
  for (i = 0; i < count; i++) {
    entry_piece(L, i + 1, size, pairs, &entries[i].piece);
    if (entries[i].piece.n > SIZE_MAX / 4 - total)
      luaL_argerror(L, 2, "the entries add up to more than memory can hold");
    total += entries[i].piece.n;
    entries[i].src = (const unsigned char *)""; /* what an empty entry reads */
    order[i] = &entries[i];
  }
  qsort(order, (size_t)count, sizeof *order, by_address);
  nspans = make_spans(order, (size_t)count, spans, off, &total);
  buf = (unsigned char *)lua_newuserdatauv(L, total + 1, 0);
  if ((e = rb_read_pieces(p, spans, nspans, buf)))
    return rmem_os_fail(L, "read_many", e);
  /* the entries of the spans that failed, tried one by one (in one call) */
  for (i = 0; i < count; i++) {
    entry *en = &entries[i];
    if (en->piece.n == 0)
      continue;
    if (spans[en->span].ok)
      en->src = buf + off[en->span] + (en->piece.addr - spans[en->span].addr);
    else
      order[nretry++] = en;
  }
  if (nretry > 0) {
    for (k = 0, total = 0; k < nretry; k++) {
      spans[k] = order[k]->piece;
      total += spans[k].n;
    }
    buf = (unsigned char *)lua_newuserdatauv(L, total + 1, 0);
    if ((e = rb_read_pieces(p, spans, nretry, buf)))
      return rmem_os_fail(L, "read_many", e);
    for (k = 0; k < nretry; k++) {
      order[k]->src = spans[k].ok ? buf : NULL;
      buf += spans[k].n;
    }
  }
  lua_createtable(L, (int)(count < 0x7FFFFFFF ? count : 0), 0);
  for (i = 0; i < count; i++) {
    const unsigned char *src = entries[i].src;
    if (src == NULL)
      lua_pushboolean(L, 0);
    else if (type >= 0)
      push_value(L, type, src);
    else
      lua_pushlstring(L, (const char *)src, entries[i].piece.n);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* ---- registration ------------------------------------------------------------------ */

static const luaL_Reg buffer_methods[] = {
  {"tostring", buf_tostring},
  {"u8", buf_u8}, {"u16", buf_u16}, {"u32", buf_u32}, {"u64", buf_u64},
  {"i8", buf_i8}, {"i16", buf_i16}, {"i32", buf_i32}, {"i64", buf_i64},
  {"f32", buf_f32}, {"f64", buf_f64},
  {NULL, NULL}
};

static const luaL_Reg buffer_metamethods[] = {
  {"__index", NULL}, /* the methods table */
  {"__len", buf_len},
  {"__tostring", buf_tostring_meta},
  {NULL, NULL}
};

static const luaL_Reg handle_methods[] = {
  {"read_many", h_read_many},
  {"read_into", h_read_into},
  {NULL, NULL}
};

void rmem_open_buffer(lua_State *L) {
  rmem_createmeta(L, BUFFER_META, buffer_metamethods, buffer_methods);
  rmem_add_methods(L, handle_methods);
  lua_pushcfunction(L, core_buffer);
  lua_setfield(L, -2, "buffer");
}
