// CUDA sample vs the CPU rule: greedy ids equal exactly; sampled ids equal except where the
// CPU side says the draw (or top_p) lies within 1e-6 of a cumulative boundary (counted, must be
// rare); batch invariance; rejected parameters.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/sampling.h"
#include "cuda_ops/cuda_ops_util.h"

namespace moex::test {
namespace {

constexpr double kBoundary = 1e-6;

struct RowParams {
  float temperature = 0.f;
  int32_t top_k = 0;
  float top_p = 1.f;
  uint64_t draw = 0;  // raw SplitMix64 bits (the engine's form of uniform)
};

struct HostBatch {
  HostTensor logits, temperature, top_k, top_p, uniform;
  std::vector<RowParams> rows;
};

HostBatch make_batch(DType dtype, const std::vector<std::vector<float>>& logits, const std::vector<RowParams>& rows) {
  const int64_t b = int64_t(rows.size()), vocab = int64_t(logits[0].size());
  HostBatch h;
  h.logits = host_tensor(dtype, {b, vocab});
  h.temperature = host_tensor(DType::kF32, {b});
  h.top_k = host_tensor(DType::kI32, {b});
  h.top_p = host_tensor(DType::kF32, {b});
  h.uniform = host_tensor(DType::kI64, {b});
  for (int64_t r = 0; r < b; ++r) {
    for (int64_t v = 0; v < vocab; ++v) h.logits.set(r * vocab + v, logits[size_t(r)][size_t(v)]);
    h.temperature.set(r, rows[size_t(r)].temperature);
    h.top_k.i32(r) = rows[size_t(r)].top_k;
    h.top_p.set(r, rows[size_t(r)].top_p);
    std::memcpy(static_cast<char*>(h.uniform.t.data) + r * 8, &rows[size_t(r)].draw, 8);
  }
  h.rows = rows;
  return h;
}

// Runs the op on one backend (device tensors for the GPU) and returns the ids.
std::vector<int32_t> run(Backend& be, const HostBatch& h, Status* st) {
  const int64_t b = h.logits.t.shape[0];
  HostTensor out = host_tensor(DType::kI32, {b});
  for (int64_t r = 0; r < b; ++r) out.i32(r) = -7;
  if (be.device() == DeviceType::kCpu) {
    *st = be.sample({h.logits.t, h.temperature.t, h.top_k.t, h.top_p.t, h.uniform.t, out.t});
  } else {
    DeviceTensor l = to_device(be, h.logits), t = to_device(be, h.temperature), k = to_device(be, h.top_k),
                 p = to_device(be, h.top_p), u = to_device(be, h.uniform), o = to_device(be, out);
    *st = be.sample({l.t, t.t, k.t, p.t, u.t, o.t});
    if (st->is_ok()) *st = be.synchronize();
    if (st->is_ok()) out = to_host(be, o);
  }
  return std::vector<int32_t>(out.t.ptr<int32_t>(), out.t.ptr<int32_t>() + b);
}

// The CPU rule's margin for row r (the logits as the GPU sees them: rounded to the dtype).
double margin_of(const HostBatch& h, int64_t r) {
  const int64_t vocab = h.logits.t.shape[1];
  std::vector<float> row(static_cast<size_t>(vocab));
  for (int64_t v = 0; v < vocab; ++v) row[size_t(v)] = h.logits.get(r * vocab + v);
  const RowParams& p = h.rows[size_t(r)];
  cpu::SampleRowScratch scratch;
  cpu::SampleRowInfo info;
  cpu::sample_row(row.data(), vocab, p.temperature, p.top_k, p.top_p, unit_double(p.draw), &scratch, &info);
  return info.margin;
}

// Logits of a row: a random scale per row (sharp to flat distributions), a few exact ties.
std::vector<float> random_row(Rng& rng, int64_t vocab) {
  const float scale = rng.uniform(0.05f, 8.f);
  std::vector<float> row(static_cast<size_t>(vocab));
  for (float& x : row) x = scale * (rng.uniform(-1.f, 1.f) + rng.uniform(-1.f, 1.f) + rng.uniform(-1.f, 1.f));
  for (int i = 0; i < 4 && vocab > 1; ++i) row[size_t(rng.uniform_int(0, int(vocab - 1)))] = row[size_t(rng.uniform_int(0, int(vocab - 1)))];
  return row;
}

RowParams random_params(Rng& rng, int64_t vocab, bool greedy) {
  RowParams p;
  p.draw = rng.next();
  if (greedy) return p;
  p.temperature = rng.uniform(0.3f, 1.8f);
  const int mode = rng.uniform_int(0, 4);  // temperature, top-k, top-p, both, top-k 1
  const int max_k = int(std::min<int64_t>(vocab, 2000));
  if (mode == 1 || mode == 3) p.top_k = rng.uniform_int(1, max_k);
  if (mode == 4) p.top_k = 1;
  if (mode >= 2 && mode <= 3) p.top_p = rng.uniform(0.3f, 0.99f);
  return p;
}

using CudaSample = CudaOpsTest;

TEST_F(CudaSample, MatchesCpuOverVocabsBatchesAndDtypes) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  int compared = 0, excluded = 0, greedy_rows = 0;
  for (int64_t vocab : {1, 7, 1000, 32000, 151936, 129280}) {
    for (int64_t batch : {1, 5, 64}) {
      for (DType dtype : {DType::kF32, DType::kBF16}) {
        for (bool greedy : {true, false}) {
          if (vocab > 100000 && batch == 64 && !greedy && dtype == DType::kBF16) continue;  // CPU time
          std::vector<std::vector<float>> logits;
          std::vector<RowParams> rows;
          for (int64_t r = 0; r < batch; ++r) {
            logits.push_back(random_row(rng_, vocab));
            rows.push_back(random_params(rng_, vocab, greedy));
          }
          const HostBatch h = make_batch(dtype, logits, rows);
          Status cs, gs;
          const std::vector<int32_t> want = run(*cpu_, h, &cs), got = run(*gpu_, h, &gs);
          ASSERT_TRUE(cs.is_ok()) << cs.message();
          ASSERT_TRUE(gs.is_ok()) << gs.message();
          for (int64_t r = 0; r < batch; ++r) {
            if (greedy) {
              ++greedy_rows;
              ASSERT_EQ(got[size_t(r)], want[size_t(r)]) << "greedy vocab " << vocab << " batch " << batch << " row " << r;
              continue;
            }
            if (got[size_t(r)] != want[size_t(r)] && margin_of(h, r) < kBoundary) {
              ++excluded;
              continue;
            }
            ++compared;
            const RowParams& p = rows[size_t(r)];
            EXPECT_EQ(got[size_t(r)], want[size_t(r)])
                << dtype_name(dtype) << " vocab " << vocab << " batch " << batch << " row " << r << " T " << p.temperature
                << " k " << p.top_k << " p " << p.top_p << " u " << unit_double(p.draw) << " margin " << margin_of(h, r);
          }
        }
      }
    }
  }
  std::printf("[sample] greedy rows %d, sampled rows compared %d, excluded at a boundary %d\n", greedy_rows, compared,
              excluded);
  EXPECT_GT(compared, 300);
  EXPECT_LE(excluded, compared / 100 + 1);
}

TEST_F(CudaSample, F32UniformAndTiesAtTheTopKBoundary) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  // bf16-coarse logits on a grid of 9 values: ties everywhere, also at the k-th candidate.
  const int64_t vocab = 5000, batch = 32;
  std::vector<std::vector<float>> logits;
  std::vector<RowParams> rows;
  for (int64_t r = 0; r < batch; ++r) {
    std::vector<float> row(static_cast<size_t>(vocab));
    for (float& x : row) x = float(rng_.uniform_int(-4, 4)) * 0.5f;
    logits.push_back(row);
    RowParams p = random_params(rng_, vocab, false);
    p.top_k = rng_.uniform_int(1, 1500);
    rows.push_back(p);
  }
  HostBatch h = make_batch(DType::kBF16, logits, rows);
  // The same rows with the draw given as an f32 value.
  HostBatch f = make_batch(DType::kBF16, logits, rows);
  f.uniform = host_tensor(DType::kF32, {batch});
  for (int64_t r = 0; r < batch; ++r) {
    const float u = std::min(float(unit_double(rows[size_t(r)].draw)), 0.99999994f);
    f.uniform.set(r, u);
  }
  Status st;
  const std::vector<int32_t> want = run(*cpu_, h, &st), got = run(*gpu_, h, &st);
  ASSERT_TRUE(st.is_ok()) << st.message();
  const std::vector<int32_t> want_f = run(*cpu_, f, &st), got_f = run(*gpu_, f, &st);
  ASSERT_TRUE(st.is_ok()) << st.message();
  int excluded = 0;
  for (int64_t r = 0; r < batch; ++r) {
    if (margin_of(h, r) < kBoundary) {
      ++excluded;
      continue;
    }
    EXPECT_EQ(got[size_t(r)], want[size_t(r)]) << "row " << r << " k " << rows[size_t(r)].top_k;
    EXPECT_EQ(got_f[size_t(r)], want_f[size_t(r)]) << "f32 uniform, row " << r;
  }
  EXPECT_LE(excluded, 2);
}

