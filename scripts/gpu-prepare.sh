#!/usr/bin/env bash
# Builds, on this GPU-less machine, everything the GPU check (scripts/gpu-check.sh) runs on a lent GPU
# machine, into build/gpu/ (ignored by git; name it in the device tool's `carry`):
#   test_cuda_conformance       the GPU conformance suite (nvcc 13: compute_80 PTX + sm_90, the `cuda` preset; exits 77 without a device)
#   test_nccl_comm              nccl_comm on one rank (the NCCL that PyTorch's wheels bring is loaded there)
#   libasyppo_bench_cuda.so     the C interface of bench/gpu/capi.hpp on the CUDA backend (ctypes; sm_90)
#   libasyppo_bench_cpu.so      the same on the CPU backend (to dry-run the comparison script here)
# Building there would spend the device time the check is for (the conformance suite alone is minutes
# of nvcc), and the GPU image has neither Eigen nor Catch2; the binaries need only the CUDA 13 runtime
# and cuBLAS, which it has.
# Usage: bash scripts/gpu-prepare.sh        (then: /usr/bin/python3 bench/gpu/bench_vs_torch.py --device cpu \
#                                            --lib build/gpu/libasyppo_bench_cpu.so --B 64 --T 512 --heads 2048x256)
# A/B against an earlier commit: ASYPPO_BASE_REV=<rev> bash scripts/gpu-prepare.sh also builds that commit's
# C interface (sm_90 only, about a minute) as build/gpu/libasyppo_bench_cuda_base.so; gpu-check.sh then
# times it and this tree's, one after the other, on the same device (without it: no A/B).
# Tuning sweep: ASYPPO_VARIANTS='name:-DMACRO=value ...;name2:...' also builds this tree's C interface once
# per variant with those definitions (sm_90 only) as build/gpu/variant_<name>.so; gpu-check.sh times each
# after the A/B, on the same data (the tuning macros are the ASYPPO_CUDA_* of backend/cuda/*.cuh), e.g.
#   ASYPPO_VARIANTS='raking:-DASYPPO_CUDA_BLOCK_SCAN_ALGORITHM=cub::BLOCK_SCAN_RAKING;fold8:-DASYPPO_CUDA_FLAT_FOLD_ITEMS=8'
# A variant's outputs are checked there only by the comparison's own checks (against PyTorch, between the
# calls); ASYPPO_SUITE_FLAGS='-DMACRO=value ...' also builds the conformance suite with those definitions
# (sm_90 only, a few minutes) as build/gpu/test_cuda_conformance_variant, which gpu-check.sh runs after this
# tree's suite: a tuning path that is off by default is tested on a device before it is turned on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p build/gpu
cmake --preset cuda >/dev/null
cmake --build --preset cuda --target test_cuda_conformance test_nccl_comm
cp build/cuda/tests/gpu/test_cuda_conformance build/cuda/tests/gpu/test_nccl_comm build/gpu/
g++ -std=gnu++20 -O3 -DNDEBUG -shared -fPIC -Iinclude -isystem /usr/include/eigen3 bench/gpu/capi_cpu.cpp \
  -o build/gpu/libasyppo_bench_cpu.so -lpthread
rm -f build/gpu/test_cuda_conformance_variant build/gpu/test_cuda_conformance_variant.txt
if [ -n "${ASYPPO_SUITE_FLAGS:-}" ]; then
  cmake --preset cuda -B build/cuda-suite-variant -DCMAKE_CUDA_ARCHITECTURES=90 -DASYPPO_CUDA_SUITE_ARCHITECTURES=90 \
    -DCMAKE_CUDA_FLAGS="$ASYPPO_SUITE_FLAGS" >/dev/null
  cmake --build build/cuda-suite-variant -j 2 --target test_cuda_conformance
  cp build/cuda-suite-variant/tests/gpu/test_cuda_conformance build/gpu/test_cuda_conformance_variant
  printf '%s\n' "$ASYPPO_SUITE_FLAGS" > build/gpu/test_cuda_conformance_variant.txt
fi
rm -f build/gpu/libasyppo_bench_cuda.so build/gpu/libasyppo_bench_cuda_base.so build/gpu/base_rev.txt build/gpu/variant_*
# Every C interface of the comparison (this tree's, the base's, the variants') with the same flags: sm_90
# (H100, H200), the fatbin compressed (11 MB -> 3 MB each: the device tool carries 64 MiB in all).
capi_sm90() {  # capi_sm90 <include dir> <source> <output> [nvcc flags...]
  local inc=$1 src=$2 out=$3
  shift 3
  /usr/local/cuda/bin/nvcc -forward-unknown-to-host-compiler -O3 -DNDEBUG --generate-code=arch=compute_90,code=[compute_90,sm_90] \
    -Xfatbin=-compress-all -Xcompiler=-fPIC --expt-relaxed-constexpr -std=c++20 -I"$inc" -isystem=/usr/include/eigen3 \
    -shared "$@" "$src" -o "$out" -lcublas
}
capi_sm90 include bench/gpu/capi_cuda.cu build/gpu/libasyppo_bench_cuda.so
if [ -n "${ASYPPO_BASE_REV:-}" ]; then
  base=$(mktemp -d)
  git archive "$ASYPPO_BASE_REV" include bench/gpu | tar -x -C "$base"
  capi_sm90 "$base/include" "$base/bench/gpu/capi_cuda.cu" build/gpu/libasyppo_bench_cuda_base.so
  git rev-parse --short "$ASYPPO_BASE_REV" > build/gpu/base_rev.txt
  rm -rf "$base"
fi
if [ -n "${ASYPPO_VARIANTS:-}" ]; then
  IFS=';' read -ra variants <<< "$ASYPPO_VARIANTS"
  for v in "${variants[@]}"; do
    name=${v%%:*}
    read -ra flags <<< "${v#*:}"
    [[ "$name" =~ ^[A-Za-z0-9_]+$ ]] || { echo "variant name '$name': letters, digits and _ only" >&2; exit 2; }
    echo "variant $name: ${flags[*]}"
    capi_sm90 include bench/gpu/capi_cuda.cu "build/gpu/variant_$name.so" "${flags[@]}"
    printf '%s\n' "${flags[*]}" > "build/gpu/variant_$name.txt"
  done
fi
# Symbols are not needed there (the profiles name kernels from the fatbins' own names): 10-15 % smaller.
for f in build/gpu/*.so build/gpu/test_cuda_conformance build/gpu/test_cuda_conformance_variant build/gpu/test_nccl_comm; do
  [ -f "$f" ] && strip --strip-unneeded "$f"
done
du -sh build/gpu/*
total=$(du -sm build/gpu | cut -f1)
echo "build/gpu: $total MiB (the device tool carries at most 64 MiB)"
[ "$total" -lt 64 ] || { echo "build/gpu is too large to carry: fewer variants" >&2; exit 3; }
