/*
 * A small program to experiment on: it starts, says it is ready, and then
 * does nothing, so whatever changes in its memory was done from outside.
 *
 *   rmem-target [--ready-event NAME | --ready-fd N] [--pid-file PATH] [--threads N]
 *               [--seccomp] [--tick] [--countdown PATH] [--die-after MS] [--until-eof]
 *               [--chain] [--wait sigwaitinfo|epoll] [--main-exits] [--health N]
 *
 * --ready-event NAME  Windows: set the named event once started (the test helper)
 * --ready-fd N        POSIX: write "ready\n" to descriptor N and close it (the test helper)
 * --pid-file PATH     write the pid to PATH once started (the demo)
 * --threads N         POSIX: start N more threads, the first busy, the others
 *                     sleeping in a loop (for the injection specs)
 * --seccomp           Linux: run under an allow-all seccomp filter
 * --tick              call tick() every millisecond in a thread: it adds 1 to
 *                     score (examples/code_cave.lua changes that from outside)
 * --countdown PATH   write the address of countdown (a 32-bit int, 1000000 at
 *                     start) to PATH, then subtract 1 from it every 10 ms in a
 *                     thread (the freeze specs hold it from outside)
 * --die-after MS      be killed (as by SIGKILL / TerminateProcess) MS milliseconds
 *                     after starting, whatever it is doing (the fault specs)
 * --until-eof         read commands from standard input: "exit N" exits with
 *                     code N, "exec PATH [ARG]" (POSIX) runs another program in
 *                     this process, "churn N" (POSIX) runs N threads one after
 *                     another that each call write_value once, end of input
 *                     exits 0; otherwise idle until killed
 * --wait sigwaitinfo  Linux, with --until-eof: instead, the only thread waits in
 *                     sigwaitinfo for SIGUSR1 and exits with its number (10),
 *                     or with 99 if the wait failed with EINTR
 * --wait epoll        Linux, with --until-eof: wait for each command in epoll_wait;
 *                     exit with 99 if it failed with EINTR
 * --main-exits        Linux, with --until-eof: the commands are read by another
 *                     thread and the main thread exits
 * --chain             build static -> heap A (+0x48) -> heap B (+0x10) -> a
 *                     value (0x5EED5EED00C0FFEE) at fresh heap addresses, among
 *                     decoys (examples/pointer_scan.lua, the pointer scan specs)
 * --calls N           start N threads that call the game functions below in a
 *                     loop (the hook specs and examples/hook_log.lua)
 * --health N          start health (a 32-bit int) at N; with --until-eof, a line
 *                     "hit D" takes D from it (examples/find_value.lua finds it)
 * --writer N          a thread that calls write_value N times then read_value
 *                     once, every millisecond (N = 0: writes in a tight loop)
 * --spawn-writer-after MS  such a thread (N = 1), started MS ms later
 *                     (p:watch: the variable follows "rmem-watched-var")
 *
 * Built with -DRMEM_TARGET_SHIFT it has more code and data before the game
 * functions: "the game after an update", for the signature specs.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _WIN32
#include <windows.h>
#define getpid() GetCurrentProcessId()
#define NOINLINE __declspec(noinline)
#else
#define NOINLINE __attribute__((noinline))
#endif

#ifdef RMEM_TARGET_SHIFT
volatile int shift_data[97];
NOINLINE int shift_code(int n) {
  int i, r = 0;
  for (i = 0; i < n; i++)
    r += shift_data[i % 97] * i;
  return r;
}
#endif

volatile int score;
volatile int health = 100;
volatile int countdown = 1000000;


/* Compiles to "mov eax, [score]; add eax, 1; mov [score], eax; ret" with
 * gcc and MinGW -O2, the code examples/code_cave.lua looks for. */
NOINLINE void tick(void) {
  score += 1;
}

