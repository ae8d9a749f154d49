// The single-launch plan of the fused-MoE decode path (docs/kernels/fused_moe.md, "Decode path,
// one launch"). One 1-D grid holds, in this order:
//   - gate/up blocks, rank-major: (expert rank r, 32 intermediate columns): h = bf16(silu(g) * u);
//     each bumps the ready counter of rank r once its h columns are stored;
//   - down blocks, rank-major: (expert rank r, 64 hidden columns): prefetch their w2 stages, wait
//     until every gate/up block of rank r has counted in, then store the weighted partials;
//     the last down block of a column block (an atomic ticket) sums the partials of those 64
//     columns for every token in slot order and writes out.
// A down block waits only for blocks of lower index; blocks start in index order, so those are
// running or done and the wait always ends. No host sync; the counters are reset by the last
// block (ready counters) and the last ticket holder (column tickets), so every launch finds them
// at zero. The counters belong to the calling backend (Scratch::counters), whose calls are
// ordered on its one stream; another backend on the same GPU has its own, so two backends
// stepping from two host threads never count in each other's (TwoBackendsFromTwoThreads).
//
// Bits: gate_up_block / down_block are the three-kernel plan's (moe_decode_tile.cuh), and the
// combine is moe_combine.cuh's expression (fp32 adds from 0 over the local slots in slot order
// of the rounded partials, one rounding to out's dtype), so a token gets the same bits here, on
// the three-kernel plan and on the prefill path.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/common/scratch.h"
#include "kernels/moe/moe_decode_fused.h"

