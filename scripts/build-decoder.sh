#!/usr/bin/env bash
# Build the challenge decoder reproducibly: the runtime crate alone (no candle, no built-in
# weights: the zip carries them beside it), statically linked for x86-64 Linux, stripped,
# then xz-compressed. Writes target/challenge/cvq and target/challenge/cvq.xz (what `cvq pack`
# puts in the zip) and prints their sizes and SHA-256.
# Usage: scripts/build-decoder.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=x86_64-unknown-linux-gnu
# The decoder goes to this checkout's target/, whatever CARGO_TARGET_DIR says elsewhere.
export CARGO_TARGET_DIR="$root/target"
# Paths of this machine stay out of the binary, so any checkout builds the same bytes. The
# flags are separated by 0x1f, so paths with spaces stay whole.
flags=(-C target-feature=+crt-static "--remap-path-prefix=$root=/cvq" "--remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo")
CARGO_ENCODED_RUSTFLAGS=$(IFS=$'\x1f'; echo "${flags[*]}")
export CARGO_ENCODED_RUSTFLAGS
unset RUSTFLAGS
cargo build --locked --quiet --profile decoder --no-default-features --bin cvq --target "$target"
mkdir -p target/challenge
cp "target/$target/decoder/cvq" target/challenge/cvq
xz -9e --threads=1 --stdout target/challenge/cvq > target/challenge/cvq.xz
file target/challenge/cvq | grep -q "static" || { echo "decoder is not statically linked" >&2; exit 1; }
ls -l target/challenge/cvq target/challenge/cvq.xz
sha256sum target/challenge/cvq target/challenge/cvq.xz
