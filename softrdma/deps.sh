#!/bin/bash
# Installs what softrdma builds against and what its tests run (idempotent).
set -eu
pkgs=(libibverbs-dev librdmacm-dev rdma-core ibverbs-utils perftest rdmacm-utils iproute2 cmake g++
      openmpi-bin libopenmpi-dev libucx0 ucx-utils)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} = 0 ] && exit 0
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
