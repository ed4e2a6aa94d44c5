/*
 * p:watch's ptrace method (watch_ptrace_linux.h): where perf_event_open is
 * refused (perf_event_paranoid 3 on Debian), the debug registers are set
 * with PTRACE_POKEUSER, and a hit stops the thread with a SIGTRAP that its
 * tracer must take. That tracer is a process of its own, not a thread of
 * the host (a REPL that dies would take a thread along, and the kernel's
 * detach leaves the registers set: the next hit would kill the target).
 *
 * The tracer seizes every thread (PTRACE_O_TRACECLONE: new threads are
 * traced and armed from their first stop; a zombie leader is left alone),
 * counts hits by (instruction, thread, register) into a table the host maps
 * (MAP_SHARED, made before the clone), and obeys arm/disarm commands on a
 * socket. A thread is let go at its exit (PTRACE_O_TRACEEXIT), the whole
 * target at an exec (PTRACE_O_TRACEEXEC: the tracer then ends). When the
 * host says quit (its last watch closed) or is gone (the socket closes,
 * PR_SET_PDEATHSIG), it clears every register it used and detaches every
 * thread, each once no hit of its own is still pending: such a SIGTRAP,
 * delivered after the detach, would kill the target. Only a SIGKILL of the
 * tracer itself can leave registers set.
 *
 * The child runs after a clone of a host that may have other threads: it
 * calls nothing that allocates or locks (no stdio, no opendir).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "watch.h"
#include "watch_ptrace_linux.h"

#define TABLE 16384 /* (instruction, thread, register) triples counted */
#define PROBES 64
#define MAX_THREADS 4096
#define QUIT_MS 2000 /* a tracer that cannot detach every thread by then exits anyway */

typedef struct shared_hit {
  uint64_t ip, count;
  uint32_t tid, key; /* key: register + 1 once ip and tid are written; 0 free */
} shared_hit;

/* in key: the thread has ended; the host frees the entry once it took the count */
#define ENDED 0x100

typedef struct shared {
  uint64_t dropped[4];
  uint32_t replaced; /* the target ran exec: the tracer let it go and ended */
  shared_hit table[TABLE];
} shared;

enum { CMD_ARM = 1, CMD_DISARM, CMD_QUIT };

typedef struct command {
  int op, slot, size, kind;
  uint64_t addr;
} command;

struct rwp {
  pid_t pid, tracer, owner; /* owner: the host (a process it forked has a copy) */
  int sock, armed, dead; /* armed: register bits; dead: the tracer was killed */
  shared *sh;
  rwp *next;
};

static rwp *tracers;
static pthread_mutex_t tracers_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- the tracer process ----------------------------------------------------- */

typedef struct thread {
  pid_t tid;
  unsigned gen; /* of the registers it has: older than tracer.gen = to update */
  int hit;      /* it has entries in the table */
} thread;

typedef struct tracer {
  pid_t pid;
  int task_dir, sigfd, used, quitting; /* used: registers ever set */
  shared *sh;
  uint64_t dr[4], dr7;
  unsigned gen;
  rb_err err; /* the first failure setting them since the last sync */
  thread th[MAX_THREADS];
  int n;
} tracer;

static long dr_offset(int i) {
  return (long)(offsetof(struct user, u_debugreg) + (size_t)i * sizeof(long));
}

static rb_err poke_dr(pid_t tid, int i, uint64_t v) {
  return ptrace(PTRACE_POKEUSER, tid, (void *)dr_offset(i), (void *)(uintptr_t)v) ? (rb_err)errno : 0;
}

static int armed(const tracer *tr, int i) {
  return (int)(tr->dr7 >> (2 * i) & 1);
}

/* The wanted registers into a stopped thread: addresses before they are
 * enabled, cleared after they are disabled. Registers never used are not
 * touched (ptrace would reserve them, and perf watches need them). */
static rb_err apply(tracer *tr, thread *t) {
  rb_err e = 0;
  int i;
  for (i = 0; i < 4 && !e; i++)
    if ((tr->used >> i & 1) && armed(tr, i))
      e = poke_dr(t->tid, i, tr->dr[i]);
  if (!e && tr->used)
    e = poke_dr(t->tid, 7, tr->dr7);
  for (i = 0; i < 4 && !e; i++)
    if ((tr->used >> i & 1) && !armed(tr, i))
      e = poke_dr(t->tid, i, 0);
  t->gen = tr->gen;
  return e == ESRCH ? 0 : e; /* a thread that is ending needs nothing */
}

