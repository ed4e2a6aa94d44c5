/*
 * Pointer maps and the pointer scan, for rmem.core.
 *
 * A map holds every aligned pointer-sized value found in a process's memory
 * that points into one of its committed regions, as (address, value) pairs
 * in address order, plus an index of them in value order. The scan walks it
 * backwards from a target address, breadth-first: level k holds the
 * addresses from which k dereferences (each followed by an offset of at most
 * max_offset) reach the target. Chains start at static addresses (inside a
 * module), shortest first.
 */
#ifdef __linux__
#define _GNU_SOURCE /* mremap */
#include <sys/mman.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "core.h"
#include "ptrmap.h"

#define MAP_META "rmem.core.ptrmap"
#define FILE_META "rmem.core.ptrmap_file"
#define SCAN_META "rmem.core.ptrscan_levels"
#define FILE_MAGIC "RMEMPTRS"
#define FILE_VERSION 1u
/* A level of the scan stops growing here (its edges): the rest is dropped
 * and the result says it was truncated. */
#define LEVEL_MAX ((size_t)1 << 22)
#define DEPTH_MAX 16
/* The radix sort's digits are at most this wide: 8,192 buckets, whose
 * 32-bit counters stay in the first-level cache; 4 Mi pointers into 256 MiB
 * (25 bits) take two passes (measured: a little faster than three of 11). */
#define DIGIT_MAX 13
#define PASS_MAX 5 /* ceil(64 / DIGIT_MAX) */

/* A committed region; key is the sum of the sizes of the regions below it,
 * so that a value's key (key + value - lo) numbers the committed bytes
 * without the gaps between regions: fewer bits to sort than the values. */
typedef struct range {
  uint64_t lo, size, key;
} range;

typedef struct ptrmap {
  int bits;                /* 32 or 64: the pointer size of the process */
  range *targets;          /* committed regions, while building */
  size_t ntargets, captargets, hint;
  uint64_t *addr, *val;    /* the pairs, in address order */
  uint64_t *key;           /* the values' keys, while building */
  size_t n, cap;           /* cap: the room in all three arrays */
  size_t capaddr, capval, capkey;
  uint64_t any, all;       /* the keys or'ed and and'ed: the bits they differ in */
  int numbered;            /* the regions' keys are set: no more regions */
  uint32_t *byval;         /* indices of the pairs in value order */
  size_t nbyval;           /* its size (n, or 1) */
  int finished;
} ptrmap;

/* ---- large arrays ---------------------------------------------------------------
 * The pairs, their keys, the index and the sort's buffers: tens of MB for
 * a big process, written once each. On Linux they are mappings of their
 * own, in huge pages where the kernel gives them, grown with mremap (no
 * copy). Measured in a VM for 4 Mi pointers: 160 ms a map in 4 KiB pages
 * (37,000 faults), 95 ms in huge pages; but huge pages the kernel hands out
 * for the first time in a while cost more (that map: 0.1-0.5 s, memory the
 * host had not backed yet). Elsewhere malloc. */

#ifdef __linux__
static void *big_resize(void *old, size_t oldbytes, size_t bytes) {
  void *p = old ? mremap(old, oldbytes, bytes, MREMAP_MAYMOVE)
                : mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
  if (p == MAP_FAILED)
    return NULL;
  madvise(p, bytes, MADV_HUGEPAGE); /* a hint: without it, small pages */
  return p;
}

static void big_free(void *p, size_t bytes) {
  if (p != NULL)
    munmap(p, bytes);
}

/* Gives back the end of an array, in place (shrinking a mapping cannot
 * fail but for bad arguments). */
static void big_shrink(void *p, size_t oldbytes, size_t bytes) {
  if (p != NULL)
    mremap(p, oldbytes, bytes, 0);
}

/* Address space is cheap here: room for a pointer in every slot of the
 * committed memory at once, and no growing. */
#define RESERVE_ALL 1
#else
static void *big_resize(void *old, size_t oldbytes, size_t bytes) {
  (void)oldbytes;
  return realloc(old, bytes);
}

static void big_free(void *p, size_t bytes) {
  (void)bytes;
  free(p);
}

/* Arrays grew by doubling here: at most half of one is spare. */
static void big_shrink(void *p, size_t oldbytes, size_t bytes) {
  (void)p;
  (void)oldbytes;
  (void)bytes;
}

#define RESERVE_ALL 0
#endif

static void *big_alloc(size_t bytes) { return big_resize(NULL, 0, bytes); }

/* Sets the capacity of the array *a, now *cap items, to want items; 0: out
 * of memory (the array is as it was). */
