#!/bin/bash
# One guest: rdma-core sees the kernel's rxe0, a RoCE (Ethernet link layer) device on 10.0.0.1.
. "$(dirname "$0")/lib.sh"
set -u
out=$(ibv_devices) || fail "ibv_devices failed"
echo "$out"
grep -qw rxe0 <<<"$out" || fail "ibv_devices does not list rxe0"
info=$(ibv_devinfo -d rxe0) || fail "ibv_devinfo -d rxe0 failed"
echo "$info"
grep -Eq 'link_layer:[[:space:]]+Ethernet' <<<"$info" || fail "rxe0 link_layer is not Ethernet"
grep -q 'PORT_ACTIVE' <<<"$info" || fail "rxe0 port 1 is not active"
gid=$(cat /sys/class/infiniband/rxe0/ports/1/gids/1)
echo "GID[1] = $gid"
[ "$gid" = "0000:0000:0000:0000:0000:ffff:0a00:0001" ] || fail "GID index 1 is not ::ffff:10.0.0.1"
[ "$(hostname)" = vm1 ] || fail "hostname is $(hostname), not vm1"
[ "$(vm-host 1)" = 10.0.0.1 ] || fail "vm-host 1 does not print 10.0.0.1"
echo "devinfo: passed"
