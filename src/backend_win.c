/*
 * The Windows backend: the Win32 memory and process calls behind backend.h.
 * Plain C99 that MinGW-w64 and MSVC both compile; depends on kernel32 and
 * advapi32 (for the debug privilege) only.
 */
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#include <tlhelp32.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "watch.h"

struct rb_proc {
  HANDLE h;
  DWORD pid;
  int is_self; /* h is the pseudo-handle: never CloseHandle it */
};

const char rb_platform[] = "windows";

/* The error of the call that just failed; a failure without a code still
 * has to read as a failure. */
static rb_err last_error(void) {
  DWORD e = GetLastError();
  return e ? (rb_err)e : (rb_err)ERROR_GEN_FAILURE;
}

static SYSTEM_INFO sysinfo(void) {
  SYSTEM_INFO si;
  GetSystemInfo(&si);
  return si;
}

size_t rb_page_size(void) { return (size_t)sysinfo().dwPageSize; }
size_t rb_granularity(void) { return (size_t)sysinfo().dwAllocationGranularity; }
uintptr_t rb_user_end(void) {
  return (uintptr_t)sysinfo().lpMaximumApplicationAddress + 1;
}

rb_err rb_open(unsigned long pid, unsigned long access, rb_proc **out) {
  rb_proc *p = (rb_proc *)malloc(sizeof *p);
  if (p == NULL)
    return ERROR_NOT_ENOUGH_MEMORY;
  p->h = OpenProcess((DWORD)access, FALSE, (DWORD)pid);
  if (p->h == NULL) {
    rb_err e = last_error();
    free(p);
    return e;
  }
  p->pid = (DWORD)pid;
  p->is_self = 0;
  *out = p;
  return 0;
}

rb_err rb_open_self(rb_proc **out) {
  rb_proc *p = (rb_proc *)malloc(sizeof *p);
  if (p == NULL)
    return ERROR_NOT_ENOUGH_MEMORY;
  p->h = GetCurrentProcess();
  p->pid = GetCurrentProcessId();
  p->is_self = 1;
  *out = p;
  return 0;
}

rb_err rb_dup(const rb_proc *p, rb_proc **out) {
  rb_proc *d = (rb_proc *)malloc(sizeof *d);
  if (d == NULL)
    return ERROR_NOT_ENOUGH_MEMORY;
  *d = *p;
  if (!p->is_self && !DuplicateHandle(GetCurrentProcess(), p->h, GetCurrentProcess(), &d->h, 0,
                                      FALSE, DUPLICATE_SAME_ACCESS)) {
    rb_err e = last_error();
    free(d);
    return e;
  }
  *out = d;
  return 0;
}

void rb_close(rb_proc *p) {
  if (!p->is_self)
    CloseHandle(p->h);
  free(p);
}

unsigned long rb_pid(const rb_proc *p) { return p->pid; }

/* A WOW64 process has 64-bit memory above 4 GiB too: no limit here. */
uintptr_t rb_addr_end(const rb_proc *p) {
  (void)p;
  return 0;
}

/* A Windows process never changes its program. */
int rb_replaced(const rb_proc *p) {
  (void)p;
  return 0;
}

int rb_bits(const rb_proc *p) {
  BOOL target_wow = FALSE;
  if (!IsWow64Process(p->h, &target_wow))
    return (int)sizeof(void *) * 8; /* no query right: assume our own */
#if defined(_WIN64)
  return target_wow ? 32 : 64;
#else
  {
    BOOL self_wow = FALSE;
    /* a 32-bit host on 64-bit Windows runs under WOW64 itself */
    IsWow64Process(GetCurrentProcess(), &self_wow);
    return self_wow && !target_wow ? 64 : 32;
  }
#endif
}

static void to_utf8(const WCHAR *w, char *buf, size_t n) {
  if (n == 0)
    return;
  if (WideCharToMultiByte(CP_UTF8, 0, w, -1, buf, (int)n, NULL, NULL) == 0)
    buf[0] = '\0';
}

