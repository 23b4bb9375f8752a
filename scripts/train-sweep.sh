#!/usr/bin/env bash
# Train several recipes side by side on one machine (one GPU holds many small runs at once)
# and print each run's last line: validation float and int8 bits/token.
#
# Usage: scripts/train-sweep.sh CVQ_TRAIN OUTDIR RECIPES [COMMON ARGS...]
#   RECIPES: a file of lines `NAME ARGS...` (# starts a comment); each run gets COMMON ARGS,
#   then its own ARGS, and writes OUTDIR/NAME.safetensors and OUTDIR/NAME.log.
#   JOBS=N runs at most N at once (default: all; on a 2-core CPU, JOBS=1).
#
# On a machine without a CUDA toolkit, LD_LIBRARY_PATH must reach the driver's libcuda.so.1
# and CUDA 13's libcudart, libcublas(Lt), and libcurand: `cuda_libs` below finds
# them under /usr and /opt (a PyTorch install holds them) when the caller sets CVQ_FIND_CUDA=1.
set -euo pipefail

[ $# -ge 3 ] || { sed -n '2,10p' "$0"; exit 2; }
bin=$1 out=$2 recipes=$3
shift 3
mkdir -p "$out"

cuda_libs() {
    local dirs="" lib d
    for lib in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
        d=$(find /usr /opt -name "$lib" -not -path '*/stubs/*' 2>/dev/null | head -1 | xargs -r dirname)
        [ -n "$d" ] || { echo "train-sweep: $lib not found under /usr or /opt" >&2; return 1; }
        case ":$dirs:" in *":$d:"*) ;; *) dirs="$dirs:$d" ;; esac
    done
    echo "${dirs#:}"
}
if [ "${CVQ_FIND_CUDA:-0}" = 1 ]; then
    LD_LIBRARY_PATH="$(cuda_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
fi

failed=0
names=()
while read -r name args; do
    case "$name" in ''|'#'*) continue ;; esac
    while [ "${JOBS:-0}" -gt 0 ] && [ "$(jobs -rp | wc -l)" -ge "${JOBS:-0}" ]; do
        wait -n || failed=$((failed + 1))
    done
    # shellcheck disable=SC2086 # a recipe's arguments are words
    "$bin" "$@" $args -o "$out/$name.safetensors" >"$out/$name.log" 2>&1 &
    names+=("$name")
done <"$recipes"
echo "train-sweep: all ${#names[@]} runs started"

for pid in $(jobs -p); do wait "$pid" || failed=$((failed + 1)); done
for name in "${names[@]}"; do
    printf '%-12s %s\n' "$name" "$(tr '\r' '\n' <"$out/$name.log" | grep -v '^\s*$' | tail -1)"
done
[ "$failed" = 0 ] || { echo "train-sweep: $failed runs failed" >&2; exit 1; }
