/*
 * p:watch on Linux: perf_event_open(PERF_TYPE_BREAKPOINT) on every thread of
 * the target and every CPU, sample_period 1, each sample (instruction
 * pointer, thread) written by the kernel into its CPU's ring, mapped in the
 * host. The events are inherited by the threads created later (inherit,
 * inherit_thread): a thread that lives a microsecond is watched too. The
 * target never stops. A host thread drains the rings every few
 * milliseconds into a table of (ip, tid) -> count, so that a busy writer
 * does not overflow them between two w:hits().
 *
 * Closing disables every event first (PERF_EVENT_IOC_DISABLE returns once
 * the breakpoint is out of the CPU's debug registers, on the threads that
 * inherited it too), waits a scheduler tick, drains the rings and only then
 * closes the descriptors: see the README ("Watches") for the SIGTRAP this avoids.
 *
 * Where perf_event_open is refused (or RMEM_WATCH_METHOD=ptrace), the watch
 * is one debug register of a tracer process (watch_ptrace_linux.c) instead,
 * and the same table gathers its hits.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <linux/hw_breakpoint.h>
#include <linux/perf_event.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "watch.h"
#include "watch_ptrace_linux.h"

/* 16 data pages per CPU: about 2,000 samples, 20 ms of a thread hitting
 * 100,000 times a second, and the host drains every DRAIN_MS. */
#define RING_PAGES 16
#define DRAIN_MS 5

typedef struct event {
  unsigned long tid;
  int fd;
} event;

/* One per CPU: every event on that CPU writes there (PERF_EVENT_IOC_SET_OUTPUT). */
typedef struct ring {
  int fd; /* the event that owns the mapping */
  struct perf_event_mmap_page *map; /* NULL: no event on that CPU yet */
  uint64_t last[3]; /* the last sample taken: ip, pid and tid, event id */
} ring;

struct rw_watch {
  pid_t pid, owner; /* owner: the process that opened it (a fork's copy only frees) */
  uintptr_t addr;
  int size, kind, ncpus, inherit_thread;
  size_t page;
  event *events;
  size_t nevents, cap;
  ring *rings; /* ncpus */
  rw_hit *table; /* open addressing on (ip, tid); count 0 = empty */
  size_t tsize, tused;
  unsigned long long dropped;
  pthread_mutex_t lock;
  pthread_t drainer;
  int running, stop;
  rwp *tracer; /* the ptrace method: its tracer and register */
  int slot;
};

static int perf_open(struct perf_event_attr *a, pid_t tid, int cpu) {
  return (int)syscall(SYS_perf_event_open, a, tid, cpu, -1, PERF_FLAG_FD_CLOEXEC);
}

static size_t slot_of(const rw_watch *w, uintptr_t ip, unsigned long tid) {
  uint64_t h = ((uint64_t)ip ^ ((uint64_t)tid << 32)) * 0x9E3779B97F4A7C15ULL;
  return (size_t)(h >> 20) & (w->tsize - 1);
}

static int add_hit(rw_watch *w, uintptr_t ip, unsigned long tid, unsigned long long n) {
  size_t i;
  if ((w->tused + 1) * 2 > w->tsize) {
    size_t old = w->tsize, k;
    rw_hit *prev = w->table, *t = (rw_hit *)calloc(old ? old * 2 : 64, sizeof *t);
    if (t == NULL)
      return ENOMEM;
    w->table = t;
    w->tsize = old ? old * 2 : 64;
    w->tused = 0;
    for (k = 0; k < old; k++)
      if (prev[k].count)
        add_hit(w, prev[k].ip, prev[k].tid, prev[k].count);
    free(prev);
  }
  for (i = slot_of(w, ip, tid); w->table[i].count; i = (i + 1) & (w->tsize - 1))
    if (w->table[i].ip == ip && w->table[i].tid == tid) {
      w->table[i].count += n;
      return 0;
    }
  w->table[i].ip = ip;
  w->table[i].tid = tid;
  w->table[i].count = n;
  w->tused++;
  return 0;
}

/* Moves one ring's records into the table (called with the lock held).
 * A thread created while the watch opened may have an event of its own and
 * one inherited from its creator: one hit, two samples in a row on its CPU
 * with different event ids; the second is not counted. */
