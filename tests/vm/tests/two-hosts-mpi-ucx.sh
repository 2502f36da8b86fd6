#!/bin/bash
# Two guests: Open MPI 4.1 over UCX over rxe, unmodified.  two-hosts-mpi-ucx.sh MPI_RING
# (MPI_RING: tests/vm/tests/mpi_ring.c built with mpicc).  Runs in guest 1.
#  - UCX sees rxe0:1 with rc_verbs and ud_verbs;
#  - mpirun -np 2 across the guests (remote shell: vm-host), pml ucx, once with RC (UD only
#    for wire-up: ud_verbs:aux) and once with UD alone.
# For each run, UCX's own log (UCX_LOG_LEVEL=info) must name the verbs transport on rxe0:1 for
# the endpoint between the ranks on both guests, no TCP; and rxe0's packet counters must have
# moved on both guests by at least the 2 MiB that mpi_ring sends each way.
# UCX_UD_VERBS_ETH_DGID_CHECK=n: UCX 1.13's UD drops every datagram that rxe delivers
# otherwise (README.md, "UCX on rxe"; ucx-on-rxe.sh shows it with ucx_perftest).
. "$(dirname "$0")/lib.sh"
set -u
ring=${1:?usage: two-hosts-mpi-ucx.sh MPI_RING}
[ -x "$ring" ] || fail "$ring is not an executable (build it with mpicc)"
[ "$(vm-host | wc -l)" -eq 2 ] || fail "expected 2 guests"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export UCX_NET_DEVICES=rxe0:1 UCX_UD_VERBS_ETH_DGID_CHECK=n

ucx_devices() {
	local out
	out=$(ucx_info -d) || fail "ucx_info -d"
	grep -A2 '^# Memory domain: rxe0' <<<"$out"
	for tl in rc_verbs ud_verbs; do
		grep -A1 "Transport: $tl\$" <<<"$out" | grep -q 'Device: rxe0:1' ||
			fail "ucx_info -d: no $tl on rxe0:1"
		echo "ucx_info -d: $tl on rxe0:1"
	done
}
step "ucx_info -d" ucx_devices

# sent_pkts and rcvd_pkts of rxe0 on guests 1 and 2, one line.
counters() {
	local n
	for n in 1 2; do
		on_guest "$n" cat /sys/class/infiniband/rxe0/ports/1/hw_counters/sent_pkts \
			/sys/class/infiniband/rxe0/ports/1/hw_counters/rcvd_pkts
	done | tr '\n' ' '
}

counters_file=$(mktemp)

# mpi TLS TL: mpirun mpi_ring across the guests with UCX_TLS=TLS; TL must carry the traffic.
mpi() {
	local tls=$1 tl=$2 out before after
	# The counters after the previous run, if any (steps run in subshells: kept in a file).
	[ -s "$counters_file" ] || counters >"$counters_file"
	# shellcheck disable=SC2207
	before=($(cat "$counters_file"))
	echo "== mpirun -np 2 --host vm1,vm2, UCX_TLS=$tls; rxe0 packets (sent rcvd, guest 1 then 2): ${before[*]}"
	out=$(timeout 120 mpirun -np 2 --host vm1,vm2 --mca plm_rsh_agent vm-host \
		--mca pml ucx --mca pml_ucx_devices any --mca btl self \
		-x UCX_TLS="$tls" -x UCX_NET_DEVICES -x UCX_UD_VERBS_ETH_DGID_CHECK -x UCX_LOG_LEVEL=info \
		"$ring" 2>&1)
	local rc=$?
	echo "$out"
	[ $rc -eq 0 ] || fail "mpirun (UCX_TLS=$tls) exited with status $rc"
	counters >"$counters_file"
	# shellcheck disable=SC2207
	after=($(cat "$counters_file"))
	echo "rxe0 packets after: ${after[*]}"
	grep -q '^mpi_ring: 2 ranks, token 300 (expected 300), 2 MiB there and back, allreduce 3: OK$' <<<"$out" ||
		fail "mpi_ring did not report OK"
	grep -q '^mpi_ring: rank 0 of 2 on vm1$' <<<"$out" || fail "rank 0 not on vm1"
	grep -q '^mpi_ring: rank 1 of 2 on vm2$' <<<"$out" || fail "rank 1 not on vm2"
	# UCX's endpoint configurations: the one to the other rank is the verbs transport alone.
	local h
	for h in vm1 vm2; do
		grep -Eq "\[$h:.*ep_cfg\[[0-9]+\]: tag\($tl/rxe0:1\)\$" <<<"$out" ||
			fail "UCX on $h: no endpoint on $tl/rxe0:1"
	done
	! grep 'ep_cfg' <<<"$out" | grep -qi 'tcp' || fail "UCX used TCP"
	# 2 MiB each way in 1 KiB (MTU) packets: at least 2048 sent and received on each guest.
	local i
	for i in 0 1 2 3; do
		[ $((after[i] - before[i])) -ge 2048 ] ||
			fail "rxe0 counter $i moved by $((after[i] - before[i])) packets only"
	done
}
step "mpirun rc_verbs" mpi rc_verbs,ud_verbs:aux,self rc_verbs
step "mpirun ud_verbs" mpi ud_verbs,self ud_verbs
finish "two-hosts mpi over ucx"
