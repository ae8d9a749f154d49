#include "bench/workloads.h"

#include <algorithm>

namespace moex::bench {

const std::vector<std::string>& workload_ops() {
  static const std::vector<std::string> kOps = {"fused_moe", "mla_decode", "gqa_decode", "rms_norm", "nsa", "prefill_attention", "matmul"};
  return kOps;
}

Expected<std::unique_ptr<Workload>> make_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache) {
  if (c.op == "fused_moe") return make_fused_moe_workload(be, c, seed, cache);
  if (c.op == "mla_decode") return make_mla_decode_workload(be, c, seed, cache);
  if (c.op == "gqa_decode") return make_gqa_decode_workload(be, c, seed, cache);
  if (c.op == "rms_norm") return make_rms_norm_workload(be, c, seed, cache);
  if (c.op == "nsa") return make_nsa_workload(be, c, seed, cache);
  if (c.op == "prefill_attention") return make_prefill_workload(be, c, seed, cache);
  if (c.op == "matmul") return make_matmul_workload(be, c, seed, cache);
  return invalid_argument("case " + c.name + ": unknown op '" + c.op + "'");
}

Expected<DType> parse_dtype(const std::string& s, const std::string& where) {
  if (s == "bf16") return DType::kBF16;
  if (s == "f32") return DType::kF32;
  if (s == "f16") return DType::kF16;
  return invalid_argument(where + ": dtype '" + s + "' is not one of bf16, f16, f32");
}

Expected<Tensor> random_tensor(Backend& be, Workload* w, DType dtype, std::initializer_list<int64_t> shape, uint64_t seed,
                               float lo, float hi) {
  MOEX_ASSIGN_OR_RETURN(DeviceTensor d, device_alloc(be, dtype, shape));
  MOEX_RETURN_IF_ERROR(fill_uniform_device(be, d.t, seed, lo, hi));
  Tensor t = d.t;
  w->held.push_back(std::move(d));
  return t;
}

Expected<Tensor> host_to_device(Backend& be, Workload* w, const HostTensor& h) {
  MOEX_ASSIGN_OR_RETURN(DeviceTensor d, upload(be, h));
  Tensor t = d.t;
  w->held.push_back(std::move(d));
  return t;
}

Expected<Tensor> cached_random_tensor(Backend& be, Workload* w, WorkloadCache* cache, const std::string& key, DType dtype,
                                      std::initializer_list<int64_t> shape, uint64_t seed, float lo, float hi) {
  if (!cache) return random_tensor(be, w, dtype, shape, seed, lo, hi);
  Tensor want = Tensor::make(nullptr, dtype, shape, be.device());
  auto it = cache->entries.find(key);
  if (it == cache->entries.end() || it->second->t.dtype != dtype || it->second->t.numel() < want.numel()) {
    if (it != cache->entries.end()) cache->entries.erase(it);  // free the old one before allocating
    auto d = std::make_shared<DeviceTensor>();
    MOEX_ASSIGN_OR_RETURN(*d, device_alloc(be, dtype, {want.numel()}));
    MOEX_RETURN_IF_ERROR(fill_uniform_device(be, d->t, seed, lo, hi));
    it = cache->entries.emplace(key, std::move(d)).first;
  }
  w->shared.push_back(it->second);
  want.data = it->second->t.data;
  return want;
}

Expected<HostTensor> download_rows(Backend& be, const Tensor& t, int64_t rows) {
  if (!t.is_contiguous() || t.ndim < 1) return invalid_argument("download_rows: " + t.shape_string() + " must be contiguous");
  HostTensor h;
  h.t = t;
  h.t.shape[0] = std::min(rows, t.shape[0]);
  h.t.device = DeviceType::kCpu;
  h.bytes.resize(h.t.nbytes());
  h.t.data = h.bytes.data();
  if (!h.bytes.empty()) MOEX_RETURN_IF_ERROR(be.copy_to_host(h.bytes.data(), t.data, h.bytes.size()));
  MOEX_RETURN_IF_ERROR(be.synchronize());
  return h;
}

}  // namespace moex::bench
