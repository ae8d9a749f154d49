// Fused MoE for few tokens (the decode path): every active expert's weights are streamed once
// over all SMs, without the align step and without any host sync. See docs/kernels/fused_moe.md,
// "Decode path". Up to moe_decode_fused_max_tokens() tokens the whole path is one launch
// (moe_decode_fused.cu); above, this file's three launches run. Both use the block bodies of
// moe_decode_tile.cuh.
//
// Three launches:
//   1. gate/up: grid (inter / 32, expert rank); each block finds its expert (the rank-th active
//      local expert in ascending id order) and that expert's slots straight from topk_ids, then
//      streams 32 gate + 32 up rows with cp.async and writes h = bf16(silu(gate) * up) per slot;
//   2. down: grid (hidden / 64, expert rank): y = h[slot] @ w2[e]^T in fp32, stored as the
//      weighted partial part[slot] = P(w[t, j] * y) (moe_combine.cuh);
//   3. combine (fused_moe.cu's): out[t] = round(sum over slots j in order of part[t * top_k + j]).
// Kernels 2 and 3 are launched with programmatic dependent launch: kernel 2 finds its expert and
// prefetches its first w2 stages while kernel 1 finishes, then waits for h (griddepcontrol).
//
// Bits: the prefill path (fused_moe.cu, gemm/mma_tile.cuh) computes each gate/up/down element as
// a chain of bf16 k16 MMAs from a zero accumulator in ascending K order, with the token row as the
// A operand and the weight row as B. Here the MMA is the same m16n8k16 step with the same operand
// roles and the same K order, and the epilogues (silu rounding, weighted partial, slot-order combine) are
// the same expressions (moe_combine.cuh), so a token's output is bit-identical on both paths.
#include <algorithm>
#include <cstdlib>
#include <utility>

#include "kernels/common/dtype.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/moe/moe.h"
#include "kernels/moe/moe_combine.cuh"
#include "kernels/moe/moe_decode.h"
#include "kernels/moe/moe_decode_fused.h"
#include "kernels/moe/moe_decode_tile.cuh"