/* Functions for p:func (spec/24-func_spec.lua), exported so that
 * p:proc_address finds them: a Windows exe's export table, Linux's .dynsym
 * (the Makefile links with -rdynamic). Each hands its arguments back, or
 * records them in rmem_test_ints / rmem_test_floats for the spec to read. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#ifdef _WIN32
#define EXPORT __declspec(dllexport)
#define STDCALL __stdcall
#else
#define EXPORT
#if defined(__i386__)
#define STDCALL __attribute__((stdcall))
#else
#define STDCALL
#endif
#endif

EXPORT int64_t rmem_test_ints[8];
EXPORT double rmem_test_floats[11];

EXPORT NOINLINE int8_t rmem_test_i8(int8_t x) { return (int8_t)(x - 1); }
EXPORT NOINLINE uint8_t rmem_test_u8(uint8_t x) { return (uint8_t)(x - 1); }
EXPORT NOINLINE int16_t rmem_test_i16(int16_t x) { return (int16_t)(x - 1); }
EXPORT NOINLINE uint16_t rmem_test_u16(uint16_t x) { return (uint16_t)(x - 1); }
EXPORT NOINLINE int32_t rmem_test_i32(int32_t x) { return x - 1; }
EXPORT NOINLINE uint32_t rmem_test_u32(uint32_t x) { return x - 1; }
EXPORT NOINLINE int64_t rmem_test_i64(int64_t x) { return x - 1; }
EXPORT NOINLINE uint64_t rmem_test_u64(uint64_t x) { return x - 1; }
EXPORT NOINLINE float rmem_test_f32(float x) { return x * 2.0f; }
EXPORT NOINLINE double rmem_test_f64(double x) { return x * 2.0; }
EXPORT NOINLINE bool rmem_test_not(bool x) { return !x; }
EXPORT NOINLINE void *rmem_test_ptr(void *p) { return (char *)p + 1; }
EXPORT NOINLINE const char *rmem_test_echo(const char *s) { return s; }
EXPORT NOINLINE size_t rmem_test_strlen(const char *s) { return s ? strlen(s) : (size_t)-1; }

/* UTF-16 code units up to the NUL, and their sum (wchar_t is 4 bytes on Linux). */
EXPORT NOINLINE uint64_t rmem_test_u16sum(const uint16_t *s) {
  uint64_t n = 0, sum = 0;
  for (; s[n]; n++)
    sum += s[n];
  return n << 32 | sum;
}

/* More integer and float arguments than any convention has registers for. */
EXPORT NOINLINE int64_t rmem_test_mixed(int8_t a, double b, float c, int64_t d, uint16_t e,
                                        double f, float g, int32_t h, double i, uint64_t j,
                                        float k, double l, int16_t m, double n, uint8_t o,
                                        float p, double q, int32_t r, double s) {
  int64_t *v = rmem_test_ints;
  double *x = rmem_test_floats;
  v[0] = a, v[1] = d, v[2] = e, v[3] = h, v[4] = (int64_t)j, v[5] = m, v[6] = o, v[7] = r;
  x[0] = b, x[1] = c, x[2] = f, x[3] = g, x[4] = i, x[5] = k, x[6] = l, x[7] = n, x[8] = p,
  x[9] = q, x[10] = s;
  return d - a;
}

/* The same in stdcall (32-bit x86; other targets ignore the convention). */
EXPORT NOINLINE double STDCALL rmem_test_stdcall(int32_t a, double b, float c, int64_t d) {
  rmem_test_ints[0] = a, rmem_test_ints[1] = d;
  rmem_test_floats[0] = b, rmem_test_floats[1] = c;
  return b + a;
}

/* Faults for the "a remote call never kills the target" specs. */
EXPORT NOINLINE void rmem_test_store(volatile int *p, int v) { *p = v; }
EXPORT NOINLINE int rmem_test_divide(volatile int a, volatile int b) { return a / b; }

