#include "ibdbg/pty.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>

namespace ibdbg::pty {
namespace {

static_assert(sizeof(ibdbg_pty_state) == 96, "ibdbg_pty_state is part of the image format");
static_assert(sizeof(struct termios) <= sizeof(((ibdbg_pty_state*)nullptr)->termios),
              "ibdbg_pty_state.termios is too small for this C library's struct termios");

std::string Errno(const char* what) { return std::string(what) + ": " + strerror(errno); }

void Sleep1ms() {
  timespec ts = {0, 1000 * 1000};
  nanosleep(&ts, nullptr);
}

int Inq(int fd) {
  int n = 0;
  return ioctl(fd, FIONREAD, &n) == 0 ? n : -1;
}

// Bytes written to one end reach the other end's line discipline through a
// work queue, not at once: wait (briefly) until `fd` shows at least `want`.
bool WaitInq(int fd, int want) {
  for (int i = 0; i < 2000; i++) {
    if (Inq(fd) >= want) return true;
    Sleep1ms();
  }
  return false;
}

// fd is non-blocking: a pair that takes no more within 2 s never will.
bool WriteAll(int fd, const std::string& d) {
  size_t off = 0;
  int waited = 0;
  while (off < d.size()) {
    ssize_t n = write(fd, d.data() + off, d.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN && waited++ < 2000) {
      Sleep1ms();
      continue;
    }
    if (n <= 0) return false;
    off += (size_t)n;
  }
  return true;
}

// The slave, opened through the master without a path (so in whichever
// devpts instance and mount namespace the pair lives).
int OpenPeer(int master, int flags) { return ioctl(master, TIOCGPTPEER, flags | O_NOCTTY | O_CLOEXEC); }

}  // namespace

long SlaveIndex(dev_t rdev) {
  unsigned ma = major(rdev), mi = minor(rdev);
  if (ma < 136 || ma > 143) return -1;
  return (long)(ma - 136) * 256 + mi;
}

bool ReadState(int master, ibdbg_pty_state* st, std::string* err) {
  memset(st, 0, sizeof *st);
  unsigned idx = 0;
  if (ioctl(master, TIOCGPTN, &idx) != 0) {
    *err = Errno("not a pseudo-terminal master (TIOCGPTN)");
    return false;
  }
  st->index = idx;
  int v = 0;
  if (ioctl(master, TIOCGPTLCK, &v) == 0 && v) st->flags |= IBDBG_PTY_LOCKED;
  v = 0;
  if (ioctl(master, TIOCGPKT, &v) == 0 && v) st->flags |= IBDBG_PTY_PACKET;
  // On a master these report (and set) the slave's settings.
  struct termios t;
  struct winsize ws {};
  if (tcgetattr(master, &t) == 0 && ioctl(master, TIOCGWINSZ, &ws) == 0) {
    memcpy(st->termios, &t, sizeof t);
    st->winsize[0] = ws.ws_row;
    st->winsize[1] = ws.ws_col;
    st->winsize[2] = ws.ws_xpixel;
    st->winsize[3] = ws.ws_ypixel;
    st->flags |= IBDBG_PTY_TERMIOS;
  }
  return true;
}

uint64_t SlaveDev(int master) {
  int s = OpenPeer(master, O_RDONLY | O_NONBLOCK);
  if (s < 0) return 0;
  struct stat sb {};
  uint64_t dev = fstat(s, &sb) == 0 ? (uint64_t)sb.st_dev : 0;
  close(s);
  return dev;
}

bool Drain(int master, const ibdbg_pty_state& st, std::string* out, std::string* in, std::string* err) {
  out->clear();
  in->clear();
  char buf[65536 + 1];
  // Bytes reach a line discipline through a work queue, and one holds 4 KiB
  // at a time (the rest waits in the tty's buffers): empty means empty a few
  // times in a row.
  for (int n, idle = 0; idle < 3;) {
    if ((n = Inq(master)) <= 0) {
      idle++;
      Sleep1ms();
      continue;
    }
    idle = 0;
    pollfd pf = {master, POLLIN, 0};
    if (poll(&pf, 1, 0) <= 0 || !(pf.revents & POLLIN)) break;
    bool packet = st.flags & IBDBG_PTY_PACKET;
    // In packet mode every read starts with a status byte: 0 before data.  A
    // pending non-zero status (a flush or flow-control event) is read and not
    // carried.
    ssize_t got = read(master, buf, std::min<size_t>((size_t)n + (packet ? 1 : 0), sizeof buf));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    if (packet) out->append(buf + 1, (size_t)got - 1);
    else out->append(buf, (size_t)got);
  }
  // The slave's side needs a descriptor of the slave; a locked pair has no
  // reader that could be waiting for input.
  if (st.flags & IBDBG_PTY_LOCKED) return true;
  int s = OpenPeer(master, O_RDONLY | O_NONBLOCK);
  if (s < 0) return true;
  for (int idle = 0; idle < 3;) {
    // Canonical mode shows (and reads) complete lines only; an unterminated
    // line being typed cannot be seen without changing the mode: it is not
    // carried (see capture/README.md).
    ssize_t got = read(s, buf, sizeof buf - 1);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      idle++;
      Sleep1ms();
      continue;
    }
    idle = 0;
    in->append(buf, (size_t)got);
  }
  close(s);
  (void)err;
  return true;
}

