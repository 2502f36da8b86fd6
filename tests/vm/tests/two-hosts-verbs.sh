#!/bin/bash
# Two guests, one boot: unmodified rdma-core, perftest and librdmacm programs between them,
# servers on guest 2 (through vm-host), clients here on guest 1.  Every program is a step of
# its own: a failure names the program and the others still run.
#  - ibv_{rc,uc,ud,srq}_pingpong with their data check (-c), GID index 1 (RoCE v2);
#  - perftest (Debian's 4.5, ibv_wr_* API): ib_send_bw, ib_write_bw, ib_read_lat, ib_atomic_bw;
#  - rping -v -V (librdmacm: address resolution through rdma_cm, RDMA read and write).
. "$(dirname "$0")/lib.sh"
set -u
[ "$(vm-host | wc -l)" -eq 2 ] || fail "expected 2 guests"

# Ping-pongs.  The UD message must fit the active MTU (1024 on rxe over a 1500-byte link).
step ibv_rc_pingpong rdma_pair 2 1 18515 ibv_rc_pingpong -d rxe0 -g 1 -c -n 100
step ibv_uc_pingpong rdma_pair 2 1 18516 ibv_uc_pingpong -d rxe0 -g 1 -c -n 100
step ibv_ud_pingpong rdma_pair 2 1 18517 ibv_ud_pingpong -d rxe0 -g 1 -c -n 100 -s 1024
step ibv_srq_pingpong rdma_pair 2 1 18518 ibv_srq_pingpong -d rxe0 -g 1 -c -q 4 -n 50

# perftest: -x 1 is the RoCE v2 GID; -F: no CPU frequency check (a guest under TCG has none).
# Each must print its result line (bytes, iterations, then figures).
perf() { # perf PORT PROGRAM ARGS...
	local out
	out=$(rdma_pair 2 1 "$@") || { echo "$out"; return 1; }
	echo "$out"
	grep -Eq '^[[:space:]]*[0-9]+[[:space:]]+[0-9]+[[:space:]]+[0-9.]+' <<<"$out" ||
		fail "$2: no result line"
}
step ib_send_bw perf 18521 ib_send_bw -d rxe0 -x 1 -F -s 4096 -n 100
step ib_write_bw perf 18522 ib_write_bw -d rxe0 -x 1 -F -s 4096 -n 100
step ib_read_lat perf 18523 ib_read_lat -d rxe0 -x 1 -F -s 64 -n 100
step ib_atomic_bw perf 18524 ib_atomic_bw -d rxe0 -x 1 -F -n 100

# rping: the server listens through rdma_cm (no TCP socket: wait for its LISTEN cm_id); -V
# checks the data, and -v prints it on both sides, which must agree.
rping_pair() {
	local count=10 log out
	log=$(mktemp)
	out=$(mktemp)
	echo "== rping -v -V -C $count: server on guest 2, client on guest 1"
	serve 2 "$log" "rdma res show cm_id | grep -q 'state LISTEN .*comm rping src-addr 10.0.0.2:7174 '" \
		timeout 60 rping -s -a 10.0.0.2 -C $count -v -V
	timeout 60 rping -c -a 10.0.0.2 -C $count -v -V >"$out" || { cat "$out"; served_log "$log"; fail "rping client"; }
	wait "$SERVE_PID" || { cat "$out"; served_log "$log"; fail "rping server"; }
	cat "$out"
	served_log "$log" "  server: "
	[ "$(grep -c '^ping data: rdma-ping-' "$out")" -eq $count ] || fail "rping client: not $count pings"
	local i
	for i in $(seq 0 $((count - 1))); do
		grep -q "^ping data: rdma-ping-$i: [A-Za-z]" "$out" || fail "rping client: no ping $i"
	done
	# The server printed the same data.
	sed -n 's/^.*ping data: //p' "$out" >"$out.c"
	sed -n 's/^.*ping data: //p' "$log" >"$out.s"
	cmp -s "$out.c" "$out.s" || fail "rping: server and client saw different data"
	rm -f "$log" "$out" "$out.c" "$out.s"
}
step rping rping_pair
finish "two-hosts verbs"