/* A small game: functions a modder would look for, hook and find again. */
struct player {
  int health, gold, level, armor;
  float speed;
};
struct player player = {100, 0, 1, 3, 1.0f};
volatile int setting = 35;
volatile long calls, last_sum, last_setting;
volatile unsigned last_checksum;

NOINLINE int damage(int amount) {
  amount -= player.armor;
  if (amount < 0)
    amount = 0;
  player.health -= amount;
  return player.health;
}

NOINLINE int heal(int amount) {
  player.health += amount;
  if (player.health > 100 * player.level)
    player.health = 100 * player.level;
  return player.health;
}

NOINLINE int add_gold(int amount) {
  player.gold += amount * (player.level + 1) / 2;
  return player.gold;
}

NOINLINE void level_up(void) {
  player.level++;
  player.armor += player.level / 3;
  player.speed *= 1.05f;
}

NOINLINE unsigned checksum(const char *s, int n) {
  unsigned h = 2166136261u;
  int i;
  for (i = 0; i < n; i++)
    h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

/* Starts with a RIP-relative load (x86-64): a hook moves it. */
NOINLINE long get_setting(void) {
  return setting * 3 + 1;
}

/* The function the hook specs change an argument of. */
NOINLINE long hook_add(long a, long b) {
  return a * 1000 + b;
}

static void play_once(void) {
  last_sum = hook_add(calls % 1000, 7);
  last_checksum = checksum("rmem", 4);
  last_setting = get_setting();
  damage(1);
  heal(1);
  if (add_gold(1) > 1000000) {
    player.gold = 0;
    level_up();
  }
  calls++;
}

/* The variable p:watch specs watch: a scan finds it after its magic; the
 * functions' addresses let them check which instruction a hit names. */
static struct {
  char magic[16];
  volatile int value;
  int pad;
  volatile unsigned long long writes; /* calls of write_value */
  void (*writer)(int);
  int (*reader)(void);
} watched = {"rmem-watched-va", 0, 0, 0, 0, 0};

NOINLINE void write_value(int v) {
  watched.value = v;
}

NOINLINE int read_value(void) {
  return watched.value;
}

static void pause_1ms(void);
static unsigned long long now_ms(void);

static void write_for_a_while(long per_ms) {
  int i = 0;
  unsigned long long start = now_ms(), done = 0;
  if (per_ms == 0)
    for (;;) {
      write_value(i++);
      watched.writes++;
    }
  for (;;) {
    long k;
    for (k = 0; k < per_ms; k++) {
      write_value(i++);
      watched.writes++;
    }
    read_value();
    /* a batch per millisecond since the start, late ones caught up (watched
     * writes cost microseconds each), but never more than 100 ms of them */
    if (++done + 100 < now_ms() - start)
      done = now_ms() - start - 100;
    if (done >= now_ms() - start)
      pause_1ms();
  }
}

#ifdef _WIN32
static void pause_1ms(void) {
  Sleep(1);
}

static unsigned long long now_ms(void) {
  return GetTickCount64();
}

static DWORD WINAPI writer(LPVOID arg) {
  write_for_a_while((long)(size_t)arg);
  return 0;
}

/* the writer is created after the wait, not merely woken */
static DWORD WINAPI late_writer(LPVOID arg) {
  Sleep((DWORD)(size_t)arg);
  return CreateThread(NULL, 0, writer, (LPVOID)1, 0, NULL) == NULL;
}

static DWORD WINAPI player_thread(LPVOID arg) {
  (void)arg;
  for (;;) {
    play_once();
    Sleep(0);
  }
  return 0;
}

static DWORD WINAPI killer(LPVOID arg) {
  Sleep((DWORD)(size_t)arg);
  TerminateProcess(GetCurrentProcess(), 137);
  return 0;
}

static DWORD WINAPI counter(LPVOID arg) {
  (void)arg;
  for (;;) {
    countdown -= 1;
    Sleep(10);
  }
  return 0;
}

static DWORD WINAPI ticker(LPVOID arg) {
  (void)arg;
  for (;;) {
    tick();
    Sleep(1);
  }
  return 0;
}
#else
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>

static int allow_all_seccomp(void) {
  struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  struct sock_fprog prog = {1, &allow};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}
#endif

static void *busy(void *arg) {
  volatile unsigned long n = 0;
  (void)arg;
  for (;;)
    n++;
  return NULL;
}

static void *ticker(void *arg) {
  struct timespec ts = {0, 1000000};
  (void)arg;
  for (;;) {
    tick();
    nanosleep(&ts, NULL);
  }
  return NULL;
}

static void *player_thread(void *arg) {
  (void)arg;
  for (;;) {
    play_once();
    sched_yield();
  }
  return NULL;
}

static void *counter(void *arg) {
  struct timespec ts = {0, 10000000};
  (void)arg;
  for (;;) {
    countdown -= 1;
    nanosleep(&ts, NULL);
  }
  return NULL;
}

static void *killer(void *arg) {
  long ms = (long)(size_t)arg;
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = ms % 1000 * 1000000L;
  nanosleep(&ts, NULL);
  kill(getpid(), SIGKILL);
  return NULL;
}

static int commands(void);

static void *commands_thread(void *arg) {
  (void)arg;
  exit(commands());
}

static void pause_1ms(void) {
  struct timespec ts = {0, 1000000};
  nanosleep(&ts, NULL);
}

static unsigned long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000;
}

