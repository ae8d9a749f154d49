// Causal prefill attention on the CUDA backend (contract: src/ops/prefill_attention.h; kernels:
// src/kernels/attention/prefill). Validates on the host, then launches without waiting: the
// ragged batch is resolved on the device (the host never reads cu_seqlens). bf16 inputs whose
// rows are 16-byte aligned are read in place; others (f32, odd strides) are first converted to
// contiguous bf16 in scratch, since the tensor cores read bf16.
#include <cstdint>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/float_op_check.h"
#include "kernels/attention/prefill/prefill_attention.h"

namespace moex {
namespace {

namespace kp = kernels::prefill;

const FloatOpCheck kCheck{"prefill_attention"};
Status fail(const std::string& what) { return kCheck.fail(what); }
Status check(const Tensor& t, const char* name, std::initializer_list<int64_t> dims, bool i32 = false) {
  return kCheck.tensor(t, name, dims, i32);
}

// The tensor-core kernel reads bf16 rows with 16-byte cp.async / 4-byte loads.
bool direct(const Tensor& t) {
  return t.dtype == DType::kBF16 && reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && t.stride[0] % 8 == 0 &&
         t.stride[1] % 8 == 0;
}

}  // namespace

Status CudaBackend::prefill_attention(const ops::PrefillAttentionParams& p) {
  MOEX_RETURN_IF_ERROR(check(p.q, "q", {-1, -1, -1}));
  const int64_t T = p.q.shape[0], HQ = p.q.shape[1], Dk = p.q.shape[2];
  MOEX_RETURN_IF_ERROR(check(p.k, "k", {T, -1, Dk}));
  const int64_t H = p.k.shape[1];
  MOEX_RETURN_IF_ERROR(check(p.v, "v", {T, H, -1}));
  const int64_t Dv = p.v.shape[2];
  if (H < 1 || HQ % H != 0)
    return fail("q heads must be a multiple of k heads, got " + p.q.shape_string() + " and " + p.k.shape_string());
  MOEX_RETURN_IF_ERROR(check(p.out, "out", {T, HQ, Dv}));
  if (!p.lse.empty()) {
    MOEX_RETURN_IF_ERROR(check(p.lse, "lse", {T, HQ}));
    if (p.lse.dtype != DType::kF32) return fail("lse must be f32, got " + p.lse.shape_string());
  }
  MOEX_RETURN_IF_ERROR(check(p.cu_seqlens, "cu_seqlens", {-1}, true));
  const int64_t B = p.cu_seqlens.shape[0] - 1;
  if (B < 0 || (B == 0 && T > 0)) return fail("cu_seqlens must hold B + 1 entries (B >= 1 when there are tokens)");
  if (p.cu_seqlens.shape[0] > 1 && p.cu_seqlens.stride[0] != 1) return fail("cu_seqlens must be contiguous");
  if (!kp::supported_dims(int(Dk), int(Dv)))
    return fail("head dims (" + std::to_string(Dk) + ", " + std::to_string(Dv) +
                ") have no kernel: (192, 128), (128, 128) and (64, 64) do");
  if (p.window < 0) return fail("window must be >= 0");
  if (T >= (int64_t(1) << 30)) return fail("too many tokens");
  if (T == 0) return Status::ok();

  kp::Params k;
  k.tokens = int(T); k.num_seqs = int(B); k.hq = int(HQ); k.h = int(H); k.dk = int(Dk); k.dv = int(Dv);
  k.cu_seqlens = p.cu_seqlens.ptr<int32_t>();
  k.causal = p.causal; k.window = p.window; k.scale = p.scale;
  k.out = p.out.data; k.out_bf16 = p.out.dtype == DType::kBF16; k.o_st = p.out.stride[0]; k.o_sh = p.out.stride[1];
  if (!p.lse.empty()) { k.lse = p.lse.ptr<float>(); k.lse_st = p.lse.stride[0]; }
  if (!p.lse.empty() && HQ > 1 && p.lse.stride[1] != 1) return fail("lse must be contiguous along its last dim");

  const Tensor* in[3] = {&p.q, &p.k, &p.v};
  using SC = kernels::ScratchCarver;
  size_t bytes = kp::scratch_bytes(k);
  for (const Tensor* t : in)
    if (!direct(*t)) bytes += SC::bytes_for<uint16_t>(size_t(t->numel()));
  char* base = static_cast<char*>(get(bytes));
  if (base == nullptr) return fail("out of device memory for scratch");
  SC sc{base, 0};
  void* sched = sc.carve<char>(kp::scratch_bytes(k));
  const void* ptr[3];
  int64_t st[3], sh[3];
  for (int i = 0; i < 3; ++i) {
    const Tensor& t = *in[i];
    if (direct(t)) {
      ptr[i] = t.data; st[i] = t.stride[0]; sh[i] = t.stride[1];
      continue;
    }
    uint16_t* dst = sc.carve<uint16_t>(size_t(t.numel()));  // [rows, heads, d] bf16
    MOEX_RETURN_IF_ERROR(cuda_status(kp::launch_to_bf16(t.data, t.dtype == DType::kBF16, t.shape[0], t.shape[1],
                                                        t.shape[2], t.stride[0], t.stride[1], dst, stream_),
                                     "cuda prefill_attention: bf16 conversion launch"));
    ptr[i] = dst; st[i] = t.shape[1] * t.shape[2]; sh[i] = t.shape[2];
  }
  k.q = ptr[0]; k.q_st = st[0]; k.q_sh = sh[0];
  k.k = ptr[1]; k.k_st = st[1]; k.k_sh = sh[1];
  k.v = ptr[2]; k.v_st = st[2]; k.v_sh = sh[2];
  return cuda_status(kp::launch(k, sched, stream_), "cuda prefill_attention: launch");
}

}  // namespace moex
