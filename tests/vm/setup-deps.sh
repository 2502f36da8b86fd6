#!/bin/sh
# Installs what tests/vm needs (Debian 12 packages), then fetches the guest kernel into the
# ibdbg-vm cache.  Idempotent: installs only what is missing, runs 'apt-get update' only when
# apt does not know a needed package, downloads the kernel only when the cache has none.
#   tests/vm/setup-deps.sh [--no-kernel]
# Package installation needs root (or sudo); the kernel goes to the calling user's cache
# (IBDBG_VM_CACHE, default ~/.cache/ibdbg-vm).
set -eu
here=$(cd "$(dirname "$0")" && pwd)

# qemu-system-x86: the guests; busybox-static: the initramfs; rdma-core, ibverbs-providers
# (librxe), ibverbs-utils (ibv_devinfo, ibv_*_pingpong), perftest, iproute2 (ip, rdma, ss),
# rdmacm-utils (rping), openmpi-bin, libopenmpi-dev (mpicc), ucx-utils (ucx_info,
# ucx_perftest; brings libucx0): software the guests run from the host's root; kmod (depmod,
# modprobe), python3 (ibdbg-vm, vm-host), dpkg (dpkg-deb) and apt (apt-get download) for the
# tool itself.
pkgs="qemu-system-x86 busybox-static rdma-core ibverbs-providers ibverbs-utils perftest iproute2
rdmacm-utils openmpi-bin libopenmpi-dev ucx-utils kmod python3 dpkg apt"

missing=
for p in $pkgs; do
	if ! dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
		missing="$missing $p"
	fi
done

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		echo "setup-deps: need root to run: $*" >&2
		exit 1
	fi
}

known() { # does apt have an installation candidate for package $1?
	apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [^(]'
}

kernel_known() {
	apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null | grep -q .
}

cached_kernel() {
	cache=${IBDBG_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ibdbg-vm}
	ls -d "$cache"/linux-image-6.1.0-*-amd64/.complete >/dev/null 2>&1
}

need_update=
for p in $missing; do
	known "$p" || need_update=1
done
if [ "${1:-}" != "--no-kernel" ] && ! cached_kernel && [ -z "${IBDBG_VM_KERNEL_PKG:-}" ] && ! kernel_known; then
	need_update=1
fi
if [ -n "$need_update" ]; then
	echo "setup-deps: apt-get update"
	as_root apt-get update -q
fi
install() {
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}
if [ -n "$missing" ]; then
	echo "setup-deps: installing$missing"
	# shellcheck disable=SC2086
	if ! install $missing; then
		[ -z "$need_update" ] || exit 1
		echo "setup-deps: installation failed; apt-get update and once more"
		as_root apt-get update -q
		need_update=1
		# shellcheck disable=SC2086
		install $missing
	fi
else
	echo "setup-deps: packages already installed"
fi

if [ "${1:-}" != "--no-kernel" ]; then
	if ! "$here/ibdbg-vm" --prepare; then
		[ -z "$need_update" ] || exit 1
		echo "setup-deps: fetching the kernel failed; apt-get update and once more"
		as_root apt-get update -q
		"$here/ibdbg-vm" --prepare
	fi
fi
