/*
 * System calls inside another process (inject_linux.h).
 *
 * The host starts a helper process for each batch: the helper is the
 * tracer, so the host never gets ptrace stops or their SIGCHLDs and waits
 * for nothing but that helper's pid. The helper shares the host's memory
 * (clone with CLONE_VM | CLONE_VFORK: no page tables copied, which made a
 * fork of a host holding a large Lua heap cost milliseconds; the host waits
 * meanwhile) and has no exit signal, so the host gets no SIGCHLD for it. It
 * blocks every signal it can and leaves the host's process group, so a
 * Ctrl-C or a killed host never interrupts it halfway: it always restores
 * the target's registers and signal mask before it exits. It calls nothing
 * that allocates: everything it needs is prepared before it starts.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "inject_linux.h"

#define MAX_KEPT 16 /* signals that arrive during a session, re-raised after it */

typedef struct session {
  pid_t pid, tid;
  int memfd; /* the address space the caller opened (-1: not checked) */
  int is32, syscall_step;
  uintptr_t gadget;
  struct user_regs_struct saved;
  uint64_t saved_mask;
  int mask_set, regs_dirty;
  siginfo_t kept[MAX_KEPT];
  int nkept;
} session;

/* ---- before the fork: where and in which thread ---------------------------- */

/* The address of the instruction bytes insn[0..len) in the vDSO of thread
 * tid of process pid. */
static rb_err find_in_vdso(pid_t pid, pid_t tid, const unsigned char *insn, size_t len,
                           uintptr_t *out) {
  char path[64], line[512];
  unsigned char code[16384];
  FILE *f;
  unsigned long lo = 0, hi = 0;
  int found = 0, lines = 0;
  snprintf(path, sizeof path, "/proc/%d/task/%d/maps", (int)pid, (int)tid);
  if ((f = fopen(path, "re")) == NULL)
    return errno == ENOENT ? ESRCH : (rb_err)errno;
  while (!found && fgets(line, sizeof line, f)) {
    lines++;
    found = strstr(line, "[vdso]") != NULL && sscanf(line, "%lx-%lx", &lo, &hi) == 2;
  }
  fclose(f);
  if (lines == 0)
    return ESRCH; /* no memory at all: the process is exiting */
  if (found) {
    struct iovec local, remote;
    ssize_t got;
    size_t n = hi - lo < sizeof code ? hi - lo : sizeof code;
    local.iov_base = code;
    local.iov_len = n;
    remote.iov_base = (void *)lo;
    remote.iov_len = n;
    got = process_vm_readv(tid, &local, 1, &remote, 1, 0);
    if (got > 0) {
      unsigned char *at = (unsigned char *)memmem(code, (size_t)got, insn, len);
      if (at) {
        *out = (uintptr_t)lo + (uintptr_t)(at - code);
        return 0;
      }
    }
  }
  return ENOSYS; /* no vDSO, or no such instruction in it */
}

/* A `syscall` (or, 32-bit, `int $0x80`) instruction in the target. */
static rb_err find_gadget(pid_t pid, pid_t tid, int is32, uintptr_t *out) {
  const unsigned char insn[2] = {is32 ? 0xcd : 0x0f, is32 ? 0x80 : 0x05};
  return find_in_vdso(pid, tid, insn, sizeof insn, out);
}

/* Calls that fail with EINTR when a stop interrupts them, even with no
 * signal handler (signal(7)), and that are safe to issue again: the
 * session re-issues them (restart_eintr). */
static const long eintr64[] = {232 /* epoll_wait */, 281 /* epoll_pwait */,
                               441 /* epoll_pwait2 */, 128 /* rt_sigtimedwait */,
                               65 /* semop */, 220 /* semtimedop */,
                               45 /* recvfrom */, 47 /* recvmsg: with a timeout */, -2};
static const long eintr32[] = {256, 319, 441, 177, 421 /* rt_sigtimedwait_time64 */,
                               420 /* semtimedop_time64 */, 371, 372, -2};

