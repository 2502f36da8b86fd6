#!/bin/bash
# Host side: a command that runs past --timeout is stopped: exit status 124 and a message.
set -u
vm=$1
start=$(date +%s)
err=$("$vm" --timeout 3 -- sleep 600 2>&1 >/dev/null)
rc=$?
elapsed=$(($(date +%s) - start))
echo "status $rc after ${elapsed}s: $err"
[ "$rc" -eq 124 ] || { echo "FAIL: status $rc, expected 124"; exit 1; }
grep -q "did not finish within 3 s" <<<"$err" || { echo "FAIL: no timeout message"; exit 1; }
[ "$elapsed" -lt 100 ] || { echo "FAIL: took ${elapsed}s"; exit 1; }
echo "passed"
