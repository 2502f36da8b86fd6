#!/bin/bash
# The main job, end to end: run an example job capturable, capture it in the
# middle of its work, translate the image for a machine where the program
# lives elsewhere, and replay it with gdb attached at the capture point; the
# job then finishes and checks its own result.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/tools/deps.sh"
build=${IBDBG_BUILD:-$root/build}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
ibdbg=$build/bin/ibdbg
demo=$(mktemp -d /tmp/ibdbg-demo.XXXXXX)
export IBDBG_HOME=$demo/home
trap 'pkill -KILL -f "$demo" 2>/dev/null || true' EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# The "cluster" installation of the program.
mkdir -p "$demo/cluster/bin"
cp "$build/bin/heat" "$demo/cluster/bin/heat"

say "ibdbg run -- heat 4 400   (a 4-thread solver; output in $demo/run.log)"
"$ibdbg" run --dir "$demo/job" -- "$demo/cluster/bin/heat" 4 400 10000 > "$demo/run.log" 2>&1 &
until grep -q "step 100" "$demo/run.log" 2>/dev/null; do sleep 0.1; done
cat "$demo/run.log"

say "ibdbg capture --stop   (image of the whole job, then stop it)"
img=$("$ibdbg" capture --dir "$demo/job" --stop)
wait || true
echo "$img"

say "ibdbg inspect"
"$ibdbg" inspect "$img" | sed -n '1,24p'
echo "..."

say "on the workstation the program lives elsewhere: ibdbg translate --map-path"
mv "$demo/cluster" "$demo/workstation"
"$ibdbg" translate "$img" -o "$demo/image-ws" --map-path "$demo/cluster=$demo/workstation"

say "ibdbg replay --gdb-batch 'info threads; thread apply all bt 4'"
"$ibdbg" replay "$demo/image-ws" --dir "$demo/job-ws" --gdb-batch 'info threads; thread apply all bt 4'

say "the replayed job wrote on where it was writing at capture time ($demo/run.log):"
tail -4 "$demo/run.log"
grep -q "checksum .* OK" "$demo/run.log"

say "done: images and logs in $demo  (interactive: $ibdbg replay $demo/image-ws --gdb)"
