# Helpers for the vm tier's test scripts; they run inside guest 1 of ibdbg-vm.
# shellcheck shell=bash

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# on_guest N CMD ARGS...: run CMD ARGS (argument vector, not a shell line) on guest N; directly
# when N is this guest (a vm-host round trip costs a Python start-up under TCG).
on_guest() {
	local n=$1
	shift
	if [ "$n" = "${IBDBG_VM_GUEST:-}" ]; then
		"$@"
	else
		vm-host -n "$n" "$(printf '%q ' "$@")"
	fi
}

# serve GUEST LOG READY CMD ARGS...: start CMD ARGS on GUEST in the background (through one
# vm-host call, its output to LOG) and return once the shell condition READY holds there (it is
# tested on GUEST itself, every 50 ms, for up to 30 s) or CMD has exited; the caller then waits
# for $SERVE_PID, whose status is CMD's, and reads LOG with served_log LOG.
serve() {
	local guest=$1 log=$2 ready=$3
	shift 3
	local mark=$SERVE_MARK
	vm-host -n "$guest" "$(printf '%q ' "$@") & p=\$!; n=0
		until $ready; do
			kill -0 \$p 2>/dev/null && [ \$n -lt 600 ] || break
			n=\$((n + 1)); sleep 0.05
		done
		echo $mark >&2; wait \$p" >"$log" 2>&1 &
	SERVE_PID=$!
	while ! grep -q "$mark" "$log"; do
		kill -0 "$SERVE_PID" 2>/dev/null || break
		sleep 0.05
	done
}
SERVE_MARK="@@ibdbg-vm-ready-$$@@"
# served_log LOG [PREFIX]: LOG of serve, without its marker line, each line prefixed.
served_log() {
	grep -vF "$SERVE_MARK" "$1" | sed "s/^/${2:-}/"
}

