// rms_norm benchmark cases: one row per token, the model's hidden size.
#include "bench/reference.h"
#include "bench/workloads.h"

namespace moex::bench {

Expected<std::unique_ptr<Workload>> make_rms_norm_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache*) {
  MOEX_ASSIGN_OR_RETURN(int64_t rows, case_int(c, "tokens"));
  MOEX_ASSIGN_OR_RETURN(int64_t dim, case_int(c, "hidden"));
  if (rows <= 0 || dim <= 0) return invalid_argument("case " + c.name + ": tokens and hidden must be > 0");
  const DType act = be.activation_dtype();
  auto w = std::make_unique<Workload>();
  ops::RmsNormParams p;
  p.eps = float(case_double_or(c, "eps", 1e-6));
  MOEX_ASSIGN_OR_RETURN(p.x, random_tensor(be, w.get(), act, {rows, dim}, seed + 1, -2.f, 2.f));
  MOEX_ASSIGN_OR_RETURN(p.weight, random_tensor(be, w.get(), DType::kBF16, {dim}, seed + 2, 0.5f, 1.5f));
  MOEX_ASSIGN_OR_RETURN(DeviceTensor out, device_alloc(be, act, {rows, dim}));
  p.out = out.t;
  w->held.push_back(std::move(out));
  w->bytes = 2.0 * double(rows * dim) * double(dtype_size(act)) + double(dim) * 2.0;
  w->flops = 4.0 * double(rows * dim);
  w->shape = c.shape;
  w->tolerance = act == DType::kF32 ? 1e-5 : 1e-2;
  Backend* bp = &be;
  w->launch = [bp, p] { return bp->rms_norm(p); };
  w->check = [bp, p, rows, dim]() -> Expected<double> {
    const int64_t n = std::min<int64_t>(rows, 64);
    MOEX_ASSIGN_OR_RETURN(HostTensor x, download_rows(*bp, p.x, n));
    MOEX_ASSIGN_OR_RETURN(HostTensor weight, download_rows(*bp, p.weight, dim));
    MOEX_RETURN_IF_ERROR(bp->fill(p.out.data, 0xff, p.out.nbytes()));  // NaN: unwritten rows show
    MOEX_RETURN_IF_ERROR(bp->rms_norm(p));
    MOEX_ASSIGN_OR_RETURN(HostTensor got, download_rows(*bp, p.out, n));
    HostTensor ref_out(DType::kF32, {n, dim});
    ops::RmsNormParams q{.x = x.t, .weight = weight.t, .out = ref_out.t, .eps = p.eps};
    std::vector<double> want;
    if (bp->device() == DeviceType::kCpu) {
      MOEX_RETURN_IF_ERROR(ref::rms_norm(q, &want));
    } else {
      std::unique_ptr<Backend> cpu = make_cpu_backend();
      MOEX_RETURN_IF_ERROR(cpu->rms_norm(q));
      want = to_doubles(ref_out);
    }
    return rel_l2_error(got, want);
  };
  return w;
}

}  // namespace moex::bench