static int resize(uint64_t **a, size_t *cap, size_t want) {
  uint64_t *p = (uint64_t *)big_resize(*a, *cap * sizeof *p, want * sizeof *p);
  if (p == NULL)
    return 0;
  *a = p;
  *cap = want;
  return 1;
}

static ptrmap *check_map(lua_State *L, int arg) {
  ptrmap *m = (ptrmap *)luaL_checkudata(L, arg, MAP_META);
  if (m->bits == 0) /* released */
    luaL_argerror(L, arg, "the pointer map is closed");
  return m;
}

/* Frees what only building needs. */
static void release_building(ptrmap *m) {
  free(m->targets);
  big_free(m->key, m->capkey * sizeof *m->key);
  m->targets = NULL;
  m->key = NULL;
  m->ntargets = m->captargets = 0;
}

static void map_release(ptrmap *m) {
  release_building(m);
  big_free(m->addr, m->capaddr * sizeof *m->addr);
  big_free(m->val, m->capval * sizeof *m->val);
  big_free(m->byval, m->nbyval * sizeof *m->byval);
  memset(m, 0, sizeof *m);
}

static ptrmap *new_map(lua_State *L, int bits) {
  ptrmap *m = (ptrmap *)lua_newuserdatauv(L, sizeof(ptrmap), 0);
  memset(m, 0, sizeof *m);
  m->bits = bits;
  m->all = ~(uint64_t)0;
  luaL_setmetatable(L, MAP_META);
  return m;
}

/* core.ptrmap(bits) -> an empty map to build */
static int map_new(lua_State *L) {
  lua_Integer bits = luaL_checkinteger(L, 1);
  luaL_argcheck(L, bits == 32 || bits == 64, 1, "bits must be 32 or 64");
  new_map(L, (int)bits);
  return 1;
}

/* m:target(lo, hi): values in [lo, hi) are pointers (a committed region);
 * all of them before the first memory is added */
static int map_target(lua_State *L) {
  ptrmap *m = check_map(L, 1);
  lua_Integer lo = luaL_checkinteger(L, 2), hi = luaL_checkinteger(L, 3);
  range *last = m->ntargets ? &m->targets[m->ntargets - 1] : NULL;
  luaL_argcheck(L, !m->finished, 1, "the pointer map is finished");
  luaL_argcheck(L, !m->numbered, 1, "target ranges must come before the memory");
  luaL_argcheck(L, lo >= 0 && hi > lo, 3, "need 0 <= lo < hi");
  luaL_argcheck(L, last == NULL || (uint64_t)lo >= last->lo + last->size, 2,
                "target ranges must ascend");
  if (last && last->lo + last->size == (uint64_t)lo) {
    last->size += (uint64_t)(hi - lo); /* adjacent regions merge */
    return 0;
  }
  if (m->ntargets == m->captargets) {
    size_t cap = m->captargets ? m->captargets * 2 : 64;
    range *grown = (range *)realloc(m->targets, cap * sizeof *grown);
    if (grown == NULL)
      return luaL_error(L, "not enough memory");
    m->targets = grown;
    m->captargets = cap;
  }
  m->targets[m->ntargets].lo = (uint64_t)lo;
  m->targets[m->ntargets].size = (uint64_t)(hi - lo);
  m->ntargets++;
  return 0;
}

/* The number of bits needed to write v. */
static int bit_length(uint64_t v) {
  int b = 0;
  while (v >> b && b < 64)
    b++;
  return b;
}

/* Numbers the committed bytes: called once, when the first memory is
 * added. */
static void number_targets(ptrmap *m) {
  uint64_t total = 0;
  size_t i;
  for (i = 0; i < m->ntargets; i++) {
    m->targets[i].key = total;
    total += m->targets[i].size;
  }
  m->numbered = 1;
}

/* The region holding v, or NULL. */
static const range *region_of(const ptrmap *m, uint64_t v) {
  size_t lo = 0, hi = m->ntargets;
  while (lo < hi) { /* the first region starting above v */
    size_t mid = lo + (hi - lo) / 2;
    if (m->targets[mid].lo <= v)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo == 0 || v - m->targets[lo - 1].lo >= m->targets[lo - 1].size)
    return NULL;
  return &m->targets[lo - 1];
}

static int reserve_pairs(ptrmap *m, size_t cap) {
  if (!resize(&m->addr, &m->capaddr, cap) || !resize(&m->val, &m->capval, cap) ||
      !resize(&m->key, &m->capkey, cap))
    return 0;
  m->cap = cap;
  return 1;
}

