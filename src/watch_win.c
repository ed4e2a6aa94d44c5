/*
 * p:watch on Windows, the host's side of the handler's ring (watch.h): the
 * vectored exception handler that lua/rmem/watch.lua writes into the target
 * records each hit into a ring of RING entries in the target's memory; a
 * thread of the host's own drains that ring every DRAIN_MS into a table of
 * (instruction, thread, slots hit) -> count, so that a busy writer (about
 * 15,000 hits a second under Wine, many more on Windows) does not fill it
 * between two w:hits(). w:hits() drains once more and takes the table.
 *
 * The handler's data (at the handler + 512; lua/rmem/watch.lua and
 * src/watch_handler_x64.s have the whole layout): u64 head at +8 (entries
 * reserved), u64 tail at +16 (entries the host has read: only the host
 * writes it), u64 dropped[4] at +24 (hits that found the ring full, by
 * slot), u64 nonce at +112 (which host's record this is), the ring at +256:
 * entries of 32 bytes { u64 ip, u32 tid, u32 generation, u16 slots,
 * u16 sequence }, the sequence (index + 1) written last.
 */
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>

#include <stdlib.h>
#include <string.h>

#include "watch.h"

#define RING 32768u
#define ENTRY 32u
#define D_HEAD 8u
#define D_TAIL 16u
#define D_RING 256u
#define HEADER 112u  /* head .. nonce: read in one piece */
#define H_DROPPED 16u /* offsets in that piece */
#define H_NONCE 104u
#define CHUNK 2048u  /* entries read at a time: 64 KiB */
#define DRAIN_MS 3
#define CLEAR 0x8000u /* in an entry's slots: the thread was left with none of rmem's registers */

typedef struct seen_thread {
  unsigned long tid, gen;
  ULONGLONG at; /* GetTickCount64 of its latest entry */
  int clear;
} seen_thread;

struct rw_ring {
  uintptr_t data;
  uint64_t nonce, tail;
  CRITICAL_SECTION lock; /* over everything below */
  rb_thread *t;          /* the drainer, NULL when none */
  rb_proc *own;          /* its own handle on the process */
  int exited;            /* the drainer found the process gone */
  unsigned long long dropped[4], lost[4]; /* the handler's counts; entries the host had no memory for */
  ULONGLONG dropped_at;  /* when the handler's counts last changed */
  rw_ring_hit *hits;     /* open addressing; count 0 = empty */
  size_t hsize, hused;
  seen_thread *threads;
  size_t nthreads, tcap, last; /* last: where the latest entry's thread was found */
  unsigned char buf[CHUNK * ENTRY];
};

static uint64_t u64_at(const unsigned char *b) {
  uint64_t v;
  memcpy(&v, b, sizeof v);
  return v;
}

static size_t hit_index(const rw_ring *r, uintptr_t ip, unsigned long tid, unsigned slots) {
  uint64_t k = ((uint64_t)ip * 31 + tid) * 16 + slots;
  return (size_t)((k * 0x9E3779B97F4A7C15ULL) >> 24) & (r->hsize - 1);
}

/* Adds n hits at (ip, tid, slots); 0 when out of memory. */
static int count_hit(rw_ring *r, uintptr_t ip, unsigned long tid, unsigned slots,
                     unsigned long long n) {
  size_t i;
  if ((r->hused + 1) * 2 > r->hsize) {
    rw_ring_hit *old = r->hits;
    size_t k, oldsize = r->hsize, size = oldsize ? oldsize * 2 : 64;
    rw_ring_hit *grown = (rw_ring_hit *)calloc(size, sizeof *grown);
    if (grown == NULL)
      return 0;
    r->hits = grown;
    r->hsize = size;
    r->hused = 0;
    for (k = 0; k < oldsize; k++)
      if (old[k].count)
        count_hit(r, old[k].ip, old[k].tid, old[k].slots, old[k].count);
    free(old);
  }
  i = hit_index(r, ip, tid, slots);
  while (r->hits[i].count && !(r->hits[i].ip == ip && r->hits[i].tid == tid &&
                               r->hits[i].slots == slots))
    i = (i + 1) & (r->hsize - 1);
  if (r->hits[i].count == 0) {
    r->hits[i].ip = ip;
    r->hits[i].tid = tid;
    r->hits[i].slots = slots;
    r->hused++;
  }
  r->hits[i].count += n;
  return 1;
}