namespace moex::kernels {
namespace {

using namespace moe_decode;

constexpr int kFusedMaxColBlocks = 1024;  // hidden / 64: hidden <= 65536

// The backend's counters (DecodeArgs::counters): ready counters (gate/up blocks done per expert
// rank), column-block tickets and the exit ticket. Zero at creation; each launch leaves them at
// zero.
static_assert(kMaxLocal + kFusedMaxColBlocks + 1 <= kCountersMoeDecodeSize, "counter range");
__device__ __forceinline__ unsigned int* up_ready(const DecodeArgs& a) { return a.counters; }
__device__ __forceinline__ unsigned int* col_ticket(const DecodeArgs& a) { return a.counters + kMaxLocal; }
__device__ __forceinline__ unsigned int* exit_ticket(const DecodeArgs& a) {
  return a.counters + kMaxLocal + kFusedMaxColBlocks;
}

// MOEX_MOE_DECODE_TRACE=1 (eager calls only): each block records %globaltimer at its start,
// when its operands are known, when it may stream (after the h wait for down blocks) and at its
// end; the host prints one summary line per call on stderr. For the timeline of one launch.
constexpr int kTraceBlocks = 4096;
__device__ unsigned long long g_trace[kTraceBlocks][4];

struct FusedArgs {
  int n;                // tokens
  int n_up;             // gate/up blocks: ranks * inter / 32
  int ranks;            // expert ranks the grid covers (an upper bound of the active experts)
  void* out;            // [n, hidden] bf16 or f32, row stride s_out
  int64_t s_out;
  bool out_f32;
  bool trace;           // record g_trace
};

template <int ST>
using FusedSmem = DecodeSmem<16, ST, kFusedMaxSlots>;

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ void trace_mark(const FusedArgs& f, int what) {
  if (f.trace && threadIdx.x == 0 && blockIdx.x < kTraceBlocks) g_trace[blockIdx.x][what] = global_ns();
}

__device__ __forceinline__ unsigned int ld_acquire(const unsigned int* p) {
  unsigned int v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Block-wide: true in the block that takes the last of `expected` tickets of *counter (which it
// sets back to 0). Every thread's earlier global writes are fenced before the ticket.
template <int ST>
__device__ bool last_ticket(unsigned int* counter, unsigned int expected, FusedSmem<ST>& s) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int t = atomicAdd(counter, 1u);
    const bool last = t == expected - 1;
    if (last) *counter = 0u;
    s.flag = last;
  }
  __syncthreads();
  const bool last = s.flag != 0;
  if (last) __threadfence();
  return last;
}

// out[t, c0 .. c0 + 63] for every token: the local slots' partials (written by other blocks,
// read through L2) staged as fp32 in the idle ring, then summed in slot order. `any` false: no
// local expert at all, the sum of nothing (zeros).
template <int ST>
__device__ void combine_columns(const DecodeArgs& a, const FusedArgs& f, int c0, bool any, FusedSmem<ST>& s) {
  float* stage = reinterpret_cast<float*>(&s.w[0][0][0]);  // [slots, 64]
  static_assert(sizeof(s.w) >= sizeof(float) * kFusedMaxSlots * kRows, "combine staging fits the ring");
  const int tid = threadIdx.x;
  if (any) {
    for (int idx = tid; idx < a.slots * 8; idx += kThreads) {
      const int slot = idx / 8, c = (idx % 8) * 8;
      if (s.sloc[slot] < 0) continue;  // never written, never read
      const int64_t at = int64_t(slot) * a.hidden + c0 + c;
      float v[8];
      if (a.part_kind == moe::PartKind::kBF16) {
        const uint4 q = __ldcg(reinterpret_cast<const uint4*>(static_cast<const bf16*>(a.part) + at));
        const __nv_bfloat162* h2 = reinterpret_cast<const __nv_bfloat162*>(&q);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 p2 = __bfloat1622float2(h2[i]);
          v[2 * i] = p2.x;
          v[2 * i + 1] = p2.y;
        }
      } else {
        const float4* p4 = reinterpret_cast<const float4*>(static_cast<const float*>(a.part) + at);
        const float4 lo = __ldcg(p4), hi = __ldcg(p4 + 1);
        v[0] = lo.x; v[1] = lo.y; v[2] = lo.z; v[3] = lo.w; v[4] = hi.x; v[5] = hi.y; v[6] = hi.z; v[7] = hi.w;
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) stage[slot * kRows + c + i] = v[i];
    }
    __syncthreads();
  }
  for (int idx = tid; idx < f.n * kRows; idx += kThreads) {
    const int t = idx / kRows, c = idx % kRows;
    float acc = 0.f;
    if (any) {
      for (int j = 0; j < a.top_k; ++j) {
        const int slot = t * a.top_k + j;
        if (s.sloc[slot] < 0) continue;
        acc = __fadd_rn(acc, stage[slot * kRows + c]);
      }
    }
    const int64_t o = int64_t(t) * f.s_out + c0 + c;
    if (f.out_f32) static_cast<float*>(f.out)[o] = acc;
    else static_cast<bf16*>(f.out)[o] = __float2bfloat16_rn(acc);
  }
}

template <int ST>
__global__ void __launch_bounds__(kThreads) moe_decode_fused_kernel(DecodeArgs a, FusedArgs f) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  FusedSmem<ST>& s = *reinterpret_cast<FusedSmem<ST>*>(smem_raw);
  const int tid = threadIdx.x;
  trace_mark(f, 0);
  const bool up = int(blockIdx.x) < f.n_up;
  const int item = up ? int(blockIdx.x) : int(blockIdx.x) - f.n_up;
  const int per_rank = up ? a.inter / 32 : a.hidden / kRows;
  const int rank = item / per_rank, sub = item % per_rank;
  const int e = find_expert(a, rank, s);
  const bf16* wrow[kWPer];
  const WeightLoad wl = weight_load(a.l2_mode);
  if (e >= 0 && up) {
    const int i0 = sub * 32;
    gate_up_rows(a, e, i0, wrow);
    prefetch_w(s, wrow, a.hidden, wl);
    const int m = gather_slots(a, e, s);
    trace_mark(f, 1);
    trace_mark(f, 2);
    gate_up_block(a, wrow, wl, i0, m, s);
    __threadfence();  // this block's h before its count
    __syncthreads();
    if (tid == 0) atomicAdd(&up_ready(a)[rank], 1u);
  } else if (e >= 0) {
    const int c0 = sub * kRows;
    down_rows(a, e, c0, wrow);
    prefetch_w(s, wrow, a.inter, wl);  // the weights do not depend on h
    const int m = gather_slots(a, e, s);
    trace_mark(f, 1);
    if (tid == 0) {
      const unsigned int need = unsigned(a.inter / 32);
      while (ld_acquire(&up_ready(a)[rank]) < need) __nanosleep(64);
    }
    __syncthreads();  // h of this expert complete and visible (read with cp.async.cg: L2)
    trace_mark(f, 2);
    down_block(a, wrow, wl, c0, m, s);
    if (last_ticket(&col_ticket(a)[sub], unsigned(s.n_active), s)) combine_columns(a, f, c0, true, s);
  } else if (!up && rank == 0 && s.n_active == 0) {
    combine_columns(a, f, sub * kRows, false, s);  // no local expert: out = 0
  }
  trace_mark(f, 3);
  // The last block out resets the ready counters: every wait on them has ended by then.
  __syncthreads();
  if (tid == 0) {
    __threadfence();
    const unsigned int t = atomicAdd(exit_ticket(a), 1u);
    if (t == gridDim.x - 1) {
      for (int r = 0; r < f.ranks; ++r) up_ready(a)[r] = 0u;
      *exit_ticket(a) = 0u;
      __threadfence();
    }
  }
}

void* trace_ptr() {
  void* p = nullptr;
  return cudaGetSymbolAddress(&p, g_trace) == cudaSuccess ? p : nullptr;
}

bool trace_setting(cudaStream_t stream) {
  const char* v = std::getenv("MOEX_MOE_DECODE_TRACE");
  if (v == nullptr || std::strcmp(v, "1") != 0) return false;
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(stream, &cs) == cudaSuccess && cs == cudaStreamCaptureStatusNone;
}

