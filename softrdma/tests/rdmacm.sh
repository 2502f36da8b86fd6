#!/bin/bash
# Unmodified rdmacm-utils programs over softrdma's librdmacm.
# Usage: rdmacm.sh SOFTRDMA_RUN MODE [loopback|hosts] [EVENTS_PROGRAM]
#   loopback: both sides on 127.0.0.1 (and EVENTS_PROGRAM, the event test)
#   hosts:    two hosts from tests/hosts/hosts.sh (network namespaces, as
#             root or in a user namespace of our own); exit 77 = skipped
set -u
run=$1
mode=$2
where=${3:-loopback}
events=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
hosts_sh=$here/../../tests/hosts/hosts.sh
fail=0; pass=0
ok() { pass=$((pass+1)); echo "ok   $*"; }
bad() { fail=$((fail+1)); echo "FAIL $*"; }

if [ "$where" = hosts ]; then
  [ -f "$hosts_sh" ] || { echo "SKIP: no tests/hosts/hosts.sh (standalone build)"; exit 77; }
  if [ "$(id -u)" != 0 ]; then
    # hosts.sh needs CAP_NET_ADMIN: take it in a user namespace of our own.
    if [ -z "${SOFTRDMA_RDMACM_USERNS:-}" ] && unshare -Ur true 2>/dev/null; then
      SOFTRDMA_RDMACM_USERNS=1 exec unshare -Ur bash "$0" "$@"
    fi
    echo "SKIP: needs root or user namespaces for test hosts"; exit 77
  fi
  d=$(mktemp -d)
  trap 'bash "$hosts_sh" down "$d"; rm -rf "$d"' EXIT
  bash "$hosts_sh" up "$d" 2 || { echo "SKIP: cannot make test hosts"; exit 77; }
  # softrdma takes each host's first non-loopback address (10.77.0.N).
  SRV=("$d/nshost" h1 "$run" --mode "$mode" --)
  CLI=("$d/nshost" h2 "$run" --mode "$mode" --)
  LISTENERS=("$d/nshost" h1 ss -Hltn)
  A=10.77.0.1
else
  SRV=("$run" --mode "$mode" --ip 127.0.0.1 --)
  CLI=("${SRV[@]}")
  LISTENERS=(ss -Hltn)
  A=127.0.0.1
fi
case $mode in ib) p=23000 ;; *) p=24000 ;; esac
[ "$where" = hosts ] && p=$((p+500))

# An rdma_cm listener on port P is a TCP listener on port P: wait for it
# instead of sleeping.
wait_listen() {
  for _ in $(seq 200); do
    "${LISTENERS[@]}" 2>/dev/null | awk '{print $4}' | grep -q "${LISTEN_ADDR:-}:$1\$" && return 0
    sleep 0.05
  done
  return 1
}

# cm_pair NAME PORT "SERVER ARGS" "CLIENT ARGS" [REGEX the client prints]
cm_pair() {
  cm_pair_once "$@" && return
  bad "$1 (client $crc, server $src)"
  sed 's/^/  cli: /' "$t/cli" | tail -10; sed 's/^/  srv: /' "$t/srv" | tail -10
}

t=$(mktemp -d)
trap 'rm -rf "$t"; [ -n "${d:-}" ] && { bash "$hosts_sh" down "$d"; rm -rf "$d"; }' EXIT
cm_pair_once() {
  local name=$1 port=$2 srv=$3 cli=$4 want=${5:-}
  # shellcheck disable=SC2086
  timeout 60 "${SRV[@]}" $srv > "$t/srv" 2>&1 &
  local spid=$!
  crc=- src=-
  : > "$t/cli"
  if ! wait_listen "$port"; then
    kill "$spid" 2>/dev/null; wait "$spid"
    echo "no listener on port $port" > "$t/cli"; return 1
  fi
  # shellcheck disable=SC2086
  timeout 60 "${CLI[@]}" $cli > "$t/cli" 2>&1; crc=$?
  # A failed client leaves its server waiting for nobody.
  [ $crc = 0 ] || kill "$spid" 2>/dev/null
  wait "$spid"; src=$?
  if [ $crc = 0 ] && [ $src = 0 ] && { [ -z "$want" ] || grep -Eq "$want" "$t/cli"; }; then
    ok "$name"; return 0
  fi
  return 1
}

p=$((p+1)); cm_pair "rping -v -V -C 20" $p "rping -s -a $A -p $p -v -V -C 20" \
  "rping -c -a $A -p $p -v -V -C 20" "ping data: rdma-ping-19: "
p=$((p+1)); cm_pair "rping -q (self-created QP, rdma_init_qp_attr, rdma_establish)" $p \
  "rping -s -q -a $A -p $p -V -C 10" "rping -c -q -a $A -p $p -v -V -C 10" "ping data: rdma-ping-9: "
p=$((p+1)); cm_pair "rping -S 65000" $p "rping -s -a $A -p $p -V -S 65000 -C 5" \
  "rping -c -a $A -p $p -V -S 65000 -C 5"
p=$((p+1)); cm_pair "ucmatose -c 4 -C 20 -m (rdma_migrate_id)" $p "ucmatose -p $p -c 4 -C 20 -m" \
  "ucmatose -s $A -p $p -c 4 -C 20 -m" "migrating to new event channel"
p=$((p+1)); cm_pair "rdma_server / rdma_client (rdma_create_ep, synchronous ids)" $p "rdma_server -p $p" \
  "rdma_client -s $A -p $p" "rdma_client: end 0"
# udaddy's port is always 7174: on loopback each mode's server takes its own
# address (softrdma's device address stays 127.0.0.1: the CM's and the
# device's addresses need not be the same).
U=$A
[ "$where" = loopback ] && { [ "$mode" = ib ] && U=127.0.0.2 || U=127.0.0.3; }
LISTEN_ADDR=$U cm_pair "udaddy -c 2 -C 20 (UD, SIDR)" 7174 "udaddy -b $U -c 2 -C 20" "udaddy -s $U -c 2 -C 20" \
  "test complete"

# perftest -R is left out: see README ("perftest -R").

# Nobody listens: the remote CM's reject (invalid service ID, reason 8).
p=$((p+1))
out=$(timeout 30 "${CLI[@]}" rping -c -a $A -p $p -C 1 2>&1); rc=$?
if [ $rc != 0 ] && echo "$out" | grep -q "RDMA_CM_EVENT_REJECTED, error 8"; then
  ok "rping to a port nobody listens on: REJECTED, reason 8"
else
  bad "rping to a port nobody listens on (rc $rc)"; echo "$out" | sed 's/^/  /' | tail -5
fi

if [ -n "$events" ]; then
  out=$(timeout 60 "${SRV[@]}" "$events" $((p+1)) 2>&1); rc=$?
  echo "$out" | sed 's/^/  /'
  [ $rc = 0 ] && ok "rdmacm_events" || bad "rdmacm_events (rc $rc)"
fi

echo "rdmacm $mode $where: $pass passed, $fail failed"
[ $fail = 0 ]
