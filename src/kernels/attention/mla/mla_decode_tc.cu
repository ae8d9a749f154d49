// Tensor-core MLA decode: one CTA per (token group, split of split_keys keys, tile of 16 *
// kRG query rows). A token group is the 1-2 query tokens of one sequence (q_len <= max_group)
// or a single token (longer q_len), its rows are (token, head) pairs. The CTA streams 32-key
// tiles of the latent cache (32 x 576 bf16) through shared memory in a cp.async ring of
// kStages tiles; S = Q K^T and O += P V run on mma.sync m16n8k16 (bf16 in, fp32 accumulate), with
// V = K[:, :512] read from the same smem tile. Partials (m, l, O) per split are merged by a
// combine kernel in ascending split order, so a row's bits depend only on its own keys.
//
// Keys past kend are zero-filled in smem (never loaded) and every key past a row's position
// gets score -inf before the softmax: NaN pages are never read, garbage is never multiplied.
//
// FP8 latent cache (kMode 1 and 2, docs/kernels/mla.md "FP8 (e4m3) latent cache"): e4m3
// [pages, page_size, 576] plus one f32 scale per token. 32-key e4m3 tiles (18 KB) stream by
// cp.async into two staging buffers, with the tile's 32 scales and the page ids of the tile two
// ahead (no cp.async waits on a block-table load); each tile is widened in smem, exactly (e4m3
// is a subset of bf16 and of f16), and the same mma code runs. The token scale sc is applied in
// fp32: score = scale * sc * dot(q, e4m3).
//  - kMode 1 (default): widened to bf16 by bit operations; P = bf16(p * sc).
//  - kMode 2 (MOEX_MLA_FP8_WIDEN=f16): widened to f16 by the hardware e4m3x2 -> f16x2 convert,
//    mma in f16: q rows are stored as f16 * 2^-e (e >= 0 per row, so |q| < 2^15 fits), and
//    P = f16(p * sc / c) with c the largest scale of the tile (P <= 1); O is kept divided by the
//    current tile's c and rescaled with alpha when c changes.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "kernels/attention/mla/mla_combine.cuh"
#include "kernels/attention/mla/mla_decode_tc.h"
#include "kernels/attention/mla/mla_decode_wg.h"
#include "kernels/common/dtype.cuh"
#include "kernels/common/search.cuh"
#include "kernels/gemm/ptx.cuh"
#include "kernels/common/device_info.h"

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
constexpr int kSLd = kTile + 8;  // S partial row stride (f32): 160 B, conflict-free float2 stores
constexpr int kChunks = kTile * (kD / 8) / kThreads;  // 16-byte bf16 chunks per thread per tile: 9
static_assert(kChunks * kThreads == kTile * (kD / 8), "a bf16 tile must split evenly over the threads");
constexpr int kChunks8 = (kTile * (kD / 16) + kThreads - 1) / kThreads;  // e4m3 chunks per thread: 5 (4.5)

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
  const uint8_t* cache8;                           // kF8: e4m3 cache [pages, page_size, 576] (s_cp, s_cs)
  const float* cache_scale; int64_t s_sp, s_ss;    // kF8: [pages, page_size] f32, or nullptr (scale 1)
  int page_shift;                                  // log2(page_size) when a power of two, else -1
  // bf16 cache, page_size a power-of-two multiple of kTile and page_size * s_cs < 2^31: every
  // 32-key tile lies in one page (tiles start at multiples of 32) and offsets inside a page fit
  // in 32 bits, so a tile is one page id plus fixed per-thread offsets.
  bool one_page;
};

// PTX wrappers shared with the GEMMs (gemm/ptx.cuh).
using gemm::ptx::cp_async_16;
using gemm::ptx::cp_async_commit;
using gemm::ptx::cp_async_wait;
using gemm::ptx::ldmatrix_x4;
using gemm::ptx::cp_async_4;
using gemm::ptx::ldmatrix_x4_trans;
using gemm::ptx::mma_bf16_16816;
using gemm::ptx::mma_f16_16816;
using gemm::ptx::smem_addr;