// One line per traced call: microseconds from the first block's start. Active blocks only
// (blocks past the active experts record their start and end alone).
void trace_report(const FusedArgs& f, int blocks, cudaStream_t stream) {
  std::vector<unsigned long long> t(size_t(kTraceBlocks) * 4);
  if (cudaStreamSynchronize(stream) != cudaSuccess ||
      cudaMemcpyFromSymbol(t.data(), g_trace, t.size() * sizeof(unsigned long long)) != cudaSuccess)
    return;
  blocks = std::min(blocks, kTraceBlocks);
  unsigned long long t0 = ~0ull;
  for (int b = 0; b < blocks; ++b) t0 = std::min(t0, t[size_t(b) * 4]);
  auto us = [&](unsigned long long v) { return double(v - t0) * 1e-3; };
  std::vector<double> up_go, up_end, dn_ready, dn_go, dn_end, all_end;
  for (int b = 0; b < blocks; ++b) {
    const unsigned long long* r = &t[size_t(b) * 4];
    all_end.push_back(us(r[3]));
    if (r[2] < t0 || r[1] < t0) continue;  // no expert: no operand marks this call
    if (b < f.n_up) { up_go.push_back(us(r[1])); up_end.push_back(us(r[3])); }
    else { dn_ready.push_back(us(r[1])); dn_go.push_back(us(r[2])); dn_end.push_back(us(r[3])); }
  }
  auto q = [](std::vector<double> v, double frac) {
    if (v.empty()) return -1.0;
    std::sort(v.begin(), v.end());
    return v[size_t(frac * double(v.size() - 1))];
  };
  std::fprintf(stderr,
               "moe-decode-trace blocks=%d up=%zu down=%zu up_go(min/med/max)=%.1f/%.1f/%.1f up_end=%.1f/%.1f/%.1f "
               "down_ready=%.1f/%.1f/%.1f down_go=%.1f/%.1f/%.1f down_end=%.1f/%.1f/%.1f last_end=%.1f us\n",
               blocks, up_go.size(), dn_go.size(), q(up_go, 0), q(up_go, .5), q(up_go, 1), q(up_end, 0), q(up_end, .5),
               q(up_end, 1), q(dn_ready, 0), q(dn_ready, .5), q(dn_ready, 1), q(dn_go, 0), q(dn_go, .5), q(dn_go, 1),
               q(dn_end, 0), q(dn_end, .5), q(dn_end, 1), q(all_end, 1));
}

template <int ST>
cudaError_t launch_fused(const DecodeArgs& a, const FusedArgs& f, cudaStream_t stream) {
  constexpr size_t kSmem = sizeof(FusedSmem<ST>);
  auto* kernel = moe_decode_fused_kernel<ST>;
  // Per call, not once: the attribute belongs to the current device's context.
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem));
  if (e == cudaSuccess) e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100);
  if (e != cudaSuccess) return e;
  const int blocks = f.n_up + f.ranks * (a.hidden / kRows);
  if (f.trace) {
    // Stale marks of an earlier call must not pass for this one's.
    e = cudaMemsetAsync(trace_ptr(), 0, sizeof(unsigned long long) * kTraceBlocks * 4, stream);
    if (e != cudaSuccess) return e;
  }
  kernel<<<blocks, kThreads, kSmem, stream>>>(a, f);
  e = cudaGetLastError();
  if (e == cudaSuccess && f.trace) trace_report(f, blocks, stream);
  return e;
}

}  // namespace

int moe_decode_fused_max_tokens() {
  const char* e = std::getenv("MOEX_MOE_DECODE_FUSED");
  return e != nullptr ? std::atoi(e) : kMoeDecodeFusedMaxTokens;
}

int moe_decode_fused_stages() {
  const char* e = std::getenv("MOEX_MOE_DECODE_FUSED_STAGES");
  const int v = e != nullptr ? std::atoi(e) : 0;
  return (v == 4 || v == 6 || v == 8) ? v : kMoeDecodeFusedStages;
}

bool moe_decode_fused_fits(int n, int slots, int hidden, int local_experts) {
  return n <= moe_decode_fused_max_tokens() && slots <= kFusedMaxSlots && hidden / kRows <= kFusedMaxColBlocks &&
         local_experts <= kMaxLocal;
}

cudaError_t launch_moe_decode_fused(const DecodeArgs& a, int n, void* out, int64_t s_out, bool out_f32,
                                    cudaStream_t stream) {
  FusedArgs f{};
  f.n = n;
  f.ranks = std::min(a.slots, a.local_experts);
  f.n_up = f.ranks * (a.inter / 32);
  f.out = out;
  f.s_out = s_out;
  f.out_f32 = out_f32;
  f.trace = trace_setting(stream);
  const int st = moe_decode_fused_stages();
  if (st == 4) return launch_fused<4>(a, f, stream);
  if (st == 8) return launch_fused<8>(a, f, stream);
  return launch_fused<6>(a, f, stream);
}

}  // namespace moex::kernels
