/*
 * Host threads for the core (backend.h): CreateThread, and an event that
 * a stop sets, so that a waiting thread wakes at once.
 */
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>

#include <stdlib.h>

#include "backend.h"

struct rb_thread {
  HANDLE th, stop;
  rb_thread_fn fn;
  void *arg;
};

static DWORD WINAPI run(LPVOID arg) {
  rb_thread *t = (rb_thread *)arg;
  t->fn(t, t->arg);
  return 0;
}

rb_err rb_thread_start(rb_thread_fn fn, void *arg, rb_thread **out) {
  rb_thread *t = (rb_thread *)malloc(sizeof *t);
  rb_err e;
  if (t == NULL)
    return ERROR_NOT_ENOUGH_MEMORY;
  t->fn = fn;
  t->arg = arg;
  if ((t->stop = CreateEventW(NULL, TRUE, FALSE, NULL)) == NULL) {
    e = GetLastError();
    free(t);
    return e;
  }
  if ((t->th = CreateThread(NULL, 0, run, t, 0, NULL)) == NULL) {
    e = GetLastError();
    CloseHandle(t->stop);
    free(t);
    return e;
  }
  *out = t;
  return 0;
}

int rb_thread_wait(rb_thread *t, unsigned long ms) {
  return WaitForSingleObject(t->stop, (DWORD)ms) == WAIT_OBJECT_0;
}

int rb_thread_done(rb_thread *t) {
  return WaitForSingleObject(t->th, 0) == WAIT_OBJECT_0;
}

void rb_thread_join(rb_thread *t) {
  SetEvent(t->stop);
  WaitForSingleObject(t->th, INFINITE);
  CloseHandle(t->th);
  CloseHandle(t->stop);
  free(t);
}

void rb_sleep(unsigned long ms) { Sleep((DWORD)ms); }
