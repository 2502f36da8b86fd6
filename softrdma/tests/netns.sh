#!/bin/bash
# Two hosts = two network namespaces joined by a veth pair on a private /24.
# Runs unmodified ibverbs-utils and perftest programs between them over
# softrdma. Usage: netns.sh SOFTRDMA_RUN MODE    (exit 77 = skipped)
set -u
run=$1
mode=$2
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
  echo "SKIP: needs root and iproute2 for network namespaces"; exit 77
fi
case $mode in ib) net=10.231.61; g=(); gx=() ;; *) net=10.231.62; g=(-g 1); gx=(-x 1) ;; esac
a=srt$$a; b=srt$$b
cleanup() { ip netns del "$a" 2>/dev/null; ip netns del "$b" 2>/dev/null; }
trap cleanup EXIT
ip netns add "$a" && ip netns add "$b" || { echo "SKIP: cannot create namespaces"; exit 77; }
ip link add "v$$a" type veth peer name "v$$b" || { echo "SKIP: no veth"; exit 77; }
ip link set "v$$a" netns "$a"; ip link set "v$$b" netns "$b"
ip -n "$a" addr add $net.1/24 dev "v$$a"; ip -n "$b" addr add $net.2/24 dev "v$$b"
for n in $a $b; do ip -n "$n" link set lo up; done
ip -n "$a" link set "v$$a" up; ip -n "$b" link set "v$$b" up
# softrdma picks the namespace's first non-loopback IPv4 address by itself.
A=(ip netns exec "$a" "$run" --mode "$mode" --)
B=(ip netns exec "$b" "$run" --mode "$mode" --)
fail=0; pass=0
ok() { pass=$((pass+1)); echo "ok   $*"; }
bad() { fail=$((fail+1)); echo "FAIL $*"; }
PAIR_SRV=("${A[@]}"); PAIR_CLI=("${B[@]}"); PAIR_ADDR=$net.1; PAIR_WAIT=0.5
. "$(dirname "$0")/pair.sh"
p=19000
pair "ibv_rc_pingpong -c" ibv_rc_pingpong "${g[@]}" -c -p $((p+1)) -n 500
pair "ibv_rc_pingpong -c -e" ibv_rc_pingpong "${g[@]}" -c -e -p $((p+2)) -n 300
pair "ibv_uc_pingpong -c" ibv_uc_pingpong "${g[@]}" -c -p $((p+3)) -n 500
pair "ibv_ud_pingpong -c" ibv_ud_pingpong "${g[@]}" -c -p $((p+4)) -n 500
pair "ibv_srq_pingpong -c" ibv_srq_pingpong "${g[@]}" -c -p $((p+5)) -n 500
for t in ib_send_bw ib_write_bw ib_read_bw ib_atomic_bw ib_send_lat ib_write_lat ib_read_lat ib_atomic_lat; do
  pair "$t" $t "${gx[@]}" -n 500 -p $((p+10))
  p=$((p+1))
done
echo "netns $mode: $pass passed, $fail failed"
[ $fail = 0 ]
