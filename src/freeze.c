/*
 * Freezes: h:freeze writes a few bytes again and again from a thread of the
 * host's own, so the value holds while Lua sleeps or waits for input; and
 * core.sleep.
 *
 * The thread shares nothing mutable with the Lua side while it runs: it
 * writes through its own handle on the process (rb_dup), and its result is
 * read only once it has finished (rb_thread_done, rb_thread_join).
 */
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "core.h"

#define FREEZE_META "rmem.core.freeze"
#define FREEZE_MAX 256 /* bytes one freeze writes */

typedef struct job {
  rb_proc *p; /* the thread's own handle */
  uintptr_t addr;
  size_t n;
  unsigned long interval_ms;
  unsigned char bytes[FREEZE_MAX];
  int exited; /* the results, set by the thread before it returns */
  rb_err err;
} job;

typedef struct lfreeze {
  rb_thread *t; /* NULL once stopped */
  job j;
} lfreeze;


/* The thread: checks that the process is still the one opened (the pidfd
 * on Linux) before each write, and ends quietly once it has exited. */
static void run(rb_thread *t, void *arg) {
  job *j = (job *)arg;
  do {
    size_t done;
    rb_err e;
    if (rb_exited(j->p)) {
      j->exited = 1;
      return;
    }
    if ((e = rb_write(j->p, j->addr, j->bytes, j->n, &done))) {
      int tries;
      /* an exiting process fails writes (its memory is gone) a moment
       * before it counts as exited */
      for (tries = 0; tries < 10; tries++) {
        if (rb_exited(j->p)) {
          j->exited = 1;
          return;
        }
        if (rb_thread_wait(t, 10))
          return;
      }
      j->err = e;
      return;
    }
  } while (!rb_thread_wait(t, j->interval_ms));
}

static lfreeze *check_freeze(lua_State *L) {
  return (lfreeze *)luaL_checkudata(L, 1, FREEZE_META);
}

/* h:freeze(address, bytes, interval_ms) -> a running freeze */
static int h_freeze(lua_State *L) {
  rb_proc *p = rmem_check_proc(L);
  uintptr_t addr = rmem_check_address(L, 2);
  size_t n;
  const char *s = luaL_checklstring(L, 3, &n);
  lua_Integer interval = luaL_checkinteger(L, 4);
  lfreeze *f;
  rb_err e;
  luaL_argcheck(L, n > 0 && n <= FREEZE_MAX, 3, "a freeze writes 1 to 256 bytes");
  luaL_argcheck(L, n <= UINTPTR_MAX - addr, 3, "range wraps past the end of the address space");
  luaL_argcheck(L, interval >= 1 && interval <= 0x7FFFFFFF, 4, "interval out of range");
  f = (lfreeze *)lua_newuserdatauv(L, sizeof *f, 0);
  memset(f, 0, sizeof *f);
  luaL_setmetatable(L, FREEZE_META); /* stopped until the thread runs */
  f->j.addr = addr;
  f->j.n = n;
  f->j.interval_ms = (unsigned long)interval;
  memcpy(f->j.bytes, s, n);
  if ((e = rb_dup(p, &f->j.p)))
    return rmem_os_fail(L, "freeze", e);
  if ((e = rb_thread_start(run, &f->j, &f->t))) {
    rb_close(f->j.p);
    f->j.p = NULL;
    return rmem_os_fail(L, "freeze", e);
  }
  return 1;
}

/* __gc, __close and f:stop(): idempotent, never raises. */
static int fz_stop(lua_State *L) {
  lfreeze *f = check_freeze(L);
  if (f->t != NULL) {
    rb_thread *t = f->t;
    f->t = NULL;
    rb_thread_join(t);
    rb_close(f->j.p);
    f->j.p = NULL;
  }
  return 0;
}

/* f:status() -> "running" | "stopped" | "exited" (the process has) |
 * "failed", "write: message", code */
static int fz_status(lua_State *L) {
  lfreeze *f = check_freeze(L);
  if (f->t != NULL && !rb_thread_done(f->t))
    lua_pushliteral(L, "running");
  else if (f->j.exited)
    lua_pushliteral(L, "exited");
  else if (f->j.err) {
    rmem_os_fail(L, "write", f->j.err);
    lua_pushliteral(L, "failed");
    lua_replace(L, -4);
    return 3;
  } else
    lua_pushliteral(L, "stopped");
  return 1;
}

static int fz_tostring(lua_State *L) {
  lfreeze *f = check_freeze(L);
  lua_pushfstring(L, FREEZE_META " (%I bytes at %p, %s)", (lua_Integer)f->j.n, (void *)f->j.addr,
                  f->t != NULL ? "started" : "stopped");
  return 1;
}

/* core.sleep(ms) */
static int core_sleep(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  luaL_argcheck(L, ms >= 0 && ms <= 0x7FFFFFFF, 1, "milliseconds out of range");
  rb_sleep((unsigned long)ms);
  return 0;
}

static const luaL_Reg freeze_methods[] = {
  {"stop", fz_stop},
  {"status", fz_status},
  {NULL, NULL}
};

static const luaL_Reg handle_methods[] = {
  {"freeze", h_freeze},
  {NULL, NULL}
};

static const luaL_Reg freeze_metamethods[] = {
  {"__index", NULL}, /* the methods table */
  {"__gc", fz_stop},
  {"__close", fz_stop},
  {"__tostring", fz_tostring},
  {NULL, NULL}
};

void rmem_open_freeze(lua_State *L) {
  rmem_createmeta(L, FREEZE_META, freeze_metamethods, freeze_methods);
  rmem_add_methods(L, handle_methods);
  lua_pushcfunction(L, core_sleep);
  lua_setfield(L, -2, "sleep");
}
