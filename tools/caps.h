#pragma once
// `ibdbg caps`: the local verbs devices' limits, for `ibdbg translate
// --target-caps` and the replay's fabric check.  libibverbs.so.1 is dlopened
// (not linked): under `ibdbg softrdma` that is softrdma's.

#include <cstdint>
#include <string>

namespace ibdbg::tools {

// {"devices": [{"name", "link_layer", "active_mtu" (bytes), "gids": [...],
// "max_inline_data", ...}]}: tools/README.md lists the keys.  Throws
// std::runtime_error (one line) when libibverbs cannot be loaded.
std::string CapsJson();

// The link layer (1 InfiniBand, 2 Ethernet) of port 1 of device `name`.
// Throws std::runtime_error when it cannot tell (naming the devices there are).
uint32_t DeviceLinkLayer(const std::string& name);

}  // namespace ibdbg::tools
