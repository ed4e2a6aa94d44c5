/*
 * rb_patch_code for Linux: every thread of the target stopped with ptrace
 * (SEIZE + INTERRUPT, for the few milliseconds the patch takes) by a helper
 * process like the injections' (inject_linux.h: the host gets no ptrace
 * stops and no SIGCHLD), instruction pointers moved, bytes written through
 * /proc/PID/mem (which writes through a read-only code page, as a
 * debugger's breakpoints do, leaving its protection alone), then detached.
 * The helper allocates nothing: the host sizes the lists beforehand.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "inject_linux.h"

typedef struct stopped {
  pid_t tid;
  int sig; /* a signal caught as it stopped: delivered again at detach */
} stopped;

typedef struct stopset {
  stopped *list;
  struct user_regs_struct *regs;
  size_t n, cap;
} stopset;

static int has(const stopset *s, pid_t tid) {
  size_t i;
  for (i = 0; i < s->n; i++)
    if (s->list[i].tid == tid)
      return 1;
  return 0;
}

/* Seizes and stops one thread; 0 also for a thread that exited meanwhile
 * (it is simply not in the set). */
static rb_err stop_one(stopset *s, pid_t tid) {
  int st;
  if (s->n == s->cap)
    return EAGAIN; /* more threads than the host counted: it tries again */
  if (ptrace(PTRACE_SEIZE, tid, 0, 0))
    return errno == ESRCH ? 0 : (rb_err)errno;
  s->list[s->n].tid = tid;
  s->list[s->n].sig = 0;
  s->n++;
  if (ptrace(PTRACE_INTERRUPT, tid, 0, 0))
    return errno == ESRCH ? 0 : (rb_err)errno;
  while (waitpid(tid, &st, __WALL) < 0)
    if (errno != EINTR)
      return errno == ECHILD ? 0 : (rb_err)errno;
  if (WIFSTOPPED(st) && (st >> 16) == 0 && WSTOPSIG(st) != SIGTRAP)
    s->list[s->n - 1].sig = WSTOPSIG(st);
  return 0;
}

/* Stops every thread, also those started while it works: it lists the
 * threads again until a pass finds no new one (with getdents64 on a
 * buffer of its own: opendir would allocate, in the host's heap). */
