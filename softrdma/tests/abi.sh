#!/bin/bash
# softrdma's libibverbs.so.1 exports exactly the default-versioned symbols of
# the system's libibverbs.so.1 (IBVERBS_1.0 ... 1.14, IBVERBS_PRIVATE_34) and
# nothing else; its SONAME is libibverbs.so.1.
set -eu
ours=$1
sys=$(ldconfig -p | awk '/libibverbs.so.1 .*x86-64/ {print $NF; exit}')
[ -n "$sys" ] || { echo "SKIP: no system libibverbs.so.1"; exit 0; }
syms() { objdump -T "$1" | grep -v '\*UND\*' | grep -E ' D[FO] ' | awk '{print $(NF-1), $NF}' | grep -v '^(' | awk '$1!=$2' | sort; }
diff <(syms "$sys") <(syms "$ours") && echo "ok   exported symbols and versions match $sys"
readelf -d "$ours" | grep -q 'SONAME.*\[libibverbs.so.1\]' && echo "ok   SONAME libibverbs.so.1"
# nothing but C library, threads and the loader is needed
extra=$(readelf -d "$ours" | awk '/NEEDED/ {print $NF}' | grep -Ev 'libc.so|libm.so|ld-linux|libpthread' || true)
[ -z "$extra" ] && echo "ok   no dependencies beyond libc" || { echo "FAIL extra NEEDED: $extra"; exit 1; }
echo "abi: 3 passed, 0 failed"
