// Helpers for the CUDA-vs-CPU op tests: host tensors with random data, device copies poisoned
// with NaN, and comparisons. Every test builds fresh random inputs per case.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/random.h"

namespace moex::test {

// Fast deterministic generator (SplitMix64, core/random.h); a new seed per case.
class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  uint64_t next() { return g_.next(); }
  float uniform(float lo, float hi) { return lo + (hi - lo) * float(next() >> 40) * (1.f / 16777216.f); }
  int uniform_int(int lo, int hi) { return lo + int(next() % uint64_t(hi - lo + 1)); }  // [lo, hi]

 private:
  SplitMix64 g_;
};
uint64_t fresh_seed();  // differs per call and per run; printed by the tests on failure

// Host memory plus a contiguous view of it.
struct HostTensor {
  std::vector<uint8_t> bytes;
  Tensor t;
  float get(int64_t i) const { return load_as_f32(t.data, t.dtype, size_t(i)); }
  void set(int64_t i, float v) { store_from_f32(t.data, t.dtype, size_t(i), v); }
  int32_t& i32(int64_t i) { return t.ptr<int32_t>()[i]; }
  int32_t i32(int64_t i) const { return t.ptr<int32_t>()[i]; }
};
HostTensor host_tensor(DType dtype, std::initializer_list<int64_t> shape);
HostTensor host_random(DType dtype, std::initializer_list<int64_t> shape, Rng& rng, float lo = -1.f, float hi = 1.f);
HostTensor host_i32(const std::vector<int32_t>& values);

// Device memory plus a contiguous view; poisoned (all bytes 0xff: NaN for every float type).
struct DeviceTensor {
  Buffer buf;
  Tensor t;
};
DeviceTensor to_device(Backend& gpu, const HostTensor& h);
DeviceTensor device_poisoned(Backend& gpu, DType dtype, std::initializer_list<int64_t> shape);
HostTensor to_host(Backend& gpu, const DeviceTensor& d);
// The same view (strides/offset) moved from one base pointer to another (host <-> device).
Tensor rebase(const Tensor& view, const void* from_base, void* to_base, DeviceType device);

// Relative L2 error ||a - b|| / ||b|| over all elements (inf if either has a NaN/inf).
double rel_l2(const HostTensor& a, const HostTensor& b);
// Bitwise equality of the raw bytes of row r of two [rows, ...] contiguous tensors.
bool rows_bit_equal(const HostTensor& a, int64_t ra, const HostTensor& b, int64_t rb);

// Fixture: a CPU reference and a CUDA backend; skips (with the reason) when no GPU is present.
class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override;
  std::unique_ptr<Backend> cpu_;
  std::unique_ptr<Backend> gpu_;
  uint64_t seed_ = 0;
  Rng rng_{0};
};

#define MOEX_ASSERT_OK(expr)                                   \
  do {                                                         \
    const ::moex::Status moex_st_ = (expr);                    \
    ASSERT_TRUE(moex_st_.is_ok()) << moex_st_.message();       \
  } while (0)

// The paged-sequence descriptor of an attention op from its three device tensors.
inline ops::PagedSeqs seqs_of(const Tensor& bt, const Tensor& lens, const Tensor& starts, int page_size) {
  ops::PagedSeqs p;
  p.block_table = bt;
  p.seq_lens = lens;
  p.query_start = starts;
  p.page_size = page_size;
  return p;
}

// Sets one environment knob (a kernel variant read at each call) for the scope; nullptr unsets
// it. The destructor restores the previous value (or unsets it).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    if (value != nullptr) setenv(name, value, 1);
    else unsetenv(name);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_.c_str(), old_.c_str(), 1);
    else unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_, old_;
  bool had_ = false;
};

}  // namespace moex::test
