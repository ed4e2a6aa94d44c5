/*
 * The interface between rmem.core (core.c, the only file that talks to Lua)
 * and one backend per operating system (backend_win.c, ...).
 *
 * Backends never include lua.h. Every call that can fail returns 0 on
 * success or the OS error code (GetLastError() on Windows, errno on Linux),
 * read right after the failing call. Flags, protections and access masks are
 * the Win32 numbers on every platform.
 */
#ifndef RMEM_BACKEND_H
#define RMEM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef unsigned long rb_err;

/* luaopen_rmem_core must be exported from the DLL whatever builds it. */
#if defined(_WIN32)
#define RMEM_EXPORT __declspec(dllexport)
#else
#define RMEM_EXPORT __attribute__((visibility("default")))
#endif

/* An open process: opaque, owned by the backend, released by rb_close. */
typedef struct rb_proc rb_proc;

/* One VirtualQueryEx answer. */
typedef struct rb_region {
  uintptr_t base, allocation_base;
  size_t size;
  unsigned long allocation_protect, state, protect, type;
} rb_region;

/* One running process, as a process list gives it. */
typedef struct rb_procinfo {
  unsigned long pid, parent_pid;
  char name[260]; /* the executable's base name, UTF-8 */
} rb_procinfo;

extern const char rb_platform[];
size_t rb_page_size(void);
size_t rb_granularity(void);
/* The highest address a user-mode allocation can reach, plus one. */
uintptr_t rb_user_end(void);

rb_err rb_open(unsigned long pid, unsigned long access, rb_proc **out);
rb_err rb_open_self(rb_proc **out);
void rb_close(rb_proc *p);

unsigned long rb_pid(const rb_proc *p);
int rb_bits(const rb_proc *p);
/* The end of the addresses the process can use (2^32 for a 32-bit process
 * on Linux), or 0 where only the pointer size limits them. */
uintptr_t rb_addr_end(const rb_proc *p);
/* 1 once the program the handle was opened on was replaced by another in
 * the same process (exec on Linux): the handle then acts as if it ended. */
int rb_replaced(const rb_proc *p);
/* The executable's base name, UTF-8, into buf (empty if unknown). */
void rb_name(const rb_proc *p, char *buf, size_t n);
/* *alive is 1 while the process runs; once it ended, *known says whether
 * its exit code *code is known (Linux knows it for the host's children). */
rb_err rb_status(const rb_proc *p, int *alive, unsigned long *code, int *known);
/* 1 once the process is known to have ended (a handle without the right to
 * ask is taken as alive: the next operation tells). */
int rb_exited(const rb_proc *p);

rb_err rb_alloc(rb_proc *p, uintptr_t addr, size_t size, unsigned long type,
                unsigned long protect, uintptr_t *out);
rb_err rb_free(rb_proc *p, uintptr_t addr, size_t size, unsigned long type);
rb_err rb_protect(rb_proc *p, uintptr_t addr, size_t size,
                  unsigned long protect, unsigned long *old);
rb_err rb_query(rb_proc *p, uintptr_t addr, rb_region *info);
/* The regions from addr upwards, as consecutive queries would give them, up
 * to cap of them or the top of user space: one snapshot on Linux. */
rb_err rb_regions(rb_proc *p, uintptr_t addr, rb_region *list, size_t cap, size_t *count);
/* *done is the number of bytes transferred, also when the call fails. */
rb_err rb_read(rb_proc *p, uintptr_t addr, void *buf, size_t n, size_t *done);
rb_err rb_write(rb_proc *p, uintptr_t addr, const void *buf, size_t n,
                size_t *done);

/* One piece of a batched read (rb_read_pieces). */
typedef struct rb_piece {
  uintptr_t addr;
  size_t n;
  int ok; /* set to 1 when all n bytes were read */
} rb_piece;

/* Reads the pieces into buf one after the other (each at the sum of the
 * sizes before it), in as few OS calls as the OS allows. A piece that cannot
 * be read whole gets ok = 0 and undefined bytes; the call fails only when
 * the process itself cannot be read (it has exited: ESRCH on Linux). */
