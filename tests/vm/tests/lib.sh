# Helpers for the vm tier's test scripts; they run inside guest 1 of ibdbg-vm.
# shellcheck shell=bash

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# wait_listen GUEST PORT: wait until something on guest GUEST listens on TCP port PORT.
wait_listen() {
	for _ in $(seq 100); do
		if vm-host -n "$1" "ss -Hltn 'sport = :$2'" | grep -q ":$2"; then
			return 0
		fi
		sleep 0.2
	done
	fail "nothing listens on guest $1 port $2"
}

# rdma_pair SERVER CLIENT PORT TOOL ARGS...: run unmodified TOOL (an ibverbs example such as
# ibv_rc_pingpong) as server on guest SERVER and as client on guest CLIENT, both through
# vm-host, and check that both pass.
rdma_pair() {
	local server=$1 client=$2 port=$3 tool=$4
	shift 4
	local log
	log=$(mktemp)
	echo "== $tool $*: server on guest $server, client on guest $client"
	vm-host -n "$server" "$tool" -p "$port" "$@" >"$log" 2>&1 &
	local spid=$!
	wait_listen "$server" "$port"
	if ! vm-host -n "$client" "$tool" -p "$port" "$@" "10.0.0.$server"; then
		kill "$spid" 2>/dev/null
		cat "$log"
		fail "$tool client on guest $client (server on guest $server)"
	fi
	if ! wait "$spid"; then
		cat "$log"
		fail "$tool server on guest $server (client on guest $client)"
	fi
	sed 's/^/  server: /' "$log"
	rm -f "$log"
}
