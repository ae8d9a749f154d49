// The GQA attention prologue in one kernel: per-head q/k RMSNorm (Qwen3), RoPE of q and k, and
// the K/V cache writes. One block per (token, head) of q | k | v, rms_norm_threads(head_dim)
// threads: the norm reduces exactly like rms_norm_kernel over that head's row, the rotation is
// rope.cuh's, and every intermediate is rounded to the activation dtype where the separate
// kernels store it (after the norm, after the rotation), so q, k and both caches get the bits
// of rms_norm, rope and cache_write run one after the other.
#include "kernels/common/dtype.cuh"
#include "kernels/fused/fused.h"
#include "kernels/norm/rms_norm.cuh"
#include "kernels/rope/rope.cuh"

namespace moex::kernels {
namespace {

template <class T, class TW>
struct QkvArgs {
  T* q;                // [n, q_heads, head_dim] strided
  int64_t q_s_tok, q_s_head;
  T* k;                // [n, kv_heads, head_dim] strided
  int64_t k_s_tok, k_s_head;
  const T* v;          // [n, kv_heads, head_dim] strided
  int64_t v_s_tok, v_s_head;
  const TW* q_norm;    // [head_dim] or null (no norm)
  const TW* k_norm;    // [head_dim] or null
  const int32_t* positions;  // [n]
  const float* inv_freq;     // [half]
  const int32_t* slots;      // [n]
  T* k_cache;          // [num_slots, kv_heads * head_dim] rows of stride kc_stride
  T* v_cache;          // [num_slots, kv_heads * head_dim] rows of stride vc_stride
  int64_t kc_stride, vc_stride, num_slots;
  int q_heads, kv_heads, head_dim, half;
  float eps, attn_scale;
  bool interleaved;
};

template <class T, class TW>
__global__ void qkv_rope_cache_kernel(QkvArgs<T, TW> a) {
  extern __shared__ float vals[];  // [head_dim] this head's row after the norm / rotation
  __shared__ float warp_part[32];
  const int total_heads = a.q_heads + 2 * a.kv_heads;
  const int64_t t = blockIdx.x / total_heads;
  const int j = int(blockIdx.x % total_heads);
  const int d = a.head_dim;
  const int slot = a.slots[t];
  const bool slot_ok = slot >= 0 && slot < a.num_slots;  // cache_write skips padding slots
  if (j >= a.q_heads + a.kv_heads) {  // a v head: the cache write only
    const int h = j - a.q_heads - a.kv_heads;
    if (!slot_ok) return;
    const T* src = a.v + t * a.v_s_tok + h * a.v_s_head;        // [head_dim]
    T* dst = a.v_cache + int64_t(slot) * a.vc_stride + int64_t(h) * d;  // [head_dim]
    for (int c = threadIdx.x; c < d; c += blockDim.x) dst[c] = from_f32<T>(to_f32(src[c]));
    return;
  }
  const bool is_q = j < a.q_heads;
  const int h = is_q ? j : j - a.q_heads;
  T* row = is_q ? a.q + t * a.q_s_tok + h * a.q_s_head : a.k + t * a.k_s_tok + h * a.k_s_head;  // [head_dim]
  const TW* w = is_q ? a.q_norm : a.k_norm;  // the same for every block: both or neither
  if (w != nullptr) {
    float ss = 0.f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      const float v = to_f32(row[c]);
      ss = fmaf(v, v, ss);
    }
    const float inv = rms_norm_inv(ss, d, a.eps, warp_part);
    for (int c = threadIdx.x; c < d; c += blockDim.x)
      vals[c] = to_f32(from_f32<T>(rms_norm_scale(to_f32(row[c]), inv, to_f32(w[c]))));
  } else {
    for (int c = threadIdx.x; c < d; c += blockDim.x) vals[c] = to_f32(row[c]);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < a.half; i += blockDim.x) {  // pairs are disjoint: in place
    float c, s;
    rope_cos_sin(a.positions[t], a.inv_freq[i], a.attn_scale, &c, &s);
    int i0, i1;
    rope_pair(i, a.half, a.interleaved, &i0, &i1);
    float y0, y1;
    rope_rotate(vals[i0], vals[i1], c, s, &y0, &y1);
    vals[i0] = to_f32(from_f32<T>(y0));
    vals[i1] = to_f32(from_f32<T>(y1));
  }
  __syncthreads();  // every read of row above happened before these writes
  T* cache = !is_q && slot_ok ? a.k_cache + int64_t(slot) * a.kc_stride + int64_t(h) * d : nullptr;  // [head_dim]
  // Without a norm, features past the rotated ones are left as they are (not even rewritten).
  const int written = w != nullptr ? d : 2 * a.half;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    if (c < written) row[c] = from_f32<T>(vals[c]);
    if (cache != nullptr) cache[c] = from_f32<T>(c < written ? vals[c] : to_f32(row[c]));
  }
}

}  // namespace

cudaError_t launch_qkv_rope_cache(const ops::QkvRopeCacheParams& p, cudaStream_t stream) {
  const int64_t n = p.q.shape[0];
  const int q_heads = int(p.q.shape[1]), kv_heads = int(p.k.shape[1]), d = int(p.q.shape[2]);
  const int64_t blocks = n * (q_heads + 2 * kv_heads);
  if (blocks == 0 || d == 0) return cudaSuccess;
  const size_t smem = size_t(d) * sizeof(float);
  auto launch = [&](auto tx, auto tw, bool with_norm) {
    using T = decltype(tx);
    using TW = decltype(tw);
    QkvArgs<T, TW> a{};
    a.q = p.q.ptr<T>(); a.q_s_tok = p.q.stride[0]; a.q_s_head = p.q.stride[1];
    a.k = p.k.ptr<T>(); a.k_s_tok = p.k.stride[0]; a.k_s_head = p.k.stride[1];
    a.v = p.v.ptr<T>(); a.v_s_tok = p.v.stride[0]; a.v_s_head = p.v.stride[1];
    a.q_norm = with_norm ? p.q_norm.ptr<TW>() : nullptr;
    a.k_norm = with_norm ? p.k_norm.ptr<TW>() : nullptr;
    a.positions = p.positions.ptr<int32_t>();
    a.inv_freq = p.inv_freq.ptr<float>();
    a.slots = p.slot_mapping.ptr<int32_t>();
    a.k_cache = p.k_cache.ptr<T>(); a.kc_stride = p.k_cache.stride[0];
    a.v_cache = p.v_cache.ptr<T>(); a.vc_stride = p.v_cache.stride[0];
    a.num_slots = p.k_cache.shape[0];
    a.q_heads = q_heads; a.kv_heads = kv_heads; a.head_dim = d; a.half = int(p.inv_freq.shape[0]);
    a.eps = p.eps; a.attn_scale = p.attn_scale; a.interleaved = p.interleaved;
    qkv_rope_cache_kernel<T, TW><<<unsigned(blocks), rms_norm_threads(d), smem, stream>>>(a);
  };
  bool ok_w = true;
  const bool ok = dispatch_act(p.q.dtype, [&](auto tx) {
    if (p.q_norm.empty()) {
      launch(tx, decltype(tx){}, false);
    } else {
      ok_w = dispatch_float(p.q_norm.dtype, [&](auto tw) { launch(tx, tw, true); });
    }
  });
  return ok && ok_w ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace moex::kernels
