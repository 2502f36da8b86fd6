#!/bin/bash
# Capture and replay throughput of one process, against the machine's limits.
#   bench/capture_replay.sh BUILD_DIR [MIB]
# Prints a table: dd with fdatasync (the storage limit), then ibdbg capture of
# incompressible and compressible memory (stored raw and zstd), and replay.
# Numbers only: this is a benchmark, not a test.
set -eu
build=$1 mib=${2:-1024}
ibdbg=$build/bin/ibdbg
prog=$build/tests/e2e/zdtm-bigmem
work=$(mktemp -d "${TMPDIR:-/var/tmp}/ibdbg-bench.XXXXXX")
export IBDBG_HOME=$work/home
trap 'pkill -KILL -f "$work" 2>/dev/null; rm -rf "$work"' EXIT
now() { date +%s.%N; }
rate() { python3 -c "import sys; b,t=float(sys.argv[1]),float(sys.argv[2]); print(f'{b/t/1e9:6.2f} GB/s  {t:6.2f} s')" "$1" "$2"; }
bytes=$((mib * 1048576))

t0=$(now); dd if=/dev/zero of="$work/dd" bs=1M count="$mib" conv=fdatasync status=none; t1=$(now)
printf '%-44s %s\n' "dd, fdatasync ($mib MiB)" "$(rate $bytes $(echo "$t1 - $t0" | bc))"
rm -f "$work/dd"

for kind in random zero-heavy; do
  for level in 0 3; do
    n=$((${n:-0} + 1))
    rm -f "$work/go"
    # bigmem fills with a xorshift stream (incompressible); BIGMEM_PATTERN=1 repeats a short one.
    ( env BIGMEM_PATTERN=$([ $kind = random ] && echo 0 || echo 1) "$ibdbg" run --dir "$work/job$n" -- "$prog" "$work/go" "$mib" \
        > "$work/run.out" 2>&1 ) &
    until grep -q READY "$work/run.out" 2>/dev/null; do sleep 0.1; done
    t0=$(now); img=$("$ibdbg" capture --dir "$work/job$n" --stop --level $level); t1=$(now)
    wait
    size=$(du -sm "$img" | cut -f1)
    printf '%-44s %s  image %s MiB\n' "capture, $kind memory, zstd level $level" "$(rate $bytes $(echo "$t1 - $t0" | bc))" "$size"
    if [ $level = 3 ]; then
      touch "$work/go"
      t0=$(now); "$ibdbg" replay "$img" --dir "$work/rjob$n" > "$work/replay.out" 2>&1; t1=$(now)
      grep -q PASS "$work/replay.out" "$work/run.out" || { echo "replay did not verify"; exit 1; }
      printf '%-44s %s  (replay to exit, incl. checksum pass)\n' "replay, $kind memory" "$(rate $bytes $(echo "$t1 - $t0" | bc))"
    fi
  done
done
