#!/bin/bash
# Two guests: unmodified ibv_rc_pingpong -g 1, server on guest 2 (through vm-host), client here on guest 1.
. "$(dirname "$0")/lib.sh"
set -u
log=$(mktemp)
vm-host -n 2 ibv_rc_pingpong -g 1 >"$log" 2>&1 &
server=$!
wait_listen 2 18515
ibv_rc_pingpong -g 1 10.0.0.2 || { cat "$log"; fail "ibv_rc_pingpong client on guest 1"; }
wait "$server" || { cat "$log"; fail "ibv_rc_pingpong server on guest 2"; }
sed 's/^/server: /' "$log"
echo "two-hosts rc_pingpong: passed"
