#!/bin/sh
# ibdbg-vm stage 2: runs as PID 1 inside every guest, chrooted into the overlay of the host's
# root (see initramfs-init).  Environment from /run/ibdbg-vm/boot.sh:
#   IBDBG_VM_HOSTS  number of guests K       IBDBG_VM_TOOLDIR  tests/vm on the host
#   IBDBG_VM_MODDIR host path of the kernel's /lib/modules/<version> (in the ibdbg-vm cache)
#   IBDBG_VM_KVER   guest kernel version      IBDBG_VM_PORT    TCP port of the vm-host agent
#   IBDBG_VM_PYTHON python3 used for the agent
# Guest N (from the kernel command line, ibdbg.n=N) sets up hostname vmN, address 10.0.0.N/24,
# the rxe0 device, the --share mounts and the agent, then writes /run/ibdbg-vm/ready.N.
# Guest 1 then waits for /run/ibdbg-vm/go and runs cmd.sh with the caller's environment.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
CTL=/run/ibdbg-vm
N=
# shellcheck disable=SC2013
for w in $(cat /proc/cmdline); do
	case "$w" in ibdbg.n=*) N=${w#ibdbg.n=} ;; esac
done
log() { echo "ibdbg-vm guest $N [$(cut -d" " -f1 /proc/uptime)]: $*"; }
fail() {
	log "FAILED: $*"
	sync
	echo o >/proc/sysrq-trigger 2>/dev/null
	poweroff -f
	sleep 1000000
}
[ -n "$N" ] || fail "no ibdbg.n= on the kernel command line"

# Kernel modules come from the cached Debian package, seen through the host root.
mkdir -p "/lib/modules/$IBDBG_VM_KVER" || fail "mkdir /lib/modules/$IBDBG_VM_KVER"
mount --bind "$IBDBG_VM_MODDIR" "/lib/modules/$IBDBG_VM_KVER" || fail "bind mount of the guest kernel's modules"
echo /sbin/modprobe >/proc/sys/kernel/modprobe
# What udev would add to a bare devtmpfs: bash's process substitution needs /dev/fd.
ln -sfn /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr

# Name, hosts file.
echo "vm$N" >/proc/sys/kernel/hostname
echo "vm$N" >/etc/hostname
{
	echo "127.0.0.1 localhost"
	echo "::1 localhost ip6-localhost ip6-loopback"
	while read -r _ gaddr gname; do echo "$gaddr $gname"; done <"$CTL/hosts"
} >/etc/hosts

# --share directories, read-write, each at its own path.
if [ -s "$CTL/shares" ]; then
	while IFS=' ' read -r tag path; do
		mkdir -p "$path" 2>/dev/null
		mount -t 9p -o rw,trans=virtio,version=9p2000.L,msize=262144 "$tag" "$path" ||
			fail "mount of share $path"
	done <"$CTL/shares"
fi

# Network: no IPv6 (keeps the GID table to [0] = default GID, [1] = IPv4-mapped address).
echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6
echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6
ip link set lo up
# crc32_generic: rxe needs a "crc32" hash (for the ICRC) and cannot load one by itself here.
mods="virtio_net crc32_generic ib_uverbs rdma_rxe rdma_ucm"
[ "$IBDBG_VM_NICS" -gt 1 ] && mods="$mods bridge"
# shellcheck disable=SC2086
modprobe -a $mods || fail "modprobe -a $mods"

# The NICs ibdbg-vm gave this guest: one per peer, MAC 52:54:00:1b:<N>:<peer> (hex).
nics=
tries=0
while :; do
	nics=
	for d in /sys/class/net/*; do
		case "$(cat "$d/address" 2>/dev/null)" in 52:54:00:1b:*) nics="$nics ${d##*/}" ;; esac
	done
	# shellcheck disable=SC2086
	set -- $nics
	cnt=$#
	[ "$cnt" -ge "$IBDBG_VM_NICS" ] && break
	tries=$((tries + 1))
	[ $tries -lt 100 ] || fail "expected $IBDBG_VM_NICS virtio-net interfaces, found $cnt"
	sleep 0.1
done
if [ "$IBDBG_VM_NICS" -eq 1 ]; then
	# One NIC: the rxe device sits directly on the virtio-net interface.
	dev=${nics# }
	ip link set "$dev" up || fail "ip link set $dev up"
else
	# Several NICs (full mesh, one point-to-point link per peer): a bridge whose ports are
	# isolated from each other, so nothing is forwarded between links (no loops); frames from
	# this guest go out on the link that leads to their destination.
	dev=br0
	ip link add br0 address "52:54:00:1b:$(printf %02x "$N"):00" type bridge stp_state 0 ||
		fail "ip link add br0"
	for nic in $nics; do
		ip link set "$nic" master br0 || fail "bridge port $nic"
		echo 1 >"/sys/class/net/$nic/brport/isolated" || fail "isolating bridge port $nic"
		ip link set "$nic" up
	done
	ip link set br0 up
fi
ip addr add "10.0.0.$N/24" dev "$dev" || fail "address 10.0.0.$N on $dev"
rdma link add rxe0 type rxe netdev "$dev" || fail "rdma link add rxe0 type rxe netdev $dev"
tries=0
while [ ! -e /dev/infiniband/uverbs0 ]; do
	tries=$((tries + 1))
	[ $tries -lt 100 ] || fail "no /dev/infiniband/uverbs0"
	sleep 0.1
done

# The caller's environment, for the command and the agent (stage 2 keeps its own PATH).
ln -sf "$IBDBG_VM_TOOLDIR/vm-host" /usr/local/bin/vm-host 2>/dev/null
hosts=$IBDBG_VM_HOSTS
with_env() (
	. "$CTL/env.sh"
	IBDBG_VM_GUEST=$N
	IBDBG_VM_HOSTS=$hosts
	export IBDBG_VM_GUEST IBDBG_VM_HOSTS
	case ":$PATH:" in *:/usr/local/bin:*) ;; *) PATH="$PATH:/usr/local/bin" ;; esac
	exec "$@"
)
cd /
with_env "$IBDBG_VM_PYTHON" -I -S "$IBDBG_VM_TOOLDIR/vm-host" --agent "$IBDBG_VM_PORT" "$CTL/ready.$N" \
	</dev/null >>"$CTL/agent.$N.log" 2>&1 &
log "up: $dev 10.0.0.$N/24, rxe0, agent on port $IBDBG_VM_PORT"

if [ "$N" -eq 1 ]; then
	while [ ! -e "$CTL/go" ]; do sleep 0.1; done
	with_env /bin/sh "$CTL/cmd.sh" </dev/null >"$CTL/out" 2>"$CTL/err"
	echo $? >"$CTL/status.tmp"
	sync
	mv "$CTL/status.tmp" "$CTL/status"
fi
# PID 1 must not exit; reap whatever is left over.
while :; do
	wait
	sleep 10
done