// Four e4m3 (bytes b0..b3 of x, b0 first) to four bf16 (lo = {b0, b1}, hi = {b2, b3}), exact.
// Sign to bit 15 and the 7 exponent+mantissa bits to bits 4..10 give the bf16 of value * 2^-120
// (e4m3 subnormals become bf16 subnormals, same ratio); one bf16x2 multiply by 2^120 restores
// the value exactly (bf16 mul keeps subnormal inputs). The NaN byte 0x7f reads as 480.
__device__ __forceinline__ void e4m3x4_to_bf16(uint32_t x, uint32_t& lo, uint32_t& hi) {
  const uint32_t a = __byte_perm(x, 0u, 0x1404);  // [b1 0 b0 0]
  const uint32_t b = __byte_perm(x, 0u, 0x3424);  // [b3 0 b2 0]
  uint32_t ra = (a & 0x80008000u) | ((a >> 4) & 0x07f007f0u);
  uint32_t rb = (b & 0x80008000u) | ((b >> 4) & 0x07f007f0u);
  const __nv_bfloat162 k2p120 = __halves2bfloat162(__ushort_as_bfloat16(0x7b80), __ushort_as_bfloat16(0x7b80));
  const __nv_bfloat162 va = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&ra), k2p120);
  const __nv_bfloat162 vb = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&rb), k2p120);
  lo = *reinterpret_cast<const uint32_t*>(&va);
  hi = *reinterpret_cast<const uint32_t*>(&vb);
}

// e4m3 pairs (bytes b0..b3 of x) to f16 (lo = {b0, b1}, hi = {b2, b3}), exact.
__device__ __forceinline__ void e4m3x4_to_f16(uint32_t x, uint32_t& lo, uint32_t& hi) {
  const __half2_raw a = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(x & 0xffffu), __NV_E4M3);
  const __half2_raw b = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(x >> 16), __NV_E4M3);
  lo = uint32_t(a.x) | (uint32_t(a.y) << 16);
  hi = uint32_t(b.x) | (uint32_t(b.y) << 16);
}