static void *writer(void *arg) {
  write_for_a_while((long)(size_t)arg);
  return NULL;
}

static void *late_writer(void *arg) {
  long ms = (long)(size_t)arg;
  pthread_t th;
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = ms % 1000 * 1000000L;
  nanosleep(&ts, NULL);
  /* the writer is created after the wait, not merely woken */
  pthread_create(&th, NULL, writer, (void *)1);
  return NULL;
}

/* "churn N": N threads one after another, each writing the variable once */
static void *write_once(void *arg) {
  write_value((int)(size_t)arg);
  watched.writes++;
  return NULL;
}

static void churn(long n) {
  long k;
  for (k = 0; k < n; k++) {
    pthread_t th;
    if (pthread_create(&th, NULL, write_once, (void *)(size_t)k) == 0)
      pthread_join(th, NULL);
  }
}

static void *sleeper(void *arg) {
  struct timespec ts = {0, 1000000};
  (void)arg;
  for (;;)
    nanosleep(&ts, NULL);
  return NULL;
}
#endif

/* --chain: the root of the chain and a decoy, in the program's static data */
void *volatile chain_root, *volatile decoy_root;

/* Heap blocks at addresses that differ from run to run: a random number of
 * random-sized blocks first. B lies at a random place in a block of its own
 * (2 MiB: a mapping of its own under glibc and Wine), so that no pointer of
 * the allocator's lands within a scan's reach below the value. */
static int build_chain(void) {
  char *a, *big, *b, *decoy;
  int i, n;
  /* two targets started in one second must differ: the pid is spread out */
  srand((unsigned)getpid() * 2654435761u ^ (unsigned)time(NULL));
  n = 1 + rand() % 64;
  for (i = 0; i < n; i++)
    if (malloc((size_t)(16 + rand() % 4096)) == NULL)
      return 0;
  a = (char *)calloc(1, 0x100);
  big = (char *)calloc(1, (size_t)2 << 20);
  decoy = (char *)calloc(1, 0x100);
  if (a == NULL || big == NULL || decoy == NULL)
    return 0;
  b = big + 0x400 + 8 * (rand() % 382); /* the value within 0x1000 of big */
  memcpy(a + 0x48, &b, sizeof b);
  /* two halves, so that the value is in neither the code nor the stack */
  ((volatile unsigned *)(b + 0x10))[0] = 0x00C0FFEEu;
  ((volatile unsigned *)(b + 0x10))[1] = 0x5EED5EEDu;
  memcpy(decoy + 0x8, &b, sizeof b);      /* a second chain, as stable */
  memcpy(decoy + 0x10, &big, sizeof big); /* a chain that holds in one run */
  memcpy(decoy + 0x20, &decoy, sizeof decoy);
  chain_root = a;
  decoy_root = decoy;
  return 1;
}

