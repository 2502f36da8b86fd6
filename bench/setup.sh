#!/bin/bash
# What the benchmarks need beyond the build (tools/deps.sh): matplotlib for the
# plots, iperf3 for softrdma.sh (whose perftest comes from softrdma/deps.sh).
set -eu
/usr/bin/python3 -c "import matplotlib" 2>/dev/null && command -v iperf3 >/dev/null && exit 0
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-matplotlib iperf3
