/*
 * The Linux backend (x86_64 host; 64- and 32-bit targets) behind backend.h.
 *
 * Reading, writing and querying never stop the target (process_vm_readv /
 * process_vm_writev, /proc/PID/maps). Reserve, commit, decommit, protect and
 * release run mmap/mprotect/munmap inside the target: a helper process
 * forked for the request attaches to one thread with ptrace, runs the batch
 * of system calls, restores everything and detaches (inject_linux.c). rmem
 * keeps a table of the allocations it made, because Linux merges mappings
 * and forgets allocation bases and the reserved/committed distinction.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "inject_linux.h"

/* The Win32 numbers rmem speaks (backend.h). */
enum {
  MEM_COMMIT = 0x1000, MEM_RESERVE = 0x2000, MEM_DECOMMIT = 0x4000,
  MEM_RELEASE = 0x8000, MEM_FREE = 0x10000, MEM_PRIVATE = 0x20000,
  MEM_MAPPED = 0x40000, MEM_RESET = 0x80000, MEM_IMAGE = 0x1000000,
  PAGE_NOACCESS = 0x01, PAGE_READONLY = 0x02, PAGE_READWRITE = 0x04,
  PAGE_WRITECOPY = 0x08, PAGE_EXECUTE = 0x10, PAGE_EXECUTE_READ = 0x20,
  PAGE_EXECUTE_READWRITE = 0x40, PAGE_EXECUTE_WRITECOPY = 0x80,
  PROCESS_VM_OPERATION = 0x0008, PROCESS_VM_WRITE = 0x0020
};

/* Committed pages [lo, hi), as page indices inside their allocation. */
typedef struct run {
  size_t lo, hi;
} run;

/* One allocation rmem made: its committed pages as sorted, disjoint,
 * non-adjacent runs, so a huge reservation costs nothing until committed. */
typedef struct alloc {
  uintptr_t base;
  size_t size;
  unsigned long protect; /* the protection it was allocated with */
  run *runs;
  size_t nruns, cap;
} alloc;

struct rb_proc {
  pid_t pid;
  pid_t tid;        /* a live thread: pid, unless the main thread has exited */
  int pidfd;        /* -1 where the kernel has no pidfd_open */
  int memfd;        /* /proc/TID/mem: pins the address space the handle opened */
  int is_self;
  int bits;
  unsigned long access;
  unsigned long long start_time; /* a reused pid is never the same process */
  alloc *allocs;
  size_t nallocs, cap;
};

const char rb_platform[] = "linux";

size_t rb_page_size(void) { return (size_t)sysconf(_SC_PAGESIZE); }
size_t rb_granularity(void) { return rb_page_size(); }
uintptr_t rb_user_end(void) { return (uintptr_t)0x7ffffffff000ULL; }

/* ---- /proc helpers ------------------------------------------------------- */

/* Reads a small /proc file into buf (NUL-terminated); returns 0 or errno. */
static rb_err read_proc(pid_t pid, const char *what, char *buf, size_t n) {
  char path[64];
  ssize_t got;
  int fd;
  snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, what);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno == ENOENT ? ESRCH : (rb_err)errno;
  got = read(fd, buf, n - 1);
  if (got < 0) {
    rb_err e = (rb_err)errno;
    close(fd);
    return e;
  }
  close(fd);
  buf[got] = '\0';
  return 0;
}

/* The fields of /proc/PID/stat after the command name: state is field 3. */
static const char *stat_fields(const char *stat) {
  const char *p = strrchr(stat, ')');
  return p ? p + 2 : stat;
}

static rb_err stat_info(pid_t pid, char *state, unsigned long *ppid,
                        unsigned long long *start) {
  char buf[1024];
  const char *f;
  int i;
  rb_err e = read_proc(pid, "stat", buf, sizeof buf);
  if (e)
    return e;
  f = stat_fields(buf);
  if (state)
    *state = f[0];
  if (ppid)
    *ppid = strtoul(f + 2, NULL, 10);
  if (start) { /* field 22 = the 20th after the state */
    for (i = 0; i < 19 && f; i++) {
      f = strchr(f, ' ');
      if (f)
        f++;
    }
    *start = f ? strtoull(f, NULL, 10) : 0;
  }
  return 0;
}

/* A thread of pid that has not exited: pid itself unless its main thread
 * has (the process lives on in its other threads); 0 if none. */
static pid_t live_thread(pid_t pid) {
  char path[64], state;
  DIR *d;
  struct dirent *ent;
  pid_t found = 0;
  if (stat_info(pid, &state, NULL, NULL))
    return 0;
  if (state != 'Z' && state != 'X')
    return pid;
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  if ((d = opendir(path)) == NULL)
    return 0;
  while (found == 0 && (ent = readdir(d)) != NULL) {
    long tid = strtol(ent->d_name, NULL, 10);
    if (tid <= 0 || tid == pid || tid > INT_MAX)
      continue;
    snprintf(path, sizeof path, "task/%ld/stat", tid);
    {
      char buf[1024];
      const char *f;
      if (read_proc(pid, path, buf, sizeof buf))
        continue;
      f = stat_fields(buf);
      if (f[0] != 'Z' && f[0] != 'X')
        found = (pid_t)tid;
    }
  }
  closedir(d);
  return found;
}

/* Whether the address space behind memfd still has users: reading
 * /proc/PID/mem through a descriptor opened earlier reads that earlier
 * address space, and gives end-of-file once it is gone (the process exited,
 * or exec() replaced it, or the pid now names another process). One read
 * at address 0 (never mapped: EIO) costs about half a microsecond. */
static int mm_alive(int memfd) {
  char b;
  return pread(memfd, &b, 1, 0) != 0;
}

/* ESRCH unless the handle's process still runs the program it was opened
 * on. Checked before every operation, so a handle never acts on another
 * process that got the pid, nor on the new program after an exec(). */