#ifdef __linux__
static int wait_epoll; /* --wait epoll */
#endif

/* Waits until standard input is readable; 0 if epoll_wait saw EINTR. */
static int input_ready(void) {
#ifdef __linux__
  static int ep = -1;
  struct epoll_event ev;
  if (!wait_epoll)
    return 1;
  if (ep < 0) {
    ev.events = EPOLLIN;
    ev.data.fd = 0;
    if ((ep = epoll_create1(0)) < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) != 0)
      exit(6);
  }
  while (epoll_wait(ep, &ev, 1, -1) != 1)
    if (errno == EINTR)
      return 0;
#endif
  return 1;
}

/* The --until-eof loop: returns the exit code. */
static int commands(void) {
  char line[512];
  for (;;) {
    if (!input_ready())
      return 99;
    if (!fgets(line, sizeof line, stdin))
      return 0;
    if (strncmp(line, "exit ", 5) == 0)
      return atoi(line + 5);
    if (strncmp(line, "hit ", 4) == 0)
      health -= atoi(line + 4);
#ifndef _WIN32
    if (strncmp(line, "churn ", 6) == 0)
      churn(atol(line + 6));
    if (strncmp(line, "exec ", 5) == 0) {
      char *path = strtok(line + 5, " \n"), *arg = strtok(NULL, " \n");
      if (path)
        execl(path, path, arg, (char *)NULL);
      return 7;
    }
#endif
  }
}

