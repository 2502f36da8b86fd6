/* One RC connection, one direction: the client keeps SENDing numbered
 * messages (a window of signaled sends in flight) until the file GO exists,
 * then an end message with the count; the server checks that every number
 * arrives once, in order, and that the count matches.  The server is a slow
 * consumer: it empties its CQ (reposting each receive) every 50 ms, so that
 * the client's last sends mostly wait for receives it has yet to repost, and
 * their completions then sit in the server's CQ for up to 50 ms.
 * With PAUSE, once that file exists the client waits for its sends to
 * complete, posts TAIL unsignaled sends (more than the server's receive
 * queue: most wait for reposts), says "paused after N sends" and waits until
 * PAUSE is gone; a signaled send then retires them (unsignaled sends after
 * the last signaled one, which a capture must see complete).  A capture taken meanwhile must find every send the client's
 * backend completed among the receives the server's layer took (the job-wide
 * drain barrier, capture/verbs/README.md).
 *   drain server PORT GO          drain client PORT GO HOST [PAUSE]
 * Needs a RoCE device with GID index 1 (softrdma --mode roce). */
#include <arpa/inet.h>
#include <infiniband/verbs.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SLOT 4096
#define RQ 256
#define WINDOW 32
#define NSLOT 256 /* >= RQ */
#define TAIL 4096
#define MSGS 8192 /* 16-byte messages in flight at most: > TAIL + WINDOW */
#define END UINT64_MAX

struct info {
  uint32_t qpn, psn;
  uint8_t gid[16];
};

static void die(const char* what) {
  fprintf(stderr, "drain: %s\n", what);
  exit(1);
}

static int xchg(int server, int port, const char* host, struct info* mine, struct info* theirs) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (server) {
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr*)&a, sizeof a) || listen(fd, 1)) die("cannot listen");
    int c = accept(fd, NULL, NULL);
    close(fd);
    fd = c;
  } else {
    inet_pton(AF_INET, host, &a.sin_addr);
    int i;
    for (i = 0; i < 500 && connect(fd, (struct sockaddr*)&a, sizeof a) != 0; i++) {
      close(fd);
      usleep(20000);
      fd = socket(AF_INET, SOCK_STREAM, 0);
    }
    if (i == 500) die("cannot connect to the server");
  }
  if (fd < 0 || write(fd, mine, sizeof *mine) != sizeof *mine || recv(fd, theirs, sizeof *theirs, MSG_WAITALL) != sizeof *theirs)
    die("cannot exchange QP numbers");
  return fd;
}

