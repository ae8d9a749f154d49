// Causal prefill attention kernels (flash-attention-2 style, bf16 mma.sync m16n8k16, f32
// accumulation). Contract: src/ops/prefill_attention.h; notes: docs/kernels/prefill_attention.md.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moex::kernels::prefill {

constexpr int kBlockRows = 64;  // query rows per CTA (4 warps x 16)
constexpr int kBlockKeys = 64;  // keys per K/V tile

struct Params {
  // bf16 inputs, contiguous along the head dim; rows 16-byte aligned (strides multiples of 8).
  const void* q = nullptr;  // [T, HQ, Dk]
  const void* k = nullptr;  // [T, H, Dk]
  const void* v = nullptr;  // [T, H, Dv]
  int64_t q_st = 0, q_sh = 0, k_st = 0, k_sh = 0, v_st = 0, v_sh = 0;
  void* out = nullptr;      // [T, HQ, Dv] bf16 or f32
  bool out_bf16 = true;
  int64_t o_st = 0, o_sh = 0;
  float* lse = nullptr;     // optional [T, HQ]
  int64_t lse_st = 0;
  const int32_t* cu_seqlens = nullptr;  // [B + 1]
  int num_seqs = 0, tokens = 0, hq = 0, h = 0, dk = 0, dv = 0;
  bool causal = true;
  int window = 0;
  float scale = 1.f;
};

// Head-dim pairs with a kernel: (192, 128), (128, 128), (64, 64).
bool supported_dims(int dk, int dv);
// Scratch the launcher carves (the query-block schedule).
size_t scratch_bytes(const Params& p);
// Launches the schedule kernel and the attention kernel on `stream`; `scratch` holds
// scratch_bytes(p) bytes.
cudaError_t launch(const Params& p, void* scratch, cudaStream_t stream);

// Strided f32 / bf16 [rows, heads, d] -> contiguous bf16 [rows, heads, d] (for inputs the
// tensor-core path cannot read directly).
cudaError_t launch_to_bf16(const void* src, bool src_bf16, int64_t rows, int64_t heads, int64_t d, int64_t s_st,
                           int64_t s_sh, void* dst, cudaStream_t stream);

}  // namespace moex::kernels::prefill
