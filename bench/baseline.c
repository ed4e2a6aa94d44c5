/*
 * The C baselines for bench/bench.lua: the same OS calls rmem makes, from
 * plain C, timed the same way (the median of several batches).
 *
 *   rmem-bench-baseline PID calls ADDRESS BULK_ADDRESS BULK_SIZE
 *   rmem-bench-baseline PID walk
 *   rmem-bench-baseline PID read BULK_ADDRESS BULK_SIZE
 *
 * ADDRESS is a committed read-write page in process PID, BULK_ADDRESS a
 * committed region of BULK_SIZE bytes. "walk" walks every region of PID;
 * "read" reads the bulk region only, in one call into a warm buffer.
 * Prints "name seconds-per-op" lines.
 */
#ifdef _WIN32
#include <windows.h>
#else
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCHES 7

static double now(void) {
#ifdef _WIN32
  LARGE_INTEGER f, c;
  QueryPerformanceFrequency(&f);
  QueryPerformanceCounter(&c);
  return (double)c.QuadPart / (double)f.QuadPart;
#else
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
#endif
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

typedef void (*op_fn)(void *ctx);

/* The median over BATCHES batches of reps calls of the time per call. */
static void measure(const char *name, op_fn fn, void *ctx, int reps) {
  double t[BATCHES];
  int b, i;
  fn(ctx); /* warm up */
  for (b = 0; b < BATCHES; b++) {
    double t0 = now();
    for (i = 0; i < reps; i++)
      fn(ctx);
    t[b] = (now() - t0) / reps;
  }
  qsort(t, BATCHES, sizeof t[0], by_value);
  printf("%s %.9g\n", name, t[BATCHES / 2]);
  fflush(stdout);
}

static void die(const char *what) {
  fprintf(stderr, "rmem-bench-baseline: %s failed\n", what);
  exit(1);
}

typedef struct ctx {
  unsigned long pid;
  uintptr_t addr, bulk;
  size_t bulk_size, n;
  char *buf, *copy;
#ifdef _WIN32
  HANDLE h;
#endif
} ctx;

/* ---- a naive scanner over a local buffer: the floor to beat ---------------- */

static const unsigned char pattern[12] = {0x48, 0x8B, 0x05, 0, 0, 0, 0, 0x48, 0x85, 0xC0, 0x74, 0};
static const unsigned char mask[12] = {1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0};

static void naive_scan(void *p) {
  ctx *c = (ctx *)p;
  const unsigned char *s = (const unsigned char *)c->copy;
  size_t i, j, hits = 0;
  for (i = 0; i + sizeof pattern <= c->bulk_size; i++) {
    for (j = 0; j < sizeof pattern; j++)
      if (mask[j] && s[i + j] != pattern[j])
        break;
    hits += j == sizeof pattern;
  }
  c->n = hits;
}

static void local_memcpy(void *p) {
  ctx *c = (ctx *)p;
  memcpy(c->copy, c->buf, c->bulk_size);
}

#ifdef _WIN32

static void open_close(void *p) {
  ctx *c = (ctx *)p;
  HANDLE h = OpenProcess(PROCESS_VM_OPERATION | PROCESS_VM_READ | PROCESS_VM_WRITE |
                         PROCESS_QUERY_INFORMATION | SYNCHRONIZE, FALSE, (DWORD)c->pid);
  if (h == NULL)
    die("OpenProcess");
  CloseHandle(h);
}

static void alloc_free(void *p) {
  ctx *c = (ctx *)p;
  void *a = VirtualAllocEx(c->h, NULL, 4096, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
  if (a == NULL || !VirtualFreeEx(c->h, a, 0, MEM_RELEASE))
    die("VirtualAllocEx/VirtualFreeEx");
}

static void query(void *p) {
  ctx *c = (ctx *)p;
  MEMORY_BASIC_INFORMATION m;
  if (!VirtualQueryEx(c->h, (LPCVOID)c->addr, &m, sizeof m))
    die("VirtualQueryEx");
}

static void rw(ctx *c, uintptr_t addr, size_t n, int write) {
  SIZE_T done;
  BOOL ok = write ? WriteProcessMemory(c->h, (LPVOID)addr, c->buf, n, &done)
                  : ReadProcessMemory(c->h, (LPCVOID)addr, c->buf, n, &done);
  if (!ok || done != n)
    die("Read/WriteProcessMemory");
}

static void protect(void *p) {
  ctx *c = (ctx *)p;
  DWORD old;
  if (!VirtualProtectEx(c->h, (LPVOID)c->addr, 4096, PAGE_READWRITE, &old))
    die("VirtualProtectEx");
}

static void walk(void *p) {
  ctx *c = (ctx *)p;
  MEMORY_BASIC_INFORMATION m;
  uintptr_t a = 0;
  size_t n = 0;
  while (VirtualQueryEx(c->h, (LPCVOID)a, &m, sizeof m)) {
    n++;
    a = (uintptr_t)m.BaseAddress + m.RegionSize;
  }
  c->n = n;
}

#else

static void open_close(void *p) {
  ctx *c = (ctx *)p;
  char path[64];
  int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)c->pid, 0), fd;
  snprintf(path, sizeof path, "/proc/%lu/mem", c->pid);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (pidfd < 0 || fd < 0)
    die("pidfd_open/open");
  close(fd);
  close(pidfd);
}