int main(int argc, char **argv) {
  int i, until_eof = 0;
#ifndef _WIN32
  int main_exits = 0, wait_signal = 0;
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
#endif
#ifdef RMEM_TARGET_SHIFT
  /* more code at the start of .text (main comes first there): everything after it moves */
  if (argc > 100)
    return shift_code(argc) + shift_code(argc * 3);
#endif
  watched.magic[15] = 'r'; /* the magic is in memory once, not in the initialiser's copy too */
  watched.writer = write_value;
  watched.reader = read_value;
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--until-eof") == 0) {
      until_eof = 1;
    } else if ((strcmp(argv[i], "--writer") == 0 || strcmp(argv[i], "--spawn-writer-after") == 0) &&
               i + 1 < argc) {
      int late = argv[i][2] == 's';
      size_t n = (size_t)atol(argv[++i]);
#ifdef _WIN32
      if (CreateThread(NULL, 0, late ? late_writer : writer, (LPVOID)n, 0, NULL) == NULL)
        return 4;
#else
      pthread_t th;
      if (pthread_create(&th, NULL, late ? late_writer : writer, (void *)n) != 0)
        return 4;
#endif
    } else if (strcmp(argv[i], "--health") == 0 && i + 1 < argc) {
      health = atoi(argv[++i]);
#ifdef __linux__
    } else if (strcmp(argv[i], "--wait") == 0 && i + 1 < argc) {
      i++;
      wait_epoll = strcmp(argv[i], "epoll") == 0;
      wait_signal = strcmp(argv[i], "sigwaitinfo") == 0;
      /* blocked from the start: a SIGUSR1 sent once ready is waited for */
      if (wait_signal)
        sigprocmask(SIG_BLOCK, &usr1, NULL);
    } else if (strcmp(argv[i], "--main-exits") == 0) {
      main_exits = 1;
#endif
    } else if (strcmp(argv[i], "--tick") == 0) {
#ifdef _WIN32
      if (CreateThread(NULL, 0, ticker, NULL, 0, NULL) == NULL)
        return 4;
#else
      pthread_t th;
      if (pthread_create(&th, NULL, ticker, NULL) != 0)
        return 4;
#endif
    } else if (strcmp(argv[i], "--chain") == 0) {
      if (!build_chain())
        return 4;
    } else if (strcmp(argv[i], "--calls") == 0 && i + 1 < argc) {
      int n = atoi(argv[++i]), t;
      for (t = 0; t < n; t++) {
#ifdef _WIN32
        if (CreateThread(NULL, 0, player_thread, NULL, 0, NULL) == NULL)
          return 4;
#else
        pthread_t th;
        if (pthread_create(&th, NULL, player_thread, NULL) != 0)
          return 4;
#endif
      }
    } else if (strcmp(argv[i], "--countdown") == 0 && i + 1 < argc) {
      FILE *f = fopen(argv[++i], "w");
      if (f == NULL)
        return 2;
      fprintf(f, "%p\n", (void *)&countdown);
      fclose(f);
#ifdef _WIN32
      if (CreateThread(NULL, 0, counter, NULL, 0, NULL) == NULL)
        return 4;
#else
      {
        pthread_t th;
        if (pthread_create(&th, NULL, counter, NULL) != 0)
          return 4;
      }
#endif
    } else if (strcmp(argv[i], "--die-after") == 0 && i + 1 < argc) {
      size_t ms = (size_t)atol(argv[++i]);
#ifdef _WIN32
      if (CreateThread(NULL, 0, killer, (LPVOID)ms, 0, NULL) == NULL)
        return 4;
#else
      pthread_t th;
      if (pthread_create(&th, NULL, killer, (void *)ms) != 0)
        return 4;
#endif
    } else if (strcmp(argv[i], "--pid-file") == 0 && i + 1 < argc) {
      FILE *f = fopen(argv[++i], "w");
      if (f == NULL)
        return 2;
      fprintf(f, "%lu\n", (unsigned long)getpid());
      fclose(f);
#ifdef _WIN32
    } else if (strcmp(argv[i], "--ready-event") == 0 && i + 1 < argc) {
      HANDLE ev = OpenEventA(EVENT_MODIFY_STATE, FALSE, argv[++i]);
      if (ev == NULL || !SetEvent(ev))
        return 3;
      CloseHandle(ev);
#else
    } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      int n = atoi(argv[++i]), t;
      for (t = 0; t < n; t++) {
        pthread_t th;
        if (pthread_create(&th, NULL, t == 0 ? busy : sleeper, NULL) != 0)
          return 4;
      }
#ifdef __linux__
    } else if (strcmp(argv[i], "--seccomp") == 0) {
      if (allow_all_seccomp())
        return 5;
#endif
    } else if (strcmp(argv[i], "--ready-fd") == 0 && i + 1 < argc) {
      int fd = atoi(argv[++i]);
      if (write(fd, "ready\n", 6) != 6)
        return 3;
      close(fd);
#endif
    } else {
      fprintf(stderr, "usage: %s [--ready-event NAME | --ready-fd N] [--pid-file PATH] [--threads N] "
                      "[--seccomp] [--tick] [--countdown PATH] [--die-after MS] [--until-eof] [--chain] "
                      "[--wait sigwaitinfo|epoll] [--main-exits] [--calls N]"
                      " [--health N] [--writer N] [--spawn-writer-after MS]\n",
              argv[0]);
      return 1;
    }
  }
  if (until_eof) {
#ifndef _WIN32
    if (wait_signal) {
      int sig = sigwaitinfo(&usr1, NULL);
      return sig < 0 && errno == EINTR ? 99 : sig;
    }
    if (main_exits) {
      pthread_t th;
      if (pthread_create(&th, NULL, commands_thread, NULL) != 0)
        return 4;
      pthread_exit(NULL);
    }
#endif
    return commands();
  }
  for (;;)
#ifdef _WIN32
    Sleep(INFINITE);
#else
    pause();
#endif
}
