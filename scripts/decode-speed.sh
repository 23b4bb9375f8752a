#!/usr/bin/env bash
# Decode speed of a neural model on real tokens, one thread: tests/data/clip.npy cut into 8
# pieces of 150 frames, compressed with `--predictor neural --weights WEIGHTS`, then
# `cvq decompress -j 1` timed (the 8 pieces decode in one lockstep batch, as a worker does)
# and checked byte for byte. Prints tokens/s per core and the hours the challenge's 768M
# tokens would take on 16 such cores. For a preset's shape, its untrained model will do:
#   cvq-train --preset challenge --steps 0 --qat-steps 0 --data tests/data/clip.npy -o W.safetensors
# Usage: scripts/decode-speed.sh WEIGHTS [CVQ]  (default ./target/release/cvq); needs python3
# with numpy. Run it on an idle machine: the figure is a wall-clock rate.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { sed -n '2,9p' "$0"; exit 2; }
weights=$(realpath "$1")
cvq=$(realpath -m "${2:-$root/target/release/cvq}")
[ -x "$cvq" ] || { echo "decode-speed: no cvq binary at $cvq" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$root/tests/data/clip.npy" "$work/in" <<'PY'
import os, sys, numpy as np
a = np.load(sys.argv[1])
os.makedirs(sys.argv[2])
for i in range(8):
    np.save(f"{sys.argv[2]}/piece{i}.npy", a[i * 150:(i + 1) * 150])
PY
"$cvq" compress -q "$work/in" -o "$work/a.cvq" --predictor neural --weights "$weights"
start=$(date +%s.%N)
"$cvq" decompress -q -j 1 "$work/a.cvq" -o "$work/out" --weights "$weights"
end=$(date +%s.%N)
for f in "$work"/in/*; do cmp "$f" "$work/out/$(basename "$f")"; done
awk -v s="$start" -v e="$end" -v b="$(stat -c %s "$work/a.cvq")" 'BEGIN {
    n = 8 * 150 * 128; r = n / (e - s)
    printf "decode-speed: %d tokens in %.2f s: %.0f tokens/s on one core (%.2f h for 768M tokens on 16 cores); archive %d bytes, %.4f bits/token\n",
        n, e - s, r, 768e6 / (16 * r) / 3600, b, b * 8 / n
}'