// kMode 2: f16 values of 8 bf16 q (a uint4) times 2^-e (inv = 2^-e).
__device__ __forceinline__ uint4 bf16x8_to_f16x8(uint4 v, float inv) {
  uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
    const __half2 h = __floats2half2_rn(f.x * inv, f.y * inv);
    w[i] = *reinterpret_cast<const uint32_t*>(&h);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Q tile, K tiles (a ring of kStages for bf16, one for fp8: widened in place each tile),
// P, S partials, row state; fp8 adds staging [2][kTile][kD] bytes, scales [2][kTile], page ids
// [4][kTile], per-row q scales [kM] and amax bits [kM]. Every piece is a multiple of 16 bytes,
// so the staging is aligned. (f16 and bf16 tiles have the same size.)
template <int kRG, int kMode, int kStages>
constexpr size_t smem_bytes() {
  constexpr bool kF8 = kMode != 0;
  constexpr size_t kKBufs = kF8 ? 1 : kStages;
  return sizeof(__nv_bfloat16) * (size_t(16 * kRG) * kLd + kKBufs * size_t(kTile) * kLd + size_t(16 * kRG) * kPLd) +
         sizeof(float) * (size_t(kDimSplits) * 16 * kRG * kSLd + 3 * 16 * kRG) + sizeof(int) * 16 * kRG +
         (kF8 ? 2 * size_t(kTile) * kD + sizeof(float) * 2 * kTile + sizeof(int) * 4 * kTile + 8 * 16 * kRG : 0);
}

// The token group a CTA serves: tokens [g0, g1) of sequence seq, or nothing (g0 == g1).
struct Group {
  int seq, g0, g1;
};
__device__ inline Group group_of(const Args& a, int t) {
  const int lo = upper_index(a.query_start, a.num_seqs, t);
  Group g{lo, t, t + 1};
  const int q0 = a.query_start[lo], q1 = a.query_start[lo + 1];
  if (q1 - q0 <= a.max_group) {
    const int lead = max(q0, a.token0);  // the chunk may cut a group: each side serves its part
    if (t != lead) { g.g1 = t; return g; }
    g.g1 = min(q1, a.token0 + a.tokens);
  }
  return g;
}

// kStages: bf16 K tiles in the cp.async ring (kStages - 1 in flight while one is computed).
template <int kRG, int kMode, int kStages>
__global__ void __launch_bounds__(kThreads) mla_decode_tc_kernel(Args a) {
  constexpr bool kF8 = kMode != 0, kH = kMode == 2;
  constexpr int kM = 16 * kRG;
  constexpr int kKBufs = kF8 ? 1 : kStages;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [kM][kLd]
  __nv_bfloat16* ks = qs + kM * kLd;                                // [kKBufs][kTile][kLd]
  __nv_bfloat16* ps = ks + kKBufs * kTile * kLd;                    // [kM][kPLd]
  float* sp = reinterpret_cast<float*>(ps + kM * kPLd);             // [kDimSplits][kM][kSLd]
  float* row_alpha = sp + kDimSplits * kM * kSLd;                  // [kM]
  float* row_m = row_alpha + kM;                                    // [kM]
  float* row_l = row_m + kM;                                        // [kM]
  int* row_pos = reinterpret_cast<int*>(row_l + kM);                // [kM], -1: padding row
  uint8_t* stage = reinterpret_cast<uint8_t*>(row_pos + kM);        // kF8: [2][kTile][kD] e4m3
  float* key_scale = reinterpret_cast<float*>(stage + 2 * kTile * kD);  // kF8: [2][kTile]
  int* page_id = reinterpret_cast<int*>(key_scale + 2 * kTile);     // kF8: [4][kTile] page of each key
  float* row_qscale = reinterpret_cast<float*>(page_id + 4 * kTile);  // kMode 2: [kM] 2^e of each q row
  int* row_amax = reinterpret_cast<int*>(row_qscale + kM);          // kMode 2: [kM] bits of max |q|

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
  if constexpr (kH) {
    // f16 q: row amax first (positive floats order like their bits), then q * 2^-e as f16 with
    // the smallest e >= 0 that keeps |q| * 2^-e < 2^15.
    if (tid < kM) row_amax[tid] = 0;
    __syncthreads();
    auto q_chunk = [&](int r, int c) {
      const int rr = r0 + r;
      return *reinterpret_cast<const uint4*>(a.q + int64_t(grp.g0 + rr / a.heads) * a.s_qt + int64_t(rr % a.heads) * a.s_qh + c * 8);
    };
    for (int i = tid; i < rows * (kD / 8); i += kThreads) {
      const uint4 v = q_chunk(i / (kD / 8), i % (kD / 8));
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
      float m = 0.f;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[e]));
        m = fmaxf(m, fmaxf(fabsf(f.x), fabsf(f.y)));
      }
      atomicMax(row_amax + i / (kD / 8), __float_as_int(m));
    }
    __syncthreads();
    if (tid < kM) {
      const int biased = (row_amax[tid] >> 23) & 0xff;
      row_qscale[tid] = __int_as_float((127 + max(0, biased - 127 - 14)) << 23);
    }
    __syncthreads();
    for (int i = tid; i < kM * (kD / 8); i += kThreads) {
      const int r = i / (kD / 8), c = i % (kD / 8);
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (r < rows) v = bf16x8_to_f16x8(q_chunk(r, c), 1.f / row_qscale[r]);  // exact: a power of two
      *reinterpret_cast<uint4*>(qs + r * kLd + c * 8) = v;
    }
  }
  for (int i = tid; i < (kH ? 0 : kM * (kD / 8)); i += kThreads) {
    const int r = i / (kD / 8), c = i % (kD / 8);
    const int rr = r0 + r;
    const bool valid = r < rows;
    const __nv_bfloat16* src =
        valid ? a.q + int64_t(grp.g0 + rr / a.heads) * a.s_qt + int64_t(rr % a.heads) * a.s_qh + c * 8 : a.q;
    cp_async_16(qs + r * kLd + c * 8, src, valid);
  }
  const int32_t* pages = a.block_table + int64_t(grp.seq) * a.s_bt;
  // Issue one bf16 tile: each thread's 9 chunks are compile-time unrolled so that their
  // addresses (and, for other page sizes, their 9 block-table reads) are independent and issue
  // back to back; a rolled loop with one block-table read per chunk serialized 9 load
  // latencies per tile. With one page per tile, pg is the tile's page id, read one tile ahead.
  auto load_tile = [&](int it, int buf, int pg) {
    const int k0 = kbeg + it * kTile;
    __nv_bfloat16* dst = ks + buf * kTile * kLd;  // [kTile][kLd]
    if (a.one_page) {
      const __nv_bfloat16* base = a.cache + int64_t(pg) * a.s_cp + int64_t(k0 & (a.page_size - 1)) * a.s_cs;
      const int s_cs = int(a.s_cs);
#pragma unroll
      for (int m = 0; m < kChunks; ++m) {
        const int i = tid + m * kThreads, j = i / (kD / 8), c = i % (kD / 8);
        const bool valid = k0 + j < kend;
        cp_async_16(dst + j * kLd + c * 8, valid ? base + (j * s_cs + c * 8) : a.cache, valid);
      }
    } else {
      int pid[kChunks];
#pragma unroll
      for (int m = 0; m < kChunks; ++m) {
        const int key = k0 + (tid + m * kThreads) / (kD / 8);
        pid[m] = key < kend ? pages[a.page_shift >= 0 ? key >> a.page_shift : key / a.page_size] : 0;
      }
#pragma unroll
      for (int m = 0; m < kChunks; ++m) {
        const int i = tid + m * kThreads, j = i / (kD / 8), c = i % (kD / 8);
        const int key = k0 + j;
        const bool valid = key < kend;
        const int slot = a.page_shift >= 0 ? key & (a.page_size - 1) : key % a.page_size;
        const __nv_bfloat16* src = valid ? a.cache + int64_t(pid[m]) * a.s_cp + int64_t(slot) * a.s_cs + c * 8 : a.cache;
        cp_async_16(dst + j * kLd + c * 8, src, valid);
      }
    }
  };
  // One page per tile: the page id of tile t (0 past the end, not read).
  auto tile_page = [&](int t) {
    const int k0 = kbeg + t * kTile;
    return a.one_page && k0 < kend ? pages[k0 >> a.page_shift] : 0;
  };
  // kF8: tile t's bytes go to stage[t & 1] and its scales to key_scale[t & 1]; the same cp.async
  // group brings the page ids of tile t + 2 into page_id[(t + 2) & 3], so issuing a tile never
  // waits on the block table. Four id buffers: the one refilled was last read two tiles ago.
  auto load_tile_f8 = [&](int t) {
    const int k0 = kbeg + t * kTile;
    const int* tp = page_id + (t & 3) * kTile;  // [kTile]
    uint8_t* dst = stage + (t & 1) * kTile * kD;
#pragma unroll
    for (int m = 0; m < kChunks8; ++m) {
      const int i = tid + m * kThreads;
      if (kChunks8 * kThreads != kTile * (kD / 16) && i >= kTile * (kD / 16)) break;
      const int j = i / (kD / 16), c = i % (kD / 16);
      const int key = k0 + j;
      const bool valid = key < kend;
      const int slot = a.page_shift >= 0 ? key & (a.page_size - 1) : key % a.page_size;
      const uint8_t* src = valid ? a.cache8 + int64_t(tp[j]) * a.s_cp + int64_t(slot) * a.s_cs + c * 16 : a.cache8;
      cp_async_16(dst + j * kD + c * 16, src, valid);
    }
    if (tid < kTile) {
      const int key = k0 + tid;
      float* sd = key_scale + (t & 1) * kTile + tid;
      if (a.cache_scale != nullptr) {
        const bool valid = key < kend;
        cp_async_4(sd, valid ? a.cache_scale + int64_t(tp[tid]) * a.s_sp + int64_t(key % a.page_size) * a.s_ss : a.cache_scale, valid);
      } else {
        *sd = 1.f;
      }
      const int key2 = key + 2 * kTile;
      const bool valid2 = key2 < kend;
      const int pg = a.page_shift >= 0 ? key2 >> a.page_shift : key2 / a.page_size;
      cp_async_4(page_id + ((t + 2) & 3) * kTile + tid, valid2 ? pages + pg : pages, valid2);
    }
  };
  const int ntiles = (kend - kbeg + kTile - 1) / kTile;
  if constexpr (kF8) {
    if (tid < 2 * kTile) {  // page ids of tiles 0 and 1 (page_id[0], page_id[1])
      const int key = kbeg + tid;
      page_id[tid] = key < kend ? pages[key / a.page_size] : 0;
    }
    __syncthreads();
    load_tile_f8(0);
    cp_async_commit();
  } else {
    // kStages - 1 tiles ahead; one commit group per tile slot, empty past the end, so the
    // wait count below is the same in every iteration.
#pragma unroll
    for (int st = 0; st < kStages - 1; ++st) {
      if (st < ntiles) load_tile(st, st, tile_page(st));
      cp_async_commit();
    }
  }
  int next_page = kF8 ? 0 : tile_page(kStages - 1);  // one page per tile: page of the next tile to issue

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

  float c_run = 1.f;  // kMode 2: the scale O is divided by (1 otherwise)
  const int gr = lane / 4, gc = lane % 4;  // mma fragment row / column-pair of this lane
  for (int it = 0; it < ntiles; ++it) {
    if constexpr (kF8) {
      if (it + 1 < ntiles) {
        load_tile_f8(it + 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
    } else {
      // Tile it + kStages - 1 goes to the buffer tile it - 1 used (freed by the last barrier).
      if (it + kStages - 1 < ntiles) {
        load_tile(it + kStages - 1, (it + kStages - 1) % kStages, next_page);
        next_page = tile_page(it + kStages);  // waited on only at the next issue
      }
      cp_async_commit();
      cp_async_wait<kStages - 1>();
    }
    __syncthreads();
    const __nv_bfloat16* kt = ks + (kF8 ? 0 : it % kStages) * kTile * kLd;  // [kTile][kLd]
    if constexpr (kF8) {
      // Widen the e4m3 tile to bf16: 8 bytes in, 16 bytes out per step.
      const uint8_t* src = stage + (it & 1) * kTile * kD;  // [kTile][kD]
#pragma unroll
      for (int m = 0; m < kChunks; ++m) {
        const int i = tid + m * kThreads, j = i / (kD / 8), c = i % (kD / 8);
        const uint2 v = *reinterpret_cast<const uint2*>(src + j * kD + c * 8);
        uint4 o;
        if constexpr (kH) {
          e4m3x4_to_f16(v.x, o.x, o.y);
          e4m3x4_to_f16(v.y, o.z, o.w);
        } else {
          e4m3x4_to_bf16(v.x, o.x, o.y);
          e4m3x4_to_bf16(v.y, o.z, o.w);
        }
        *reinterpret_cast<uint4*>(ks + j * kLd + c * 8) = o;
      }
      __syncthreads();
    }

    // S partials: warp = (16-key half kh, dim quarter dq) over every 16-row group: the K
    // fragment of a k-step is loaded once for the kRG row groups. Each S element is the same
    // 9-step mma chain of its dim quarter whatever kRG is (fixed order, batch-invariant).
    {
      const int dq = warp % kDimSplits, kh = (warp / kDimSplits) % 2;
      float c[kRG][2][4];
#pragma unroll
      for (int g = 0; g < kRG; ++g)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) c[g][nt][e] = 0.f;
      const __nv_bfloat16* qa = qs + (lane % 16) * kLd + (lane / 16) * 8;
      const int mi = lane / 8;
      const __nv_bfloat16* kb = kt + (kh * 16 + (mi >> 1) * 8 + lane % 8) * kLd + (mi & 1) * 8;
#pragma unroll
      for (int s = 0; s < kKStepsPerSplit; ++s) {
        const int d0 = (dq * kKStepsPerSplit + s) * 16;
        uint32_t bf[4];
        ldmatrix_x4(bf, kb + d0);
#pragma unroll
        for (int g = 0; g < kRG; ++g) {
          uint32_t af[4];
          ldmatrix_x4(af, qa + g * 16 * kLd + d0);
          if constexpr (kH) {
            mma_f16_16816(c[g][0], af, bf[0], bf[1]);
            mma_f16_16816(c[g][1], af, bf[2], bf[3]);
          } else {
            mma_bf16_16816(c[g][0], af, bf[0], bf[1]);
            mma_bf16_16816(c[g][1], af, bf[2], bf[3]);
          }
        }
      }
#pragma unroll
      for (int g = 0; g < kRG; ++g) {
        float* out = sp + (dq * kM + g * 16) * kSLd + kh * 16;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          *reinterpret_cast<float2*>(out + gr * kSLd + nt * 8 + 2 * gc) = make_float2(c[g][nt][0], c[g][nt][1]);
          *reinterpret_cast<float2*>(out + (gr + 8) * kSLd + nt * 8 + 2 * gc) = make_float2(c[g][nt][2], c[g][nt][3]);
        }
      }
    }
    __syncthreads();

    // Online softmax: lane = key of the tile.
    const int key = kbeg + it * kTile + lane;
    // kMode 2: c = the tile's largest key scale (the same in every warp); O is kept as O / c.
    float c_ratio = 1.f;
    if constexpr (kH) {
      const float c_tile = fmaxf(warp_max(key_scale[(it & 1) * kTile + lane]), 1.17549435e-38f);
      c_ratio = it == 0 ? 1.f : c_run / c_tile;
      c_run = c_tile;
    }
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int r = warp + 8 * i;
      float s = sp[(0 * kM + r) * kSLd + lane] + sp[(1 * kM + r) * kSLd + lane];
      s += sp[(2 * kM + r) * kSLd + lane];
      s += sp[(3 * kM + r) * kSLd + lane];
      float ksc = 1.f;  // kF8: the key's token scale (0 for keys past kend, whose p is 0)
      if constexpr (kF8) ksc = key_scale[(it & 1) * kTile + lane];
      if constexpr (kH) {
        s = (key < kend && key <= row_pos[r]) ? s * row_qscale[r] * a.scale * ksc : -INFINITY;
      } else if constexpr (kF8) {
        s = (key < kend && key <= row_pos[r]) ? s * a.scale * ksc : -INFINITY;
      } else {
        s = (key < kend && key <= row_pos[r]) ? s * a.scale : -INFINITY;
      }
      const float m_new = fmaxf(m_run[i], warp_max(s));
      const float pf = m_new == -INFINITY ? 0.f : expf(s - m_new);
      const float alpha = m_new == -INFINITY ? 1.f : expf(m_run[i] - m_new);
      // PV runs on bf16 P (times the key's scale for fp8: V is the unscaled e4m3); l and lse
      // stay fp32.
      l_run[i] = l_run[i] * alpha + warp_sum(pf);
      m_run[i] = m_new;
      if constexpr (kH) {
        reinterpret_cast<__half*>(ps)[r * kPLd + lane] = __float2half_rn(pf * (ksc / c_run));
      } else {
        ps[r * kPLd + lane] = __float2bfloat16_rn(kF8 ? pf * ksc : pf);
      }
      if (lane == 0) row_alpha[r] = kH ? alpha * c_ratio : alpha;
    }
    __syncthreads();

    // O = O * alpha + P V over this warp's 64 value columns. The V fragments of a 16-key step
    // are loaded once for all kRG row groups; each O element still sees alpha, then key step 0,
    // then key step 16 (the same order for any kRG).