static const WCHAR *base_name(const WCHAR *path) {
  const WCHAR *s = path, *base = path;
  for (; *s; s++)
    if (*s == L'\\' || *s == L'/')
      base = s + 1;
  return base;
}

void rb_name(const rb_proc *p, char *buf, size_t n) {
  WCHAR path[MAX_PATH * 2];
  DWORD len = (DWORD)(sizeof path / sizeof path[0]);
  if (n == 0)
    return;
  buf[0] = '\0';
  if (QueryFullProcessImageNameW(p->h, 0, path, &len))
    to_utf8(base_name(path), buf, n);
}

rb_err rb_status(const rb_proc *p, int *alive, unsigned long *code, int *known) {
  DWORD c;
  if (!GetExitCodeProcess(p->h, &c))
    return last_error();
  /* STILL_ACTIVE (259) is also a possible exit code: ask the handle. */
  *alive = c == STILL_ACTIVE && WaitForSingleObject(p->h, 0) != WAIT_OBJECT_0;
  *code = c;
  *known = 1;
  return 0;
}

int rb_exited(const rb_proc *p) {
  int alive = 1, known;
  unsigned long code;
  return rb_status(p, &alive, &code, &known) == 0 && !alive;
}

rb_err rb_alloc(rb_proc *p, uintptr_t addr, size_t size, unsigned long type,
                unsigned long protect, uintptr_t *out) {
  LPVOID r = VirtualAllocEx(p->h, (LPVOID)addr, (SIZE_T)size, (DWORD)type,
                            (DWORD)protect);
  if (r == NULL)
    return last_error();
  *out = (uintptr_t)r;
  return 0;
}

rb_err rb_free(rb_proc *p, uintptr_t addr, size_t size, unsigned long type) {
  if (!VirtualFreeEx(p->h, (LPVOID)addr, (SIZE_T)size, (DWORD)type))
    return last_error();
  return 0;
}

rb_err rb_protect(rb_proc *p, uintptr_t addr, size_t size,
                  unsigned long protect, unsigned long *old) {
  DWORD o = 0;
  if (!VirtualProtectEx(p->h, (LPVOID)addr, (SIZE_T)size, (DWORD)protect, &o))
    return last_error();
  *old = o;
  return 0;
}

rb_err rb_query(rb_proc *p, uintptr_t addr, rb_region *info) {
  MEMORY_BASIC_INFORMATION m;
  if (VirtualQueryEx(p->h, (LPCVOID)addr, &m, sizeof m) == 0)
    return last_error();
  info->base = (uintptr_t)m.BaseAddress;
  info->size = (size_t)m.RegionSize;
  info->allocation_base = (uintptr_t)m.AllocationBase;
  info->allocation_protect = m.AllocationProtect;
  info->state = m.State;
  info->protect = m.Protect;
  info->type = m.Type;
  return 0;
}

void rb_large_buffer(void *buf, size_t n) {
  (void)buf;
  (void)n;
}

rb_err rb_regions(rb_proc *p, uintptr_t addr, rb_region *list, size_t cap, size_t *count) {
  size_t n = 0;
  rb_err e = 0;
  while (n < cap && addr < rb_user_end()) {
    uintptr_t next;
    if ((e = rb_query(p, addr, &list[n])))
      break; /* past the last region: the list ends here */
    next = list[n].base + list[n].size;
    n++;
    if (next <= addr)
      break;
    addr = next;
  }
  *count = n;
  return n ? 0 : e;
}

rb_err rb_read(rb_proc *p, uintptr_t addr, void *buf, size_t n, size_t *done) {
  SIZE_T got = 0;
  BOOL ok = ReadProcessMemory(p->h, (LPCVOID)addr, buf, (SIZE_T)n, &got);
  rb_err e = ok ? 0 : last_error();
  *done = (size_t)got;
  return e;
}

rb_err rb_write(rb_proc *p, uintptr_t addr, const void *buf, size_t n,
                size_t *done) {
  SIZE_T put = 0;
  BOOL ok = WriteProcessMemory(p->h, (LPVOID)addr, buf, (SIZE_T)n, &put);
  rb_err e = ok ? 0 : last_error();
  *done = (size_t)put;
  return e;
}

