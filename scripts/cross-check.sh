#!/usr/bin/env bash
# Bit-exact on any machine, checked: a real piece of the clip is compressed with every
# predictor natively and under emulated CPUs (x86-64 without AVX2, x86-64 with AVX2 and no
# AVX-512, arm64); every archive must equal the native one byte for byte, and every CPU must
# restore the native archive exactly. The engine's kernel-equality tests also run on arm64.
# Installs what it needs where missing: qemu-user, the aarch64 cross linker and libc, and the
# rustup target. Builds the runtime crate only (no candle).
# Usage: scripts/cross-check.sh [FRAMES]   (default 40 frames of the clip, from frame 1000)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
frames=${1:-40}
arm=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu

# Tools, installed only where absent.
packages=()
command -v qemu-x86_64 >/dev/null && command -v qemu-aarch64 >/dev/null || packages+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
if [ ${#packages[@]} -gt 0 ]; then
    echo "installing ${packages[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$arm" || rustup target add "$arm"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $sysroot"
cargo build --release --quiet -p cvq --bin cvq
# Warnings are errors here: the arm64 build must be as clean as the native one.
RUSTFLAGS="-D warnings" cargo build --release --quiet -p cvq --bin cvq --target "$arm"
native=target/release/cvq
arm64=target/$arm/release/cvq

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Frames 1000.. of the real clip as their own segment: an int16 npy of (frames, 8, 16).
python3 - "${CVQ_DATA:-tests/data}/clip.npy" "$work/piece" "$frames" <<'EOF'
import sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(src, "rb").read()
start = 10 + int.from_bytes(data[8:10], "little")
assert b"'<i2'" in data[:start] and b"(1200, 8, 16)" in data[:start], "clip.npy is not int16 (1200, 8, 16)"
dict_ = ("{'descr': '<i2', 'fortran_order': False, 'shape': (%d, 8, 16), }" % n).encode()
dict_ += b" " * (117 - len(dict_)) + b"\n"
body = data[start + 1000 * 256 : start + (1000 + n) * 256]
open(dst, "wb").write(b"\x93NUMPY\x01\x00" + len(dict_).to_bytes(2, "little") + dict_ + body)
EOF

cpus=("native:$native" "nehalem:qemu-x86_64 -cpu Nehalem $native" "haswell:qemu-x86_64 -cpu Haswell $native"
    "arm64:qemu-aarch64 -L $sysroot $arm64")
failed=0
check() { # what, then the command that must succeed
    local what=$1
    shift
    if "$@" >/dev/null 2>"$work/err"; then echo "ok      $what"; else echo "FAILED  $what: $(tail -1 "$work/err")"; failed=1; fi
}
for predictor in context-mix neural mixed neural-adaptive mixed-adaptive; do
    for entry in "${cpus[@]}"; do
        name=${entry%%:*}
        read -r -a run <<<"${entry#*:}"
        start=$SECONDS
        check "$predictor $name: compress" "${run[@]}" compress -q -j 1 --predictor "$predictor" "$work/piece" \
            -o "$work/$predictor-$name.cvq"
        [ "$name" = native ] || check "$predictor $name: archive equals the native one" \
            cmp "$work/$predictor-native.cvq" "$work/$predictor-$name.cvq"
        check "$predictor $name: restores the native archive" "${run[@]}" decompress -q -j 1 \
            "$work/$predictor-native.cvq" -o "$work/out-$predictor-$name"
        check "$predictor $name: restored file equals the piece" cmp "$work/piece" "$work/out-$predictor-$name/piece"
        echo "        ($((SECONDS - start)) s)"
    done
done
# The kernels against their portable definitions, on arm64 itself.
check "arm64: engine unit tests (kernel equality included)" cargo test --release --quiet -p cvq --lib --target "$arm"
[ $failed = 0 ] && echo "cross-check passed: $frames frames of the clip, every predictor, 4 CPUs" || echo "cross-check FAILED"
exit $failed