# A batch of servers on one guest, run by a single vm-host call, so that a server's start-up
# (a Python round trip and the program's own initialisation, seconds under TCG) overlaps with
# the client of the server before it:
#   server_add NAME READY CMD ARGS...   add a server (READY: a shell condition, as for serve)
#   servers_start GUEST                 run them on GUEST and return at once: the first is
#                                       started, then each next one once the one before it is
#                                       ready and the one before that has exited
#   server_wait NAME                    wait until NAME is ready (or the batch has ended)
#   server_done NAME [PREFIX]           wait until NAME has exited; print its output, prefixed;
#                                       return its status (255 if the batch ended without it)
#   server_kill NAME                    stop NAME (after its client failed)
# The servers must exit in the order they were added (their clients run one after the other),
# and each needs a time limit of its own that covers the waiting for its turn.
SERVERS_START=()
SERVERS_NAMES=()
SERVERS_DIR=/tmp/ibdbg-vm-servers.$$
server_add() {
	local name=$1 ready=$2
	shift 2
	local out=$SERVERS_DIR/$name
	SERVERS_NAMES+=("$name")
	SERVERS_START+=("$(printf '%q ' "$@") >$out.log 2>&1 & echo \$! >$out.pid; n=0
until $ready; do kill -0 \$(cat $out.pid) 2>/dev/null && [ \$n -lt 600 ] || break; n=\$((n + 1)); sleep 0.05; done
echo '@@ready $name@@'
")
}
servers_start() {
	local guest=$1 k j script="mkdir -p $SERVERS_DIR
"
	local -a finish=()
	for k in "${!SERVERS_NAMES[@]}"; do
		finish[k]="wait \$(cat $SERVERS_DIR/${SERVERS_NAMES[k]}.pid); st=\$?
sed 's/^/@@${SERVERS_NAMES[k]}| /' $SERVERS_DIR/${SERVERS_NAMES[k]}.log
echo \"@@done ${SERVERS_NAMES[k]} \$st@@\"
"
	done
	for k in "${!SERVERS_NAMES[@]}"; do
		[ "$k" -ge 2 ] && script+=${finish[k - 2]}
		script+=${SERVERS_START[k]}
	done
	for ((j = ${#SERVERS_NAMES[@]} - 2; j < ${#SERVERS_NAMES[@]}; j++)); do
		[ "$j" -ge 0 ] && script+=${finish[j]}
	done
	SERVERS_GUEST=$guest
	SERVERS_LOG=$(mktemp)
	vm-host -n "$guest" "$script" >"$SERVERS_LOG" 2>&1 &
	SERVERS_PID=$!
}
server_wait() {
	until grep -q "^@@ready $1@@\$" "$SERVERS_LOG"; do
		kill -0 "$SERVERS_PID" 2>/dev/null || return 1
		sleep 0.05
	done
}
server_done() {
	local name=$1 prefix=${2:-} st
	until grep -q "^@@done $name [0-9]*@@\$" "$SERVERS_LOG"; do
		if ! kill -0 "$SERVERS_PID" 2>/dev/null; then
			grep -q "^@@done $name [0-9]*@@\$" "$SERVERS_LOG" && break
			echo "${prefix}(the servers' vm-host call ended without $name):" >&2
			grep -v '^@@' "$SERVERS_LOG" | sed "s/^/$prefix/" >&2
			return 255
		fi
		sleep 0.05
	done
	st=$(sed -n "s/^@@done $name \([0-9]*\)@@\$/\1/p" "$SERVERS_LOG")
	sed -n "s/^@@$name| /$prefix/p" "$SERVERS_LOG"
	return "$st"
}
server_kill() {
	on_guest "$SERVERS_GUEST" sh -c "kill \$(cat $SERVERS_DIR/$1.pid)" 2>/dev/null
}

# tcp_listening PORT: the shell condition "something listens on TCP port PORT" (for serve).
tcp_listening() {
	echo "grep -Eq ':$(printf %04X "$1") [0-9A-F]+:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null"
}

# rdma_pair SERVER CLIENT PORT TOOL ARGS...: run unmodified TOOL (an ibverbs example such as
# ibv_rc_pingpong, or a perftest program) as server on guest SERVER and as client on guest
# CLIENT, each limited to $PAIR_TIMEOUT s (default 60), and check that both pass.  The
# client's output goes to stdout, the server's follows, prefixed "server: ".
rdma_pair() {
	local server=$1 client=$2 port=$3 tool=$4
	shift 4
	local log limit=${PAIR_TIMEOUT:-60}
	log=$(mktemp)
	echo "== $tool $*: server on guest $server, client on guest $client"
	serve "$server" "$log" "$(tcp_listening "$port")" timeout "$limit" "$tool" -p "$port" "$@"
	if ! on_guest "$client" timeout "$limit" "$tool" -p "$port" "$@" "10.0.0.$server"; then
		kill "$SERVE_PID" 2>/dev/null
		served_log "$log" "  server: "
		fail "$tool client on guest $client (server on guest $server)"
	fi
	if ! wait "$SERVE_PID"; then
		served_log "$log" "  server: "
		fail "$tool server on guest $server (client on guest $client)"
	fi
	served_log "$log" "  server: "
	rm -f "$log"
}

# step NAME COMMAND ARGS...: run COMMAND (a function of this file or a program) in a subshell,
# so that its fail() ends only this step; report "PASS: NAME (N s, ...)" or "FAIL: NAME (...)"
# with the step's time and the time since this guest booted, and keep going.
# finish SCRIPT: one line with the counts; exit 1 (naming the failed steps) if any failed.
STEPS_PASSED=0
STEPS_FAILED=()
step() {
	local name=$1 t0=$SECONDS
	shift
	if ("$@"); then
		STEPS_PASSED=$((STEPS_PASSED + 1))
		echo "PASS: $name ($((SECONDS - t0)) s, guest up $(cut -d. -f1 /proc/uptime) s)"
	else
		STEPS_FAILED+=("$name")
		echo "FAIL: $name ($((SECONDS - t0)) s, guest up $(cut -d. -f1 /proc/uptime) s)" >&2
	fi
}
finish() {
	local total=$((STEPS_PASSED + ${#STEPS_FAILED[@]}))
	if [ ${#STEPS_FAILED[@]} -gt 0 ]; then
		echo "$1: ${#STEPS_FAILED[@]} of $total steps FAILED: ${STEPS_FAILED[*]}" >&2
		exit 1
	fi
	echo "$1: all $total steps passed"
}
