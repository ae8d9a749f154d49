// A backend: device memory plus one entry point per op family. The CPU backend is the
// reference every other backend is tested against. Model code talks only to this interface,
// so adding a device never touches a forward pass.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "core/status.h"
#include "core/tensor.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/fused.h"
#include "ops/fused_moe.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/nsa.h"
#include "ops/prefill_attention.h"
#include "ops/rope.h"
#include "ops/routing.h"
#include "ops/sampling.h"

namespace moex {

class Backend;

// Owning device allocation; freed through the backend that made it.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend* owner, void* data, size_t bytes) : owner_(owner), data_(data), bytes_(bytes) {}
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { reset(); }
  void reset();
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  Backend* owner_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// A captured sequence of ops (a CUDA graph): replay() issues it again on the backend's stream,
// with the same kernels, arguments and addresses as when it was captured.
class StepGraph {
 public:
  virtual ~StepGraph() = default;
  virtual Status replay() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceType device() const = 0;
  virtual std::string name() const = 0;
  // dtype of hidden states between ops: f32 on the CPU reference, bf16 on GPUs.
  virtual DType activation_dtype() const = 0;

  // Memory. Copies are ordered with the ops (the backend's stream); synchronize() waits for all.
  virtual Expected<Buffer> alloc(size_t bytes) = 0;
  virtual void free(void* data) = 0;
  virtual Status copy_from_host(void* dst, const void* src, size_t bytes) = 0;
  virtual Status copy_to_host(void* dst, const void* src, size_t bytes) = 0;
  virtual Status fill(void* dst, uint8_t byte, size_t bytes) = 0;
  virtual Status synchronize() = 0;

  // Ops: see src/ops/*.h for the contract and shapes of each.
  virtual Status embedding(const ops::EmbeddingParams& p) = 0;
  virtual Status copy(const ops::CopyParams& p) = 0;
  virtual Status add(const ops::AddParams& p) = 0;
  virtual Status silu_mul(const ops::SiluMulParams& p) = 0;
  virtual Status rms_norm(const ops::RmsNormParams& p) = 0;
  virtual Status matmul(const ops::MatmulParams& p) = 0;
  virtual Status rope(const ops::RopeParams& p) = 0;
  virtual Status route(const ops::RouteParams& p) = 0;
  virtual Status fused_moe(const ops::FusedMoeParams& p) = 0;
  virtual Status cache_write(const ops::CacheWriteParams& p) = 0;
  virtual Status gqa_attention(const ops::GqaAttentionParams& p) = 0;
  virtual Status mla_attention(const ops::MlaAttentionParams& p) = 0;
  virtual Status nsa_forward(const ops::NsaForwardParams& p) = 0;
  virtual Status nsa_decode(const ops::NsaDecodeParams& p) = 0;
  virtual Status prefill_attention(const ops::PrefillAttentionParams& p) = 0;
  virtual Status sample(const ops::SampleParams& p) = 0;
  virtual Status random_uniform(const ops::RandomUniformParams& p) = 0;
  // Graph capture: the ops issued between begin_capture() and end_capture() are recorded, not
  // run. Nothing may allocate (alloc(), a growing scratch block) or wait for the device in
  // between; such an op fails and the capture must still be ended (its result then discarded).
  // Backends without graphs refuse.
  virtual Status begin_capture() { return unsupported(name() + ": no graph capture"); }
  virtual Expected<std::unique_ptr<StepGraph>> end_capture() { return unsupported(name() + ": no graph capture"); }
  // Changes whenever memory that a captured graph may address moves (the CUDA backend's scratch
  // block grows, freeing the old one): a graph captured under another value must not be replayed.
  virtual uint64_t capture_generation() const { return 0; }

  // Fused small ops (ops/fused.h): the values of their defining op sequence on this backend.
  virtual Status add_rms_norm(const ops::AddRmsNormParams& p) = 0;
  virtual Status qkv_rope_cache(const ops::QkvRopeCacheParams& p) = 0;
  virtual Status mla_rope_cache(const ops::MlaRopeCacheParams& p) = 0;
};

// The CPU reference backend (always available). activation_dtype kBF16 keeps hidden states in
// bf16 between ops (and weights in bf16), rounding where a bf16 GPU rounds: a reference for
// GPU runs whose only difference from the fp32 reference is bf16 itself.
std::unique_ptr<Backend> make_cpu_backend(int num_threads = 0, DType activation_dtype = DType::kF32);
// The CUDA backend, or an error naming why it is unavailable (not built, no device).
Expected<std::unique_ptr<Backend>> make_cuda_backend(int device_index = 0);

}  // namespace moex
