/* Standard streams on a terminal: after replay they are on the replaying
 * terminal (a different one), still terminals, and output reaches it. */
#include "zdtm.h"

int main(int argc, char **argv) {
  zdtm_init(argc, argv);
  char before[256] = "";
  if (!isatty(1) || ttyname_r(1, before, sizeof before) != 0) {
    printf("FAIL: stdout is not a terminal to begin with\n");
    return 1;
  }
  zdtm_ready();
  zdtm_wait_go();
  char after[256] = "";
  ZDTM_CHECK(isatty(0) && isatty(1) && isatty(2), "standard streams are no longer terminals");
  ZDTM_CHECK(ttyname_r(1, after, sizeof after) == 0, "no terminal name");
  ZDTM_CHECK(strcmp(before, after) != 0, "still on the old terminal %s", before);
  fprintf(stderr, "stderr reaches %s\n", after);
  return zdtm_verdict();
}
