// Causal prefill attention on the CPU: the reference (contract: src/ops/prefill_attention.h,
// notes: docs/kernels/prefill_attention.md).
//
// q, k and v are converted once to contiguous f32 copies; then one job = one (row, query head),
// run over ctx.threads OpenMP threads, each writing only its own out / lse row. Arithmetic in
// f32: score = dot_f32(q, k) * scale (the lane order of cpu_common.h), m = max over the visible
// keys, e = exp(score - m), sum and sum_s e * v in increasing key order, out = acc / sum.
#include <cmath>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace moex::cpu {
namespace {

constexpr const char* kOp = "prefill_attention";

// f32 copy of a [T, H, D] tensor (any row / head strides, unit inner stride).
std::vector<float> to_f32(const Tensor& t, const Ctx& ctx) {
  const int64_t T = t.shape[0], H = t.shape[1], D = t.shape[2];
  std::vector<float> dst(static_cast<size_t>(T * H * D), 0.f);  // [T, H, D]
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (T * H * D > (1 << 15))
  for (int64_t r = 0; r < T; ++r)
    for (int64_t h = 0; h < H; ++h)
      load_row(t.at({r, h, 0}), t.dtype, 1, D, dst.data() + (r * H + h) * D);
  return dst;
}

Status check_3d(const char* name, const Tensor& t, bool output) {
  MOEX_RETURN_IF_ERROR(check_tensor(kOp, name, t, 3));
  MOEX_RETURN_IF_ERROR(output ? check_output(kOp, name, t) : check_float(kOp, name, t));
  return check_inner_contiguous(kOp, name, t);
}

}  // namespace

Status prefill_attention(const Ctx& ctx, const ops::PrefillAttentionParams& p) {
  MOEX_RETURN_IF_ERROR(check_3d("q", p.q, false));
  MOEX_RETURN_IF_ERROR(check_3d("k", p.k, false));
  MOEX_RETURN_IF_ERROR(check_3d("v", p.v, false));
  MOEX_RETURN_IF_ERROR(check_3d("out", p.out, true));
  const int64_t T = p.q.shape[0], HQ = p.q.shape[1], Dk = p.q.shape[2];
  const int64_t H = p.k.shape[1], Dv = p.v.shape[2];
  MOEX_RETURN_IF_ERROR(check_dim(kOp, "k", p.k, 0, T));
  MOEX_RETURN_IF_ERROR(check_dim(kOp, "k", p.k, 2, Dk));
  MOEX_RETURN_IF_ERROR(check_dim(kOp, "v", p.v, 0, T));
  MOEX_RETURN_IF_ERROR(check_dim(kOp, "v", p.v, 1, H));
  MOEX_RETURN_IF_ERROR(check_dim(kOp, "out", p.out, 0, T));
  MOEX_RETURN_IF_ERROR(check_dim(kOp, "out", p.out, 1, HQ));
  MOEX_RETURN_IF_ERROR(check_dim(kOp, "out", p.out, 2, Dv));
  if (H < 1 || HQ % H != 0)
    return invalid_argument(std::string(kOp) + ": q heads " + std::to_string(HQ) + " must be a multiple of k heads " +
                            std::to_string(H));
  if (!p.lse.empty()) {
    MOEX_RETURN_IF_ERROR(check_tensor(kOp, "lse", p.lse, 2));
    if (p.lse.dtype != DType::kF32) return invalid_argument(std::string(kOp) + ": lse must be f32, got " + shape_of(p.lse));
    MOEX_RETURN_IF_ERROR(check_dim(kOp, "lse", p.lse, 0, T));
    MOEX_RETURN_IF_ERROR(check_dim(kOp, "lse", p.lse, 1, HQ));
  }
  MOEX_RETURN_IF_ERROR(check_tensor(kOp, "cu_seqlens", p.cu_seqlens, 1));
  MOEX_RETURN_IF_ERROR(check_i32(kOp, "cu_seqlens", p.cu_seqlens));
  const int64_t B = p.cu_seqlens.shape[0] - 1;
  if (B < 0) return invalid_argument(std::string(kOp) + ": cu_seqlens must hold B + 1 >= 1 entries");
  if (p.window < 0) return invalid_argument(std::string(kOp) + ": window must be >= 0");
  if (!std::isfinite(p.scale)) return invalid_argument(std::string(kOp) + ": scale must be finite");
  // Row -> (sequence start, sequence end), checking the offsets on the way.
  std::vector<int64_t> seq_begin(static_cast<size_t>(T), 0), seq_end(static_cast<size_t>(T), 0);
  if (i32_at(p.cu_seqlens, 0) != 0) return invalid_argument(std::string(kOp) + ": cu_seqlens[0] must be 0");
  for (int64_t i = 0; i < B; ++i) {
    const int64_t b = i32_at(p.cu_seqlens, i), e = i32_at(p.cu_seqlens, i + 1);
    if (e < b || e > T)
      return invalid_argument(std::string(kOp) + ": cu_seqlens[" + std::to_string(i + 1) + "] = " + std::to_string(e) +
                              " is out of order or past T = " + std::to_string(T));
    for (int64_t r = b; r < e; ++r) { seq_begin[r] = b; seq_end[r] = e; }
  }
  if (i32_at(p.cu_seqlens, B) != T)
    return invalid_argument(std::string(kOp) + ": cu_seqlens[B] must be T = " + std::to_string(T));
  if (T == 0) return Status::ok();

  const std::vector<float> q = to_f32(p.q, ctx);  // [T, HQ, Dk]
  const std::vector<float> k = to_f32(p.k, ctx);  // [T, H, Dk]
  const std::vector<float> v = to_f32(p.v, ctx);  // [T, H, Dv]
  const int64_t group = HQ / H;
  const int64_t jobs = T * HQ;
#pragma omp parallel num_threads(ctx.threads)
  {
    std::vector<float> score, acc(static_cast<size_t>(Dv), 0.f);  // [keys], [Dv]
#pragma omp for schedule(dynamic, 16)
    for (int64_t job = 0; job < jobs; ++job) {
      const int64_t r = job / HQ, h = job % HQ, g = h / group;
      int64_t s_hi = p.causal ? r + 1 : seq_end[r];  // keys [s_lo, s_hi) as rows
      int64_t s_lo = seq_begin[r];
      if (p.window > 0) s_lo = std::max(s_lo, r - p.window + 1);
      const float* qr = q.data() + (r * HQ + h) * Dk;
      float m = -INFINITY;
      score.resize(size_t(std::max<int64_t>(s_hi - s_lo, 0)));
      for (int64_t s = s_lo; s < s_hi; ++s) {
        const float x = dot_f32(qr, k.data() + (s * H + g) * Dk, Dk) * p.scale;
        score[size_t(s - s_lo)] = x;
        m = std::max(m, x);
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      float sum = 0.f;
      for (int64_t s = s_lo; s < s_hi; ++s) {
        const float e = std::exp(score[size_t(s - s_lo)] - m);
        sum += e;
        const float* vr = v.data() + (s * H + g) * Dv;
        for (int64_t d = 0; d < Dv; ++d) acc[size_t(d)] += e * vr[d];
      }
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
      for (int64_t d = 0; d < Dv; ++d) acc[size_t(d)] *= inv;
      store_row(p.out.at({r, h, 0}), p.out.dtype, 1, Dv, acc.data());
      if (!p.lse.empty()) *reinterpret_cast<float*>(p.lse.at({r, h})) = sum > 0.f ? m + std::log(sum) : -INFINITY;
    }
  }
  return Status::ok();
}

}  // namespace moex::cpu