#pragma unroll
    for (int g = 0; g < kRG; ++g) {
      const float a0 = row_alpha[g * 16 + gr], a1 = row_alpha[g * 16 + gr + 8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        acc[g][j][0] *= a0; acc[g][j][1] *= a0;
        acc[g][j][2] *= a1; acc[g][j][3] *= a1;
      }
    }
#pragma unroll
    for (int kk = 0; kk < kTile; kk += 16) {
      const int mi = lane / 8;
      const __nv_bfloat16* vb = kt + (kk + (mi & 1) * 8 + lane % 8) * kLd + warp * 64 + (mi >> 1) * 8;
      uint32_t vf[4][4];
#pragma unroll
      for (int jp = 0; jp < 4; ++jp) ldmatrix_x4_trans(vf[jp], vb + jp * 16);
#pragma unroll
      for (int g = 0; g < kRG; ++g) {
        uint32_t af[4];
        ldmatrix_x4(af, ps + (g * 16 + lane % 16) * kPLd + kk + (lane / 16) * 8);
#pragma unroll
        for (int jp = 0; jp < 4; ++jp) {
          if constexpr (kH) {
            mma_f16_16816(acc[g][2 * jp], af, vf[jp][0], vf[jp][1]);
            mma_f16_16816(acc[g][2 * jp + 1], af, vf[jp][2], vf[jp][3]);
          } else {
            mma_bf16_16816(acc[g][2 * jp], af, vf[jp][0], vf[jp][1]);
            mma_bf16_16816(acc[g][2 * jp + 1], af, vf[jp][2], vf[jp][3]);
          }
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
      for (int j = 0; j < 8; ++j)
        *reinterpret_cast<float2*>(dst + j * 8) = make_float2(acc[g][j][2 * h] * c_run, acc[g][j][2 * h + 1] * c_run);
    }
  }
  for (int r = tid; r < rows; r += kThreads) {
    a.part_ml[part_index(r) * 2] = row_m[r];
    a.part_ml[part_index(r) * 2 + 1] = row_l[r];
  }
}

