#!/bin/bash
# Open MPI 4.1 (Debian's openmpi-bin, unmodified) over softrdma: `mpirun -np 4`
# of examples/ring.c, whose rank 0 checks the answer, through
#   openib  the openib BTL in the ib personality (udcm connection manager over
#           UD, shared receive queues, completion channels), with no other BTL
#           than self, so that it must carry every message between ranks;
#   ucx     pml ucx with UCX_TLS=rc_verbs,ud_verbs,self (no tcp, no shared
#           memory), in both personalities (roce makes UCX read the GID types
#           and net devices from sysfs).
# Either on one host (loopback) or, with --two-hosts, on two network-namespace
# hosts (tests/hosts/hosts.sh; as root, or as root of a user namespace of our
# own when unprivileged; exit 77 when neither is possible), 2 ranks each.
# Fails when the answer is wrong or the messages went another way.
#   openmpi.sh SOFTRDMA_RUN RING openib|ucx [--two-hosts]
set -u
run=$1 ring=$2 variant=$3 two=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
command -v mpirun >/dev/null || { echo "FAIL mpirun not found (softrdma/deps.sh installs openmpi-bin)"; exit 1; }
[ -x "$ring" ] || { echo "FAIL $ring is missing (built from examples/ring.c when Open MPI's libopenmpi-dev is installed)"; exit 1; }
if [ -n "$two" ] && [ "$(id -u)" != 0 ] && [ -z "${SOFTRDMA_MPI_USERNS:-}" ] &&
   unshare --user --map-root-user true 2>/dev/null; then
  # Unprivileged: the hosts are made as root of a user namespace of our own
  # (as tests/e2e/mpi_two_hosts.sh --as-user does).
  SOFTRDMA_MPI_USERNS=1 exec unshare --user --map-root-user -- bash "$0" "$@"