static rb_err check_same(const rb_proc *p) {
  unsigned long long start;
  char state;
  if (p->is_self)
    return 0;
  if (p->memfd >= 0)
    return mm_alive(p->memfd) ? 0 : ESRCH;
  if (stat_info(p->pid, &state, NULL, &start) || start != p->start_time ||
      state == 'Z' || state == 'X')
    return ESRCH;
  return 0;
}

/* Whether the process the handle was opened on has exited. */
static int has_exited(const rb_proc *p) {
  unsigned long long start;
  if (p->pidfd >= 0) { /* readable once its process has exited */
    struct pollfd pfd;
    pfd.fd = p->pidfd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    return poll(&pfd, 1, 0) != 0;
  }
  return live_thread(p->pid) == 0 || stat_info(p->pid, NULL, NULL, &start) ||
         start != p->start_time;
}

int rb_replaced(const rb_proc *p) {
  return !p->is_self && check_same(p) != 0 && !has_exited(p);
}

/* Before every operation: the identity check and, for a process whose main
 * thread has exited, a thread that still runs to work through. */
static rb_err begin(rb_proc *p) {
  rb_err e = check_same(p);
  if (!e && p->tid != p->pid && (p->tid = live_thread(p->pid)) == 0)
    e = ESRCH;
  return e;
}

static void exe_name(pid_t pid, char *buf, size_t n) {
  char path[64], target[PATH_MAX];
  ssize_t len;
  snprintf(path, sizeof path, "/proc/%d/exe", (int)pid);
  len = readlink(path, target, sizeof target - 1);
  if (len > 0) {
    const char *base;
    target[len] = '\0';
    /* " (deleted)" is appended for a replaced executable */
    if (len > 10 && strcmp(target + len - 10, " (deleted)") == 0)
      target[len - 10] = '\0';
    base = strrchr(target, '/');
    snprintf(buf, n, "%s", base ? base + 1 : target);
    return;
  }
  /* another user's process: comm (at most 15 characters) is what we get */
  if (read_proc(pid, "comm", buf, n) == 0)
    buf[strcspn(buf, "\n")] = '\0';
  else if (n)
    buf[0] = '\0';
}

static int elf_bits(pid_t pid) {
  char path[64];
  unsigned char ident[5];
  int fd, bits = 64;
  snprintf(path, sizeof path, "/proc/%d/exe", (int)pid);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    if (read(fd, ident, sizeof ident) == (ssize_t)sizeof ident &&
        memcmp(ident, "\177ELF", 4) == 0 && ident[4] == 1)
      bits = 32;
    close(fd);
  }
  return bits;
}

/* ---- processes --------------------------------------------------------------- */

static rb_err new_proc(pid_t pid, int is_self, unsigned long access, rb_proc **out) {
  rb_proc *p = (rb_proc *)calloc(1, sizeof *p);
  if (p == NULL)
    return ENOMEM;
  p->pid = pid;
  p->tid = pid;
  p->is_self = is_self;
  p->access = access;
  p->pidfd = -1;
  p->memfd = -1;
  *out = p;
  return 0;
}

rb_err rb_open(unsigned long pid, unsigned long access, rb_proc **out) {
  rb_proc *p;
  char path[64];
  rb_err e;
  if (pid == 0 || pid > INT_MAX)
    return ESRCH;
  if ((e = new_proc((pid_t)pid, 0, access, &p)))
    return e;
  /* the pidfd first: the start time read next is then its process's */
  p->pidfd = (int)syscall(SYS_pidfd_open, p->pid, 0);
  if ((e = stat_info(p->pid, NULL, NULL, &p->start_time)) ||
      (e = (p->tid = live_thread(p->pid)) == 0 ? ESRCH : 0)) {
    rb_close(p);
    return e;
  }
  /* The kernel's ptrace access check, as OpenProcess would refuse; the
   * descriptor then identifies the address space (check_same). */
  snprintf(path, sizeof path, "/proc/%d/mem", (int)p->tid);
  p->memfd = open(path, O_RDONLY | O_CLOEXEC);
  if (p->memfd < 0 || !mm_alive(p->memfd)) {
    e = p->memfd < 0 && errno != ENOENT ? (rb_err)errno : ESRCH;
    rb_close(p);
    return e;
  }
  p->bits = elf_bits(p->tid);
  *out = p;
  return 0;
}

rb_err rb_open_self(rb_proc **out) {
  rb_err e = new_proc(getpid(), 1, ~0UL, out);
  if (!e)
    (*out)->bits = (int)sizeof(void *) * 8;
  return e;
}

rb_err rb_dup(const rb_proc *p, rb_proc **out) {
  rb_proc *d;
  rb_err e = new_proc(p->pid, p->is_self, p->access, &d);
  if (e)
    return e;
  if (p->pidfd >= 0 && (d->pidfd = fcntl(p->pidfd, F_DUPFD_CLOEXEC, 0)) < 0) {
    e = (rb_err)errno;
    rb_close(d);
    return e;
  }
  /* the copy pins the same address space, so an exec ends it too */
  if (p->memfd >= 0 && (d->memfd = fcntl(p->memfd, F_DUPFD_CLOEXEC, 0)) < 0) {
    e = (rb_err)errno;
    rb_close(d);
    return e;
  }
  d->bits = p->bits;
  d->tid = p->tid;
  d->start_time = p->start_time;
  *out = d;
  return 0;
}

void rb_close(rb_proc *p) {
  size_t i;
  if (p->pidfd >= 0)
    close(p->pidfd);
  if (p->memfd >= 0)
    close(p->memfd);
  for (i = 0; i < p->nallocs; i++)
    free(p->allocs[i].runs);
  free(p->allocs);
  free(p);
}

unsigned long rb_pid(const rb_proc *p) { return (unsigned long)p->pid; }
int rb_bits(const rb_proc *p) { return p->bits; }

