#!/bin/bash
# Two guests, one boot (a boot costs 10-20 s of the tier's time): the two-guest scripts in
# order, each reported on its own; exits 1 if any failed.  two-hosts.sh MPI_RING [CONFORMANCE]
#   two-hosts-verbs.sh    ibverbs examples (-c), perftest, rping; its first program is the
#                         tier's quick two-guest check
#   two-hosts-mpi-ucx.sh  Open MPI over UCX over rxe (MPI_RING: mpi_ring.c built with mpicc)
#   two-hosts-conformance.sh  softrdma's conformance program, one side per guest (CONFORMANCE:
#                         the softrdma_conformance binary; the part is left out without it)
#   two-hosts-vm-host.sh  vm-host's promises; last, since it powers guest 2 off
here=$(dirname "$0")
ring=${1:?usage: two-hosts.sh MPI_RING [CONFORMANCE]}
conformance=${2:-}
failed=()
part() {
	local name=$1 t0=$SECONDS
	shift
	echo "######## $name"
	if "$@"; then
		echo "######## $name: passed ($((SECONDS - t0)) s)"
	else
		echo "######## $name: FAILED ($((SECONDS - t0)) s)" >&2
		failed+=("$name")
	fi
}
part verbs "$here/two-hosts-verbs.sh"
part mpi-ucx "$here/two-hosts-mpi-ucx.sh" "$ring"
parts="verbs, mpi-ucx"
if [ -n "$conformance" ]; then
	part conformance "$here/two-hosts-conformance.sh" "$conformance"
	parts="$parts, conformance"
fi
part vm-host "$here/two-hosts-vm-host.sh"
if [ ${#failed[@]} -gt 0 ]; then
	echo "two-hosts: FAILED: ${failed[*]}" >&2
	exit 1
fi
echo "two-hosts: $parts and vm-host passed"