fi
if [ -n "$two" ] && { [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; }; then
  echo "SKIP: two hosts need root (or user namespaces) and iproute2 for network namespaces"; exit 77
fi
work=$(mktemp -d /tmp/softrdma-mpi.XXXXXX)
hosts=$work/hosts
cleanup() { [ -n "$two" ] && bash "$here/../../tests/hosts/hosts.sh" down "$hosts" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
# mpirun's session directories and softrdma's sysfs tree go there, and go away.
export TMPDIR=$work
fail=0 pass=0
ok() { pass=$((pass+1)); echo "ok   $*"; }
bad() { fail=$((fail+1)); echo "FAIL $*"; }

rounds=300
# 32 KiB messages: past the eager limits, so openib and UCX use RDMA (get/put,
# zero-copy) for the ring and send/receive for the small ones (the meeting).
elems=4096
ip=()
mpi=(mpirun --oversubscribe -np 4 -x TMPDIR --mca orte_tmpdir_base "$work")
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
if [ -n "$two" ]; then
  bash "$here/../../tests/hosts/hosts.sh" up "$hosts" 2 || { echo "SKIP: cannot make the test hosts"; exit 77; }
  # Remote ranks load softrdma through the environment mpirun forwards.
  mpi+=(--host h1:2,h2:2 --mca plm_rsh_agent "$hosts/nshost" --mca oob_tcp_if_include 10.77.0.0/24
        -x LD_PRELOAD -x LD_LIBRARY_PATH -x SOFTRDMA_MODE)
  # each host's softrdma takes its own address (10.77.0.x: LID x)
  at() { "$hosts/nshost" h1 "$(printf '%q ' "$@")"; }
  where="two hosts"
else
  at() { "$@"; }
  ip=(--ip 127.0.0.1)
  where="one host"
fi

# ring prints "ring: 4 ranks, N rounds, checksum X, new peers met 4 of 4 OK"
answer_ok() { grep -Eq "^ring: 4 ranks, $rounds rounds, checksum [0-9a-f]{16}, new peers met 4 of 4 OK$" "$1"; }

case $variant in
openib)
  out=$work/openib.out
  at "$run" --mode ib "${ip[@]}" -- "${mpi[@]}" --mca btl openib,self --mca btl_openib_allow_ib 1 \
    --mca btl_openib_cpc_include udcm --mca btl_openib_warn_no_device_params_found 1 --mca btl_base_verbose 100 \
    "$ring" $rounds 0 $elems 1 > "$out" 2>&1
  rc=$?
  # Each rank sends to its successor and to the rank two on (the ring and
  # the meeting): both paths must be openib.  Open MPI makes an endpoint when
  # a rank first sends to a peer and logs the BTL it picked; no other BTL may
  # appear.  Ranks are known from "[rank=N] openib: using port", by pid.
  paths=0
  while read -r proc rank; do
    for d in 1 2; do
      grep -Eq "^\[$proc\] mca: bml: Using openib btl for send to \[\[[0-9]+,[0-9]+\],$(( (rank + d) % 4 ))\] on node" "$out" &&
        paths=$((paths + 1))
    done
  done < <(sed -nE 's/^\[([a-z0-9]+:[0-9]+)\] \[rank=([0-9]+)\] openib: using port.*/\1 \2/p' "$out")
  other=$(grep -E "mca: bml: Using [a-z]+ btl for send to" "$out" | grep -Ev "Using (openib|self) btl" | head -3)
  if [ $rc = 0 ] && answer_ok "$out" && [ "$paths" = 8 ] && [ -z "$other" ] && ! grep -q "No preset parameters" "$out"; then
    ok "openib BTL, $where: $(grep '^ring: 4' "$out")"
  else
    bad "openib BTL, $where (exit $rc, $paths of 8 ring and meeting paths over openib${other:+, other: $other})"
    grep -v "mca: base" "$out" | tail -25 | sed 's/^/  /'
  fi
  if [ -n "$two" ]; then
    x=$(grep -Ec "^\[h1:[0-9]+\] mca: bml: Using openib btl for send to .* on node h2" "$out")
    [ "$x" -ge 2 ] && ok "openib between the hosts: $x paths from h1's ranks to h2's" || bad "openib between the hosts: no path from h1 to h2 over openib"
  fi
  ;;
ucx)
  for mode in ib roce; do
    out=$work/ucx-$mode.out
    at env UCX_TLS=rc_verbs,ud_verbs,self UCX_LOG_LEVEL=info "$run" --mode $mode "${ip[@]}" -- "${mpi[@]}" \
      -x UCX_TLS -x UCX_LOG_LEVEL --mca pml ucx --mca pml_ucx_devices any --mca btl self \
      "$ring" $rounds 0 $elems 1 > "$out" 2>&1
    rc=$?
    # UCX logs each endpoint configuration: each rank's remote peers over rc_verbs
    n=$(grep "ep_cfg\[[0-9]*\]: tag(rc_verbs/softrdma0:1)" "$out" | grep -Eo '\[[a-z0-9]+:[0-9]+ *:' | sort -u | wc -l)
    other=$(grep "ep_cfg" "$out" | grep -Ev "tag\(((self|rc_verbs|ud_verbs)/[a-z0-9:]+ ?)+\)" | head -3)
    if [ $rc = 0 ] && answer_ok "$out" && [ "$n" = 4 ] && [ -z "$other" ]; then
      ok "UCX rc_verbs ($mode), $where: $(grep '^ring: 4' "$out")"
    else
      bad "UCX rc_verbs ($mode), $where (exit $rc, $n of 4 ranks on rc_verbs${other:+, other: $other})"
      grep -v "rdmacm\|ucp_context" "$out" | tail -25 | sed 's/^/  /'
    fi
  done
  ;;
*) echo "usage: openmpi.sh SOFTRDMA_RUN RING openib|ucx [--two-hosts]"; exit 2 ;;
esac
echo "openmpi $variant ($where): $pass passed, $fail failed"
[ $fail = 0 ]
