#!/bin/bash
# Cost of the verbs layer (issue 5): what `ibdbg run` (libibdbg_verbs.so in
# the path) adds to softrdma's latency and bandwidth outside captures, and
# how long a capture of a verbs job takes.
#   * ib_send_lat 2 B (t_typical) and ib_write_bw 64 KiB (BW average), one
#     host (127.0.0.1, softrdma roce), plain and under `ibdbg run`, in
#     interleaved A/B pairs (the order alternates from pair to pair) so that
#     the load of a shared machine falls on both sides alike; medians.
#   * `ibdbg capture` (job runs on) of one job, ibv_rc_pingpong -c (default)
#     or ib_write_bw -D (--capture-job write_bw), caught mid-traffic: time
#     to the printed image path and the job's pause, several captures of
#     one job; medians. (write_bw refuses intermittently today: its server
#     has no sends, is frozen first, and the client's outstanding writes then
#     wait for the frozen server's softrdma thread; see bench/README.md.)
#   * replay of a verbs job: refused today, the row says "not implemented".
# Goals: <= 3% latency and <= 1% bandwidth added (medians).
#   verbs.sh [--build DIR] [--out DIR] [--pairs N] [--secs N] [--captures N] [--capture-job rc_pingpong|write_bw] [--no-plot]
# Any program that fails stops the run with its output (no row is guessed).
set -u
here=$(cd "$(dirname "$0")" && pwd)
build=$here/../build
out=/var/tmp/ibdbg-verbs-last
pairs=5
secs=3
captures=3
capjob=rc_pingpong
plot=1
usage="usage: verbs.sh [--build DIR] [--out DIR] [--pairs N] [--secs N] [--captures N] [--capture-job rc_pingpong|write_bw] [--no-plot]"
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --secs) secs=$2; shift 2 ;;
    --captures) captures=$2; shift 2 ;;
    --capture-job) capjob=$2; shift 2 ;;
    --no-plot) plot=0; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
case $capjob in rc_pingpong|write_bw) ;; *) echo "$usage" >&2; exit 2 ;; esac
build=$(cd "$build" && pwd)
ibdbg=$build/bin/ibdbg
[ -x "$ibdbg" ] || { echo "verbs.sh: $ibdbg missing: build first (cmake --build $build)" >&2; exit 1; }
for c in ib_write_bw ib_send_lat; do
  command -v $c >/dev/null || { echo "verbs.sh: $c missing (bash softrdma/deps.sh)" >&2; exit 1; }
done
mkdir -p "$out"
work=$(mktemp -d /var/tmp/ibdbg-verbs-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
log=$out/verbs.log
: > "$log"
csv=$out/verbs.csv
echo "what,plain,with_ibdbg,unit,added_pct,goal,verdict,pairwise_pct,samples" > "$csv"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
load_start=$(cut -d' ' -f1 /proc/loadavg)

runner=""
# The captured job ends by itself (-D, under timeout): wait for it rather than leave it behind.
die() {
  echo "verbs.sh: FAILED: $*" >&2; echo "(every program's output: $log)" >&2
  [ -n "$runner" ] && { wait "$runner"; cat "$work/cap.out" >> "$log"; }
  exit 1
}
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m }'; }
# perftest: the last numeric line; field N.
perf_field() { grep -E '^ *[0-9]+ +[0-9]+ ' "$1" | tail -1 | awk -v f="$2" '{ print $f }'; }

