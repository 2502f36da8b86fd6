// softrdma-run [--mode ib|roce] [--ip ADDR] [--lid-table FILE] -- CMD ARGS...
// The standalone form of `ibdbg softrdma`.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launcher.h"

int main(int argc, char** argv) {
  std::string mode = "roce";
  int i = 1;
  for (; i < argc; i++) {
    if (!strcmp(argv[i], "--")) {
      i++;
      break;
    }
    if (!strcmp(argv[i], "--mode") && i + 1 < argc) {
      mode = argv[++i];
    } else if (!strcmp(argv[i], "--ip") && i + 1 < argc) {
      setenv("SOFTRDMA_IP", argv[++i], 1);
    } else if (!strcmp(argv[i], "--lid-table") && i + 1 < argc) {
      setenv("SOFTRDMA_LID_TABLE", argv[++i], 1);
    } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("usage: softrdma-run [--mode ib|roce] [--ip ADDR] [--lid-table FILE] -- CMD ARGS...\n");
      return 0;
    } else {
      break;
    }
  }
  std::vector<std::string> cmd(argv + i, argv + argc);
  return softrdma::RunSoftRdma(mode, cmd);
}
