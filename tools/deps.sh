#!/bin/bash
# Installs what ibdbg needs to build, test and run its demo on Debian 12.
# Idempotent; quiet when everything is there.
set -eu
pkgs=(build-essential cmake pkg-config libzstd-dev libxxhash-dev nlohmann-json3-dev libcli11-dev
      libgtest-dev gdb gdbserver util-linux procps iproute2 python3
      libibverbs-dev librdmacm-dev rdma-core ibverbs-utils perftest rdmacm-utils
      openmpi-bin libopenmpi-dev
      mpich libmpich-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