rb_err rb_read_pieces(rb_proc *p, rb_piece *pieces, size_t count, void *buf);

/* A second handle on p's process, independent of p (its own OS handle,
 * its own state), for another thread; rb_close releases it. */
rb_err rb_dup(const rb_proc *p, rb_proc **out);

/* A thread of the host's own (thread_linux.c, thread_win.c). */
typedef struct rb_thread rb_thread;
typedef void (*rb_thread_fn)(rb_thread *self, void *arg);
rb_err rb_thread_start(rb_thread_fn fn, void *arg, rb_thread **out);
/* For fn: waits ms milliseconds, or less once asked to stop; 1 if asked. */
int rb_thread_wait(rb_thread *t, unsigned long ms);
/* 1 once fn has returned (what it wrote before is then visible). */
int rb_thread_done(rb_thread *t);
/* Asks the thread to stop, waits until fn has returned, and frees t. */
void rb_thread_join(rb_thread *t);
void rb_sleep(unsigned long ms);

/* A hint for a large buffer of the host's about to be filled: Linux backs
 * it with huge pages, which fault in 512 times less often. */
void rb_large_buffer(void *buf, size_t n);

/* Runs fn(arg) in the process (a remote thread on Windows, a borrowed
 * thread on Linux) and waits at most timeout_ms for its result. After
 * EFAULT (Linux: fn faulted) *result is the address that faulted. */
rb_err rb_call(rb_proc *p, uintptr_t fn, uintptr_t arg, unsigned long timeout_ms,
               uintptr_t *result);

/* A code patch made with every thread of the process stopped (p:hook). */
typedef struct rb_move {
  uintptr_t from, to; /* a thread stopped at from continues at to */
} rb_move;
typedef struct rb_patch {
  uintptr_t addr;               /* where bytes go (n may be 0: no write) */
  const void *bytes;
  size_t n;
  const rb_move *moves;
  size_t nmoves;
  uintptr_t busy_lo, busy_hi;   /* a thread's IP in [busy_lo, busy_hi) ... */
  uintptr_t counter;            /* ... or a non-zero u32 here (0: none) */
} rb_patch;
/* Stops every thread; if one is busy (above) does nothing and gives
 * EBUSY / ERROR_BUSY; else writes the bytes whatever the page's protection
 * (which it leaves as it was) and moves the threads whose instruction
 * pointer is a move's from; *moved counts them. Then resumes them all. */
rb_err rb_patch_code(rb_proc *p, const rb_patch *patch, size_t *moved);

/* One module: an executable or library mapped into a process. */
typedef struct rb_module {
  uintptr_t base;
  size_t size;
  char name[260];  /* the file's base name, UTF-8 */
  char path[1024]; /* its full path, UTF-8 */
} rb_module;

/* The process's modules, as rb_processes fills its list. */
rb_err rb_modules(rb_proc *p, rb_module *list, size_t cap, size_t *count);

/* Fills up to cap entries and sets *count to the number of processes, which
 * may exceed cap: call again with a larger buffer then. */
rb_err rb_processes(rb_procinfo *list, size_t cap, size_t *count);
rb_err rb_enable_debug_privilege(void);

/* Wine's version where rmem runs under Wine (ntdll's wine_get_version),
 * else NULL: a few things (other Wine prefixes) are invisible there. */
const char *rb_wine_version(void);
/* The address of the process's PEB, and the TEB addresses of the threads
 * that can be queried, as rb_modules fills its list (Windows; ENOSYS on
 * Linux): p:map() labels the process heap and the thread stacks. */
rb_err rb_peb(rb_proc *p, uintptr_t *out);
rb_err rb_tebs(rb_proc *p, uintptr_t *list, size_t cap, size_t *count);

/* The OS's text for an error code, without a trailing newline. */
void rb_message(rb_err code, char *buf, size_t n);
/* The symbolic names of the error codes this platform gives
 * ("ERROR_ACCESS_DENIED", "EPERM"); ends with {0, NULL}. */
typedef struct rb_error_entry {
  rb_err code;
  const char *name;
} rb_error_entry;
extern const rb_error_entry rb_error_names[];

#endif