TEST_F(CudaSample, SameRowSameIdWhateverTheBatch) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int64_t vocab = 151936, batch = 64;
  std::vector<std::vector<float>> logits;
  std::vector<RowParams> rows;
  for (int64_t r = 0; r < batch; ++r) {
    logits.push_back(random_row(rng_, vocab));
    rows.push_back(random_params(rng_, vocab, r % 8 == 0));
  }
  const HostBatch all = make_batch(DType::kBF16, logits, rows);
  Status st;
  const std::vector<int32_t> together = run(*gpu_, all, &st);
  ASSERT_TRUE(st.is_ok()) << st.message();
  const std::vector<int32_t> again = run(*gpu_, all, &st);
  EXPECT_EQ(together, again);
  // Each of a few rows alone, and the batch reversed.
  for (int64_t r : {int64_t(0), int64_t(13), batch - 1}) {
    const HostBatch one = make_batch(DType::kBF16, {logits[size_t(r)]}, {rows[size_t(r)]});
    const std::vector<int32_t> alone = run(*gpu_, one, &st);
    ASSERT_TRUE(st.is_ok()) << st.message();
    EXPECT_EQ(alone[0], together[size_t(r)]) << "row " << r;
  }
  std::vector<std::vector<float>> rl(logits.rbegin(), logits.rend());
  std::vector<RowParams> rr(rows.rbegin(), rows.rend());
  const std::vector<int32_t> reversed = run(*gpu_, make_batch(DType::kBF16, rl, rr), &st);
  ASSERT_TRUE(st.is_ok()) << st.message();
  for (int64_t r = 0; r < batch; ++r) EXPECT_EQ(reversed[size_t(batch - 1 - r)], together[size_t(r)]) << "row " << r;
}

