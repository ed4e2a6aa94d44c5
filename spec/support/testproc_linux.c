/*
 * testproc: starts and stops the target processes the specs work on, on
 * Linux. Every target gets PR_SET_PDEATHSIG(SIGKILL), so it dies with the
 * host even after a failure, and a pipe on its standard input for commands.
 *
 *   local t = testproc.start(path [, arg...])  -- returns once the target is ready
 *   t:pid()  t:stop([exit_code])   -- stop waits until it has exited (not reaped,
 *                                   -- so its exit code stays knowable); idempotent
 *   t:send(line)                   -- a line on the target's standard input
 *   t:wait([timeout_ms])           -- its exit code once it exits (nil on timeout)
 *   t:trace()  t:untrace()         -- a tracer process holds it with PTRACE_SEIZE
 *   testproc.count_sigchld(on)     -- counts the host's SIGCHLDs from now (on) or stops
 *   testproc.sigchld_count()       -- how many arrived while counting
 *   testproc.wine_version()        -- nil: not under Wine
 *   testproc.setenv(name, value)   -- the host's environment (value nil: unset)
 *   testproc.deny_perf()           -- perf_event_open fails with EACCES in this
 *                                  -- process from now on (a seccomp filter: for a
 *                                  -- child host, it cannot be undone)
 *   testproc.fork()                -- fork(): 0 in the child, which must end with
 *                                  -- testproc.exit(code) (_exit: no finalizer runs)
 *   testproc.reap(pid [, nohang])  -- waits for a child of the host (nohang: only
 *                                  -- looks); true once it has exited
 *   testproc.failing_alloc(setup, n, path, cpath)
 *       -- in a new Lua state whose allocator fails after n allocations:
 *       -- runs setup (a chunk returning a function) with no limit, then that
 *       -- function with the limit; returns ok, message, and the bytes the
 *       -- whole process allocated and did not free (nil without ASan)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <stddef.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"
#ifdef __SANITIZE_ADDRESS__
size_t __sanitizer_get_current_allocated_bytes(void); /* the ASan runtime's */
#endif

#define TARGET_META "testproc.target"

typedef struct target {
  pid_t pid;    /* 0 once reaped */
  int input;    /* the write end of its standard input, -1 once closed */
  int stopped;
  pid_t tracer; /* 0 if none */
} target;

static int tp_start(lua_State *L) {
  int n = lua_gettop(L), i, ready[2], input[2];
  const char **argv;
  char fdarg[16], buf[16];
  struct pollfd pfd;
  target *t;
  pid_t parent = getpid(), pid;
  ssize_t got;
  luaL_checkstring(L, 1);
  argv = (const char **)lua_newuserdatauv(L, (size_t)(n + 4) * sizeof *argv, 0);
  for (i = 0; i < n; i++)
    argv[i] = luaL_checkstring(L, i + 1);
  t = (target *)lua_newuserdatauv(L, sizeof *t, 0);
  t->pid = 0;
  t->input = -1;
  t->stopped = 1;
  t->tracer = 0;
  luaL_setmetatable(L, TARGET_META);
  if (pipe2(ready, O_CLOEXEC))
    return luaL_error(L, "testproc: pipe failed: %s", strerror(errno));
  if (pipe2(input, O_CLOEXEC)) {
    close(ready[0]);
    close(ready[1]);
    return luaL_error(L, "testproc: pipe failed: %s", strerror(errno));
  }
  snprintf(fdarg, sizeof fdarg, "%d", ready[1]);
  argv[n] = "--ready-fd";
  argv[n + 1] = fdarg;
  argv[n + 2] = "--until-eof";
  argv[n + 3] = NULL;
  pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
      _exit(127); /* the host died before prctl */
    dup2(input[0], 0);
    dup2(null, 1);
    dup2(null, 2);
    fcntl(ready[1], F_SETFD, 0); /* the ready pipe survives exec */
    /* the test host preloads the sanitizer runtime; the target must stay a
     * plain process (ASan's terabytes of shadow mapping would be scanned) */
    unsetenv("LD_PRELOAD");
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  close(ready[1]);
  close(input[0]);
  if (pid < 0) {
    close(ready[0]);
    close(input[1]);
    return luaL_error(L, "testproc: fork failed: %s", strerror(errno));
  }
  t->pid = pid;
  t->input = input[1];
  t->stopped = 0;
  pfd.fd = ready[0];
  pfd.events = POLLIN;
  got = poll(&pfd, 1, 20000) == 1 ? read(ready[0], buf, sizeof buf) : -1;
  close(ready[0]);
  if (got != 6)
    return luaL_error(L, "testproc: %s did not get ready", argv[0]);
  return 1;
}

