/*
 * rb_patch_code for Windows: every thread of the target suspended
 * (SuspendThread), instruction pointers read and moved with
 * Get/SetThreadContext (the WOW64 forms for a 32-bit target), the bytes
 * written with the page made writable for the write only, then resumed.
 */
#include <windows.h>
#include <tlhelp32.h>
#include <stdlib.h>

#include "backend.h"

typedef struct stopset {
  HANDLE *list;
  DWORD *ids;
  size_t n, cap;
} stopset;

static int has(const stopset *s, DWORD id) {
  size_t i;
  for (i = 0; i < s->n; i++)
    if (s->ids[i] == id)
      return 1;
  return 0;
}

static rb_err add(stopset *s, DWORD id) {
  HANDLE t;
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 16;
    HANDLE *list = (HANDLE *)realloc(s->list, cap * sizeof *list);
    DWORD *ids;
    if (list == NULL)
      return ERROR_NOT_ENOUGH_MEMORY;
    s->list = list;
    ids = (DWORD *)realloc(s->ids, cap * sizeof *ids);
    if (ids == NULL)
      return ERROR_NOT_ENOUGH_MEMORY;
    s->ids = ids;
    s->cap = cap;
  }
  t = OpenThread(THREAD_SUSPEND_RESUME | THREAD_GET_CONTEXT | THREAD_SET_CONTEXT |
                     THREAD_QUERY_INFORMATION, FALSE, id);
  if (t == NULL)
    return 0; /* exited meanwhile */
  if (SuspendThread(t) == (DWORD)-1) {
    CloseHandle(t);
    return 0;
  }
  s->list[s->n] = t;
  s->ids[s->n] = id;
  s->n++;
  return 0;
}

/* NtGetNextThread walks one process's threads (Vista and later, Wine):
 * a toolhelp snapshot lists every thread of the system, ten times slower. */
typedef LONG(NTAPI *next_thread_fn)(HANDLE, HANDLE, ACCESS_MASK, ULONG, ULONG, PHANDLE);

static next_thread_fn next_thread(void) {
  HMODULE nt = GetModuleHandleW(L"ntdll.dll");
  return nt ? (next_thread_fn)(void (*)(void))GetProcAddress(nt, "NtGetNextThread") : NULL;
}

/* stop_all with NtGetNextThread; ERROR_NOT_SUPPORTED where it is missing. */
static rb_err stop_all_fast(DWORD pid, stopset *s) {
  next_thread_fn next = next_thread();
  HANDLE proc;
  int fresh = 1;
  if (next == NULL || (proc = OpenProcess(PROCESS_QUERY_INFORMATION, FALSE, pid)) == NULL)
    return ERROR_NOT_SUPPORTED;
  while (fresh) {
    HANDLE t = NULL, n;
    fresh = 0;
    while (next(proc, t, THREAD_QUERY_LIMITED_INFORMATION, 0, 0, &n) >= 0) {
      DWORD id = GetThreadId(n);
      rb_err e = 0;
      if (t)
        CloseHandle(t);
      t = n;
      if (id && !has(s, id)) {
        fresh = 1;
        e = add(s, id);
      }
      if (e) {
        CloseHandle(t);
        CloseHandle(proc);
        return e;
      }
    }
    if (t)
      CloseHandle(t);
  }
  CloseHandle(proc);
  return s->n ? 0 : ERROR_INVALID_PARAMETER;
}

/* Suspends every thread, also those started while it works: it takes
 * snapshots until one shows no new thread. */
static rb_err stop_all(DWORD pid, stopset *s) {
  int fresh = 1;
  rb_err e = stop_all_fast(pid, s);
  if (e != ERROR_NOT_SUPPORTED)
    return e;
  while (fresh) {
    THREADENTRY32 te;
    HANDLE snap = CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0);
    rb_err e = 0;
    BOOL more;
    if (snap == INVALID_HANDLE_VALUE)
      return GetLastError();
    fresh = 0;
    te.dwSize = sizeof te;
    for (more = Thread32First(snap, &te); more && !e; more = Thread32Next(snap, &te))
      if (te.th32OwnerProcessID == pid && !has(s, te.th32ThreadID)) {
        fresh = 1;
        e = add(s, te.th32ThreadID);
      }
    CloseHandle(snap);
    if (e)
      return e;
  }
  return s->n ? 0 : ERROR_INVALID_PARAMETER;
}