static void drain(rw_watch *w, ring *r) {
  struct perf_event_mmap_page *m = r->map;
  const unsigned char *data = (const unsigned char *)m + w->page;
  uint64_t size = (uint64_t)RING_PAGES * w->page;
  uint64_t head = __atomic_load_n(&m->data_head, __ATOMIC_ACQUIRE), tail = m->data_tail;
  while (tail < head) {
    struct perf_event_header h;
    uint64_t rec[4]; /* the largest record read here: header + 3 words */
    size_t k, len;
    for (k = 0; k < sizeof h; k++)
      ((unsigned char *)&h)[k] = data[(tail + k) % size];
    len = h.size < sizeof rec ? h.size : sizeof rec;
    for (k = 0; k < len; k++)
      ((unsigned char *)rec)[k] = data[(tail + k) % size];
    if (h.type == PERF_RECORD_SAMPLE && h.size >= 32) {
      /* ip, then pid and tid (u32 each), then the (parent) event's id; a
       * process the target forked inherits nothing where inherit_thread
       * exists, else its samples are left out here */
      int twin = rec[1] == r->last[0] && rec[2] == r->last[1] && rec[3] != r->last[2];
      if ((pid_t)(uint32_t)rec[2] == w->pid && !twin &&
          add_hit(w, (uintptr_t)rec[1], (unsigned long)(rec[2] >> 32), 1))
        w->dropped++;
      memcpy(r->last, rec + 1, sizeof r->last);
    } else if (h.type == PERF_RECORD_LOST && h.size >= 24) {
      w->dropped += rec[2];
    }
    if (h.size == 0)
      break;
    tail += h.size;
  }
  __atomic_store_n(&m->data_tail, head, __ATOMIC_RELEASE);
}

static void drain_all(rw_watch *w) {
  int c;
  for (c = 0; c < w->ncpus; c++)
    if (w->rings[c].map)
      drain(w, &w->rings[c]);
}

/* An event per CPU on thread tid, inherited by the threads it creates from
 * then on, each writing into its CPU's ring. */
static rb_err open_event(rw_watch *w, unsigned long tid) {
  struct perf_event_attr a;
  int cpu;
  memset(&a, 0, sizeof a);
  a.type = PERF_TYPE_BREAKPOINT;
  a.size = sizeof a;
  a.bp_type = w->kind == RW_EXECUTE ? HW_BREAKPOINT_X
              : w->kind == RW_WRITE ? HW_BREAKPOINT_W : HW_BREAKPOINT_RW;
  a.bp_addr = (uint64_t)w->addr;
  a.bp_len = w->kind == RW_EXECUTE ? sizeof(long) : (uint64_t)w->size;
  a.sample_period = 1;
  a.sample_type = PERF_SAMPLE_IP | PERF_SAMPLE_TID | PERF_SAMPLE_ID;
  a.exclude_kernel = 1; /* the kernel's own accesses (read() into the buffer) have no user IP */
  a.exclude_hv = 1;
  /* (the kernel maps no ring of an inherited event on every CPU: per CPU then) */
  a.inherit = 1;
  for (cpu = 0; cpu < w->ncpus; cpu++) {
    ring *r = &w->rings[cpu];
    event e;
    if (w->nevents == w->cap) {
      size_t cap = w->cap ? w->cap * 2 : 8;
      event *list = (event *)realloc(w->events, cap * sizeof *list);
      if (list == NULL)
        return ENOMEM;
      w->events = list;
      w->cap = cap;
    }
    a.inherit_thread = (unsigned)w->inherit_thread;
    e.tid = tid;
    e.fd = perf_open(&a, (pid_t)tid, cpu);
    if (e.fd < 0 && errno == EINVAL && w->inherit_thread) { /* before Linux 5.13 */
      w->inherit_thread = 0;
      cpu--;
      continue;
    }
    if (e.fd < 0 && errno == ENODEV) /* an offline CPU */
      continue;
    if (e.fd < 0)
      return (rb_err)errno;
    if (r->map == NULL) {
      void *m = mmap(NULL, (RING_PAGES + 1) * w->page, PROT_READ | PROT_WRITE, MAP_SHARED, e.fd, 0);
      if (m == MAP_FAILED) {
        rb_err err = (rb_err)errno;
        close(e.fd);
        return err;
      }
      r->map = (struct perf_event_mmap_page *)m;
      r->fd = e.fd;
    } else if (ioctl(e.fd, PERF_EVENT_IOC_SET_OUTPUT, r->fd)) {
      rb_err err = (rb_err)errno;
      close(e.fd);
      return err;
    }
    w->events[w->nevents++] = e;
  }
  return 0;
}