static target *check_target(lua_State *L) {
  return (target *)luaL_checkudata(L, 1, TARGET_META);
}

static int tp_pid(lua_State *L) {
  lua_pushinteger(L, check_target(L)->pid);
  return 1;
}

static int tp_send(lua_State *L) {
  target *t = check_target(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  lua_pushboolean(L, t->input >= 0 && write(t->input, s, n) == (ssize_t)n);
  return 1;
}

/* The exit status as a code: exit(N) -> N, a signal -> 128 + signal. */
static int exit_code(const siginfo_t *si) {
  return si->si_code == CLD_EXITED ? si->si_status : 128 + si->si_status;
}

static int tp_wait(lua_State *L) {
  target *t = check_target(L);
  int timeout = (int)luaL_optinteger(L, 2, 5000), i;
  siginfo_t si;
  for (i = 0; i <= timeout / 10; i++) {
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)t->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == t->pid) {
      t->stopped = 1;
      lua_pushinteger(L, exit_code(&si));
      return 1;
    }
    usleep(10000);
  }
  lua_pushnil(L);
  return 1;
}

static void untrace(target *t) {
  if (t->tracer > 0) {
    kill(t->tracer, SIGKILL);
    waitpid(t->tracer, NULL, 0);
    t->tracer = 0;
  }
}

/* Another process traces the target (as a debugger would), without
 * stopping it; returns the tracer's pid once the target is traced. */
static int tp_trace(lua_State *L) {
  target *t = check_target(L);
  int sync[2];
  char c = 0;
  pid_t tracer;
  untrace(t);
  if (pipe2(sync, O_CLOEXEC))
    return luaL_error(L, "testproc: pipe failed: %s", strerror(errno));
  tracer = fork();
  if (tracer == 0) {
    char ok = ptrace(PTRACE_SEIZE, t->pid, 0, 0) == 0 ? 'y' : 'n';
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (write(sync[1], &ok, 1) != 1)
      _exit(1);
    for (;;)
      pause();
  }
  close(sync[1]);
  if (tracer < 0 || read(sync[0], &c, 1) != 1 || c != 'y') {
    close(sync[0]);
    if (tracer > 0) {
      kill(tracer, SIGKILL);
      waitpid(tracer, NULL, 0);
    }
    return luaL_error(L, "testproc: could not trace %d", (int)t->pid);
  }
  close(sync[0]);
  t->tracer = tracer;
  lua_pushinteger(L, tracer);
  return 1;
}

static int tp_untrace(lua_State *L) {
  untrace(check_target(L));
  return 0;
}

/* Asks the target to exit with the code (1 by default), kills it if it
 * does not within 5 s, and waits until it has exited, leaving it unreaped. */
static int tp_stop(lua_State *L) {
  target *t = check_target(L);
  int code = (int)luaL_optinteger(L, 2, 1), i;
  siginfo_t si;
  if (t->stopped)
    return 0;
  t->stopped = 1;
  untrace(t);
  if (t->input >= 0) {
    char line[32];
    int len = snprintf(line, sizeof line, "exit %d\n", code);
    if (write(t->input, line, (size_t)len) != len)
      kill(t->pid, SIGKILL);
  }
  for (i = 0; i < 500; i++) {
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)t->pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == t->pid)
      return 0;
    usleep(10000);
  }
  kill(t->pid, SIGKILL);
  waitid(P_PID, (id_t)t->pid, &si, WEXITED | WNOWAIT);
  return 0;
}

static int tp_gc(lua_State *L) {
  target *t = check_target(L);
  untrace(t);
  if (t->pid > 0) {
    if (!t->stopped)
      kill(t->pid, SIGKILL);
    waitpid(t->pid, NULL, 0);
    t->pid = 0;
  }
  if (t->input >= 0) {
    close(t->input);
    t->input = -1;
  }
  return 0;
}