static void resume_all(stopset *s) {
  size_t i;
  for (i = 0; i < s->n; i++) {
    ResumeThread(s->list[i]);
    CloseHandle(s->list[i]);
  }
  free(s->list);
  free(s->ids);
}

/* A thread's instruction pointer, read (set = 0) or written. */
static int thread_ip(HANDLE t, int is32, uintptr_t *ip, int set) {
#ifdef _WIN64
  if (is32) {
    WOW64_CONTEXT c;
    c.ContextFlags = WOW64_CONTEXT_CONTROL;
    if (!Wow64GetThreadContext(t, &c))
      return 0;
    if (!set) {
      *ip = c.Eip;
      return 1;
    }
    c.Eip = (DWORD)*ip;
    return Wow64SetThreadContext(t, &c) != 0;
  } else {
    CONTEXT c;
    c.ContextFlags = CONTEXT_CONTROL;
    if (!GetThreadContext(t, &c))
      return 0;
    if (!set) {
      *ip = (uintptr_t)c.Rip;
      return 1;
    }
    c.Rip = *ip;
    return SetThreadContext(t, &c) != 0;
  }
#else
  CONTEXT c;
  (void)is32;
  c.ContextFlags = CONTEXT_CONTROL;
  if (!GetThreadContext(t, &c))
    return 0;
  if (!set) {
    *ip = c.Eip;
    return 1;
  }
  c.Eip = (DWORD)*ip;
  return SetThreadContext(t, &c) != 0;
#endif
}

static rb_err write_code(rb_proc *p, const rb_patch *patch) {
  unsigned long old, ignored;
  size_t done;
  rb_err e = rb_protect(p, patch->addr, patch->n, PAGE_EXECUTE_READWRITE, &old);
  if (e)
    return e;
  e = rb_write(p, patch->addr, patch->bytes, patch->n, &done);
  rb_protect(p, patch->addr, patch->n, old, &ignored);
  return e;
}

rb_err rb_patch_code(rb_proc *p, const rb_patch *patch, size_t *moved) {
  DWORD pid = (DWORD)rb_pid(p);
  int is32 = rb_bits(p) == 32;
  stopset s = {NULL, NULL, 0, 0};
  uintptr_t *ips = NULL;
  rb_err e;
  size_t i, k;
  *moved = 0;
  if (pid == GetCurrentProcessId())
    return ERROR_INVALID_PARAMETER; /* it would suspend the thread doing it */
  if ((e = stop_all(pid, &s)))
    goto done;
  if ((ips = (uintptr_t *)calloc(s.n, sizeof *ips)) == NULL) {
    e = ERROR_NOT_ENOUGH_MEMORY;
    goto done;
  }
  for (i = 0; i < s.n; i++) {
    if (!thread_ip(s.list[i], is32, &ips[i], 0)) {
      ips[i] = 0;
      continue;
    }
    if (ips[i] >= patch->busy_lo && ips[i] < patch->busy_hi) {
      e = ERROR_BUSY;
      goto done;
    }
  }
  if (patch->counter) {
    DWORD v = 1;
    size_t done;
    if (rb_read(p, patch->counter, &v, sizeof v, &done) || v != 0) {
      e = ERROR_BUSY;
      goto done;
    }
  }
  if (patch->n && (e = write_code(p, patch)))
    goto done;
  for (i = 0; i < s.n; i++)
    for (k = 0; ips[i] && k < patch->nmoves; k++)
      if (ips[i] == patch->moves[k].from) {
        uintptr_t to = patch->moves[k].to;
        if (thread_ip(s.list[i], is32, &to, 1))
          (*moved)++;
        break;
      }
done:
  free(ips);
  resume_all(&s);
  return e;
}
