// The per-pair math of RoPE as device helpers, shared by rope.cu and the fused kernels of
// src/kernels/fused/ so that both compute every element with the same instructions. Every
// multiply and add is an explicit _rn op: no FMA contraction, whatever the surrounding code,
// so the results do not depend on how the compiler schedules the caller (and they are the CPU
// reference's a * c - b * s with two roundings).
#pragma once
#include <cstdint>

namespace moex::kernels {

// cos and sin of angle = float(pos) * inv_freq, each scaled by attn_scale (YaRN's mscale).
__device__ __forceinline__ void rope_cos_sin(int32_t pos, float inv_freq, float attn_scale, float* c, float* s) {
  const float angle = __fmul_rn(float(pos), inv_freq);
  *c = __fmul_rn(cosf(angle), attn_scale);
  *s = __fmul_rn(sinf(angle), attn_scale);
}

// The rotation of one pair (x0, x1) -> (x0 c - x1 s, x1 c + x0 s).
__device__ __forceinline__ void rope_rotate(float x0, float x1, float c, float s, float* y0, float* y1) {
  *y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
  *y1 = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
}

// Feature indices of pair i: NeoX / rotate-half (i, i + half) or GPT-J interleaved (2i, 2i + 1).
__device__ __forceinline__ void rope_pair(int i, int half, bool interleaved, int* i0, int* i1) {
  *i0 = interleaved ? 2 * i : i;
  *i1 = interleaved ? 2 * i + 1 : i + half;
}

}  // namespace moex::kernels
