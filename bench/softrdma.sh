#!/bin/bash
# softrdma against its yardsticks (issue 6), in one run so that the ratios
# compare numbers taken minutes apart on the same machine:
#   * two network-namespace hosts: iperf3 stream vs ib_write_bw 64 KiB, and
#     a TCP ping-pong (tcp_pingpong) vs ib_send_lat (2 bytes);
#   * one host: single-core memcpy (memcpy_bw, 64 KiB copies) vs ib_write_bw
#     64 KiB between two processes (auto: the shared-memory ring; the one-copy
#     and TCP paths too, for comparison).
# Prints a table with the ratios against the goals; writes softrdma.csv,
# softrdma.txt and softrdma.png to --out.
#   softrdma.sh [--build DIR] [--out DIR] [--modes "roce ib"] [--secs N] [--no-plot]
# Needs root (network namespaces, veth) for the two-host rows; without it
# they say "skipped". Needs iperf3 and perftest (bench/setup.sh).
set -u
here=$(cd "$(dirname "$0")" && pwd)
build=$here/../build
out=/var/tmp/ibdbg-softrdma-last
modes="roce ib"
secs=4
plot=1
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --secs) secs=$2; shift 2 ;;
    --no-plot) plot=0; shift ;;
    *) echo "usage: softrdma.sh [--build DIR] [--out DIR] [--modes \"roce ib\"] [--secs N] [--no-plot]" >&2; exit 2 ;;
  esac
done
build=$(cd "$build" && pwd)
run=$build/bin/softrdma-run
memcpy_bw=$build/bench/memcpy_bw
pingpong=$build/bench/tcp_pingpong
for f in "$run" "$memcpy_bw" "$pingpong"; do
  [ -x "$f" ] || { echo "softrdma.sh: $f missing: build first (cmake --build $build)" >&2; exit 1; }
done
for c in ib_write_bw ib_send_lat; do
  command -v $c >/dev/null || { echo "softrdma.sh: $c missing (bash softrdma/deps.sh)" >&2; exit 1; }
done
mkdir -p "$out"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
csv=$out/softrdma.csv
echo "where,mode,what,value,unit,yardstick,yardstick_value,ratio,goal,verdict" > "$csv"
log=$out/softrdma.log
: > "$log"

# Rows: where mode what value unit yardstick yardstick_value goal_op goal
row() {
  local where=$1 mode=$2 what=$3 val=$4 unit=$5 yname=$6 yval=$7 op=$8 goal=$9
  local ratio="" verdict=""
  if [ -n "$val" ] && [ -n "$yval" ]; then
    ratio=$(awk -v a="$val" -v b="$yval" 'BEGIN { if (b > 0) printf "%.2f", a / b }')
    if [ -n "$op" ]; then
      verdict=$(awk -v r="$ratio" -v g="$goal" -v op="$op" 'BEGIN {
        ok = (op == ">=") ? (r >= g) : (r <= g); print ok ? "met" : "MISSED" }')
    fi
  elif [ -z "$val" ]; then
    verdict=${op:+failed}
  fi
  echo "$where,$mode,$what,$val,$unit,$yname,$yval,$ratio,${op:+$op $goal},$verdict" >> "$csv"
}

# perftest: the last numeric line; field N.
perf_field() { grep -E '^ *[0-9]+ +[0-9]+ ' "$1" | tail -1 | awk -v f="$2" '{ print $f }'; }

# One perftest pair: SRV_PREFIX... -- CLI_PREFIX... -- ADDR PROGRAM ARGS; output of the client in $pf_out.
pf_out=$out/cli.txt
perf_pair() {
  local -n srv=$1 cli=$2
  local addr=$3; shift 3
  timeout 120 "${srv[@]}" "$@" > "$out/srv.txt" 2>&1 &
  local sp=$!
  sleep 0.5
  local rc try
  # a loaded machine may start the server late: connect again while it is not listening
  for try in 1 2 3 4 5; do
    timeout 120 "${cli[@]}" "$@" "$addr" > "$pf_out" 2>&1
    rc=$?
    [ $rc = 0 ] || ! grep -q "Couldn't connect" "$pf_out" || ! kill -0 $sp 2>/dev/null && break
    sleep 1
  done
  wait $sp
  { echo "== $* ($addr): client rc $rc"; cat "$pf_out"; echo "-- server"; cat "$out/srv.txt"; } >> "$log"
  return $rc
}

gbps_of() { # perftest --report_gbits client output -> GB/s (10^9 bytes)
  local v; v=$(perf_field "$pf_out" 4)
  [ -n "$v" ] && awk -v g="$v" 'BEGIN { printf "%.3f", g / 8 }'
}

row machine any "load average (1 min) at the start" "$(cut -d' ' -f1 /proc/loadavg)" "" "" "" "" ""

