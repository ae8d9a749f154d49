#!/usr/bin/env bash
# Installs what moex needs to build and test on Debian 12 (or Ubuntu 24.04), then configures and
# builds it. Idempotent: packages already present are not fetched again.
#   scripts/setup.sh [BUILD_DIR]        (default: build)
# Environment: MOEX_CUDA=AUTO|ON|OFF (default AUTO: the CUDA backend is compiled when nvcc exists),
#              MOEX_ASAN=ON (AddressSanitizer + UBSan build), MOEX_JOBS (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}

packages=(cmake ninja-build g++ pkg-config libgtest-dev nlohmann-json3-dev libpcre2-dev libcli11-dev libutf8proc-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# nvcc is found through PATH or the usual CUDA prefix.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DMOEX_CUDA="${MOEX_CUDA:-AUTO}" -DMOEX_ASAN="${MOEX_ASAN:-OFF}" ${MOEX_CMAKE_ARGS:-}
cmake --build "$build_dir" -j "${MOEX_JOBS:-$(nproc)}"
