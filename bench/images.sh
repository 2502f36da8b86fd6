#!/bin/bash
# The "fast images" benchmark (issue 7): capture and replay of one process
# against the machine's limits, pauses measured by the application itself.
#
#   bench/images.sh [--build DIR] [--sizes "1 4"] [--kinds "random compressible"] [--out DIR] [--no-plot]
#   bench/images.sh --check [--build DIR]     (the e2e test: 64 MiB, no dd, no plots)
#
# Lazy replays (ibdbg replay --lazy, root only) report the first heartbeat and
# the moment the page server says every page is present; their GB/s are of
# the time to fully resident.
#
# For each size (GiB) and kind of memory: dd with fdatasync and a cold read of
# that size (the storage's limits), ibdbg capture of bench/heartbeat while it
# runs (plain --level 0 and the default zstd), then eager replays of both
# images: time to the first heartbeat, the checksum of the memory afterwards
# against the one printed before the capture.  Modes ibdbg does not have yet
# are rows saying "not implemented", never numbers.
# Writes OUT/images.csv, OUT/table.txt and (with python3-matplotlib, see
# bench/setup.sh) OUT/gbps.png and OUT/pauses.png.
# A checksum that differs is an error (exit 1) in every mode: numbers of a
# replay that lost memory are worth nothing.  --check also has the replayed
# program flip one bit of its memory and fails unless that is noticed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
build=$here/../build sizes="1 4" kinds="random compressible" out="" plot=1 check=0
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift ;;
    --sizes) sizes=$2; shift ;;
    --kinds) kinds=$2; shift ;;
    --out) out=$2; shift ;;
    --no-plot) plot=0 ;;
    --check) check=1 ;;
    *) echo "images.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ $check = 1 ]; then sizes=0.0625 plot=0; fi
