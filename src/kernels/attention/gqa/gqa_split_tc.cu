// Tensor-core split kernel of GQA paged attention (bf16 q / K / V, head dim 64 or 128, at most 16
// query heads per KV head). Same contract, rows, splits and partials as attn_split_kernel in
// common/paged_attention.cuh, so the same combine kernel merges its splits; only the arithmetic of
// one split differs, and it differs for every row alike (the choice depends on shapes and dtypes,
// never on the batch).
//
// One CTA per (token, kv head, split): its G query heads are the M = 16 rows of m16n8k16 MMAs
// (rows >= G are zero and dropped). The split's keys stream through smem in 64-key tiles, two
// stages of cp.async (K and V rows gathered through the block table, 16 bytes per copy, keys past
// the row zero-filled so NaN in unused pages cannot leak). Warp w owns keys [16 w, 16 w + 16) of
// every tile and keeps its own online softmax (m, l) and fp32 accumulator [16, D] in registers:
//   S = Q K^T (Q fragments loaded once, K fragments by ldmatrix), P = exp(S - m) rounded to bf16
//   and reused as the A operand of P V (V fragments by ldmatrix.trans).
// At the end the 4 warps merge in ascending warp order through smem and the CTA writes the
// split's (m, l, acc) partial. Every sum has a fixed order that depends only on the row.
#include "kernels/attention/gqa/gqa_split_tc.h"

#include <cuda_bf16.h>

#include "kernels/common/dtype.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/gemm/ptx.cuh"

namespace moex::kernels {
namespace attention {
namespace {

namespace ptx = gemm::ptx;
using bf16 = __nv_bfloat16;

constexpr int kTcThreads = 128;
constexpr int kTcWarps = kTcThreads / 32;
constexpr int kTcTileKeys = 64;  // keys per smem tile; warp w owns keys [16 w, 16 w + 16)
constexpr int kTcStages = 2;

template <int D>
struct TcShape {
  static constexpr int kRowElems = D + 8;  // padded smem row: 16 spare bytes keep ldmatrix conflict-free
  static constexpr int kChunks = D / 8;    // 16-byte copies per key row
  static constexpr int kKeysPerPass = kTcThreads / kChunks;
  static constexpr int kStageElems = 2 * kTcTileKeys * kRowElems;  // K rows then V rows
  static constexpr size_t kTileBytes = size_t(kTcStages) * kStageElems * sizeof(bf16);
  static constexpr size_t kMergeBytes = sizeof(float) * (size_t(kTcWarps) * 16 * D + kTcWarps * 16 * 2);
  static constexpr size_t kSmemBytes = kTileBytes > kMergeBytes ? kTileBytes : kMergeBytes;
};

template <int D>
__global__ void __launch_bounds__(kTcThreads) gqa_split_tc_kernel(AttnArgs a) {
  pdl::trigger();  // the combine may be scheduled once every split block runs (pdl.cuh)
  using S = TcShape<D>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* tiles = reinterpret_cast<bf16*>(smem_raw);  // [stages][K 64 x kRowElems | V 64 x kRowElems]

  const int tok_local = blockIdx.x / a.kv_heads, g = blockIdx.x % a.kv_heads;
  const int t = a.token0 + tok_local;
  const int split = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rows = a.group;  // <= 16

  const RowRange rr = row_range(a, t);
  const int split_keys = attn_split_keys(rr.pos + 1, a.short_split_keys);
  const int kbeg = max(rr.lo, split * split_keys);
  const int kend = min(rr.pos + 1, (split + 1) * split_keys);
  auto part_index = [&](int r) { return (int64_t(tok_local) * a.heads_q + g * a.group + r) * a.num_splits + split; };
  if (kbeg >= kend) {  // nothing to see in this split
    if (threadIdx.x < rows) {
      a.part_ml[part_index(threadIdx.x) * 2] = -INFINITY;
      a.part_ml[part_index(threadIdx.x) * 2 + 1] = 0.f;
    }
    return;
  }

  const int32_t* pages = a.block_table + int64_t(rr.seq) * a.s_bt;
  const bf16* kbase = static_cast<const bf16*>(a.k) + int64_t(g) * a.s_kh + (threadIdx.x % S::kChunks) * 8;
  const bf16* vbase = static_cast<const bf16*>(a.v) + int64_t(g) * a.s_vh + (threadIdx.x % S::kChunks) * 8;
  // A thread copies chunk c of keys j0, j0 + P, j0 + 2P, ... of each tile (P = kKeysPerPass). Its
  // first key's page and slot take one division; the next keys step the slot by P and cross into
  // the next page by a compare (pages of at least P slots; smaller pages divide per key), and a
  // page id is read only when the page changes: per-key integer division and table reads made
  // this loop, not the bytes, the cost of a tile.
  const int c = threadIdx.x % S::kChunks, j0 = threadIdx.x / S::kChunks;
  const bool page_steps = a.page_size >= S::kKeysPerPass;
  auto load_tile = [&](int k0, int stage) {
    bf16* ks = tiles + stage * S::kStageElems + c * 8;  // [64 keys, kRowElems]
    bf16* vs = ks + kTcTileKeys * S::kRowElems;
    int key = k0 + j0;
    int page_idx = key / a.page_size, slot = key - page_idx * a.page_size;
    int64_t page = key < kend ? pages[page_idx] : 0;
#pragma unroll
    for (int j = j0; j < kTcTileKeys; j += S::kKeysPerPass, key += S::kKeysPerPass) {
      const bool valid = key < kend;
      ptx::cp_async_16(ks + j * S::kRowElems, kbase + page * a.s_kp + int64_t(slot) * a.s_ks, valid);
      ptx::cp_async_16(vs + j * S::kRowElems, vbase + page * a.s_vp + int64_t(slot) * a.s_vs, valid);
      if (page_steps) {
        slot += S::kKeysPerPass;
        if (slot >= a.page_size) {
          slot -= a.page_size;
          ++page_idx;
          if (key + S::kKeysPerPass < kend) page = pages[page_idx];
        }
      } else {
        page_idx = (key + S::kKeysPerPass) / a.page_size;
        slot = key + S::kKeysPerPass - page_idx * a.page_size;
        if (key + S::kKeysPerPass < kend) page = pages[page_idx];
      }
    }
    ptx::cp_async_commit();
  };
  const int ntiles = (kend - kbeg + kTcTileKeys - 1) / kTcTileKeys;
  load_tile(kbeg, 0);

  // Q as A fragments, [16 rows, D] row-major: a0 (r, c), a1 (r + 8, c), a2 (r, c + 8), a3 (r + 8, c + 8)
  // with r = lane / 4 and c = 16 kk + 2 (lane % 4); rows >= G are zero.
  const int r0 = lane / 4, cq = 2 * (lane % 4);
  const bf16* qbase = static_cast<const bf16*>(a.q) + int64_t(t) * a.s_qt + int64_t(g) * a.group * a.s_qh;
  auto q_pair = [&](int r, int d) -> uint32_t {
    return r < rows ? *reinterpret_cast<const uint32_t*>(qbase + int64_t(r) * a.s_qh + d) : 0u;
  };
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    qf[kk][0] = q_pair(r0, 16 * kk + cq);
    qf[kk][1] = q_pair(r0 + 8, 16 * kk + cq);
    qf[kk][2] = q_pair(r0, 16 * kk + cq + 8);
    qf[kk][3] = q_pair(r0 + 8, 16 * kk + cq + 8);
  }

