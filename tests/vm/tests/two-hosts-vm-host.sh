#!/bin/bash
# Two guests: what vm-host promises (addresses, names, status, output streams, stdin, cwd, errors).
. "$(dirname "$0")/lib.sh"
set -u
expect() { # expect WHAT EXPECTED ACTUAL
	[ "$2" = "$3" ] || fail "$1: expected [$2], got [$3]"
	echo "ok: $1"
}
expect "vm-host lists the guests" "1 10.0.0.1 vm1
2 10.0.0.2 vm2" "$(vm-host)"
expect "vm-host 2 prints guest 2's address" 10.0.0.2 "$(vm-host 2)"
expect "vm-host by address" vm2 "$(vm-host 10.0.0.2 hostname)"
expect "vm-host by name" vm2 "$(vm-host vm2 hostname)"
expect "vm-host 1 runs here" vm1 "$(vm-host 1 hostname)"
vm-host 2 false && fail "vm-host 2 false returned 0"
echo "ok: vm-host 2 false returns non-zero"
vm-host 2 'exit 7'
expect "exit status" 7 "$?"
vm-host 2 'kill -TERM $$'
expect "killed by a signal" 143 "$?"
out=$(vm-host 2 'echo to-stdout; echo to-stderr >&2' 2>/dev/null)
expect "stdout" to-stdout "$out"
err=$(vm-host 2 'echo to-stdout; echo to-stderr >&2' 2>&1 >/dev/null)
expect "stderr" to-stderr "$err"
expect "ssh-like: words joined, run by sh -c" "a b" "$(vm-host 2 echo a '$(echo b)')"
expect "stdin is forwarded" HELLO "$(echo hello | vm-host 2 tr a-z A-Z)"
expect "-n: no stdin" "" "$(echo hello | vm-host -n 2 cat)"
expect "cwd is the caller's" "$PWD" "$(vm-host 2 pwd)"
expect "the environment is the caller's" "$PATH" "$(vm-host 2 'echo $PATH')"
expect "IBDBG_VM_GUEST" 2 "$(vm-host 2 'echo $IBDBG_VM_GUEST')"
big=$(vm-host 2 'head -c 3000000 /dev/zero | tr "\0" x' | wc -c)
expect "3 MB of output" 3000000 "$big"
msg=$(vm-host 5 true 2>&1)
expect "no guest 5: status 255" 255 "$?"
grep -q "no guest '5'" <<<"$msg" || fail "no clear message for guest 5: $msg"
echo "ok: unknown guest: $msg"
expect "ssh options are ignored" vm2 "$(vm-host -x -T -o BatchMode=yes -p 22 -l root vm2 hostname)"
expect "localhost is this guest" vm1 "$(vm-host localhost hostname)"
timeout 3 vm-host -n 2 'sleep 301; echo never'
expect "vm-host killed by timeout(1)" 124 "$?"
sleep 1
expect "the remote command went with its client" 0 "$(vm-host -n 2 "ps -eo args | grep -c '^sleep 301'")"
# A guest that goes away: vm-host says so (status 255) instead of hanging, both for the command
# that was running when it went and for the next one.
start=$SECONDS
msg=$(vm-host -n 2 'echo o > /proc/sysrq-trigger' 2>&1)
expect "guest 2 powered off under a command: status 255" 255 "$?"
echo "ok: after $((SECONDS - start)) s: $msg"
start=$SECONDS
msg=$(vm-host -n 2 true 2>&1)
expect "guest 2 powered off: status 255" 255 "$?"
grep -q "guest 2 (10.0.0.2) does not answer" <<<"$msg" || fail "no clear message: $msg"
echo "ok: after $((SECONDS - start)) s: $msg"
echo "two-hosts vm-host: passed"