template <class TO>
__global__ void __launch_bounds__(mla_combine::kCombineThreads) mla_combine_kernel(Args a) {
  mla_combine::combine_block<TO>(a);
}

template <int kRG, int kMode, int kStages, class TO>
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
  constexpr size_t smem = smem_bytes<kRG, kMode, kStages>();
  static_assert(smem <= 227 * 1024, "MLA decode tile does not fit in shared memory");
  cudaError_t err = cudaFuncSetAttribute(mla_decode_tc_kernel<kRG, kMode, kStages>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  for (int t0 = 0; t0 < n; t0 += chunk) {
    a.token0 = t0;
    a.tokens = std::min(chunk, n - t0);
    const dim3 grid(unsigned(a.tokens), unsigned(a.num_splits), unsigned(plan.row_tiles));
    mla_decode_tc_kernel<kRG, kMode, kStages><<<grid, kThreads, smem, stream>>>(a);
    mla_combine_kernel<TO><<<unsigned(a.tokens * a.heads), mla_combine::kCombineThreads, 0, stream>>>(a);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// The fp8 widening: 1 (bf16 bit operations, the default) or 2 (f16, MOEX_MLA_FP8_WIDEN=f16).
// Both pass the same tests and run at the same speed at 16 heads (docs/kernels/mla.md); mode 1
// is simpler and faster at 128 heads. Mode 2 is kept for the latency work that comes next.
int fp8_mode() {
  static const int mode = [] {
    const char* v = std::getenv("MOEX_MLA_FP8_WIDEN");
    return v != nullptr && std::string(v) == "f16" ? 2 : 1;
  }();
  return mode;
}

// Smallest split (MOEX_MLA_MIN_SPLIT, a power of two in [32, 8192], default 512). Fewer keys
// per split give short tables (batch 1) more CTAs and cost more partials at large batch.
int min_split_keys() {
  static const int keys = [] {
    const char* v = std::getenv("MOEX_MLA_MIN_SPLIT");
    const int k = v != nullptr ? std::atoi(v) : 512;
    return k >= kTile && k <= 8192 && (k & (k - 1)) == 0 ? k : 512;
  }();
  return keys;
}

// bf16 K-tile ring depth. The depth never changes a row's arithmetic (only when its tiles
// arrive), so it may follow the launch size: "deep" is the deepest ring that fits one CTA per
// SM (5 tiles at kRG = 1, 4 at kRG = 2), 2 keeps two CTAs per SM at kRG = 1. Auto (default):
// deep at kRG = 2 (one CTA per SM either way) and at kRG = 1 when the grid has at most one CTA
// per SM; MOEX_MLA_STAGES=2 or deep forces one.
int stages_mode() {  // 0 auto, 1 always 2, 2 always deep
  static const int mode = [] {
    const char* v = std::getenv("MOEX_MLA_STAGES");
    if (v == nullptr) return 0;
    const std::string s(v);
    return s == "2" ? 1 : s == "deep" ? 2 : 0;
  }();
  return mode;
}
bool deep_stages(int row_groups, int64_t ctas) {
  const int mode = stages_mode();
  if (mode != 0) return mode == 2;
  return row_groups == 2 || ctas <= int64_t(sm_count());
}

}  // namespace mla_tc

MlaDecodePlan plan_mla_decode(int64_t n, int64_t num_seqs, int heads, int64_t max_keys) {
  MlaDecodePlan p;
  // ~64 splits over the widest sequence the table can hold, 512..8192 keys each (a power of 2).
  int64_t split = mla_tc::min_split_keys();
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
  const bool f8 = p.cache.dtype == DType::kF8E4M3;
  if (p.q.dtype != DType::kBF16 || (p.cache.dtype != DType::kBF16 && !f8)) return false;
  if (p.out.dtype != DType::kBF16 && p.out.dtype != DType::kF32) return false;
  if (p.q.shape[2] != kD || p.kv_lora_rank != kDV) return false;
  if (p.q.stride[2] != 1 || p.q.stride[1] % 8 != 0 || p.q.stride[0] % 8 != 0 || !aligned(p.q)) return false;
  const int64_t row_align = f8 ? 16 : 8;  // 16-byte rows for cp.async
  if (p.cache.stride[2] != 1 || p.cache.stride[1] % row_align != 0 || p.cache.stride[0] % row_align != 0 || !aligned(p.cache))
    return false;
  if (!p.cache_scale.empty() && (!f8 || p.cache_scale.dtype != DType::kF32)) return false;
  if (p.out.stride[2] != 1) return false;
  if (!p.lse.empty() && p.lse.stride[1] != 1) return false;
  return p.seqs.page_size > 0;
}

cudaError_t launch_mla_decode_tc(const ops::MlaAttentionParams& p, Scratch& scratch, cudaStream_t stream) {
  const int n = int(p.q.shape[0]);
  if (n == 0) return cudaSuccess;
  // 64 / 128 heads on sm_90a: the wgmma kernel (mla_decode_wg.cu), chosen by the head count,
  // the dtypes and MOEX_MLA_WG, never by the batch.
  if (mla_decode_wg_selected(p)) return launch_mla_decode_wg(p, scratch, stream);
  mla_tc::Args a{};
  a.q = p.q.ptr<__nv_bfloat16>(); a.s_qt = p.q.stride[0]; a.s_qh = p.q.stride[1];
  const bool f8 = p.cache.dtype == DType::kF8E4M3;
  a.s_cp = p.cache.stride[0]; a.s_cs = p.cache.stride[1];
  if (f8) {
    a.cache8 = static_cast<const uint8_t*>(p.cache.data);
    if (!p.cache_scale.empty()) {
      a.cache_scale = p.cache_scale.ptr<float>(); a.s_sp = p.cache_scale.stride[0]; a.s_ss = p.cache_scale.stride[1];
    }
  } else {
    a.cache = p.cache.ptr<__nv_bfloat16>();
  }
  a.block_table = p.seqs.block_table.ptr<int32_t>(); a.s_bt = p.seqs.block_table.stride[0];
  a.seq_lens = p.seqs.seq_lens.ptr<int32_t>();
  a.query_start = p.seqs.query_start.ptr<int32_t>();
  a.num_seqs = int(p.seqs.seq_lens.shape[0]);
  a.page_size = p.seqs.page_size;
  a.page_shift = (a.page_size & (a.page_size - 1)) == 0 ? __builtin_ctz(unsigned(a.page_size)) : -1;
  a.one_page = !f8 && a.page_shift >= 0 && a.page_size % mla_tc::kTile == 0 &&
               int64_t(a.page_size) * p.cache.stride[1] < (int64_t(1) << 31);
  a.heads = int(p.q.shape[1]);
  const int64_t max_keys = p.seqs.block_table.shape[1] * int64_t(p.seqs.page_size);
  const MlaDecodePlan plan = plan_mla_decode(n, a.num_seqs, a.heads, max_keys);
  // CTAs that do work: one per (token group, split, row tile).
  const int64_t ctas = int64_t(n) / plan.max_group * plan.num_splits * plan.row_tiles;
  const bool deep = mla_tc::deep_stages(plan.row_groups, ctas);
  a.split_keys = plan.split_keys; a.num_splits = plan.num_splits; a.max_group = plan.max_group;
  a.scale = p.scale;
  a.out = p.out.data; a.s_ot = p.out.stride[0]; a.s_oh = p.out.stride[1];
  a.lse = p.lse.empty() ? nullptr : p.lse.ptr<float>();
  a.s_lse = p.lse.empty() ? 0 : p.lse.stride[0];
  cudaError_t err = cudaErrorInvalidValue;
  dispatch_act(p.out.dtype, [&](auto to) {
    using TO = decltype(to);
    auto go = [&](auto mode_tag) {
      constexpr int kMode = decltype(mode_tag)::value;
      switch (plan.row_groups) {
        case 1:
          if constexpr (kMode == 0) {
            if (deep) { err = mla_tc::run<1, kMode, 5, TO>(a, plan, n, scratch, stream); break; }
          }
          err = mla_tc::run<1, kMode, 2, TO>(a, plan, n, scratch, stream);
          break;
        case 2:
          if constexpr (kMode == 0) {
            if (deep) { err = mla_tc::run<2, kMode, 4, TO>(a, plan, n, scratch, stream); break; }
          }
          err = mla_tc::run<2, kMode, 2, TO>(a, plan, n, scratch, stream);
          break;
        default: err = mla_tc::run<4, kMode, 2, TO>(a, plan, n, scratch, stream); break;
      }
    };
    if (!f8) {
      go(std::integral_constant<int, 0>{});
    } else if (mla_tc::fp8_mode() == 1) {
      go(std::integral_constant<int, 1>{});
    } else {
      go(std::integral_constant<int, 2>{});
    }
  });
  return err;
}

}  // namespace moex::kernels