static void record(tracer *tr, thread *t, int slot, uint64_t ip) {
  pid_t tid = t->tid;
  uint64_t h = (ip ^ (uint64_t)tid << 32 ^ (uint64_t)slot << 62) * 0x9E3779B97F4A7C15ULL;
  size_t i = (size_t)(h >> 40) % TABLE, k;
  t->hit = 1;
  for (k = 0; k < PROBES; k++, i = (i + 1) % TABLE) {
    shared_hit *e = &tr->sh->table[i];
    if (e->key == 0) { /* only the tracer writes keys */
      e->ip = ip;
      e->tid = (uint32_t)tid;
      __atomic_store_n(&e->key, (uint32_t)slot + 1, __ATOMIC_RELEASE);
    } else if (e->key != (uint32_t)slot + 1 || e->ip != ip || e->tid != (uint32_t)tid) {
      continue;
    }
    __atomic_add_fetch(&e->count, 1, __ATOMIC_RELAXED);
    return;
  }
  __atomic_add_fetch(&tr->sh->dropped[slot], 1, __ATOMIC_RELAXED);
}

/* A SIGTRAP stop: 1 if it is a hit of a register this tracer set (counted
 * if the register still watches; swallowed in any case). */
static int hit(tracer *tr, thread *t) {
  pid_t tid = t->tid;
  siginfo_t si;
  long dr6;
  int i, ours = 0;
  if (ptrace(PTRACE_GETSIGINFO, tid, 0, &si) || si.si_code != TRAP_HWBKPT)
    return 0;
  errno = 0;
  dr6 = ptrace(PTRACE_PEEKUSER, tid, (void *)dr_offset(6), 0);
  if (errno)
    return 0;
  for (i = 0; i < 4; i++)
    if ((dr6 >> i & 1) && (tr->used >> i & 1)) {
      ours = 1;
      if (armed(tr, i)) /* the address the kernel gives: the thread's ip */
        record(tr, t, i, (uint64_t)(uintptr_t)si.si_addr);
    }
  poke_dr(tid, 6, 0); /* older kernels accumulate the bits */
  return ours;
}

/* 1 if one of this tracer's hits is queued for tid and not yet taken. */
static int hit_pending(pid_t tid) {
  struct __ptrace_peeksiginfo_args a;
  siginfo_t si[16];
  long n, i;
  a.off = 0;
  a.flags = 0;
  a.nr = 16;
  n = ptrace(PTRACE_PEEKSIGINFO, tid, &a, si);
  for (i = 0; i < n; i++)
    if (si[i].si_signo == SIGTRAP && si[i].si_code == TRAP_HWBKPT)
      return 1;
  return 0;
}

static thread *find(tracer *tr, pid_t tid) {
  int i;
  for (i = 0; i < tr->n; i++)
    if (tr->th[i].tid == tid)
      return &tr->th[i];
  return NULL;
}

static void decimal(char *buf, unsigned long v) {
  char tmp[24];
  int n = 0;
  do
    tmp[n++] = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  while (n)
    *buf++ = tmp[--n];
  *buf = 0;
}

/* A thread newly traced (there is room: the callers checked). */
static thread *track(tracer *tr, pid_t tid) {
  thread *t = &tr->th[tr->n++];
  t->tid = tid;
  t->gen = 0;
  t->hit = 0;
  return t;
}

/* A thread of the target first seen at a stop (a traced clone that is a
 * new process instead is let go). */
static thread *adopt(tracer *tr, pid_t tid) {
  char name[24];
  int fd;
  decimal(name, (unsigned long)tid);
  if ((fd = openat(tr->task_dir, name, O_PATH | O_CLOEXEC)) < 0 || tr->n == MAX_THREADS) {
    if (fd >= 0)
      close(fd);
    ptrace(PTRACE_DETACH, tid, 0, 0);
    return NULL;
  }
  close(fd);
  return track(tr, tid);
}

static void forget(tracer *tr, thread *t) {
  *t = tr->th[--tr->n];
}

