// Device pieces of the fused-MoE decode path shared by its two launch plans: the three-kernel
// plan (moe_decode.cu) and the single-launch plan (moe_decode_fused.cu). A block streams 64
// weight rows (32 gate + 32 up rows, or 64 w2 rows) of one expert through a cp.async ring and
// multiplies them with the expert's token rows on mma.sync m16n8k16, K ascending from a zero
// accumulator: the MMA step, operand roles and K order of the prefill path, so a token gets the
// same bits on every path (docs/kernels/fused_moe.md, "Decode path").
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/gemm/ptx.cuh"
#include "kernels/moe/moe_combine.cuh"

namespace moex::kernels::moe_decode {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 128;      // 4 warps; each owns 16 weight rows (two n8 MMA tiles)
constexpr int kRows = 64;          // weight rows per block
constexpr int kBK = 64;            // K per pipeline stage: 128 bytes = 8 chunks of 16 bytes per row
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
  int l2_mode;                              // how weights pass L2 (WeightLoad)
  unsigned int* counters;                   // [kCountersMoeDecodeSize] zero (Scratch::counters)
};

__device__ __forceinline__ int local_expert(int id, const int32_t* map, int num_experts, int local_experts) {
  if (map) return (id >= 0 && id < num_experts) ? map[id] : -1;
  return (id >= 0 && id < local_experts) ? id : -1;
}

// Shared memory of one block: the cp.async ring plus the slot bookkeeping for up to SL slots
// (kept small so that several blocks fit on an SM).
template <int MT, int ST, int SL = kMaxSlots>
struct DecodeSmem {
  bf16 w[ST][kRows][kBK];        // weight rows, 16-byte chunks XOR-swizzled by row
  bf16 x[ST][MT][kBK];           // token rows (x or h), same swizzle
  int16_t sloc[SL];              // local expert of each slot, -1 = not local
  int16_t list[SL];              // this block's slots, ascending
  uint8_t active[kMaxLocal];     // 1 if some slot routes to the local expert
  int warp_sum[kThreads / 32];
  int expert;
  int n_active;                  // active local experts (find_expert)
  int flag;                      // block-wide flag (moe_decode_fused.cu: last-block ticket)
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

// How a block's weight chunks are loaded. Every weight byte is read once per call, so it may
// enter L2 as evict_first: a line of weights is then the first to be replaced in its set, before
// the dirty or reusable lines other kernels left there (activations, the KV cache; the
// benchmark's L2 flush leaves ~50 MB of dirty lines). Modes: 0 plain cp.async.cg (the
// three-kernel plan's default), 1 evict_first (the single launch's default), 2 evict_first plus
// a 256-byte L2 prefetch per load (the row's next stage); MOEX_MOE_DECODE_L2 forces one
// (moe_decode.cu). Values are the same in every mode.
struct WeightLoad {
  int mode;
  uint64_t policy;
  // PTX ISA 9.7.9.25.3.1 cp.async (.L2::cache_hint, .L2::256B): 16 bytes, L1 bypassed.
  __device__ __forceinline__ void operator()(void* dst, const void* src) const {
    const uint32_t d = gemm::ptx::smem_addr(dst);
    if (mode == 1)
      asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, 16, %2;\n" ::"r"(d), "l"(src), "l"(policy));
    else if (mode == 2)
      asm volatile("cp.async.cg.shared.global.L2::cache_hint.L2::256B [%0], [%1], 16, 16, %2;\n" ::"r"(d), "l"(src),
                   "l"(policy));
    else
      gemm::ptx::cp_async_16(d, src, 16);
  }
};
// PTX ISA 9.7.9.19 createpolicy: an L2 policy that makes every line it loads evict_first.
__device__ __forceinline__ WeightLoad weight_load(int mode) {
  WeightLoad wl{mode, 0};
  if (mode != 0) asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(wl.policy));
  return wl;
}

// Finds this block's expert: the rank-th active local expert in ascending id order, or -1 (the
// same for the whole block) when rank is past the active experts. Fills s.sloc and s.n_active.
// Every thread must call it.
template <int MT, int ST, int SL>
__device__ int find_expert(const DecodeArgs& a, int rank, DecodeSmem<MT, ST, SL>& s) {
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
  if (tid == 0) {
    int total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += s.warp_sum[w];
    s.n_active = total;
  }
  __syncthreads();
  return s.expert;
}

