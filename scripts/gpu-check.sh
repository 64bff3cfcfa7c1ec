#!/usr/bin/env bash
# The GPU check, run ON a lent GPU machine (device tool) over the binaries scripts/gpu-prepare.sh built
# here: the conformance suite and the NCCL one-rank test, then asyppo against PyTorch implementations of
# verl's functions at the paper's scale (bench/gpu/bench_vs_torch.py), with the kernels of each asyppo call
# (torch.profiler). When the suite fails, each test case is rerun alone (a sticky CUDA error would fail
# every later case of the same process) and the first failing one under compute-sanitizer's memcheck.
# Everything it prints is also written under $OUT, in at most seven files (the device tool brings back
# eight: the caller's own log is the eighth); the A/B's and the variants' kernel lists stay in $PROF (on
# that machine) and the calls' kernels that matter are printed from them: the step's largest and the actor's.
#   device run: command "bash scripts/gpu-check.sh", carry ["build/gpu"], timeout_s 540
#   (ASYPPO_NCU=1 bash scripts/gpu-check.sh adds an Nsight Compute profile of one step: $OUT/ncu.txt; of a
#   variant's library with ASYPPO_NCU_LIB=build/gpu/variant_<name>.so)
# Record the results in docs/benchmarks.md with the device named.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/asyppo-gpu-check}
mkdir -p "$OUT"
PROF=$(mktemp -d)
# A profile's kernels, largest first, of the step's and the actor's device-result calls (step_lines of the first).
kernels_of() {  # kernels_of <profile> <step_lines>
  awk -v n="$2" '/^## /{show = ($0 ~ /^## advantage step \(device result\)/) ? n + 1 : ($0 ~ /^## actor loss \+ gradient \(device result\)/) ? 7 : 0}
                 show > 0 {print; show--}' "$1" | cut -c1-140
}
export PYTHONUNBUFFERED=1
SECONDS=0
stage() { echo "==> [${SECONDS}s] $*"; }
# The CUDA 13 runtime, cuBLAS and NCCL: the toolkit's, else the ones PyTorch's wheels bring.
libs=/usr/local/cuda/lib64
for d in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, s, "lib") for p in nvidia.__path__ for s in os.listdir(p)))' 2>/dev/null); do
  [ -d "$d" ] && libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'
  ldd build/gpu/test_cuda_conformance build/gpu/test_nccl_comm | grep -E "cudart|cublas|nccl|not found"
} 2>&1 | tee "$OUT/conformance.txt"
{
  stage "conformance suite"
  timeout 150 ./build/gpu/test_cuda_conformance --reporter compact --durations yes 2>&1
  rc=$?
  echo "conformance exit code: $rc"
  if [ "$rc" -ne 0 ]; then
    stage "each test case alone"
    first=""
    while IFS= read -r name; do
      [ -z "$name" ] && continue
      spec=$(printf '%s' "$name" | sed 's/[],[\\]/\\&/g')  # Catch2 test specs: escape , [ ] and \
      timeout 60 ./build/gpu/test_cuda_conformance --reporter compact "$spec" > /tmp/case.txt 2>&1
      crc=$?
      echo "case rc $crc: $name"
      if [ "$crc" -ne 0 ]; then
        tail -25 /tmp/case.txt
        [ -z "$first" ] && first="$spec"
      fi
    done < <(./build/gpu/test_cuda_conformance --list-test-names-only 2>/dev/null | grep -v '^CUDA device')
    if [ -n "$first" ] && command -v compute-sanitizer >/dev/null; then
      stage "compute-sanitizer memcheck: $first"
      timeout 90 compute-sanitizer --tool memcheck --print-limit 8 ./build/gpu/test_cuda_conformance "$first" 2>&1 | tail -60
    fi
  fi
  if [ -x build/gpu/test_cuda_conformance_variant ]; then  # gpu-prepare.sh with ASYPPO_SUITE_FLAGS
    stage "conformance suite built with $(cat build/gpu/test_cuda_conformance_variant.txt 2>/dev/null)"
    timeout 150 ./build/gpu/test_cuda_conformance_variant --reporter compact 2>&1 | tail -40
    echo "variant conformance exit code: ${PIPESTATUS[0]}"
  fi
  stage "nccl_comm on one rank"
  timeout 60 ./build/gpu/test_nccl_comm --reporter compact 2>&1
  echo "nccl exit code: $?"
} 2>&1 | tee -a "$OUT/conformance.txt"
stage "asyppo vs torch (verl), 1024 x 8192, K = 2"
timeout 200 python3 bench/gpu/bench_vs_torch.py --lib build/gpu/libasyppo_bench_cuda.so --json "$OUT/bench.json" \
  --profile "$OUT/profile.txt" 2>&1 | tee "$OUT/bench.txt"
