// The CPU reference backend: host memory, and each op forwarded to its implementation in
// src/backend/cpu/<family>.cpp. Ops run synchronously, so copies and synchronize() are trivial.
#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>

#include "backend/backend.h"
#include "backend/cpu/cpu_ops.h"

namespace moex {
namespace {

// Runs an op; allocation failures inside (scratch vectors) come back as a Status, since no
// exception may leave the library.
template <class Fn>
Status guarded(const char* op, Fn&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return {StatusCode::kOutOfMemory, std::string(op) + ": out of host memory for scratch"};
  } catch (const std::exception& e) {
    return internal_error(std::string(op) + ": " + e.what());
  }
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(int num_threads, DType activation_dtype) : activation_dtype_(activation_dtype) {
    ctx_.threads = num_threads > 0 ? num_threads : omp_get_max_threads();
    cpu::f16_table();
    cpu::f8_table();
  }

  DeviceType device() const override { return DeviceType::kCpu; }
  std::string name() const override {
    return std::string(activation_dtype_ == DType::kF32 ? "cpu" : "cpu-bf16") + "(" + std::to_string(ctx_.threads) +
           " threads)";
  }
  DType activation_dtype() const override { return activation_dtype_; }

  Expected<Buffer> alloc(size_t bytes) override {
    constexpr size_t kAlign = 64;
    const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
    void* p = std::aligned_alloc(kAlign, rounded == 0 ? kAlign : rounded);
    if (p == nullptr)
      return Status(StatusCode::kOutOfMemory, "cpu alloc: could not allocate " + std::to_string(bytes) + " bytes");
    return Buffer(this, p, bytes);
  }
  void free(void* data) override { std::free(data); }
  Status copy_from_host(void* dst, const void* src, size_t bytes) override { return copy_bytes(dst, src, bytes); }
  Status copy_to_host(void* dst, const void* src, size_t bytes) override { return copy_bytes(dst, src, bytes); }
  Status fill(void* dst, uint8_t byte, size_t bytes) override {
    if (bytes == 0) return Status::ok();
    if (dst == nullptr) return invalid_argument("cpu fill: dst is null");
    std::memset(dst, byte, bytes);
    return Status::ok();
  }
  Status synchronize() override { return Status::ok(); }

  Status embedding(const ops::EmbeddingParams& p) override { return guarded("embedding", [&] { return cpu::embedding(ctx_, p); }); }
  Status copy(const ops::CopyParams& p) override { return guarded("copy", [&] { return cpu::copy(ctx_, p); }); }
  Status add(const ops::AddParams& p) override { return guarded("add", [&] { return cpu::add(ctx_, p); }); }
  Status silu_mul(const ops::SiluMulParams& p) override { return guarded("silu_mul", [&] { return cpu::silu_mul(ctx_, p); }); }
  Status random_uniform(const ops::RandomUniformParams& p) override {
    return guarded("random_uniform", [&] { return cpu::random_uniform(ctx_, p); });
  }
  Status rms_norm(const ops::RmsNormParams& p) override { return guarded("rms_norm", [&] { return cpu::rms_norm(ctx_, p); }); }
  Status matmul(const ops::MatmulParams& p) override { return guarded("matmul", [&] { return cpu::matmul(ctx_, p); }); }
  Status rope(const ops::RopeParams& p) override { return guarded("rope", [&] { return cpu::rope(ctx_, p); }); }
  Status route(const ops::RouteParams& p) override { return guarded("route", [&] { return cpu::route(ctx_, p); }); }
  Status fused_moe(const ops::FusedMoeParams& p) override { return guarded("fused_moe", [&] { return cpu::fused_moe(ctx_, p); }); }
  Status cache_write(const ops::CacheWriteParams& p) override { return guarded("cache_write", [&] { return cpu::cache_write(ctx_, p); }); }
  Status gqa_attention(const ops::GqaAttentionParams& p) override {
    return guarded("gqa_attention", [&] { return cpu::gqa_attention(ctx_, p); });
  }
  Status mla_attention(const ops::MlaAttentionParams& p) override {
    return guarded("mla_attention", [&] { return cpu::mla_attention(ctx_, p); });
  }
  Status nsa_forward(const ops::NsaForwardParams& p) override {
    return guarded("nsa_forward", [&] { return cpu::nsa_forward(ctx_, p); });
  }
  Status nsa_decode(const ops::NsaDecodeParams& p) override {
    return guarded("nsa_decode", [&] { return cpu::nsa_decode(ctx_, p); });
  }
  Status prefill_attention(const ops::PrefillAttentionParams& p) override {
    return guarded("prefill_attention", [&] { return cpu::prefill_attention(ctx_, p); });
  }
  Status sample(const ops::SampleParams& p) override { return guarded("sample", [&] { return cpu::sample(ctx_, p); }); }
  Status add_rms_norm(const ops::AddRmsNormParams& p) override {
    return guarded("add_rms_norm", [&] { return cpu::add_rms_norm(ctx_, p); });
  }
  Status qkv_rope_cache(const ops::QkvRopeCacheParams& p) override {
    return guarded("qkv_rope_cache", [&] { return cpu::qkv_rope_cache(ctx_, p); });
  }
  Status mla_rope_cache(const ops::MlaRopeCacheParams& p) override {
    return guarded("mla_rope_cache", [&] { return cpu::mla_rope_cache(ctx_, p); });
  }

 private:
  static Status copy_bytes(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return Status::ok();
    if (dst == nullptr || src == nullptr) return invalid_argument("cpu copy: null pointer");
    std::memmove(dst, src, bytes);
    return Status::ok();
  }

  cpu::Ctx ctx_;
  DType activation_dtype_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int num_threads, DType activation_dtype) {
  return std::make_unique<CpuBackend>(num_threads, activation_dtype);
}

}  // namespace moex
