// Dense matmul benchmark cases: out [tokens, n] = x [tokens, k] @ w [n, k]^T, the projections of
// a decode or prefill step (q|k|v, o_proj, routers, lm_head). Floor: the weight, x and out bytes
// over the copy rate, or the flops over the GEMM rate.
#include <cstdlib>
#include <string>

#include "bench/workloads.h"

namespace moex::bench {

Expected<std::unique_ptr<Workload>> make_matmul_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache) {
  MOEX_ASSIGN_OR_RETURN(int64_t rows, case_int(c, "tokens"));
  MOEX_ASSIGN_OR_RETURN(int64_t n, case_int(c, "n"));
  MOEX_ASSIGN_OR_RETURN(int64_t k, case_int(c, "k"));
  if (rows <= 0 || n <= 0 || k <= 0) return invalid_argument("case " + c.name + ": tokens, n and k must be > 0");
  MOEX_ASSIGN_OR_RETURN(DType out_dtype, parse_dtype(case_string_or(c, "out", "bf16"), "case " + c.name + " out"));
  const DType act = be.activation_dtype();
  if (act == DType::kF32) out_dtype = DType::kF32;  // the CPU backend computes in f32
  auto w = std::make_unique<Workload>();
  ops::MatmulParams p;
  MOEX_ASSIGN_OR_RETURN(p.x, random_tensor(be, w.get(), act, {rows, k}, seed + 1, -1.f, 1.f));
  const std::string key = "matmul_w_" + std::to_string(n) + "x" + std::to_string(k);
  MOEX_ASSIGN_OR_RETURN(p.w, cached_random_tensor(be, w.get(), cache, key, DType::kBF16, {n, k}, seed + 2, -0.05f, 0.05f));
  MOEX_ASSIGN_OR_RETURN(DeviceTensor out, device_alloc(be, out_dtype, {rows, n}));
  p.out = out.t;
  w->held.push_back(std::move(out));
  w->bytes = double(n * k) * 2.0 + double(rows * k) * double(dtype_size(act)) + double(rows * n) * double(dtype_size(out_dtype));
  w->flops = 2.0 * double(rows) * double(n) * double(k);
  w->shape = c.shape;
  w->shape["out"] = out_dtype == DType::kF32 ? "f32" : "bf16";
  const char* gemm = std::getenv("MOEX_GEMM");  // MOEX_GEMM=cublaslt runs are told apart in the record
  w->shape["gemm"] = gemm != nullptr && std::string(gemm) == "cublaslt" ? "cublaslt" : "moex";
  w->tolerance = act == DType::kF32 ? 1e-5 : 1e-2;
  Backend* bp = &be;
  w->launch = [bp, p] { return bp->matmul(p); };
  // The first rows (each row's result does not depend on the others) against a double-precision
  // sum over the same inputs, on any backend.
  w->check = [bp, p, rows, n, k]() -> Expected<double> {
    const int64_t m = std::min<int64_t>(rows, 4);
    MOEX_ASSIGN_OR_RETURN(HostTensor x, download_rows(*bp, p.x, m));
    MOEX_ASSIGN_OR_RETURN(HostTensor wt, download_rows(*bp, p.w, n));
    MOEX_RETURN_IF_ERROR(bp->fill(p.out.data, 0xff, p.out.nbytes()));  // NaN: unwritten rows show
    MOEX_RETURN_IF_ERROR(bp->matmul(p));
    MOEX_ASSIGN_OR_RETURN(HostTensor got, download_rows(*bp, p.out, m));
    const std::vector<double> xd = to_doubles(x), wd = to_doubles(wt);  // [m, k], [n, k]
    std::vector<double> want(size_t(m * n));                           // [m, n]
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < n; ++c) {
        double acc = 0;
        for (int64_t i = 0; i < k; ++i) acc += xd[size_t(r * k + i)] * wd[size_t(c * k + i)];
        want[size_t(r * n + c)] = acc;
      }
    return rel_l2_error(got, want);
  };
  return w;
}

}  // namespace moex::bench