/* Opens events on the threads that have none. An event stays open until
 * the watch closes, even once its thread ended: closing it would end the
 * events that the threads it created inherited. */
static rb_err rescan(rw_watch *w) {
  char path[64];
  DIR *d;
  struct dirent *de;
  size_t i;
  rb_err err = 0;
  snprintf(path, sizeof path, "/proc/%d/task", (int)w->pid);
  if ((d = opendir(path)) == NULL)
    return errno == ENOENT || errno == ENOTDIR ? ESRCH : (rb_err)errno;
  while ((de = readdir(d)) != NULL) {
    unsigned long tid = strtoul(de->d_name, NULL, 10);
    int known = 0;
    if (tid == 0)
      continue;
    for (i = 0; i < w->nevents && !known; i++)
      known = w->events[i].tid == tid;
    /* a thread that ended between readdir and the open is no failure */
    if (!known && (err = open_event(w, tid)) == ESRCH)
      err = 0;
    if (err)
      break;
  }
  closedir(d);
  return err;
}

static void *drainer(void *arg) {
  rw_watch *w = (rw_watch *)arg;
  for (;;) {
    pthread_mutex_lock(&w->lock);
    if (w->stop) {
      pthread_mutex_unlock(&w->lock);
      return NULL;
    }
    drain_all(w);
    pthread_mutex_unlock(&w->lock);
    rb_sleep(DRAIN_MS);
  }
}

/* perf_event_open refused for the user or the kernel (not a thread that
 * ended or a register that is busy): the ptrace method may still work */
static int perf_refused(rb_err err) {
  return err == EACCES || err == EPERM || err == ENOENT || err == EOPNOTSUPP || err == ENOSYS;
}

static void add_taken(void *ctx, uintptr_t ip, unsigned long tid, unsigned long long n) {
  rw_watch *w = (rw_watch *)ctx;
  if (add_hit(w, ip, tid, n))
    w->dropped += n;
}

static rb_err open_ptrace(rw_watch *w, rw_watch **out) {
  rb_err err = rwp_arm(w->pid, w->addr, w->size, w->kind, &w->tracer, &w->slot);
  if (err) {
    rw_close(w);
    return err;
  }
  *out = w;
  return 0;
}

/* Closes the events and unmaps the rings (after the drains). */
static void close_events(rw_watch *w) {
  size_t i;
  int c;
  for (c = 0; w->rings && c < w->ncpus; c++)
    if (w->rings[c].map) {
      munmap(w->rings[c].map, (RING_PAGES + 1) * w->page);
      w->rings[c].map = NULL;
    }
  for (i = 0; i < w->nevents; i++)
    close(w->events[i].fd);
  w->nevents = 0;
}

rb_err rw_open(rb_proc *p, uintptr_t addr, int size, int kind, rw_watch **out) {
  rw_watch *w = (rw_watch *)calloc(1, sizeof *w);
  const char *method = getenv("RMEM_WATCH_METHOD");
  long ncpus = sysconf(_SC_NPROCESSORS_CONF);
  rb_err err;
  size_t before;
  *out = NULL;
  if (w == NULL)
    return ENOMEM;
  w->pid = (pid_t)rb_pid(p);
  w->owner = getpid();
  w->addr = addr;
  w->size = size;
  w->kind = kind;
  w->page = (size_t)sysconf(_SC_PAGESIZE);
  w->ncpus = ncpus > 0 ? (int)ncpus : 1;
  w->inherit_thread = 1;
  pthread_mutex_init(&w->lock, NULL);
  if ((w->rings = (ring *)calloc((size_t)w->ncpus, sizeof *w->rings)) == NULL) {
    rw_close(w);
    return ENOMEM;
  }
  if (method && strcmp(method, "ptrace") == 0)
    return open_ptrace(w, out);
  /* until no thread is new: one created while the first scan ran, by a
   * thread that had no event yet, is caught */
  do {
    before = w->nevents;
    err = rescan(w);
  } while (!err && w->nevents != before);
  if (!err && w->nevents == 0)
    err = ESRCH;
  if (perf_refused(err) && !(method && strcmp(method, "perf") == 0)) {
    close_events(w);
    return open_ptrace(w, out);
  }
  if (!err && (err = (rb_err)pthread_create(&w->drainer, NULL, drainer, w)) == 0)
    w->running = 1;
  if (err) {
    rw_close(w);
    return err;
  }
  *out = w;
  return 0;
}