static volatile sig_atomic_t sigchlds;

static void on_sigchld(int sig) {
  (void)sig;
  sigchlds++;
}

static int tp_count_sigchld(lua_State *L) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = lua_toboolean(L, 1) ? on_sigchld : SIG_DFL;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigchlds = 0;
  sigaction(SIGCHLD, &sa, NULL);
  return 0;
}

static int tp_sigchld_count(lua_State *L) {
  lua_pushinteger(L, sigchlds);
  return 1;
}

static int tp_wine_version(lua_State *L) {
  lua_pushnil(L);
  return 1;
}

/* The host's open file descriptors: leak checks compare it before and after. */
static int tp_handle_count(lua_State *L) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  lua_Integer n = 0;
  if (d == NULL)
    return luaL_error(L, "opendir /proc/self/fd: %s", strerror(errno));
  while ((e = readdir(d)) != NULL)
    n += e->d_name[0] != '.';
  closedir(d);
  lua_pushinteger(L, n - 1); /* the directory's own descriptor */
  return 1;
}

/* testproc.debug_registers(pid) -> { {tid=, dr7=, dr0=, ..., dr3=}, ... }:
 * each thread's debug registers as ptrace (PEEKUSER) reads them, the thread
 * stopped for the read (PTRACE_SEIZE + INTERRUPT) and let go. */
static int tp_debug_registers(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  char path[64];
  DIR *d;
  struct dirent *e;
  lua_Integer n = 0;
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  if ((d = opendir(path)) == NULL)
    return luaL_error(L, "opendir %s: %s", path, strerror(errno));
  lua_newtable(L);
  while ((e = readdir(d)) != NULL) {
    pid_t tid = (pid_t)atoi(e->d_name);
    int st, i;
    static const char *const names[] = {"dr0", "dr1", "dr2", "dr3", NULL, NULL, NULL, "dr7"};
    if (tid <= 0 || ptrace(PTRACE_SEIZE, tid, 0, 0) != 0)
      continue;
    if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) == 0 && waitpid(tid, &st, __WALL) == tid) {
      lua_createtable(L, 0, 6);
      lua_pushinteger(L, tid);
      lua_setfield(L, -2, "tid");
      for (i = 0; i < 8; i++) {
        long v;
        if (names[i] == NULL)
          continue;
        errno = 0;
        v = ptrace(PTRACE_PEEKUSER, tid, (void *)(offsetof(struct user, u_debugreg) + i * sizeof(long)), 0);
        lua_pushinteger(L, errno ? -1 : (lua_Integer)v);
        lua_setfield(L, -2, names[i]);
      }
      lua_rawseti(L, -2, ++n);
    }
    ptrace(PTRACE_DETACH, tid, 0, 0);
  }
  closedir(d);
  return 1;
}

/* The host's perf_event descriptors (p:watch's, on Linux). */
static int tp_perf_events(lua_State *L) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  lua_Integer n = 0;
  if (d == NULL)
    return luaL_error(L, "opendir /proc/self/fd: %s", strerror(errno));
  while ((e = readdir(d)) != NULL) {
    char path[300], link[64];
    ssize_t k;
    snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    k = readlink(path, link, sizeof link - 1);
    if (k > 0) {
      link[k] = 0;
      n += strstr(link, "perf_event") != NULL;
    }
  }
  closedir(d);
  lua_pushinteger(L, n);
  return 1;
}

static int tp_sleep(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  struct timespec ts;
  ts.tv_sec = (time_t)(ms / 1000);
  ts.tv_nsec = (long)(ms % 1000) * 1000000L;
  nanosleep(&ts, NULL);
  return 0;
}

static int tp_setenv(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  if (lua_isnoneornil(L, 2))
    unsetenv(name);
  else
    setenv(name, luaL_checkstring(L, 2), 1);
  return 0;
}

/* As where kernel.perf_event_paranoid is 3 (Debian's default), which root
 * would pass: perf_event_open gives EACCES, everything else is allowed. */
static int tp_deny_perf(lua_State *L) {
  struct sock_filter code[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_perf_event_open, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EACCES),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog;
  prog.len = (unsigned short)(sizeof code / sizeof code[0]);
  prog.filter = code;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
    return luaL_error(L, "seccomp: %s", strerror(errno));
  return 0;
}