static rb_err stop_all(pid_t pid, stopset *s) {
  char path[64];
  int fresh = 1;
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  while (fresh) {
    char buf[4096];
    long got;
    rb_err err = 0;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
      return errno == ENOENT ? ESRCH : (rb_err)errno;
    fresh = 0;
    while (!err && (got = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0) {
      long at = 0;
      while (!err && at < got) {
        struct dirent64 *e = (struct dirent64 *)(void *)(buf + at);
        pid_t tid = (pid_t)atoi(e->d_name);
        at += e->d_reclen;
        if (tid > 0 && !has(s, tid)) {
          fresh = 1;
          err = stop_one(s, tid);
        }
      }
    }
    close(fd);
    if (err)
      return err;
  }
  return s->n ? 0 : ESRCH;
}

static void resume_all(stopset *s) {
  size_t i;
  for (i = 0; i < s->n; i++)
    ptrace(PTRACE_DETACH, s->list[i].tid, 0, (void *)(long)s->list[i].sig);
}

static rb_err write_mem(pid_t pid, uintptr_t addr, const void *bytes, size_t n) {
  char path[64];
  int fd;
  ssize_t got;
  rb_err e = 0;
  snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
  if ((fd = open(path, O_RDWR | O_CLOEXEC)) < 0)
    return (rb_err)errno;
  got = pwrite(fd, bytes, n, (off_t)addr);
  if (got != (ssize_t)n)
    e = got < 0 ? (rb_err)errno : EFAULT;
  close(fd);
  return e;
}

static int read_u32(pid_t pid, uintptr_t addr, uint32_t *v) {
  char path[64];
  int fd, ok;
  snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
    return 0;
  ok = pread(fd, v, sizeof *v, (off_t)addr) == (ssize_t)sizeof *v;
  close(fd);
  return ok;
}

typedef struct job {
  pid_t pid;
  const rb_patch *patch;
  stopset s;
  int report; /* the pipe for err and moved */
} job;

/* In the helper: the whole patch with every thread stopped. */
static rb_err patch_stopped(job *j, size_t *moved) {
  const rb_patch *patch = j->patch;
  stopset *s = &j->s;
  struct user_regs_struct *regs = s->regs;
  rb_err e;
  size_t i, k;
  if ((e = stop_all(j->pid, s)))
    return e;
  for (i = 0; i < s->n; i++) {
    uintptr_t ip;
    if (ptrace(PTRACE_GETREGS, s->list[i].tid, 0, &regs[i])) {
      regs[i].rip = 0; /* gone meanwhile */
      continue;
    }
    ip = (uintptr_t)regs[i].rip;
    if (ip >= patch->busy_lo && ip < patch->busy_hi)
      return EBUSY;
  }
  if (patch->counter) {
    uint32_t v = 0;
    if (!read_u32(j->pid, patch->counter, &v) || v != 0)
      return EBUSY;
  }
  if (patch->n && (e = write_mem(j->pid, patch->addr, patch->bytes, patch->n)))
    return e;
  for (i = 0; i < s->n; i++)
    for (k = 0; regs[i].rip && k < patch->nmoves; k++)
      if ((uintptr_t)regs[i].rip == patch->moves[k].from) {
        regs[i].rip = patch->moves[k].to;
        if (ptrace(PTRACE_SETREGS, s->list[i].tid, 0, &regs[i]) == 0)
          (*moved)++;
        break;
      }
  return 0;
}

static int helper(void *arg) {
  job *j = (job *)arg;
  size_t moved = 0;
  rb_err e = patch_stopped(j, &moved);
  resume_all(&j->s);
  if (write(j->report, &e, sizeof e) != (ssize_t)sizeof e ||
      write(j->report, &moved, sizeof moved) != (ssize_t)sizeof moved)
    return 1;
  return 0;
}

/* The number of threads the process has now. */
static size_t thread_count(pid_t pid) {
  char path[64];
  size_t n = 0;
  DIR *d;
  struct dirent *e;
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  if ((d = opendir(path)) == NULL)
    return 0;
  while ((e = readdir(d)) != NULL)
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

rb_err rb_patch_code(rb_proc *p, const rb_patch *patch, size_t *moved) {
  job j;
  rb_err e = EAGAIN;
  int tries, report[2];
  *moved = 0;
  memset(&j, 0, sizeof j);
  j.pid = (pid_t)rb_pid(p);
  j.patch = patch;
  if (j.pid == getpid())
    return EINVAL; /* it would stop the thread doing it */
  if ((e = rb_begin_code(p)))
    return e;
  e = EAGAIN;
  /* room for the threads there are and some more; EAGAIN: more came */
  for (tries = 0; tries < 4 && e == EAGAIN; tries++) {
    j.s.cap = (thread_count(j.pid) + 16) << tries;
    j.s.n = 0;
    j.s.list = (stopped *)calloc(j.s.cap, sizeof *j.s.list);
    j.s.regs = (struct user_regs_struct *)calloc(j.s.cap, sizeof *j.s.regs);
    if (j.s.list == NULL || j.s.regs == NULL)
      e = ENOMEM;
    else if (pipe2(report, O_CLOEXEC))
      e = (rb_err)errno;
    else {
      j.report = report[1];
      e = rb_helper_run(helper, &j);
      close(report[1]);
      if (!e && (read(report[0], &e, sizeof e) != (ssize_t)sizeof e ||
                 read(report[0], moved, sizeof *moved) != (ssize_t)sizeof *moved))
        e = EPROTO;
      close(report[0]);
    }
    free(j.s.list);
    free(j.s.regs);
  }
  return e;
}
