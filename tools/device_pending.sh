#!/usr/bin/env bash
# The checks that session 5 could not run (device lending paused): one call each phase, after
# tools/device_round.sh (or this script's phase "build") has built build-device.
#   tools/device_pending.sh OUTDIR build|tests|pdl|pdl_e2e|mla|gemm [...]
# build: configure + build everything (CUDA on, .deps/prefix).
# tests: the whole GPU label (NSA tickets in backend counters, wg_tile through __shfl_sync, the
#        shared MLA combine, PdlLogits with MOEX_PDL toggled inside the test).
# pdl:   GEMM / attention / MoE tests under MOEX_PDL=1, decode GEMM bench --check under 0 and 1.
# pdl_e2e: e2e Qwen3-30B-A3B and DeepSeek-V2-Lite, MOEX_PDL=0 / 1 alternated twice (decide the default).
# mla:   the wgmma MLA decode with MOEX_MLA_WG=1: MLA tests, the 268-case test set, bench A/B
#        with --check (decide kMlaWgDefault).
# gemm:  roofline, then the prefill GEMMs after the C7518 fix: matmul 4096 cases and the
#        fused-MoE prefill cases with --check (compare with bench/results/.../fused_moe*.log).
# Each phase fits the device tool's 10-minute call. Logs go to OUTDIR/<phase>/, summary.txt.
set -uo pipefail
out="${1:?usage: tools/device_pending.sh OUTDIR phase...}"
shift
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
root=$PWD
moex=$root/build-device/tools/moex
tests=$root/build-device/tests
summary="$out/summary.txt"
note() { echo "$*" | tee -a "$summary"; }
step() {  # step LOG TIMEOUT_S command...
  local log=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  note "$(basename "$log" .log): rc=$rc ($(( $(date +%s) - t0 ))s) $(grep -E 'PASSED|FAILED|tests passed|passed|failed' "$log" | tail -1 | cut -c1-140)"
}
for phase in "$@"; do
  d="$out/$phase"
  mkdir -p "$d"
  case "$phase" in
    build)
      prefix=()
      [ -d .deps/prefix ] && prefix=(-DMOEX_EXTRA_PREFIX="$root/.deps/prefix")
      step "$d/configure.log" 120 cmake -S . -B build-device -G Ninja -DMOEX_CUDA=ON -DCMAKE_BUILD_TYPE=Release "${prefix[@]}"
      step "$d/build.log" 500 ninja -C build-device -j"${MOEX_ROUND_JOBS:-16}"
      ;;
    tests)
      (cd build-device && step "$d/gpu_tests.log" 540 ctest -L gpu --output-on-failure --timeout 200)
      grep -E "\((Failed|Timeout)" "$d/gpu_tests.log" | head -20 | tee -a "$summary"
      ;;
    pdl)
      # Correctness first: the GEMM / attention / MoE tests with every launch a programmatic
      # dependent (large block rings, lm_head, wide routers, which PdlLogits' fixtures do not reach),
      # and the decode GEMM cases with --check under both settings.
      MOEX_PDL=1 step "$d/tests_pdl1.log" 300 "$tests/test_cuda_ops" --gtest_filter='*atmul*:*Gemm*:*Attention*:*Moe*:*MoE*'
      for p in 0 1; do
        MOEX_PDL=$p step "$d/matmul_decode_pdl$p.log" 120 $moex bench ops --op matmul --device cuda --check \
          --cases bench/cases/matmul_decode.json --out "$d/matmul_pdl$p"
      done
      ;;
    pdl_e2e)
      n=0
      for m in qwen3_30b_a3b deepseek_v2_lite; do
        for p in 0 1 0 1; do
          n=$((n + 1))
          MOEX_PDL=$p step "$d/e2e_${m}_pdl${p}_$n.log" 110 $moex bench e2e --random-weights tools/parity_configs/$m \
            --device cuda --profile-steps 0 --batches 1 8 64
          grep -E "^ +[0-9]+ " "$d/e2e_${m}_pdl${p}_$n.log" | tr -s ' ' | tr '\n' ';' | tee -a "$summary"; echo | tee -a "$summary"
        done
      done
      ;;
    mla)
      MOEX_MLA_WG=1 step "$d/mla_tests_wg1.log" 120 "$tests/test_cuda_ops" --gtest_filter='*Mla*:*MLA*'
      MOEX_MLA_WG=1 step "$d/testset_wg1.log" 120 $moex test-set --op mla_decode --device cuda
      for w in 0 1; do
        MOEX_MLA_WG=$w step "$d/bench_wg$w.log" 150 $moex bench ops --op mla_decode --device cuda --check \
          --warmup 5 --repeat 20 --out "$d/records_wg$w"
      done
      ;;
    gemm)
      step "$d/roofline.log" 60 $moex bench roofline --device cuda --out "$d/roofline"
      step "$d/matmul.log" 120 $moex bench ops --op matmul --device cuda --check --filter tokens=4096 --out "$d/matmul"
      step "$d/fused_moe_prefill.log" 300 $moex bench ops --op fused_moe --device cuda --check \
        --cases bench/cases/fused_moe_prefill.json --warmup 3 --repeat 20 --out "$d/fused_moe"
      ;;
    *) note "unknown phase $phase" ;;
  esac
done