bool Refill(int master, const ibdbg_pty_state& st, const std::string& out, const std::string& in,
            std::string* err) {
  struct termios want;
  bool have_want = st.flags & IBDBG_PTY_TERMIOS;
  if (have_want) memcpy(&want, st.termios, sizeof want);
  else if (tcgetattr(master, &want) != 0) {
    *err = Errno("cannot read a pseudo-terminal's settings");
    return false;
  }
  std::string rest;
  if (!out.empty() || !in.empty()) {
    int lck = 0;
    ioctl(master, TIOCGPTLCK, &lck);
    if (lck) {
      int zero = 0;
      ioctl(master, TIOCSPTLCK, &zero);
    }
    int s = OpenPeer(master, O_RDWR | O_NONBLOCK);
    if (s < 0) {
      *err = Errno("cannot open a pseudo-terminal's slave to refill it");
      return false;
    }
    // No output processing, echo, signals or line editing while the old
    // bytes go in: they were processed when first written.  The input side
    // is left alone when there is no input: leaving canonical mode and
    // coming back makes whatever the slave holds one line.
    struct termios raw = want;
    raw.c_oflag &= ~OPOST;
    if (!in.empty()) {
      raw.c_iflag &= ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON | IUCLC);
      raw.c_lflag &= ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
      raw.c_cc[VMIN] = 1;
      raw.c_cc[VTIME] = 0;
    }
    bool ok = tcsetattr(master, TCSANOW, &raw) == 0;
    int s0 = Inq(s);
    // Output processing happens within write(): out needs no waiting.
    // Input is processed by the slave's line discipline after the write
    // returns, with the settings of that moment: what it holds (4 KiB) goes
    // in before the captured settings come back; more input than that (it
    // waited in the tty's buffers) is processed again, with them.
    size_t first = std::min(in.size(), (size_t)std::max(0, 4095 - std::max(s0, 0)));
    ok = ok && WriteAll(s, out) && WriteAll(master, in.substr(0, first)) && WaitInq(s, s0 + (int)first);
    rest = in.substr(first);
    close(s);
    if (lck) ioctl(master, TIOCSPTLCK, &lck);
    if (!ok) {
      *err = Errno("cannot put the bytes in flight back into a pseudo-terminal");
      return false;
    }
  }
  if (tcsetattr(master, TCSANOW, &want) != 0) {
    *err = Errno("cannot restore a pseudo-terminal's settings");
    return false;
  }
  if (!rest.empty()) {
    int fl = fcntl(master, F_GETFL);
    fcntl(master, F_SETFL, fl | O_NONBLOCK);
    bool ok = WriteAll(master, rest);
    fcntl(master, F_SETFL, fl);
    if (!ok) {
      *err = Errno("cannot put the input in flight back into a pseudo-terminal");
      return false;
    }
  }
  if (have_want) {
    struct winsize ws = {st.winsize[0], st.winsize[1], st.winsize[2], st.winsize[3]};
    if (ioctl(master, TIOCSWINSZ, &ws) != 0) {
      *err = Errno("cannot restore a pseudo-terminal's window size");
      return false;
    }
  }
  return true;
}

}  // namespace ibdbg::pty
