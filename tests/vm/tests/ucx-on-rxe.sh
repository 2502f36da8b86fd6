#!/bin/bash
# Not part of ctest: shows what UCX 1.13 does on rxe without the setting the tier uses, for the
# "UCX on rxe" section of README.md.  Run in guest 1 of two:
#   tests/vm/ibdbg-vm --hosts 2 -- tests/vm/tests/ucx-on-rxe.sh
# Each case runs ucx_perftest (UCP tag-matching latency) between the guests and prints its
# status and UCX's messages; the script exits 0 when every case behaved as described:
#   1. UCX_TLS=ud_verbs,self: UD endpoints time out ("unhandled timeout error", abort), since
#      the UD receive path drops every datagram rxe delivers (ETH_DGID_CHECK, see README.md);
#   2. the same with UCX_UD_VERBS_ETH_DGID_CHECK=n: passes;
#   3. UCX_TLS=rc_verbs,self: "no auxiliary transport" (RC needs a UD lane for wire-up);
#   4. UCX_TLS=rc_verbs,ud_verbs:aux,self with the DGID check off: passes over rc_verbs.
. "$(dirname "$0")/lib.sh"
set -u
export UCX_NET_DEVICES=rxe0:1
# Give up on an unanswered UD endpoint after 5 s instead of the default 30 s.
export UCX_UD_VERBS_TIMEOUT=5s
bad=0
case_() { # case_ NAME EXPECT(pass|fail) PATTERN ENV...
	local name=$1 expect=$2 pattern=$3 log out rc
	shift 3
	log=$(mktemp)
	echo "== $name: $*"
	serve 2 "$log" "$(tcp_listening 13337)" env "$@" UCX_NET_DEVICES=rxe0:1 \
		UCX_UD_VERBS_TIMEOUT=5s timeout 60 ucx_perftest -p 13337
	out=$(env "$@" UCX_LOG_LEVEL=info timeout 60 ucx_perftest 10.0.0.2 -p 13337 -t tag_lat -n 100 2>&1)
	rc=$?
	wait "$SERVE_PID"
	local src=$?
	grep -E 'ep_cfg|ERROR|Fatal|Final' <<<"$out" | sed 's/^/  client: /'
	served_log "$log" | grep -E 'ERROR|Fatal' | sed 's/^/  server: /'
	echo "   client status $rc, server status $src"
	if [ "$expect" = pass ] && [ $rc -eq 0 ] && [ $src -eq 0 ] && grep -q "$pattern" <<<"$out"; then
		echo "   as described (passes)"
	elif [ "$expect" = fail ] && [ $rc -ne 0 ] && grep -q "$pattern" <<<"$out"; then
		echo "   as described (fails)"
	else
		echo "   NOT as described"
		bad=1
	fi
	rm -f "$log"
}
case_ "UD, DGID check on (UCX's default)" fail 'unhandled timeout error' UCX_TLS=ud_verbs,self
case_ "UD, DGID check off" pass 'tag(ud_verbs/rxe0:1)' UCX_TLS=ud_verbs,self UCX_UD_VERBS_ETH_DGID_CHECK=n
case_ "RC alone" fail 'no auxiliary transport' UCX_TLS=rc_verbs,self
case_ "RC, UD for wire-up, DGID check off" pass 'tag(rc_verbs/rxe0:1)' \
	UCX_TLS=rc_verbs,ud_verbs:aux,self UCX_UD_VERBS_ETH_DGID_CHECK=n
exit $bad
