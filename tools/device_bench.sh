#!/usr/bin/env bash
# Benchmarks of one GPU round, after tools/device_round.sh built build-device:
# the embedded model on the GPU against its pinned CPU output, roofline ceilings, operator
# benchmarks (with --check against the CPU reference), operator test sets on the GPU, the
# end-to-end benchmark, and the report. Results land in bench/results/<gpu>/ and OUTDIR.
#   tools/device_bench.sh OUTDIR [steps...]   steps: run roofline moe mla gqa gemm nsa prefill testsets e2e report
# Env: MOEX_GIT_COMMIT (recorded in every JSON record when the tree has no .git).
set -uo pipefail
out="${1:?usage: tools/device_bench.sh OUTDIR [steps...]}"
shift
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(run roofline moe mla gqa gemm nsa prefill testsets e2e report)
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
moex=build-device/tools/moex
summary="$out/summary.txt"
note() { echo "$*" | tee -a "$summary"; }
step() {  # step NAME TIMEOUT_S command...
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  note "$name: rc=$rc ($(( $(date +%s) - t0 ))s) $(tail -1 "$out/$name.log" | cut -c1-160)"
}
has() { [[ " ${steps[*]} " == *" $1 "* ]]; }

if has run; then
  step run_cuda 60 $moex run --device cuda --prompt "In the beginning" -n 40
  step run_cpu 60 $moex run --device cpu --prompt "In the beginning" -n 40
  if [ "$(head -1 "$out/run_cuda.log")" == "$(head -1 "$out/run_cpu.log")" ]; then
    note "embedded model: CUDA greedy text == CPU greedy text"
  else
    note "embedded model: CUDA greedy text DIFFERS from CPU"
  fi
fi
has roofline && step roofline 120 $moex bench roofline --device cuda
if has moe; then
  step bench_fused_moe 300 $moex bench ops --op fused_moe --device cuda --check
  step bench_fused_moe_prefill 200 $moex bench ops --op fused_moe --device cuda --check --cases bench/cases/fused_moe_prefill.json
fi
if has mla; then
  step bench_mla_decode 150 $moex bench ops --op mla_decode --device cuda --check
  step bench_mla_fp8 120 $moex bench ops --op mla_decode --device cuda --check --cases bench/cases/mla_fp8.json
fi
has gqa && step bench_gqa_decode 90 $moex bench ops --op gqa_decode --device cuda --check
has gemm && step bench_matmul 120 $moex bench ops --op matmul --device cuda --check
if has nsa; then  # NSA at 64K: 50 timed launches (issue 5); full attention on the same shapes beside it
  step bench_nsa 300 $moex bench ops --op nsa --device cuda --check --repeat 50 --cases bench/cases/nsa.json
  step bench_nsa_full_attention 120 $moex bench ops --op gqa_decode --device cuda --repeat 20 --cases bench/cases/nsa.json
fi
has prefill && step bench_prefill_attention 150 $moex bench ops --op prefill_attention --device cuda --check
if has testsets; then
  step testset_fused_moe 150 $moex test-set --op fused_moe --device cuda --quiet
  step testset_mla_decode 150 $moex test-set --op mla_decode --device cuda --quiet
  step testset_nsa 150 $moex test-set --op nsa --device cuda --quiet
fi
has e2e && step e2e 120 $moex bench e2e --model models/moex-kjv-dsv3 --device cuda
has report && step report 60 python3 tools/bench_report.py
tar czf "$out/results.tgz" bench/results "$out"/*.log 2>/dev/null
note "results: bench/results -> results.tgz"
