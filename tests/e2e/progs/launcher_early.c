/* A library whose constructor, like UCX's libucs, installs a signal handler
 * and sleeps: it runs before libibdbg_capture.so's own constructor, so the
 * capture library's wrappers are called before it has initialised. */
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <time.h>

int launcher_early_ok;

__attribute__((constructor)) static void launcher_early(void) {
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  struct timespec ts = {0, 1000};
  launcher_early_ok = sigaction(SIGURG, &sa, &old) == 0 && nanosleep(&ts, NULL) == 0;
}
