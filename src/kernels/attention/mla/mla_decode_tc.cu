// Tensor-core MLA decode: one CTA per (token group, split of split_keys keys, tile of 16 *
// kRG query rows). A token group is the 1-2 query tokens of one sequence (q_len <= max_group)
// or a single token (longer q_len), its rows are (token, head) pairs. The CTA streams 32-key
// tiles of the latent cache (32 x 576 bf16) through shared memory with cp.async double
// buffering; S = Q K^T and O += P V run on mma.sync m16n8k16 (bf16 in, fp32 accumulate), with
// V = K[:, :512] read from the same smem tile. Partials (m, l, O) per split are merged by a
// combine kernel in ascending split order, so a row's bits depend only on its own keys.
//
// Keys past kend are zero-filled in smem (never loaded) and every key past a row's position
// gets score -inf before the softmax: NaN pages are never read, garbage is never multiplied.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/attention/mla/mla_decode_tc.h"
#include "kernels/common/dtype.cuh"

namespace moex::kernels {
namespace mla_tc {

constexpr int kD = 576;          // latent + rope features
constexpr int kDV = 512;         // value features
constexpr int kLd = kD + 8;      // smem row stride (bf16): 1168 B, conflict-free ldmatrix
constexpr int kTile = 32;        // keys per smem tile
constexpr int kThreads = 256;    // 8 warps
constexpr int kDimSplits = 4;    // S is summed from 4 partial chains of 144 dims, in fixed order
constexpr int kKStepsPerSplit = kD / 16 / kDimSplits;  // 9
constexpr int kPLd = kTile + 8;  // P smem row stride (bf16): 80 B, conflict-free ldmatrix

struct Args {
  const __nv_bfloat16* q; int64_t s_qt, s_qh;      // q [n, heads, 576]
  const __nv_bfloat16* cache; int64_t s_cp, s_cs;  // cache [pages, page_size, 576]
  const int32_t* block_table; int64_t s_bt;        // [num_seqs, max_pages]
  const int32_t* seq_lens;                         // [num_seqs]
  const int32_t* query_start;                      // [num_seqs + 1]
  int num_seqs, page_size, heads;
  int token0, tokens;                              // rows [token0, token0 + tokens) of this launch
  int split_keys, num_splits, max_group;
  float scale;
  float* part_acc;                                 // [tokens, heads, num_splits, 512]
  float* part_ml;                                  // [tokens, heads, num_splits, 2]
  void* out; int64_t s_ot, s_oh;                   // out [n, heads, 512]
  float* lse; int64_t s_lse;                       // lse [n, heads] or nullptr
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  // src-size 0 zero-fills the 16 bytes without reading src.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
// c[16x8] += a[16x16] * b[16x8], bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ float warp_max_f(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum_f(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int kRG>
constexpr size_t smem_bytes() {
  return sizeof(__nv_bfloat16) * (size_t(16 * kRG) * kLd + 2 * size_t(kTile) * kLd + size_t(16 * kRG) * kPLd) +
         sizeof(float) * (size_t(kDimSplits) * 16 * kRG * kTile + 3 * 16 * kRG) + sizeof(int) * 16 * kRG;
}

// The token group a CTA serves: tokens [g0, g1) of sequence seq, or nothing (g0 == g1).
struct Group {
  int seq, g0, g1;
};
__device__ inline Group group_of(const Args& a, int t) {
  int lo = 0, hi = a.num_seqs - 1;  // last i with query_start[i] <= t
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (a.query_start[mid] <= t) lo = mid; else hi = mid - 1;
  }
  Group g{lo, t, t + 1};
  const int q0 = a.query_start[lo], q1 = a.query_start[lo + 1];
  if (q1 - q0 <= a.max_group) {
    const int lead = max(q0, a.token0);  // the chunk may cut a group: each side serves its part
    if (t != lead) { g.g1 = t; return g; }
    g.g1 = min(q1, a.token0 + a.tokens);
  }
  return g;
}

template <int kRG>
__global__ void __launch_bounds__(kThreads) mla_decode_tc_kernel(Args a) {
  constexpr int kM = 16 * kRG;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [kM][kLd]
  __nv_bfloat16* ks = qs + kM * kLd;                                // [2][kTile][kLd]
  __nv_bfloat16* ps = ks + 2 * kTile * kLd;                         // [kM][kPLd]
  float* sp = reinterpret_cast<float*>(ps + kM * kPLd);             // [kDimSplits][kM][kTile]
  float* row_alpha = sp + kDimSplits * kM * kTile;                  // [kM]
  float* row_m = row_alpha + kM;                                    // [kM]
  float* row_l = row_m + kM;                                        // [kM]
  int* row_pos = reinterpret_cast<int*>(row_l + kM);                // [kM], -1: padding row

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int t = a.token0 + blockIdx.x;
  const Group grp = group_of(a, t);
  const int rows_total = (grp.g1 - grp.g0) * a.heads;
  const int r0 = blockIdx.z * kM;
  if (r0 >= rows_total) return;
  const int rows = min(kM, rows_total - r0);
  const int split = blockIdx.y;
  const int len = a.seq_lens[grp.seq];
  const int q_end = a.query_start[grp.seq + 1];
  // Row r of the tile: token grp.g0 + (r0 + r) / heads, head (r0 + r) % heads.
  const int last_tok = grp.g0 + (r0 + rows - 1) / a.heads;
  const int max_pos = len - (q_end - last_tok);
  const int kbeg = split * a.split_keys;
  const int kend = min(max_pos + 1, kbeg + a.split_keys);

  auto part_index = [&](int r) {
    const int rr = r0 + r;
    return (int64_t(grp.g0 + rr / a.heads - a.token0) * a.heads + rr % a.heads) * a.num_splits + split;
  };
  if (kbeg >= kend) {
    for (int r = tid; r < rows; r += kThreads) {
      a.part_ml[part_index(r) * 2] = -INFINITY;
      a.part_ml[part_index(r) * 2 + 1] = 0.f;
    }
    return;
  }

  if (tid < kM) {
    const int rr = r0 + tid;
    row_pos[tid] = tid < rows ? len - (q_end - (grp.g0 + rr / a.heads)) : -1;
  }
  // Q tile: 72 16-byte chunks per row; padding rows are zero.
  for (int i = tid; i < kM * (kD / 8); i += kThreads) {
    const int r = i / (kD / 8), c = i % (kD / 8);
    const int rr = r0 + r;
    const bool valid = r < rows;
    const __nv_bfloat16* src =
        valid ? a.q + int64_t(grp.g0 + rr / a.heads) * a.s_qt + int64_t(rr % a.heads) * a.s_qh + c * 8 : a.q;
    cp_async16(qs + r * kLd + c * 8, src, valid);
  }
  const int32_t* pages = a.block_table + int64_t(grp.seq) * a.s_bt;
  auto load_tile = [&](int it, int buf) {
    const int k0 = kbeg + it * kTile;
    __nv_bfloat16* dst = ks + buf * kTile * kLd;
    for (int i = tid; i < kTile * (kD / 8); i += kThreads) {
      const int j = i / (kD / 8), c = i % (kD / 8);
      const int key = k0 + j;
      const bool valid = key < kend;
      const __nv_bfloat16* src = a.cache;
      if (valid) src = a.cache + int64_t(pages[key / a.page_size]) * a.s_cp + int64_t(key % a.page_size) * a.s_cs + c * 8;
      cp_async16(dst + j * kLd + c * 8, src, valid);
    }
  };
  const int ntiles = (kend - kbeg + kTile - 1) / kTile;
  load_tile(0, 0);
  cp_async_commit();

  // Softmax state: warp w owns rows w + 8 i; every lane holds the same m, l.
  constexpr int kRowsPerWarp = kM / 8;
  float m_run[kRowsPerWarp], l_run[kRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) { m_run[i] = -INFINITY; l_run[i] = 0.f; }
  // O: warp w owns value columns [64 w, 64 w + 64) of every row: [kRG][8 n-tiles][4].
  float acc[kRG][8][4];
#pragma unroll
  for (int g = 0; g < kRG; ++g)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[g][j][e] = 0.f;

  const int gr = lane / 4, gc = lane % 4;  // mma fragment row / column-pair of this lane
  for (int it = 0; it < ntiles; ++it) {
    if (it + 1 < ntiles) {
      load_tile(it + 1, (it + 1) & 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const __nv_bfloat16* kt = ks + (it & 1) * kTile * kLd;  // [kTile][kLd]

    // S partials: item = (row group, 16-key half, dim quarter); each warp takes kRG items.
#pragma unroll
    for (int j = 0; j < kRG; ++j) {
      const int item = warp + 8 * j;
      const int dq = item % kDimSplits, kh = (item / kDimSplits) % 2, rg = item / (2 * kDimSplits);
      float c[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
      const __nv_bfloat16* qa = qs + (rg * 16 + lane % 16) * kLd + (lane / 16) * 8;
      const int mi = lane / 8;
      const __nv_bfloat16* kb = kt + (kh * 16 + (mi >> 1) * 8 + lane % 8) * kLd + (mi & 1) * 8;
#pragma unroll
      for (int s = 0; s < kKStepsPerSplit; ++s) {
        const int d0 = (dq * kKStepsPerSplit + s) * 16;
        uint32_t af[4], bf[4];
        ldsm_x4(af, qa + d0);
        ldsm_x4(bf, kb + d0);
        mma_bf16(c[0], af, bf[0], bf[1]);
        mma_bf16(c[1], af, bf[2], bf[3]);
      }
      float* out = sp + (dq * kM + rg * 16) * kTile + kh * 16;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        *reinterpret_cast<float2*>(out + gr * kTile + nt * 8 + 2 * gc) = make_float2(c[nt][0], c[nt][1]);
        *reinterpret_cast<float2*>(out + (gr + 8) * kTile + nt * 8 + 2 * gc) = make_float2(c[nt][2], c[nt][3]);
      }
    }
    __syncthreads();

    // Online softmax: lane = key of the tile.
    const int key = kbeg + it * kTile + lane;
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int r = warp + 8 * i;
      float s = sp[(0 * kM + r) * kTile + lane] + sp[(1 * kM + r) * kTile + lane];
      s += sp[(2 * kM + r) * kTile + lane];
      s += sp[(3 * kM + r) * kTile + lane];
      s = (key < kend && key <= row_pos[r]) ? s * a.scale : -INFINITY;
      const float m_new = fmaxf(m_run[i], warp_max_f(s));
      const float pf = m_new == -INFINITY ? 0.f : expf(s - m_new);
      const float alpha = m_new == -INFINITY ? 1.f : expf(m_run[i] - m_new);
      const __nv_bfloat16 pb = __float2bfloat16_rn(pf);  // PV runs on bf16 P; l and lse stay fp32
      l_run[i] = l_run[i] * alpha + warp_sum_f(pf);
      m_run[i] = m_new;
      ps[r * kPLd + lane] = pb;
      if (lane == 0) row_alpha[r] = alpha;
    }
    __syncthreads();

    // O = O * alpha + P V over this warp's 64 value columns.
#pragma unroll
    for (int g = 0; g < kRG; ++g) {
      const float a0 = row_alpha[g * 16 + gr], a1 = row_alpha[g * 16 + gr + 8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        acc[g][j][0] *= a0; acc[g][j][1] *= a0;
        acc[g][j][2] *= a1; acc[g][j][3] *= a1;
      }
#pragma unroll
      for (int kk = 0; kk < kTile; kk += 16) {
        uint32_t af[4];
        ldsm_x4(af, ps + (g * 16 + lane % 16) * kPLd + kk + (lane / 16) * 8);
        const int mi = lane / 8;
        const __nv_bfloat16* vb = kt + (kk + (mi & 1) * 8 + lane % 8) * kLd + warp * 64 + (mi >> 1) * 8;
#pragma unroll
        for (int jp = 0; jp < 4; ++jp) {
          uint32_t bf[4];
          ldsm_x4_t(bf, vb + jp * 16);
          mma_bf16(acc[g][2 * jp], af, bf[0], bf[1]);
          mma_bf16(acc[g][2 * jp + 1], af, bf[2], bf[3]);
        }
      }
    }
    __syncthreads();  // the next iteration refills this K buffer and P
  }

  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) { row_m[warp + 8 * i] = m_run[i]; row_l[warp + 8 * i] = l_run[i]; }
  }
  __syncthreads();
#pragma unroll
  for (int g = 0; g < kRG; ++g) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = g * 16 + gr + 8 * h;
      if (r >= rows) continue;
      float* dst = a.part_acc + part_index(r) * kDV + warp * 64 + 2 * gc;
#pragma unroll
      for (int j = 0; j < 8; ++j) *reinterpret_cast<float2*>(dst + j * 8) = make_float2(acc[g][j][2 * h], acc[g][j][2 * h + 1]);
    }
  }
  for (int r = tid; r < rows; r += kThreads) {
    a.part_ml[part_index(r) * 2] = row_m[r];
    a.part_ml[part_index(r) * 2 + 1] = row_l[r];
  }
}