/* ReadProcessMemory has no batched form: one call a piece. A failure is
 * the process's own once it has exited. */
rb_err rb_read_pieces(rb_proc *p, rb_piece *pieces, size_t count, void *buf) {
  char *at = (char *)buf;
  rb_err first = 0;
  size_t i;
  for (i = 0; i < count; i++) {
    SIZE_T got = 0;
    pieces[i].ok = pieces[i].n == 0 ||
                   (ReadProcessMemory(p->h, (LPCVOID)pieces[i].addr, at, (SIZE_T)pieces[i].n, &got) &&
                    got == (SIZE_T)pieces[i].n);
    if (!pieces[i].ok && !first)
      first = last_error();
    at += pieces[i].n;
  }
  return first && WaitForSingleObject(p->h, 0) == WAIT_OBJECT_0 ? first : 0;
}

rb_err rb_processes(rb_procinfo *list, size_t cap, size_t *count) {
  PROCESSENTRY32W pe;
  size_t n = 0;
  HANDLE snap = CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0);
  if (snap == INVALID_HANDLE_VALUE)
    return last_error();
  pe.dwSize = sizeof pe;
  if (Process32FirstW(snap, &pe)) {
    do {
      if (n < cap) {
        list[n].pid = pe.th32ProcessID;
        list[n].parent_pid = pe.th32ParentProcessID;
        to_utf8(base_name(pe.szExeFile), list[n].name, sizeof list[n].name);
      }
      n++;
    } while (Process32NextW(snap, &pe));
  }
  CloseHandle(snap);
  *count = n;
  return 0;
}

rb_err rb_modules(rb_proc *p, rb_module *list, size_t cap, size_t *count) {
  MODULEENTRY32W me;
  size_t n = 0;
  HANDLE snap;
  int tries = 0;
  /* the snapshot fails with ERROR_BAD_LENGTH while the target loads or
   * unloads a module: try again */
  do
    snap = CreateToolhelp32Snapshot(TH32CS_SNAPMODULE | TH32CS_SNAPMODULE32, p->pid);
  while (snap == INVALID_HANDLE_VALUE && GetLastError() == ERROR_BAD_LENGTH && ++tries < 10);
  if (snap == INVALID_HANDLE_VALUE)
    return last_error();
  me.dwSize = sizeof me;
  if (Module32FirstW(snap, &me)) {
    do {
      if (n < cap) {
        list[n].base = (uintptr_t)me.modBaseAddr;
        list[n].size = (size_t)me.modBaseSize;
        to_utf8(me.szModule, list[n].name, sizeof list[n].name);
        to_utf8(me.szExePath, list[n].path, sizeof list[n].path);
      }
      n++;
    } while (Module32NextW(snap, &me));
  }
  CloseHandle(snap);
  *count = n;
  return 0;
}

/* ntdll's exports that kernel32 does not wrap, looked up when needed. */
static FARPROC ntdll_proc(const char *name) {
  HMODULE ntdll = GetModuleHandleA("ntdll.dll");
  return ntdll ? GetProcAddress(ntdll, name) : NULL;
}

const char *rb_wine_version(void) {
  typedef const char *(*version_fn)(void);
  version_fn f = (version_fn)(void (*)(void))ntdll_proc("wine_get_version");
  return f ? f() : NULL;
}

/* NtQueryInformationProcess / NtQueryInformationThread (the same shape). */
typedef LONG(NTAPI *query_fn)(HANDLE, int, PVOID, ULONG, PULONG);
typedef ULONG(NTAPI *status_fn)(LONG);

/* The information class 0 (ProcessBasicInformation /
 * ThreadBasicInformation) of h: the PEB's or the TEB's address. */