SR=("$ibdbg" softrdma --mode roce --)
# below the ephemeral range (32768-): softrdma's own connections take ports there
port=$(( 22000 + ($$ * 7 + RANDOM) % 9000 ))
# One perftest pair on 127.0.0.1, both under `ibdbg run` when $1 = with;
# the client's output in $work/cli.txt. A failure of either side ends the run.
pair() {
  local with=$1; shift
  port=$((port + 1))
  local pre=() n=$((port % 100000))
  [ "$with" = with ] && pre=("$ibdbg" run --dir "$work/job-s$n" --)
  timeout 120 "${SR[@]}" "${pre[@]}" "$@" -p $port > "$work/srv.txt" 2>&1 &
  local sp=$! rc
  [ "$with" = with ] && pre=("$ibdbg" run --dir "$work/job-c$n" --)
  sleep 0.5
  # a loaded machine may start the server late: connect again while it is not listening
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    timeout 120 "${SR[@]}" "${pre[@]}" "$@" -p $port 127.0.0.1 > "$work/cli.txt" 2>&1
    rc=$?
    [ $rc = 0 ] || ! grep -q "Couldn't connect" "$work/cli.txt" || ! kill -0 $sp 2>/dev/null && break
    sleep 0.5
  done
  wait $sp; local src=$?
  { echo "== $with: $* : client rc $rc, server rc $src"; cat "$work/cli.txt"; echo "-- server"; cat "$work/srv.txt"; } >> "$log"
  [ $rc = 0 ] && [ $src = 0 ] || die "$with ibdbg: $* (client rc $rc, server rc $src): $(tail -3 "$work/cli.txt") / $(tail -3 "$work/srv.txt")"
}

lat_plain=() lat_with=() bw_plain=() bw_with=()
measure() { # plain|with: one latency and one bandwidth sample
  local v
  pair "$1" ib_send_lat -x 1 -s 2 -n 20000
  v=$(perf_field "$work/cli.txt" 5); [ -n "$v" ] || die "no t_typical in ib_send_lat's output"
  [ "$1" = with ] && lat_with+=("$v") || lat_plain+=("$v")
  pair "$1" ib_write_bw -x 1 -s 65536 -D "$secs" --report_gbits
  v=$(perf_field "$work/cli.txt" 4); [ -n "$v" ] || die "no BW average in ib_write_bw's output"
  v=$(awk -v g="$v" 'BEGIN { printf "%.3f", g / 8 }')
  [ "$1" = with ] && bw_with+=("$v") || bw_plain+=("$v")
}
for i in $(seq "$pairs"); do
  if [ $((i % 2)) = 1 ]; then measure plain; measure with; else measure with; measure plain; fi
  echo "pair $i/$pairs: ib_send_lat ${lat_plain[-1]} / ${lat_with[-1]} us, ib_write_bw ${bw_plain[-1]} / ${bw_with[-1]} GB/s (plain / ibdbg run)"
done

# what plain-samples with-samples unit goal_pct higher_is_better
row() {
  local what=$1 p=$2 w=$3 unit=$4 goal=$5 hib=$6 mp mw added verdict
  mp=$(tr ' ' '\n' <<< "$p" | median); mw=$(tr ' ' '\n' <<< "$w" | median)
  # added cost in %: latency up, bandwidth down
  added=$(awk -v a="$mp" -v b="$mw" -v h="$hib" 'BEGIN { printf "%.2f", (h ? (a - b) : (b - a)) / a * 100 }')
  verdict=$(awk -v x="$added" -v g="$goal" 'BEGIN { print (x <= g) ? "met" : "MISSED" }')
  # for information: the median of each pair's own added % (adjacent runs share the load)
  pw=$(paste <(tr ' ' '\n' <<< "$p") <(tr ' ' '\n' <<< "$w") |
    awk -v h="$hib" '{ printf "%.4f\n", (h ? ($1 - $2) : ($2 - $1)) / $1 * 100 }' | median)
  pw=$(awk -v x="$pw" 'BEGIN { printf "%.2f", x }')
  echo "$what,$mp,$mw,$unit,$added,<= $goal%,$verdict,$pw,plain: $p / with: $w" >> "$csv"
}
row "ib_send_lat 2 B (typical; median of $pairs)" "${lat_plain[*]}" "${lat_with[*]}" us 3 0
row "ib_write_bw 64 KiB (BW average; median of $pairs)" "${bw_plain[*]}" "${bw_with[*]}" GB/s 1 1