# ---------------------------------------------------------------- one host --
# perftest writes one 64 KiB buffer again and again (cache-hot): so does the
# yardstick; the copy through memory (64 MiB) is shown for information.
mc=$("$memcpy_bw" 65536 | awk '{ print $4 }')
mcm=$("$memcpy_bw" 65536 $((64 << 20)) | awk '{ print $4 }')
echo "memcpy 64 KiB single core: $mc GB/s (cache-hot), $mcm GB/s (64 MiB buffers)"
row one-host any "memcpy 64 KiB (1 core)" "$mc" GB/s "" "" "" ""
row one-host any "memcpy 64 KiB over 64 MiB (1 core)" "$mcm" GB/s "" "" "" ""
# the kernel's cross-memory copy (process_vm_readv), which the one-copy path uses
cma=$("$memcpy_bw" 65536 65536 cma | awk '{ print $4 }')
echo "process_vm_readv 64 KiB: $cma GB/s"
row one-host any "process_vm_readv 64 KiB (1 core)" "$cma" GB/s "memcpy 1 core" "$mc" "" ""
LOCAL=("$run" --mode roce --ip 127.0.0.1 --)
for transport in auto cma tcp; do
  SRV=(env SOFTRDMA_TRANSPORT=$transport "${LOCAL[@]}"); CLI=("${SRV[@]}")
  bw=""
  perf_pair SRV CLI 127.0.0.1 ib_write_bw -x 1 -s 65536 -D "$secs" --report_gbits -p 18600 && bw=$(gbps_of)
  echo "one host ib_write_bw 64 KiB ($transport): ${bw:-failed} GB/s"
  case $transport in
    auto) row one-host roce "ib_write_bw 64 KiB (auto: shm ring)" "$bw" GB/s "memcpy 1 core" "$mc" ">=" 0.5 ;;
    cma) row one-host roce "ib_write_bw 64 KiB (cma one-copy)" "$bw" GB/s "memcpy 1 core" "$mc" "" "" ;;
    *) row one-host roce "ib_write_bw 64 KiB (TCP loopback)" "$bw" GB/s "memcpy 1 core" "$mc" "" "" ;;
  esac
done

# ------------------------------------------------------- two netns hosts --
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v iperf3 >/dev/null; then
  echo "two-host rows skipped: need root, iproute2 and iperf3"
  row two-hosts any "two-host rows" "" "" "" "" "" ""
else
  a=srb$$a; b=srb$$b; net=10.231.63
  cleanup() { ip netns del "$a" 2>/dev/null; ip netns del "$b" 2>/dev/null; }
  trap cleanup EXIT
  ip netns add "$a" && ip netns add "$b"
  ip link add "v$$a" type veth peer name "v$$b"
  ip link set "v$$a" netns "$a"; ip link set "v$$b" netns "$b"
  ip -n "$a" addr add $net.1/24 dev "v$$a"; ip -n "$b" addr add $net.2/24 dev "v$$b"
  for n in $a $b; do ip -n "$n" link set lo up; done
  ip -n "$a" link set "v$$a" up; ip -n "$b" link set "v$$b" up

  ip netns exec "$a" iperf3 -s -1 -p 18700 > "$out/iperf-srv.txt" 2>&1 &
  sleep 0.5
  for try in 1 2 3 4 5; do
    ip netns exec "$b" iperf3 -c $net.1 -p 18700 -t "$secs" -f g > "$out/iperf.txt" 2>&1 && break
    grep -q "unable to connect" "$out/iperf.txt" || break
    sleep 1
  done
  wait
  cat "$out/iperf.txt" >> "$log"
  tcp_bw=$(awk '/receiver/ { for (i = 1; i < NF; i++) if ($(i+1) == "Gbits/sec") v = $i } END { if (v != "") printf "%.3f", v / 8 }' "$out/iperf.txt")
  echo "iperf3 stream: ${tcp_bw:-failed} GB/s"
  row two-hosts any "iperf3 TCP stream" "$tcp_bw" GB/s "" "" "" ""

  ip netns exec "$a" "$pingpong" -s -p 18701 -n 20000 &
  tcp_lat=$(ip netns exec "$b" "$pingpong" -c $net.1 -p 18701 -n 20000 | awk '{ print $3 }')
  wait
  echo "tcp ping-pong one-way: ${tcp_lat:-failed} us"
  row two-hosts any "TCP ping-pong 2 B (typical one way)" "$tcp_lat" us "" "" "" ""

  port=18710
  for mode in $modes; do
    case $mode in ib) gx=() ;; *) gx=(-x 1) ;; esac
    SRV=(ip netns exec "$a" "$run" --mode "$mode" --); CLI=(ip netns exec "$b" "$run" --mode "$mode" --)
    bw=""
    perf_pair SRV CLI $net.1 ib_write_bw "${gx[@]}" -s 65536 -D "$secs" --report_gbits -p $port && bw=$(gbps_of)
    port=$((port+1))
    echo "two hosts ib_write_bw 64 KiB ($mode): ${bw:-failed} GB/s"
    row two-hosts $mode "ib_write_bw 64 KiB" "$bw" GB/s "iperf3 stream" "$tcp_bw" ">=" 0.8
    lat=""
    perf_pair SRV CLI $net.1 ib_send_lat "${gx[@]}" -s 2 -n 20000 -p $port && lat=$(perf_field "$pf_out" 5)
    port=$((port+1))
    echo "two hosts ib_send_lat 2 B ($mode): ${lat:-failed} us typical"
    row two-hosts $mode "ib_send_lat 2 B (typical)" "$lat" us "TCP ping-pong" "$tcp_lat" "<=" 1.5
  done
fi

row machine any "load average (1 min) at the end" "$(cut -d' ' -f1 /proc/loadavg)" "" "" "" "" ""
# columns of the CSV, empty fields kept
awk -F, '{ printf "%-10s %-5s %-34s %-8s %-5s %-16s %-8s %-6s %-7s %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' \
  "$csv" | tee "$out/softrdma.txt"
if [ $plot = 1 ]; then
  if /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
    /usr/bin/python3 "$here/plot.py" --softrdma "$csv" "$out" && echo "plot: $out/softrdma.png"
  else
    echo "no plot: python3-matplotlib missing (bench/setup.sh)"
  fi
fi
