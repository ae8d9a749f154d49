// The MLA attention prologue in one kernel: RMSNorm of each token's latent, RoPE of its shared
// rotary key and of every query head's rope part, the latent cache write and the copy of the
// rotated query into the absorbed query. Per token one block of rms_norm_threads(rank) threads
// does the latent row exactly as rms_norm_kernel does it (same reduction order), then rotates
// the key with rope.cuh and copies the finished row to the cache; further blocks rotate the
// query pairs (head, pair) with rope.cuh. Values are rounded where the separate kernels store
// them, so every output has the bits of rms_norm, rope, rope, cache_write and copy.
#include "kernels/common/dtype.cuh"
#include "kernels/fused/fused.h"
#include "kernels/norm/rms_norm.cuh"
#include "kernels/rope/rope.cuh"

namespace moex::kernels {
namespace {

template <class T, class TW>
struct MlaArgs {
  T* kv_a;             // [n, rank + rope_dim] rows of stride kv_s_tok
  int64_t kv_s_tok;
  const TW* kv_norm;   // [rank]
  T* q;                // [n, heads, rope_dim] strided
  int64_t q_s_tok, q_s_head;
  T* q_out;            // [n, heads, rope_dim] strided, or null
  int64_t qo_s_tok, qo_s_head;
  const int32_t* positions;  // [n]
  const float* inv_freq;     // [half]
  const int32_t* slots;      // [n]
  T* cache;            // [num_slots, rank + rope_dim] rows of stride cache_stride
  int64_t cache_stride, num_slots;
  int rank, half, heads, q_chunks;
  float eps, attn_scale;
  bool interleaved;
};

template <class T, class TW>
__global__ void mla_rope_cache_kernel(MlaArgs<T, TW> a) {
  __shared__ float warp_part[32];
  const int64_t t = blockIdx.x / (1 + a.q_chunks);
  const int part = int(blockIdx.x % (1 + a.q_chunks));
  const int32_t pos = a.positions[t];
  if (part > 0) {  // query pairs (head, pair) of this chunk
    const int item = (part - 1) * blockDim.x + threadIdx.x;
    if (item >= a.heads * a.half) return;
    const int h = item / a.half, i = item % a.half;
    T* row = a.q + t * a.q_s_tok + h * a.q_s_head;  // [rope_dim]
    float c, s, y0, y1;
    int i0, i1;
    rope_cos_sin(pos, a.inv_freq[i], a.attn_scale, &c, &s);
    rope_pair(i, a.half, a.interleaved, &i0, &i1);
    rope_rotate(to_f32(row[i0]), to_f32(row[i1]), c, s, &y0, &y1);
    const T r0 = from_f32<T>(y0), r1 = from_f32<T>(y1);
    row[i0] = r0;
    row[i1] = r1;
    if (a.q_out != nullptr) {
      T* out = a.q_out + t * a.qo_s_tok + h * a.qo_s_head;  // [rope_dim]
      out[i0] = from_f32<T>(to_f32(r0));
      out[i1] = from_f32<T>(to_f32(r1));
    }
    return;
  }
  T* row = a.kv_a + t * a.kv_s_tok;  // [rank + rope_dim]
  float ss = 0.f;
  for (int c = threadIdx.x; c < a.rank; c += blockDim.x) {
    const float v = to_f32(row[c]);
    ss = fmaf(v, v, ss);
  }
  const float inv = rms_norm_inv(ss, a.rank, a.eps, warp_part);
  // Each thread rewrites only the latent elements it read itself (rms_norm's in-place order).
  for (int c = threadIdx.x; c < a.rank; c += blockDim.x)
    row[c] = from_f32<T>(rms_norm_scale(to_f32(row[c]), inv, to_f32(a.kv_norm[c])));
  T* key = row + a.rank;  // [rope_dim] untouched by the norm
  for (int i = threadIdx.x; i < a.half; i += blockDim.x) {
    float c, s, y0, y1;
    int i0, i1;
    rope_cos_sin(pos, a.inv_freq[i], a.attn_scale, &c, &s);
    rope_pair(i, a.half, a.interleaved, &i0, &i1);
    rope_rotate(to_f32(key[i0]), to_f32(key[i1]), c, s, &y0, &y1);
    key[i0] = from_f32<T>(y0);
    key[i1] = from_f32<T>(y1);
  }
  const int slot = a.slots[t];
  if (slot < 0 || slot >= a.num_slots) return;  // cache_write skips padding slots
  __syncthreads();  // the whole finished row is visible to every thread of the block
  T* dst = a.cache + int64_t(slot) * a.cache_stride;  // [rank + rope_dim]
  for (int c = threadIdx.x; c < a.rank + 2 * a.half; c += blockDim.x) dst[c] = from_f32<T>(to_f32(row[c]));
}

}  // namespace

cudaError_t launch_mla_rope_cache(const ops::MlaRopeCacheParams& p, cudaStream_t stream) {
  const int64_t n = p.kv_a.shape[0];
  const int half = int(p.inv_freq.shape[0]), rank = int(p.kv_a.shape[1]) - 2 * half, heads = int(p.q_rope.shape[1]);
  if (n == 0) return cudaSuccess;
  const int threads = rms_norm_threads(rank);
  const int q_chunks = ceil_div(int64_t(heads) * half, threads);
  bool ok_w = false;
  const bool ok = dispatch_act(p.kv_a.dtype, [&](auto tx) {
    using T = decltype(tx);
    ok_w = dispatch_float(p.kv_norm.dtype, [&](auto tw) {
      using TW = decltype(tw);
      MlaArgs<T, TW> a{};
      a.kv_a = p.kv_a.ptr<T>(); a.kv_s_tok = p.kv_a.stride[0];
      a.kv_norm = p.kv_norm.ptr<TW>();
      a.q = p.q_rope.ptr<T>(); a.q_s_tok = p.q_rope.stride[0]; a.q_s_head = p.q_rope.stride[1];
      if (!p.q_rope_out.empty()) {
        a.q_out = p.q_rope_out.ptr<T>(); a.qo_s_tok = p.q_rope_out.stride[0]; a.qo_s_head = p.q_rope_out.stride[1];
      }
      a.positions = p.positions.ptr<int32_t>();
      a.inv_freq = p.inv_freq.ptr<float>();
      a.slots = p.slot_mapping.ptr<int32_t>();
      a.cache = p.cache.ptr<T>(); a.cache_stride = p.cache.stride[0]; a.num_slots = p.cache.shape[0];
      a.rank = rank; a.half = half; a.heads = heads; a.q_chunks = q_chunks;
      a.eps = p.eps; a.attn_scale = p.attn_scale; a.interleaved = p.interleaved;
      mla_rope_cache_kernel<T, TW><<<unsigned(n * (1 + q_chunks)), threads, 0, stream>>>(a);
    });
  });
  return ok && ok_w ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace moex::kernels
