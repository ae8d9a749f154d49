// fused_moe benchmark cases: routed (and optionally shared) experts of one MoE layer.
// Shared experts are appended as always-selected experts of weight 1 (ids experts..), which is
// how a fused kernel serves them; the floor counts only the experts actually hit.
#include <cmath>
#include <cstring>
#include <map>

#include "bench/reference.h"
#include "bench/synthetic_routing.h"
#include "bench/workloads.h"

namespace moex::bench {

Expected<std::unique_ptr<Workload>> make_fused_moe_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache) {
  MOEX_ASSIGN_OR_RETURN(int64_t experts, case_int(c, "experts"));
  MOEX_ASSIGN_OR_RETURN(int64_t top_k, case_int(c, "top_k"));
  MOEX_ASSIGN_OR_RETURN(int64_t hidden, case_int(c, "hidden"));
  MOEX_ASSIGN_OR_RETURN(int64_t inter, case_int(c, "inter"));
  MOEX_ASSIGN_OR_RETURN(int64_t n, case_int(c, "tokens"));
  const int64_t shared = case_int_or(c, "shared", 0);
  if (experts <= 0 || top_k <= 0 || top_k > experts || hidden <= 0 || inter <= 0 || n <= 0 || shared < 0)
    return invalid_argument("case " + c.name + ": need experts >= top_k > 0, hidden, inter, tokens > 0, shared >= 0");
  RoutingSpec spec{.tokens = n, .experts = experts, .top_k = top_k, .shared = shared, .skew = case_double_or(c, "skew", 0),
                   .seed = seed};
  if (!routing_mode_from_name(case_string_or(c, "routing", "random"), &spec.mode))
    return invalid_argument("case " + c.name + ": routing must be random, one_expert, few_experts or all");
  MOEX_ASSIGN_OR_RETURN(DType wd, parse_dtype(case_string_or(c, "weight_dtype", "bf16"), "case " + c.name));
  const Routing routing = make_routing(spec);
  const DType act = be.activation_dtype();
  const int64_t all = experts + shared, slots = routing.slots;

  auto w = std::make_unique<Workload>();
  HostTensor ids(DType::kI32, {n, slots}), weights(DType::kF32, {n, slots});
  std::memcpy(ids.bytes.data(), routing.ids.data(), routing.ids.size() * 4);
  std::memcpy(weights.bytes.data(), routing.weights.data(), routing.weights.size() * 4);
  ops::FusedMoeParams p;
  MOEX_ASSIGN_OR_RETURN(p.x, random_tensor(be, w.get(), act, {n, hidden}, seed + 1, -1.f, 1.f));
  MOEX_ASSIGN_OR_RETURN(p.topk_ids, host_to_device(be, w.get(), ids));
  MOEX_ASSIGN_OR_RETURN(p.topk_weights, host_to_device(be, w.get(), weights));
  // Scaled so gate/up and the output stay O(1) whatever hidden and inter are.
  const float a13 = 2.f * std::sqrt(3.f / float(hidden)), a2 = 2.f * std::sqrt(3.f / float(inter));
  MOEX_ASSIGN_OR_RETURN(p.w13, cached_random_tensor(be, w.get(), cache, "moe.w13", wd, {all, 2 * inter, hidden}, seed + 2, -a13, a13));
  MOEX_ASSIGN_OR_RETURN(p.w2, cached_random_tensor(be, w.get(), cache, "moe.w2", wd, {all, hidden, inter}, seed + 3, -a2, a2));
  MOEX_ASSIGN_OR_RETURN(DeviceTensor out, device_alloc(be, act, {n, hidden}));
  p.out = out.t;
  w->held.push_back(std::move(out));

  const double wsize = double(dtype_size(wd)), asize = double(dtype_size(act));
  w->bytes = double(routing.experts_hit) * 3.0 * double(hidden * inter) * wsize + 2.0 * double(n * hidden) * asize +
             double(n * slots) * 8.0;
  w->flops = 2.0 * double(n * slots) * 3.0 * double(hidden * inter);
  w->shape = c.shape;
  w->shape["experts_hit"] = routing.experts_hit;
  w->shape["slots"] = slots;
  w->tolerance = act == DType::kF32 ? 1e-4 : 1e-2;
  Backend* bp = &be;
  w->launch = [bp, p] { return bp->fused_moe(p); };

  // Check the first few tokens: copy the experts they use into a compact host set.
  w->check = [bp, p, routing, n, slots, hidden, inter, wd, act]() -> Expected<double> {
    const int64_t rows = std::min<int64_t>(n, 8);
    std::map<int32_t, int32_t> compact;
    for (int64_t i = 0; i < rows * slots; ++i) compact.emplace(routing.ids[size_t(i)], int32_t(compact.size()));
    const int64_t m = int64_t(compact.size());
    HostTensor w13(wd, {m, 2 * inter, hidden}), w2(wd, {m, hidden, inter});
    HostTensor ids(DType::kI32, {rows, slots}), weights(DType::kF32, {rows, slots});
    const size_t s13 = size_t(2 * inter * hidden) * dtype_size(wd), s2 = size_t(hidden * inter) * dtype_size(wd);
    for (auto [global, local] : compact) {
      MOEX_RETURN_IF_ERROR(bp->copy_to_host(w13.bytes.data() + size_t(local) * s13, p.w13.at({global}), s13));
      MOEX_RETURN_IF_ERROR(bp->copy_to_host(w2.bytes.data() + size_t(local) * s2, p.w2.at({global}), s2));
    }
    for (int64_t i = 0; i < rows * slots; ++i) {
      ids.ptr<int32_t>()[i] = compact.at(routing.ids[size_t(i)]);
      weights.ptr<float>()[i] = routing.weights[size_t(i)];
    }
    MOEX_ASSIGN_OR_RETURN(HostTensor x, download_rows(*bp, p.x, rows));
    MOEX_RETURN_IF_ERROR(bp->fill(p.out.data, 0xff, p.out.nbytes()));  // NaN: unwritten rows show
    MOEX_RETURN_IF_ERROR(bp->fused_moe(p));
    MOEX_ASSIGN_OR_RETURN(HostTensor got, download_rows(*bp, p.out, rows));
    HostTensor ref_out(DType::kF32, {rows, hidden});
    ops::FusedMoeParams q{.x = x.t, .topk_ids = ids.t, .topk_weights = weights.t, .w13 = w13.t, .w2 = w2.t,
                          .expert_map = Tensor{}, .out = ref_out.t};
    std::vector<double> want;
    if (bp->device() == DeviceType::kCpu) {
      MOEX_RETURN_IF_ERROR(ref::fused_moe(q, &want));
    } else {
      std::unique_ptr<Backend> cpu = make_cpu_backend();
      MOEX_RETURN_IF_ERROR(cpu->fused_moe(q));
      want = to_doubles(ref_out);
    }
    (void)act;
    return rel_l2_error(got, want);
  };
  return w;
}

}  // namespace moex::bench