static rb_err basic_info(HANDLE h, const char *fn_name, uintptr_t *out) {
  /* PROCESS_BASIC_INFORMATION and THREAD_BASIC_INFORMATION both hold a
   * status, then the address wanted, then fields not needed here */
  struct {
    LONG status;
    PVOID address;
    ULONG_PTR rest[4];
  } info;
  query_fn query = (query_fn)(void (*)(void))ntdll_proc(fn_name);
  status_fn to_error = (status_fn)(void (*)(void))ntdll_proc("RtlNtStatusToDosError");
  LONG st;
  if (query == NULL || to_error == NULL)
    return ERROR_CALL_NOT_IMPLEMENTED;
  st = query(h, 0, &info, (ULONG)sizeof info, NULL);
  if (st < 0)
    return (rb_err)to_error(st);
  *out = (uintptr_t)info.address;
  return 0;
}

rb_err rb_peb(rb_proc *p, uintptr_t *out) {
  return basic_info(p->h, "NtQueryInformationProcess", out);
}

rb_err rb_tebs(rb_proc *p, uintptr_t *list, size_t cap, size_t *count) {
  THREADENTRY32 te;
  size_t n = 0;
  HANDLE snap = CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0);
  if (snap == INVALID_HANDLE_VALUE)
    return last_error();
  te.dwSize = sizeof te;
  if (Thread32First(snap, &te)) {
    do {
      HANDLE t;
      uintptr_t teb;
      if (te.th32OwnerProcessID != p->pid)
        continue;
      /* a thread that cannot be opened or queried is left out */
      t = OpenThread(THREAD_QUERY_INFORMATION, FALSE, te.th32ThreadID);
      if (t == NULL)
        continue;
      if (basic_info(t, "NtQueryInformationThread", &teb) == 0) {
        if (n < cap)
          list[n] = teb;
        n++;
      }
      CloseHandle(t);
    } while (Thread32Next(snap, &te));
  }
  CloseHandle(snap);
  *count = n;
  return 0;
}

rb_err rb_call(rb_proc *p, uintptr_t fn, uintptr_t arg, unsigned long timeout_ms,
               uintptr_t *result) {
  DWORD code = 0, w;
  rb_err e = 0;
  HANDLE t = CreateRemoteThread(p->h, NULL, 0, (LPTHREAD_START_ROUTINE)fn, (LPVOID)arg, 0, NULL);
  if (t == NULL)
    return last_error();
  w = WaitForSingleObject(t, (DWORD)timeout_ms);
  if (w == WAIT_TIMEOUT) {
    /* Abandon the call as Linux does, so the caller may free what fn uses. */
    e = ERROR_TIMEOUT;
    if (TerminateThread(t, ERROR_TIMEOUT))
      WaitForSingleObject(t, 5000);
  } else if (w != WAIT_OBJECT_0 || !GetExitCodeThread(t, &code))
    e = last_error();
  CloseHandle(t);
  *result = (uintptr_t)code;
  return e;
}

rb_err rb_enable_debug_privilege(void) {
  HANDLE token;
  TOKEN_PRIVILEGES tp;
  rb_err e = 0;
  if (!OpenProcessToken(GetCurrentProcess(),
                        TOKEN_ADJUST_PRIVILEGES | TOKEN_QUERY, &token))
    return last_error();
  tp.PrivilegeCount = 1;
  tp.Privileges[0].Attributes = SE_PRIVILEGE_ENABLED;
  if (!LookupPrivilegeValueW(NULL, L"SeDebugPrivilege", &tp.Privileges[0].Luid) ||
      !AdjustTokenPrivileges(token, FALSE, &tp, sizeof tp, NULL, NULL))
    e = last_error();
  else if (GetLastError() == ERROR_NOT_ALL_ASSIGNED) /* succeeded, not granted */
    e = ERROR_NOT_ALL_ASSIGNED;
  CloseHandle(token);
  return e;
}

void rb_message(rb_err code, char *buf, size_t n) {
  WCHAR w[512];
  DWORD len = FormatMessageW(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
                             NULL, (DWORD)code, 0, w, (DWORD)(sizeof w / sizeof w[0]), NULL);
  if (n == 0)
    return;
  while (len > 0 && (w[len - 1] == L'\r' || w[len - 1] == L'\n' || w[len - 1] == L' '))
    len--;
  w[len] = L'\0';
  if (len == 0) {
    snprintf(buf, n, "error %lu", code);
    return;
  }
  to_utf8(w, buf, n);
}

