/*
 * testproc: starts and stops the target processes the specs work on, on
 * Windows. Every target runs in one job object that kills it when the test
 * run ends (the job handle closes with the host), even after a failure.
 *
 *   local t = testproc.start(command_line [, timeout_ms])
 *     -- returns once the target has set its ready event
 *   t:pid()  t:stop([exit_code])  -- stop waits for the exit; idempotent
 *   testproc.wine_version()        -- Wine's version string, or nil on Windows
 *   testproc.spawn(command_line)   -- the same, not waited for (no --ready-event)
 *   testproc.debug_registers(pid)  -- every thread's Dr0-3 and Dr7
 *   testproc.sleep(ms)
 */
#include <windows.h>
#include <tlhelp32.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>

#include "lua.h"
#include "lauxlib.h"

#define TARGET_META "testproc.target"

typedef struct target {
  HANDLE process; /* NULL once stopped */
  DWORD pid;
} target;

static HANDLE job;

static int fail(lua_State *L, const char *what, DWORD code) {
  return luaL_error(L, "testproc: %s failed (error %d)", what, (int)code);
}

/* Standard handles on NUL: a target must never hold the test run's output
 * pipe (under Wine it would keep the Unix pipe open and stall the run). */
static BOOL spawn(WCHAR *cmd, PROCESS_INFORMATION *pi) {
  STARTUPINFOW si;
  SECURITY_ATTRIBUTES sa;
  HANDLE nul;
  BOOL ok;
  sa.nLength = sizeof sa;
  sa.lpSecurityDescriptor = NULL;
  sa.bInheritHandle = TRUE;
  nul = CreateFileW(L"NUL", GENERIC_READ | GENERIC_WRITE, FILE_SHARE_READ | FILE_SHARE_WRITE,
                    &sa, OPEN_EXISTING, 0, NULL);
  if (nul == INVALID_HANDLE_VALUE)
    return FALSE;
  ZeroMemory(&si, sizeof si);
  si.cb = sizeof si;
  si.dwFlags = STARTF_USESTDHANDLES;
  si.hStdInput = si.hStdOutput = si.hStdError = nul;
  ok = CreateProcessW(NULL, cmd, NULL, NULL, TRUE, CREATE_SUSPENDED, NULL, NULL, &si, pi);
  if (!ok) {
    DWORD e = GetLastError();
    CloseHandle(nul);
    SetLastError(e);
    return FALSE;
  }
  CloseHandle(nul);
  return TRUE;
}

/* Starts cmd (UTF-8) in the job and pushes its target object; on failure
 * returns what failed (*code: the error) and pushes nothing. */
static const char *launch(lua_State *L, const char *cmd, HANDLE *process, DWORD *code) {
  int wlen = MultiByteToWideChar(CP_UTF8, 0, cmd, -1, NULL, 0);
  WCHAR *wcmd = (WCHAR *)lua_newuserdatauv(L, (size_t)wlen * sizeof(WCHAR), 0);
  PROCESS_INFORMATION pi;
  target *t;
  MultiByteToWideChar(CP_UTF8, 0, cmd, -1, wcmd, wlen);
  /* Wine's CreateProcess fails now and then with ERROR_INTERNAL_ERROR:
   * one retry. */
  if (!spawn(wcmd, &pi) && (GetLastError() != ERROR_INTERNAL_ERROR || !spawn(wcmd, &pi))) {
    *code = GetLastError();
    lua_pop(L, 1);
    return "CreateProcess";
  }
  lua_pop(L, 1);
  if (!AssignProcessToJobObject(job, pi.hProcess)) {
    *code = GetLastError();
    TerminateProcess(pi.hProcess, 1);
    CloseHandle(pi.hProcess);
    CloseHandle(pi.hThread);
    return "AssignProcessToJobObject";
  }
  t = (target *)lua_newuserdatauv(L, sizeof *t, 0);
  t->process = pi.hProcess;
  t->pid = pi.dwProcessId;
  luaL_setmetatable(L, TARGET_META);
  ResumeThread(pi.hThread);
  CloseHandle(pi.hThread);
  *process = pi.hProcess;
  return NULL;
}

