#!/bin/bash
# libsoftrdma-sysfs.so: unmodified coreutils under softrdma see the device's
# kernel files (what UCX and Open MPI read), the rest of the file system as it
# is, and concurrent first users agree on one tree.
# Usage: sysfs.sh SOFTRDMA_RUN MODE
set -u
run=$1 mode=$2
work=$(mktemp -d /tmp/softrdma-sysfs-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
export TMPDIR=$work
R=("$run" --mode "$mode" --ip 127.0.0.1 --)
fail=0 pass=0
ok() { pass=$((pass+1)); echo "ok   $*"; }
bad() { fail=$((fail+1)); echo "FAIL $*"; }
check() { # name expected command...
  local name=$1 want=$2; shift 2
  local got; got=$("${R[@]}" "$@" 2>&1)
  [ "$got" = "$want" ] && ok "$name" || { bad "$name: got '$got', want '$want'"; }
}
d=/sys/class/infiniband/softrdma0
check "device file is a character device" "character special file" stat -L -c %F /dev/infiniband/uverbs-softrdma0
check "device file readable and writable" "rw" sh -c 'test -r /dev/infiniband/uverbs-softrdma0 && test -w /dev/infiniband/uverbs-softrdma0 && echo rw'
check "/sys/class/infiniband lists softrdma0 only" "softrdma0" ls /sys/class/infiniband
check "infiniband_verbs" "softrdma0" cat /sys/class/infiniband_verbs/uverbs-softrdma0/ibdev
check "realpath shows the /sys path" "$d/ports/1" realpath $d/ports/1
check "node_type" "1: CA" cat $d/node_type
check "port state" "4: ACTIVE" cat $d/ports/1/state
if [ "$mode" = ib ]; then
  check "link layer" "InfiniBand" cat $d/ports/1/link_layer
  check "lid (127.0.0.1: LID 1)" "0x1" cat $d/ports/1/lid
  check "gid types" "IB/RoCE v1" sh -c "cat $d/ports/1/gid_attrs/types/*"
  check "no net device for an IB GID" "no" sh -c "test -e $d/ports/1/gid_attrs/ndevs/0 && echo yes || echo no"
else
  check "link layer" "Ethernet" cat $d/ports/1/link_layer
  check "gid types" "RoCE v2 RoCE v2" sh -c "cat $d/ports/1/gid_attrs/types/0 $d/ports/1/gid_attrs/types/1 | xargs"
  check "GID 1 net device (127.0.0.1: lo)" "lo" cat $d/ports/1/gid_attrs/ndevs/1
  check "GID 1" "0000:0000:0000:0000:0000:ffff:7f00:0001" cat $d/ports/1/gids/1
fi
# the node GUID is the device's (ibv_devinfo, through softrdma's libibverbs)
guid=$("${R[@]}" ibv_devinfo 2>/dev/null | awk '/node_guid/ {print $2}')
check "node_guid equals ibv_devinfo's" "$guid" cat $d/node_guid
# other paths are untouched
want=$(ls /sys/class/net | xargs)
check "/sys/class/net untouched" "$want" sh -c 'ls /sys/class/net | xargs'
check "no redirection of a look-alike name" "no" sh -c 'test -e /sys/class/infinibandX && echo yes || echo no'
# concurrent first users: one tree, no leftovers
rm -rf "${work:?}"/softrdma-sysfs.*
for i in 1 2 3 4 5 6 7 8; do "${R[@]}" cat $d/node_type > "$work/c$i" 2>&1 & done
wait
n=$(cat "$work"/c? | grep -c "^1: CA$")
trees=$(ls -d "$work"/softrdma-sysfs.* 2>/dev/null | wc -l)
[ "$n" = 8 ] && [ "$trees" = 1 ] && ok "8 concurrent first users, one tree" || bad "concurrent first users: $n of 8 read it, $trees trees: $(ls "$work")"
echo "sysfs $mode: $pass passed, $fail failed"
[ $fail = 0 ]