rb_err rw_poll(rw_watch *w, rw_hit *list, size_t cap, size_t *n, unsigned long long *dropped) {
  size_t i, k = 0;
  unsigned long long lost = 0; /* by the tracer */
  rb_err err = 0;
  pthread_mutex_lock(&w->lock);
  if (w->tracer) {
    lost = rwp_take(w->tracer, w->slot, add_taken, w);
    /* (the hits made before, if any, are given first) */
    if (w->tused == 0 && rwp_replaced(w->tracer))
      err = ESRCH;
  } else {
    drain_all(w);
  }
  *n = w->tused;
  if (w->tused <= cap) {
    for (i = 0; i < w->tsize; i++)
      if (w->table[i].count)
        list[k++] = w->table[i];
    if (w->table != NULL)
      memset(w->table, 0, w->tsize * sizeof *w->table);
    w->tused = 0;
  }
  *dropped = w->dropped + lost;
  pthread_mutex_unlock(&w->lock);
  return err;
}

void rw_close(rw_watch *w) {
  size_t i;
  int owned;
  if (w == NULL)
    return;
  /* in a copy in a process the host forked, the events, the drainer and
   * the tracer are the host's (and its lock may have been held at the
   * fork): only the copies are freed (rwp_disarm does no more there) */
  owned = w->owner == getpid();
  if (owned && w->running) {
    pthread_mutex_lock(&w->lock);
    w->stop = 1;
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->drainer, NULL);
  }
  if (w->tracer)
    rwp_disarm(w->tracer, w->slot);
  /* out of the debug registers of every thread first (the threads that
   * inherited an event too), while the events still exist to claim any
   * debug exception already on its way */
  if (owned && w->nevents) {
    for (i = 0; i < w->nevents; i++)
      ioctl(w->events[i].fd, PERF_EVENT_IOC_DISABLE, 0);
    rb_sleep(DRAIN_MS);
    drain_all(w);
  }
  close_events(w);
  free(w->events);
  free(w->rings);
  free(w->table);
  if (owned)
    pthread_mutex_destroy(&w->lock);
  free(w);
}

const char *rw_method(const rw_watch *w) {
  return w->tracer ? "ptrace" : "perf";
}

rb_err rb_debug_registers(rb_proc *p, const rb_dr_state *want, const unsigned long *skip,
                          size_t nskip, unsigned long *seen, size_t cap, size_t *threads) {
  (void)p, (void)want, (void)skip, (void)nskip, (void)seen, (void)cap;
  *threads = 0;
  return ENOSYS;
}

/* Windows' handler ring (watch_win.c): Linux watches have the kernel's. */
rb_err rw_ring_new(uintptr_t data, uint64_t tail, uint64_t nonce, rw_ring **out) {
  (void)data, (void)tail, (void)nonce;
  *out = NULL;
  return ENOSYS;
}

rb_err rw_ring_start(rw_ring *r, const rb_proc *p) {
  (void)r, (void)p;
  return ENOSYS;
}

void rw_ring_stop(rw_ring *r) { (void)r; }

rb_err rw_ring_take(rw_ring *r, rb_proc *p, rw_ring_hit *hits, size_t hcap, size_t *nhits,
                    rw_ring_thread *threads, size_t tcap, size_t *nthreads,
                    unsigned long long dropped[4], unsigned long *dropped_age) {
  (void)r, (void)p, (void)hits, (void)hcap, (void)threads, (void)tcap, (void)dropped;
  *nhits = *nthreads = 0;
  *dropped_age = 0;
  return ENOSYS;
}

void rw_ring_free(rw_ring *r) { (void)r; }
