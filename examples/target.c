/*
 * A small program to experiment on: it starts, says it is ready, and then
 * does nothing, so whatever changes in its memory was done from outside.
 *
 *   rmem-target [--ready-event NAME] [--pid-file PATH] [--until-eof]
 *
 * --ready-event NAME  set the named event once started (the test helper)
 * --pid-file PATH     write the pid to PATH once started (the demo)
 * --until-eof         exit 0 when standard input closes; otherwise idle
 *                     until killed
 */
#include <stdio.h>
#include <string.h>
#include <windows.h>

int main(int argc, char **argv) {
  int i, until_eof = 0;
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--until-eof") == 0) {
      until_eof = 1;
    } else if (strcmp(argv[i], "--pid-file") == 0 && i + 1 < argc) {
      FILE *f = fopen(argv[++i], "w");
      if (f == NULL)
        return 2;
      fprintf(f, "%lu\n", (unsigned long)GetCurrentProcessId());
      fclose(f);
    } else if (strcmp(argv[i], "--ready-event") == 0 && i + 1 < argc) {
      HANDLE ev = OpenEventA(EVENT_MODIFY_STATE, FALSE, argv[++i]);
      if (ev == NULL || !SetEvent(ev))
        return 3;
      CloseHandle(ev);
    } else {
      fprintf(stderr, "usage: %s [--ready-event NAME] [--pid-file PATH] [--until-eof]\n",
              argv[0]);
      return 1;
    }
  }
  if (until_eof) {
    while (getchar() != EOF)
      ;
    return 0;
  }
  for (;;)
    Sleep(INFINITE);
}
