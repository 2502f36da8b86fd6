#!/bin/bash
# Which data path is negotiated: SOFTRDMA_TRANSPORT=auto within one namespace
# must offer and get both the shared-memory ring and the one-copy path for
# large RC messages (the requester logs each), tcp neither. The conformance program is the workload (it must pass too).
# Usage: transport.sh SOFTRDMA_RUN CONFORMANCE MODE
set -u
run=$1 conf=$2 mode=$3
fail=0
for t in auto tcp; do
  out=$(SOFTRDMA_DEBUG=1 SOFTRDMA_TRANSPORT=$t "$run" --mode "$mode" --ip 127.0.0.1 -- "$conf" 2>&1)
  rc=$?
  n=$(grep -c "one-copy path to qp" <<< "$out")
  r=$(grep -c "shared-memory ring to qp" <<< "$out")
  echo "$t: conformance exit $rc, $n QPs on the one-copy path, $r with a shared-memory ring"
  [ $rc = 0 ] || { fail=1; tail -5 <<< "$out"; }
  case $t in
    auto) [ "$n" -gt 0 ] || { echo "FAIL: auto never took the one-copy path"; fail=1; }
          [ "$r" -gt 0 ] || { echo "FAIL: auto never took the shared-memory ring"; fail=1; } ;;
    tcp) [ "$n" = 0 ] || { echo "FAIL: tcp took the one-copy path"; fail=1; }
         [ "$r" = 0 ] || { echo "FAIL: tcp took the shared-memory ring"; fail=1; } ;;
  esac
done
[ $fail = 0 ] && echo PASS
exit $fail
