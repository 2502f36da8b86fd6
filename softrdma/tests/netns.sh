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
pair_once() {  # dir, program and arguments
  local out=$1; shift
  timeout 60 "${A[@]}" "$@" > "$out/srv" 2>&1 &
  local spid=$!
  sleep 0.5
  timeout 60 "${B[@]}" "$@" $net.1 > "$out/cli" 2>&1; crc=$?
  wait $spid; src=$?
  [ $crc = 0 ] && [ $src = 0 ]
}
# A loaded 2-core machine can starve a timing-bound run: a failure is shown
# and the pair runs once more; a real defect fails both times.
pair() {  # name, then the program and its arguments (server and client alike)
  local name=$1; shift
  local out; out=$(mktemp -d)
  local crc src
  if ! pair_once "$out" "$@"; then
    echo "RETRY $name (client $crc, server $src)"; tail -3 "$out/cli" | sed 's/^/  cli: /'
    sleep 1
    pair_once "$out" "$@"
  fi
  if [ $crc = 0 ] && [ $src = 0 ]; then
    pass=$((pass+1)); echo "ok   $name: $(grep -E 'iters|^ *[0-9]+ +[0-9]+ ' "$out/cli" | tail -1 | tr -s ' \t' ' ')"
  else
    fail=$((fail+1)); echo "FAIL $name (client $crc, server $src)"; grep -v "address" "$out/cli" | sed 's/^/  cli: /' | tail -12; grep -v "address" "$out/srv" | sed 's/^/  srv: /' | tail -12
  fi
  rm -rf "$out"
}
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
