#!/usr/bin/env bash
# Installs the Debian packages asyppo needs that are missing; does nothing when all are there.
# Usage: scripts/install-deps.sh [extra-package ...]
set -euo pipefail

# The one list of packages the build, tests, benchmarks and examples need.
# libopenmpi-dev / openmpi-bin: the asyppo::mpi component and its tests (release and asan presets).
PACKAGES=(
  cmake
  ninja-build
  g++
  catch2
  libeigen3-dev
  libbenchmark-dev
  libopenmpi-dev
  openmpi-bin
  pybind11-dev
  python3-dev
  python3-numpy
  python3-pytest
  python3-torch
)

is_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for pkg in "${PACKAGES[@]}" "$@"; do
  if ! is_installed "$pkg"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all packages present" >&2
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# apt output goes to stderr so that callers' stdout stays clean.
$SUDO apt-get update -q >&2
$SUDO env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