ibdbg=$build/bin/ibdbg
prog=$build/bench/heartbeat
[ -x "$ibdbg" ] && [ -x "$prog" ] || { echo "images.sh: build first (no $ibdbg or $prog)" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/var/tmp}/ibdbg-images.XXXXXX")
[ -n "$out" ] || out=$work/results
mkdir -p "$out"
export IBDBG_HOME=$work/home
bg=()
cleanup() {
  for p in "${bg[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  # Results asked for nowhere in particular outlive the scratch directory.
  if [ "$out" = "$work/results" ] && [ $check = 0 ]; then
    rm -rf /var/tmp/ibdbg-images-last && cp -r "$out" /var/tmp/ibdbg-images-last && echo "results in /var/tmp/ibdbg-images-last"
  fi
  # The heartbeat programs (inside ibdbg's namespaces) exit once their control directory is gone.
  rm -rf "$work"
}
trap cleanup EXIT
die() { echo "images.sh: $*" >&2; for f in "$work"/*.out; do [ -f "$f" ] && { echo "--- $f"; tail -15 "$f"; }; done >&2; exit 1; }
ns() { date +%s%N; }
wait_file() { # file [pattern] seconds
  local f=$1 pat=${2:-} s=$3
  for _ in $(seq $((s * 50))); do
    if [ -n "$pat" ]; then grep -q -- "$pat" "$f" 2>/dev/null && return 0; else [ -e "$f" ] && return 0; fi
    sleep 0.02
  done
  return 1
}
cold=0
drop_caches() { [ $check = 0 ] || return 0; sync; if [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then cold=1; fi; }

csv=$out/images.csv
echo "size_gib,memory,mode,seconds,gbps,image_mib,pause_ms,first_beat_ms,resident_ms,checksum,goal" > "$csv"
row() { echo "$1,$2,$3,$4,$5,$6,$7,$8,$9,${10},${11}" >> "$csv"; }
gb() { awk -v b="$1" -v n="$2" 'BEGIN { printf "%.2f", b / n }'; } # bytes, ns -> GB/s
sec() { awk -v n="$1" 'BEGIN { printf "%.3f", n / 1e9 }'; }
ms() { awk -v n="$1" 'BEGIN { printf "%.1f", n / 1e6 }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
verdict() { if ge "$1" "$2"; then echo "ok ($3)"; else echo "MISSED ($3)"; fi; }

# Sends a command to the heartbeat program and waits for its report number N.
ctl_cmd() { # one at a time: the program takes a command per beat
  for _ in $(seq 3000); do [ -e "$1/cmd" ] || break; sleep 0.01; done
  echo "$2" > "$1/cmd.tmp" && mv "$1/cmd.tmp" "$1/cmd"
}
report() { # ctl tag -> the report's line
  ctl_cmd "$1" "report $2"
  wait_file "$1/report.$2" "" 30 || die "no report $2 from the heartbeat program"
  cat "$1/report.$2"
}
field() { sed -n "s/.*$2=\([^ ]*\).*/\1/p" <<< "$1"; }

# Replays IMG (heartbeat's memory MIB MiB, checksum WANT), with OPTS given to
# ibdbg replay; sets r_first_ns, r_resident_ns, r_rss, r_sum.
replay_image() { # img ctl mib want tag [opts...]
  local img=$1 ctl=$2 mib=$3 want=$4 tag=$5 t0 first line rep
  shift 5
  rm -f "$ctl"/gaps "$ctl"/report.* "$ctl"/cmd
  drop_caches
  t0=$(ns)
  IBDBG_REPLAY_TIMES=1 "$ibdbg" replay "$img" "$@" --dir "$work/r$tag" > "$work/replay-$tag.out" 2>&1 &
  local rp=$!; bg+=("$rp")
  first=""
  for _ in $(seq 6000); do
    line=$(awk -v t="$t0" '$1 > t { print $1; exit }' "$ctl/gaps" 2>/dev/null)
    [ -n "$line" ] && { first=$line; break; }
    kill -0 $rp 2>/dev/null || break
    sleep 0.01
  done
  [ -n "$first" ] || die "the replay of $img never beat"
  r_first_ns=$((first - t0))
  r_resident_ns=$r_first_ns
  # ibdbg's own part: from the launcher's start to the processes running.
  r_launch_ms=$(sed -n 's/.*processes running after \([0-9.]*\) ms.*/\1/p' "$work/replay-$tag.out" | head -1)
  if [ "${1:-}" = --lazy ]; then # resident once the page server says so
    wait_file "$work/replay-$tag.out" "every page present" 600 || die "the lazy replay of $img never had every page"
    r_resident_ns=$(($(ns) - t0))
  fi
  [ -z "${inject:-}" ] || ctl_cmd "$ctl" "$inject"
  rep=$(report "$ctl" "$tag") || { echo "images.sh: replay of $img: no report" >&2; kill -KILL $rp; return 1; }
  r_sum=$(field "$rep" checksum) r_rss=$(field "$rep" rss_mib)
  ctl_cmd "$ctl" "exit $tag"
  wait $rp
  local rc=$?
  if [ "$r_sum" != "$want" ]; then
    echo "images.sh: replay of $img: memory checksum $r_sum, before the capture $want" >&2
    return 1
  fi
  grep -q "^PASS" "$ctl/verdict.$tag" 2>/dev/null || { echo "images.sh: replay of $img did not pass (rc $rc)" >&2; tail -5 "$work/replay-$tag.out" >&2; return 1; }
  return 0
}

fails=0
n=0
for size in $sizes; do
  mib=$(awk -v s="$size" 'BEGIN { printf "%d", s * 1024 }')
  bytes=$((mib * 1048576))
  if [ $check = 0 ]; then
    drop_caches
    t0=$(ns); dd if=/dev/zero of="$work/dd" bs=1M count="$mib" conv=fdatasync status=none || die "dd failed"; t1=$(ns)
    dd_w=$(gb $bytes $((t1 - t0)))
    row "$size" any "dd write fdatasync" "$(sec $((t1 - t0)))" "$dd_w" "" "" "" "" "" ""
    drop_caches
    t0=$(ns); dd if="$work/dd" of=/dev/null bs=1M status=none || die "dd read failed"; t1=$(ns)
    row "$size" any "dd read $([ $cold = 1 ] && echo cold || echo warm)" "$(sec $((t1 - t0)))" "$(gb $bytes $((t1 - t0)))" "" "" "" "" "" ""
    rm -f "$work/dd"
  fi
  for kind in $kinds; do
    n=$((n + 1))
    ctl=$work/ctl$n
    mkdir -p "$ctl"
    "$ibdbg" run --dir "$work/job$n" -- "$prog" "$ctl" "$mib" "$kind" > "$work/run$n.out" 2>&1 &
    runner=$!; bg+=("$runner")
    wait_file "$work/run$n.out" READY 300 || die "heartbeat did not get ready"
    want=$(field "$(grep READY "$work/run$n.out")" checksum)
    declare -A img
    # 0 and 3: the job stays stopped while it is written (--no-fork); f: the
    # default, a forked capture at the default level (the job runs on once
    # each process has a frozen copy-on-write copy).
    for level in 0 3 f; do
      case $level in 0) mode="capture plain" ;; 3) mode="capture zstd" ;; f) mode="capture forked (zstd)" ;; esac
      report "$ctl" before$level > /dev/null # the pause is what the next report sees
      opts=(--no-fork --level $level)
      [ $level = f ] && opts=()
      t0=$(ns)
      img[$level]=$("$ibdbg" capture --dir "$work/job$n" "${opts[@]}" 2> "$work/capture$n.$level.out") || die "capture ${opts[*]} failed"
      t1=$(ns)
      rep=$(report "$ctl" after$level) || die "no report after the capture"
      pause=$(ms "$(field "$rep" max_gap_ns)")
      size_mib=$(du -sm "${img[$level]}" | cut -f1)
      rate=$(gb $bytes $((t1 - t0)))
      goal=""
      if [ $check = 0 ]; then
        if [ $level = 0 ] && [ $kind = random ]; then goal=$(verdict "$rate" "$(awk -v d="$dd_w" 'BEGIN { print 0.9 * d }')" ">= 0.9x dd")
        elif [ $level = 3 ] && [ $kind = random ]; then goal=$(verdict "$rate" 0.5 ">= 0.5 GB/s")
        elif [ $level = 3 ]; then goal=$(verdict "$rate" "$(awk -v d="$dd_w" 'BEGIN { print d + 0.0001 }')" "> dd"); fi
      fi
      if [ $level = f ]; then
        grep -q "runs on" "$work/capture$n.f.out" || die "the default capture was not a forked one: $(cat "$work/capture$n.f.out")"
        if ge 50 "$pause"; then goal="ok (pause <= 50 ms)"; else goal="MISSED (pause <= 50 ms)"; fi
      fi
      row "$size" "$kind" "$mode" "$(sec $((t1 - t0)))" "$rate" "$size_mib" "$pause" "" "" "" "$goal"
      [ $level = f ] && full_ns=$((t1 - t0))
    done
    # Incremental: 1% of the pages changed since the forked capture (whose
    # pause armed the write tracking), then only they are written.
    ctl_cmd "$ctl" dirty
    want_i=$(field "$(report "$ctl" dirtied)" checksum)
    t0=$(ns)
    img[i]=$("$ibdbg" capture --dir "$work/job$n" --incremental 2> "$work/capture$n.i.out") || die "capture --incremental failed: $(cat "$work/capture$n.i.out")"
    t1=$(ns)
    grep -q "full image" "$work/capture$n.i.out" && die "the incremental capture wrote a full image: $(cat "$work/capture$n.i.out")"
    rep=$(report "$ctl" afteri) || die "no report after the incremental capture"
    pause=$(ms "$(field "$rep" max_gap_ns)")
    size_mib=$(du -sm "${img[i]}" | cut -f1)
    goal=$(awk -v a=$((t1 - t0)) -v b="$full_ns" 'BEGIN { printf "%s (%.1f%% of the forked full capture; goal <= 10%%)", a <= 0.1 * b ? "ok" : "MISSED", 100 * a / b }')
    row "$size" "$kind" "capture incremental 1% (forked zstd)" "$(sec $((t1 - t0)))" "$(gb $bytes $((t1 - t0)))" "$size_mib" "$pause" "" "" "" "$goal"
    ctl_cmd "$ctl" "exit original"
    wait $runner
    grep -q "^PASS" "$ctl/verdict.original" 2>/dev/null || die "the captured heartbeat program did not pass"
    for level in 0 3 f i; do
      case $level in 0) from=plain ;; 3) from=zstd ;; f) from="forked zstd" ;; i) from="incremental 1% + parent flattened first" ;; esac
      w=$want
      [ $level = i ] && w=$want_i
      if [ $check = 1 ] && [ $level = 0 ]; then
        # The same path must notice memory that came back wrong by one bit.
        if inject=flip replay_image "${img[0]}" "$ctl" "$mib" "$want" bad$n 2> "$work/bad$n.err"; then
          die "a replay whose memory differs by one bit passed: the check cannot fail"
        fi
        grep -q "memory checksum" "$work/bad$n.err" || die "the flipped replay failed for another reason: $(cat "$work/bad$n.err")"
      fi
      if replay_image "${img[$level]}" "$ctl" "$mib" "$w" "$n.$level"; then ok=equal; else ok=DIFFERENT; fails=$((fails + 1)); fi
      rate=$(gb $bytes $r_first_ns)
      resident=""
      [ "${r_rss:-0}" -ge $((mib * 99 / 100)) ] && resident=$(ms $r_first_ns)
      goal=""
      [ $check = 0 ] && goal=$(verdict "$rate" 1 ">= 1 GB/s")
      row "$size" "$kind" "replay eager ($from image; $([ $cold = 1 ] && echo cold || echo warm))" "$(sec $r_first_ns)" "$rate" "" "" "$(ms $r_first_ns)" "$resident" "$ok" "$goal"
    done
    for level in 0 3; do
      from=$([ $level = 0 ] && echo plain || echo zstd)
      mode="replay lazy ($from image; $([ $cold = 1 ] && echo cold || echo warm))"
      if [ "$(id -u)" != 0 ]; then
        row "$size" "$kind" "$mode" "" "" "" "" "" "" "" "needs root"
        continue
      fi
      if replay_image "${img[$level]}" "$ctl" "$mib" "$want" "$n.lazy$level" --lazy; then ok=equal; else ok=DIFFERENT; fails=$((fails + 1)); fi
      goal=""
      [ $check = 0 ] && goal=$(awk -v f="$r_first_ns" 'BEGIN { exit !(f <= 100e6) }' && echo "ok" || echo "MISSED")" (first beat <= 100 ms; launcher ${r_launch_ms:-?} ms of it)"
      row "$size" "$kind" "$mode" "$(sec $r_resident_ns)" "$(gb $bytes $r_resident_ns)" "" "" "$(ms $r_first_ns)" "$(ms $r_resident_ns)" "$ok" "$goal"
    done
    rm -rf "${img[0]}" "${img[3]}" "${img[f]}" "${img[i]}"
    unset img
  done