TEST_F(CudaSample, BadParametersAreRejected) {
  const int64_t vocab = 100;
  std::vector<std::vector<float>> logits(4, random_row(rng_, vocab));
  std::vector<RowParams> rows(4, random_params(rng_, vocab, false));
  rows[0].top_k = -1;
  rows[1].top_p = 0.f;
  rows[2].temperature = std::nanf("");
  // row 3 is valid
  const HostBatch h = make_batch(DType::kF32, logits, rows);
  Status st;
  const std::vector<int32_t> got = run(*gpu_, h, &st);
  ASSERT_TRUE(st.is_ok()) << st.message();  // values live on the device: flagged per row
  EXPECT_EQ(got[0], -1);
  EXPECT_EQ(got[1], -1);
  EXPECT_EQ(got[2], -1);
  EXPECT_GE(got[3], 0);
  EXPECT_LT(got[3], vocab);
  run(*cpu_, h, &st);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);

  // Shapes are checked on the host.
  DeviceTensor l = to_device(*gpu_, h.logits), t = to_device(*gpu_, h.temperature), k = to_device(*gpu_, h.top_k),
               p = to_device(*gpu_, h.top_p), u = to_device(*gpu_, h.uniform);
  DeviceTensor short_out = device_poisoned(*gpu_, DType::kI32, {3});
  Status bad = gpu_->sample({l.t, t.t, k.t, p.t, u.t, short_out.t});
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("out_ids"), std::string::npos) << bad.message();
  DeviceTensor out = device_poisoned(*gpu_, DType::kI32, {4});
  DeviceTensor f16 = device_poisoned(*gpu_, DType::kF16, {4, vocab});
  bad = gpu_->sample({f16.t, t.t, k.t, p.t, u.t, out.t});
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  bad = gpu_->sample({l.t, t.t, p.t, p.t, u.t, out.t});  // top_k given as f32
  EXPECT_NE(bad.message().find("top_k"), std::string::npos) << bad.message();
  bad = gpu_->sample({h.logits.t, t.t, k.t, p.t, u.t, out.t});  // host logits
  EXPECT_NE(bad.message().find("logits"), std::string::npos) << bad.message();
}

}  // namespace
}  // namespace moex::test
