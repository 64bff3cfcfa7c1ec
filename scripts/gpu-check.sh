#!/usr/bin/env bash
# The GPU check, run ON a lent GPU machine (device tool) over the binaries scripts/gpu-prepare.sh built
# here: the conformance suite, then asyppo against PyTorch implementations of verl's functions at the
# paper's scale (bench/gpu/bench_vs_torch.py). Everything it prints is also written under $OUT.
#   device run: command "bash scripts/gpu-check.sh", carry ["build/gpu"], timeout_s 540
# Record the results in docs/benchmarks.md with the device named.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/asyppo-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The CUDA 13 runtime and cuBLAS: the toolkit's, else the ones PyTorch's wheels bring.
libs=/usr/local/cuda/lib64
for d in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, s, "lib") for p in nvidia.__path__ for s in os.listdir(p)))' 2>/dev/null); do
  [ -d "$d" ] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'
  ldd build/gpu/test_cuda_conformance | grep -E "cudart|cublas|not found"
} 2>&1 | tee "$OUT/device.txt"
echo "==> conformance suite"
timeout 240 ./build/gpu/test_cuda_conformance --reporter compact 2>&1 | tee "$OUT/conformance.txt"
echo "conformance exit code: ${PIPESTATUS[0]}" | tee -a "$OUT/conformance.txt"
echo "==> asyppo vs torch (verl), 1024 x 8192, K = 2"
timeout 240 python3 bench/gpu/bench_vs_torch.py --lib build/gpu/libasyppo_bench_cuda.so --json "$OUT/bench.json" \
  2>&1 | tee "$OUT/bench.txt"
