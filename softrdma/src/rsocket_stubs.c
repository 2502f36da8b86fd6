/* softrdma's librdmacm: the rsocket API (RDMACM_1.0) is part of the ABI that
 * programs linked against Debian's librdmacm bind to, but softrdma does not
 * implement rsockets. rsocket() refuses with EAFNOSUPPORT, so no descriptor
 * ever names an rsocket and every call on one fails with EBADF. rpoll and
 * rselect on ordinary descriptors are plain poll and select, which is what
 * they are for non-rsocket descriptors. */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <sys/select.h>
#include <rdma/rsocket.h>

#define SR_EXPORT __attribute__((visibility("default")))

SR_EXPORT int rsocket(int domain, int type, int protocol) {
  (void)domain; (void)type; (void)protocol;
  errno = EAFNOSUPPORT;
  return -1;
}

#define NO_RSOCKET(ret, name, ...) \
  SR_EXPORT ret name(__VA_ARGS__) { errno = EBADF; return (ret)-1; }

NO_RSOCKET(int, rbind, int s, const struct sockaddr *a, socklen_t l)
NO_RSOCKET(int, rlisten, int s, int b)
NO_RSOCKET(int, raccept, int s, struct sockaddr *a, socklen_t *l)
NO_RSOCKET(int, rconnect, int s, const struct sockaddr *a, socklen_t l)
NO_RSOCKET(int, rshutdown, int s, int how)
NO_RSOCKET(int, rclose, int s)
NO_RSOCKET(ssize_t, rrecv, int s, void *b, size_t n, int f)
NO_RSOCKET(ssize_t, rrecvfrom, int s, void *b, size_t n, int f, struct sockaddr *a, socklen_t *l)
NO_RSOCKET(ssize_t, rrecvmsg, int s, struct msghdr *m, int f)
NO_RSOCKET(ssize_t, rsend, int s, const void *b, size_t n, int f)
NO_RSOCKET(ssize_t, rsendto, int s, const void *b, size_t n, int f, const struct sockaddr *a, socklen_t l)
NO_RSOCKET(ssize_t, rsendmsg, int s, const struct msghdr *m, int f)
NO_RSOCKET(ssize_t, rread, int s, void *b, size_t n)
NO_RSOCKET(ssize_t, rreadv, int s, const struct iovec *v, int n)
NO_RSOCKET(ssize_t, rwrite, int s, const void *b, size_t n)
NO_RSOCKET(ssize_t, rwritev, int s, const struct iovec *v, int n)
NO_RSOCKET(int, rgetpeername, int s, struct sockaddr *a, socklen_t *l)
NO_RSOCKET(int, rgetsockname, int s, struct sockaddr *a, socklen_t *l)
NO_RSOCKET(int, rsetsockopt, int s, int lv, int o, const void *v, socklen_t l)
NO_RSOCKET(int, rgetsockopt, int s, int lv, int o, void *v, socklen_t *l)
NO_RSOCKET(off_t, riomap, int s, void *b, size_t n, int p, int f, off_t o)
NO_RSOCKET(int, riounmap, int s, void *b, size_t n)

SR_EXPORT int rfcntl(int s, int cmd, ...) {
  (void)s; (void)cmd;
  errno = EBADF;
  return -1;
}

SR_EXPORT size_t riowrite(int s, const void *b, size_t n, off_t o, int f) {
  (void)s; (void)b; (void)n; (void)o; (void)f;
  errno = EBADF;
  return 0;
}

SR_EXPORT int rpoll(struct pollfd *fds, nfds_t nfds, int timeout) { return poll(fds, nfds, timeout); }

SR_EXPORT int rselect(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *t) {
  return select(nfds, r, w, e, t);
}
