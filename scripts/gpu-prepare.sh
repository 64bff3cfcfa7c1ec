#!/usr/bin/env bash
# Builds, on this GPU-less machine, everything the GPU check (scripts/gpu-check.sh) runs on a lent GPU
# machine, into build/gpu/ (ignored by git; name it in the device tool's `carry`):
#   test_cuda_conformance       the GPU conformance suite (nvcc 13, sm_80 + sm_90; exits 77 without a device)
#   test_nccl_comm              nccl_comm on one rank (the NCCL that PyTorch's wheels bring is loaded there)
#   libasyppo_bench_cuda.so     the C interface of bench/gpu/capi.hpp on the CUDA backend (ctypes)
#   libasyppo_bench_cpu.so      the same on the CPU backend (to dry-run the comparison script here)
# Building there would spend the device time the check is for (the conformance suite alone is minutes
# of nvcc), and the GPU image has neither Eigen nor Catch2; the binaries need only the CUDA 13 runtime
# and cuBLAS, which it has.
# Usage: bash scripts/gpu-prepare.sh        (then: /usr/bin/python3 bench/gpu/bench_vs_torch.py --device cpu \
#                                            --lib build/gpu/libasyppo_bench_cpu.so --B 64 --T 512 --heads 2048x256)
# A/B against an earlier commit: ASYPPO_BASE_REV=<rev> bash scripts/gpu-prepare.sh also builds that commit's
# C interface (sm_90 only, about a minute) as build/gpu/libasyppo_bench_cuda_base.so; gpu-check.sh then
# times it and this tree's, one after the other, on the same device (without it: no A/B).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p build/gpu
cmake --preset cuda >/dev/null
cmake --build --preset cuda --target test_cuda_conformance test_nccl_comm asyppo_bench_capi_cuda
cp build/cuda/tests/gpu/test_cuda_conformance build/cuda/tests/gpu/test_nccl_comm build/gpu/
cp build/cuda/tests/gpu/libasyppo_bench_capi_cuda.so build/gpu/libasyppo_bench_cuda.so
g++ -std=gnu++20 -O3 -DNDEBUG -shared -fPIC -Iinclude -isystem /usr/include/eigen3 bench/gpu/capi_cpu.cpp \
  -o build/gpu/libasyppo_bench_cpu.so -lpthread
rm -f build/gpu/libasyppo_bench_cuda_base.so build/gpu/base_rev.txt
if [ -n "${ASYPPO_BASE_REV:-}" ]; then
  base=$(mktemp -d)
  git archive "$ASYPPO_BASE_REV" include bench/gpu | tar -x -C "$base"
  /usr/local/cuda/bin/nvcc -forward-unknown-to-host-compiler -O3 -DNDEBUG --generate-code=arch=compute_90,code=[compute_90,sm_90] \
    -Xcompiler=-fPIC --expt-relaxed-constexpr -std=c++20 -I"$base/include" -isystem=/usr/include/eigen3 -shared \
    "$base/bench/gpu/capi_cuda.cu" -o build/gpu/libasyppo_bench_cuda_base.so -lcublas
  git rev-parse --short "$ASYPPO_BASE_REV" > build/gpu/base_rev.txt
  rm -rf "$base"
fi
du -sh build/gpu/*
