# A server/client run of one unmodified program, shared by utils.sh and
# netns.sh.  The caller sets PAIR_SRV and PAIR_CLI (command prefixes, arrays),
# PAIR_ADDR (the server's address for the client) and PAIR_WAIT (seconds the
# server gets to start), and defines ok and bad.

# One run; 0 if both succeeded (crc/src hold the exit statuses).
pair_once() {  # dir, program and arguments
  local d=$1; shift
  timeout 60 "${PAIR_SRV[@]}" "$@" > "$d/srv" 2>&1 &
  local spid=$!
  sleep "$PAIR_WAIT"
  timeout 60 "${PAIR_CLI[@]}" "$@" "$PAIR_ADDR" > "$d/cli" 2>&1; crc=$?
  wait $spid; src=$?
  [ $crc = 0 ] && [ $src = 0 ]
}

# A loaded 2-core machine can starve a timing-bound run (perftest gives up on
# its out-of-band socket): a failure is shown and the pair runs once more; a
# real defect fails both times.
pair() {  # name, program and arguments (server and client alike)
  local name=$1; shift
  local d; d=$(mktemp -d)
  local crc src
  if ! pair_once "$d" "$@"; then
    echo "RETRY $name (client $crc, server $src)"; tail -3 "$d/cli" | sed 's/^/  cli: /'
    sleep 1
    pair_once "$d" "$@"
  fi
  if [ $crc = 0 ] && [ $src = 0 ]; then
    ok "$name: $(grep -E 'iters|^ *[0-9]+ +[0-9]+ ' "$d/cli" | tail -1 | tr -s ' \t' ' ')"
  else
    bad "$name (client $crc, server $src)"; grep -v "address" "$d/cli" | sed 's/^/  cli: /' | tail -12; grep -v "address" "$d/srv" | sed 's/^/  srv: /' | tail -12
  fi
  rm -rf "$d"
}