static int listed(const long *list, long nr) {
  int i;
  for (i = 0; list[i] != -2; i++)
    if (list[i] == nr)
      return 1;
  return 0;
}

/* /proc/PID/task/TID/<what> into buf, NUL-terminated: 0, or -1. */
static int read_task_file(pid_t pid, long tid, const char *what, char *buf, size_t n) {
  char path[64];
  int fd;
  ssize_t got;
  snprintf(path, sizeof path, "/proc/%d/task/%ld/%s", (int)pid, tid, what);
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
    return -1;
  got = read(fd, buf, n - 1);
  close(fd);
  if (got <= 0)
    return -1;
  buf[got] = '\0';
  return 0;
}

/* A thread to borrow, the most harmless first: one blocked in a call the
 * kernel restarts by itself after the session, then one running (no call
 * to interrupt), then one blocked elsewhere, then one in a call that sees
 * EINTR (re-issued, but its timeout starts again). Never an exited thread
 * (a main thread that has exited stays listed while others run). 0: none. */
static pid_t choose_thread(pid_t pid, int is32) {
  static const long restart64[] = {0 /* read */, 7 /* poll */, 23 /* select */,
                                   34 /* pause */, 35 /* nanosleep */, 61 /* wait4 */,
                                   202 /* futex */, 230 /* clock_nanosleep */, -2};
  static const long restart32[] = {3, 168, 142, 29, 162, 114, 240, 267, -2};
  char path[64], buf[1024];
  DIR *d;
  struct dirent *ent;
  pid_t chosen = 0;
  int best = -1;
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  if ((d = opendir(path)) == NULL)
    return 0;
  while (best < 3 && (ent = readdir(d)) != NULL) {
    long tid = strtol(ent->d_name, NULL, 10), nr;
    const char *state;
    int rank;
    if (tid <= 0 || tid > 0x7fffffffL || read_task_file(pid, tid, "stat", buf, sizeof buf))
      continue;
    state = strrchr(buf, ')');
    if (state == NULL || state[1] == '\0' || state[2] == 'Z' || state[2] == 'X' ||
        read_task_file(pid, tid, "syscall", buf, sizeof buf))
      continue;
    nr = strtol(buf, NULL, 10);
    if (strncmp(buf, "running", 7) == 0)
      rank = 2;
    else if (listed(is32 ? restart32 : restart64, nr))
      rank = 3;
    else
      rank = listed(is32 ? eintr32 : eintr64, nr) ? 0 : 1;
    if (rank > best) {
      best = rank;
      chosen = (pid_t)tid;
    }
  }
  closedir(d);
  return chosen;
}

/* Reads the thread's status once for two things. Single-stepping raises
 * SIGTRAP, and a thread that ignores SIGTRAP would have it reset to the
 * default action: *ignores_trap says to step system call by system call
 * then. A seccomp filter (per thread) would apply to the injected calls
 * too, and one rule may kill the target: EPERM, nothing injected. */
static rb_err thread_status(pid_t tid, int *ignores_trap) {
  char path[64], buf[4096], *at;
  int fd;
  ssize_t got;
  snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
    return errno == ENOENT ? ESRCH : (rb_err)errno;
  got = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (got <= 0)
    return ESRCH;
  buf[got] = '\0';
  at = strstr(buf, "SigIgn:");
  *ignores_trap = at && (strtoull(at + 7, NULL, 16) & (1ULL << (SIGTRAP - 1)));
  at = strstr(buf, "Seccomp:");
  return at && strtol(at + 8, NULL, 10) != 0 ? EPERM : 0;
}

/* ---- in the helper: the ptrace session -------------------------------------------- */

static rb_err wait_stop(pid_t tid, int *st) {
  for (;;) {
    if (waitpid(tid, st, __WALL) < 0) {
      if (errno == EINTR)
        continue;
      return errno == ECHILD ? ESRCH : (rb_err)errno;
    }
    if (WIFEXITED(*st) || WIFSIGNALED(*st))
      return ESRCH;
    return 0;
  }
}

