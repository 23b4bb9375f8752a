#!/usr/bin/env bash
# Assemble a minimal CUDA 13.0 toolkit (nvcc + headers + link libs) from NVIDIA's PyPI wheels,
# enough to build candle 0.11.1 / cudarc 0.19.10 with `--features cuda` on a machine with
# no CUDA toolkit and no GPU.
#
# Usage:  scripts/cuda-toolkit-from-pypi.sh [DEST]   (DEST defaults to /tmp/cuda13)
# Then:   source DEST/build-env.sh      (or set the env vars printed at the end)
#
# Needs: pip (any Python 3), unzip, gcc (only to build the libcuda.so link stub).
# Network: PyPI only.
set -euo pipefail

DEST="${1:-/tmp/cuda13}"
DEST="$(mkdir -p "$DEST" && cd "$DEST" && pwd)"
WHEELS="$DEST/wheels"
mkdir -p "$WHEELS"

# CUDA 13.0 component wheels (all "nvidia/cu13/..." layout). Exact versions.
PKGS=(
  nvidia-cuda-nvcc==13.0.88      # bin/nvcc ptxas fatbinary cudafe++ nvlink bin2c, nvcc.profile
  nvidia-nvvm==13.0.88           # nvvm/bin/cicc, nvvm/libdevice, libnvvm.so.4
  nvidia-cuda-crt==13.0.88       # include/crt/*.h (host_config.h, host_defines.h, ...)
  nvidia-cuda-runtime==13.0.96   # cuda.h, cuda_runtime.h, cuda_fp16/bf16/fp8.h, libcudart.so.13
  nvidia-cuda-cccl==13.0.85      # include/cccl/{cuda,cub,thrust}, include/nv
  nvidia-cuda-nvrtc==13.0.88     # nvrtc.h, libnvrtc.so.13   (cudarc links -lnvrtc)
  nvidia-curand==10.4.0.35       # curand*.h, libcurand.so.10 (cudarc links -lcurand)
  nvidia-cublas==13.0.2.14       # cublas*.h, libcublas.so.13, libcublasLt.so.13 (~420 MB)
)

for p in "${PKGS[@]}"; do
  name="${p%%==*}"; ver="${p##*==}"
  fname="$(echo "$name" | tr - _)-${ver}-"
  if ls "$WHEELS/$fname"*.whl >/dev/null 2>&1; then
    echo "have $p"
  else
    echo "download $p"
    python3 -m pip download --quiet --no-deps --only-binary=:all: "$p" -d "$WHEELS"
  fi
done

# Unpack all wheels and merge their nvidia/cu13/ trees into DEST.
TMPX="$(mktemp -d)"
trap 'rm -rf "$TMPX"' EXIT
for w in "$WHEELS"/*.whl; do
  unzip -q -o "$w" 'nvidia/cu13/*' -d "$TMPX"
done
cp -a "$TMPX/nvidia/cu13/." "$DEST/"

# Toolkit-style layout: lib64 -> lib, targets/x86_64-linux/{include,lib}.
ln -sfn lib "$DEST/lib64"
mkdir -p "$DEST/targets/x86_64-linux"
ln -sfn ../../include "$DEST/targets/x86_64-linux/include"
ln -sfn ../../lib "$DEST/targets/x86_64-linux/lib"

# Unversioned .so names for the linker (-lcudart -lnvrtc -lcurand -lcublas -lcublasLt -lnvvm).
cd "$DEST/lib"
for f in libcudart.so.13 libnvrtc.so.13 libcurand.so.10 libcublas.so.13 libcublasLt.so.13 libnvvm.so.4; do
  [ -e "$f" ] && ln -sfn "$f" "${f%%.so*}.so"
done

# libcuda.so (driver API) is not shipped in any wheel: it comes with the NVIDIA driver.
# cudarc's `dynamic-linking` feature (selected by candle-core) emits -lcuda, so build a
# link-only stub, like the toolkit's lib64/stubs/libcuda.so: every cu* identifier that
# appears in cuda.h becomes a dummy exported function. SONAME is libcuda.so.1, so at run time
# the real driver's libcuda.so.1 is loaded instead (never put the stub on LD_LIBRARY_PATH).
mkdir -p "$DEST/lib/stubs"
grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$DEST/include/cuda.h" | sort -u > "$DEST/lib/stubs/libcuda_symbols.txt"
awk '{print "int " $1 "(void){return 999;}"}' "$DEST/lib/stubs/libcuda_symbols.txt" > "$DEST/lib/stubs/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$DEST/lib/stubs/libcuda.so" "$DEST/lib/stubs/libcuda_stub.c"

cat > "$DEST/build-env.sh" <<EOF
# source this before: cargo build --release -p cvq-train --features cuda
export CUDA_HOME=$DEST
export CUDA_PATH=$DEST
export CUDA_ROOT=$DEST
export PATH=$DEST/bin:\$PATH
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-80}   # no GPU to query; sm_80 = A100 (H100 would be 90)
export CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-2}   # parallel nvcc jobs in candle-kernels' build.rs
EOF

# Smoke test: nvcc version and a trivial kernel to PTX and to a host object.
"$DEST/bin/nvcc" --version | tail -2
cat > "$TMPX/t.cu" <<'EOF'
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda/std/limits>
extern "C" __global__ void k(const __half* a, float* b, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) b[i] = __half2float(a[i]) + cuda::std::numeric_limits<float>::epsilon();
}
EOF
"$DEST/bin/nvcc" --ptx -arch=sm_80 "$TMPX/t.cu" -o "$TMPX/t.ptx"
"$DEST/bin/nvcc" -c -arch=sm_80 -Xcompiler -fPIC "$TMPX/t.cu" -o "$TMPX/t.o"
echo "OK: toolkit assembled in $DEST ; now: source $DEST/build-env.sh"
