#!/usr/bin/env bash
# One round on the GPU machine: configure + build (CUDA on, extra prefix from
# tools/prepare_device_deps.sh), run the GPU tests (ctest -L gpu) and then the CPU tests,
# write logs and JSON/JUnit results to OUTDIR, print a summary. Usage: tools/device_round.sh OUTDIR
# Env: MOEX_ROUND_JOBS (default 16), MOEX_ROUND_CPU_TESTS=0 to skip the CPU tests,
#      MOEX_ROUND_GPU_TARGETS (default test_cuda_ops), MOEX_ROUND_TARGETS (default: all),
#      MOEX_ROUND_JSON=0 to skip the second, JSON-producing run of test_cuda_ops.
set -uo pipefail
out="${1:?usage: tools/device_round.sh OUTDIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
build="$root/build-device"
jobs="${MOEX_ROUND_JOBS:-16}"
start=$(date +%s)
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true; nvcc --version 2>&1 | tail -2; cmake --version | head -1; } > "$out/machine.txt"
note "device_round: $(head -2 "$out/machine.txt" | tail -1) commit ${MOEX_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')}"

prefix_args=()
[ -d "$root/.deps/prefix" ] && prefix_args=(-DMOEX_EXTRA_PREFIX="$root/.deps/prefix")
cmake -S . -B "$build" -G Ninja -DMOEX_CUDA=ON -DCMAKE_BUILD_TYPE=Release "${prefix_args[@]}" > "$out/configure.log" 2>&1
cfg=$?
note "configure: rc=$cfg ($(( $(date +%s) - start ))s)"
if [ $cfg -ne 0 ]; then tail -30 "$out/configure.log"; exit 1; fi

# GPU tests first: build test_cuda_ops alone, so that work in progress elsewhere cannot cost
# the round its GPU results; then everything else (-k 0: keep going past a failing target).
ninja -C "$build" -j"$jobs" ${MOEX_ROUND_GPU_TARGETS:-test_cuda_ops} > "$out/build_gpu.log" 2>&1
bgpu=$?
note "build gpu targets: rc=$bgpu ($(( $(date +%s) - start ))s)"
[ $bgpu -ne 0 ] && grep -E "FAILED|error" "$out/build_gpu.log" | head -20 | tee -a "$summary"

cd "$build"
ctest -L gpu --output-on-failure --timeout 300 --output-junit "$out/gpu_tests.xml" > "$out/gpu_tests.log" 2>&1
gpu=$?
note "gpu tests (ctest -L gpu): rc=$gpu ($(( $(date +%s) - start ))s): $(grep -E 'tests passed|tests failed' "$out/gpu_tests.log" | tail -1)"
grep -E "^\s*[0-9]+ - .*\((Failed|Timeout|Not Run)" "$out/gpu_tests.log" | head -30 | tee -a "$summary"
if [ -x "$build/tests/test_cuda_ops" ] && [ "${MOEX_ROUND_JSON:-1}" != "0" ]; then  # per-case timings as JSON
  (cd "$root" && "$build/tests/test_cuda_ops" --gtest_output=json:"$out/cuda_ops.json" > "$out/cuda_ops_direct.log" 2>&1)
  note "test_cuda_ops direct run: rc=$? (JSON in cuda_ops.json)"
fi

# shellcheck disable=SC2086
ninja -C "$build" -j"$jobs" -k 0 ${MOEX_ROUND_TARGETS:-} > "$out/build.log" 2>&1
bld=$?
note "build all: rc=$bld ($(( $(date +%s) - start ))s)"
[ $bld -ne 0 ] && grep -E "FAILED" "$out/build.log" | head -20 | tee -a "$summary"

cpu=0
if [ "${MOEX_ROUND_CPU_TESTS:-1}" != "0" ]; then
  ctest -LE gpu --output-on-failure --timeout 300 -j"$jobs" --output-junit "$out/cpu_tests.xml" > "$out/cpu_tests.log" 2>&1
  cpu=$?
  note "cpu tests (ctest -LE gpu): rc=$cpu ($(( $(date +%s) - start ))s): $(grep -E 'tests passed|tests failed' "$out/cpu_tests.log" | tail -1)"
  grep -E "^\s*[0-9]+ - .*\((Failed|Timeout|Not Run)" "$out/cpu_tests.log" | head -30 | tee -a "$summary"
fi
note "total: $(( $(date +%s) - start ))s"
[ $bgpu -eq 0 ] && [ $gpu -eq 0 ] && [ $cpu -eq 0 ] && [ $bld -eq 0 ]