done

{
  echo "ibdbg images benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(df -h --output=source,fstype "$work" | tail -1 | tr -s ' ')"
  echo "dd and replays $([ $cold = 1 ] && echo "from a cold page cache" || echo "with a WARM page cache (not root: could not drop caches)"); GB/s are of the process's memory; replay time is to the first heartbeat after it (eager: all memory is in place before that)"
  awk -F, '{ for (i = 1; i <= NF; i++) { w[NR, i] = $i; if (length($i) > m[i]) m[i] = length($i) } } END {
    for (r = 1; r <= NR; r++) { line = ""; for (i = 1; i <= NF; i++) line = line sprintf("%-*s", m[i] + 2, w[r, i]); sub(/ +$/, "", line); print line } }' "$csv"
} > "$out/table.txt"
cat "$out/table.txt"
if [ $plot = 1 ]; then
  # Debian's python3-matplotlib is for Debian's python3, which another python3 may shadow.
  py=python3
  python3 -c "import matplotlib" 2>/dev/null || py=/usr/bin/python3
  "$py" "$here/plot.py" "$csv" "$out" || echo "images.sh: no plots (install python3-matplotlib: bench/setup.sh)" >&2
fi
[ "$out" = "$work/results" ] || echo "results in $out"
[ $fails = 0 ]