/* Makes room for more pairs: at first for as many as the committed memory
 * has slots where address space is cheap (or 64 Ki where it is not, or
 * when reserving that failed), then twice as many. */
static int grow_pairs(ptrmap *m) {
  if (m->cap == 0 && RESERVE_ALL) {
    const range *last = &m->targets[m->ntargets - 1];
    uint64_t slots = (last->key + last->size) / ((uint64_t)m->bits / 8);
    if (slots > 65536 && slots < SIZE_MAX / sizeof *m->addr && reserve_pairs(m, (size_t)slots))
      return 1;
  }
  return reserve_pairs(m, m->cap ? m->cap * 2 : 65536);
}

/* Adds the pointers in data to m; 0: out of memory. The loop runs once
 * for every slot of the process's memory: m's fields are kept in locals,
 * which the stores through m's arrays would otherwise make it reload. */
static int collect(ptrmap *m, const unsigned char *data, size_t len, uint64_t base) {
  const size_t step = (size_t)m->bits / 8;
  const uint64_t first = m->targets[0].lo;
  const uint64_t span = m->targets[m->ntargets - 1].lo + m->targets[m->ntargets - 1].size - first;
  /* the last region found is tried first: pointers come in runs into the
   * same heap */
  const range *hint = &m->targets[m->hint];
  uint64_t *addr = m->addr, *val = m->val, *key = m->key, any = m->any, all = m->all;
  size_t n = m->n, cap = m->cap;
  /* the first aligned slot at or after base */
  size_t i = (size_t)((step - base % step) % step);
  for (; i + step <= len; i += step) {
    uint64_t v, k;
    const range *r = hint;
    if (step == 8) {
      memcpy(&v, data + i, 8);
    } else {
      uint32_t v32;
      memcpy(&v32, data + i, 4);
      v = v32;
    }
    /* most values (zeros, small numbers, text) fail the first test */
    if (v - first >= span)
      continue;
    if (v - r->lo >= r->size) {
      if ((r = region_of(m, v)) == NULL)
        continue;
      hint = r;
    }
    if (n == cap) {
      m->n = n;
      m->any = any;
      m->all = all;
      if (!grow_pairs(m))
        return 0;
      addr = m->addr;
      val = m->val;
      key = m->key;
      cap = m->cap;
    }
    k = r->key + (v - r->lo);
    addr[n] = base + i;
    val[n] = v;
    key[n] = k;
    n++;
    any |= k;
    all &= k;
  }
  m->n = n;
  m->any = any;
  m->all = all;
  m->hint = (size_t)(hint - m->targets);
  return 1;
}

int rm_ptrmap_collect(lua_State *L, int arg, const unsigned char *data, size_t n, uint64_t base) {
  ptrmap *m = check_map(L, arg);
  size_t before = m->n;
  luaL_argcheck(L, !m->finished, arg, "the pointer map is finished");
  luaL_argcheck(L, m->n == 0 || base > m->addr[m->n - 1], arg - 1,
                "memory must be added in ascending order");
  if (m->ntargets == 0)
    return 0;
  if (!m->numbered)
    number_targets(m);
  if (!collect(m, data, n, base))
    return luaL_error(L, "not enough memory for the pointer map");
  return (int)(m->n - before > (size_t)INT32_MAX ? INT32_MAX : m->n - before);
}

/* Sets m->byval to the indices of the pairs in value order, ties by index:
 * an LSD radix sort (stable) of the keys (for a map read from a file, the
 * values), over only the bits in which they differ, in as few digits as
 * DIGIT_MAX allows. An item is the key above the index when both fit in 64
 * bits (each pass then reads its keys in order), else the index alone, its
 * key read through it. A digit that is the same in every key is skipped. */