/* Parses the whole of /proc/PID/maps, as describing a region needs. */
static size_t parse_maps(ctx *c, uintptr_t find) {
  char path[64], line[4096 + 128];
  FILE *f;
  size_t n = 0;
  snprintf(path, sizeof path, "/proc/%lu/maps", c->pid);
  if ((f = fopen(path, "re")) == NULL)
    die("fopen maps");
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    unsigned long long off, inode;
    unsigned major, minor;
    char perms[5];
    if (sscanf(line, "%lx-%lx %4s %llx %x:%x %llu", &lo, &hi, perms, &off, &major, &minor,
               &inode) == 7)
      n += find == 0 || (lo <= find && find < hi);
  }
  fclose(f);
  return n;
}

static void query(void *p) {
  ctx *c = (ctx *)p;
  if (parse_maps(c, c->addr) != 1)
    die("query");
}

static void walk(void *p) {
  ctx *c = (ctx *)p;
  c->n = parse_maps(c, 0);
}

static void rw(ctx *c, uintptr_t addr, size_t n, int write) {
  struct iovec local = {c->buf, n}, remote = {(void *)addr, n};
  ssize_t got = write ? process_vm_writev((pid_t)c->pid, &local, 1, &remote, 1, 0)
                      : process_vm_readv((pid_t)c->pid, &local, 1, &remote, 1, 0);
  if (got != (ssize_t)n)
    die("process_vm_readv/writev");
}

/* The floor of any ptrace injection: seize, interrupt, run getpid through
 * the vDSO's syscall instruction by single-stepping, restore, detach. */
static uintptr_t vdso_syscall;

static void find_vdso_syscall(ctx *c) {
  char path[64], line[512];
  FILE *f;
  snprintf(path, sizeof path, "/proc/%lu/maps", c->pid);
  if ((f = fopen(path, "re")) == NULL)
    die("fopen maps");
  while (fgets(line, sizeof line, f) && vdso_syscall == 0) {
    unsigned long lo, hi, i;
    if (strstr(line, "[vdso]") && sscanf(line, "%lx-%lx", &lo, &hi) == 2) {
      unsigned char *v = (unsigned char *)malloc(hi - lo);
      struct iovec l = {v, hi - lo}, r = {(void *)lo, hi - lo};
      if (v == NULL || process_vm_readv((pid_t)c->pid, &l, 1, &r, 1, 0) != (ssize_t)(hi - lo))
        die("read vdso");
      for (i = 0; i + 1 < hi - lo; i++)
        if (v[i] == 0x0F && v[i + 1] == 0x05) {
          vdso_syscall = lo + i;
          break;
        }
      free(v);
    }
  }
  fclose(f);
  if (vdso_syscall == 0)
    die("finding a syscall instruction");
}

static void ptrace_session(void *p) {
  ctx *c = (ctx *)p;
  pid_t pid = (pid_t)c->pid;
  struct user_regs_struct saved, r;
  int st;
  if (ptrace(PTRACE_SEIZE, pid, 0, 0) || ptrace(PTRACE_INTERRUPT, pid, 0, 0) ||
      waitpid(pid, &st, __WALL) != pid || ptrace(PTRACE_GETREGS, pid, 0, &saved))
    die("ptrace attach");
  r = saved;
  r.rip = vdso_syscall;
  r.rax = SYS_getpid;
  r.orig_rax = (unsigned long long)-1;
  if (ptrace(PTRACE_SETREGS, pid, 0, &r) || ptrace(PTRACE_SINGLESTEP, pid, 0, 0) ||
      waitpid(pid, &st, __WALL) != pid || ptrace(PTRACE_GETREGS, pid, 0, &r) ||
      r.rax != (unsigned long long)pid || ptrace(PTRACE_SETREGS, pid, 0, &saved) ||
      ptrace(PTRACE_DETACH, pid, 0, 0))
    die("ptrace syscall");
}

#endif

static void read8(void *p) { rw((ctx *)p, ((ctx *)p)->addr, 8, 0); }
static void read4k(void *p) { rw((ctx *)p, ((ctx *)p)->addr, 4096, 0); }
static void write4k(void *p) { rw((ctx *)p, ((ctx *)p)->addr, 4096, 1); }

static size_t bulk_n;
static void bulk_read(void *p) { rw((ctx *)p, ((ctx *)p)->bulk, bulk_n, 0); }