/* A thread that ended: its entries are marked for the host to free. */
static void ended(tracer *tr, thread *t) {
  size_t i;
  for (i = 0; t->hit && i < TABLE; i++) {
    shared_hit *e = &tr->sh->table[i];
    uint32_t key = __atomic_load_n(&e->key, __ATOMIC_RELAXED);
    if (key != 0 && !(key & ENDED) && e->tid == (uint32_t)t->tid)
      __atomic_store_n(&e->key, key | ENDED, __ATOMIC_RELEASE);
  }
  forget(tr, t);
}

static void on_stop(tracer *tr, pid_t tid, int st) {
  thread *t = find(tr, tid);
  int sig, event, resume = 0;
  if (WIFEXITED(st) || WIFSIGNALED(st)) {
    if (t)
      ended(tr, t);
    return;
  }
  if (!WIFSTOPPED(st) || (t == NULL && (t = adopt(tr, tid)) == NULL))
    return;
  sig = WSTOPSIG(st);
  event = st >> 16;
  if (event == PTRACE_EVENT_EXEC) {
    /* another program (setuid maybe: it must not run traced); exec cleared
     * the registers and ended the other threads */
    ptrace(PTRACE_DETACH, tid, 0, 0);
    tr->n = 0;
    __atomic_store_n(&tr->sh->replaced, 1, __ATOMIC_RELEASE);
    return;
  }
  if (event == PTRACE_EVENT_EXIT) {
    /* let go now: a leader that ends before its threads is a zombie
     * that no longer stops (each sync would wait for it in vain) */
    ptrace(PTRACE_DETACH, tid, 0, 0);
    ended(tr, t);
    return;
  }
  if (event == 0 && (sig != SIGTRAP || !hit(tr, t)))
    resume = sig; /* the program's own signal */
  if (t->gen != tr->gen) {
    rb_err e = apply(tr, t);
    if (e && !tr->err)
      tr->err = e;
  }
  if (tr->quitting && !hit_pending(tid)) {
    ptrace(PTRACE_DETACH, tid, 0, (void *)(long)resume);
    forget(tr, t);
  } else if (event == PTRACE_EVENT_STOP &&
             (sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU)) {
    ptrace(PTRACE_LISTEN, tid, 0, 0); /* a group stop stays one */
  } else {
    ptrace(PTRACE_CONT, tid, 0, (void *)(long)resume);
  }
}

