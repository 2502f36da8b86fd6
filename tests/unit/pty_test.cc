#include "ibdbg/pty.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

#include <string>

namespace ibdbg {
namespace {

struct Pair {
  int m = -1, s = -1;
  Pair() {
    m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m >= 0 && grantpt(m) == 0 && unlockpt(m) == 0) s = open(ptsname(m), O_RDWR | O_NOCTTY | O_CLOEXEC);
  }
  ~Pair() {
    if (s >= 0) close(s);
    if (m >= 0) close(m);
  }
};

// Everything readable on fd within a short while.
std::string ReadAvail(int fd) {
  std::string out;
  char buf[256];
  for (;;) {
    pollfd pf = {fd, POLLIN, 0};
    if (poll(&pf, 1, 200) <= 0 || !(pf.revents & POLLIN)) break;
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, (size_t)n);
  }
  return out;
}

TEST(Pty, SlaveIndex) {
  EXPECT_EQ(pty::SlaveIndex(makedev(136, 5)), 5);
  EXPECT_EQ(pty::SlaveIndex(makedev(136, 300)), 300);
  EXPECT_EQ(pty::SlaveIndex(makedev(1, 3)), -1);
  EXPECT_EQ(pty::SlaveIndex(makedev(5, 2)), -1);
}

TEST(Pty, StateOfAMaster) {
  Pair p;
  ASSERT_GE(p.s, 0) << "no pseudo-terminals here";
  winsize ws = {24, 99, 0, 0};
  ASSERT_EQ(ioctl(p.m, TIOCSWINSZ, &ws), 0);
  int one = 1;
  ASSERT_EQ(ioctl(p.m, TIOCPKT, &one), 0);
  ibdbg_pty_state st;
  std::string err;
  ASSERT_TRUE(pty::ReadState(p.m, &st, &err)) << err;
  EXPECT_EQ("/dev/pts/" + std::to_string(st.index), std::string(ptsname(p.m)));
  EXPECT_TRUE(st.flags & IBDBG_PTY_TERMIOS);
  EXPECT_TRUE(st.flags & IBDBG_PTY_PACKET);
  EXPECT_FALSE(st.flags & IBDBG_PTY_LOCKED);
  EXPECT_EQ(st.winsize[0], 24);
  EXPECT_EQ(st.winsize[1], 99);
  EXPECT_FALSE(pty::ReadState(p.s, &st, &err)) << "a slave taken for a master";
}

// Canonical input lines and post-processed output come out of the pair as
// they were and go back without being processed a second time.
TEST(Pty, DrainAndRefillKeepBytesAsTheyWere) {
  Pair p;
  ASSERT_GE(p.s, 0) << "no pseudo-terminals here";
  termios t;
  ASSERT_EQ(tcgetattr(p.s, &t), 0);
  t.c_lflag |= ICANON;
  t.c_lflag &= ~(ECHO | ECHONL);
  t.c_oflag |= OPOST | ONLCR;
  ASSERT_EQ(tcsetattr(p.s, TCSANOW, &t), 0);
  ASSERT_EQ(write(p.s, "out1\n", 5), 5);
  ASSERT_EQ(write(p.m, "in1\nin2\n", 8), 8);
  usleep(20000);
  ibdbg_pty_state st;
  std::string err, out, in;
  ASSERT_TRUE(pty::ReadState(p.m, &st, &err)) << err;
  ASSERT_TRUE(pty::Drain(p.m, st, &out, &in, &err)) << err;
  EXPECT_EQ(out, "out1\r\n");
  EXPECT_EQ(in, "in1\nin2\n");
  int n = -1;
  ioctl(p.m, FIONREAD, &n);
  EXPECT_EQ(n, 0) << "Drain left output behind";

  ASSERT_TRUE(pty::Refill(p.m, st, out, in, &err)) << err;
  EXPECT_EQ(ReadAvail(p.m), "out1\r\n");
  EXPECT_EQ(ReadAvail(p.s), "in1\nin2\n");
  termios after;
  ASSERT_EQ(tcgetattr(p.s, &after), 0);
  EXPECT_EQ(after.c_lflag, t.c_lflag);
  EXPECT_EQ(after.c_oflag, t.c_oflag);
  EXPECT_EQ(after.c_iflag, t.c_iflag);
  // And the pair works as before: output processed once, lines by line.
  ASSERT_EQ(write(p.s, "x\n", 2), 2);
  EXPECT_EQ(ReadAvail(p.m), "x\r\n");
}

// A line being typed (no newline yet) stays a line being typed when only
// output goes back.
TEST(Pty, RefillOfOutputLeavesAPartialLineAlone) {
  Pair p;
  ASSERT_GE(p.s, 0) << "no pseudo-terminals here";
  termios t;
  ASSERT_EQ(tcgetattr(p.s, &t), 0);
  t.c_lflag |= ICANON;
  t.c_lflag &= ~(ECHO | ECHONL);
  ASSERT_EQ(tcsetattr(p.s, TCSANOW, &t), 0);
  ASSERT_EQ(write(p.m, "partial", 7), 7);
  ASSERT_EQ(write(p.s, "o\n", 2), 2);
  usleep(20000);
  ibdbg_pty_state st;
  std::string err, out, in;
  ASSERT_TRUE(pty::ReadState(p.m, &st, &err)) << err;
  ASSERT_TRUE(pty::Drain(p.m, st, &out, &in, &err)) << err;
  EXPECT_EQ(in, "");
  ASSERT_TRUE(pty::Refill(p.m, st, out, in, &err)) << err;
  EXPECT_EQ(ReadAvail(p.s), "") << "the partial line became readable";
  ASSERT_EQ(write(p.m, " line\n", 6), 6);
  EXPECT_EQ(ReadAvail(p.s), "partial line\n");
  EXPECT_EQ(ReadAvail(p.m), "o\r\n");
}

// More than a line discipline holds (the rest waits in the tty's buffers)
// comes out whole and goes back whole.
TEST(Pty, LargeOutputInFlight) {
  Pair p;
  ASSERT_GE(p.s, 0) << "no pseudo-terminals here";
  termios t;
  ASSERT_EQ(tcgetattr(p.s, &t), 0);
  cfmakeraw(&t);
  ASSERT_EQ(tcsetattr(p.s, TCSANOW, &t), 0);
  std::string big;
  for (int i = 0; big.size() < 20000; i++) big += std::to_string(i) + ",";
  fcntl(p.s, F_SETFL, O_NONBLOCK);
  ssize_t n = write(p.s, big.data(), big.size());
  ASSERT_GT(n, 8192);
  big.resize((size_t)n);
  usleep(20000);
  ibdbg_pty_state st;
  std::string err, out, in;
  ASSERT_TRUE(pty::ReadState(p.m, &st, &err)) << err;
  ASSERT_TRUE(pty::Drain(p.m, st, &out, &in, &err)) << err;
  EXPECT_EQ(out.size(), big.size());
  EXPECT_TRUE(out == big);
  ASSERT_TRUE(pty::Refill(p.m, st, out, in, &err)) << err;
  std::string back = ReadAvail(p.m);
  EXPECT_EQ(back.size(), big.size());
  EXPECT_TRUE(back == big);
}

}  // namespace
}  // namespace ibdbg
