// Fused MoE for few tokens (the decode path): every active expert's weights are streamed once
// over all SMs, without the align step and without any host sync. See docs/kernels/fused_moe.md,
// "Decode path".
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
#include "kernels/gemm/ptx.cuh"
#include "kernels/moe/moe.h"
#include "kernels/moe/moe_combine.cuh"
#include "kernels/moe/moe_decode.h"

namespace moex::kernels {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 128;      // 4 warps; each owns 16 weight rows (two n8 MMA tiles)
constexpr int kRows = 64;          // weight rows per block
constexpr int kBK = 64;            // K per pipeline stage: 128 bytes = 8 chunks of 16 bytes per row
// cp.async ring depths of the 16-token tile, gate/up and down kernels: 4 (44.5 KB of shared
// memory, five blocks per SM, 24 KB in flight each), 6 (three, 40 KB) or 8 (two, 56 KB);
// MOEX_MOE_DECODE_STAGES = two digits overrides (e.g. 46). The 32-token tile uses 4.
constexpr int kDefaultStagesA = 6, kDefaultStagesB = 6;
constexpr int kMaxSlots = 1024;    // n * top_k handled by the decode path
constexpr int kMaxLocal = 512;     // local experts handled by the decode path

struct DecodeArgs {
  const int32_t* ids; int64_t s_ids;        // [n, top_k] global expert ids, row stride s_ids
  const int32_t* map;                       // [num_experts] or nullptr (identity)
  int num_experts, local_experts, top_k, slots;
  const bf16* x; int64_t sx;                // [n, hidden] row stride sx
  const bf16* w13; int64_t sw13_e, sw13_r;  // [local_experts, 2 * inter, hidden]
  const bf16* w2; int64_t sw2_e, sw2_r;     // [local_experts, hidden, inter]
  bf16* h;                                  // [slots, inter] by slot index
  void* part;                               // [slots, hidden] weighted partials by slot index
  moe::PartKind part_kind;                  // (moe_combine.cuh)
  const float* w; int64_t s_w;              // [n, top_k] routing weights, row stride s_w
  int hidden, inter;
};

__device__ __forceinline__ int local_expert(int id, const int32_t* map, int num_experts, int local_experts) {
  if (map) return (id >= 0 && id < num_experts) ? map[id] : -1;
  return (id >= 0 && id < local_experts) ? id : -1;
}

// Shared memory of one block: the cp.async ring plus the slot bookkeeping (kept small so that
// five 4-stage blocks fit on an SM).
template <int MT, int ST>
struct DecodeSmem {
  bf16 w[ST][kRows][kBK];        // weight rows, 16-byte chunks XOR-swizzled by row
  bf16 x[ST][MT][kBK];           // token rows (x or h), same swizzle
  int16_t sloc[kMaxSlots];       // local expert of each slot, -1 = not local
  int16_t list[kMaxSlots];       // this block's slots, ascending
  uint8_t active[kMaxLocal];     // 1 if some slot routes to the local expert
  int warp_sum[kThreads / 32];
  int expert;
};

// Programmatic dependent launch (sm_90): the down and combine kernels are launched while the
// previous kernel runs; they find their expert and prefetch weights, then wait for its results.
__device__ __forceinline__ void pdl_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;\n" ::); }
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

__device__ __forceinline__ int swz(int row, int chunk) { return ((chunk ^ (row & 7)) * 8); }

// PTX wrappers shared with the GEMMs (gemm/ptx.cuh).
using gemm::ptx::cp_async_16;
using gemm::ptx::cp_async_commit;
using gemm::ptx::cp_async_wait;
using gemm::ptx::ldmatrix_x4;
using gemm::ptx::mma_bf16_16816;

// Finds this block's expert: the rank-th active local expert in ascending id order, or -1 (the
// same for the whole block) when rank is past the active experts. Fills s.sloc. Every thread
// must call it.
template <int MT, int ST>
__device__ int find_expert(const DecodeArgs& a, int rank, DecodeSmem<MT, ST>& s) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  for (int e = tid; e < a.local_experts; e += kThreads) s.active[e] = 0;
  if (tid == 0) s.expert = -1;
  __syncthreads();
  for (int i = tid; i < a.slots; i += kThreads) {
    int e = local_expert(a.ids[int64_t(i / a.top_k) * a.s_ids + i % a.top_k], a.map, a.num_experts,
                         a.local_experts);
    if (e >= a.local_experts) e = -1;  // a bad expert_map entry must not index past s.active
    s.sloc[i] = int16_t(e);
    if (e >= 0) s.active[e] = 1;
  }
  __syncthreads();
  // Each thread owns a run of consecutive experts; a block prefix over the runs ranks them.
  const int per = (a.local_experts + kThreads - 1) / kThreads;
  const int e0 = tid * per, e1 = min(e0 + per, a.local_experts);
  int cnt = 0;
  for (int e = e0; e < e1; ++e) cnt += s.active[e];
  int incl = cnt;
  for (int o = 1; o < 32; o <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) s.warp_sum[warp] = incl;
  __syncthreads();
  int before = incl - cnt;
  for (int w = 0; w < warp; ++w) before += s.warp_sum[w];
  if (rank >= before && rank < before + cnt) {
    int r = before;
    for (int e = e0; e < e1; ++e) {
      if (s.active[e] && r++ == rank) s.expert = e;
    }
  }
  __syncthreads();
  return s.expert;
}