int main(int argc, char** argv) {
  if (argc < 4) return 2;
  int server = strcmp(argv[1], "server") == 0;
  int port = atoi(argv[2]);
  const char* go = argv[3];
  struct ibv_device** l = ibv_get_device_list(NULL);
  if (!l || !l[0]) die("no device");
  struct ibv_context* ctx = ibv_open_device(l[0]);
  struct ibv_pd* pd = ctx ? ibv_alloc_pd(ctx) : NULL;
  static char buf[NSLOT * SLOT] __attribute__((aligned(4096)));
  struct ibv_mr* mr = pd ? ibv_reg_mr(pd, buf, sizeof buf, IBV_ACCESS_LOCAL_WRITE) : NULL;
  struct ibv_cq* cq = ctx ? ibv_create_cq(ctx, 1024, NULL, NULL, 0) : NULL;
  if (!mr || !cq) die("cannot make the PD, MR or CQ");
  struct ibv_qp_init_attr ia = {.send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
                                .cap = {.max_send_wr = MSGS, .max_recv_wr = RQ, .max_send_sge = 1, .max_recv_sge = 1}};
  struct ibv_qp* qp = ibv_create_qp(pd, &ia);
  if (!qp) die("cannot create the QP");
  struct ibv_qp_attr at = {.qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = 1, .qp_access_flags = 0};
  if (ibv_modify_qp(qp, &at, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) die("INIT");
  if (server)
    for (int i = 0; i < RQ; i++) {
      struct ibv_sge sg = {(uintptr_t)(buf + i * SLOT), SLOT, mr->lkey};
      struct ibv_recv_wr w = {.wr_id = i, .sg_list = &sg, .num_sge = 1}, *bad;
      if (ibv_post_recv(qp, &w, &bad)) die("post_recv");
    }
  union ibv_gid gid;
  if (ibv_query_gid(ctx, 1, 1, &gid)) die("no GID 1");
  struct info mine = {.qpn = qp->qp_num, .psn = (uint32_t)(getpid() & 0xffffff)}, theirs;
  memcpy(mine.gid, gid.raw, 16);
  int sock = xchg(server, port, argc > 4 ? argv[4] : "127.0.0.1", &mine, &theirs);
  memset(&at, 0, sizeof at);
  at.qp_state = IBV_QPS_RTR;
  at.path_mtu = IBV_MTU_1024;
  at.dest_qp_num = theirs.qpn;
  at.rq_psn = theirs.psn;
  at.max_dest_rd_atomic = 1;
  at.min_rnr_timer = 1;
  at.ah_attr.is_global = 1;
  memcpy(at.ah_attr.grh.dgid.raw, theirs.gid, 16);
  at.ah_attr.grh.sgid_index = 1;
  at.ah_attr.grh.hop_limit = 1;
  at.ah_attr.port_num = 1;
  if (ibv_modify_qp(qp, &at, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                                 IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
    die("RTR");
  at.qp_state = IBV_QPS_RTS;
  at.timeout = 14;
  at.retry_cnt = 7;
  at.rnr_retry = 7;
  at.sq_psn = mine.psn;
  at.max_rd_atomic = 1;
  if (ibv_modify_qp(qp, &at, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                                 IBV_QP_MAX_QP_RD_ATOMIC))
    die("RTS");
  // Both sides in RTS before the first send.
  char c = 0;
  if (write(sock, &c, 1) != 1 || read(sock, &c, 1) != 1) die("sync");
  printf("READY %s\n", server ? "server" : "client");
  fflush(stdout);

  struct ibv_wc wc[16];
  if (server) {
    uint64_t expect = 0, total = ~0ull;
    while (total == ~0ull) {
      int n = ibv_poll_cq(cq, 16, wc);
      if (n < 0) die("poll_cq");
      for (int i = 0; i < n; i++) {
        if (wc[i].status != IBV_WC_SUCCESS || wc[i].opcode != IBV_WC_RECV) {
          fprintf(stderr, "drain: receive completion %s (opcode %d)\n", ibv_wc_status_str(wc[i].status), wc[i].opcode);
          return 1;
        }
        uint64_t* m = (uint64_t*)(buf + wc[i].wr_id * SLOT);
        if (m[0] == END) {
          total = m[1];
          continue;
        }
        if (m[0] != expect) {
          fprintf(stderr, "drain: message %llu arrived where %llu was expected\n", (unsigned long long)m[0],
                  (unsigned long long)expect);
          return 1;
        }
        expect++;
        struct ibv_sge sg = {(uintptr_t)m, SLOT, mr->lkey};
        struct ibv_recv_wr w = {.wr_id = wc[i].wr_id, .sg_list = &sg, .num_sge = 1}, *bad;
        if (ibv_post_recv(qp, &w, &bad)) die("post_recv");
      }
      if (n == 0) usleep(50000);
    }
    if (expect != total) {
      fprintf(stderr, "drain: %llu messages received, the client sent %llu\n", (unsigned long long)expect,
              (unsigned long long)total);
      return 1;
    }
    printf("received %llu\nPASS\n", (unsigned long long)expect);
  } else {
    const char* pause = argc > 5 ? argv[5] : NULL;
    uint64_t next = 0, done = 0;
    int out = 0, stop = 0, paused = 0;
    for (;;) {
      while (out < WINDOW && !stop && paused != 1) {
        if ((next & 255) == 0 && access(go, F_OK) == 0) {
          stop = 1;
          break;
        }
        if ((next & 255) == 0 && pause && !paused && access(pause, F_OK) == 0) {
          paused = 1;
          break;
        }
        uint64_t* m = (uint64_t*)(buf + (next % MSGS) * 16);
        m[0] = next;
        struct ibv_sge sg = {(uintptr_t)m, 16, mr->lkey};
        struct ibv_send_wr w = {.wr_id = next, .sg_list = &sg, .num_sge = 1, .opcode = IBV_WR_SEND,
                                .send_flags = IBV_SEND_SIGNALED}, *bad;
        if (ibv_post_send(qp, &w, &bad)) die("post_send");
        next++, out++;
      }
      if (stop && out == 0) break;
      if (paused == 1 && out == 0) {
        for (int k = 0; k < TAIL; k++, next++) {
          uint64_t* m = (uint64_t*)(buf + (next % MSGS) * 16);
          m[0] = next;
          struct ibv_sge sg = {(uintptr_t)m, 16, mr->lkey};
          struct ibv_send_wr w = {.wr_id = next, .sg_list = &sg, .num_sge = 1, .opcode = IBV_WR_SEND}, *bad;
          if (ibv_post_send(qp, &w, &bad)) die("post_send (unsignaled)");
        }
        printf("paused after %llu sends\n", (unsigned long long)next);
        fflush(stdout);
        while (access(pause, F_OK) == 0) usleep(10000);
        paused = 2;
        continue;
      }
      int n = ibv_poll_cq(cq, 16, wc);
      if (n < 0) die("poll_cq");
      for (int i = 0; i < n; i++) {
        if (wc[i].status != IBV_WC_SUCCESS) {
          fprintf(stderr, "drain: send completion %s\n", ibv_wc_status_str(wc[i].status));
          return 1;
        }
        out--, done++;
      }
    }
    // The end: its own slot (past every message's).
    uint64_t* m = (uint64_t*)(buf + MSGS * 16);
    m[0] = END, m[1] = next;
    struct ibv_sge sg = {(uintptr_t)m, 16, mr->lkey};
    struct ibv_send_wr w = {.wr_id = END, .sg_list = &sg, .num_sge = 1, .opcode = IBV_WR_SEND,
                            .send_flags = IBV_SEND_SIGNALED}, *bad;
    if (ibv_post_send(qp, &w, &bad)) die("post_send");
    int n;
    while ((n = ibv_poll_cq(cq, 1, wc)) == 0) {
    }
    if (n < 0 || wc[0].status != IBV_WC_SUCCESS) die("the end message failed");
    printf("sent %llu\nPASS\n", (unsigned long long)done);
  }
  // The server reads its last completion before the client goes away.
  if (write(sock, &c, 1) != 1 || read(sock, &c, 1) != 1) die("sync at the end");
  close(sock);
  ibv_destroy_qp(qp);
  ibv_destroy_cq(cq);
  ibv_dereg_mr(mr);
  ibv_dealloc_pd(pd);
  ibv_close_device(ctx);
  ibv_free_device_list(l);
  return 0;
}
