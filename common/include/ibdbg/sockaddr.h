#pragma once

// Socket addresses as messages and `ibdbg inspect` show them.

#include <cstdint>
#include <string>

namespace ibdbg {

// "1.2.3.4:5", "[::1]:5", "/a/unix/path", "@abstract", "(unnamed)", or
// "(address of family N)".  `len`: the bytes of `addr` that are valid (a
// whole sockaddr_storage may be passed).
std::string SockAddrText(const void* addr, uint32_t len);

}  // namespace ibdbg
