#!/bin/bash
# The conformance program's two-process mode (remote_* groups) on softrdma: the
# responder side (-l, on a port the kernel picks) and the requester side (-c) as
# two processes on loopback, as tests/vm runs them on two rxe guests.
# Usage: conformance-pair.sh SOFTRDMA_RUN MODE PROGRAM
set -u
run=$1 mode=$2 prog=$3
case $mode in ib) g=() ;; *) g=(-g 1) ;; esac
R=("$run" --mode "$mode" --ip 127.0.0.1 --)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
timeout 120 "${R[@]}" "$prog" "${g[@]}" -l -p 0 >"$log" 2>&1 &
lpid=$!
port=
for _ in $(seq 300); do
  port=$(sed -n 's/^listening on port \([0-9]*\)$/\1/p' "$log")
  [ -n "$port" ] || ! kill -0 $lpid 2>/dev/null && break
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "FAIL conformance pair $mode: the responder did not listen"; cat "$log"; kill $lpid 2>/dev/null; exit 1
fi
timeout 120 "${R[@]}" "$prog" "${g[@]}" -c 127.0.0.1 -p "$port"
crc=$?
[ $crc = 0 ] || kill $lpid 2>/dev/null
wait $lpid
lrc=$?
sed 's/^/  responder: /' "$log"
if [ $crc = 0 ] && [ $lrc = 0 ]; then
  echo "conformance pair $mode: passed"
else
  echo "FAIL conformance pair $mode: requester $crc, responder $lrc"
  exit 1
fi