uintptr_t rb_addr_end(const rb_proc *p) {
  return p->bits == 32 ? (uintptr_t)1 << 32 : 0;
}

void rb_name(const rb_proc *p, char *buf, size_t n) { exe_name(p->tid, buf, n); }

rb_err rb_status(const rb_proc *p, int *alive, unsigned long *code, int *known) {
  siginfo_t si;
  *known = 0;
  *code = 0;
  if (p->is_self) {
    *alive = 1;
    return 0;
  }
  *alive = check_same(p) == 0;
  if (*alive)
    return 0;
  /* The exit code is knowable for our own children, without reaping them. */
  memset(&si, 0, sizeof si);
  /* without a pidfd the pid is as safe: a child's is not reused before it is reaped */
  if ((p->pidfd >= 0
           ? waitid((idtype_t)3 /* P_PIDFD */, (id_t)p->pidfd, &si, WEXITED | WNOHANG | WNOWAIT)
           : waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG | WNOWAIT)) == 0 &&
      si.si_pid == p->pid) {
    *known = 1;
    *code = si.si_code == CLD_EXITED ? (unsigned long)si.si_status
                                     : 128UL + (unsigned long)si.si_status;
  }
  return 0;
}

int rb_exited(const rb_proc *p) {
  int alive = 1, known;
  unsigned long code;
  return rb_status(p, &alive, &code, &known) == 0 && !alive;
}

rb_err rb_processes(rb_procinfo *list, size_t cap, size_t *count) {
  DIR *d = opendir("/proc");
  struct dirent *ent;
  size_t n = 0;
  if (d == NULL)
    return (rb_err)errno;
  while ((ent = readdir(d)) != NULL) {
    char *end;
    unsigned long pid = strtoul(ent->d_name, &end, 10), ppid;
    char state;
    if (*end != '\0' || pid == 0)
      continue;
    if (pid > INT_MAX || stat_info((pid_t)pid, &state, &ppid, NULL))
      continue; /* exited, maybe meanwhile */
    /* a main thread that has exited leaves the process to its other threads */
    if ((state == 'Z' || state == 'X') && live_thread((pid_t)pid) == 0)
      continue;
    if (n < cap) {
      list[n].pid = pid;
      list[n].parent_pid = ppid;
      exe_name((pid_t)pid, list[n].name, sizeof list[n].name);
    }
    n++;
  }
  closedir(d);
  *count = n;
  return 0;
}

/* Linux has no debug privilege: ptrace rights come from the user, Yama and
 * CAP_SYS_PTRACE. */
rb_err rb_enable_debug_privilege(void) { return ENOSYS; }
const char *rb_wine_version(void) { return NULL; }
rb_err rb_peb(rb_proc *p, uintptr_t *out) {
  (void)p, (void)out;
  return ENOSYS;
}
rb_err rb_tebs(rb_proc *p, uintptr_t *list, size_t cap, size_t *count) {
  (void)p, (void)list, (void)cap, (void)count;
  return ENOSYS;
}

/* ---- reading and writing ------------------------------------------------------ */

static rb_err transfer(rb_proc *p, uintptr_t addr, void *buf, size_t n, size_t *done,
                       int write) {
  rb_err e;
  *done = 0;
  if (write && !(p->access & PROCESS_VM_WRITE))
    return EACCES;
  if ((e = begin(p)))
    return e;
  while (*done < n) {
    struct iovec local, remote;
    ssize_t got;
    local.iov_base = (char *)buf + *done;
    local.iov_len = n - *done;
    remote.iov_base = (void *)(addr + *done);
    remote.iov_len = n - *done;
    got = write ? process_vm_writev(p->tid, &local, 1, &remote, 1, 0)
                : process_vm_readv(p->tid, &local, 1, &remote, 1, 0);
    if (got < 0) {
      e = (rb_err)errno;
      return e == ESRCH || check_same(p) ? ESRCH : e;
    }
    if (got == 0)
      return EFAULT;
    *done += (size_t)got;
  }
  return 0;
}

void rb_large_buffer(void *buf, size_t n) {
  const uintptr_t huge = (uintptr_t)2 << 20;
  uintptr_t lo = ((uintptr_t)buf + huge - 1) & ~(huge - 1), hi = ((uintptr_t)buf + n) & ~(huge - 1);
  if (hi > lo)
    madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
}

rb_err rb_read(rb_proc *p, uintptr_t addr, void *buf, size_t n, size_t *done) {
  return transfer(p, addr, buf, n, done, 0);
}

rb_err rb_write(rb_proc *p, uintptr_t addr, const void *buf, size_t n, size_t *done) {
  return transfer(p, addr, (void *)buf, n, done, 1);
}

/* One process_vm_readv of pieces [0, count) (at most IOV_MAX of them, none
 * empty) into buf: the bytes read, or -1 with errno. */
static ssize_t read_batch(pid_t pid, const rb_piece *pieces, size_t count, char *buf) {
  struct iovec local, remote[IOV_MAX];
  size_t i, total = 0;
  for (i = 0; i < count; i++) {
    remote[i].iov_base = (void *)pieces[i].addr;
    remote[i].iov_len = pieces[i].n;
    total += pieces[i].n;
  }
  /* the pieces lie one after the other in buf: one local vector holds them */
  local.iov_base = buf;
  local.iov_len = total;
  return process_vm_readv(pid, &local, 1, remote, (unsigned long)count, 0);
}

/* process_vm_readv stops at the first piece it cannot read: the pieces
 * before it are read, that one is tried alone (only a failure of its own
 * makes it unreadable), and the batch goes on after it. */