static int tp_start(lua_State *L) {
  static unsigned counter;
  const char *cmd = luaL_checkstring(L, 1);
  DWORD timeout = (DWORD)luaL_optinteger(L, 2, 20000);
  char event_name[64];
  HANDLE ready, process, waits[2];
  const char *failed;
  DWORD w, code;

  snprintf(event_name, sizeof event_name, "rmem-test-ready-%lu-%u",
           (unsigned long)GetCurrentProcessId(), ++counter);
  ready = CreateEventA(NULL, TRUE, FALSE, event_name);
  if (ready == NULL)
    return fail(L, "CreateEvent", GetLastError());
  failed = launch(L, lua_pushfstring(L, "%s --ready-event %s", cmd, event_name), &process, &code);
  if (failed) {
    CloseHandle(ready);
    return fail(L, failed, code);
  }
  waits[0] = ready;
  waits[1] = process;
  w = WaitForMultipleObjects(2, waits, FALSE, timeout);
  CloseHandle(ready);
  if (w != WAIT_OBJECT_0) {
    TerminateProcess(process, 1);
    return luaL_error(L, "testproc: target %s before it was ready",
                      w == WAIT_OBJECT_0 + 1 ? "exited" : "timed out");
  }
  return 1;
}

/* testproc.spawn(command_line) -> target: started in the job, not waited
 * for (a process that has no --ready-event, such as a second host). */
static int tp_spawn(lua_State *L) {
  HANDLE process;
  DWORD code;
  const char *failed = launch(L, luaL_checkstring(L, 1), &process, &code);
  if (failed)
    return fail(L, failed, code);
  return 1;
}

static target *check_target(lua_State *L) {
  return (target *)luaL_checkudata(L, 1, TARGET_META);
}

static int tp_pid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_target(L)->pid);
  return 1;
}

/* Kills the target (if still running) and waits until it has exited. */
static int tp_stop(lua_State *L) {
  target *t = check_target(L);
  UINT code = (UINT)luaL_optinteger(L, 2, 1);
  if (t->process != NULL) {
    HANDLE h = t->process;
    t->process = NULL;
    TerminateProcess(h, code);
    WaitForSingleObject(h, 10000);
    CloseHandle(h);
  }
  return 0;
}

static int tp_wine_version(lua_State *L) {
  typedef const char *(*wine_get_version_fn)(void);
  HMODULE ntdll = GetModuleHandleA("ntdll.dll");
  wine_get_version_fn f =
      ntdll ? (wine_get_version_fn)(void (*)(void))GetProcAddress(ntdll, "wine_get_version") : NULL;
  if (f == NULL)
    lua_pushnil(L);
  else
    lua_pushstring(L, f());
  return 1;
}

/* One entry of NtQuerySystemInformation(SystemExtendedHandleInformation),
 * as winternl.h does not declare it. */
typedef struct handle_entry {
  PVOID object;
  ULONG_PTR pid, value;
  ULONG access;
  USHORT creator_back_trace_index, type_index;
  ULONG attributes, reserved;
} handle_entry;

typedef struct handle_list {
  ULONG_PTR count, reserved;
  handle_entry handles[1];
} handle_list;

typedef LONG(WINAPI *query_system_fn)(ULONG, PVOID, ULONG, PULONG);

#define SYSTEM_EXTENDED_HANDLE_INFORMATION 64
#define STATUS_INFO_LENGTH_MISMATCH ((LONG)0xC0000004L)

/* The host's open handles: leak checks compare it before and after. Wine 8's
 * GetProcessHandleCount always answers 0, so the handles are counted in the
 * system's handle list instead (Windows and Wine both fill it). */
