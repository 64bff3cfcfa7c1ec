#!/usr/bin/env bash
# The full test run: installs missing dependencies, then the `release` and `asan` workflows (configure, build,
# test) one after the other, with the `cuda` workflow (the nvcc compile gate) in the background beside them.
# Stops at the first failure of a CPU workflow (a failure of the cuda workflow is reported when they are done)
# and prints a summary either way.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

summary=()
current=""
start_step() {
  current="$1"
  step_start=$SECONDS
  echo "==> ${current}"
}
end_step() {
  summary+=("PASS  ${current} ($((SECONDS - step_start)) s)")
  current=""
}
print_summary() {
  local rc=$1
  if [ -n "${current}" ]; then
    summary+=("FAIL  ${current} ($((SECONDS - step_start)) s)")
  fi
  echo
  echo "==================== test summary ===================="
  for line in "${summary[@]}"; do
    echo "  ${line}"
  done
  if [ "${rc}" -eq 0 ]; then
    echo "  result: OK (${SECONDS} s)"
  else
    echo "  result: FAILED with exit code ${rc} (${SECONDS} s)"
  fi
  echo "======================================================"
}
cuda_pid=""  # the background cuda workflow (below)
stop_cuda() {  # on an early exit: the background workflow does not outlive the script
  if [ -n "${cuda_pid}" ] && kill -0 "${cuda_pid}" 2> /dev/null; then
    kill -- "-${cuda_pid}" 2> /dev/null || true
    summary+=("STOP  workflow cuda (stopped: another step failed)")
  fi
}
on_exit() {
  local rc=$?
  stop_cuda
  print_summary "${rc}"
}
trap on_exit EXIT

start_step "install dependencies"
bash scripts/install-deps.sh
end_step

# The CUDA backend's compile gate: nvcc 13 (sm_80, sm_90, --Werror=cross-execution-space-call)
# builds the .cuh header checks and the GPU tests; without a GPU the tests report "skipped".
# Skipped where there is no nvcc. It runs in the background, beside the two CPU workflows, its output in
# build/cuda-workflow.log (printed when it ends): its longest job, the conformance suite (cicc and ptxas
# per architecture, then the host compile), leaves a core idle for minutes that the CPU builds then use.
# A fresh clone on the 2-core build machine (2026-11-28, commit 310609f, one workflow after the other and
# the tests at -O3): cuda 730 s, release 630 s, asan 636 s, 1996 s in all.
cuda_log=build/cuda-workflow.log
cuda_name="workflow cuda (configure, nvcc build, GPU tests: skipped without a GPU; in the background)"
if [ -x /usr/local/cuda/bin/nvcc ] || command -v nvcc > /dev/null 2>&1; then
  mkdir -p build && rm -f build/cuda-workflow.seconds
  cuda_start=$SECONDS
  # (its own duration into build/cuda-workflow.seconds: the script collects it only after the CPU workflows)
  setsid -w bash -c 's=$(date +%s); rc=0; cmake --workflow --preset cuda > "$1" 2>&1 || rc=$?
                     echo $(($(date +%s) - s)) > build/cuda-workflow.seconds; exit $rc' _ "${cuda_log}" &
  cuda_pid=$!
  echo "==> ${cuda_name}: started, output in ${cuda_log}"
else
  summary+=("SKIP  workflow cuda (no nvcc)")
fi

start_step "workflow release (configure, build, test)"
cmake --workflow --preset release
end_step

start_step "workflow asan (configure, build, test)"
cmake --workflow --preset asan
end_step

if [ -n "${cuda_pid}" ]; then
  start_step "${cuda_name}"
  cuda_rc=0
  wait "${cuda_pid}" || cuda_rc=$?
  cuda_pid=""
  echo "---- ${cuda_log} ----"
  cat "${cuda_log}"
  step_start=$((SECONDS - $(cat build/cuda-workflow.seconds 2> /dev/null || echo $((SECONDS - cuda_start)))))
  [ "${cuda_rc}" -eq 0 ] || exit "${cuda_rc}"
  end_step
fi
