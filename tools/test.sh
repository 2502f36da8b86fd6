#!/bin/bash
# Builds ibdbg and runs its tests: unit, end-to-end (as root and as an
# unprivileged user) and, where QEMU is usable, the SoftRoCE tier.
# Usage: tools/test.sh [extra ctest arguments]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/tools/deps.sh"
# The SoftRoCE tier (QEMU, Debian's kernel with rdma_rxe): packages and the kernel, cached.
bash "$root/tests/vm/setup-deps.sh"
build=${IBDBG_BUILD:-$root/build}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)"
cd "$build"
ctest --output-on-failure -j2 "$@"