static int tp_handle_count(lua_State *L) {
  query_system_fn query = (query_system_fn)(void (*)(void))GetProcAddress(
      GetModuleHandleA("ntdll.dll"), "NtQuerySystemInformation");
  ULONG size = 1 << 16, need = 0;
  ULONG_PTR i, me = GetCurrentProcessId(), n = 0;
  handle_list *list = NULL;
  LONG status;
  if (query == NULL)
    return fail(L, "GetProcAddress(NtQuerySystemInformation)", GetLastError());
  do { /* the list grows between calls: retry with what it needed, and more */
    free(list);
    list = (handle_list *)malloc(size);
    if (list == NULL)
      return luaL_error(L, "testproc: not enough memory");
    status = query(SYSTEM_EXTENDED_HANDLE_INFORMATION, list, size, &need);
    size = (need > size ? need : size) * 2;
  } while (status == STATUS_INFO_LENGTH_MISMATCH);
  if (status == 0)
    for (i = 0; i < list->count; i++)
      n += list->handles[i].pid == me;
  free(list);
  if (status != 0)
    return fail(L, "NtQuerySystemInformation", (DWORD)status);
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

/* testproc.debug_registers(pid) -> { {tid=, dr7=, dr0=, ..., dr3=}, ... }:
 * what GetThreadContext says of every thread of the process (p:watch). */
static int tp_debug_registers(lua_State *L) {
  DWORD pid = (DWORD)luaL_checkinteger(L, 1);
  HANDLE snap = CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0);
  THREADENTRY32 te;
  lua_Integer n = 0;
  if (snap == INVALID_HANDLE_VALUE)
    return fail(L, "CreateToolhelp32Snapshot", GetLastError());
  lua_newtable(L);
  te.dwSize = sizeof te;
  if (Thread32First(snap, &te)) {
    do {
      HANDLE t;
      CONTEXT c;
      if (te.th32OwnerProcessID != pid)
        continue;
      t = OpenThread(THREAD_GET_CONTEXT, FALSE, te.th32ThreadID);
      memset(&c, 0, sizeof c);
      c.ContextFlags = CONTEXT_DEBUG_REGISTERS;
      if (t != NULL && GetThreadContext(t, &c)) {
        lua_createtable(L, 0, 6);
        lua_pushinteger(L, (lua_Integer)te.th32ThreadID);
        lua_setfield(L, -2, "tid");
        lua_pushinteger(L, (lua_Integer)c.Dr7);
        lua_setfield(L, -2, "dr7");
        lua_pushinteger(L, (lua_Integer)c.Dr0);
        lua_setfield(L, -2, "dr0");
        lua_pushinteger(L, (lua_Integer)c.Dr1);
        lua_setfield(L, -2, "dr1");
        lua_pushinteger(L, (lua_Integer)c.Dr2);
        lua_setfield(L, -2, "dr2");
        lua_pushinteger(L, (lua_Integer)c.Dr3);
        lua_setfield(L, -2, "dr3");
        lua_rawseti(L, -2, ++n);
      }
      if (t != NULL)
        CloseHandle(t);
      te.dwSize = sizeof te;
    } while (Thread32Next(snap, &te));
  }
  CloseHandle(snap);
  return 1;
}

static int tp_sleep(lua_State *L) {
  Sleep((DWORD)luaL_checkinteger(L, 1));
  return 0;
}

static const luaL_Reg funcs[] = {
  {"debug_registers", tp_debug_registers},
  {"sleep", tp_sleep},
  {"start", tp_start},
  {"spawn", tp_spawn},
  {"handle_count", tp_handle_count},
  {"wine_version", tp_wine_version},
  {NULL, NULL}
};

static const luaL_Reg methods[] = {
  {"pid", tp_pid},
  {"stop", tp_stop},
  {NULL, NULL}
};

__declspec(dllexport) int luaopen_testproc(lua_State *L) {
  if (job == NULL) {
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION li;
    job = CreateJobObjectW(NULL, NULL);
    if (job == NULL)
      return fail(L, "CreateJobObject", GetLastError());
    ZeroMemory(&li, sizeof li);
    li.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    if (!SetInformationJobObject(job, JobObjectExtendedLimitInformation, &li, sizeof li))
      return fail(L, "SetInformationJobObject", GetLastError());
  }
  luaL_newmetatable(L, TARGET_META);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, tp_stop);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  return 1;
}