const rb_error_entry rb_error_names[] = {
  {ERROR_INVALID_FUNCTION, "ERROR_INVALID_FUNCTION"},
  {ERROR_FILE_NOT_FOUND, "ERROR_FILE_NOT_FOUND"},
  {ERROR_PATH_NOT_FOUND, "ERROR_PATH_NOT_FOUND"},
  {ERROR_ACCESS_DENIED, "ERROR_ACCESS_DENIED"},
  {ERROR_INVALID_HANDLE, "ERROR_INVALID_HANDLE"},
  {ERROR_NOT_ENOUGH_MEMORY, "ERROR_NOT_ENOUGH_MEMORY"},
  {ERROR_INVALID_ACCESS, "ERROR_INVALID_ACCESS"},
  {ERROR_OUTOFMEMORY, "ERROR_OUTOFMEMORY"},
  {ERROR_GEN_FAILURE, "ERROR_GEN_FAILURE"},
  {ERROR_NOT_SUPPORTED, "ERROR_NOT_SUPPORTED"},
  {ERROR_INVALID_PARAMETER, "ERROR_INVALID_PARAMETER"},
  {ERROR_INSUFFICIENT_BUFFER, "ERROR_INSUFFICIENT_BUFFER"},
  {ERROR_ALREADY_EXISTS, "ERROR_ALREADY_EXISTS"},
  {ERROR_PARTIAL_COPY, "ERROR_PARTIAL_COPY"},
  {ERROR_BAD_LENGTH, "ERROR_BAD_LENGTH"},
  {ERROR_MOD_NOT_FOUND, "ERROR_MOD_NOT_FOUND"},
  {ERROR_PROC_NOT_FOUND, "ERROR_PROC_NOT_FOUND"},
  {ERROR_BAD_EXE_FORMAT, "ERROR_BAD_EXE_FORMAT"},
  {ERROR_TIMEOUT, "ERROR_TIMEOUT"},
  {ERROR_INVALID_ADDRESS, "ERROR_INVALID_ADDRESS"},
  {ERROR_COMMITMENT_MINIMUM, "ERROR_COMMITMENT_MINIMUM"},
  {ERROR_NOACCESS, "ERROR_NOACCESS"},
  {ERROR_DLL_INIT_FAILED, "ERROR_DLL_INIT_FAILED"},
  {ERROR_INVALID_FLAGS, "ERROR_INVALID_FLAGS"},
  {ERROR_PROCESS_ABORTED, "ERROR_PROCESS_ABORTED"},
  {ERROR_NOT_ALL_ASSIGNED, "ERROR_NOT_ALL_ASSIGNED"},
  {ERROR_PRIVILEGE_NOT_HELD, "ERROR_PRIVILEGE_NOT_HELD"},
  {ERROR_INTERNAL_ERROR, "ERROR_INTERNAL_ERROR"},
  {ERROR_NO_SYSTEM_RESOURCES, "ERROR_NO_SYSTEM_RESOURCES"},
  {ERROR_WORKING_SET_QUOTA, "ERROR_WORKING_SET_QUOTA"},
  {ERROR_COMMITMENT_LIMIT, "ERROR_COMMITMENT_LIMIT"},
  {0, NULL}
};

/* ---- hardware watches (watch.h) -------------------------------------------- */

/* One thread: rmem's debug registers set to the state wanted (the Dr0-3 of
 * the slots in `slots`, DR7's bits under `mask` from `dr7`) unless they are
 * already. Suspended while its context is read and changed, as
 * Get/SetThreadContext require of another thread. Under Wine 8 suspending a
 * thread that is inside a debug exception deadlocks it (README, "Watches"):
 * the caller skips those threads. */
