#!/bin/bash
# Three guests: every pair passes RC and UD ping-pong over RDMA (rxe), through the mesh.
. "$(dirname "$0")/lib.sh"
set -u
[ "$(vm-host | wc -l)" -eq 3 ] || fail "expected 3 guests"
for n in 1 2 3; do
	# Name, rxe0, and the full mesh: two links per guest, bridged with isolated ports (so
	# nothing is relayed: every pair talks over its own link).
	got=$(vm-host -n "$n" 'hostname; ibv_devinfo -d rxe0 | grep -o "link_layer:.*"; cat /sys/class/net/br0/brif/*/isolated')
	want=$(printf 'vm%s\nlink_layer:\t\tEthernet\n1\n1' "$n")
	[ "$got" = "$want" ] || fail "guest $n: got [$got], expected [$want]"
done
rdma_pair 3 1 18515 ibv_rc_pingpong -g 1 -n 100
rdma_pair 3 2 18516 ibv_rc_pingpong -g 1 -n 100
rdma_pair 2 1 18517 ibv_rc_pingpong -g 1 -n 100
rdma_pair 3 1 18518 ibv_ud_pingpong -g 1 -n 100 -s 512
rdma_pair 2 3 18519 ibv_ud_pingpong -g 1 -n 100 -s 512
echo "three-hosts: all pairs passed"
