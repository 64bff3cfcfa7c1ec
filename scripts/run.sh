#!/usr/bin/env bash
# Main job: builds the `release` preset's advantage_step_example and runs it with the given
# arguments. Dependency, configure and build output goes to stderr; stdout is the example's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh
cmake --preset release >&2
cmake --build --preset release --target advantage_step_example >&2
exec build/release/examples/advantage_step_example "$@"
