#!/bin/bash
# softrdma's libibverbs.so.1 (or, with a second argument, its librdmacm.so.1)
# exports exactly the default-versioned symbols of the system's library of
# that name (IBVERBS_1.0 ... 1.14 and IBVERBS_PRIVATE_34; RDMACM_1.0 ... 1.3)
# and nothing else, under that SONAME; besides them only softrdma's own
# SOFTRDMA_PRIVATE_1 node (src/owned.cc, for checkpoint tools).
set -eu
ours=$1
name=${2:-libibverbs.so.1}
sys=$(ldconfig -p | awk -v n="$name" '$1 == n && /x86-64/ {print $NF; exit}')
[ -n "$sys" ] || { echo "SKIP: no system $name"; exit 0; }
syms() { objdump -T "$1" | grep -v '\*UND\*' | grep -E ' D[FO] ' | awk '{print $(NF-1), $NF}' | grep -v '^(' | awk '$1!=$2' | sort; }
diff <(syms "$sys") <(syms "$ours" | grep -v ' SOFTRDMA_PRIVATE_1$') && echo "ok   exported symbols and versions match $sys"
readelf -d "$ours" | grep -q "SONAME.*\[$name\]" && echo "ok   SONAME $name"
# nothing but C library, threads and the loader is needed (and the verbs
# library for the connection manager, as the system's)
allow='libc.so|libm.so|ld-linux|libpthread'
[ "$name" = libibverbs.so.1 ] || allow="$allow|libibverbs.so.1"
extra=$(readelf -d "$ours" | awk '/NEEDED/ {print $NF}' | grep -Ev "$allow" || true)
[ -z "$extra" ] && echo "ok   no dependencies beyond ${allow//|/, }" || { echo "FAIL extra NEEDED: $extra"; exit 1; }
echo "abi: 3 passed, 0 failed"