  float m_run[2] = {-INFINITY, -INFINITY};  // rows r0 and r0 + 8
  float l_run[2] = {0.f, 0.f};              // this thread's share of the row sums
  float acc[D / 8][4];                       // [D / 8 n-tiles]: (r0, c), (r0, c + 1), (r0 + 8, c), (r0 + 8, c + 1)
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;

  // ldmatrix lane addresses within a warp's 16 keys: matrix mi = lane / 8, row lane % 8.
  const int mi = lane / 8, mrow = lane % 8;
  const int k_key = (mi / 2) * 8 + mrow, k_col = (mi % 2) * 8;  // K: (keys 0-7 | 8-15) x (d 0-7 | 8-15)
  const int v_key = (mi % 2) * 8 + mrow, v_col = (mi / 2) * 8;  // V (transposed): keys fastest

  for (int it = 0; it < ntiles; ++it) {
    if (it + 1 < ntiles) {
      load_tile(kbeg + (it + 1) * kTcTileKeys, (it + 1) % kTcStages);
      ptx::cp_async_wait<1>();
    } else {
      ptx::cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* ks = tiles + (it % kTcStages) * S::kStageElems + warp * 16 * S::kRowElems;
    const bf16* vs = ks + kTcTileKeys * S::kRowElems;
    const int kw = kbeg + it * kTcTileKeys + warp * 16;  // this warp's first key
    if (kw < kend) {  // warp-uniform
      float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t b[4];
        ptx::ldmatrix_x4(b, ks + k_key * S::kRowElems + 16 * kk + k_col);
        ptx::mma_bf16_16816(s[0], qf[kk], b[0], b[1]);
        ptx::mma_bf16_16816(s[1], qf[kk], b[2], b[3]);
      }
      // s[j][e]: row r0 + 8 (e / 2), key kw + 8 j + cq + (e % 2).
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = kw + 8 * j + cq + (e % 2) < kend ? s[j][e] * a.scale : -INFINITY;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = fmaxf(fmaxf(s[0][2 * h], s[0][2 * h + 1]), fmaxf(s[1][2 * h], s[1][2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m_run[h], mx);
        const float alpha = m_new == -INFINITY ? 1.f : expf(m_run[h] - m_new);
        m_run[h] = m_new;
        float psum = 0.f;
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
          for (int e = 2 * h; e < 2 * h + 2; ++e) {
            s[j][e] = m_new == -INFINITY ? 0.f : expf(s[j][e] - m_new);
            psum += s[j][e];
          }
        l_run[h] = l_run[h] * alpha + psum;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          acc[n][2 * h] *= alpha;
          acc[n][2 * h + 1] *= alpha;
        }
      }
      // P as the A fragment of P V: the S accumulator layout of two n8 tiles is the k16 A layout.
      const uint32_t pa[4] = {ptx::pack_bf16x2(s[0][0], s[0][1]), ptx::pack_bf16x2(s[0][2], s[0][3]), ptx::pack_bf16x2(s[1][0], s[1][1]),
                              ptx::pack_bf16x2(s[1][2], s[1][3])};
#pragma unroll
      for (int dd = 0; dd < D / 16; ++dd) {
        uint32_t b[4];
        ptx::ldmatrix_x4_trans(b, vs + v_key * S::kRowElems + 16 * dd + v_col);
        ptx::mma_bf16_16816(acc[2 * dd], pa, b[0], b[1]);
        ptx::mma_bf16_16816(acc[2 * dd + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's load
  }

  // Row sums over the quad, then the 4 warps merge in ascending order through smem.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 1);
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 2);
  }
  float* merge_acc = reinterpret_cast<float*>(smem_raw);  // [warps][16 rows][D]
  float* merge_ml = merge_acc + kTcWarps * 16 * D;        // [warps][16 rows][2]
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) merge_acc[(warp * 16 + r0 + 8 * (e / 2)) * D + 8 * n + cq + (e % 2)] = acc[n][e];
  if (lane % 4 == 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      merge_ml[(warp * 16 + r0 + 8 * h) * 2] = m_run[h];
      merge_ml[(warp * 16 + r0 + 8 * h) * 2 + 1] = l_run[h];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < rows * D; i += kTcThreads) {
    const int r = i / D, d = i % D;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kTcWarps; ++w)
      if (merge_ml[(w * 16 + r) * 2 + 1] > 0.f) m = fmaxf(m, merge_ml[(w * 16 + r) * 2]);
    float l = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < kTcWarps; ++w) {
      const float lw = merge_ml[(w * 16 + r) * 2 + 1];
      if (lw > 0.f) {
        const float f = expf(merge_ml[(w * 16 + r) * 2] - m);
        l += lw * f;
        o += merge_acc[(w * 16 + r) * D + d] * f;
      }
    }
    const int64_t pi = part_index(r);
    a.part_acc[pi * D + d] = o;
    if (d == 0) {
      a.part_ml[pi * 2] = m;
      a.part_ml[pi * 2 + 1] = l;
    }
  }
}

template <int D>
cudaError_t launch_tc(const AttnArgs& a, cudaStream_t stream) {
  constexpr size_t smem = TcShape<D>::kSmemBytes;
  const cudaError_t err = cudaFuncSetAttribute(gqa_split_tc_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned(a.tokens * a.kv_heads), unsigned(a.num_splits));
  gqa_split_tc_kernel<D><<<grid, kTcThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

SplitLauncher gqa_split_tc_launcher(const ops::GqaAttentionParams& p) {
  if (!gqa_split_tc_supported(p)) return nullptr;
  return p.q.shape[2] == 64 ? &launch_tc<64> : &launch_tc<128>;
}

}  // namespace attention

bool gqa_split_tc_supported(const ops::GqaAttentionParams& p) {
  const DType bf = DType::kBF16;
  if (p.q.dtype != bf || p.k_cache.dtype != bf || p.v_cache.dtype != bf) return false;
  const int64_t dk = p.q.shape[2], dv = p.v_cache.shape[3], heads = p.q.shape[1], kvh = p.k_cache.shape[2];
  if (dk != dv || (dk != 64 && dk != 128) || kvh < 1 || heads / kvh > 16) return false;
  // 16-byte copies of K / V rows, 4-byte loads of q pairs.
  for (const Tensor* c : {&p.k_cache, &p.v_cache}) {
    if (!attention::aligned16(c->data) || c->stride[3] != 1) return false;
    for (int i = 0; i < 3; ++i)
      if (c->stride[i] % 8 != 0) return false;
  }
  return reinterpret_cast<uintptr_t>(p.q.data) % 4 == 0 && p.q.stride[2] == 1 && p.q.stride[0] % 2 == 0 &&
         p.q.stride[1] % 2 == 0;
}

}  // namespace moex::kernels
