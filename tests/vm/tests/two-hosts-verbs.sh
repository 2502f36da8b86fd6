#!/bin/bash
# Two guests, one boot: unmodified rdma-core, perftest and librdmacm programs between them,
# servers on guest 2, clients here on guest 1.  Every program is a step of its own: a failure
# names the program and the others still run.
#  - ibv_{rc,uc,ud,srq}_pingpong with their data check (-c), GID index 1 (RoCE v2);
#  - perftest (Debian's 4.5): ib_send_bw, ib_write_bw, ib_read_lat, ib_atomic_bw;
#  - rping -v -V (librdmacm: address resolution through rdma_cm, RDMA read and write).
# The servers run through one vm-host call, each started while the client of the one before it
# runs (server_add in lib.sh).
. "$(dirname "$0")/lib.sh"
set -u
[ "$(vm-host | wc -l)" -eq 2 ] || fail "expected 2 guests"

# NAME PORT PROGRAM ARGS...: the server's and the client's command line (the client adds the
# server's address).  The UD message must fit the active MTU (1024: rxe on a 1500-byte link).
# perftest: -x 1 is the RoCE v2 GID; -F: no CPU frequency check (a TCG guest has none).
programs=(
	"ibv_rc_pingpong 18515 ibv_rc_pingpong -d rxe0 -g 1 -c -n 100"
	"ibv_uc_pingpong 18516 ibv_uc_pingpong -d rxe0 -g 1 -c -n 100"
	"ibv_ud_pingpong 18517 ibv_ud_pingpong -d rxe0 -g 1 -c -n 100 -s 1024"
	"ibv_srq_pingpong 18518 ibv_srq_pingpong -d rxe0 -g 1 -c -q 4 -n 50"
	"ib_send_bw 18521 ib_send_bw -d rxe0 -x 1 -F -s 4096 -n 100"
	"ib_write_bw 18522 ib_write_bw -d rxe0 -x 1 -F -s 4096 -n 100"
	"ib_read_lat 18523 ib_read_lat -d rxe0 -x 1 -F -s 64 -n 100"
	"ib_atomic_bw 18524 ib_atomic_bw -d rxe0 -x 1 -F -n 100"
)
# A server may wait for its turn: its time limit covers the whole series.
for p in "${programs[@]}"; do
	read -r name port cmd <<<"$p"
	# shellcheck disable=SC2086
	server_add "$name" "$(tcp_listening "$port")" timeout 180 $cmd -p "$port"
done
# rping's server listens through rdma_cm, not on a TCP socket: wait for its LISTEN cm_id.
rping_count=10
server_add rping "rdma res show cm_id | grep -q 'state LISTEN .*comm rping src-addr 10.0.0.2:7174 '" \
	timeout 180 rping -s -a 10.0.0.2 -C $rping_count -v -V
servers_start 2

# client NAME CMD ARGS...: run the client here once NAME's server is ready; both must pass.
client() {
	local name=$1
	shift
	echo "== $name: server on guest 2, client on guest 1: $*"
	server_wait "$name" || fail "$name: the server did not start"
	if ! timeout 60 "$@"; then
		server_kill "$name"
		server_done "$name" "  server: "
		fail "$name client"
	fi
	server_done "$name" "  server: " || fail "$name server (status $?)"
}

# pair NAME PORT PROGRAM ARGS...: client of an ibverbs example or perftest program; perftest
# must print its result line (bytes, iterations, figures).
pair() {
	local name=$1 port=$2
	shift 2
	local out
	out=$(client "$name" "$@" -p "$port" 10.0.0.2) || { echo "$out"; return 1; }
	echo "$out"
	case $name in
	ib_*) grep -Eq '^ *[0-9]+ +[0-9]+ +[0-9.]+' <<<"$out" || fail "$name: no result line" ;;
	esac
}
for p in "${programs[@]}"; do
	# shellcheck disable=SC2086
	step "${p%% *}" pair $p
done

# rping: -V checks the data; -v prints it on both sides, which must agree.
rping_pair() {
	local out
	out=$(client rping rping -c -a 10.0.0.2 -C $rping_count -v -V) || { echo "$out"; return 1; }
	echo "$out"
	[ "$(grep -c '^ping data: rdma-ping-' <<<"$out")" -eq $rping_count ] ||
		fail "rping client: not $rping_count pings"
	local i
	for i in $(seq 0 $((rping_count - 1))); do
		grep -q "^ping data: rdma-ping-$i: [A-Za-z]" <<<"$out" || fail "rping client: no ping $i"
	done
	# The server printed the same data.
	[ "$(sed -n 's/^ping data: //p' <<<"$out")" = "$(sed -n 's/^  server: .*ping data: //p' <<<"$out")" ] ||
		fail "rping: server and client saw different data"
}
step rping rping_pair
finish "two-hosts verbs"