// Writes the slots routed to `expert` in ascending order to s.list; returns their count.
template <int MT, int ST>
__device__ int gather_slots(const DecodeArgs& a, int expert, DecodeSmem<MT, ST>& s) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  int base = 0;
  for (int i0 = 0; i0 < a.slots; i0 += kThreads) {
    const int i = i0 + tid;
    const bool hit = i < a.slots && s.sloc[i] == expert;
    const unsigned ballot = __ballot_sync(0xffffffffu, hit);
    __syncthreads();  // warp_sum reuse
    if (lane == 0) s.warp_sum[warp] = __popc(ballot);
    __syncthreads();
    int off = base, total = 0;
    for (int w = 0; w < kThreads / 32; ++w) {
      off += (w < warp) ? s.warp_sum[w] : 0;
      total += s.warp_sum[w];
    }
    if (hit) s.list[off + __popc(ballot & ((1u << lane) - 1u))] = int16_t(i);
    base += total;
  }
  __syncthreads();
  return base;
}

// One block's GEMM: acc[mt][nt] = X[tokens g0.., :K] @ W[rows of this warp, :K]^T, streamed
// through the cp.async ring. wrow[i] are the global rows for the thread's weight chunks;
// xrow(slot) gives a token row. The MMA chain per element is ascending K in k16 steps from zero.
constexpr int kWPer = kRows * 8 / kThreads;  // weight chunks per thread and stage

// Issues (without committing) the weight chunks of the first ST - 1 stages: they join the first
// commit group of stream_tile(..., w_issued = true).
template <int MT, int ST>
__device__ void prefetch_w(DecodeSmem<MT, ST>& s, const bf16* const (&wrow)[kWPer], int K) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int st = 0; st < ST - 1; ++st) {
    if (st >= K / kBK) break;
#pragma unroll
    for (int i = 0; i < kWPer; ++i) {
      const int c = tid + i * kThreads, r = c / 8;
      cp_async_16(&s.w[st][r][swz(r, c % 8)], wrow[i] + st * kBK, true);
    }
  }
}

