/*
 * Host threads for the core (backend.h): POSIX threads, a mutex and a
 * condition variable on the monotonic clock, so that a stop wakes a
 * waiting thread at once and a clock change never stretches a wait.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "backend.h"

struct rb_thread {
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int stop, done; /* under mu */
  rb_thread_fn fn;
  void *arg;
};

static void *run(void *arg) {
  rb_thread *t = (rb_thread *)arg;
  t->fn(t, t->arg);
  pthread_mutex_lock(&t->mu);
  t->done = 1;
  pthread_mutex_unlock(&t->mu);
  return NULL;
}

rb_err rb_thread_start(rb_thread_fn fn, void *arg, rb_thread **out) {
  rb_thread *t = (rb_thread *)calloc(1, sizeof *t);
  pthread_condattr_t ca;
  int e;
  if (t == NULL)
    return ENOMEM;
  t->fn = fn;
  t->arg = arg;
  if ((e = pthread_condattr_init(&ca)) == 0) {
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    e = pthread_cond_init(&t->cv, &ca);
    pthread_condattr_destroy(&ca);
  }
  if (e) {
    free(t);
    return (rb_err)e;
  }
  pthread_mutex_init(&t->mu, NULL);
  if ((e = pthread_create(&t->th, NULL, run, t))) {
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
    return (rb_err)e;
  }
  *out = t;
  return 0;
}

int rb_thread_wait(rb_thread *t, unsigned long ms) {
  struct timespec until;
  int stop;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += (time_t)(ms / 1000);
  until.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&t->mu);
  while (!t->stop && pthread_cond_timedwait(&t->cv, &t->mu, &until) != ETIMEDOUT)
    ;
  stop = t->stop;
  pthread_mutex_unlock(&t->mu);
  return stop;
}

int rb_thread_done(rb_thread *t) {
  int done;
  pthread_mutex_lock(&t->mu);
  done = t->done;
  pthread_mutex_unlock(&t->mu);
  return done;
}

void rb_thread_join(rb_thread *t) {
  pthread_mutex_lock(&t->mu);
  t->stop = 1;
  pthread_cond_signal(&t->cv);
  pthread_mutex_unlock(&t->mu);
  pthread_join(t->th, NULL);
  pthread_cond_destroy(&t->cv);
  pthread_mutex_destroy(&t->mu);
  free(t);
}

void rb_sleep(unsigned long ms) {
  struct timespec ts;
  ts.tv_sec = (time_t)(ms / 1000);
  ts.tv_nsec = (long)(ms % 1000) * 1000000L;
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}