/* The allocations a failing state may still make; -1: no limit. */
static long alloc_left = -1;

static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  /* growing fails once the budget is spent; shrinking never does */
  if (alloc_left >= 0 && (ptr == NULL || nsize > osize)) {
    if (alloc_left == 0)
      return NULL;
    alloc_left--;
  }
  return realloc(ptr, nsize);
}

static int tp_failing_alloc(lua_State *L) {
  const char *setup = luaL_checkstring(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  const char *path = luaL_checkstring(L, 3), *cpath = luaL_checkstring(L, 4);
  int ok;
  char msg[256];
  lua_State *F;
#ifdef __SANITIZE_ADDRESS__
  size_t before = __sanitizer_get_current_allocated_bytes();
#endif
  alloc_left = -1;
  if ((F = lua_newstate(failing_alloc, NULL)) == NULL)
    return luaL_error(L, "no Lua state");
  luaL_openlibs(F);
  lua_getglobal(F, "package");
  lua_pushstring(F, path);
  lua_setfield(F, -2, "path");
  lua_pushstring(F, cpath);
  lua_setfield(F, -2, "cpath");
  lua_pop(F, 1);
  if (luaL_loadstring(F, setup) != LUA_OK || lua_pcall(F, 0, 1, 0) != LUA_OK) {
    lua_pushfstring(L, "setup: %s", lua_tostring(F, -1));
    lua_close(F);
    return lua_error(L);
  }
  alloc_left = (long)n;
  ok = lua_pcall(F, 0, 0, 0) == LUA_OK;
  alloc_left = -1;
  /* nothing allocated in L until the count is taken */
  snprintf(msg, sizeof msg, "%s", ok ? "" : lua_isstring(F, -1) ? lua_tostring(F, -1) : luaL_typename(F, -1));
  lua_close(F);
#ifdef __SANITIZE_ADDRESS__
  before = __sanitizer_get_current_allocated_bytes() - before;
  lua_pushboolean(L, ok);
  lua_pushstring(L, msg);
  lua_pushinteger(L, (lua_Integer)before);
#else
  lua_pushboolean(L, ok);
  lua_pushstring(L, msg);
  lua_pushnil(L);
#endif
  return 3;
}

static int tp_fork(lua_State *L) {
  pid_t pid = fork();
  if (pid < 0)
    return luaL_error(L, "fork: %s", strerror(errno));
  lua_pushinteger(L, pid);
  return 1;
}

static int tp_exit(lua_State *L) {
  _exit((int)luaL_optinteger(L, 1, 0));
}

static int tp_reap(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1), got;
  int st;
  while ((got = waitpid(pid, &st, lua_toboolean(L, 2) ? WNOHANG : 0)) < 0 && errno == EINTR) {
  }
  if (got < 0)
    return luaL_error(L, "waitpid %d: %s", (int)pid, strerror(errno));
  lua_pushboolean(L, got == pid);
  return 1;
}

static const luaL_Reg funcs[] = {
  {"fork", tp_fork},
  {"exit", tp_exit},
  {"reap", tp_reap},
  {"setenv", tp_setenv},
  {"deny_perf", tp_deny_perf},
  {"failing_alloc", tp_failing_alloc},
  {"debug_registers", tp_debug_registers},
  {"perf_events", tp_perf_events},
  {"sleep", tp_sleep},
  {"start", tp_start},
  {"handle_count", tp_handle_count},
  {"count_sigchld", tp_count_sigchld},
  {"sigchld_count", tp_sigchld_count},
  {"wine_version", tp_wine_version},
  {NULL, NULL}
};

static const luaL_Reg methods[] = {
  {"pid", tp_pid},
  {"send", tp_send},
  {"wait", tp_wait},
  {"trace", tp_trace},
  {"untrace", tp_untrace},
  {"stop", tp_stop},
  {NULL, NULL}
};

int luaopen_testproc(lua_State *L) {
  /* a target that died closes its stdin pipe: writing "exit" to it must
   * fail with EPIPE, not kill the test run */
  signal(SIGPIPE, SIG_IGN);
  luaL_newmetatable(L, TARGET_META);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, tp_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  return 1;
}
