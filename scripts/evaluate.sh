#!/usr/bin/env bash
# Check a submission zip as the challenge grader would: unzip it into a temporary directory,
# run decompress.py with OUTPUT_DIR set, compare every output with its original byte for
# byte (and by value with numpy when it is installed), and print the score.
# Usage: scripts/evaluate.sh SUBMISSION.zip ORIGINALS_DIR
# Exit status: 0 if every original came back identical, 1 otherwise, 2 on bad usage.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 SUBMISSION.zip ORIGINALS_DIR" >&2; exit 2; }
zip=$(realpath "$1")
originals=$(realpath "$2")
[ -f "$zip" ] || { echo "$zip: no such file" >&2; exit 2; }
[ -d "$originals" ] || { echo "$originals: not a directory" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m zipfile -e "$zip" "$work/unzipped"
start=$(date +%s.%N)
# As a grader may: from another directory, with a relative OUTPUT_DIR.
( cd "$work" && OUTPUT_DIR=output python3 unzipped/decompress.py ) || { echo "decompress.py failed" >&2; exit 1; }
end=$(date +%s.%N)
python3 - "$originals" "$work/output" "$zip" "$start" "$end" <<'PY'
import ast, math, os, sys
originals, output, zip_path, start, end = sys.argv[1:]


def tokens_in(path):
    """Elements of an .npy file, from its header alone (standard library only)."""
    with open(path, "rb") as f:
        magic = f.read(8)
        if magic[:6] != b"\x93NUMPY":
            sys.exit(f"{path}: not an .npy file")
        size = 2 if magic[6] == 1 else 4
        length = int.from_bytes(f.read(size), "little")
        return math.prod(ast.literal_eval(f.read(length).decode("latin1"))["shape"])


try:
    import numpy as np
except ImportError:
    np = None
names = sorted(os.listdir(originals))
bad = []
for name in names:
    got, want = os.path.join(output, name), os.path.join(originals, name)
    if not os.path.isfile(got):
        bad.append(f"missing: {name}")
        continue
    with open(got, "rb") as g, open(want, "rb") as w:
        if g.read() != w.read():
            bad.append(f"differs: {name}")
        elif np is not None and not np.array_equal(np.load(got), np.load(want)):
            bad.append(f"differs by value: {name}")
extra = sorted(set(os.listdir(output)) - set(names))
print(f"{len(names) - len(bad)}/{len(names)} files identical, decompressed in {float(end) - float(start):.1f} s"
      + (", values checked with numpy" if np is not None else ""))
bad += [f"not an original: {name}" for name in extra]
for b in bad:
    print(b, file=sys.stderr)
zip_bytes = os.path.getsize(zip_path)
tokens = sum(tokens_in(os.path.join(originals, n)) for n in names)
print(f"score {tokens * 10 / 8 / zip_bytes:.4f} = {tokens} tokens x 10 bits / 8 / {zip_bytes} zip bytes")
sys.exit(1 if bad else 0)
PY