static int sort_by_value(ptrmap *m) {
  const size_t n = m->n;
  const uint64_t *keys = m->key ? m->key : m->val, differ = m->any ^ m->all;
  const int ib = bit_length(n - 1);
  int low = 0, bits, npass, width, packed, pass[PASS_MAX], np = 0, j;
  size_t nd, mask, i;
  uint32_t *count;
  uint64_t *tmp, *other = NULL, *src = NULL, *dst, idxmask = ib ? ~(uint64_t)0 >> (64 - ib) : 0;
  if (differ == 0) { /* one value (or none) */
    for (i = 0; i < n; i++)
      m->byval[i] = (uint32_t)i;
    return 1;
  }
  while (!(differ >> low & 1))
    low++;
  bits = bit_length(differ >> low);
  npass = (bits + DIGIT_MAX - 1) / DIGIT_MAX;
  width = (bits + npass - 1) / npass;
  nd = (size_t)1 << width;
  mask = nd - 1;
  packed = bits + ib <= 64;
  /* the counts fit: a map has at most 2^32 - 1 pointers */
  count = (uint32_t *)calloc((size_t)npass << width, sizeof *count);
  tmp = (uint64_t *)big_alloc(n * sizeof *tmp);
  if (!packed || m->key == NULL) /* the keys must stay, or are the values */
    other = (uint64_t *)big_alloc(n * sizeof *other);
  if (count == NULL || tmp == NULL || ((!packed || m->key == NULL) && other == NULL)) {
    free(count);
    big_free(tmp, n * sizeof *tmp);
    return 0;
  }
  for (i = 0; i < n; i++) { /* every digit's counts in one read */
    uint64_t k = keys[i] >> low;
    for (j = 0; j < npass; j++)
      count[((size_t)j << width) + (size_t)(k >> (j * width) & mask)]++;
  }
  for (j = 0; j < npass; j++) {
    const uint32_t *c = count + ((size_t)j << width);
    for (i = 0; i < nd && c[i] != n; i++)
      ;
    if (i == nd) /* the keys differ in this digit */
      pass[np++] = j;
  }
  dst = tmp;
  for (j = 0; j < np; j++) {
    int shift = pass[j] * width, last = j == np - 1;
    uint32_t *c = count + ((size_t)pass[j] << width), sum = 0;
    for (i = 0; i < nd; i++) {
      uint32_t k = c[i];
      c[i] = sum;
      sum += k;
    }
    for (i = 0; i < n; i++) {
      uint64_t item = src ? src[i] : packed ? (keys[i] >> low) << ib | i : i;
      uint64_t k = packed ? item >> ib : keys[item] >> low;
      uint32_t at = c[k >> shift & mask]++;
      if (last)
        m->byval[at] = (uint32_t)(item & (packed ? idxmask : ~(uint64_t)0));
      else
        dst[at] = item;
    }
    src = dst;
    dst = dst == tmp ? (other ? other : m->key) : tmp;
  }
  free(count);
  big_free(tmp, n * sizeof *tmp);
  big_free(other, n * sizeof *other);
  return 1;
}

static int finish(ptrmap *m) {
  m->nbyval = m->n ? m->n : 1;
  if ((m->byval = (uint32_t *)big_alloc(m->nbyval * sizeof *m->byval)) == NULL)
    return 0;
  if (m->n && !sort_by_value(m)) {
    big_free(m->byval, m->nbyval * sizeof *m->byval);
    m->byval = NULL;
    return 0;
  }
  release_building(m);
  if (m->n && m->n < m->cap) { /* the room reserved and not used */
    big_shrink(m->addr, m->capaddr * sizeof *m->addr, m->n * sizeof *m->addr);
    big_shrink(m->val, m->capval * sizeof *m->val, m->n * sizeof *m->val);
    m->cap = m->capaddr = m->capval = m->n;
  }
  m->finished = 1;
  return 1;
}

/* m:finish(): no more memory; builds the value index */
static int map_finish(lua_State *L) {
  ptrmap *m = check_map(L, 1);
  luaL_argcheck(L, !m->finished, 1, "the pointer map is finished");
  luaL_argcheck(L, m->n <= UINT32_MAX, 1, "more than 4 billion pointers");
  if (!finish(m))
    return luaL_error(L, "not enough memory for the pointer map");
  return 0;
}

static ptrmap *check_finished(lua_State *L, int arg) {
  ptrmap *m = check_map(L, arg);
  luaL_argcheck(L, m->finished, arg, "the pointer map is not finished");
  return m;
}

static int map_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_map(L, 1)->n);
  return 1;
}

static int map_bits(lua_State *L) {
  lua_pushinteger(L, check_map(L, 1)->bits);
  return 1;
}

/* The pointer stored at address a, if the map has one. */
static int value_at(const ptrmap *m, uint64_t a, uint64_t *v) {
  size_t lo = 0, hi = m->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (m->addr[mid] < a)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < m->n && m->addr[lo] == a) {
    *v = m->val[lo];
    return 1;
  }
  return 0;
}

/* m:value_at(address) -> the pointer stored there, or nil */
static int map_value_at(lua_State *L) {
  ptrmap *m = check_finished(L, 1);
  uint64_t v;
  if (!value_at(m, (uint64_t)luaL_checkinteger(L, 2), &v))
    return 0;
  lua_pushinteger(L, (lua_Integer)v);
  return 1;
}

static int map_close(lua_State *L) {
  ptrmap *m = (ptrmap *)luaL_checkudata(L, 1, MAP_META);
  map_release(m);
  return 0;
}