// One block of 128 threads per (token, head): merge the splits in ascending order.
template <class TO>
__global__ void __launch_bounds__(128) mla_combine_kernel(Args a) {
  const int tok_local = blockIdx.x / a.heads, h = blockIdx.x % a.heads;
  const int64_t base = (int64_t(tok_local) * a.heads + h) * a.num_splits;
  float m = -INFINITY;
  for (int s = 0; s < a.num_splits; ++s)
    if (a.part_ml[(base + s) * 2 + 1] > 0.f) m = fmaxf(m, a.part_ml[(base + s) * 2]);
  float l = 0.f;
  float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
  const int d = threadIdx.x * 4;
  for (int s = 0; s < a.num_splits; ++s) {
    const float ls = a.part_ml[(base + s) * 2 + 1];
    if (!(ls > 0.f)) continue;
    const float w = expf(a.part_ml[(base + s) * 2] - m);
    l += ls * w;
    const float4 v = *reinterpret_cast<const float4*>(a.part_acc + (base + s) * kDV + d);
    o.x += v.x * w; o.y += v.y * w; o.z += v.z * w; o.w += v.w * w;
  }
  const int t = a.token0 + tok_local;
  TO* out = static_cast<TO*>(a.out) + int64_t(t) * a.s_ot + int64_t(h) * a.s_oh + d;
  const float inv = l > 0.f ? 1.f / l : 0.f;
  out[0] = from_f32<TO>(o.x * inv); out[1] = from_f32<TO>(o.y * inv);
  out[2] = from_f32<TO>(o.z * inv); out[3] = from_f32<TO>(o.w * inv);
  if (a.lse && threadIdx.x == 0) a.lse[int64_t(t) * a.s_lse + h] = l > 0.f ? m + logf(l) : -INFINITY;
}