static void keep_signal(session *s) {
  if (s->nkept < MAX_KEPT &&
      ptrace(PTRACE_GETSIGINFO, s->tid, 0, &s->kept[s->nkept]) == 0)
    s->nkept++;
}

/* Our interrupt made a call like epoll_wait or sigtimedwait fail with
 * EINTR, which the kernel never restarts: point the thread back at its
 * system call instruction with the call's number, so that it issues the
 * call again when it resumes, as the kernel does for restartable calls. */
static void restart_eintr(session *s) {
  long nr = (long)s->saved.orig_rax;
  long ret = s->is32 ? (long)(int32_t)s->saved.rax : (long)s->saved.rax;
  if (nr >= 0 && ret == -EINTR && listed(s->is32 ? eintr32 : eintr64, nr)) {
    s->saved.rax = s->saved.orig_rax;
    s->saved.rip -= 2; /* syscall, int $0x80 (and sysenter's landing pad) */
    s->regs_dirty = 1;
  }
}

static rb_err attach(session *s) {
  int st;
  char c;
  rb_err e;
  uint64_t all_but_trap = ~(1ULL << (SIGTRAP - 1));
  if (ptrace(PTRACE_SEIZE, s->tid, 0, (void *)(long)PTRACE_O_TRACESYSGOOD))
    return (rb_err)errno;
  if (ptrace(PTRACE_INTERRUPT, s->tid, 0, 0))
    return (rb_err)errno;
  if ((e = wait_stop(s->tid, &st)))
    return e;
  /* a signal being delivered as we stopped it: give it back afterwards */
  if ((st >> 16) == 0 && WSTOPSIG(st) != SIGTRAP)
    keep_signal(s);
  if (ptrace(PTRACE_GETREGS, s->tid, 0, &s->saved))
    return (rb_err)errno;
  /* Stopped now: if the process exited or exec'd since the caller's check,
   * this thread may not be in the address space meant (see mm_alive in
   * backend_linux.c). */
  if (s->memfd >= 0 && pread(s->memfd, &c, 1, 0) == 0)
    return ESRCH;
  if (s->is32 != (s->saved.cs == 0x23))
    return EPROTO; /* the ELF class and the thread's mode disagree */
  if ((st >> 16) == PTRACE_EVENT_STOP)
    restart_eintr(s);
  /* Signals stay queued in the kernel for the session instead of stopping it. */
  if (ptrace(PTRACE_GETSIGMASK, s->tid, (void *)sizeof(uint64_t), &s->saved_mask) == 0 &&
      ptrace(PTRACE_SETSIGMASK, s->tid, (void *)sizeof(uint64_t), &all_but_trap) == 0)
    s->mask_set = 1;
  return 0;
}

static long decode(const session *s, unsigned long long rax) {
  uint32_t v;
  if (!s->is32)
    return (long)rax;
  v = (uint32_t)rax; /* ia32: only -4095..-1 are errors */
  return v >= (uint32_t)-4095 ? (long)(int32_t)v : (long)v;
}