/* Takes every stop that is waiting; with ms > 0, waits up to ms for one. */
static int reap(tracer *tr, int ms) {
  int st, got = 0;
  pid_t tid;
  for (;;) {
    while ((tid = waitpid(-1, &st, WNOHANG | __WALL)) > 0) {
      on_stop(tr, tid, st);
      got = 1;
    }
    if (got || ms <= 0)
      return got;
    {
      struct pollfd f;
      struct signalfd_siginfo si;
      f.fd = tr->sigfd;
      f.events = POLLIN;
      if (poll(&f, 1, ms) <= 0)
        return 0;
      while (read(tr->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
      }
    }
    ms = 0;
  }
}

static int stale(const tracer *tr) {
  int i;
  for (i = 0; i < tr->n; i++)
    if (tr->th[i].gen != tr->gen)
      return 1;
  return 0;
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Every thread stopped once to take the wanted registers (while quitting:
 * and detached). */
static rb_err sync_all(tracer *tr) {
  int i;
  long long end = now_ms() + QUIT_MS;
  tr->gen++;
  tr->err = 0;
  for (i = 0; i < tr->n;)
    if (ptrace(PTRACE_INTERRUPT, tr->th[i].tid, 0, 0) == 0 || errno != ESRCH)
      i++;
    else if (tr->quitting) /* ending (or a leader waiting for its threads): nothing to undo */
      forget(tr, &tr->th[i]);
    else
      tr->th[i++].gen = tr->gen; /* ending: its exit will come */
  /* (a SIGCHLD can come for a stop already taken: only time counts) */
  while ((tr->quitting ? tr->n > 0 : stale(tr)) && now_ms() < end)
    reap(tr, 100);
  return tr->err ? tr->err : stale(tr) ? ETIMEDOUT : 0;
}

/* 1 if the thread is a zombie (a leader that ended before its threads, or
 * a process that ended and is not reaped yet): it would refuse the seize. */
static int zombie(const tracer *tr, const char *tid) {
  char path[32], buf[512];
  const char *state = NULL;
  ssize_t k, i;
  int fd;
  strcpy(path, tid);
  strcat(path, "/stat");
  if ((fd = openat(tr->task_dir, path, O_RDONLY | O_CLOEXEC)) < 0)
    return 0;
  k = read(fd, buf, sizeof buf - 1);
  close(fd);
  for (i = 0; i < k; i++) /* the state follows the command's last ')' */
    if (buf[i] == ')' && i + 2 < k)
      state = buf + i + 2;
  return state && (*state == 'Z' || *state == 'X');
}

/* Seizes the threads of the target until no new one shows up. */
static rb_err seize_all(tracer *tr) {
  char buf[4096];
  int added;
  do {
    long k, at;
    added = 0;
    if (lseek(tr->task_dir, 0, SEEK_SET) < 0)
      return (rb_err)errno;
    while ((k = syscall(SYS_getdents64, tr->task_dir, buf, sizeof buf)) > 0)
      for (at = 0; at < k; at += ((unsigned short *)(void *)(buf + at + 16))[0]) {
        const char *name = buf + at + 19; /* after d_ino, d_off, d_reclen, d_type */
        pid_t tid = (pid_t)strtol(name, NULL, 10);
        if (tid <= 0 || find(tr, tid) || zombie(tr, name))
          continue;
        if (tr->n == MAX_THREADS)
          return EMFILE;
        if (ptrace(PTRACE_SEIZE, tid, 0, (void *)(long)(PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXIT | PTRACE_O_TRACEEXEC))) {
          if (errno == ESRCH)
            continue;
          return (rb_err)errno;
        }
        track(tr, tid);
        added = 1;
      }
    if (k < 0)
      return (rb_err)errno;
  } while (added);
  return tr->n ? 0 : ESRCH;
}

/* DR7 for one register: enable bit, then R/W and length at 16 + 4 * slot */
static uint64_t dr7_bits(int slot, int size, int kind) {
  uint64_t len = kind == RW_EXECUTE ? 0 : size == 1 ? 0 : size == 2 ? 1 : size == 8 ? 2 : 3;
  return (uint64_t)1 << (2 * slot) | ((uint64_t)kind | len << 2) << (16 + 4 * slot);
}

static rb_err run(tracer *tr, const command *c) {
  uint64_t dr7 = tr->dr7, dr = tr->dr[c->slot];
  rb_err e;
  size_t i;
  tr->dr7 &= ~dr7_bits(c->slot, 4, RW_READWRITE); /* every bit of the register */
  tr->dr[c->slot] = 0;
  if (c->op == CMD_ARM) {
    for (i = 0; i < TABLE; i++) { /* what a watch before left in the register */
      shared_hit *h = &tr->sh->table[i];
      if (h->key == (uint32_t)c->slot + 1)
        __atomic_store_n(&h->count, 0, __ATOMIC_RELAXED);
      else if (h->key == (((uint32_t)c->slot + 1) | ENDED)) /* (the host takes no count meanwhile) */
        __atomic_store_n(&h->key, 0, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&tr->sh->dropped[c->slot], 0, __ATOMIC_RELAXED);
    tr->dr[c->slot] = c->addr;
    tr->dr7 |= dr7_bits(c->slot, c->size, c->kind);
    tr->used |= 1 << c->slot;
  }
  if ((e = sync_all(tr)) != 0 && c->op == CMD_ARM) {
    tr->dr7 = dr7;
    tr->dr[c->slot] = dr;
    sync_all(tr);
  }
  return e;
}

static void tracer_main(tracer *tr, int sock, pid_t host) {
  sigset_t set;
  rb_err err;
  sigfillset(&set);
  sigprocmask(SIG_SETMASK, &set, NULL); /* a Ctrl-C meant for the host must not end it halfway */
  signal(SIGCHLD, SIG_DFL);             /* the host's SA_NOCLDSTOP would hide the stops */
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGHUP);
  tr->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  /* the death signal follows the host thread that made the tracer: only a
   * parent that changed means the host is gone */
  prctl(PR_SET_PDEATHSIG, SIGHUP);
  prctl(PR_SET_NAME, "rmem-watch");
  err = tr->sigfd < 0 ? (rb_err)errno : getppid() != host ? ESRCH : seize_all(tr);
  send(sock, &err, sizeof err, MSG_NOSIGNAL);
  while (!err && !tr->sh->replaced) {
    struct pollfd f[2];
    command c;
    f[0].fd = sock;
    f[0].events = POLLIN;
    f[1].fd = tr->sigfd;
    f[1].events = POLLIN;
    if (poll(f, 2, -1) < 0)
      continue;
    if (f[1].revents) {
      struct signalfd_siginfo si;
      while (read(tr->sigfd, &si, sizeof si) == (ssize_t)sizeof si)
        if (si.ssi_signo == SIGHUP && getppid() != host)
          err = ESRCH;
      reap(tr, 0);
    }
    if (!err && f[0].revents) {
      /* closed: the host is gone (a process it forked may hold the socket
       * still, hence the command when the last watch closes) */
      if (recv(sock, &c, sizeof c, 0) != (ssize_t)sizeof c || c.op == CMD_QUIT)
        break;
      err = run(tr, &c);
      send(sock, &err, sizeof err, MSG_NOSIGNAL);
      err = 0;
    }
  }
  tr->dr7 = 0;
  tr->quitting = 1;
  sync_all(tr);
  _exit(0);
}

/* The socket to descriptor 3, the task directory to 4, and every other
 * descriptor closed (the host's files are not the tracer's to hold open: a
 * pipe's reader would wait for it, a perf event would live on). */
static void keep_only(int sock, int dir) {
  struct rlimit r;
  int fd, devnull = open("/dev/null", O_RDWR);
  sock = fcntl(sock, F_DUPFD, 5); /* above what is replaced below */
  dir = fcntl(dir, F_DUPFD, 5);
  if (devnull >= 0)
    for (fd = 0; fd < 3; fd++)
      dup2(devnull, fd);
  dup2(sock, 3);
  dup2(dir, 4);
#ifdef SYS_close_range
  if (syscall(SYS_close_range, 5, ~0U, 0) == 0)
    return;
#endif
  getrlimit(RLIMIT_NOFILE, &r);
  for (fd = 5; fd < (int)r.rlim_cur && fd < 65536; fd++)
    close(fd);
}

/* ---- the host side ------------------------------------------------------------ */

/* A killed tracer: EIO, and the next watch on the process starts another. */
static rb_err ask(rwp *t, const command *c) {
  rb_err err;
  if ((c && send(t->sock, c, sizeof *c, MSG_NOSIGNAL) != (ssize_t)sizeof *c) ||
      recv(t->sock, &err, sizeof err, 0) != (ssize_t)sizeof err) {
    t->dead = 1;
    return EIO;
  }
  return err;
}

/* The tracer told to quit and waited for; in a process the host forked,
 * only the copy freed. */
static void stop_tracer(rwp *t) {
  rwp **at;
  int st;
  if (t->owner == getpid()) {
    command c;
    memset(&c, 0, sizeof c);
    c.op = CMD_QUIT;
    send(t->sock, &c, sizeof c, MSG_NOSIGNAL);
    close(t->sock);
    while (waitpid(t->tracer, &st, __WALL) < 0 && errno == EINTR) {
    }
  } else {
    close(t->sock);
  }
  munmap(t->sh, sizeof *t->sh);
  for (at = &tracers; *at; at = &(*at)->next)
    if (*at == t) {
      *at = t->next;
      break;
    }
  free(t);
}

static rb_err start_tracer(pid_t pid, rwp **out) {
  char path[64];
  int sv[2], dir;
  rb_err err;
  rwp *t = (rwp *)calloc(1, sizeof *t);
  tracer *tr = (tracer *)calloc(1, sizeof *tr);
  pid_t host = getpid(), child;
  if (t == NULL || tr == NULL) {
    free(t);
    free(tr);
    return ENOMEM;
  }
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  t->sh = (shared *)mmap(NULL, sizeof *t->sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (t->sh == MAP_FAILED) {
    err = (rb_err)errno;
    free(t);
    free(tr);
    return err;
  }
  if ((dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
      socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) {
    err = errno == ENOENT || errno == ENOTDIR ? ESRCH : (rb_err)errno;
    if (dir >= 0)
      close(dir);
    munmap(t->sh, sizeof *t->sh);
    free(t);
    free(tr);
    return err;
  }
  tr->pid = pid;
  tr->sh = t->sh;
  tr->gen = 1;
  /* no exit signal: the host gets no SIGCHLD for its tracer */
  child = (pid_t)syscall(SYS_clone, 0, 0, 0, 0, 0);
  if (child == 0) {
    keep_only(sv[1], dir);
    tr->task_dir = 4;
    tracer_main(tr, 3, host);
  }
  err = child < 0 ? (rb_err)errno : 0;
  free(tr);
  close(dir);
  close(sv[1]);
  t->pid = pid;
  t->owner = host;
  t->tracer = child;
  t->sock = sv[0];
  if (child < 0) {
    close(sv[0]);
    munmap(t->sh, sizeof *t->sh);
    free(t);
    return err;
  }
  t->next = tracers;
  tracers = t;
  if ((err = ask(t, NULL)) != 0) {
    stop_tracer(t);
    return err;
  }
  *out = t;
  return 0;
}

/* The live tracer of pid (one killed is found out here: its socket hung up);
 * a process the host forked does not use the host's. */
static rwp *tracer_of(pid_t pid) {
  rwp *t;
  for (t = tracers; t; t = t->next) {
    struct pollfd f;
    f.fd = t->sock;
    f.events = POLLIN;
    if (!t->dead && poll(&f, 1, 0) == 1 && (f.revents & (POLLHUP | POLLERR)))
      t->dead = 1;
    if (t->pid == pid && !t->dead && t->owner == getpid())
      return t;
  }
  return NULL;
}

rb_err rwp_arm(pid_t pid, uintptr_t addr, int size, int kind, rwp **out, int *slot) {
  rwp *t;
  rb_err err = 0;
  command c;
  pthread_mutex_lock(&tracers_lock);
  if ((t = tracer_of(pid)) == NULL)
    err = start_tracer(pid, &t);
  if (!err) {
    memset(&c, 0, sizeof c);
    c.op = CMD_ARM;
    for (c.slot = 0; c.slot < 4 && (t->armed >> c.slot & 1); c.slot++) {
    }
    c.size = size;
    c.kind = kind;
    c.addr = (uint64_t)addr;
    err = c.slot == 4 ? ENOSPC : ask(t, &c);
    if (!err) {
      t->armed |= 1 << c.slot;
      *out = t;
      *slot = c.slot;
    } else if (t->armed == 0) {
      stop_tracer(t);
    }
  }
  pthread_mutex_unlock(&tracers_lock);
  return err;
}

unsigned long long rwp_take(rwp *t, int slot,
                            void (*add)(void *ctx, uintptr_t ip, unsigned long tid,
                                        unsigned long long n),
                            void *ctx) {
  size_t i;
  unsigned long long dropped;
  pthread_mutex_lock(&tracers_lock);
  for (i = 0; i < TABLE; i++) {
    shared_hit *e = &t->sh->table[i];
    uint32_t key = __atomic_load_n(&e->key, __ATOMIC_ACQUIRE);
    if ((key & ~(uint32_t)ENDED) == (uint32_t)slot + 1) {
      uintptr_t ip = (uintptr_t)e->ip;
      unsigned long tid = e->tid;
      uint64_t n = __atomic_exchange_n(&e->count, 0, __ATOMIC_RELAXED);
      if (n)
        add(ctx, ip, tid, n);
      if (key & ENDED) /* the tracer writes it no more: free for another */
        __atomic_store_n(&e->key, 0, __ATOMIC_RELEASE);
    }
  }
  dropped = __atomic_load_n(&t->sh->dropped[slot], __ATOMIC_RELAXED);
  pthread_mutex_unlock(&tracers_lock);
  return dropped;
}

int rwp_replaced(rwp *t) {
  return (int)__atomic_load_n(&t->sh->replaced, __ATOMIC_ACQUIRE);
}

void rwp_disarm(rwp *t, int slot) {
  command c;
  pthread_mutex_lock(&tracers_lock);
  memset(&c, 0, sizeof c);
  c.op = CMD_DISARM;
  c.slot = slot;
  if (t->owner == getpid()) /* (in a process the host forked: the host's register) */
    ask(t, &c);
  t->armed &= ~(1 << slot);
  if (t->armed == 0)
    stop_tracer(t);
  pthread_mutex_unlock(&tracers_lock);
}
