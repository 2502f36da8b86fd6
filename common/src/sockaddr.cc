#include "ibdbg/sockaddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

namespace ibdbg {

std::string SockAddrText(const void* addr, uint32_t len) {
  const char* a = (const char*)addr;
  if (len < sizeof(sa_family_t)) return "(unnamed)";
  sa_family_t fam;
  memcpy(&fam, a, sizeof fam);
  char host[INET6_ADDRSTRLEN] = "?";
  if (fam == AF_INET && len >= sizeof(sockaddr_in)) {
    sockaddr_in in;
    memcpy(&in, a, sizeof in);
    inet_ntop(AF_INET, &in.sin_addr, host, sizeof host);
    return std::string(host) + ":" + std::to_string(ntohs(in.sin_port));
  }
  if (fam == AF_INET6 && len >= sizeof(sockaddr_in6)) {
    sockaddr_in6 in;
    memcpy(&in, a, sizeof in);
    inet_ntop(AF_INET6, &in.sin6_addr, host, sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(in.sin6_port));
  }
  if (fam == AF_UNIX) {
    const char* p = a + sizeof(sa_family_t);
    size_t n = len - sizeof(sa_family_t);
    if (n == 0) return "(unnamed)";
    if (p[0]) return std::string(p, strnlen(p, n));
    return "@" + std::string(p + 1, n - 1);
  }
  return "(address of family " + std::to_string(fam) + ")";
}

}  // namespace ibdbg