static rb_err arm_thread(DWORD tid, const rb_dr_state *want) {
  DWORD64 *dr;
  DWORD64 dr7;
  CONTEXT c;
  rb_err err = 0;
  int s, change;
  HANDLE t = OpenThread(THREAD_GET_CONTEXT | THREAD_SET_CONTEXT | THREAD_SUSPEND_RESUME, FALSE, tid);
  if (t == NULL)
    return GetLastError();
  memset(&c, 0, sizeof c);
  c.ContextFlags = CONTEXT_DEBUG_REGISTERS;
  if (SuspendThread(t) == (DWORD)-1) {
    err = GetLastError();
  } else {
    if (!GetThreadContext(t, &c)) {
      err = GetLastError();
    } else {
      dr = &c.Dr0;
      dr7 = (c.Dr7 & ~(DWORD64)want->mask) | (DWORD64)want->dr7;
      change = dr7 != c.Dr7;
      for (s = 0; s < 4; s++)
        if ((want->slots & 1u << s) != 0 && dr[s] != (DWORD64)want->addr[s]) {
          dr[s] = (DWORD64)want->addr[s];
          change = 1;
        }
      if (change) {
        c.Dr7 = dr7;
        c.Dr6 = 0;
        c.ContextFlags = CONTEXT_DEBUG_REGISTERS;
        if (!SetThreadContext(t, &c))
          err = GetLastError();
      }
    }
    ResumeThread(t);
  }
  CloseHandle(t);
  return err;
}

typedef struct {
  DWORD tid;
  const rb_dr_state *want;
  rb_err err;
} caller_arm;

static DWORD WINAPI arm_caller(LPVOID arg) {
  caller_arm *a = (caller_arm *)arg;
  a->err = arm_thread(a->tid, a->want);
  return 0;
}

/* The host's own thread (a watch on rmem.self()) cannot suspend itself: a
 * short-lived thread of the host sets it while it waits here, in rmem's C
 * code and so not inside a debug exception (see arm_thread). */
static rb_err arm_current(const rb_dr_state *want) {
  caller_arm a;
  HANDLE t;
  a.tid = GetCurrentThreadId();
  a.want = want;
  a.err = 0;
  t = CreateThread(NULL, 0, arm_caller, &a, 0, NULL);
  if (t == NULL)
    return GetLastError();
  WaitForSingleObject(t, INFINITE);
  CloseHandle(t);
  return a.err;
}

rb_err rb_debug_registers(rb_proc *p, const rb_dr_state *want, const unsigned long *skip,
                          size_t nskip, unsigned long *seen, size_t cap, size_t *threads) {
  HANDLE snap = CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0);
  THREADENTRY32 te;
  rb_err err = 0;
  *threads = 0;
  if (snap == INVALID_HANDLE_VALUE)
    return GetLastError();
  te.dwSize = sizeof te;
  if (Thread32First(snap, &te)) {
    do {
      rb_err e = 0;
      size_t k;
      int known = 0;
      if (te.th32OwnerProcessID != p->pid)
        continue;
      for (k = 0; k < nskip && !known; k++)
        known = skip[k] == te.th32ThreadID;
      if (!known && want != NULL)
        e = te.th32ThreadID == GetCurrentThreadId() ? arm_current(want) : arm_thread(te.th32ThreadID, want);
      if (*threads < cap)
        seen[*threads] = te.th32ThreadID;
      /* a thread that ended meanwhile is no failure */
      if (e && e != ERROR_INVALID_PARAMETER && e != ERROR_ACCESS_DENIED && !err)
        err = e;
      (*threads)++;
      te.dwSize = sizeof te;
    } while (Thread32Next(snap, &te));
  }
  CloseHandle(snap);
  return err;
}

/* Linux's way (perf events); Windows watches are armed by rb_debug_registers. */
rb_err rw_open(rb_proc *p, uintptr_t addr, int size, int kind, rw_watch **out) {
  (void)p, (void)addr, (void)size, (void)kind;
  *out = NULL;
  return ERROR_NOT_SUPPORTED;
}

rb_err rw_poll(rw_watch *w, rw_hit *list, size_t cap, size_t *n, unsigned long long *dropped) {
  (void)w, (void)list, (void)cap;
  *n = 0;
  *dropped = 0;
  return ERROR_NOT_SUPPORTED;
}

void rw_close(rw_watch *w) {
  (void)w;
}

const char *rw_method(const rw_watch *w) {
  (void)w;
  return "";
}
