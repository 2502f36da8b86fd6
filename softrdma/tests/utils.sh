#!/bin/bash
# Unmodified ibverbs-utils and perftest over softrdma on one host (loopback).
# Usage: utils.sh SOFTRDMA_RUN MODE
set -u
run=$1
mode=$2
R=("$run" --mode "$mode" --ip 127.0.0.1 --)
case $mode in ib) g=(); gx=(); base=21000 ;; *) g=(-g 1); gx=(-x 1); base=22000 ;; esac
# The _tcp and _shm variants run beside these (ctest -j): ports of their own.
[ "${SOFTRDMA_TRANSPORT:-}" = tcp ] && base=$((base+500))
[ "${SOFTRDMA_TRANSPORT:-}" = shm ] && base=$((base+250))
fail=0; pass=0
ok() { pass=$((pass+1)); echo "ok   $*"; }
bad() { fail=$((fail+1)); echo "FAIL $*"; }

# ibv_devices / ibv_devinfo -v describe the device truthfully
out=$("${R[@]}" ibv_devices 2>&1)
echo "$out" | grep -q "softrdma0" && ok ibv_devices || { bad ibv_devices; echo "$out"; }
out=$("${R[@]}" ibv_devinfo -v 2>&1)
if [ $mode = ib ]; then
  want=("link_layer:[[:space:]]*InfiniBand" "port_lid:[[:space:]]*1$" "GID\[  0\]:[[:space:]]*fe80")
else
  want=("link_layer:[[:space:]]*Ethernet" "GID\[  1\]:[[:space:]]*::ffff:127.0.0.1, RoCE v2")
fi
want+=("hca_id:[[:space:]]*softrdma0" "state:[[:space:]]*PORT_ACTIVE" "atomic_cap:[[:space:]]*ATOMIC_HCA" "max_qp_wr:[[:space:]]*16384" "active_mtu:[[:space:]]*4096")
miss=0
for w in "${want[@]}"; do echo "$out" | grep -Eq "$w" || { echo "  missing: $w"; miss=1; }; done
[ $miss = 0 ] && ok "ibv_devinfo -v" || { bad "ibv_devinfo -v"; echo "$out" | tail -30; }

PAIR_SRV=("${R[@]}"); PAIR_CLI=("${R[@]}"); PAIR_ADDR=127.0.0.1; PAIR_WAIT=0.4
. "$(dirname "$0")/pair.sh"
p=$base
for prog in ibv_rc_pingpong ibv_uc_pingpong ibv_ud_pingpong ibv_srq_pingpong; do
  p=$((p+1)); pair "$prog -c" $prog "${g[@]}" -c -n 500 -p $p
  p=$((p+1)); pair "$prog -c -e" $prog "${g[@]}" -c -e -n 200 -p $p
done
p=$((p+1)); pair "ibv_rc_pingpong -c -s 65536" ibv_rc_pingpong "${g[@]}" -c -s 65536 -n 100 -p $p
# XRC is not offered: a clear "not supported"
out=$(timeout 20 "${R[@]}" ibv_xsrq_pingpong "${g[@]}" -p $((p+1)) 2>&1)
echo "$out" | grep -q "Couldn't Open the XRC Domain 95" && ok "ibv_xsrq_pingpong: XRC not supported (EOPNOTSUPP)" \
  || { bad "ibv_xsrq_pingpong"; echo "$out"; }
p=$((p+2))
for t in ib_send_bw ib_write_bw ib_read_bw ib_atomic_bw ib_send_lat ib_write_lat ib_read_lat ib_atomic_lat; do
  p=$((p+1)); pair "$t" $t "${gx[@]}" -n 500 -p $p
done
p=$((p+1)); pair "ib_write_bw --use_old_post_send" ib_write_bw "${gx[@]}" -n 500 --use_old_post_send -p $p
# Sizes from 2 B to 1 MiB, one run each (`-a` also fits a line through the
# timings and gives up when a loaded machine makes them noisy).
for sz in 2 4096 1048576; do
  p=$((p+1)); pair "ib_send_bw -s $sz" ib_send_bw "${gx[@]}" -s $sz -n 20 -p $p
done
echo "utils $mode: $pass passed, $fail failed"
[ $fail = 0 ]
