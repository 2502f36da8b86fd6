#!/bin/bash
# Two guests: softrdma's conformance program (softrdma/tests/conformance.cc), unchanged, in its
# two-process mode over rxe0 and the link between the guests: the responder side on guest 2
# (-l), the requester side here on guest 1 (-c 10.0.0.2); its remote_* groups (RC send with
# immediate, RDMA write, read and 200 fetch-and-adds checked by the side that holds the data;
# bad rkey, missing remote write/read rights, a receive too small, RNR wait and RNR retry
# exceeded, each NAK crossing the link).  Both sides must pass.
#   two-hosts-conformance.sh SOFTRDMA_CONFORMANCE
. "$(dirname "$0")/lib.sh"
set -u
conf=${1:?usage: two-hosts-conformance.sh SOFTRDMA_CONFORMANCE}
[ -x "$conf" ] || fail "$conf: not built (softrdma is built only with libibverbs-dev)"
port=18600
log=/tmp/two-hosts-conformance.$$
serve 2 "$log" "$(tcp_listening $port)" timeout 120 "$conf" -d rxe0 -g 1 -l -p $port
timeout 120 "$conf" -d rxe0 -g 1 -c 10.0.0.2 -p $port
rc=$?
[ $rc = 0 ] || kill "$SERVE_PID" 2>/dev/null
wait "$SERVE_PID"
src=$?
served_log "$log" "  guest 2: "
[ $rc = 0 ] && [ $src = 0 ] || fail "conformance on two guests: requester (guest 1) $rc, responder (guest 2) $src"
echo "conformance on two guests: passed"
