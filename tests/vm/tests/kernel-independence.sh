#!/bin/bash
# Kernel independence: a plain program captured on the host (kernel 6.18)
# replays in a guest (Debian's 6.1), and one captured in the guest replays on
# the host.  kernel-independence.sh IBDBG_VM BUILD_DIR
set -u
vm=$1 build=$2
ibdbg=$build/bin/ibdbg
work=$(mktemp -d /tmp/ibdbg-vm-ki.XXXXXX)
chmod 777 "$work"
trap 'pkill -KILL -f "$work" 2>/dev/null; rm -rf "$work"' EXIT
fail() { echo "FAIL(kernel independence): $*"; for f in "$work"/*.out; do [ -f "$f" ] && { echo "--- $f"; tail -15 "$f"; }; done; exit 1; }
capture_heat() {  # job dir, output file: run heat, capture it mid-work with --stop
  ( IBDBG_HOME=$work/home "$ibdbg" run --dir "$1" -- "$build/bin/heat" 2 300 10000 > "$2" 2>&1 ) &
  for _ in $(seq 300); do grep -q "step 50" "$2" 2>/dev/null && break; sleep 0.1; done
  IBDBG_HOME=$work/home "$ibdbg" capture --dir "$1" --stop || return 1
  wait
}

img=$(capture_heat "$work/host-job" "$work/host-run.out") || fail "capture on the host failed"
chmod -R a+rwX "$work"
cat > "$work/guest.sh" <<GUEST
#!/bin/bash
export IBDBG_HOME=$work/guest-home
echo "guest kernel \$(uname -r)"
$ibdbg replay $img --dir $work/guest-replay > $work/guest-replay.out 2>&1
echo "replay of the host image: \$?"
( $ibdbg run --dir $work/guest-job -- $build/bin/heat 2 300 10000 > $work/guest-run.out 2>&1 ) &
for _ in \$(seq 300); do grep -q "step 50" $work/guest-run.out 2>/dev/null && break; sleep 0.1; done
$ibdbg capture --dir $work/guest-job --stop > $work/guest-img.txt
wait
GUEST
chmod +x "$work/guest.sh"
"$vm" --share "$work" --timeout 150 -- "$work/guest.sh" > "$work/vm.out" 2>&1 || fail "the guest part failed"
grep -q "guest kernel 6.1" "$work/vm.out" || fail "the guest does not run the 6.1 kernel"
grep -q "replay of the host image: 0" "$work/vm.out" || fail "the host image did not replay in the guest"
grep -q "checksum .* OK" "$work/host-run.out" || fail "the host image's replay in the guest did not finish correctly"
gimg=$(cat "$work/guest-img.txt")
[ -d "$gimg" ] || fail "no image from the guest"
"$ibdbg" inspect "$gimg" | grep -q "kernel 6.1" || fail "the guest image does not record its kernel"
IBDBG_HOME=$work/home "$ibdbg" replay "$gimg" --dir "$work/host-replay" > "$work/host-replay.out" 2>&1 ||
  fail "the guest image did not replay on the host"
grep -q "checksum .* OK" "$work/guest-run.out" || fail "the guest image's replay on the host did not finish correctly"
echo "ok: host (kernel $(uname -r)) <-> guest (kernel 6.1) images replay both ways"
