// CUDA vs CPU causal prefill attention (contract: src/ops/prefill_attention.h; kernel:
// src/kernels/attention/prefill). Outputs (out and lse) are poisoned with NaN first; cases cover
// lengths around the 64-row / 64-key tiles (1, 63, 64, 65, 1000, 4100), ragged batches with empty
// sequences, GQA groups 1 and 8, head dims 192/128, 128/128 and 64/64, bf16 and f32 inputs and
// outputs, strided views, non-causal and sliding-window masks. A sequence's rows must have the
// same bits alone as inside a batch, and the same bits run after run.
#include <cmath>
#include <string>
#include <vector>

#include "cuda_ops/cuda_ops_util.h"
#include "ops/prefill_attention.h"

namespace moex::test {
namespace {

struct Case {
  const char* name;
  int hq, h, dk, dv;
  std::vector<int> lens;
  DType in = DType::kBF16, out = DType::kBF16;
  bool causal = true;
  int window = 0;
  int pad = 0;  // extra elements per head row of q (a strided view of a wider tensor)
};

struct Inputs {
  int64_t T = 0;
  std::vector<int64_t> starts{0};  // [B + 1]
  HostTensor q, k, v, cu;
};

Inputs make_inputs(const Case& c, Rng& rng) {
  Inputs in;
  for (int l : c.lens) in.starts.push_back(in.starts.back() + l);
  in.T = in.starts.back();
  in.q = host_random(c.in, {in.T, c.hq, c.dk}, rng, -2.f, 2.f);
  in.k = host_random(c.in, {in.T, c.h, c.dk}, rng, -2.f, 2.f);
  in.v = host_random(c.in, {in.T, c.h, c.dv}, rng);
  in.cu = host_i32(std::vector<int32_t>(in.starts.begin(), in.starts.end()));
  return in;
}

ops::PrefillAttentionParams params_of(const Case& c, const Tensor& q, const Tensor& k, const Tensor& v,
                                      const Tensor& cu, const Tensor& out, const Tensor& lse) {
  ops::PrefillAttentionParams p;
  p.q = q; p.k = k; p.v = v; p.cu_seqlens = cu;
  p.causal = c.causal; p.window = c.window; p.scale = float(1.0 / std::sqrt(double(c.dk)));
  p.out = out; p.lse = lse;
  return p;
}

struct Outputs {
  HostTensor out, lse;
};

// Runs the GPU op on `in` (q optionally as a strided view of a wider tensor).
Outputs run_gpu(Backend& gpu, const Case& c, const Inputs& in, Status* st) {
  DeviceTensor dk = to_device(gpu, in.k), dv = to_device(gpu, in.v), dcu = to_device(gpu, in.cu);
  DeviceTensor dq;
  Tensor qview;
  if (c.pad > 0) {
    HostTensor wide = host_tensor(c.in, {in.T, c.hq, c.dk + c.pad});
    for (int64_t i = 0; i < wide.t.numel(); ++i) wide.set(i, NAN);  // the padding must never be read
    for (int64_t r = 0; r < in.T * c.hq; ++r)
      for (int e = 0; e < c.dk; ++e) wide.set(r * (c.dk + c.pad) + e, in.q.get(r * c.dk + e));
    dq = to_device(gpu, wide);
    qview = dq.t;
    qview.shape[2] = c.dk;
  } else {
    dq = to_device(gpu, in.q);
    qview = dq.t;
  }
  DeviceTensor out = device_poisoned(gpu, c.out, {in.T, c.hq, c.dv});
  DeviceTensor lse = device_poisoned(gpu, DType::kF32, {in.T, c.hq});
  *st = gpu.prefill_attention(params_of(c, qview, dk.t, dv.t, dcu.t, out.t, lse.t));
  if (st->is_ok()) *st = gpu.synchronize();
  return {to_host(gpu, out), to_host(gpu, lse)};
}

Outputs run_cpu(Backend& cpu, const Case& c, const Inputs& in) {
  Outputs o{host_tensor(c.out, {in.T, c.hq, c.dv}), host_tensor(DType::kF32, {in.T, c.hq})};
  const Status st = cpu.prefill_attention(params_of(c, in.q.t, in.k.t, in.v.t, in.cu.t, o.out.t, o.lse.t));
  EXPECT_TRUE(st.is_ok()) << st.message();
  return o;
}

class PrefillAttentionCuda : public CudaOpsTest {
 protected:
  void check(const Case& c) {
    SCOPED_TRACE(std::string(c.name) + " seed " + std::to_string(seed_));
    const Inputs in = make_inputs(c, rng_);
    Status st;
    const Outputs got = run_gpu(*gpu_, c, in, &st);
    ASSERT_TRUE(st.is_ok()) << st.message();
    const Outputs want = run_cpu(*cpu_, c, in);
    for (int64_t i = 0; i < got.out.t.numel(); ++i)
      ASSERT_TRUE(std::isfinite(got.out.get(i))) << "out element " << i << " not finite (unwritten or NaN read)";
    // P is rounded to bf16 before P V (flash-attention practice); f32 inputs are rounded to bf16.
    const double tol = c.in == DType::kF32 ? 2e-2 : 1e-2;
    EXPECT_LT(rel_l2(got.out, want.out), tol);
    double worst = 0;
    for (int64_t i = 0; i < got.lse.t.numel(); ++i) {
      ASSERT_TRUE(std::isfinite(got.lse.get(i))) << "lse element " << i;
      worst = std::max(worst, double(std::fabs(got.lse.get(i) - want.lse.get(i))));
    }
    EXPECT_LT(worst, c.in == DType::kF32 ? 3e-2 : 2e-3) << "lse max abs error";
    // Per sequence: the worst row must be close too (a whole sequence wrong hides in a global L2).
    for (size_t i = 0; i + 1 < in.starts.size(); ++i) {
      double num = 0, den = 0;
      for (int64_t e = in.starts[i] * c.hq * c.dv; e < in.starts[i + 1] * c.hq * c.dv; ++e) {
        const double d = double(got.out.get(e)) - double(want.out.get(e));
        num += d * d;
        den += double(want.out.get(e)) * double(want.out.get(e));
      }
      if (den > 0) {
        EXPECT_LT(std::sqrt(num / den), 2 * tol) << "sequence " << i;
      }
    }
  }
};

TEST_F(PrefillAttentionCuda, LengthsAroundTheTiles) {
  for (int len : {1, 63, 64, 65, 1000}) check(Case{"mla dims", 4, 4, 192, 128, {len}});
}

TEST_F(PrefillAttentionCuda, LongSequenceMlaDims) { check(Case{"4100 tokens", 2, 2, 192, 128, {4100}}); }

TEST_F(PrefillAttentionCuda, RaggedBatch) {
  check(Case{"ragged", 4, 4, 192, 128, {65, 0, 1, 200, 63, 129, 7}});
  check(Case{"ragged f32 out", 4, 4, 192, 128, {31, 300, 64}, DType::kBF16, DType::kF32});
}

TEST_F(PrefillAttentionCuda, GqaGroupsAndHeadDims) {
  check(Case{"gqa 8 dims 128", 16, 2, 128, 128, {300, 77}});
  check(Case{"gqa 1 dims 128", 3, 3, 128, 128, {150}});
  check(Case{"gqa 8 dims 64", 8, 1, 64, 64, {129, 1, 500}});
  check(Case{"gqa 8 dims 192/128", 8, 1, 192, 128, {257}});
}

TEST_F(PrefillAttentionCuda, F32InputsAndStridedQ) {
  check(Case{"f32 in/out", 4, 2, 128, 128, {100, 37}, DType::kF32, DType::kF32});
  check(Case{"strided q (pad 8: read in place)", 4, 2, 192, 128, {90, 33}, DType::kBF16, DType::kBF16, true, 0, 8});
  check(Case{"strided q (pad 4: converted)", 4, 2, 64, 64, {90, 33}, DType::kBF16, DType::kBF16, true, 0, 4});
}

TEST_F(PrefillAttentionCuda, NonCausalAndWindow) {
  check(Case{"full", 4, 2, 128, 128, {130, 5}, DType::kBF16, DType::kBF16, false, 0});
  check(Case{"window 100", 4, 2, 192, 128, {400, 64}, DType::kBF16, DType::kBF16, true, 100});
  check(Case{"window 64 full", 4, 2, 64, 64, {200}, DType::kBF16, DType::kBF16, false, 64});
  check(Case{"window 1", 2, 1, 64, 64, {70}, DType::kBF16, DType::kBF16, true, 1});
}

// A sequence's rows have the same bits alone and inside a batch, and run after run.
TEST_F(PrefillAttentionCuda, SequenceAloneMatchesBatchBitForBit) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const Case c{"batch", 8, 1, 192, 128, {70, 1000, 1, 129}};
  const Inputs in = make_inputs(c, rng_);
  Status st;
  const Outputs batch = run_gpu(*gpu_, c, in, &st);
  ASSERT_TRUE(st.is_ok()) << st.message();
  const Outputs again = run_gpu(*gpu_, c, in, &st);
  ASSERT_TRUE(st.is_ok()) << st.message();
  for (int64_t r = 0; r < in.T; ++r) {
    ASSERT_TRUE(rows_bit_equal(batch.out, r, again.out, r)) << "row " << r << " differs run to run";
    ASSERT_TRUE(rows_bit_equal(batch.lse, r, again.lse, r)) << "lse row " << r << " differs run to run";
  }
  for (size_t i = 0; i < c.lens.size(); ++i) {
    const int len = c.lens[i];
    const int64_t b = in.starts[i];
    Case one = c;
    one.lens = {len};
    Inputs solo;
    solo.T = len;
    solo.starts = {0, len};
    solo.q = host_tensor(c.in, {len, c.hq, c.dk});
    solo.k = host_tensor(c.in, {len, c.h, c.dk});
    solo.v = host_tensor(c.in, {len, c.h, c.dv});
    for (int64_t e = 0; e < solo.q.t.numel(); ++e) solo.q.set(e, in.q.get(b * c.hq * c.dk + e));
    for (int64_t e = 0; e < solo.k.t.numel(); ++e) solo.k.set(e, in.k.get(b * c.h * c.dk + e));
    for (int64_t e = 0; e < solo.v.t.numel(); ++e) solo.v.set(e, in.v.get(b * c.h * c.dv + e));
    solo.cu = host_i32({0, len});
    const Outputs alone = run_gpu(*gpu_, one, solo, &st);
    ASSERT_TRUE(st.is_ok()) << st.message();
    for (int r = 0; r < len; ++r) {
      ASSERT_TRUE(rows_bit_equal(alone.out, r, batch.out, b + r)) << "sequence " << i << " row " << r;
      ASSERT_TRUE(rows_bit_equal(alone.lse, r, batch.lse, b + r)) << "sequence " << i << " lse row " << r;
    }
  }
}

TEST_F(PrefillAttentionCuda, RejectsUnsupportedShapes) {
  const Case c{"dims 96", 2, 1, 96, 96, {10}};
  const Inputs in = make_inputs(c, rng_);
  Status st;
  run_gpu(*gpu_, c, in, &st);
  EXPECT_FALSE(st.is_ok());
  const Case g{"heads 3 over 2", 3, 2, 64, 64, {10}};
  const Inputs in2 = make_inputs(g, rng_);
  run_gpu(*gpu_, g, in2, &st);
  EXPECT_FALSE(st.is_ok());
}

}  // namespace
}  // namespace moex::test
