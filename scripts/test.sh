#!/usr/bin/env bash
# The full test run: installs missing dependencies, then the `release` and `asan` workflows
# (configure, build, test). Stops at the first failure and prints a summary either way.
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
  local rc=$?
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
trap print_summary EXIT

start_step "install dependencies"
bash scripts/install-deps.sh
end_step

start_step "workflow release (configure, build, test)"
cmake --workflow --preset release
end_step

start_step "workflow asan (configure, build, test)"
cmake --workflow --preset asan
end_step