template <int kRG, class TO>
cudaError_t run(Args a, const MlaDecodePlan& plan, int n, Scratch& scratch, cudaStream_t stream) {
  constexpr size_t kMaxScratch = size_t(256) << 20;
  const size_t per_token = size_t(a.heads) * a.num_splits * (kDV + 2) * sizeof(float);
  const int chunk = int(per_token * n <= kMaxScratch ? n : std::max<size_t>(1, kMaxScratch / per_token));
  using C = ScratchCarver;
  const size_t rows = size_t(chunk) * a.heads * a.num_splits;
  C carver{static_cast<char*>(scratch.get(C::bytes_for<float>(rows * kDV) + C::bytes_for<float>(rows * 2)))};
  if (carver.base == nullptr) return cudaErrorMemoryAllocation;
  a.part_acc = carver.carve<float>(rows * kDV);
  a.part_ml = carver.carve<float>(rows * 2);
  constexpr size_t smem = smem_bytes<kRG>();
  cudaError_t err = cudaFuncSetAttribute(mla_decode_tc_kernel<kRG>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  for (int t0 = 0; t0 < n; t0 += chunk) {
    a.token0 = t0;
    a.tokens = std::min(chunk, n - t0);
    const dim3 grid(unsigned(a.tokens), unsigned(a.num_splits), unsigned(plan.row_tiles));
    mla_decode_tc_kernel<kRG><<<grid, kThreads, smem, stream>>>(a);
    mla_combine_kernel<TO><<<unsigned(a.tokens * a.heads), 128, 0, stream>>>(a);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace mla_tc

MlaDecodePlan plan_mla_decode(int64_t n, int64_t num_seqs, int heads, int64_t max_keys) {
  MlaDecodePlan p;
  // ~64 splits over the widest sequence the table can hold, 512..8192 keys each (a power of 2).
  int64_t split = 512;
  while (split < 8192 && split * 64 < max_keys) split *= 2;
  p.split_keys = int(split);
  p.num_splits = int(std::max<int64_t>(1, (max_keys + split - 1) / split));
  // Pack 2 query tokens of a sequence (MTP / speculative decode) when some sequence may have 2.
  p.max_group = n > num_seqs ? 2 : 1;
  const int64_t rows = int64_t(heads) * p.max_group;
  p.row_groups = rows <= 16 ? 1 : rows <= 32 ? 2 : 4;
  p.row_tiles = int((rows + 16 * p.row_groups - 1) / (16 * p.row_groups));
  return p;
}

bool mla_decode_tc_supported(const ops::MlaAttentionParams& p) {
  using mla_tc::kD;
  using mla_tc::kDV;
  auto aligned = [](const Tensor& t) { return (reinterpret_cast<uintptr_t>(t.data) % 16) == 0; };
  if (p.q.dtype != DType::kBF16 || p.cache.dtype != DType::kBF16) return false;
  if (p.out.dtype != DType::kBF16 && p.out.dtype != DType::kF32) return false;
  if (p.q.shape[2] != kD || p.kv_lora_rank != kDV) return false;
  if (p.q.stride[2] != 1 || p.q.stride[1] % 8 != 0 || p.q.stride[0] % 8 != 0 || !aligned(p.q)) return false;
  if (p.cache.stride[2] != 1 || p.cache.stride[1] % 8 != 0 || p.cache.stride[0] % 8 != 0 || !aligned(p.cache)) return false;
  if (p.out.stride[2] != 1) return false;
  if (!p.lse.empty() && p.lse.stride[1] != 1) return false;
  return p.seqs.page_size > 0;
}

cudaError_t launch_mla_decode_tc(const ops::MlaAttentionParams& p, Scratch& scratch, cudaStream_t stream) {
  const int n = int(p.q.shape[0]);
  if (n == 0) return cudaSuccess;
  mla_tc::Args a{};
  a.q = p.q.ptr<__nv_bfloat16>(); a.s_qt = p.q.stride[0]; a.s_qh = p.q.stride[1];
  a.cache = p.cache.ptr<__nv_bfloat16>(); a.s_cp = p.cache.stride[0]; a.s_cs = p.cache.stride[1];
  a.block_table = p.seqs.block_table.ptr<int32_t>(); a.s_bt = p.seqs.block_table.stride[0];
  a.seq_lens = p.seqs.seq_lens.ptr<int32_t>();
  a.query_start = p.seqs.query_start.ptr<int32_t>();
  a.num_seqs = int(p.seqs.seq_lens.shape[0]);
  a.page_size = p.seqs.page_size;
  a.heads = int(p.q.shape[1]);
  const int64_t max_keys = p.seqs.block_table.shape[1] * int64_t(p.seqs.page_size);
  const MlaDecodePlan plan = plan_mla_decode(n, a.num_seqs, a.heads, max_keys);
  a.split_keys = plan.split_keys; a.num_splits = plan.num_splits; a.max_group = plan.max_group;
  a.scale = p.scale;
  a.out = p.out.data; a.s_ot = p.out.stride[0]; a.s_oh = p.out.stride[1];
  a.lse = p.lse.empty() ? nullptr : p.lse.ptr<float>();
  a.s_lse = p.lse.empty() ? 0 : p.lse.stride[0];
  cudaError_t err = cudaErrorInvalidValue;
  dispatch_act(p.out.dtype, [&](auto to) {
    using TO = decltype(to);
    switch (plan.row_groups) {
      case 1: err = mla_tc::run<1, TO>(a, plan, n, scratch, stream); break;
      case 2: err = mla_tc::run<2, TO>(a, plan, n, scratch, stream); break;
      default: err = mla_tc::run<4, TO>(a, plan, n, scratch, stream); break;
    }
  });
  return err;
}

}  // namespace moex::kernels
