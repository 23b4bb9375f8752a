#!/usr/bin/env bash
# The GPU check of cvq-train, prepared to run on the device machine (no Rust, no network; it has
# nvcc, a driver and PyTorch with its CUDA libraries). Build here first and carry the results:
#
#   scripts/cuda-toolkit-from-pypi.sh /tmp/cuda13 && source /tmp/cuda13/build-env.sh
#   CARGO_TARGET_DIR=/tmp/cuda-target cargo build --release -p cvq-train --features cuda
#   mkdir -p carry && strip -o carry/cvq-train /tmp/cuda-target/release/cvq-train && xz -9 -f carry/cvq-train
#   cargo build --release -p cvq && xz -9 -c target/release/cvq > carry/cvq.xz
#
# then run `bash train/bench/gpu-check.sh carry` there (carry: the folder), with a limit of
# 600 s (it takes about 5 minutes, most of it torch.compile). For the default and the
# challenge preset's sizes it prints, from one call: cvq-train's scored tokens/s, the naive
# and the tuned PyTorch peer's (same model, same batch, timed after their warmup steps), both
# ratios, and cvq-train's forward / backward / optimizer time per step, the device
# synchronised after each (a separate short run with --profile).
set -euo pipefail
carry=${1:?usage: gpu-check.sh CARRY_DIR}
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out" /tmp/cvq-bin
xz -dc "$carry/cvq-train.xz" > /tmp/cvq-bin/cvq-train
xz -dc "$carry/cvq.xz" > /tmp/cvq-bin/cvq
chmod +x /tmp/cvq-bin/*
# The CUDA 13 libraries of the PyTorch install (cublas, cudart, curand), and the driver's libcuda.
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
libs=$(find "$site/nvidia" \( -name 'libcublas.so.13' -o -name 'libcudart.so.13' -o -name 'libcurand.so.10' \) -printf '%h\n' | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

# 96 generated 1200-frame segments (14.7M tokens): enough for a few hundred steps of streaming.
/tmp/cvq-bin/cvq synth --segments 96 --frames 1200 --seed 1 -o /tmp/synth --manifest /tmp/synth.json

rate() { grep -o '[0-9]* tokens/s' <<<"$1" | head -1 | grep -o '^[0-9]*'; }

run() { # name, steps, model and batch flags (the same for cvq-train and both peers)
    local name=$1 steps=$2 flags=$3
    echo "== $name: $flags" | tee -a "$out/speed.txt"
    local ours naive tuned profile
    ours=$(/tmp/cvq-bin/cvq-train --cuda --data /tmp/synth $flags --steps "$steps" --qat-steps 0 --warmup 10 \
        --eval-every 100000 --log-every 50 --force -o "/tmp/$name.safetensors" 2>&1 | grep -E '^(model|trained)')
    profile=$(/tmp/cvq-bin/cvq-train --cuda --data /tmp/synth $flags --steps 40 --qat-steps 0 --warmup 10 \
        --eval-every 100000 --log-every 50 --profile --force -o "/tmp/$name-profile.safetensors" 2>&1 | grep '^profile')
    naive=$(python3 train/bench/torch_reference.py $flags --steps 50 2>&1 | tail -1)
    tuned=$(python3 train/bench/torch_reference.py $flags --steps 50 --tuned 2>&1 | tail -1)
    printf '%s\n' "$ours" "$profile" "$naive" "$tuned" | tee -a "$out/speed.txt"
    local c n t
    c=$(rate "$(grep trained <<<"$ours")") n=$(rate "$naive") t=$(rate "$tuned")
    echo "$name: cvq-train $c tokens/s; torch naive $n (ratio $(python3 -c "print(round($c / $n, 3))")), tuned $t (ratio $(python3 -c "print(round($c / $t, 3))"))" | tee -a "$out/ratios.txt"
}
run default 300 "--layers 2 --width 128 --heads 4 --context-frames 2 --mlp-width 512 --batch 64 --frames 4"
run challenge 200 "--layers 6 --width 256 --heads 8 --context-frames 4 --mlp-width 1024 --batch 64 --frames 4"
