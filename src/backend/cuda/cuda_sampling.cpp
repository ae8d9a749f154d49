// Token sampling on the CUDA backend (contract: src/ops/sampling.h). Shapes are checked here;
// per-row values live on the device, so the kernel flags bad ones with id -1 (no host sync).
#include "backend/cuda/cuda_backend.h"
#include "kernels/sampling/sample.h"

namespace moex {
namespace {

Status fail(const std::string& what) { return invalid_argument("cuda sample: " + what); }

// A [rows] vector on the device, contiguous, of one of the given dtypes.
Status check_row_vector(const Tensor& t, const char* name, int64_t rows, std::initializer_list<DType> dtypes) {
  if (t.data == nullptr && rows > 0) return fail(std::string(name) + " is empty");
  if (t.device != DeviceType::kCuda) return fail(std::string(name) + " is not a CUDA tensor");
  if (t.ndim != 1 || t.shape[0] != rows)
    return fail(std::string(name) + " must be [" + std::to_string(rows) + "], got " + t.shape_string());
  if (rows > 1 && t.stride[0] != 1) return fail(std::string(name) + " must be contiguous " + t.shape_string());
  for (DType d : dtypes) {
    if (t.dtype == d) return Status::ok();
  }
  return fail(std::string(name) + " has the wrong dtype, got " + t.shape_string());
}

}  // namespace

Status CudaBackend::sample(const ops::SampleParams& p) {
  const Tensor& l = p.logits;
  if (l.device != DeviceType::kCuda) return fail("logits is not a CUDA tensor");
  if (l.ndim != 2) return fail("logits must be [B, vocab], got " + l.shape_string());
  if (l.dtype != DType::kF32 && l.dtype != DType::kBF16) return fail("logits must be f32 or bf16, got " + l.shape_string());
  const int64_t rows = l.shape[0], vocab = l.shape[1];
  if (rows < 0 || rows > INT32_MAX) return fail("logits has " + std::to_string(rows) + " rows");
  if (vocab < 1 || vocab > kernels::kSampleMaxVocab)
    return fail("logits vocab " + std::to_string(vocab) + " not in [1, " + std::to_string(kernels::kSampleMaxVocab) + "]");
  if (l.data == nullptr && rows > 0) return fail("logits is empty");
  if (vocab > 1 && l.stride[1] != 1) return fail("logits must be contiguous along vocab " + l.shape_string());
  MOEX_RETURN_IF_ERROR(check_row_vector(p.temperature, "temperature", rows, {DType::kF32}));
  MOEX_RETURN_IF_ERROR(check_row_vector(p.top_k, "top_k", rows, {DType::kI32}));
  MOEX_RETURN_IF_ERROR(check_row_vector(p.top_p, "top_p", rows, {DType::kF32}));
  MOEX_RETURN_IF_ERROR(check_row_vector(p.uniform, "uniform", rows, {DType::kF32, DType::kI64}));
  MOEX_RETURN_IF_ERROR(check_row_vector(p.out_ids, "out_ids", rows, {DType::kI32}));
  return cuda_status(kernels::launch_sample(p, stream_), "cuda sample: launch");
}

}  // namespace moex
