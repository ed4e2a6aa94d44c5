/*
 * System calls run inside another Linux process, for the Linux backend.
 * Never includes lua.h.
 */
#ifndef RMEM_INJECT_LINUX_H
#define RMEM_INJECT_LINUX_H

#include <sys/types.h>

#include "backend.h"

typedef struct rb_inject_call {
  long nr;
  long args[6];
  long ret; /* the raw result: -errno on failure */
} rb_inject_call;

/* Runs calls[0..n) in one thread of process pid, in order, stopping at the
 * first that fails, in one ptrace session of a short-lived helper process:
 * attach, run, restore the thread's registers and signal mask, detach.
 * is32: the target runs in 32-bit mode (int $0x80, ia32 numbers). memfd
 * (or -1): a /proc/PID/mem descriptor of the address space meant; once the
 * thread is stopped, ESRCH if that address space is gone (the process
 * exited or exec'd meanwhile). A call that the stop made fail with EINTR
 * (epoll_wait, sigtimedwait, ...) is issued again on resume. Returns 0
 * once the calls ran (their results in ret), or the errno that kept them
 * from running: EPERM for a thread under a seccomp filter. */
rb_err rb_inject(pid_t pid, int memfd, int is32, rb_inject_call *calls, int n);

/* Calls fn(arg) in one thread of process pid (System V x86_64, or cdecl
 * for 32-bit targets), on that thread's stack below its red zone, returning
 * into an int3 of the vDSO; the thread's registers and signal mask are
 * restored afterwards whatever happens. Waits at most timeout_ms: then
 * ETIMEDOUT (the call is abandoned where it stands); a fault inside fn
 * gives EFAULT. *result is fn's return value (rax / eax). */
rb_err rb_inject_fn(pid_t pid, int memfd, int is32, uintptr_t fn, uintptr_t arg,
                    unsigned long timeout_ms, uintptr_t *result);

/* Runs entry(arg) in a helper process as the injections do (sharing the
 * host's memory, no exit signal, every signal blocked, its own process
 * group) and waits for it: the ptrace stops it causes notify the helper,
 * never the host. Under valgrind the helper is a fork: results must come
 * back through a pipe. */
rb_err rb_helper_run(int (*entry)(void *), void *arg);

/* Before code in p is patched (threads_linux.c): the rights it takes
 * (EACCES) and the identity check (ESRCH after an exit, exec or pid reuse). */
rb_err rb_begin_code(rb_proc *p);

#endif
