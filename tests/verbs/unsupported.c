/* Uses an unsupported verbs feature (on-demand paging) twice, then waits for
 * the file named by argv[1] so that the driver can try to capture it.  The
 * verbs layer must report the feature once and refuse the capture. */
#include <infiniband/verbs.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  struct ibv_device** l = ibv_get_device_list(NULL);
  if (!l || !l[0]) return 3;
  struct ibv_context* c = ibv_open_device(l[0]);
  struct ibv_pd* pd = c ? ibv_alloc_pd(c) : NULL;
  if (!pd) return 4;
  static char buf[4096] __attribute__((aligned(4096)));
  for (int i = 0; i < 2; i++) {
    struct ibv_mr* mr = ibv_reg_mr(pd, buf, sizeof buf, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_ON_DEMAND);
    if (mr) ibv_dereg_mr(mr);
  }
  printf("READY\n");
  fflush(stdout);
  while (access(argv[1], F_OK) != 0) usleep(20000);
  ibv_dealloc_pd(pd);
  ibv_close_device(c);
  ibv_free_device_list(l);
  printf("PASS\n");
  return 0;
}
