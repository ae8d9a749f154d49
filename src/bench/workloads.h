// One benchmark case made runnable: inputs with random data on the backend, the op launch, the
// bytes and flops its floor counts, and a check against the reference (the CPU backend for a
// GPU, the naive double-precision code of bench/reference.h for the CPU backend).
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "bench/cases.h"
#include "bench/host_tensor.h"
#include "core/status.h"

namespace moex::bench {

struct Workload {
  double bytes = 0;             // bytes the floor counts: read + written
  double flops = 0;
  nlohmann::json shape;         // the resolved shape (defaults filled in, experts hit...)
  std::function<Status()> launch;
  // Relative L2 error of the output against the reference on a slice of the case (the first
  // tokens or sequences: each one's result does not depend on the others by contract).
  std::function<Expected<double>()> check;
  double tolerance = 0;
  std::vector<DeviceTensor> held;  // inputs and outputs, alive as long as the workload
  std::vector<std::shared_ptr<DeviceTensor>> shared;  // big inputs borrowed from a WorkloadCache
};

// Big random inputs (expert weights, KV caches) kept from one case to the next: the cases of a
// file differ mostly in tokens or batch, and refilling 20 GB of DeepSeek-V3 experts per case
// would dominate the run. An entry is reused when it is at least as large as asked for; the
// values are random either way. Destroy the cache before the backend.
struct WorkloadCache {
  std::map<std::string, std::shared_ptr<DeviceTensor>> entries;  // key -> flat tensor
};

// The ops `moex bench ops --op` knows.
const std::vector<std::string>& workload_ops();
// `cache` may be null (nothing kept between cases).
Expected<std::unique_ptr<Workload>> make_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache);

Expected<std::unique_ptr<Workload>> make_fused_moe_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache);
Expected<std::unique_ptr<Workload>> make_mla_decode_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache);
Expected<std::unique_ptr<Workload>> make_gqa_decode_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache);
Expected<std::unique_ptr<Workload>> make_rms_norm_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache);
Expected<std::unique_ptr<Workload>> make_nsa_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache);
Expected<std::unique_ptr<Workload>> make_matmul_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache);
Expected<std::unique_ptr<Workload>> make_prefill_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache);

// Shared helpers of the workload files.
Expected<DType> parse_dtype(const std::string& s, const std::string& where);  // "bf16", "f32", "f16"
// A device tensor with uniform random values in [lo, hi), kept alive by `w`.
Expected<Tensor> random_tensor(Backend& be, Workload* w, DType dtype, std::initializer_list<int64_t> shape,
                               uint64_t seed, float lo, float hi);
Expected<Tensor> host_to_device(Backend& be, Workload* w, const HostTensor& h);
// A contiguous tensor of `shape` at the start of a cached random buffer named `key` (values in
// [lo, hi) when first filled); without a cache, a fresh random tensor.
Expected<Tensor> cached_random_tensor(Backend& be, Workload* w, WorkloadCache* cache, const std::string& key, DType dtype,
                                      std::initializer_list<int64_t> shape, uint64_t seed, float lo, float hi);
// The first `rows` rows of a contiguous device tensor, copied to the host.
Expected<HostTensor> download_rows(Backend& be, const Tensor& t, int64_t rows);

}  // namespace moex::bench
