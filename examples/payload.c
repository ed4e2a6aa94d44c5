/*
 * A library to load into a target (examples/inject_library.lua and the
 * specs): a greeting function and the message it leaves behind.
 */
#include <stdio.h>
#ifdef _WIN32
#define EXPORT __declspec(dllexport)
#else
#define EXPORT __attribute__((visibility("default")))
#endif

EXPORT char payload_message[128] = "not greeted yet";

/* Writes "hello, WHO, from PID" into payload_message; returns its length. */
EXPORT int payload_greet(const char *who, int pid) {
  return snprintf(payload_message, sizeof payload_message, "hello, %s, from %d", who, pid);
}

/* a + 2b + 3c + ... + 8h: checks that every argument arrives in its place */
EXPORT long long payload_weigh(long long a, long long b, long long c, long long d, long long e,
                               long long f, long long g, long long h) {
  return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h;
}

/* Returns its argument: shows where a string argument was placed. */
EXPORT const void *payload_echo(const void *p) {
  return p;
}
