#!/usr/bin/env bash
# The reference decoder (scripts/reference_decode.py, written from FORMAT.md alone) against
# cvq: archives of real frames of tests/data/clip.npy in every predictor, restored by both,
# compared byte for byte with cmp. Exits non-zero on any difference.
#   - context-mix: 100 frames (int16 (N, 8, 16)), 2 frames as big-endian int32 (N, 128) and
#     an empty segment, in one archive; whole files compared;
#   - neural, mixed, neural-adaptive, mixed-adaptive: 10 frames each; whole files compared;
#   - --frames: the first 3 frames of a 2400-frame context-mix segment and of a 200-frame
#     mixed one (segments long enough that the largest table sizes, 2^22 and 2^18, apply),
#     against the first 3 frames of what cvq restores;
#   - neural and mixed with random weights of the second weights format (key/value heads
#     shared, a reach of 1 row and 2 columns), 10 frames each;
#   - every archive of an earlier release in tests/data (FORMAT.md section 4.1).
# Needs python3 with numpy. Usage: scripts/reference-check.sh [CVQ]  (default ./target/release/cvq)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cvq=$(realpath -m "${1:-$root/target/release/cvq}")  # a path given is taken from where the caller is
cd "$root"
[ -x "$cvq" ] || { echo "reference-check: no cvq binary at $cvq (build it, or pass its path)" >&2; exit 2; }
ref="python3 $root/scripts/reference_decode.py"
clip=${CVQ_DATA:-tests/data}/clip.npy

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s.%N)
failed=0

python3 - "$clip" "$work" <<'PY'
import sys, numpy as np
clip, work = sys.argv[1], sys.argv[2]
a = np.load(clip)
assert a.shape == (1200, 8, 16) and a.dtype == np.int16, "clip.npy is not int16 (1200, 8, 16)"
for name, arr in [("c100", a[:100]), ("c10", a[:10]), ("c200", a[:200]), ("c2400", np.concatenate([a, a])),
                  ("be2", a[100:102].reshape(2, 128).astype(">i4")), ("empty", a[:0])]:
    np.save(f"{work}/{name}.npy", arr)
PY

seconds() { echo "$(date +%s.%N) $1" | awk '{printf "%.1f", $1 - $2}'; }

# compare NAME DIR_CVQ DIR_REF: every file of both directories, byte for byte; 1 on a difference.
compare() {
    if ! diff <(ls "$2") <(ls "$3") >/dev/null; then
        echo "FAIL $1: different files: $(ls "$2" | tr '\n' ' ') / $(ls "$3" | tr '\n' ' ')"; return 1
    fi
    local f
    for f in $(ls "$2"); do
        cmp "$2/$f" "$3/$f" || { echo "FAIL $1: $f differs"; return 1; }
    done
}

# check NAME ARCHIVE [--frames N]: cvq decompress and the reference decoder, compared (both
# given the weights file $weights if set).
check() {
    local name=$1 archive=$2 frames=${4:-}
    local out="$work/out-$name" got="$work/ref-$name"
    "$cvq" decompress -q ${weights:+--weights "$weights"} "$archive" -o "$out"
    if [ -n "$frames" ]; then
        # The first N frames of what cvq restored, as numpy writes an N-frame array.
        python3 -c "import sys, glob, numpy as np
for f in glob.glob(sys.argv[1] + '/*'):
    a = np.load(f)[:int(sys.argv[2])]
    with open(f, 'wb') as out: np.save(out, a)" "$out" "$frames"
    fi
    local t0; t0=$(date +%s.%N)
    if ! $ref "$archive" -o "$got" ${frames:+--frames $frames} ${weights:+--weights "$weights"} 2>"$work/log-$name"; then
        echo "FAIL $name: the reference decoder failed:"; cat "$work/log-$name"; failed=1; return
    fi
    if compare "$name" "$out" "$got"; then
        echo "ok   $name: $(ls "$got" | wc -l) file(s) identical; reference decode $(seconds "$t0") s"
    else
        failed=1
    fi
}

"$cvq" compress -q "$work/c100.npy" "$work/be2.npy" "$work/empty.npy" -o "$work/context-mix.cvq" --predictor context-mix
check context-mix "$work/context-mix.cvq"
for p in neural mixed neural-adaptive mixed-adaptive; do
    "$cvq" compress -q "$work/c10.npy" -o "$work/$p.cvq" --predictor "$p"
    check "$p" "$work/$p.cvq"
done
"$cvq" compress -q "$work/c2400.npy" -o "$work/context-mix-2400.cvq" --predictor context-mix
check context-mix-2400-first3 "$work/context-mix-2400.cvq" --frames 3
"$cvq" compress -q "$work/c200.npy" -o "$work/mixed-200.cvq" --predictor mixed
check mixed-200-first3 "$work/mixed-200.cvq" --frames 3
# Weights of the second format: 2 x 64, 4 heads on 2 key/value heads, K = 2, reach 1, 2.
[ -x target/release/examples/random_weights ] || cargo build --release -q --example random_weights
target/release/examples/random_weights "$work/options.safetensors" 2 64 4 2 128 3 2 1 2 2>/dev/null
for p in neural mixed; do
    "$cvq" compress -q "$work/c10.npy" -o "$work/options-$p.cvq" --predictor "$p" --weights "$work/options.safetensors"
    weights=$work/options.safetensors check "options-$p" "$work/options-$p.cvq"
done
for a in tests/data/*.cvq; do
    check "$(basename "$a" .cvq)" "$a"
done

echo "reference-check: $( [ $failed = 0 ] && echo passed || echo FAILED ) in $(seconds "$start") s"
exit $failed
