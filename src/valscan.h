/*
 * The value scanner's engine: plain C, no Lua, no OS (reads come through a
 * callback). A scan keeps its candidates per block of the target's address
 * space (1 MiB), each block either dense (a copy of its bytes and a bitmap
 * of the candidate slots, or no bitmap when every slot is one) or sparse
 * (ascending offsets and the values kept for them), whichever is smaller.
 * Values are little-endian, as on every platform rmem runs on.
 */
#ifndef RMEM_VALSCAN_H
#define RMEM_VALSCAN_H

#include <stddef.h>
#include <stdint.h>

/* The longest string value, and the largest alignment. */
#define VS_MAX_BYTES 65536
#define VS_MAX_ALIGN 65536

typedef enum vs_type {
  VS_I8, VS_U8, VS_I16, VS_U16, VS_I32, VS_U32, VS_I64, VS_U64, VS_F32, VS_F64,
  VS_BYTES /* string and wstring: the bytes as given */
} vs_type;

typedef enum vs_op {
  VS_EQ, VS_NE, VS_LT, VS_LE, VS_GT, VS_GE, VS_BETWEEN, VS_UNKNOWN,
  /* against the value the previous pass kept */
  VS_CHANGED, VS_UNCHANGED, VS_INCREASED, VS_DECREASED, VS_INCREASED_BY, VS_DECREASED_BY
} vs_op;

/* What a pass looks for. Values fit the type (the caller checks); BETWEEN
 * takes its two values in either order. */
typedef struct vs_query {
  vs_op op;
  int64_t i1, i2;             /* integer types (u64: the bits) */
  double f1, f2;              /* f32, f64: never NaN */
  double tol;                 /* f32, f64: for EQ, NE, INCREASED_BY, DECREASED_BY */
  const unsigned char *bytes; /* VS_BYTES: the value, the scan's size long (copied) */
} vs_query;

/* Reads n bytes at addr into buf: 0, or the OS's error code. */
typedef unsigned long (*vs_read_fn)(void *ctx, uintptr_t addr, void *buf, size_t n);
/* Asked after a read failed: nonzero if the process has gone. */
typedef int (*vs_gone_fn)(void *ctx);

typedef struct vs_reader {
  vs_read_fn read;
  vs_gone_fn gone;
  void *ctx;
} vs_reader;

typedef struct vs_scan vs_scan;

/* What vs_step returns. */
enum { VS_MORE, VS_DONE, VS_GONE, VS_NOMEM };

/* A scan for values of size bytes at addresses that are multiples of align
 * (1 to VS_MAX_ALIGN), keeping at most limit candidates; page is the
 * target's page size. NULL when out of memory. */
vs_scan *vs_new(vs_type type, size_t size, size_t align, size_t page, uint64_t limit);
void vs_free(vs_scan *s);

/* Adds [lo, hi) to the memory a pass may read: ascending, not overlapping,
 * between passes. The first pass reads the runs; a later one drops the
 * candidates that no run covers (pages gone or no longer of the protection
 * wanted: a failed read cannot tell, as Wine reads decommitted pages as
 * zeros). 0 when out of memory. */
int vs_add_run(vs_scan *s, uintptr_t lo, uintptr_t hi);
void vs_clear_runs(vs_scan *s);
/* The range the candidates lie in: 0 when there are none. */
int vs_bounds(const vs_scan *s, uintptr_t *lo, uintptr_t *hi);

/* Starts a pass (ending one that runs): the first one reads the runs, each
 * later one the blocks that hold candidates. 0 when the op needs a
 * previous pass and there was none. */
int vs_begin(vs_scan *s, const vs_query *q);

/* Goes on with the pass for about budget bytes of address space. VS_MORE:
 * call again; VS_DONE: the pass is over. VS_GONE (the process has gone;
 * *err is the failed read's code) and VS_NOMEM end the pass as vs_stop
 * does. Pages that cannot be read lose their candidates. */
int vs_step(vs_scan *s, const vs_reader *r, size_t budget, unsigned long *err);

/* Ends the pass now: a first pass keeps what it found, a later one drops
 * the candidates it had not reached. */
void vs_stop(vs_scan *s);

int vs_active(const vs_scan *s);
uint64_t vs_count(const vs_scan *s);
/* The bytes the candidates take (not the fixed buffers of a scan, about
 * 1.2 MiB while a pass runs). */
uint64_t vs_memory(const vs_scan *s);
/* The pass's progress, in bytes of address space. */
uint64_t vs_done(const vs_scan *s);
uint64_t vs_total(const vs_scan *s);

/* Up to max candidates from *pos on (0 at the start), ascending: their
 * addresses, and pointers to their values (size bytes, valid until the next
 * pass) if vals is not NULL. Returns how many; *pos moves past them. */
size_t vs_items(const vs_scan *s, uint64_t *pos, uintptr_t *addrs, const unsigned char **vals,
                size_t max);

#endif
