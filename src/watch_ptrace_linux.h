/*
 * p:watch's ptrace method (watch_ptrace_linux.c), for where perf events are
 * not allowed: one tracer process per target, shared by the host's watches
 * on it (a process has one tracer), each watch one of its debug registers.
 */
#ifndef RMEM_WATCH_PTRACE_LINUX_H
#define RMEM_WATCH_PTRACE_LINUX_H

#include <stdint.h>
#include <sys/types.h>

#include "backend.h"

typedef struct rwp rwp;

/* Arms a free debug register of every thread of pid (starting its tracer
 * if needed): *t and *slot name it for the calls below. */
rb_err rwp_arm(pid_t pid, uintptr_t addr, int size, int kind, rwp **t, int *slot);
/* Hands the hits recorded for slot since the last call to add(ctx, ...);
 * returns the hits the tracer could not record since the slot was armed. */
unsigned long long rwp_take(rwp *t, int slot,
                            void (*add)(void *ctx, uintptr_t ip, unsigned long tid,
                                        unsigned long long n),
                            void *ctx);
/* 1 once the target ran exec (the tracer let it go and ended). */
int rwp_replaced(rwp *t);
/* Clears slot on every thread; the last one ends the tracer, which clears
 * and detaches every thread first. */
void rwp_disarm(rwp *t, int slot);

#endif
