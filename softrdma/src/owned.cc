// softrdma: what the library owns inside the application's process, for a
// checkpoint tool that must tell the device's state from the application's
// (ibdbg's verbs layer, capture/verbs/README.md).  Exported under the private
// version node SOFTRDMA_PRIVATE_1 (libibverbs.map): not part of the verbs
// ABI, found with dlvsym by those who know it.
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

namespace softrdma {
namespace {
// One bit per descriptor number below kOwnedMax: set between the call that
// made the descriptor and its close.  Higher numbers are not tracked (and
// softrdma_owned_fds says so by returning -1).
constexpr int kOwnedMax = 1 << 16;
std::atomic<uint64_t> g_owned[kOwnedMax / 64];
std::atomic<bool> g_untracked{false};
}  // namespace

std::atomic<int> g_progress_tid{0};

void OwnFd(int fd) {
  if (fd < 0) return;
  if (fd >= kOwnedMax) {
    g_untracked.store(true, std::memory_order_relaxed);
    return;
  }
  g_owned[fd / 64].fetch_or(1ull << (fd % 64), std::memory_order_release);
}

void CloseOwned(int fd) {
  if (fd < 0) return;
  // Cleared first: once closed, the number may be the application's at once.
  if (fd < kOwnedMax) g_owned[fd / 64].fetch_and(~(1ull << (fd % 64)), std::memory_order_release);
  close(fd);
}

}  // namespace softrdma

using namespace softrdma;

// The descriptors softrdma has open (its epoll and wake descriptors,
// listening sockets, every TCP connection, including those its progress
// thread accepted, the pipes behind contexts' async fds and completion
// channels).  Writes at most max of them; returns how many there are, or -1
// when some are past what is tracked.  Takes no lock.
SR_EXPORT int softrdma_owned_fds(int* fds, int max) {
  if (g_untracked.load(std::memory_order_relaxed)) return -1;
  int n = 0;
  for (int i = 0; i < kOwnedMax / 64; i++) {
    uint64_t w = g_owned[i].load(std::memory_order_acquire);
    while (w) {
      int b = __builtin_ctzll(w);
      w &= w - 1;
      if (n < max) fds[n] = i * 64 + b;
      n++;
    }
  }
  return n;
}

// The threads softrdma started (its progress thread); returns how many.
SR_EXPORT int softrdma_owned_tids(int* tids, int max) {
  int t = g_progress_tid.load(std::memory_order_acquire);
  if (!t) return 0;
  if (max > 0) tids[0] = t;
  return 1;
}

// Send work requests posted on qp that have not completed yet, signaled or
// not (an unsignaled one is retired when it is acknowledged, as a later
// signaled one would tell on real hardware); -1 for no QP.
SR_EXPORT int softrdma_qp_sends_pending(struct ibv_qp* q) {
  if (!q) return -1;
  Qp* qp = reinterpret_cast<Qp*>(q);
  std::lock_guard<std::mutex> g(qp->mu);
  return int(qp->sq_head - qp->sq_done);
}