static rb_err run_one(session *s, rb_inject_call *c) {
  struct user_regs_struct g = s->saved, now;
  int entered = 0, i;
  g.rip = s->gadget;
  g.orig_rax = (unsigned long long)-1; /* keep the kernel's restart logic off our frame */
  g.rax = (unsigned long long)c->nr;
  if (!s->is32) {
    g.rdi = (unsigned long long)c->args[0];
    g.rsi = (unsigned long long)c->args[1];
    g.rdx = (unsigned long long)c->args[2];
    g.r10 = (unsigned long long)c->args[3];
    g.r8 = (unsigned long long)c->args[4];
    g.r9 = (unsigned long long)c->args[5];
  } else {
    g.rbx = (uint32_t)c->args[0];
    g.rcx = (uint32_t)c->args[1];
    g.rdx = (uint32_t)c->args[2];
    g.rsi = (uint32_t)c->args[3];
    g.rdi = (uint32_t)c->args[4];
    g.rbp = (uint32_t)c->args[5];
  }
  if (ptrace(PTRACE_SETREGS, s->tid, 0, &g))
    return (rb_err)errno;
  s->regs_dirty = 1;
  for (i = 0; i < 4096; i++) {
    int st, sig;
    rb_err e;
    if (ptrace(s->syscall_step ? PTRACE_SYSCALL : PTRACE_SINGLESTEP, s->tid, 0, 0))
      return (rb_err)errno;
    if ((e = wait_stop(s->tid, &st)))
      return e;
    if (ptrace(PTRACE_GETREGS, s->tid, 0, &now))
      return (rb_err)errno;
    if (now.rip != s->gadget && now.rip != s->gadget + 2)
      return EPROTO; /* lost control of the thread: never seen */
    sig = WSTOPSIG(st);
    if ((st >> 16) != 0)
      continue; /* a pending interrupt or a group stop: resume */
    if (sig == (SIGTRAP | 0x80)) { /* PTRACE_SYSCALL: entry, then exit */
      if (entered) {
        c->ret = decode(s, now.rax);
        return 0;
      }
      entered = 1;
      continue;
    }
    if (!s->syscall_step && sig == SIGTRAP) {
      siginfo_t si;
      if (ptrace(PTRACE_GETSIGINFO, s->tid, 0, &si) == 0 && si.si_code > 0) {
        if (now.rip == s->gadget + 2) { /* our step: the call has run */
          c->ret = decode(s, now.rax);
          return 0;
        }
        continue;
      }
    }
    keep_signal(s); /* a real signal for the target: suppressed until detach */
  }
  return ELOOP;
}

static void detach(session *s) {
  int i;
  if (s->regs_dirty) /* verbatim, orig_rax too: an interrupted call restarts */
    ptrace(PTRACE_SETREGS, s->tid, 0, &s->saved);
  if (s->mask_set)
    ptrace(PTRACE_SETSIGMASK, s->tid, (void *)sizeof(uint64_t), &s->saved_mask);
  ptrace(PTRACE_DETACH, s->tid, 0, 0);
  for (i = 0; i < s->nkept; i++) {
    const siginfo_t *si = &s->kept[i];
    /* sigqueue()-style signals keep their payload; the rest are re-raised */
    if (si->si_code < 0 && si->si_code != SI_TKILL &&
        syscall(SYS_rt_tgsigqueueinfo, s->pid, s->tid, si->si_signo, si) == 0)
      continue;
    syscall(SYS_tgkill, s->pid, s->tid, si->si_signo);
  }
}

/* What the helper is given and what it leaves in the host's memory. */
typedef struct job {
  session s;
  rb_inject_call *calls;
  int n;
  rb_err err;
  int ran; /* calls that ran */
  /* a function call instead of system calls (calls == NULL) */
  uintptr_t fn, arg, trap, result;
  unsigned long timeout_ms;
  int report; /* the pipe the helper writes its results to */
} job;

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits for the next stop of the thread until deadline; ETIMEDOUT then. */
static rb_err wait_until(pid_t tid, int *st, double deadline) {
  struct timespec nap = {0, 200000};
  for (;;) {
    pid_t w = waitpid(tid, st, __WALL | WNOHANG);
    if (w < 0 && errno != EINTR)
      return errno == ECHILD ? ESRCH : (rb_err)errno;
    if (w == tid)
      return WIFEXITED(*st) || WIFSIGNALED(*st) ? ESRCH : 0;
    if (seconds() > deadline)
      return ETIMEDOUT;
    nanosleep(&nap, NULL);
  }
}