# ------------------------------------------------------------- capture --
# One job (server and client of ib_write_bw -D), captured $captures times
# while the writes run; the job must run on and end well.
port=$((port + 1))
cap_secs=$((captures * 4 + 6))
case $capjob in
  # 50-90 us per iteration on the 2-core VM: more than cap_secs seconds
  rc_pingpong) prog="stdbuf -oL ibv_rc_pingpong -g 1 -c -n $((cap_secs * 20000)) -p $port" ;;
  write_bw) prog="stdbuf -oL ib_write_bw -x 1 -s 65536 -D $cap_secs -p $port" ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
( timeout $((cap_secs + 120)) "${SR[@]}" "$ibdbg" run --dir "$work/cap" -- sh -c \
    "$prog & sleep 0.5; $prog 127.0.0.1; echo client=\$?; wait \$!; echo server=\$?" \
    > "$work/cap.out" 2>&1; echo "rc=$?" >> "$work/cap.out" ) &
runner=$!
for _ in $(seq 600); do [ "$(grep -c "remote address" "$work/cap.out")" = 2 ] && break; sleep 0.05; done
[ "$(grep -c "remote address" "$work/cap.out")" = 2 ] && ! grep -q "client=" "$work/cap.out" || { cat "$work/cap.out" >> "$log"; die "the captured $capjob did not start"; }
caps=() pauses=()
for i in $(seq "$captures"); do
  sleep 1
  t0=$(date +%s.%N)
  img=$("$ibdbg" capture --dir "$work/cap" 2> "$work/cap.err") || { cat "$work/cap.err" >> "$log"; die "capture $i: $(cat "$work/cap.err")"; }
  t1=$(date +%s.%N)
  [ -n "$img" ] || die "capture $i printed no image path"
  ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')
  grep -q "client=" "$work/cap.out" && die "$capjob ended before capture $i was done (it took $ms ms; $(cat "$work/cap.err"))"
  caps+=("$ms")
  # the job's pause, as ibdbg reports it ("the job runs on (stopped N ms)")
  pz=$(sed -nE 's/.*stopped ([0-9.]+) ms.*/\1/p' "$work/cap.err" | head -1)
  [ -n "$pz" ] || die "capture $i: no pause in its message: $(cat "$work/cap.err")"
  pauses+=("$pz")
  echo "capture $i: $ms ms to the image path, job stopped $pz ms, $(du -sm "$img" | cut -f1) MiB ($img)"
  "$ibdbg" inspect "$img" | grep -q "^    qp .* RTS" || die "capture $i: the image has no QP in RTS"
done
wait $runner
cat "$work/cap.out" >> "$log"
grep -q "client=0" "$work/cap.out" && grep -q "server=0" "$work/cap.out" && grep -q "^rc=0" "$work/cap.out" ||
  die "the captured $capjob failed after the captures (its data check, or a lost message): $(tail -5 "$work/cap.out")"
mc=$(printf '%s\n' "${caps[@]}" | median)
mp=$(printf '%s\n' "${pauses[@]}" | median)
echo "capture of $capjob mid-traffic (to image path; median of $captures),,$mc,ms,,,,,${caps[*]}" >> "$csv"
echo "  of which the job stopped (ibdbg's report; median),,$mp,ms,,,,,${pauses[*]}" >> "$csv"
echo "replay of a verbs job,,,,,,not implemented,," >> "$csv"
load_end=$(cut -d' ' -f1 /proc/loadavg)
echo "load average (1 min) at the start / end,$load_start,$load_end,,,,,," >> "$csv"

awk -F, '{ printf "%-66s %-8s %-10s %-4s %-9s %-7s %-15s %s\n", $1, $2, $3, $4, $5, $6, $7, $8 }' "$csv" | tee "$out/verbs.txt"
echo "samples: $out/verbs.csv; every program's output: $log"
if [ $plot = 1 ]; then
  if /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
    /usr/bin/python3 "$here/plot.py" --verbs "$csv" "$out" && echo "plot: $out/verbs.png"
  else
    echo "no plot: python3-matplotlib missing (bench/setup.sh)"
  fi
fi