/* Notes an entry of thread tid; 0 when out of memory. */
static int note_thread(rw_ring *r, unsigned long tid, unsigned long gen, int clear,
                       ULONGLONG now) {
  seen_thread *t;
  size_t i = r->last;
  if (i >= r->nthreads || r->threads[i].tid != tid)
    for (i = 0; i < r->nthreads && r->threads[i].tid != tid; i++)
      ;
  if (i == r->nthreads) {
    if (r->nthreads == r->tcap) {
      size_t cap = r->tcap ? r->tcap * 2 : 16;
      seen_thread *grown = (seen_thread *)realloc(r->threads, cap * sizeof *grown);
      if (grown == NULL)
        return 0;
      r->threads = grown;
      r->tcap = cap;
    }
    r->threads[i].tid = tid;
    r->threads[i].gen = gen;
    r->nthreads++;
  }
  t = &r->threads[i];
  if (gen > t->gen)
    t->gen = gen;
  t->at = now;
  t->clear = clear;
  r->last = i;
  return 1;
}

/* One entry: its thread noted, its hits counted (an entry with no slot is
 * a change of the thread's registers only). */
static void record(rw_ring *r, const unsigned char *e, ULONGLONG now) {
  uint32_t tid, gen;
  uint16_t slots;
  unsigned s, hit;
  int ok;
  memcpy(&tid, e + 8, 4);
  memcpy(&gen, e + 12, 4);
  memcpy(&slots, e + 16, 2);
  hit = slots & 0xFu;
  ok = note_thread(r, tid, gen, (slots & CLEAR) != 0, now);
  if (hit && ok)
    ok = count_hit(r, (uintptr_t)u64_at(e), tid, hit, 1);
  if (!ok) { /* read off the ring but not kept: it counts as dropped */
    for (s = 0; s < 4; s++)
      if (hit & 1u << s)
        r->lost[s]++;
    r->dropped_at = now;
  }
}

/* Moves what the handler has written since the last drain into the tables
 * and tells the handler (the tail) that its entries are free again. With
 * the lock held. A ring whose nonce is no longer this record's belongs to
 * another host now: left alone. */
static rb_err drain(rw_ring *r, rb_proc *p) {
  unsigned char h[HEADER];
  uint64_t head, t = r->tail, sum = 0, before = 0;
  ULONGLONG now = GetTickCount64();
  size_t done;
  unsigned s;
  rb_err e;
  if ((e = rb_read(p, r->data + D_HEAD, h, sizeof h, &done)))
    return e;
  if (u64_at(h + H_NONCE) != r->nonce)
    return 0;
  head = u64_at(h);
  for (s = 0; s < 4; s++) {
    before += r->dropped[s];
    r->dropped[s] = u64_at(h + H_DROPPED + 8 * s);
    sum += r->dropped[s];
  }
  if (sum != before)
    r->dropped_at = now;
  while (t < head) {
    /* what is left of the ring from t's entry on, a chunk at a time */
    size_t first = (size_t)(t % RING), n = (size_t)(head - t), i, k;
    if (n > RING - first)
      n = RING - first;
    if (n > CHUNK)
      n = CHUNK;
    if ((e = rb_read(p, r->data + D_RING + ENTRY * first, r->buf, ENTRY * n, &done)))
      break;
    for (i = 0; i < n; i++) {
      uint16_t seq;
      memcpy(&seq, r->buf + ENTRY * i + 18, 2);
      if (seq != (uint16_t)(t + i + 1))
        break; /* reserved, not written yet */
    }
    /* The copy may have read an entry's payload before the handler wrote
     * it and its sequence after: read the complete ones again (the handler
     * wrote their payload before their sequence, and cannot reuse them
     * before the tail moves). */
    if (i > 0 && (e = rb_read(p, r->data + D_RING + ENTRY * first, r->buf, ENTRY * i, &done)))
      break;
    for (k = 0; k < i; k++)
      record(r, r->buf + ENTRY * k, now);
    t += i;
    if (i < n)
      break;
  }
  if (t != r->tail) {
    r->tail = t;
    return rb_write(p, r->data + D_TAIL, &t, sizeof t, &done);
  }
  return e;
}