static rb_err run_fn(job *j) {
  session *s = &j->s;
  struct user_regs_struct g = s->saved, now;
  unsigned long long aligned = (s->saved.rsp - 512) & ~15ULL; /* below the red zone */
  unsigned long long sp = aligned - (s->is32 ? 4 : 8);
  /* the return address, and for cdecl the argument above it */
  unsigned long word = s->is32 ? (unsigned long)(uint32_t)j->trap | (unsigned long)(uint32_t)j->arg << 32
                               : (unsigned long)j->trap;
  double deadline = seconds() + (double)j->timeout_ms / 1000.0;
  int st;
  rb_err e;
  g.rip = j->fn;
  g.rsp = sp;
  g.orig_rax = (unsigned long long)-1;
  g.rdi = j->arg;
  if (ptrace(PTRACE_POKEDATA, s->tid, (void *)sp, (void *)word) ||
      ptrace(PTRACE_SETREGS, s->tid, 0, &g))
    return (rb_err)errno;
  s->regs_dirty = 1;
  for (;;) {
    int sig;
    if (ptrace(PTRACE_CONT, s->tid, 0, 0))
      return (rb_err)errno;
    if ((e = wait_until(s->tid, &st, deadline))) {
      if (e == ETIMEDOUT && ptrace(PTRACE_INTERRUPT, s->tid, 0, 0) == 0)
        wait_stop(s->tid, &st);
      return e;
    }
    if ((st >> 16) != 0)
      continue; /* an interrupt or a group stop: resume */
    sig = WSTOPSIG(st);
    if (ptrace(PTRACE_GETREGS, s->tid, 0, &now))
      return (rb_err)errno;
    if (sig == SIGTRAP && now.rip == j->trap + 1) { /* fn returned into the int3 */
      j->result = s->is32 ? (uintptr_t)(uint32_t)now.rax : (uintptr_t)now.rax;
      return 0;
    }
    if (sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE) {
      /* fn crashed: the thread never sees it. The result is the faulting
       * address: the one accessed, or the instruction (SIGILL, SIGFPE). */
      siginfo_t si;
      j->result = ptrace(PTRACE_GETSIGINFO, s->tid, 0, &si) == 0 ? (uintptr_t)si.si_addr
                                                                : (uintptr_t)now.rip;
      return EFAULT;
    }
    keep_signal(s);
  }
}

/* The CPU the thread last ran on, or -1. */
static int last_cpu(pid_t pid, pid_t tid) {
  char buf[1024];
  const char *f;
  int i;
  if (read_task_file(pid, tid, "stat", buf, sizeof buf))
    return -1;
  /* field 39, counted after the command name's closing parenthesis (field 2) */
  if ((f = strrchr(buf, ')')) == NULL)
    return -1;
  for (i = 2; i < 39 && f; i++)
    if ((f = strchr(f + 1, ' ')) == NULL)
      return -1;
  return atoi(f + 1);
}

static int helper(void *arg) {
  job *j = (job *)arg;
  int cpu = last_cpu(j->s.pid, j->s.tid);
  /* On the target thread's CPU each step is a switch, not a cross-CPU wake-up
   * (measured: 5 against 50 microseconds a call). */
  if (cpu >= 0 && cpu < CPU_SETSIZE) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
  }
  j->err = attach(&j->s);
  if (j->err == 0 && j->calls == NULL)
    j->err = run_fn(j);
  while (j->err == 0 && j->calls != NULL && j->ran < j->n) {
    rb_inject_call *c = &j->calls[j->ran];
    if ((j->err = run_one(&j->s, c)))
      break;
    j->ran++;
    if (c->ret < 0 && c->ret > -4096)
      break; /* the first failing call ends the batch */
  }
  detach(&j->s);
  /* The results also go through a pipe: where clone(CLONE_VM) is emulated
   * as a fork (valgrind), the helper's memory is not the host's. */
  {
    int i, ok = write(j->report, &j->err, sizeof j->err) == (ssize_t)sizeof j->err &&
                write(j->report, &j->ran, sizeof j->ran) == (ssize_t)sizeof j->ran &&
                write(j->report, &j->result, sizeof j->result) == (ssize_t)sizeof j->result;
    for (i = 0; ok && j->calls != NULL && i < j->ran; i++)
      ok = write(j->report, &j->calls[i].ret, sizeof j->calls[i].ret) == (ssize_t)sizeof(long);
  }
  return 0;
}