template <int MT, int ST, class XRow>
__device__ void stream_tile(DecodeSmem<MT, ST>& s, const bf16* const (&wrow)[kWPer], XRow xrow, int g0, int mt, int K,
                            bool w_issued, float (&acc)[MT / 16][2][4]) {
  constexpr int kXPer = (MT * 8 + kThreads - 1) / kThreads;      // token chunks per thread and stage
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int nk = K / kBK;
  const bf16* xr[kXPer];
#pragma unroll
  for (int i = 0; i < kXPer; ++i) {
    const int c = tid + i * kThreads, r = c / 8;
    xr[i] = (c < MT * 8 && r < mt) ? xrow(s.list[g0 + r]) + (c % 8) * 8 : nullptr;
  }
  auto load = [&](int stage, int kt, bool with_w) {
    const int k0 = kt * kBK;
#pragma unroll
    for (int i = 0; i < kWPer; ++i) {
      const int c = tid + i * kThreads, r = c / 8;
      if (with_w) cp_async_16(&s.w[stage][r][swz(r, c % 8)], wrow[i] + k0, true);
    }
#pragma unroll
    for (int i = 0; i < kXPer; ++i) {
      const int c = tid + i * kThreads, r = c / 8;
      if (c < MT * 8) cp_async_16(&s.x[stage][r][swz(r, c % 8)], xr[i] ? xr[i] + k0 : wrow[0], xr[i] != nullptr);
    }
  };
#pragma unroll
  for (int i = 0; i < MT / 16; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.f;
  const int mtiles = (mt + 15) / 16;
#pragma unroll
  for (int st = 0; st < ST - 1; ++st) {
    if (st < nk) load(st, st, !w_issued);
    cp_async_commit();
  }
  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<ST - 2>();
    __syncthreads();  // stage kt visible to all; stage kt - 1 free for reuse
    if (kt + ST - 1 < nk) load((kt + ST - 1) % ST, kt + ST - 1, true);
    cp_async_commit();
    const int st = kt % ST;
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      unsigned b[4];  // b[0..1]: rows 0-7 of the warp (n tile 0), b[2..3]: rows 8-15 (n tile 1)
      const int wr = warp * 16 + (lane & 7) + ((lane >> 4) << 3);
      ldmatrix_x4(b, &s.w[st][wr][swz(wr, 2 * kk + ((lane >> 3) & 1))]);
#pragma unroll
      for (int m = 0; m < MT / 16; ++m) {
        if (m >= mtiles) break;
        unsigned af[4];
        const int xr_ = m * 16 + (lane & 15);
        ldmatrix_x4(af, &s.x[st][xr_][swz(xr_, 2 * kk + (lane >> 4))]);
        mma_bf16_16816(acc[m][0], af, b[0], b[1]);
        mma_bf16_16816(acc[m][1], af, b[2], b[3]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the ring is reused by the next token group
}

// Kernel 1: h[slot, i] = bf16(silu(gate_i(x[token])) * up_i(x[token])) for the block's 32 i.
// Warp w owns gate rows i0 + 8w .. +7 (n tile 0) and the matching up rows (n tile 1).
template <int MT, int ST>
__global__ void __launch_bounds__(kThreads) moe_decode_gate_up_kernel(DecodeArgs a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  DecodeSmem<MT, ST>& s = *reinterpret_cast<DecodeSmem<MT, ST>*>(smem_raw);
  pdl_launch_dependents();  // the down kernel may start its prologue once every block runs
  const int e = find_expert(a, blockIdx.y, s);
  if (e < 0) return;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int i0 = blockIdx.x * 32;
  const bf16* wrow[kWPer];
#pragma unroll
  for (int i = 0; i < kWPer; ++i) {
    const int c = tid + i * kThreads, r = c / 8, rr = r % 16;
    const int row = (rr < 8 ? 0 : a.inter) + i0 + (r / 16) * 8 + (rr % 8);
    wrow[i] = a.w13 + int64_t(e) * a.sw13_e + int64_t(row) * a.sw13_r + (c % 8) * 8;
  }
  prefetch_w(s, wrow, a.hidden);
  const int m = gather_slots(a, e, s);
  auto xrow = [&](int slot) { return a.x + int64_t(slot / a.top_k) * a.sx; };
  for (int g0 = 0; g0 < m; g0 += MT) {
    const int mt = min(MT, m - g0);
    float acc[MT / 16][2][4];
    stream_tile(s, wrow, xrow, g0, mt, a.hidden, g0 == 0, acc);
    const int i = i0 + warp * 8 + (lane % 4) * 2;  // this thread's two columns i, i + 1
#pragma unroll
    for (int mi = 0; mi < MT / 16; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int t = mi * 16 + lane / 4 + half * 8;
        if (t >= mt) continue;
        const int slot = s.list[g0 + t];
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float g = acc[mi][0][half * 2 + c], u = acc[mi][1][half * 2 + c];
          a.h[int64_t(slot) * a.inter + i + c] = __float2bfloat16_rn(g / (1.f + expf(-g)) * u);
        }
      }
    }
  }
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
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int c0 = blockIdx.x * kRows;
  const bf16* wrow[kWPer];
#pragma unroll
  for (int i = 0; i < kWPer; ++i) {
    const int c = tid + i * kThreads, r = c / 8;
    wrow[i] = a.w2 + int64_t(e) * a.sw2_e + int64_t(c0 + r) * a.sw2_r + (c % 8) * 8;
  }
  prefetch_w(s, wrow, a.inter);  // weights do not depend on the gate/up kernel
  const int m = gather_slots(a, e, s);
  pdl_wait();  // h complete and visible
  auto hrow = [&](int slot) { return static_cast<const bf16*>(a.h) + int64_t(slot) * a.inter; };
  for (int g0 = 0; g0 < m; g0 += MT) {
    const int mt = min(MT, m - g0);
    float acc[MT / 16][2][4];
    stream_tile(s, wrow, hrow, g0, mt, a.inter, g0 == 0, acc);
#pragma unroll
    for (int mi = 0; mi < MT / 16; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int t = mi * 16 + lane / 4 + half * 8;
        if (t >= mt) continue;
        const int slot = s.list[g0 + t];
        const float wt = a.w[int64_t(slot / a.top_k) * a.s_w + slot % a.top_k];
        const int64_t yi = int64_t(slot) * a.hidden + c0 + warp * 16 + (lane % 4) * 2;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
          moe::store_part2(a.part, a.part_kind, yi + nt * 8, moe::weighted(wt, acc[mi][nt][half * 2]),
                           moe::weighted(wt, acc[mi][nt][half * 2 + 1]));
      }
    }
  }
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
bool pdl_setting() {
  static const bool v = [] {
    const char* e = std::getenv("MOEX_MOE_DECODE_PDL");
    return e == nullptr || std::atoi(e) != 0;
  }();
  return v;
}

// cudaLaunchKernelEx with the programmatic-stream-serialization attribute when `pdl`.
template <class... Params, class... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, bool pdl, cudaStream_t stream,
                   Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
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
  cudaError_t e = launch(moe_decode_gate_up_kernel<MT, SA>, dim3(a.inter / 32, ranks), dim3(kThreads), kSmemA, false,
                         stream, a);
  if (e != cudaSuccess) return e;
  return launch(moe_decode_down_kernel<MT, SB>, dim3(a.hidden / kRows, ranks), dim3(kThreads), kSmemB, pdl, stream, a);
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