/* The drainer: checks that the process still runs before each drain (the
 * handle is the identity on Windows, the nonce the record's), and ends
 * quietly once it has exited. An error is left for the next take to report. */
static void run(rb_thread *self, void *arg) {
  rw_ring *r = (rw_ring *)arg;
  do {
    if (rb_exited(r->own)) {
      r->exited = 1;
      return;
    }
    EnterCriticalSection(&r->lock);
    drain(r, r->own);
    LeaveCriticalSection(&r->lock);
  } while (!rb_thread_wait(self, DRAIN_MS));
}

rb_err rw_ring_new(uintptr_t data, uint64_t tail, uint64_t nonce, rw_ring **out) {
  rw_ring *r = (rw_ring *)calloc(1, sizeof *r);
  *out = NULL;
  if (r == NULL)
    return ERROR_NOT_ENOUGH_MEMORY;
  r->data = data;
  r->tail = tail;
  r->nonce = nonce;
  InitializeCriticalSection(&r->lock);
  *out = r;
  return 0;
}

rb_err rw_ring_start(rw_ring *r, const rb_proc *p) {
  rb_err e;
  if (r->t != NULL) {
    if (!rb_thread_done(r->t))
      return 0;
    rw_ring_stop(r); /* it found the process gone */
  }
  if (r->exited)
    return 0;
  if ((e = rb_dup(p, &r->own)))
    return e;
  if ((e = rb_thread_start(run, r, &r->t))) {
    rb_close(r->own);
    r->own = NULL;
    r->t = NULL;
  }
  return e;
}

void rw_ring_stop(rw_ring *r) {
  if (r->t != NULL) {
    rb_thread *t = r->t;
    r->t = NULL;
    rb_thread_join(t);
    rb_close(r->own);
    r->own = NULL;
  }
}

rb_err rw_ring_take(rw_ring *r, rb_proc *p, rw_ring_hit *hits, size_t hcap, size_t *nhits,
                    rw_ring_thread *threads, size_t tcap, size_t *nthreads,
                    unsigned long long dropped[4], unsigned long *dropped_age) {
  ULONGLONG now = GetTickCount64();
  rb_err e;
  size_t i, k = 0;
  unsigned s;
  EnterCriticalSection(&r->lock);
  e = drain(r, p);
  if (e && rb_exited(p)) /* of a process that has exited: the hits drained until then */
    e = 0;
  *nhits = r->hused;
  *nthreads = r->nthreads;
  if (!e && r->hused <= hcap && r->nthreads <= tcap) {
    for (i = 0; i < r->hsize; i++)
      if (r->hits[i].count)
        hits[k++] = r->hits[i];
    if (r->hits != NULL)
      memset(r->hits, 0, r->hsize * sizeof *r->hits);
    r->hused = 0;
    for (i = 0; i < r->nthreads; i++) {
      threads[i].tid = r->threads[i].tid;
      threads[i].gen = r->threads[i].gen;
      threads[i].age_ms = (unsigned long)(now - r->threads[i].at);
      threads[i].clear = r->threads[i].clear;
    }
    r->nthreads = 0;
  }
  for (s = 0; s < 4; s++)
    dropped[s] = r->dropped[s] + r->lost[s];
  *dropped_age = (unsigned long)(now - r->dropped_at);
  LeaveCriticalSection(&r->lock);
  return e;
}

void rw_ring_free(rw_ring *r) {
  if (r == NULL)
    return;
  rw_ring_stop(r);
  DeleteCriticalSection(&r->lock);
  free(r->hits);
  free(r->threads);
  free(r);
}
