#!/bin/bash
# Three guests: every pair passes RC and UD ping-pong over RDMA (rxe), through the mesh.
. "$(dirname "$0")/lib.sh"
set -u
[ "$(vm-host | wc -l)" -eq 3 ] || fail "expected 3 guests"
for n in 1 2 3; do
	[ "$(vm-host "$n" hostname)" = "vm$n" ] || fail "hostname of guest $n"
	vm-host -n "$n" "ibv_devinfo -d rxe0" | grep -q 'link_layer:.*Ethernet' || fail "rxe0 on guest $n"
	# Full mesh: two links per guest, bridged with isolated ports (nothing is relayed).
	[ "$(vm-host -n "$n" 'cat /sys/class/net/br0/brif/*/isolated' | tr -d '\n')" = 11 ] ||
		fail "guest $n: expected two isolated bridge ports"
done
rdma_pair 3 1 18515 ibv_rc_pingpong -g 1 -n 200
rdma_pair 3 2 18516 ibv_rc_pingpong -g 1 -n 200
rdma_pair 2 1 18517 ibv_rc_pingpong -g 1 -n 200
rdma_pair 3 1 18518 ibv_ud_pingpong -g 1 -n 200 -s 512
rdma_pair 2 3 18519 ibv_ud_pingpong -g 1 -n 200 -s 512
echo "three-hosts: all pairs passed"