rb_err rb_read_pieces(rb_proc *p, rb_piece *pieces, size_t count, void *buf) {
  char *at = (char *)buf;
  size_t i = 0;
  while (i < count) {
    size_t k = 0, batch;
    ssize_t got;
    if (pieces[i].n == 0) {
      pieces[i++].ok = 1;
      continue;
    }
    while (k < IOV_MAX && i + k < count && pieces[i + k].n > 0)
      k++;
    got = read_batch(p->pid, pieces + i, k, at);
    if (got < 0 && errno != EFAULT) {
      rb_err e = (rb_err)errno;
      return e == ESRCH || check_same(p) ? ESRCH : e;
    }
    for (batch = i + k; i < batch && got >= (ssize_t)pieces[i].n; i++) {
      pieces[i].ok = 1;
      got -= (ssize_t)pieces[i].n;
      at += pieces[i].n;
    }
    if (i < batch) { /* where it stopped */
      pieces[i].ok = read_batch(p->pid, pieces + i, 1, at) == (ssize_t)pieces[i].n;
      at += pieces[i++].n;
    }
  }
  return 0;
}

/* ---- protections ---------------------------------------------------------------- */

static int prot_of(unsigned long protect, int *ok) {
  *ok = (protect & ~0xFFUL) == 0; /* guard, nocache, writecombine: no Linux meaning */
  switch (protect & 0xFF) {
  case PAGE_NOACCESS: return PROT_NONE;
  case PAGE_READONLY: return PROT_READ;
  case PAGE_READWRITE: case PAGE_WRITECOPY: return PROT_READ | PROT_WRITE;
  case PAGE_EXECUTE: return PROT_EXEC;
  case PAGE_EXECUTE_READ: return PROT_READ | PROT_EXEC;
  case PAGE_EXECUTE_READWRITE: case PAGE_EXECUTE_WRITECOPY:
    return PROT_READ | PROT_WRITE | PROT_EXEC;
  default: *ok = 0; return 0;
  }
}

static unsigned long protect_of(const char perms[4]) {
  int r = perms[0] == 'r', w = perms[1] == 'w', x = perms[2] == 'x';
  if (x)
    return w ? PAGE_EXECUTE_READWRITE : r ? PAGE_EXECUTE_READ : PAGE_EXECUTE;
  return w ? PAGE_READWRITE : r ? PAGE_READONLY : PAGE_NOACCESS;
}

/* ---- /proc/PID/maps -------------------------------------------------------------- */

typedef struct mapping {
  uintptr_t lo, hi;
  char perms[5];
  int file;   /* backed by a file */
  int image;  /* a file with an executable mapping: a program or library */
  unsigned long long inode;
  unsigned dev_major, dev_minor;
} mapping;

/* A snapshot of /proc/PID/maps, ascending. */
typedef struct maps {
  mapping *m;
  size_t n;
} maps;

static int same_file(const mapping *a, const mapping *b) {
  return a->inode == b->inode && a->dev_major == b->dev_major && a->dev_minor == b->dev_minor;
}

static int by_file(const void *pa, const void *pb) {
  const mapping *a = *(const mapping *const *)pa, *b = *(const mapping *const *)pb;
  if (a->dev_major != b->dev_major)
    return a->dev_major < b->dev_major ? -1 : 1;
  if (a->dev_minor != b->dev_minor)
    return a->dev_minor < b->dev_minor ? -1 : 1;
  if (a->inode != b->inode)
    return a->inode < b->inode ? -1 : 1;
  return 0;
}

/* Marks the mappings of files that are mapped executable somewhere: images.
 * Sorting by file keeps this n log n for processes with many mappings. */
static rb_err mark_images(maps *ms) {
  size_t i, j, k, nf = 0;
  mapping **files = (mapping **)malloc((ms->n ? ms->n : 1) * sizeof *files);
  if (files == NULL)
    return ENOMEM;
  for (i = 0; i < ms->n; i++)
    if (ms->m[i].file)
      files[nf++] = &ms->m[i];
  qsort(files, nf, sizeof *files, by_file);
  for (i = 0; i < nf; i = j) {
    int image = 0;
    for (j = i; j < nf && same_file(files[j], files[i]); j++)
      image |= files[j]->perms[2] == 'x';
    for (k = i; k < j; k++)
      files[k]->image = image;
  }
  free(files);
  return 0;
}

static void free_maps(maps *ms) {
  free(ms->m);
  ms->m = NULL;
  ms->n = 0;
}

/* "lo-hi perms offset major:minor inode [path]": 0, or -1 for a line that
 * is not one (by hand: sscanf made walks of big maps twice as slow). */
static int parse_maps_line(const char *line, mapping *m) {
  char *end;
  memset(m, 0, sizeof *m);
  m->lo = (uintptr_t)strtoull(line, &end, 16);
  if (*end != '-')
    return -1;
  m->hi = (uintptr_t)strtoull(end + 1, &end, 16);
  if (*end != ' ' || strlen(end) < 6)
    return -1;
  memcpy(m->perms, end + 1, 4);
  strtoull(end + 6, &end, 16); /* the offset */
  m->dev_major = (unsigned)strtoul(end, &end, 16);
  if (*end != ':')
    return -1;
  m->dev_minor = (unsigned)strtoul(end + 1, &end, 16);
  m->inode = strtoull(end, &end, 10);
  if (*end != ' ' && *end != '\n' && *end != '\0')
    return -1;
  m->file = m->inode != 0;
  return 0;
}

static rb_err read_maps(pid_t pid, maps *ms) {
  char path[64];
  FILE *f;
  char line[PATH_MAX + 128];
  size_t cap = 0;
  rb_err e = 0;
  ms->m = NULL;
  ms->n = 0;
  snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
  f = fopen(path, "re");
  if (f == NULL)
    return errno == ENOENT ? ESRCH : (rb_err)errno;
  while (fgets(line, sizeof line, f)) {
    mapping m;
    if (parse_maps_line(line, &m))
      continue;
    if (ms->n == cap) {
      mapping *grown = (mapping *)realloc(ms->m, (cap = cap ? 2 * cap : 256) * sizeof *grown);
      if (grown == NULL) {
        e = ENOMEM;
        break;
      }
      ms->m = grown;
    }
    ms->m[ms->n++] = m;
  }
  fclose(f);
  if (!e)
    e = mark_images(ms);
  if (e)
    free_maps(ms);
  return e;
}

