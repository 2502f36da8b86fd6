#!/bin/bash
# ibdbg core: a process with threads each blocked in a function of its own is
# captured; `ibdbg core` writes an ELF core that plain gdb opens with every
# thread in its function, its locals, and the globals' run-time values; the
# notes are the kernel's (readelf -n); bad input gives one line and fails.
#   core.sh BUILD_DIR [--as-user]
set -u
. "$(dirname "$0")/lib.sh"
build=$(cd "$1" && pwd)
as_user=0; [ "${2:-}" = --as-user ] && as_user=1
ibdbg=$build/bin/ibdbg
prog=$build/tests/e2e/zdtm-corethreads
e2e_setup core $as_user
fail_name=core fail_tail=60 fail_logs=('run.out' 'replay.out' 'capture2.out' 'core*.out' 'bad.out' 'gdb*.out')
command -v gdb >/dev/null || fail "gdb not found"
command -v readelf >/dev/null || fail "readelf not found"
cd "$work"

# The program's output file is reopened by the replay, as whoever runs it.
touch "$work/run.out"
[ $as_user = 1 ] && chown nobody:nogroup "$work/run.out"
( "${as[@]}" "$ibdbg" run --dir "$work/job" -- "$prog" > "$work/run.out" 2>&1 ) &
runner=$!
wait_for "$work/run.out" READY 30 || fail "the program did not get ready"
img=$("${as[@]}" "$ibdbg" capture --dir "$work/job" --stop) || fail "capture failed"
wait_bounded $runner 30 || fail "the captured program did not stop"
"$ibdbg" inspect "$img" > "$work/inspect.out" || fail "inspect failed"
pid=$(awk '/^process /{print $2; exit}' "$work/inspect.out")

"${as[@]}" "$ibdbg" core "$img" -o "$work/app.core" > "$work/core.out" 2>&1 || fail "ibdbg core failed"
[ -s "$work/app.core" ] || fail "no core written"
ls "$work" | grep -q '\.tmp\.' && fail "a temporary file was left beside the core"

# The notes, as binutils reads them.
readelf -n "$work/app.core" > "$work/readelf.out" 2>&1 || fail "readelf -n failed"
readelf -h -l "$work/app.core" >> "$work/readelf.out" 2>&1 || fail "readelf -h -l failed"
grep -q "Type:.*CORE (Core file)" "$work/readelf.out" || fail "not an ELF core"
threads=$(grep -c "NT_PRSTATUS" "$work/readelf.out")
[ "$threads" -ge 5 ] || fail "$threads NT_PRSTATUS notes, expected one per thread (5 and ibdbg's own)"
[ "$(grep -c NT_FPREGSET "$work/readelf.out")" = "$threads" ] || fail "not every thread has NT_FPREGSET"
for n in NT_PRPSINFO NT_AUXV NT_FILE; do
  [ "$(grep -c "$n" "$work/readelf.out")" = 1 ] || fail "readelf does not list one $n"
done
if grep -qw xsave /proc/cpuinfo; then
  [ "$(grep -c NT_X86_XSTATE "$work/readelf.out")" = "$threads" ] || fail "not every thread has NT_X86_XSTATE"
fi
if command -v eu-readelf >/dev/null; then
  eu-readelf -n "$work/app.core" > "$work/eu-readelf.out" 2>&1 || fail "eu-readelf -n failed"
fi
# Sparse: far fewer blocks than bytes (most of the address space is holes).
blocks=$(stat -c %b "$work/app.core") size=$(stat -c %s "$work/app.core")
[ $((blocks * 512)) -lt "$size" ] || fail "the core is not sparse ($blocks blocks for $size bytes)"

# The thread blocked in read(2) stands at the system call with its arguments
# in rdi (the descriptor) and rdx (1 byte): the registers of its frame.
cat > "$work/regs.py" <<'PY'
import gdb
for t in gdb.selected_inferior().threads():
    t.switch()
    f, names = gdb.newest_frame(), []
    while f:
        names.append(f.name())
        f = f.older()
    if "blocked_in_read" in names:
        top = gdb.newest_frame()
        print("read thread: rdi=%d rdx=%d" % (int(top.read_register("rdi")), int(top.read_register("rdx"))))
PY
# Plain gdb, nothing of ibdbg's loaded.
timeout 120 gdb -nx -batch "$prog" "$work/app.core" -ex 'info threads' -ex 'thread apply all bt' \
  -ex 'print core_global' -ex 'print core_heap' -ex 'thread apply all bt full' -ex 'info proc mappings' \
  -ex 'thread 1' -ex 'print/x $pc' -ex 'print/x $sp' -ex 'print $ymm0.v8_int32[0]' -x "$work/regs.py" \
  > "$work/gdb.out" 2>&1 ||
  fail "gdb failed on the core"
for f in blocked_in_read blocked_in_cond blocked_in_poll blocked_in_sleep main_waits; do
  grep -q " $f (" "$work/gdb.out" || fail "no thread shows $f"
