// The CUDA backend: one device, one stream, stream-ordered scratch. Ops validate on the host
// (returning a Status that names the tensor at fault), then launch; none waits for the device.
#pragma once
#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "kernels/common/scratch.h"

namespace moex {

class CudaBackend final : public Backend, private kernels::Scratch {
 public:
  static Expected<std::unique_ptr<Backend>> create(int device_index);
  ~CudaBackend() override;

  DeviceType device() const override { return DeviceType::kCuda; }
  std::string name() const override { return name_; }
  DType activation_dtype() const override { return DType::kBF16; }
  cudaStream_t stream() const { return stream_; }

  Expected<Buffer> alloc(size_t bytes) override;
  void free(void* data) override;
  Status copy_from_host(void* dst, const void* src, size_t bytes) override;
  Status copy_to_host(void* dst, const void* src, size_t bytes) override;
  Status fill(void* dst, uint8_t byte, size_t bytes) override;
  Status synchronize() override;
  Status begin_capture() override;                          // cuda_graph.cpp
  uint64_t capture_generation() const override { return scratch_generation_; }
  Expected<std::unique_ptr<StepGraph>> end_capture() override;  // cuda_graph.cpp

  Status embedding(const ops::EmbeddingParams& p) override;
  Status copy(const ops::CopyParams& p) override;
  Status add(const ops::AddParams& p) override;
  Status silu_mul(const ops::SiluMulParams& p) override;
  Status rms_norm(const ops::RmsNormParams& p) override;
  Status matmul(const ops::MatmulParams& p) override;
  Status rope(const ops::RopeParams& p) override;
  Status route(const ops::RouteParams& p) override;
  Status fused_moe(const ops::FusedMoeParams& p) override;
  Status cache_write(const ops::CacheWriteParams& p) override;
  Status gqa_attention(const ops::GqaAttentionParams& p) override;
  Status mla_attention(const ops::MlaAttentionParams& p) override;
  Status nsa_forward(const ops::NsaForwardParams& p) override;  // cuda_nsa.cpp
  Status nsa_decode(const ops::NsaDecodeParams& p) override;    // cuda_nsa.cpp
  Status prefill_attention(const ops::PrefillAttentionParams& p) override;
  Status random_uniform(const ops::RandomUniformParams& p) override;  // cuda_prefill_attention.cpp
  Status sample(const ops::SampleParams& p) override;           // cuda_sampling.cpp
  Status add_rms_norm(const ops::AddRmsNormParams& p) override;      // cuda_fused_ops.cpp
  Status qkv_rope_cache(const ops::QkvRopeCacheParams& p) override;  // cuda_fused_ops.cpp
  Status mla_rope_cache(const ops::MlaRopeCacheParams& p) override;  // cuda_fused_ops.cpp

 private:
  CudaBackend(int device, cudaStream_t stream, unsigned int* counters, std::string name)
      : device_(device), stream_(stream), name_(std::move(name)), counters_(counters) {}
  void* get(size_t bytes) override;  // kernels::Scratch
  unsigned int* counters() override { return counters_; }  // kernels::Scratch

  int device_;
  cudaStream_t stream_;
  std::string name_;
  void* scratch_ = nullptr;  // grown stream-ordered (cudaMallocAsync), never shrunk
  size_t scratch_bytes_ = 0;
  uint64_t scratch_generation_ = 0;  // bumped whenever scratch_ moves (capture_generation)
  unsigned int* counters_;   // [kernels::kCountersTotal], zeroed at creation
  bool capturing_ = false;   // between begin_capture and end_capture: no alloc, no scratch growth
  std::vector<void*> deferred_frees_;  // buffers released during a capture
};

// "cuda <op>: <what> (<cuda error string>)" when err is not cudaSuccess.
Status cuda_status(cudaError_t err, const char* what);

}  // namespace moex
