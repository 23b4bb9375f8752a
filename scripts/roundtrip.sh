#!/usr/bin/env bash
# Compress the given .npy segments, decompress them, and compare every file byte for byte.
# Usage: scripts/roundtrip.sh FILE_OR_DIR...   (builds cvq in release mode first)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 FILE_OR_DIR..." >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin cvq
cvq="$root/target/release/cvq"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$cvq" compress "$@" -o "$work/archive.cvq"
"$cvq" decompress "$work/archive.cvq" -o "$work/out"
status=0
for input in "$@"; do
    if [ -d "$input" ]; then files=("$input"/*); else files=("$input"); fi
    for f in "${files[@]}"; do
        cmp -s "$f" "$work/out/$(basename "$f")" || { echo "DIFFERS: $f" >&2; status=1; }
    done
done
[ $status -eq 0 ] && echo "all files identical"
exit $status