# What the A/B and the variants print of each run: the timings, and the checks against PyTorch and between
# the calls (a variant's outputs are checked there: the conformance suite runs this tree's defaults only).
rows_and_checks='^\| (advantage|actor)|^(advantage step|actor loss)[^|]*: '
if [ -f build/gpu/libasyppo_bench_cuda_base.so ]; then
  # A/B (gpu-prepare.sh with ASYPPO_BASE_REV): the base commit's library, then this tree's again, on the
  # same data (no PyTorch GAE loop, no heads); each with its kernels in $PROF/profile_{base,current}.txt.
  stage "A/B: base $(cat build/gpu/base_rev.txt 2>/dev/null) against this tree"
  for which in base current; do
    lib=build/gpu/libasyppo_bench_cuda.so
    [ "$which" = base ] && lib=build/gpu/libasyppo_bench_cuda_base.so
    timeout 120 python3 bench/gpu/bench_vs_torch.py --lib "$lib" --heads '' --torch-gae-repeat 0 \
      --profile "$PROF/profile_$which.txt" 2>&1 | grep -E "$rows_and_checks" | sed "s/^/$which /"
  done 2>&1 | tee "$OUT/ab.txt"
  for which in base current; do  # each call's kernels, largest first: each change shows in its own kernel
    echo "== $which"; kernels_of "$PROF/profile_$which.txt" 25
  done 2>&1 | tee -a "$OUT/ab.txt"
fi
if compgen -G "build/gpu/variant_*.so" > /dev/null; then
  # Tuning sweep (gpu-prepare.sh with ASYPPO_VARIANTS): this tree's library built with other tuning macros,
  # each timed as the A/B's, on the same data; $OUT/variants.txt, kernels in $PROF/profile_variant_<name>.txt.
  stage "tuning variants"
  for lib in build/gpu/variant_*.so; do
    name=$(basename "$lib" .so)
    echo "== ${name#variant_}: $(cat "build/gpu/$name.txt" 2>/dev/null)"
    timeout 120 python3 bench/gpu/bench_vs_torch.py --lib "$lib" --heads '' --torch-gae-repeat 0 \
      --profile "$PROF/profile_$name.txt" 2>&1 | grep -E "$rows_and_checks"
    kernels_of "$PROF/profile_$name.txt" 12
  done 2>&1 | tee "$OUT/variants.txt"
  # This tree's library once more after them: the drift of the machine over the sweep, beside each variant.
  echo "== current (again, after the variants)" | tee -a "$OUT/variants.txt"
  timeout 120 python3 bench/gpu/bench_vs_torch.py --lib build/gpu/libasyppo_bench_cuda.so --heads '' --torch-gae-repeat 0 \
    2>&1 | grep -E '^\| (advantage|actor)' | tee -a "$OUT/variants.txt"
fi
if [ "${ASYPPO_NCU:-0}" = 1 ] && command -v ncu >/dev/null; then
  # Nsight Compute on one advantage step and one actor call (bench_vs_torch.py --ncu): each kernel's
  # throughput against the device's peaks, occupancy, launch shape and memory traffic.
  # ASYPPO_NCU_LIB picks the library profiled (a variant's, e.g. build/gpu/variant_<name>.so; default this tree's).
  ncu_lib=${ASYPPO_NCU_LIB:-build/gpu/libasyppo_bench_cuda.so}
  stage "ncu: one advantage step, one actor call ($ncu_lib)"
  timeout 150 ncu --profile-from-start off --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section LaunchStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    python3 bench/gpu/bench_vs_torch.py --lib "$ncu_lib" --ncu > "$OUT/ncu.txt" 2>&1
  echo "ncu exit code: $?"
  grep -E "^  [a-z_:<].*\(|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Grid Size|Warp Cycles Per Issued|Stall|Issue Slots Busy|SM Busy|pipeline" \
    "$OUT/ncu.txt" | cut -c1-160 | head -250
fi
stage "done"