/* ---- modules: the files mapped executable somewhere ------------------------------------ */

rb_err rb_modules(rb_proc *p, rb_module *list, size_t cap, size_t *count) {
  char path[64], line[PATH_MAX + 128];
  FILE *f;
  size_t n = 0, i;
  rb_err e;
  /* two passes over maps: which files are mapped executable, then their extents */
  struct { unsigned long long inode; unsigned major, minor; } exec[512];
  size_t nexec = 0;
  int pass;
  if ((e = begin(p)))
    return e;
  for (pass = 0; pass < 2; pass++) {
    snprintf(path, sizeof path, "/proc/%d/maps", (int)p->tid);
    if ((f = fopen(path, "re")) == NULL)
      return errno == ENOENT ? ESRCH : (rb_err)errno;
    while (fgets(line, sizeof line, f)) {
      unsigned long lo, hi;
      unsigned long long off, inode;
      unsigned major, minor;
      char perms[5];
      int name_at = 0, known = 0;
      const char *file, *base;
      if (sscanf(line, "%lx-%lx %4s %llx %x:%x %llu %n", &lo, &hi, perms, &off, &major, &minor,
                 &inode, &name_at) < 7 || inode == 0 || name_at == 0)
        continue;
      for (i = 0; i < nexec; i++)
        known |= exec[i].inode == inode && exec[i].major == major && exec[i].minor == minor;
      if (pass == 0) {
        if (perms[2] == 'x' && !known && nexec < sizeof exec / sizeof exec[0]) {
          exec[nexec].inode = inode;
          exec[nexec].major = major;
          exec[nexec].minor = minor;
          nexec++;
        }
        continue;
      }
      if (!known)
        continue;
      file = line + name_at;
      line[strcspn(line, "\n")] = '\0';
      for (i = 0; i < n && i < cap; i++)
        if (strcmp(list[i].path, file) == 0)
          break;
      if (i < n && i < cap) { /* one more mapping of a module seen already */
        if (hi - list[i].base > list[i].size)
          list[i].size = hi - list[i].base;
        continue;
      }
      if (n < cap) {
        base = strrchr(file, '/');
        list[n].base = lo;
        list[n].size = hi - lo;
        snprintf(list[n].path, sizeof list[n].path, "%s", file);
        snprintf(list[n].name, sizeof list[n].name, "%s", base ? base + 1 : file);
      }
      n++;
    }
    fclose(f);
  }
  if ((e = check_same(p)))
    return e;
  *count = n;
  return 0;
}

/* ---- rmem's allocations ------------------------------------------------------------ */

/* The allocations are kept sorted by base: the index of the first one whose
 * base is above addr. */
