#!/usr/bin/env bash
# cvq-train's gradients against PyTorch: for each model shape below, the trainer writes its
# parameters (spread so that attention is far from uniform), a batch of the real clip, the loss
# and every gradient in f64 (`--example gradients`); torch_reference.py rebuilds the same model
# from them, recomputes all of it in f64 on the CPU and prints the largest relative error of
# each tensor. Fails if any exceeds the tolerance (torch_reference.py --help). Needs cargo,
# python3 with torch and numpy (`pip install torch numpy`); about 20 s after the build.
#
#   train/bench/gradient-check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p cvq-train --example gradients
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# The built-in model's shape (K=2) and the challenge preset's (6 x 256, 8 heads, K=4), each
# with 2 scored frames per window; the tiny preset's, with 1; then the default shape with the
# options that read less (key/value heads shared in pairs, reach 2 rows and 3 columns) and the
# challenge shape with one key/value head (multi-query) and a reach of 1 row.
for shape in "2 128 4 2 512 2" "6 256 8 4 1024 2" "1 32 2 1 64 1" "2 128 4 2 512 2 2 2 3" "6 256 8 4 1024 2 1 1 15"; do
    ./target/release/examples/gradients "$dir/g.safetensors" $shape 2>/dev/null
    python3 train/bench/torch_reference.py --gradients "$dir/g.safetensors"
    echo
done
# The tuned PyTorch peer's frame-block attention (gpu-check.sh) against the dense form.
python3 train/bench/torch_reference.py --check-blocks