// Writes the slots routed to `expert` in ascending order to s.list; returns their count.
template <int MT, int ST, int SL>
__device__ int gather_slots(const DecodeArgs& a, int expert, DecodeSmem<MT, ST, SL>& s) {
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
template <int MT, int ST, int SL>
__device__ void prefetch_w(DecodeSmem<MT, ST, SL>& s, const bf16* const (&wrow)[kWPer], int K, WeightLoad wl) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int st = 0; st < ST - 1; ++st) {
    if (st >= K / kBK) break;
#pragma unroll
    for (int i = 0; i < kWPer; ++i) {
      const int c = tid + i * kThreads, r = c / 8;
      wl(&s.w[st][r][swz(r, c % 8)], wrow[i] + st * kBK);
    }
  }
}

template <int MT, int ST, int SL, class XRow>
__device__ void stream_tile(DecodeSmem<MT, ST, SL>& s, const bf16* const (&wrow)[kWPer], WeightLoad wl, XRow xrow,
                            int g0, int mt, int K, bool w_issued, float (&acc)[MT / 16][2][4]) {
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
      if (with_w) wl(&s.w[stage][r][swz(r, c % 8)], wrow[i] + k0);
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

// The weight-row pointers of a block's kWPer chunks per thread. Gate/up block i0 (a multiple
// of 32): warp w owns gate rows i0 + 8w .. +7 (n tile 0) and the matching up rows (n tile 1).
__device__ __forceinline__ void gate_up_rows(const DecodeArgs& a, int e, int i0, const bf16* (&wrow)[kWPer]) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int i = 0; i < kWPer; ++i) {
    const int c = tid + i * kThreads, r = c / 8, rr = r % 16;
    const int row = (rr < 8 ? 0 : a.inter) + i0 + (r / 16) * 8 + (rr % 8);
    wrow[i] = a.w13 + int64_t(e) * a.sw13_e + int64_t(row) * a.sw13_r + (c % 8) * 8;
  }
}
// Down block c0 (a multiple of 64): w2 rows c0 .. c0 + 63.
__device__ __forceinline__ void down_rows(const DecodeArgs& a, int e, int c0, const bf16* (&wrow)[kWPer]) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int i = 0; i < kWPer; ++i) {
    const int c = tid + i * kThreads, r = c / 8;
    wrow[i] = a.w2 + int64_t(e) * a.sw2_e + int64_t(c0 + r) * a.sw2_r + (c % 8) * 8;
  }
}

// h[slot, i] = bf16(silu(gate_i) * up_i) for the block's 32 columns from i0, over the m slots
// of s.list (the weights' first stages already issued by prefetch_w).
template <int MT, int ST, int SL>
__device__ void gate_up_block(const DecodeArgs& a, const bf16* const (&wrow)[kWPer], WeightLoad wl, int i0, int m,
                              DecodeSmem<MT, ST, SL>& s) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  auto xrow = [&](int slot) { return a.x + int64_t(slot / a.top_k) * a.sx; };
  for (int g0 = 0; g0 < m; g0 += MT) {
    const int mt = min(MT, m - g0);
    float acc[MT / 16][2][4];
    stream_tile(s, wrow, wl, xrow, g0, mt, a.hidden, g0 == 0, acc);
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

// part[slot, c] = P(w * (h[slot] . w2[e, c])) for the block's 64 hidden columns from c0, over
// the m slots of s.list (h complete and visible; w2's first stages already issued).
template <int MT, int ST, int SL>
__device__ void down_block(const DecodeArgs& a, const bf16* const (&wrow)[kWPer], WeightLoad wl, int c0, int m,
                           DecodeSmem<MT, ST, SL>& s) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  auto hrow = [&](int slot) { return static_cast<const bf16*>(a.h) + int64_t(slot) * a.inter; };
  for (int g0 = 0; g0 < m; g0 += MT) {
    const int mt = min(MT, m - g0);
    float acc[MT / 16][2][4];
    stream_tile(s, wrow, wl, hrow, g0, mt, a.inter, g0 == 0, acc);
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

}  // namespace moex::kernels::moe_decode