static size_t allocs_above(const rb_proc *p, uintptr_t addr) {
  size_t lo = 0, hi = p->nallocs;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (p->allocs[mid].base <= addr)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static alloc *find_alloc(rb_proc *p, uintptr_t addr) {
  size_t i = allocs_above(p, addr);
  if (i > 0 && addr - p->allocs[i - 1].base < p->allocs[i - 1].size)
    return &p->allocs[i - 1];
  return NULL;
}

/* The index of the first run of a that ends above page i. */
static size_t run_at(const alloc *a, size_t i) {
  size_t lo = 0, hi = a->nruns;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (a->runs[mid].hi <= i)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static int committed_at(const alloc *a, size_t i) {
  size_t k = run_at(a, i);
  return k < a->nruns && a->runs[k].lo <= i;
}

/* The pages around page i in the same state: [*first, *last). */
static void same_state(const alloc *a, size_t i, size_t *first, size_t *last) {
  size_t k = run_at(a, i);
  if (k < a->nruns && a->runs[k].lo <= i) {
    *first = a->runs[k].lo;
    *last = a->runs[k].hi;
  } else {
    *first = k > 0 ? a->runs[k - 1].hi : 0;
    *last = k < a->nruns ? a->runs[k].lo : a->size / rb_page_size();
  }
}

/* Room for the runs one state change may add, reserved before the change
 * is made in the target: recording it can then no longer fail. */
static rb_err reserve_runs(alloc *a) {
  if (a->nruns + 2 > a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 4;
    run *grown = (run *)realloc(a->runs, cap * sizeof *grown);
    if (grown == NULL)
      return ENOMEM;
    a->runs = grown;
    a->cap = cap;
  }
  return 0;
}

/* Records pages [lo, hi) as committed or not (room reserved: reserve_runs). */
static void set_runs(alloc *a, size_t lo, size_t hi, int commit) {
  /* the runs [k1, k2) overlap [lo, hi), or touch it when committing (merged) */
  size_t k1 = run_at(a, commit && lo > 0 ? lo - 1 : lo), k2 = k1, n = 0;
  run pieces[2];
  while (k2 < a->nruns && (commit ? a->runs[k2].lo <= hi : a->runs[k2].lo < hi))
    k2++;
  if (commit) {
    pieces[0].lo = k1 < k2 && a->runs[k1].lo < lo ? a->runs[k1].lo : lo;
    pieces[0].hi = k1 < k2 && a->runs[k2 - 1].hi > hi ? a->runs[k2 - 1].hi : hi;
    n = 1;
  } else if (k1 < k2) {
    if (a->runs[k1].lo < lo) {
      pieces[n].lo = a->runs[k1].lo;
      pieces[n++].hi = lo;
    }
    if (a->runs[k2 - 1].hi > hi) {
      pieces[n].lo = hi;
      pieces[n++].hi = a->runs[k2 - 1].hi;
    }
  }
  memmove(a->runs + k1 + n, a->runs + k2, (a->nruns - k2) * sizeof *a->runs);
  memcpy(a->runs + k1, pieces, n * sizeof *pieces);
  a->nruns = a->nruns - (k2 - k1) + n;
}

static rb_err add_alloc(rb_proc *p, uintptr_t base, size_t size, unsigned long protect,
                        int committed) {
  alloc *a;
  size_t at;
  run *runs = NULL;
  if (committed && (runs = (run *)malloc(4 * sizeof *runs)) == NULL)
    return ENOMEM;
  if (p->nallocs == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 8;
    alloc *grown = (alloc *)realloc(p->allocs, cap * sizeof *grown);
    if (grown == NULL) {
      free(runs);
      return ENOMEM;
    }
    p->allocs = grown;
    p->cap = cap;
  }
  at = allocs_above(p, base);
  a = &p->allocs[at];
  memmove(a + 1, a, (p->nallocs - at) * sizeof *a);
  a->base = base;
  a->size = size;
  a->protect = protect;
  a->runs = runs;
  a->cap = runs ? 4 : 0;
  a->nruns = runs ? 1 : 0;
  if (runs) {
    runs[0].lo = 0;
    runs[0].hi = size / rb_page_size();
  }
  p->nallocs++;
  return 0;
}

static void drop_alloc(rb_proc *p, alloc *a) {
  free(a->runs);
  memmove(a, a + 1, (size_t)(p->allocs + --p->nallocs - a) * sizeof *a);
}

/* ---- system calls in the target ------------------------------------------------------ */

#define CALLS_MAX 64 /* system calls in one ptrace session */

typedef struct calls {
  rb_inject_call c[CALLS_MAX];
  int n;
  int is32;
} calls;

enum { SC_MMAP, SC_MPROTECT, SC_MUNMAP, SC_MADVISE };
static const long nr64[] = {9, 10, 11, 28};
static const long nr32[] = {192 /* mmap2 */, 125, 91, 219};

static void add_call(calls *cs, int which, long a0, long a1, long a2, long a3, long a4) {
  rb_inject_call *c = &cs->c[cs->n++];
  c->nr = cs->is32 ? nr32[which] : nr64[which];
  c->args[0] = a0;
  c->args[1] = a1;
  c->args[2] = a2;
  c->args[3] = a3;
  c->args[4] = a4;
  c->args[5] = 0; /* mmap's offset (mmap2: in pages) */
  c->ret = 0;
}

static rb_err need(const rb_proc *p, unsigned long right) {
  return (p->access & right) ? 0 : EACCES;
}

rb_err rb_call(rb_proc *p, uintptr_t fn, uintptr_t arg, unsigned long timeout_ms,
               uintptr_t *result) {
  rb_err e;
  if ((e = need(p, PROCESS_VM_OPERATION)))
    return e;
  if (p->is_self)
    return EINVAL; /* the host cannot trace itself */
  if ((e = begin(p)))
    return e;
  e = rb_inject_fn(p->pid, p->memfd, p->bits == 32, fn, arg, timeout_ms, result);
  return e && check_same(p) ? ESRCH : e;
}

rb_err rb_begin_code(rb_proc *p) {
  rb_err e;
  if ((e = need(p, PROCESS_VM_WRITE)) || (e = need(p, PROCESS_VM_OPERATION)))
    return e;
  return p->is_self ? EINVAL : begin(p);
}

/* Runs the batch in the target; the first failing call's errno, or 0. */
static rb_err run_calls(rb_proc *p, calls *cs) {
  int i;
  rb_err e;
  if (p->is_self) {
    for (i = 0; i < cs->n; i++) {
      rb_inject_call *c = &cs->c[i];
      c->ret = syscall(c->nr, c->args[0], c->args[1], c->args[2], c->args[3], c->args[4],
                       c->args[5]);
      if (c->ret == -1)
        c->ret = -errno;
    }
  } else {
    if ((e = begin(p)))
      return e;
    e = rb_inject(p->pid, p->memfd, cs->is32, cs->c, cs->n);
    if (e)
      return e == ESRCH || check_same(p) ? ESRCH : e;
  }
  for (i = 0; i < cs->n; i++)
    if (cs->c[i].ret < 0 && cs->c[i].ret > -4096)
      return (rb_err)-cs->c[i].ret;
  return 0;
}

static void init_calls(rb_proc *p, calls *cs) {
  cs->n = 0;
  cs->is32 = p->bits == 32;
}

static void set_state(alloc *a, uintptr_t lo, uintptr_t hi, int commit) {
  size_t ps = rb_page_size();
  set_runs(a, (lo - a->base) / ps, (hi - a->base) / ps, commit);
}

/* Commits the pages [lo, hi) of a with protection prot, run by run: new
 * mappings for reserved runs, mprotect for committed ones (which keeps their
 * contents), CALLS_MAX runs a session. */
static rb_err commit_range(rb_proc *p, alloc *a, uintptr_t lo, uintptr_t hi, int prot) {
  size_t ps = rb_page_size(), i = (lo - a->base) / ps, end = (hi - a->base) / ps;
  uintptr_t done = lo; /* pages below are committed already in this call */
  calls cs;
  rb_err e;
  init_calls(p, &cs);
  while (i < end) {
    size_t first, j;
    int was = committed_at(a, i);
    same_state(a, i, &first, &j);
    if (j > end)
      j = end;
    if ((e = reserve_runs(a)))
      return e;
    if (was)
      add_call(&cs, SC_MPROTECT, (long)(a->base + i * ps), (long)((j - i) * ps), prot, 0, 0);
    else
      add_call(&cs, SC_MMAP, (long)(a->base + i * ps), (long)((j - i) * ps), prot,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1);
    i = j;
    if (cs.n == CALLS_MAX || i == end) {
      if ((e = run_calls(p, &cs)))
        return e;
      set_state(a, done, a->base + i * ps, 1);
      done = a->base + i * ps;
      init_calls(p, &cs);
    }
  }
  return 0;
}

static uintptr_t down(uintptr_t a) { return a & ~(uintptr_t)(rb_page_size() - 1); }
static uintptr_t up(uintptr_t a) { return down(a + rb_page_size() - 1); }


rb_err rb_alloc(rb_proc *p, uintptr_t addr, size_t size, unsigned long type,
                unsigned long protect, uintptr_t *out) {
  calls cs;
  int ok, prot = prot_of(protect, &ok);
  uintptr_t lo = down(addr), hi = up(addr + size);
  rb_err e;
  if ((e = need(p, PROCESS_VM_OPERATION)))
    return e;
  if (size == 0 || !ok || hi < lo)
    return EINVAL;
  init_calls(p, &cs);
  if (type & MEM_RESET) {
    alloc *a = find_alloc(p, lo);
    if (type != MEM_RESET)
      return EINVAL;
    if (a != NULL && hi - a->base > a->size)
      return EINVAL;
    add_call(&cs, SC_MADVISE, (long)lo, (long)(hi - lo), MADV_FREE, 0, 0);
    if ((e = run_calls(p, &cs)))
      return e;
    *out = lo;
    return 0;
  }
  if (type & MEM_RESERVE) {
    int commit = (type & MEM_COMMIT) != 0;
    if (type & ~(unsigned long)(MEM_RESERVE | MEM_COMMIT | 0x100000 /* TOP_DOWN */))
      return EINVAL; /* write watch, large pages, physical: no Linux meaning */
    add_call(&cs, SC_MMAP, (long)lo, (long)(hi - lo), commit ? prot : PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | (commit ? 0 : MAP_NORESERVE) |
                 (addr ? MAP_FIXED_NOREPLACE : 0),
             -1);
    if ((e = run_calls(p, &cs)))
      return e;
    lo = (uintptr_t)cs.c[0].ret;
    if (cs.is32)
      lo &= 0xFFFFFFFFu;
    if (addr && lo != down(addr)) { /* a kernel without MAP_FIXED_NOREPLACE */
      init_calls(p, &cs);
      add_call(&cs, SC_MUNMAP, (long)lo, (long)(hi - down(addr)), 0, 0, 0);
      run_calls(p, &cs);
      return EEXIST;
    }
    if ((e = add_alloc(p, lo, hi - down(addr), protect, commit))) {
      init_calls(p, &cs); /* nothing may stay mapped that rmem cannot free */
      add_call(&cs, SC_MUNMAP, (long)lo, (long)(hi - down(addr)), 0, 0, 0);
      run_calls(p, &cs);
      return e;
    }
    *out = lo;
    return 0;
  }
  if (type == MEM_COMMIT) {
    alloc *a = find_alloc(p, lo);
    if (a == NULL || hi - a->base > a->size)
      return EFAULT; /* Windows: ERROR_INVALID_ADDRESS */
    if ((e = commit_range(p, a, lo, hi, prot)))
      return e;
    *out = lo;
    return 0;
  }
  return EINVAL;
}

rb_err rb_free(rb_proc *p, uintptr_t addr, size_t size, unsigned long type) {
  calls cs;
  alloc *a;
  rb_err e;
  if ((e = need(p, PROCESS_VM_OPERATION)))
    return e;
  if (type != MEM_DECOMMIT && type != MEM_RELEASE)
    return EINVAL;
  a = find_alloc(p, addr);
  init_calls(p, &cs);
  if (type == MEM_RELEASE) {
    if (size != 0)
      return EINVAL;
    if (a == NULL || a->base != addr)
      return EFAULT; /* Windows: ERROR_INVALID_ADDRESS */
    add_call(&cs, SC_MUNMAP, (long)a->base, (long)a->size, 0, 0, 0);
    if ((e = run_calls(p, &cs)))
      return e;
    drop_alloc(p, a);
    return 0;
  }
  {
    uintptr_t lo = down(addr), hi = size == 0 ? 0 : up(addr + size);
    if (a == NULL)
      return EFAULT;
    if (size == 0) {
      if (addr != a->base)
        return EINVAL;
      hi = a->base + a->size;
    }
    if (hi - a->base > a->size)
      return EINVAL;
    if ((e = reserve_runs(a)))
      return e;
    /* one new reserved mapping over the range, whatever its pages' states */
    add_call(&cs, SC_MMAP, (long)lo, (long)(hi - lo), PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1);
    if ((e = run_calls(p, &cs)))
      return e;
    set_state(a, lo, hi, 0);
    return 0;
  }
}

static void query_in(rb_proc *p, const maps *ms, uintptr_t addr, rb_region *info);

rb_err rb_protect(rb_proc *p, uintptr_t addr, size_t size, unsigned long protect,
                  unsigned long *old) {
  calls cs;
  int ok, prot = prot_of(protect, &ok);
  uintptr_t lo = down(addr), hi = up(addr + size), at;
  alloc *a = find_alloc(p, lo);
  rb_region r;
  maps ms;
  rb_err e;
  if ((e = need(p, PROCESS_VM_OPERATION)))
    return e;
  if (!ok || size == 0 || hi < lo)
    return EINVAL;
  if (a != NULL && hi - a->base > a->size)
    return EFAULT; /* one allocation at a time, as on Windows */
  if ((e = begin(p)) || (e = read_maps(p->tid, &ms)))
    return e;
  /* All or nothing: every page committed before any changes (mprotect
   * would change the pages before a hole and then fail). */
  for (at = lo; at < hi; at = r.base + r.size) {
    query_in(p, &ms, at, &r);
    if (at == lo)
      *old = r.protect;
    if (r.state != MEM_COMMIT || r.base + r.size <= at)
      break;
  }
  free_maps(&ms);
  if (at < hi)
    return EFAULT; /* Windows: ERROR_INVALID_ADDRESS */
  init_calls(p, &cs);
  add_call(&cs, SC_MPROTECT, (long)lo, (long)(hi - lo), prot, 0, 0);
  if ((e = run_calls(p, &cs)))
    return e == ENOMEM ? EFAULT : e; /* ENOMEM: part of the range is unmapped */
  return 0;
}

/* Linux merges rmem's allocations with like neighbours into one mapping:
 * a region that is not rmem's stops at the allocations around addr (which
 * itself is in none of them). */
static void clip_to_allocs(const rb_proc *p, uintptr_t addr, rb_region *info) {
  size_t i = allocs_above(p, addr);
  uintptr_t end = info->base + info->size;
  if (i < p->nallocs && p->allocs[i].base < end)
    end = p->allocs[i].base;
  if (i > 0) {
    uintptr_t below = p->allocs[i - 1].base + p->allocs[i - 1].size;
    if (below > info->base)
      info->base = below;
  }
  info->size = end - info->base;
}

/* The region at addr, as VirtualQueryEx would describe it, from a snapshot. */
static void query_in(rb_proc *p, const maps *ms, uintptr_t addr, rb_region *info) {
  size_t lo = 0, hi = ms->n;
  const mapping *hit, *prev;
  alloc *a;
  while (lo < hi) { /* the first mapping that ends above addr */
    size_t mid = lo + (hi - lo) / 2;
    if (ms->m[mid].hi <= addr)
      lo = mid + 1;
    else
      hi = mid;
  }
  hit = lo < ms->n && ms->m[lo].lo <= addr ? &ms->m[lo] : NULL;
  prev = lo > 0 ? &ms->m[lo - 1] : NULL;
  memset(info, 0, sizeof *info);
  a = find_alloc(p, down(addr));
  if (a != NULL) {
    /* a run of pages of this allocation with the same state and protection */
    size_t ps = rb_page_size(), i = (down(addr) - a->base) / ps, first, last;
    int state = committed_at(a, i);
    unsigned long prot = hit ? protect_of(hit->perms) : PAGE_NOACCESS;
    uintptr_t mlo = hit ? hit->lo : 0, mhi = hit ? hit->hi : rb_user_end();
    same_state(a, i, &first, &last);
    info->base = a->base + first * ps > mlo ? a->base + first * ps : mlo;
    info->size = (a->base + last * ps < mhi ? a->base + last * ps : mhi) - info->base;
    info->allocation_base = a->base;
    info->allocation_protect = a->protect;
    info->state = state ? MEM_COMMIT : MEM_RESERVE;
    info->protect = state ? prot : 0;
    info->type = MEM_PRIVATE;
    return;
  }
  if (hit == NULL) { /* a gap between mappings: free */
    info->base = prev ? prev->hi : 0;
    info->size = (lo < ms->n ? ms->m[lo].lo : rb_user_end()) - info->base;
    info->state = MEM_FREE;
    info->protect = PAGE_NOACCESS;
    return;
  }
  info->base = hit->lo;
  info->size = hit->hi - hit->lo;
  clip_to_allocs(p, addr, info);
  info->allocation_base = info->base;
  info->protect = protect_of(hit->perms);
  /* a PROT_NONE anonymous mapping is how Linux programs reserve space */
  info->state = info->protect == PAGE_NOACCESS && !hit->file ? MEM_RESERVE : MEM_COMMIT;
  if (info->state == MEM_RESERVE)
    info->protect = 0;
  info->allocation_protect = info->protect ? info->protect : PAGE_NOACCESS;
  info->type = !hit->file ? MEM_PRIVATE : hit->image ? MEM_IMAGE : MEM_MAPPED;
}

rb_err rb_query(rb_proc *p, uintptr_t addr, rb_region *info) {
  size_t n;
  if (addr >= rb_user_end())
    return EINVAL;
  return rb_regions(p, addr, info, 1, &n);
}

rb_err rb_regions(rb_proc *p, uintptr_t addr, rb_region *list, size_t cap, size_t *count) {
  maps ms;
  rb_err e;
  size_t n = 0;
  if ((e = begin(p)) || (e = read_maps(p->tid, &ms)))
    return e;
  if ((e = check_same(p))) {
    free_maps(&ms);
    return e;
  }
  while (n < cap && addr < rb_user_end()) {
    uintptr_t next;
    query_in(p, &ms, addr, &list[n]);
    next = list[n].base + list[n].size;
    n++;
    if (next <= addr)
      break;
    addr = next;
  }
  free_maps(&ms);
  *count = n;
  return 0;
}

/* ---- errors ------------------------------------------------------------------------------ */

void rb_message(rb_err code, char *buf, size_t n) {
  char tmp[256];
  const char *s = strerror_r((int)code, tmp, sizeof tmp);
  snprintf(buf, n, "%s", s);
}

const rb_error_entry rb_error_names[] = {
  {EPERM, "EPERM"}, {ENOENT, "ENOENT"}, {ESRCH, "ESRCH"}, {EINTR, "EINTR"},
  {EIO, "EIO"}, {E2BIG, "E2BIG"}, {ECHILD, "ECHILD"}, {EAGAIN, "EAGAIN"},
  {ENOMEM, "ENOMEM"}, {EACCES, "EACCES"}, {EFAULT, "EFAULT"}, {EBUSY, "EBUSY"},
  {EEXIST, "EEXIST"}, {EINVAL, "EINVAL"}, {ENOSYS, "ENOSYS"}, {ELOOP, "ELOOP"},
  {EPROTO, "EPROTO"}, {ETIMEDOUT, "ETIMEDOUT"}, {EOVERFLOW, "EOVERFLOW"}, {ENOTSUP, "ENOTSUP"},
  {0, NULL}
};