/* ---- files ------------------------------------------------------------------
 * "RMEMPTRS", u32 version, u32 bits, u32 header length, the header (the Lua
 * layer's text: modules and process), u64 count, then count (address, value)
 * pairs as little-endian u64, in address order: 16 bytes a pointer. */

static void put_u32(unsigned char *b, uint32_t v) {
  int i;
  for (i = 0; i < 4; i++)
    b[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *b, uint64_t v) {
  int i;
  for (i = 0; i < 8; i++)
    b[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *b) {
  return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint64_t get_u64(const unsigned char *b) {
  return (uint64_t)get_u32(b) | (uint64_t)get_u32(b + 4) << 32;
}

/* A map file being read, closed by __close (or __gc) whatever happens. */
typedef struct mapfile {
  FILE *f;
} mapfile;

static int mapfile_close(lua_State *L) {
  mapfile *mf = (mapfile *)luaL_checkudata(L, 1, FILE_META);
  if (mf->f != NULL)
    fclose(mf->f);
  mf->f = NULL;
  return 0;
}

static int file_fail(lua_State *L, FILE *f, const char *what, const char *path) {
  if (f != NULL)
    fclose(f);
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", path, what);
  return 2;
}

/* m:save(path, header) -> true | nil, message */
static int map_save(lua_State *L) {
  ptrmap *m = check_finished(L, 1);
  const char *path = luaL_checkstring(L, 2);
  size_t hlen, i;
  const char *header = luaL_checklstring(L, 3, &hlen);
  unsigned char head[20], pair[16 * 256];
  FILE *f = fopen(path, "wb");
  if (f == NULL)
    return file_fail(L, NULL, "cannot be created", path);
  memcpy(head, FILE_MAGIC, 8);
  put_u32(head + 8, FILE_VERSION);
  put_u32(head + 12, (uint32_t)m->bits);
  put_u32(head + 16, (uint32_t)hlen);
  if (fwrite(head, 1, 20, f) != 20 || fwrite(header, 1, hlen, f) != hlen)
    return file_fail(L, f, "write failed", path);
  put_u64(pair, (uint64_t)m->n);
  if (fwrite(pair, 1, 8, f) != 8)
    return file_fail(L, f, "write failed", path);
  for (i = 0; i < m->n;) {
    size_t k = 0;
    for (; k < 256 && i < m->n; k++, i++) {
      put_u64(pair + 16 * k, m->addr[i]);
      put_u64(pair + 16 * k + 8, m->val[i]);
    }
    if (fwrite(pair, 16, k, f) != k)
      return file_fail(L, f, "write failed", path);
  }
  if (fclose(f) != 0)
    return file_fail(L, NULL, "write failed", path);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.ptrmap_load(path) -> map, header | nil, message */
static int map_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  unsigned char head[20], pair[16 * 256];
  uint32_t version, bits, hlen;
  uint64_t count, i;
  luaL_Buffer b;
  ptrmap *m;
  FILE *f;
  /* the file is closed when this returns or a Lua call in it raises */
  mapfile *mf = (mapfile *)lua_newuserdatauv(L, sizeof *mf, 0);
  mf->f = NULL;
  luaL_setmetatable(L, FILE_META);
  lua_toclose(L, -1);
  if ((f = mf->f = fopen(path, "rb")) == NULL)
    return file_fail(L, NULL, "cannot be opened", path);
  if (fread(head, 1, 20, f) != 20 || memcmp(head, FILE_MAGIC, 8) != 0)
    return file_fail(L, NULL, "not an rmem pointer map", path);
  version = get_u32(head + 8);
  bits = get_u32(head + 12);
  hlen = get_u32(head + 16);
  if (version != FILE_VERSION) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: pointer map version %d (this rmem reads version %d)", path,
                    (int)version, (int)FILE_VERSION);
    return 2;
  }
  if ((bits != 32 && bits != 64) || hlen > (1u << 24))
    return file_fail(L, NULL, "damaged header", path);
  luaL_buffinit(L, &b);
  while (hlen > 0) {
    size_t k = hlen < sizeof pair ? hlen : sizeof pair;
    if (fread(pair, 1, k, f) != k)
      return file_fail(L, NULL, "truncated", path);
    luaL_addlstring(&b, (const char *)pair, k);
    hlen -= (uint32_t)k;
  }
  luaL_pushresult(&b);
  if (fread(pair, 1, 8, f) != 8)
    return file_fail(L, NULL, "truncated", path);
  count = get_u64(pair);
  if (count > UINT32_MAX)
    return file_fail(L, NULL, "damaged header", path);
  m = new_map(L, (int)bits);
  if (!resize(&m->addr, &m->capaddr, count ? (size_t)count : 1) ||
      !resize(&m->val, &m->capval, count ? (size_t)count : 1))
    return luaL_error(L, "not enough memory for the pointer map");
  for (i = 0; i < count;) {
    size_t k = count - i < 256 ? (size_t)(count - i) : 256, j;
    if (fread(pair, 16, k, f) != k)
      return file_fail(L, NULL, "truncated", path);
    for (j = 0; j < k; j++, i++) {
      m->addr[i] = get_u64(pair + 16 * j);
      m->val[i] = get_u64(pair + 16 * j + 8);
      m->any |= m->val[i];
      m->all &= m->val[i];
      if (i > 0 && m->addr[i] <= m->addr[i - 1])
        return file_fail(L, NULL, "damaged (addresses out of order)", path);
    }
    m->n = (size_t)i;
  }
  if (fread(pair, 1, 1, f) != 0)
    return file_fail(L, NULL, "has data after its pointers", path);
  if (!finish(m))
    return luaL_error(L, "not enough memory for the pointer map");
  lua_insert(L, -2); /* map, header */
  return 2;
}

/* ---- the scan ----------------------------------------------------------------- */

typedef struct edge {
  uint64_t from;    /* the address holding the pointer */
  uint32_t parent;  /* its node in the level below */
  uint32_t offset;  /* added to the pointer to reach that node */
} edge;

typedef struct level {
  uint64_t *nodes; /* sorted, distinct */
  size_t n;
  size_t *first;   /* the edges of node i: edges[first[i] .. first[i + 1]) */
  edge *edges;
} level;

static int edge_cmp(const void *a, const void *b) {
  const edge *x = (const edge *)a, *y = (const edge *)b;
  if (x->from != y->from)
    return x->from < y->from ? -1 : 1;
  if (x->offset != y->offset)
    return x->offset < y->offset ? -1 : 1;
  return x->parent < y->parent ? -1 : x->parent > y->parent;
}

/* The first pair (in value order) whose value is at least v. */
static size_t lower_value(const ptrmap *m, uint64_t v) {
  size_t lo = 0, hi = m->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (m->val[m->byval[mid]] < v)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Builds level k+1 from level k: every address whose pointer, plus at most
 * max_offset, reaches a node of level k. Returns 0 when out of memory; sets
 * *truncated when the level hit LEVEL_MAX. */
static int next_level(const ptrmap *m, const level *below, uint64_t max_offset, level *up,
                      int *truncated) {
  size_t cap = 1024, n = 0, i, j;
  edge *e = (edge *)malloc(cap * sizeof *e);
  memset(up, 0, sizeof *up);
  if (e == NULL)
    return 0;
  for (i = 0; i < below->n && !*truncated; i++) {
    uint64_t node = below->nodes[i];
    size_t k = lower_value(m, node > max_offset ? node - max_offset : 0);
    for (; k < m->n; k++) {
      uint32_t at = m->byval[k];
      if (m->val[at] > node)
        break;
      if (n == LEVEL_MAX) {
        *truncated = 1;
        break;
      }
      if (n == cap) {
        edge *grown = (edge *)realloc(e, (cap *= 2) * sizeof *e);
        if (grown == NULL) {
          free(e);
          return 0;
        }
        e = grown;
      }
      e[n].from = m->addr[at];
      e[n].parent = (uint32_t)i;
      e[n].offset = (uint32_t)(node - m->val[at]);
      n++;
    }
  }
  qsort(e, n, sizeof *e, edge_cmp);
  up->edges = e;
  up->nodes = (uint64_t *)malloc((n ? n : 1) * sizeof *up->nodes);
  up->first = (size_t *)malloc((n + 1) * sizeof *up->first);
  if (up->nodes == NULL || up->first == NULL)
    return 0;
  for (i = 0, j = 0; i < n; i++) {
    if (i == 0 || e[i].from != e[i - 1].from) {
      up->nodes[j] = e[i].from;
      up->first[j++] = i;
    }
  }
  up->first[j] = n;
  up->n = j;
  return 1;
}

/* The levels of a scan, a userdata: closed (their buffers freed) when the
 * scan returns or a Lua call in it raises. */
typedef struct levels {
  level lv[DEPTH_MAX + 1]; /* level 0 is the target */
} levels;

static int levels_close(lua_State *L) {
  levels *ls = (levels *)luaL_checkudata(L, 1, SCAN_META);
  int k;
  for (k = 0; k <= DEPTH_MAX; k++) {
    free(ls->lv[k].nodes);
    free(ls->lv[k].first);
    free(ls->lv[k].edges);
  }
  memset(ls, 0, sizeof *ls);
  return 0;
}

typedef struct scan {
  lua_State *L;
  ptrmap **maps;       /* maps[0] is the one scanned; the others check */
  uint64_t *targets;   /* one per map */
  uint64_t *bases;     /* bases[map * nmod + module], or UINT64_MAX if absent */
  size_t nmaps, nmod;
  level *levels;       /* levels[0] is the target */
  uint32_t offsets[32];
  size_t found, limit;
  int result;          /* index of the result list on the Lua stack */
} scan;

/* Whether the chain (module, offset, offsets[0..depth)) reaches the target
 * in every map but the first (where it does by construction). */
static int holds(const scan *s, size_t mod, uint64_t modoff, int depth) {
  size_t j;
  for (j = 1; j < s->nmaps; j++) {
    uint64_t a = s->bases[j * s->nmod + mod], v;
    int d;
    if (a == UINT64_MAX)
      return 0;
    a += modoff;
    for (d = 0; d < depth; d++) {
      if (!value_at(s->maps[j], a, &v))
        return 0;
      a = v + s->offsets[d];
    }
    if (a != s->targets[j])
      return 0;
  }
  return 1;
}

static void emit(scan *s, size_t mod, uint64_t modoff, int depth) {
  lua_State *L = s->L;
  int d;
  lua_createtable(L, depth + 2, 0);
  lua_pushinteger(L, (lua_Integer)mod + 1);
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, (lua_Integer)modoff);
  lua_rawseti(L, -2, 2);
  for (d = 0; d < depth; d++) {
    lua_pushinteger(L, (lua_Integer)s->offsets[d]);
    lua_rawseti(L, -2, d + 3);
  }
  lua_rawseti(L, s->result, (lua_Integer)++s->found);
}

/* Every path from node i of level k down to the target, offsets in order. */
static void walk(scan *s, int k, size_t i, int depth, size_t mod, uint64_t modoff) {
  const level *lv = &s->levels[k];
  size_t e;
  if (k == 0) {
    if (holds(s, mod, modoff, depth))
      emit(s, mod, modoff, depth);
    return;
  }
  for (e = lv->first[i]; e < lv->first[i + 1] && s->found < s->limit; e++) {
    s->offsets[depth - k] = lv->edges[e].offset;
    walk(s, k - 1, lv->edges[e].parent, depth, mod, modoff);
  }
}

/* core.ptrscan(maps, targets, statics, bases, depth, max_offset, limit)
 *   -> { {module, offset, off1, ...}, ... }, truncated
 * statics: {lo1, hi1, lo2, hi2, ...} per module of maps[1] (the static
 * ranges; the module index is the pair's); bases: per map, a list of the
 * module bases (false where the map has no such module). */
static int core_ptrscan(lua_State *L) {
  scan s;
  size_t i, nstatic;
  lua_Integer depth = luaL_checkinteger(L, 5);
  lua_Integer max_offset = luaL_checkinteger(L, 6);
  lua_Integer limit = luaL_checkinteger(L, 7);
  int k, truncated = 0, ok = 1;
  uint64_t *statics;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checktype(L, 4, LUA_TTABLE);
  luaL_argcheck(L, depth >= 1 && depth <= DEPTH_MAX, 5, "depth must be 1 to 16");
  luaL_argcheck(L, max_offset >= 0 && max_offset <= (lua_Integer)UINT32_MAX, 6,
                "max_offset must be 0 to 0xFFFFFFFF");
  luaL_argcheck(L, limit >= 0, 7, "limit must not be negative");
  memset(&s, 0, sizeof s);
  s.L = L;
  s.limit = (size_t)limit;
  s.nmaps = (size_t)lua_rawlen(L, 1);
  luaL_argcheck(L, s.nmaps >= 1 && s.nmaps <= 64 && (size_t)lua_rawlen(L, 2) == s.nmaps &&
                   (size_t)lua_rawlen(L, 4) == s.nmaps, 1, "1 to 64 maps, one target and one base list each");
  nstatic = (size_t)lua_rawlen(L, 3) / 2;
  luaL_argcheck(L, nstatic <= 65536, 3, "at most 65536 modules");
  s.nmod = nstatic;
  s.maps = (ptrmap **)lua_newuserdatauv(L, s.nmaps * sizeof *s.maps, 0);
  s.targets = (uint64_t *)lua_newuserdatauv(L, s.nmaps * sizeof *s.targets, 0);
  s.bases = (uint64_t *)lua_newuserdatauv(L, (s.nmaps * s.nmod + 1) * sizeof *s.bases, 0);
  statics = (uint64_t *)lua_newuserdatauv(L, (2 * nstatic + 1) * sizeof *statics, 0);
  s.levels = ((levels *)lua_newuserdatauv(L, sizeof(levels), 0))->lv;
  memset(s.levels, 0, sizeof(levels));
  luaL_setmetatable(L, SCAN_META);
  lua_toclose(L, -1);
  for (i = 0; i < s.nmaps; i++) {
    size_t j;
    lua_rawgeti(L, 1, (lua_Integer)i + 1);
    s.maps[i] = check_finished(L, -1);
    lua_pop(L, 1);
    luaL_argcheck(L, s.maps[i]->bits == s.maps[0]->bits, 1,
                  "the maps are of processes of different pointer sizes");
    lua_rawgeti(L, 2, (lua_Integer)i + 1);
    s.targets[i] = (uint64_t)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    lua_rawgeti(L, 4, (lua_Integer)i + 1);
    luaL_checktype(L, -1, LUA_TTABLE);
    for (j = 0; j < s.nmod; j++) {
      lua_rawgeti(L, -1, (lua_Integer)j + 1);
      s.bases[i * s.nmod + j] = lua_isinteger(L, -1) ? (uint64_t)lua_tointeger(L, -1) : UINT64_MAX;
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  for (i = 0; i < 2 * nstatic; i++) {
    lua_rawgeti(L, 3, (lua_Integer)i + 1);
    statics[i] = (uint64_t)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
  }
  lua_newtable(L);
  s.result = lua_gettop(L);
  /* level 0: the target alone */
  s.levels[0].nodes = (uint64_t *)malloc(sizeof(uint64_t));
  s.levels[0].first = (size_t *)calloc(2, sizeof(size_t));
  s.levels[0].n = 1;
  if (s.levels[0].nodes == NULL || s.levels[0].first == NULL)
    ok = 0;
  else
    s.levels[0].nodes[0] = s.targets[0];
  for (k = 0; ok && k < depth && !truncated; k++) {
    if (s.levels[k].n == 0)
      break;
    ok = next_level(s.maps[0], &s.levels[k], (uint64_t)max_offset, &s.levels[k + 1], &truncated);
  }
  /* chains, shortest first; by module (the caller sorted them), by offset */
  for (k = 1; ok && k <= depth && s.found < s.limit; k++) {
    size_t mod;
    for (mod = 0; mod < nstatic && s.found < s.limit; mod++) {
      const level *lv = &s.levels[k];
      uint64_t lo = statics[2 * mod], hi = statics[2 * mod + 1];
      size_t a = 0, b = lv->n;
      while (a < b) { /* the first node at or above lo */
        size_t mid = a + (b - a) / 2;
        if (lv->nodes[mid] < lo)
          a = mid + 1;
        else
          b = mid;
      }
      for (; a < lv->n && lv->nodes[a] < hi && s.found < s.limit; a++)
        walk(&s, k, a, k, mod, lv->nodes[a] - lo);
    }
  }
  if (!ok)
    return luaL_error(L, "not enough memory for the pointer scan");
  lua_pushvalue(L, s.result);
  lua_pushboolean(L, truncated);
  return 2;
}

static const luaL_Reg map_methods[] = {
  {"target", map_target},
  {"finish", map_finish},
  {"count", map_count},
  {"bits", map_bits},
  {"value_at", map_value_at},
  {"save", map_save},
  {"close", map_close},
  {NULL, NULL}
};

static const luaL_Reg map_metamethods[] = {
  {"__index", NULL}, /* the methods table */
  {"__gc", map_close},
  {"__close", map_close},
  {NULL, NULL}
};

static const luaL_Reg file_metamethods[] = {
  {"__gc", mapfile_close},
  {"__close", mapfile_close},
  {NULL, NULL}
};

static const luaL_Reg levels_metamethods[] = {
  {"__gc", levels_close},
  {"__close", levels_close},
  {NULL, NULL}
};

void rm_ptrmap_open(lua_State *L) {
  static const luaL_Reg none[] = {{NULL, NULL}};
  rmem_createmeta(L, MAP_META, map_metamethods, map_methods);
  rmem_createmeta(L, FILE_META, file_metamethods, none);
  rmem_createmeta(L, SCAN_META, levels_metamethods, none);
  lua_pushcfunction(L, map_new);
  lua_setfield(L, -2, "ptrmap");
  lua_pushcfunction(L, map_load);
  lua_setfield(L, -2, "ptrmap_load");
  lua_pushcfunction(L, core_ptrscan);
  lua_setfield(L, -2, "ptrscan");
}