/* Reads back what the helper wrote to the pipe; EPROTO if it wrote nothing. */
static rb_err read_report(job *j, int fd) {
  int i;
  if (read(fd, &j->err, sizeof j->err) != (ssize_t)sizeof j->err ||
      read(fd, &j->ran, sizeof j->ran) != (ssize_t)sizeof j->ran ||
      read(fd, &j->result, sizeof j->result) != (ssize_t)sizeof j->result)
    return EPROTO;
  for (i = 0; j->calls != NULL && i < j->ran; i++)
    if (read(fd, &j->calls[i].ret, sizeof j->calls[i].ret) != (ssize_t)sizeof(long))
      return EPROTO;
  return 0;
}

/* ---- the host side ----------------------------------------------------------------- */

#define HELPER_STACK (256 * 1024)

typedef struct helper_call {
  int (*entry)(void *);
  void *arg;
} helper_call;

static int helper_start(void *arg) {
  const helper_call *c = (const helper_call *)arg;
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, NULL);
  setpgid(0, 0);
  return c->entry(c->arg);
}

rb_err rb_helper_run(int (*entry)(void *), void *arg) {
  helper_call c;
  void *stack;
  pid_t child;
  int st;
  c.entry = entry;
  c.arg = arg;
  stack = mmap(NULL, HELPER_STACK, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED)
    return (rb_err)errno;
  /* exit signal 0: no SIGCHLD; CLONE_VFORK: we resume once it has exited */
  child = clone(helper_start, (char *)stack + HELPER_STACK, CLONE_VM | CLONE_VFORK, &c);
  if (child > 0)
    while (waitpid(child, &st, __WALL) < 0 && errno == EINTR)
      ;
  munmap(stack, HELPER_STACK);
  return child < 0 ? (rb_err)errno : 0;
}

/* Runs the helper for job j (prepared but for the thread) and waits for it. */
static rb_err run_job(job *j) {
  rb_err e;
  int report[2];
  if ((e = thread_status(j->s.tid, &j->s.syscall_step)))
    return e;
  /* (64 calls' results fit in the pipe's buffer: the helper never blocks) */
  if (pipe2(report, O_CLOEXEC))
    return (rb_err)errno;
  j->report = report[1];
  e = rb_helper_run(helper, j);
  close(report[1]);
  if (!e)
    e = read_report(j, report[0]);
  close(report[0]);
  return e ? e : j->err;
}

/* A job on process pid, with its thread chosen. */
static rb_err new_job(job *j, pid_t pid, int memfd, int is32) {
  memset(j, 0, sizeof *j);
  j->s.pid = pid;
  j->s.memfd = memfd;
  j->s.is32 = is32;
  j->s.tid = choose_thread(pid, is32);
  return j->s.tid == 0 ? ESRCH : 0;
}

rb_err rb_inject(pid_t pid, int memfd, int is32, rb_inject_call *calls, int n) {
  job j;
  rb_err e;
  if ((e = new_job(&j, pid, memfd, is32)))
    return e;
  j.calls = calls;
  j.n = n;
  if ((e = find_gadget(pid, j.s.tid, is32, &j.s.gadget)) || (e = run_job(&j)))
    return e;
  return j.ran == 0 && n > 0 ? EPROTO : 0;
}

rb_err rb_inject_fn(pid_t pid, int memfd, int is32, uintptr_t fn, uintptr_t arg,
                    unsigned long timeout_ms, uintptr_t *result) {
  static const unsigned char int3 = 0xCC;
  job j;
  rb_err e;
  if ((e = new_job(&j, pid, memfd, is32)))
    return e;
  j.fn = fn;
  j.arg = arg;
  j.timeout_ms = timeout_ms;
  if ((e = find_in_vdso(pid, j.s.tid, &int3, 1, &j.trap)))
    return e;
  e = run_job(&j);
  *result = j.result; /* after EFAULT, the faulting address */
  return e;
}
