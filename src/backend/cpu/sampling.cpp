// Token sampling on the CPU backend (contract: src/ops/sampling.h) and the per-row rule the
// host Sampler shares (sampling.h).
#include "backend/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cpu/cpu_ops.h"
#include "core/random.h"

namespace moex::cpu {

int32_t argmax_row(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = i;  // strict: ties keep the lower id
  }
  return int32_t(best);
}

int32_t sample_row(const float* logits, int64_t vocab, float temperature, int top_k, float top_p, double uniform,
                   SampleRowScratch* scratch, SampleRowInfo* info) {
  if (temperature <= 0.f) return argmax_row(logits, vocab);
  std::vector<int32_t>& order = scratch->order;
  std::vector<double>& probs = scratch->probs;

  // Candidates sorted by logit, descending; equal logits keep id order.
  order.resize(size_t(vocab));
  std::iota(order.begin(), order.end(), 0);
  int64_t keep = vocab;
  if (top_k > 0 && top_k < vocab) {
    keep = top_k;
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
  } else {
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  }

  // Softmax over the kept candidates at this temperature (fp64 for a stable cumulative sum).
  probs.resize(size_t(keep));
  const double inv_t = 1.0 / double(temperature);
  const double max_logit = double(logits[order[0]]);
  double total = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    probs[size_t(i)] = std::exp((double(logits[order[size_t(i)]]) - max_logit) * inv_t);
    total += probs[size_t(i)];
  }
  double margin = 1.0;
  // top-p: the smallest prefix whose probability reaches top_p (at least one token).
  if (top_p < 1.f) {
    double cumulative = 0.0;
    int64_t cut = keep;
    for (int64_t i = 0; i < keep; ++i) {
      const double before = cumulative;
      cumulative += probs[size_t(i)] / total;
      if (cumulative >= double(top_p)) {
        cut = i + 1;
        margin = std::min({margin, cumulative - double(top_p), double(top_p) - before});
        break;
      }
    }
    keep = cut;
    total = 0.0;
    for (int64_t i = 0; i < keep; ++i) total += probs[size_t(i)];
  }
  const double r = uniform * total;
  double acc = 0.0;
  int64_t pick = keep - 1;
  for (int64_t i = 0; i < keep; ++i) {
    const double before = acc;
    acc += probs[size_t(i)];
    if (r < acc) {
      pick = i;
      margin = std::min({margin, (acc - r) / total, (r - before) / total});
      break;
    }
  }
  if (info) {
    info->margin = margin;
    info->kept = keep;
  }
  return order[size_t(pick)];
}

namespace {

constexpr const char* kOp = "sample";

Status check_row_vector(const char* name, const Tensor& t, int64_t rows, std::initializer_list<DType> dtypes) {
  MOEX_RETURN_IF_ERROR(check_tensor(kOp, name, t, 1));
  MOEX_RETURN_IF_ERROR(check_dim(kOp, name, t, 0, rows));
  for (DType d : dtypes) {
    if (t.dtype == d) return Status::ok();
  }
  return invalid_argument(std::string("sample: ") + name + " has the wrong dtype, got " + shape_of(t));
}

template <class T>
T row_value(const Tensor& t, int64_t i) {
  return *reinterpret_cast<const T*>(t.at({i}));
}

// This row's draw in [0, 1): an f32 value, or raw SplitMix64 bits mapped as the Sampler does.
double row_uniform(const Tensor& u, int64_t i) {
  if (u.dtype == DType::kI64) return unit_double(uint64_t(row_value<int64_t>(u, i)));
  return double(row_value<float>(u, i));
}

}  // namespace

Status sample(const Ctx& ctx, const ops::SampleParams& p) {
  MOEX_RETURN_IF_ERROR(check_tensor(kOp, "logits", p.logits, 2));
  if (p.logits.dtype != DType::kF32 && p.logits.dtype != DType::kBF16)
    return invalid_argument("sample: logits must be f32 or bf16, got " + shape_of(p.logits));
  MOEX_RETURN_IF_ERROR(check_inner_contiguous(kOp, "logits", p.logits));
  const int64_t rows = p.logits.shape[0], vocab = p.logits.shape[1];
  if (vocab < 1 || vocab > INT32_MAX) return invalid_argument("sample: logits vocab must be in [1, 2^31), got " + shape_of(p.logits));
  MOEX_RETURN_IF_ERROR(check_row_vector("temperature", p.temperature, rows, {DType::kF32}));
  MOEX_RETURN_IF_ERROR(check_row_vector("top_k", p.top_k, rows, {DType::kI32}));
  MOEX_RETURN_IF_ERROR(check_row_vector("top_p", p.top_p, rows, {DType::kF32}));
  MOEX_RETURN_IF_ERROR(check_row_vector("uniform", p.uniform, rows, {DType::kF32, DType::kI64}));
  MOEX_RETURN_IF_ERROR(check_row_vector("out_ids", p.out_ids, rows, {DType::kI32}));
  for (int64_t b = 0; b < rows; ++b) {
    const std::string row = "[" + std::to_string(b) + "]";
    const float t = row_value<float>(p.temperature, b), top_p = row_value<float>(p.top_p, b);
    if (std::isnan(t)) return invalid_argument("sample: temperature" + row + " is NaN");
    if (row_value<int32_t>(p.top_k, b) < 0) return invalid_argument("sample: top_k" + row + " is negative");
    if (!(top_p > 0.f)) return invalid_argument("sample: top_p" + row + " must be > 0");
    const double u = row_uniform(p.uniform, b);
    if (t > 0.f && !(u >= 0.0 && u < 1.0)) return invalid_argument("sample: uniform" + row + " must be in [0, 1)");
  }

#pragma omp parallel num_threads(ctx.threads)
  {
    SampleRowScratch scratch;
    std::vector<float> row;  // [vocab] f32 copy of a bf16 row
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < rows; ++b) {
      const float* logits = reinterpret_cast<const float*>(p.logits.at({b}));
      if (p.logits.dtype == DType::kBF16) {
        row.resize(size_t(vocab));
        const void* src = p.logits.at({b});
        for (int64_t v = 0; v < vocab; ++v) row[size_t(v)] = load_as_f32(src, DType::kBF16, size_t(v));
        logits = row.data();
      }
      const int32_t id = sample_row(logits, vocab, row_value<float>(p.temperature, b), row_value<int32_t>(p.top_k, b),
                                    row_value<float>(p.top_p, b), row_uniform(p.uniform, b), &scratch);
      *reinterpret_cast<int32_t*>(p.out_ids.at({b})) = id;
    }
  }
  return Status::ok();
}

}  // namespace moex::cpu