/* READ_MANY u32 scattered over the bulk region, as bench.lua picks them:
 * one process_vm_readv per 1,024 of them (IOV_MAX), a ReadProcessMemory
 * each on Windows. */
#define READ_MANY 1000
static uintptr_t many_addr[READ_MANY];

static void read_many(void *p) {
  ctx *c = (ctx *)p;
  size_t i;
#ifdef _WIN32
  for (i = 0; i < READ_MANY; i++)
    if (!ReadProcessMemory(c->h, (LPCVOID)many_addr[i], c->buf + 4 * i, 4, NULL))
      die("ReadProcessMemory");
#else
  struct iovec local, remote[1024];
  for (i = 0; i < READ_MANY; i += 1024) {
    size_t k, n = READ_MANY - i < 1024 ? READ_MANY - i : 1024;
    for (k = 0; k < n; k++) {
      remote[k].iov_base = (void *)many_addr[i + k];
      remote[k].iov_len = 4;
    }
    local.iov_base = c->buf + 4 * i;
    local.iov_len = 4 * n;
    if (process_vm_readv((pid_t)c->pid, &local, 1, remote, n, 0) != (ssize_t)(4 * n))
      die("process_vm_readv");
  }
#endif
}

int main(int argc, char **argv) {
  ctx c;
  memset(&c, 0, sizeof c);
  if (argc == 3 && strcmp(argv[2], "walk") == 0) {
    c.pid = strtoul(argv[1], NULL, 0);
#ifdef _WIN32
    if ((c.h = OpenProcess(PROCESS_QUERY_INFORMATION, FALSE, (DWORD)c.pid)) == NULL)
      die("OpenProcess");
#endif
    measure("walk", walk, &c, 5);
    printf("regions %zu\n", c.n);
    return 0;
  }
  if (argc == 5 && strcmp(argv[2], "read") == 0) {
    c.pid = strtoul(argv[1], NULL, 0);
    c.bulk = (uintptr_t)strtoull(argv[3], NULL, 0);
    bulk_n = (size_t)strtoull(argv[4], NULL, 0);
    if ((c.buf = (char *)malloc(bulk_n)) == NULL)
      die("malloc");
    memset(c.buf, 1, bulk_n);
#ifdef _WIN32
    if ((c.h = OpenProcess(PROCESS_VM_READ, FALSE, (DWORD)c.pid)) == NULL)
      die("OpenProcess");
#endif
    measure("bulk_read", bulk_read, &c, 1);
    return 0;
  }
  if (argc != 6 || strcmp(argv[2], "calls") != 0) {
    fprintf(stderr, "usage: %s PID calls ADDRESS BULK_ADDRESS BULK_SIZE | PID walk | "
                    "PID read BULK_ADDRESS BULK_SIZE\n", argv[0]);
    return 2;
  }
  c.pid = strtoul(argv[1], NULL, 0);
  c.addr = (uintptr_t)strtoull(argv[3], NULL, 0);
  c.bulk = (uintptr_t)strtoull(argv[4], NULL, 0);
  c.bulk_size = (size_t)strtoull(argv[5], NULL, 0);
  c.buf = (char *)malloc(c.bulk_size);
  c.copy = (char *)malloc(c.bulk_size);
  if (c.buf == NULL || c.copy == NULL)
    die("malloc");
  memset(c.buf, 1, c.bulk_size); /* touch both, as a warm reader would have */
  memset(c.copy, 2, c.bulk_size);
#ifdef _WIN32
  c.h = OpenProcess(PROCESS_ALL_ACCESS, FALSE, (DWORD)c.pid);
  if (c.h == NULL)
    die("OpenProcess");
  measure("alloc_free", alloc_free, &c, 200);
  measure("protect", protect, &c, 1000);
#else
  find_vdso_syscall(&c);
  measure("ptrace_session", ptrace_session, &c, 100);
#endif
  measure("open_close", open_close, &c, 1000);
  measure("query", query, &c, 1000);
  measure("read8", read8, &c, 10000);
  measure("read4k", read4k, &c, 10000);
  measure("write4k", write4k, &c, 10000);
  for (bulk_n = 64u << 20; bulk_n <= c.bulk_size; bulk_n *= 4) {
    char name[32];
    snprintf(name, sizeof name, "bulk_read_%zu", bulk_n >> 20);
    measure(name, bulk_read, &c, 1);
  }
  {
    size_t i;
    for (i = 0; i < READ_MANY; i++)
      many_addr[i] = c.bulk + (uintptr_t)((i + 1) * 2654435761u % (c.bulk_size / 4)) * 4;
    measure("read_many", read_many, &c, 100);
  }
  measure("memcpy", local_memcpy, &c, 1);
  measure("naive_scan", naive_scan, &c, 1);
  return 0;
}