done
[ "$(grep -c "^Thread [0-9]* (.*LWP" "$work/gdb.out")" = $((2 * threads)) ] || fail "gdb does not list every thread twice"
grep -q "may not match specified executable" "$work/gdb.out" && fail "gdb finds the core does not match the program"
grep -q "Cannot access memory" "$work/gdb.out" && fail "gdb could not read some memory"
# (gdb reads the FPU notes: a size it does not expect makes it drop them.)
grep -q "in core file too small\|Unexpected size of section" "$work/gdb.out" && fail "gdb cannot read the FPU notes"
# The main thread (gdb's thread 1) where the image says it was.
main_rip=$(awk '$3 == "main" && $4 == "rip" {print $5}' "$work/inspect.out")
main_rsp=$(awk '$3 == "main" && $4 == "rip" {print $7}' "$work/inspect.out")
grep -q "^\$3 = $main_rip\$" "$work/gdb.out" || fail "the main thread's pc is not $main_rip"
grep -q "^\$4 = $main_rsp\$" "$work/gdb.out" || fail "the main thread's sp is not $main_rsp"
if grep -qw avx /proc/cpuinfo; then
  grep -q '^\$5 = ' "$work/gdb.out" || fail "gdb cannot show an AVX register"
fi
fd=$(sed -n 's/^READY fd \([0-9]*\)$/\1/p' "$work/run.out")
grep -q "^read thread: rdi=$fd rdx=1\$" "$work/gdb.out" || fail "the reading thread's registers are not read($fd, ..., 1)'s"
grep -q "^\$1 = $((0x5eed0000 + 42))\$" "$work/gdb.out" || fail "core_global is not its run-time value"
grep -q '^\$2 = 0x[0-9a-f]* "heap-value-for-gdb"$' "$work/gdb.out" || fail "core_heap does not show the heap string"
for v in marker_read=1001 marker_cond=2002 marker_poll=3003 marker_sleep=4004 marker_main=5005; do
  grep -q "${v%=*} = ${v#*=}\$" "$work/gdb.out" || fail "the local ${v%=*} is not ${v#*=}"
done
grep -q "Could not load shared library symbols" "$work/gdb.out" && fail "gdb did not find every shared library"
grep -q "in main ()\| main () at" "$work/gdb.out" || fail "the main thread's backtrace does not reach main"
# NT_FILE, as gdb lists it (this readelf does not decode it).
grep -q "0x[0-9a-f]* .*$prog\$" "$work/gdb.out" || fail "NT_FILE does not name the executable"
grep -q "0x[0-9a-f]* .*/libc.so.6\$" "$work/gdb.out" || fail "NT_FILE does not name the C library"

# Choosing by pid; bad input: one line, non-zero.
"${as[@]}" "$ibdbg" core "$img" --pid "$pid" -o "$work/bypid.core" > "$work/core2.out" 2>&1 || fail "core --pid $pid failed"
cmp -s "$work/app.core" "$work/bypid.core" || fail "the cores by pid and by default differ"
one_line_error() {  # DESCRIPTION PATTERN ARGS...
  local what=$1 pat=$2; shift 2
  "${as[@]}" "$ibdbg" core "$@" > "$work/bad.out" 2>&1 && fail "core $what succeeded"
  [ "$(wc -l < "$work/bad.out")" = 1 ] || fail "core $what: not one line"
  grep -q "$pat" "$work/bad.out" || fail "core $what: message does not say '$pat'"
}
sum=$(cksum < "$work/app.core")
one_line_error "onto an existing file" "exists (use --force" "$img" -o "$work/app.core"
[ "$(cksum < "$work/app.core")" = "$sum" ] || fail "the existing core was changed"
one_line_error "of no image" "no-such-image" "$work/no-such-image" -o "$work/x.core"
one_line_error "of a missing rank" "has no process of rank 3" "$img" --rank 3 -o "$work/x.core"
one_line_error "of a missing pid" "has no process with pid 999999 (processes: $pid)" "$img" --pid 999999 -o "$work/x.core"
[ -e "$work/x.core" ] && fail "a failed core left its output"
"${as[@]}" "$ibdbg" core "$img" -o "$work/app.core" --force > "$work/core3.out" 2>&1 || fail "core --force failed"

# The process replayed and captured again (generation 1): the same threads
# where they were, the same values.
( "${as[@]}" "$ibdbg" replay "$img" --dir "$work/job2" > "$work/replay.out" 2>&1 ) &
replayer=$!
img2=
for _ in $(seq 100); do  # until the replayed process has joined its job
  img2=$("${as[@]}" "$ibdbg" capture --dir "$work/job2" --stop 2> "$work/capture2.out") && break
  img2=
  grep -q "no running processes\|no running coordinator\|not an ibdbg job directory\|has no secret" \
    "$work/capture2.out" || break
  kill -0 $replayer 2>/dev/null || break
  sleep 0.1
done
[ -n "$img2" ] || fail "capture of the replayed process failed"
wait_bounded $replayer 30 || fail "the replayed process did not stop after its capture"
"${as[@]}" "$ibdbg" core "$img2" -o "$work/gen1.core" > "$work/core4.out" 2>&1 || fail "core of the replayed process failed"
timeout 120 gdb -nx -batch "$prog" "$work/gen1.core" -ex 'thread apply all bt' -ex 'print core_global' \
  > "$work/gdb-gen1.out" 2>&1 || fail "gdb failed on the replayed process's core"
for f in blocked_in_read blocked_in_cond blocked_in_poll blocked_in_sleep main_waits; do
  grep -q " $f (" "$work/gdb-gen1.out" || fail "no thread of the replayed process shows $f"
done
grep -q "^\$1 = $((0x5eed0000 + 42))\$" "$work/gdb-gen1.out" || fail "core_global of the replayed process is wrong"
echo "PASS(core${as[*]:+, unprivileged}): $threads threads, and after a replay"
