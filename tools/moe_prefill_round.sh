#!/usr/bin/env bash
# Fused-MoE prefill round on the GPU machine (docs/kernels/fused_moe.md, "Prefill path"):
# build, the fused-MoE GPU tests, the roofline, the prefill and 128-1024-token cases with the
# per-step split (MOEX_MOE_PROFILE=1; eager launches, so each step's time includes launch gaps)
# and the launch knobs of MOEX_ROUND_KNOBS on bench/cases/fused_moe_knobs.json.
# Usage: bash tools/moe_prefill_round.sh OUTDIR [steps...]; steps: tests roof prefill mid knobs
# Everything lands in OUTDIR/logs.tgz (re-packed after each step: a cut-off round keeps its logs).
set -u
out=${1:?usage: moe_prefill_round.sh OUTDIR [steps]}
shift
steps=${*:-"tests roof prefill mid knobs"}
export MOEX_GIT_COMMIT=${MOEX_GIT_COMMIT:-dev}
mkdir -p "$out/l"
# A private build folder: a warm machine keeps other sessions' build-device, whose objects can
# look newer than this tree's sources (ninja compares times) and would be linked in unchanged.
b=${MOEX_ROUND_BUILD:-build-moe3dev}
t0=$(date +%s)
note() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$out/l/summary.txt"; }
pack() { tar -C "$out" -czf "$out/logs.tgz" l res 2>/dev/null; }
has() { [[ " $steps " == *" $1 "* ]]; }
bench() {  # bench NAME CASES [moex args...]: one bench ops invocation into l/NAME.log
  local name=$1 cases=$2; shift 2
  timeout 120 "$b/tools/moex" bench ops --op fused_moe --device cuda --cases "$cases" --warmup 3 --repeat 20 \
    --out "$out/res" "$@" > "$out/l/$name.log" 2>&1
  note "$name rc=$?"
  pack
}

{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv; ls /usr/local/cuda/bin | grep -i nsys; } \
  > "$out/l/machine.txt" 2>&1
cmake -S . -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEX_CUDA=ON -DMOEX_EXTRA_PREFIX="$PWD/.deps/prefix" \
  > "$out/l/cfg.log" 2>&1 || note "configure failed"
ninja -C "$b" -j16 test_cuda_ops moex > "$out/l/build.log" 2>&1 || { note "build failed"; grep -m20 error "$out/l/build.log"; }
note "built"
pack

if has tests; then
  timeout 150 "$b/tests/test_cuda_ops" --gtest_filter='*Moe*:*moe*:*Wgmma*' > "$out/l/tests.log" 2>&1
  note "tests rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$out/l/tests.log" | tr '\n' ' ')"
  pack
fi
if has roof; then
  timeout 60 "$b/tools/moex" bench roofline --device cuda --out "$out/res" > "$out/l/roofline.log" 2>&1
  note "roofline rc=$?"
  pack
fi
export MOEX_MOE_PROFILE=1
has prefill && bench prefill bench/cases/fused_moe_prefill.json --check
has mid && bench mid bench/cases/fused_moe_mid.json --check
if has knobs; then
  for knob in ${MOEX_ROUND_KNOBS:-MOEX_MOE_PARTIAL=f32 MOEX_MOE_RASTER=1 MOEX_MOE_TILE_POLICY=1}; do
    if (( $(date +%s) - t0 > ${MOEX_ROUND_KNOB_UNTIL:-100000} )); then note "skip $knob (time)"; continue; fi
    (export "$knob"; bench "knob_${knob//=/_}" bench/cases/fused_moe_knobs.json)
  done
fi
note "done"
pack
