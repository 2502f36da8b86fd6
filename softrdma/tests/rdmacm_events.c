/* rdma_cm events, checked through the plain librdmacm API (nothing softrdma
 * specific): one process is both server and client on 127.0.0.1, with one
 * non-blocking event channel that is polled like programs do.
 * Usage: rdmacm_events PORT */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <rdma/rdma_cma.h>

static int fails;
#define CHECK(c, ...)                                          \
  do {                                                         \
    if (c) {                                                   \
      printf("ok   " __VA_ARGS__);                             \
    } else {                                                   \
      fails++;                                                 \
      printf("FAIL (line %d) ", __LINE__);                     \
      printf(__VA_ARGS__);                                     \
    }                                                          \
    printf("\n");                                              \
  } while (0)
#define DIE(...)            \
  do {                      \
    printf("FAIL " __VA_ARGS__); \
    printf("\n");           \
    exit(1);                \
  } while (0)

static struct rdma_event_channel *ch;

static int readable(int ms) {
  struct pollfd p = {ch->fd, POLLIN, 0};
  return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

/* The next event: the channel's fd must become readable first. */
static struct rdma_cm_event *next_event(int ms) {
  struct rdma_cm_event *e;
  if (!readable(ms)) DIE("no event within %d ms", ms);
  if (rdma_get_cm_event(ch, &e)) DIE("rdma_get_cm_event: %s", strerror(errno));
  return e;
}

static struct rdma_cm_event *expect(struct rdma_cm_id *id, enum rdma_cm_event_type t) {
  struct rdma_cm_event *e = next_event(10000);
  if (e->id != id || e->event != t)
    DIE("expected %s on %p, got %s (status %d) on %p", rdma_event_str(t), (void *)id,
        rdma_event_str(e->event), e->status, (void *)e->id);
  return e;
}

static struct rdma_cm_id *resolved_client(struct sockaddr_in *dst) {
  struct rdma_cm_id *c;
  if (rdma_create_id(ch, &c, NULL, RDMA_PS_TCP)) DIE("rdma_create_id");
  if (rdma_resolve_addr(c, NULL, (struct sockaddr *)dst, 2000)) DIE("rdma_resolve_addr: %s", strerror(errno));
  rdma_ack_cm_event(expect(c, RDMA_CM_EVENT_ADDR_RESOLVED));
  if (rdma_resolve_route(c, 2000)) DIE("rdma_resolve_route: %s", strerror(errno));
  rdma_ack_cm_event(expect(c, RDMA_CM_EVENT_ROUTE_RESOLVED));
  return c;
}

static struct ibv_pd *pd;
static struct ibv_cq *cq;

static void make_qp(struct rdma_cm_id *id) {
  struct ibv_qp_init_attr a;
  memset(&a, 0, sizeof a);
  a.send_cq = a.recv_cq = cq;
  a.cap.max_send_wr = a.cap.max_recv_wr = 4;
  a.cap.max_send_sge = a.cap.max_recv_sge = 1;
  a.qp_type = IBV_QPT_RC;
  if (rdma_create_qp(id, pd, &a)) DIE("rdma_create_qp: %s", strerror(errno));
}

static struct ibv_qp_attr qp_state(struct rdma_cm_id *id) {
  struct ibv_qp_attr a;
  struct ibv_qp_init_attr i;
  memset(&a, 0, sizeof a);
  ibv_query_qp(id->qp, &a, IBV_QP_STATE | IBV_QP_DEST_QPN | IBV_QP_ACCESS_FLAGS, &i);
  return a;
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 24999;
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

  ch = rdma_create_event_channel();
  if (!ch) DIE("rdma_create_event_channel: %s", strerror(errno));
  fcntl(ch->fd, F_SETFL, fcntl(ch->fd, F_GETFL) | O_NONBLOCK);
  struct rdma_cm_event *e;
  CHECK(rdma_get_cm_event(ch, &e) == -1 && errno == EAGAIN, "empty non-blocking channel: EAGAIN");
  CHECK(!readable(0), "empty channel: fd not readable");

  struct rdma_cm_id *l;
  static char lctx[] = "listener";
  if (rdma_create_id(ch, &l, lctx, RDMA_PS_TCP)) DIE("rdma_create_id");
  if (rdma_bind_addr(l, (struct sockaddr *)&sin)) DIE("rdma_bind_addr: %s", strerror(errno));
  if (rdma_listen(l, 4)) DIE("rdma_listen: %s", strerror(errno));
  CHECK(rdma_get_src_port(l) == htons(port) && rdma_get_local_addr(l)->sa_family == AF_INET,
        "listener: source port %d", ntohs(rdma_get_src_port(l)));
  CHECK(l->verbs != NULL, "listener bound to 127.0.0.1 has a device");

  struct rdma_cm_id *c1;
  if (rdma_create_id(ch, &c1, NULL, RDMA_PS_TCP)) DIE("rdma_create_id");
  if (rdma_resolve_addr(c1, NULL, (struct sockaddr *)&sin, 2000)) DIE("rdma_resolve_addr");
  CHECK(readable(10000), "ADDR_RESOLVED makes the fd readable");
  e = expect(c1, RDMA_CM_EVENT_ADDR_RESOLVED);
  CHECK(e->status == 0 && c1->verbs, "ADDR_RESOLVED, status 0, id has a device");
  rdma_ack_cm_event(e);
  CHECK(!readable(0), "fd not readable once the event is taken");
  if (rdma_resolve_route(c1, 2000)) DIE("rdma_resolve_route");
  rdma_ack_cm_event(expect(c1, RDMA_CM_EVENT_ROUTE_RESOLVED));
  CHECK(c1->route.num_paths == 1 && c1->route.path_rec, "ROUTE_RESOLVED with one path record");
  CHECK(rdma_get_peer_addr(c1)->sa_family == AF_INET && rdma_get_dst_port(c1) == htons(port),
        "client's peer address is the listener's");

  pd = ibv_alloc_pd(c1->verbs);
  cq = ibv_create_cq(c1->verbs, 16, NULL, NULL, 0);
  if (!pd || !cq) DIE("pd/cq");

  /* connect, reject with private data */
  make_qp(c1);
  struct rdma_conn_param cp;
  memset(&cp, 0, sizeof cp);
  cp.private_data = "hello";
  cp.private_data_len = 6;
  cp.responder_resources = 1;
  cp.initiator_depth = 1;
  cp.retry_count = 7;
  cp.rnr_retry_count = 7;
  if (rdma_connect(c1, &cp)) DIE("rdma_connect: %s", strerror(errno));
  e = next_event(10000);
  CHECK(e->event == RDMA_CM_EVENT_CONNECT_REQUEST && e->listen_id == l && e->id != l,
        "CONNECT_REQUEST on the listener, with a new id");
  struct rdma_cm_id *child = e->id;
  CHECK(e->param.conn.private_data_len >= 6 && !memcmp(e->param.conn.private_data, "hello", 6),
        "request carries the private data (%d bytes)", e->param.conn.private_data_len);
  CHECK(child->context == lctx && child->verbs, "new id inherits the listener's context and has a device");
  CHECK(rdma_get_dst_port(child) == rdma_get_src_port(c1) && rdma_get_src_port(child) == htons(port),
        "new id's ports mirror the client's");
  rdma_ack_cm_event(e);
  CHECK(rdma_reject(child, "nope", 5) == 0, "rdma_reject");
  e = expect(c1, RDMA_CM_EVENT_REJECTED);
  CHECK(e->status == 28 && e->param.conn.private_data_len >= 5 && !memcmp(e->param.conn.private_data, "nope", 5),
        "REJECTED: consumer reason 28 and the private data (status %d)", e->status);
  rdma_ack_cm_event(e);
  CHECK(qp_state(c1).qp_state == IBV_QPS_ERR, "rejected client's QP is in ERR");
  rdma_destroy_id(child);
  rdma_destroy_qp(c1);
  rdma_destroy_id(c1);

  /* connect, accept with private data, exchange a message */
  struct rdma_cm_id *c2 = resolved_client(&sin);
  make_qp(c2);
  cp.private_data = "hi2";
  cp.private_data_len = 4;
  if (rdma_connect(c2, &cp)) DIE("rdma_connect");
  e = next_event(10000);
  if (e->event != RDMA_CM_EVENT_CONNECT_REQUEST) DIE("no CONNECT_REQUEST: %s", rdma_event_str(e->event));
  child = e->id;
  CHECK(e->param.conn.responder_resources == 1 && e->param.conn.initiator_depth == 1 &&
            e->param.conn.qp_num == c2->qp->qp_num,
        "request: resources, depth and the client's QPN");
  rdma_ack_cm_event(e);
  make_qp(child);
  struct ibv_mr *mr;
  static char rbuf[64], sbuf[64] = "data over the connection";
  mr = ibv_reg_mr(pd, rbuf, sizeof rbuf, IBV_ACCESS_LOCAL_WRITE);
  struct ibv_mr *smr = ibv_reg_mr(pd, sbuf, sizeof sbuf, 0);
  if (!mr || !smr) DIE("reg_mr");
  struct ibv_sge rs = {(uintptr_t)rbuf, sizeof rbuf, mr->lkey};
  struct ibv_recv_wr rw = {.wr_id = 1, .sg_list = &rs, .num_sge = 1}, *brw;
  if (ibv_post_recv(child->qp, &rw, &brw)) DIE("post_recv");
  memset(&cp, 0, sizeof cp);
  cp.private_data = "ok!";
  cp.private_data_len = 4;
  cp.responder_resources = 1;
  cp.initiator_depth = 1;
  cp.rnr_retry_count = 7;
  if (rdma_accept(child, &cp)) DIE("rdma_accept: %s", strerror(errno));
  int got_c = 0, got_s = 0;
  for (int i = 0; i < 2; i++) {
    e = next_event(10000);
    if (e->event == RDMA_CM_EVENT_ESTABLISHED && e->id == c2) {
      got_c = 1;
      CHECK(e->param.conn.private_data_len >= 4 && !memcmp(e->param.conn.private_data, "ok!", 4) &&
                e->param.conn.qp_num == child->qp->qp_num,
            "client ESTABLISHED with the reply's private data and the server's QPN");
    } else if (e->event == RDMA_CM_EVENT_ESTABLISHED && e->id == child) {
      got_s = 1;
    } else {
      DIE("unexpected %s", rdma_event_str(e->event));
    }
    rdma_ack_cm_event(e);
  }
  CHECK(got_c && got_s, "both sides ESTABLISHED");
  struct ibv_qp_attr qa = qp_state(c2), qb = qp_state(child);
  CHECK(qa.qp_state == IBV_QPS_RTS && qb.qp_state == IBV_QPS_RTS, "both QPs in RTS");
  CHECK(qa.dest_qp_num == child->qp->qp_num && qb.dest_qp_num == c2->qp->qp_num, "QPs point at each other");
  CHECK((qb.qp_access_flags & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ)) ==
            (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ),
        "responder resources grant remote read and write");
  struct ibv_sge ss = {(uintptr_t)sbuf, sizeof sbuf, smr->lkey};
  struct ibv_send_wr sw = {.wr_id = 2, .sg_list = &ss, .num_sge = 1, .opcode = IBV_WR_SEND,
                           .send_flags = IBV_SEND_SIGNALED}, *bsw;
  if (ibv_post_send(c2->qp, &sw, &bsw)) DIE("post_send");
  int done = 0;
  for (int spin = 0; done < 2 && spin < 2000000; spin++) {
    struct ibv_wc wc;
    int n = ibv_poll_cq(cq, 1, &wc);
    if (n == 1) {
      if (wc.status != IBV_WC_SUCCESS) DIE("completion %s", ibv_wc_status_str(wc.status));
      done++;
    }
  }
  CHECK(done == 2 && !strcmp(rbuf, sbuf), "a SEND travels over the connected QPs");

  /* disconnect: one DISCONNECTED per side, then TIMEWAIT_EXIT */
  if (rdma_disconnect(c2)) DIE("rdma_disconnect: %s", strerror(errno));
  rdma_ack_cm_event(expect(child, RDMA_CM_EVENT_DISCONNECTED));
  CHECK(1, "server DISCONNECTED by the client's disconnect");
  CHECK(qp_state(c2).qp_state == IBV_QPS_ERR, "rdma_disconnect moved the client's QP to ERR");
  if (rdma_disconnect(child)) DIE("rdma_disconnect: %s", strerror(errno));
  int disc = 0, tw = 0;
  for (int i = 0; i < 3; i++) {
    e = next_event(15000);
    if (e->event == RDMA_CM_EVENT_DISCONNECTED && e->id == c2) disc++;
    else if (e->event == RDMA_CM_EVENT_TIMEWAIT_EXIT && (e->id == c2 || e->id == child)) tw++;
    else DIE("unexpected %s", rdma_event_str(e->event));
    rdma_ack_cm_event(e);
  }
  CHECK(disc == 1 && tw == 2, "client DISCONNECTED, TIMEWAIT_EXIT on both ids");

  ibv_dereg_mr(mr);
  ibv_dereg_mr(smr);
  rdma_destroy_qp(child);
  rdma_destroy_qp(c2);
  rdma_destroy_id(child);
  rdma_destroy_id(c2);
  rdma_destroy_id(l);
  ibv_destroy_cq(cq);
  ibv_dealloc_pd(pd);
  rdma_destroy_event_channel(ch);
  printf("rdmacm_events: %s\n", fails ? "FAILED" : "all passed");
  return fails ? 1 : 0;
}
