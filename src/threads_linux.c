/*
 * rb_patch_code for Linux: every thread of the target stopped with ptrace
 * (SEIZE + INTERRUPT, by the host thread itself, for the few milliseconds
 * the patch takes), instruction pointers moved, bytes written through
 * /proc/PID/mem (which writes through a read-only code page, as a
 * debugger's breakpoints do, leaving its protection alone), then detached.
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
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"

typedef struct stopped {
  pid_t tid;
  int sig; /* a signal caught as it stopped: delivered again at detach */
} stopped;

typedef struct stopset {
  stopped *list;
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
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 16;
    stopped *list = (stopped *)realloc(s->list, cap * sizeof *list);
    if (list == NULL)
      return ENOMEM;
    s->list = list;
    s->cap = cap;
  }
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
 * threads again until a pass finds no new one. */
static rb_err stop_all(pid_t pid, stopset *s) {
  char path[64];
  int fresh = 1;
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  while (fresh) {
    DIR *d = opendir(path);
    struct dirent *e;
    rb_err err = 0;
    if (d == NULL)
      return errno == ENOENT ? ESRCH : (rb_err)errno;
    fresh = 0;
    while (!err && (e = readdir(d)) != NULL) {
      pid_t tid = (pid_t)atoi(e->d_name);
      if (tid > 0 && !has(s, tid)) {
        fresh = 1;
        err = stop_one(s, tid);
      }
    }
    closedir(d);
    if (err)
      return err;
  }
  return s->n ? 0 : ESRCH;
}

static void resume_all(stopset *s) {
  size_t i;
  for (i = 0; i < s->n; i++)
    ptrace(PTRACE_DETACH, s->list[i].tid, 0, (void *)(long)s->list[i].sig);
  free(s->list);
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

rb_err rb_patch_code(rb_proc *p, const rb_patch *patch, size_t *moved) {
  pid_t pid = (pid_t)rb_pid(p);
  stopset s = {NULL, 0, 0};
  struct user_regs_struct *regs = NULL;
  rb_err e;
  size_t i, k;
  *moved = 0;
  if (pid == getpid())
    return EINVAL; /* it would stop the thread doing it */
  if ((e = stop_all(pid, &s)))
    goto done;
  if ((regs = (struct user_regs_struct *)calloc(s.n, sizeof *regs)) == NULL) {
    e = ENOMEM;
    goto done;
  }
  for (i = 0; i < s.n; i++) {
    uintptr_t ip;
    if (ptrace(PTRACE_GETREGS, s.list[i].tid, 0, &regs[i])) {
      regs[i].rip = 0; /* gone meanwhile */
      continue;
    }
    ip = (uintptr_t)regs[i].rip;
    if (ip >= patch->busy_lo && ip < patch->busy_hi) {
      e = EBUSY;
      goto done;
    }
  }
  if (patch->counter) {
    uint32_t v = 0;
    if (!read_u32(pid, patch->counter, &v) || v != 0) {
      e = EBUSY;
      goto done;
    }
  }
  if (patch->n && (e = write_mem(pid, patch->addr, patch->bytes, patch->n)))
    goto done;
  for (i = 0; i < s.n; i++)
    for (k = 0; regs[i].rip && k < patch->nmoves; k++)
      if ((uintptr_t)regs[i].rip == patch->moves[k].from) {
        regs[i].rip = patch->moves[k].to;
        if (ptrace(PTRACE_SETREGS, s.list[i].tid, 0, &regs[i]) == 0)
          (*moved)++;
        break;
      }
done:
  free(regs);
  resume_all(&s);
  return e;
}
