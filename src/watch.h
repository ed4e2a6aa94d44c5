/*
 * Hardware watches (p:watch): the part that needs the OS's help.
 *
 * Linux (watch_linux.c): perf_event_open(PERF_TYPE_BREAKPOINT) events on
 * every thread of the target and CPU, inherited by the threads created
 * later, with a sample ring per CPU that a host thread drains; or the
 * debug registers set by a tracer process (watch_ptrace_linux.c).
 *
 * Windows (backend_win.c): rb_debug_registers sets rmem's debug registers
 * on the threads the host may stop; the handler that records the hits and
 * updates the others lives in the target (lua/rmem/watch.lua writes and
 * installs it, src/watch_handler_x64.s is its source); watch_win.c drains
 * the ring it fills from a host thread (rw_ring_*).
 */
#ifndef RMEM_WATCH_H
#define RMEM_WATCH_H

#include "backend.h"

/* The access kinds, as DR7's RW bits encode them. */
enum { RW_EXECUTE = 0, RW_WRITE = 1, RW_READWRITE = 3 };

typedef struct rw_watch rw_watch;

/* Hits recorded since the last rw_poll, one per (instruction, thread). */
typedef struct rw_hit {
  uintptr_t ip; /* what the CPU reported: after the access for data watches */
  unsigned long tid;
  unsigned long long count;
} rw_hit;

rb_err rw_open(rb_proc *p, uintptr_t addr, int size, int kind, rw_watch **out);
/* Fills up to cap hits and sets *n to how many are pending (call again
 * with more room when *n > cap: nothing is lost); *dropped is the number of
 * hits the OS could not record, since the watch started. */
rb_err rw_poll(rw_watch *w, rw_hit *list, size_t cap, size_t *n, unsigned long long *dropped);
/* Disarms every thread, then frees everything; idempotent through NULL. */
void rw_close(rw_watch *w);
/* "perf" (how the watch is armed; tostring shows it). */
const char *rw_method(const rw_watch *w);

/* Windows: the state of rmem's debug registers on a thread: Dr0-3 of the
 * slots in `slots` (bits 0-3) hold addr[], DR7's bits under `mask` are dr7
 * (the others stay as they are). */
typedef struct rb_dr_state {
  uintptr_t addr[4];
  unsigned slots;
  unsigned long long mask, dr7;
} rb_dr_state;

/* Windows: every thread of the process but the nskip in skip set to that
 * state (skipped: those the in-target handler updates itself, since Wine
 * can deadlock a thread suspended inside a debug exception); want NULL only
 * lists them. The process's thread ids go to seen (up to cap), their number
 * to *threads. */
rb_err rb_debug_registers(rb_proc *p, const rb_dr_state *want, const unsigned long *skip,
                          size_t nskip, unsigned long *seen, size_t cap, size_t *threads);

/* Windows: the host's side of the handler's ring (watch_win.c; Linux has
 * none: rw_ring_new fails with ENOSYS). */
typedef struct rw_ring rw_ring;

/* How often one (instruction, thread, slots hit) was recorded. */
typedef struct rw_ring_hit {
  uintptr_t ip; /* as the handler recorded it: after the access for data watches */
  unsigned long tid;
  unsigned slots; /* bits 0-3 */
  unsigned long long count;
} rw_ring_hit;

/* What the entries of one thread said: the newest generation of the host's
 * wishes it held, how long ago its latest entry was drained, and whether
 * that entry left it with none of rmem's registers enabled. */
typedef struct rw_ring_thread {
  unsigned long tid, gen, age_ms;
  int clear;
} rw_ring_thread;

/* The ring of the handler data at `data` (the handler + 512), whose next
 * unread entry is `tail` and whose record says `nonce`; no thread yet. */
rb_err rw_ring_new(uintptr_t data, uint64_t tail, uint64_t nonce, rw_ring **out);
/* Starts the thread that drains it every few milliseconds, on a handle of
 * its own (rb_dup of p); nothing while it runs or once it found the
 * process gone. */
rb_err rw_ring_start(rw_ring *r, const rb_proc *p);
/* Stops and joins the thread; idempotent. */
void rw_ring_stop(rw_ring *r);
/* Drains through p, then hands over the hits and threads recorded since the
 * last take, when they fit in hcap and tcap (else *nhits and *nthreads say
 * how many there are: call again with more room, nothing is lost);
 * dropped[] is the handler's count by slot as of that drain, *dropped_age
 * the milliseconds since it last changed. */
rb_err rw_ring_take(rw_ring *r, rb_proc *p, rw_ring_hit *hits, size_t hcap, size_t *nhits,
                    rw_ring_thread *threads, size_t tcap, size_t *nthreads,
                    unsigned long long dropped[4], unsigned long *dropped_age);
/* Stops the thread and frees everything; NULL is fine. */
void rw_ring_free(rw_ring *r);

#endif
