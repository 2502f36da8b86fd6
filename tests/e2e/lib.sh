# Shared by the end-to-end drivers in this folder; sourced, not run:
#   . "$(dirname "$0")/lib.sh"
# Each driver keeps its own steps and checks; only the scaffolding lives here.

# Descriptors the test runner leaks (ctest keeps its log open) would be part of
# the captured process and may not be reopenable by another user.  Call it
# from the driver's own shell (not a subshell), before it starts anything.
e2e_close_leaked_fds() {
  local fd
  for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done
}

# The unprivileged user the --as-user variants run as.
e2e_nobody=(setpriv --reuid=nobody --regid=nogroup --clear-groups)

# e2e_make_work NAME: sets work to a new /tmp/ibdbg-e2e-NAME.XXXXXX, readable
# by all (a replay as nobody walks into it).
e2e_make_work() {
  work=$(mktemp -d "/tmp/ibdbg-e2e-$1.XXXXXX") || exit 2
  chmod 755 "$work"
}

# e2e_identity AS_USER: with 1, hands $work to nobody and sets as=(...) to the
# command prefix that runs as nobody with its ibdbg home in $work; with 0, as=()
# and IBDBG_HOME is exported for the driver's own ibdbg commands.
e2e_identity() {
  as=()
  if [ "$1" = 1 ]; then
    chown nobody:nogroup "$work"
    as=("${e2e_nobody[@]}" env HOME="$work" IBDBG_HOME="$work/home")
  else
    export IBDBG_HOME="$work/home"
  fi
}

# e2e_setup NAME AS_USER: the usual start, before the driver starts anything:
# e2e_close_leaked_fds, e2e_make_work, e2e_identity and e2e_cleanup on exit (a
# driver with more to clean sets its own trap after).
e2e_setup() {
  e2e_close_leaked_fds
  e2e_make_work "$1"
  e2e_identity "$2"
  trap e2e_cleanup EXIT
}

# Kills what still runs from $work (every job's command line names it).
e2e_kill_work() { pkill -KILL -f "$work" 2>/dev/null; }

# Removes $work, unless KEEP is set (to look at it after a failure).
e2e_remove_work() { [ -n "${KEEP:-}" ] || rm -rf "$work"; }

# What e2e_setup traps on exit.
e2e_cleanup() { e2e_kill_work; e2e_remove_work; }

# fail MESSAGE: prints "FAIL(<fail_name>): MESSAGE", then the last <fail_tail>
# lines of each file in $work matching one of the globs in fail_logs (relative
# to $work, in that order), and exits 1.  A driver sets these three first.
fail_name=e2e fail_tail=30 fail_logs=('*.out')
fail() {
  echo "FAIL($fail_name): $*"
  local p f
  for p in "${fail_logs[@]}"; do
    for f in "$work"/$p; do [ -f "$f" ] && { echo "--- $f"; tail -n "$fail_tail" "$f"; }; done
  done
  exit 1
}

# wait_for FILE PATTERN SECONDS: succeeds once FILE has a line matching the grep
# PATTERN, fails after SECONDS.
wait_for() {
  for _ in $(seq $(( $3 * 20 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  return 1
}

# wait_bounded PID SECONDS: reaps the background job PID (its status is not
# kept), fails if it is still running after SECONDS.
wait_bounded() {
  for _ in $(seq $(( $2 * 20 ))); do kill -0 "$1" 2>/dev/null || { wait "$1"; return 0; }; sleep 0.05; done
  return 1
}