namespace moex::kernels {
namespace {

using namespace moe_decode;

// cp.async ring depths of the 16-token tile, gate/up and down kernels: 4 (44.5 KB of shared
// memory, five blocks per SM, 24 KB in flight each), 6 (three, 40 KB) or 8 (two, 56 KB);
// MOEX_MOE_DECODE_STAGES = two digits overrides (e.g. 46). The 32-token tile uses 4.
constexpr int kDefaultStagesA = 6, kDefaultStagesB = 6;

// Kernel 1: h[slot, i] = bf16(silu(gate_i(x[token])) * up_i(x[token])) for the block's 32 i.
template <int MT, int ST>
__global__ void __launch_bounds__(kThreads) moe_decode_gate_up_kernel(DecodeArgs a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  DecodeSmem<MT, ST>& s = *reinterpret_cast<DecodeSmem<MT, ST>*>(smem_raw);
  pdl_launch_dependents();  // the down kernel may start its prologue once every block runs
  const int e = find_expert(a, blockIdx.y, s);
  if (e < 0) return;
  const int i0 = blockIdx.x * 32;
  const bf16* wrow[kWPer];
  const WeightLoad wl = weight_load(a.l2_mode);
  gate_up_rows(a, e, i0, wrow);
  prefetch_w(s, wrow, a.hidden, wl);
  const int m = gather_slots(a, e, s);
  gate_up_block(a, wrow, wl, i0, m, s);
}

// Kernel 2: part[slot, c] = P(w * (h[slot] . w2[e, c])) for the block's 64 hidden rows.
template <int MT, int ST>
__global__ void __launch_bounds__(kThreads) moe_decode_down_kernel(DecodeArgs a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  DecodeSmem<MT, ST>& s = *reinterpret_cast<DecodeSmem<MT, ST>*>(smem_raw);
  pdl_launch_dependents();
  // topk_ids were written before the gate/up kernel started: safe to read before pdl_wait.
  const int e = find_expert(a, blockIdx.y, s);
  if (e < 0) return;
  const int c0 = blockIdx.x * kRows;
  const bf16* wrow[kWPer];
  const WeightLoad wl = weight_load(a.l2_mode);
  down_rows(a, e, c0, wrow);
  prefetch_w(s, wrow, a.inter, wl);  // weights do not depend on the gate/up kernel
  const int m = gather_slots(a, e, s);
  pdl_wait();  // h complete and visible
  down_block(a, wrow, wl, c0, m, s);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Launch settings read once: MOEX_MOE_DECODE_STAGES (4, 6, 8) and MOEX_MOE_DECODE_PDL (0 = off).
int stages_setting() {  // 10 * gate/up stages + down stages
  static const int v = [] {
    const char* e = std::getenv("MOEX_MOE_DECODE_STAGES");
    const int s = e != nullptr ? std::atoi(e) : 0;
    const int sa = s / 10, sb = s % 10;
    const bool ok = (sa == 4 || sa == 6 || sa == 8) && (sb == 4 || sb == 6 || sb == 8);
    return ok ? s : 10 * kDefaultStagesA + kDefaultStagesB;
  }();
  return v;
}
// The WeightLoad mode (moe_decode_tile.cuh): MOEX_MOE_DECODE_L2 = 0, 1 or 2 (read at every call),
// else evict_first (1) on the single launch and plain loads (0) on the three kernels: at 1 token
// evict_first saved 4-6 us on Qwen3-30B-A3B and DeepSeek-V2-Lite, while the three-kernel plan at
// 8-64 tokens ran 2-4% slower with it (docs/kernels/fused_moe.md, "Decode path, one launch").
int l2_setting(bool single_launch) {
  const char* e = std::getenv("MOEX_MOE_DECODE_L2");
  const int v = e != nullptr ? std::atoi(e) : -1;
  return (v >= 0 && v <= 2) ? v : (single_launch ? 1 : 0);
}
bool pdl_setting() {
  static const bool v = [] {
    const char* e = std::getenv("MOEX_MOE_DECODE_PDL");
    return e == nullptr || std::atoi(e) != 0;
  }();
  return v;
}

// Above 48 KiB a block must opt in.
// The full carveout lets five 4-stage blocks share an SM.
template <class Kernel>
cudaError_t allow_smem(Kernel* kernel, size_t bytes) {
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (e != cudaSuccess) return e;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100);
}

template <int MT, int SA, int SB>
cudaError_t launch_gemms(const DecodeArgs& a, bool pdl, cudaStream_t stream) {
  constexpr size_t kSmemA = sizeof(DecodeSmem<MT, SA>), kSmemB = sizeof(DecodeSmem<MT, SB>);
  // Per call, not once: the attribute belongs to the current device's context.
  cudaError_t attr = allow_smem(moe_decode_gate_up_kernel<MT, SA>, kSmemA);
  if (attr == cudaSuccess) attr = allow_smem(moe_decode_down_kernel<MT, SB>, kSmemB);
  if (attr != cudaSuccess) return attr;
  const int ranks = std::min(a.slots, a.local_experts);
  // The gate/up kernel follows whatever wrote x and topk_ids: an ordinary launch.
  cudaError_t e = pdl::launch(moe_decode_gate_up_kernel<MT, SA>, dim3(a.inter / 32, ranks), dim3(kThreads), kSmemA,
                              stream, false, a);
  if (e != cudaSuccess) return e;
  return pdl::launch(moe_decode_down_kernel<MT, SB>, dim3(a.hidden / kRows, ranks), dim3(kThreads), kSmemB, stream, pdl,
                     a);
}

template <int SA>
cudaError_t launch_gemms16(const DecodeArgs& a, int sb, bool pdl, cudaStream_t stream) {
  if (sb == 4) return launch_gemms<16, SA, 4>(a, pdl, stream);
  if (sb == 8) return launch_gemms<16, SA, 8>(a, pdl, stream);
  return launch_gemms<16, SA, 6>(a, pdl, stream);
}

}  // namespace

int moe_decode_max_tokens() {
  // MOEX_MOE_DECODE_MAX_TOKENS overrides the threshold (0: never) so that both paths can be
  // timed on the same token counts; both give the same bits, so it changes no result.
  static const int v = [] {
    const char* e = std::getenv("MOEX_MOE_DECODE_MAX_TOKENS");
    return e != nullptr ? std::atoi(e) : kMoeDecodeMaxTokens;
  }();
  return v;
}

bool moe_decode_applies(const ops::FusedMoeParams& p) {
  const int64_t n = p.x.shape[0], hidden = p.x.shape[1], top_k = p.topk_ids.shape[1];
  const int64_t local = p.w13.shape[0], inter = p.w2.shape[2];
  if (n < 1 || n > moe_decode_max_tokens() || n * top_k > kMaxSlots || local > kMaxLocal) return false;
  if (hidden % kBK != 0 || inter % kBK != 0 || hidden % kRows != 0) return false;
  // cp.async moves 16-byte chunks: rows must start 16-byte aligned.
  return aligned16(p.x.data) && p.x.stride[0] % 8 == 0 && p.x.stride[1] == 1 && aligned16(p.w13.data) &&
         p.w13.stride[0] % 8 == 0 && p.w13.stride[1] % 8 == 0 && p.w13.stride[2] == 1 && aligned16(p.w2.data) &&
         p.w2.stride[0] % 8 == 0 && p.w2.stride[1] % 8 == 0 && p.w2.stride[2] == 1;
}

cudaError_t launch_moe_decode(const ops::FusedMoeParams& p, Scratch& scratch, cudaStream_t stream) {
  DecodeArgs a{};
  const int n = int(p.x.shape[0]);
  a.hidden = int(p.x.shape[1]);
  a.top_k = int(p.topk_ids.shape[1]);
  a.local_experts = int(p.w13.shape[0]);
  a.inter = int(p.w2.shape[2]);
  a.num_experts = p.expert_map.empty() ? a.local_experts : int(p.expert_map.shape[0]);
  a.map = p.expert_map.empty() ? nullptr : p.expert_map.ptr<int32_t>();
  a.slots = n * a.top_k;
  a.ids = p.topk_ids.ptr<int32_t>(); a.s_ids = p.topk_ids.stride[0];
  a.x = p.x.ptr<bf16>(); a.sx = p.x.stride[0];
  a.w13 = p.w13.ptr<bf16>(); a.sw13_e = p.w13.stride[0]; a.sw13_r = p.w13.stride[1];
  a.w2 = p.w2.ptr<bf16>(); a.sw2_e = p.w2.stride[0]; a.sw2_r = p.w2.stride[1];
  using C = ScratchCarver;
  a.part_kind = moe_part_kind(p.out.dtype);
  a.w = p.topk_weights.ptr<float>(); a.s_w = p.topk_weights.stride[0];
  const size_t part_bytes = size_t(a.slots) * a.hidden * (a.part_kind == moe::PartKind::kBF16 ? sizeof(bf16) : sizeof(float));
  const size_t bytes = C::bytes_for<bf16>(size_t(a.slots) * a.inter) + C::bytes_for<char>(part_bytes);
  C carver{static_cast<char*>(scratch.get(bytes))};
  if (carver.base == nullptr) return cudaErrorMemoryAllocation;
  a.h = carver.carve<bf16>(size_t(a.slots) * a.inter);
  a.part = carver.carve<char>(part_bytes);
  a.counters = scratch.counters() + kCountersMoeDecode;
  // Few tokens: one launch (moe_decode_fused.cu; same bits).
  const bool single = moe_decode_fused_fits(n, a.slots, a.hidden, a.local_experts);
  a.l2_mode = l2_setting(single);
  if (single) return launch_moe_decode_fused(a, n, p.out.data, p.out.stride[0], p.out.dtype == DType::kF32, stream);
  // Token tile: a slot group of up to MT rows shares each weight load; larger groups loop.
  const bool pdl = pdl_setting();
  cudaError_t err;
  const int sa = stages_setting() / 10, sb = stages_setting() % 10;
  if (n > 16) err = launch_gemms<32, 4, 4>(a, pdl, stream);
  else if (sa == 4) err = launch_gemms16<4>(a, sb, pdl, stream);
  else if (sa == 8) err = launch_gemms16<8>(a, sb, pdl, stream);
  else err = launch_gemms16<6>(a, sb, pdl, stream);
  if (err != cudaSuccess) return err;
  moe::CombineArgs c{};
  c.part = a.part;
  c.ids = a.ids; c.s_ids = a.s_ids;
  c.map = a.map; c.num_experts = a.num_experts; c.local_experts = a.local_experts;
  c.top_k = a.top_k; c.hidden = a.hidden;
  c.out = p.out.data; c.s_out = p.out.stride[0];
  c.vec = moe::combine_vec_ok(c.out, c.s_out, a.hidden);
  return launch_moe_combine(c, a.part_kind, p.out.dtype, n, pdl, stream);
}

}  // namespace moex::kernels
