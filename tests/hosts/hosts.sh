#!/bin/bash
# Test "hosts" for multi-host jobs on one machine: each host is a network and
# UTS namespace (its own host name, its own addresses) held open by a sleeping
# process; all are joined by veth pairs to a bridge in a namespace of its own,
# so their traffic never leaves these namespaces.
#
#   hosts.sh up DIR N   makes h1..hN (10.77.0.1..N/24), writes DIR/hI.pid and
#                       DIR/nshost, an ssh-like remote shell: `nshost HOST CMD...`
#                       runs the words of CMD, joined by spaces, with sh on HOST.
#   hosts.sh down DIR   removes them.
# Needs CAP_SYS_ADMIN and CAP_NET_ADMIN: root, or root of a user namespace of
# one's own (unshare -Ur), which is how the unprivileged tests use it.
set -eu
cmd=$1 dir=$2
case $cmd in
  up)
    n=$3
    mkdir -p "$dir"
    hold() { # name unshare-flags...
      local name=$1; shift
      unshare "$@" sleep infinity </dev/null >/dev/null 2>&1 &
      echo $! > "$dir/$name.pid"
      # unshare has made the namespaces once its child is sleep.
      for _ in $(seq 100); do [ "$(readlink /proc/$!/exe)" = "$(readlink -f "$(command -v sleep)")" ] && return 0; sleep 0.02; done
      echo "hosts.sh: cannot make namespace $name" >&2; return 1
    }
    hold switch --net
    sw=$(cat "$dir/switch.pid")
    nsenter -t "$sw" -n sh -c 'ip link set lo up && ip link add br0 type bridge && ip link set br0 up'
    for i in $(seq "$n"); do
      hold "h$i" --net --uts
      pid=$(cat "$dir/h$i.pid")
      nsenter -t "$pid" -u hostname "h$i"
      nsenter -t "$sw" -n ip link add "v$i" type veth peer name eth0 netns "$pid"
      nsenter -t "$sw" -n sh -c "ip link set v$i master br0 && ip link set v$i up"
      nsenter -t "$pid" -n sh -c "ip link set lo up && ip addr add 10.77.0.$i/24 dev eth0 && ip link set eth0 up"
    done
    cat > "$dir/nshost" <<EOS
#!/bin/sh
# ssh-like remote shell into the test hosts of $dir.
h=\$1; shift
[ -f "$dir/\$h.pid" ] || { echo "nshost: no host \$h" >&2; exit 255; }
exec nsenter -t "\$(cat "$dir/\$h.pid")" -n -u -- sh -c "\$*"
EOS
    chmod 755 "$dir/nshost"
    ;;
  down)
    for f in "$dir"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; rm -f "$f"; done
    rm -f "$dir/nshost"
    ;;
  *) echo "usage: hosts.sh up DIR N | down DIR" >&2; exit 2 ;;
esac
