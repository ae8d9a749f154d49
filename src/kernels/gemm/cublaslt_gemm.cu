// out = alpha * x @ w^T (+ out) through cuBLASLt, for MOEX_GEMM=cublaslt. It trades the
// batch-invariance contract of moex's own GEMM for cuBLAS's speed on large shapes: cuBLASLt
// picks an algorithm (tile, split-K) per shape, so a row's bits can depend on how many rows share
// the call (docs/kernels/gemm.md, "Why not cuBLASLt by default").
//
// Row-major to cuBLASLt's column-major: out^T [n, m] = w [n, k] . x^T [k, m], i.e. D (n x m,
// ld som) = op(A) B with A = w seen as a k x n column-major matrix (ld swn) transposed, and
// B = x seen as k x m (ld sxm). Batches use strided-batch offsets. One handle per device, no
// workspace (the algorithms that need none), algorithms cached per device and shape.
#include <cublasLt.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "kernels/gemm/cublaslt_gemm.h"

namespace moex::kernels::gemm {
namespace {

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;
};

// (device, m, n, k, batch, strides of x, w and out, f32 out)
using Key = std::tuple<int, int, int, int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool>;

struct LtState {
  std::mutex mu;
  std::map<int, cublasLtHandle_t> handles;  // by device; nullptr: creation failed
  std::map<Key, Plan> plans;                 // never freed: a process runs a handful of shapes
};

LtState& state() {
  static LtState s;
  return s;
}

bool set_batch(cublasLtMatrixLayout_t l, int batch, int64_t stride) {
  int32_t count = batch;
  return cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count) ==
             CUBLAS_STATUS_SUCCESS &&
         cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride) ==
             CUBLAS_STATUS_SUCCESS;
}

Plan make_plan(cublasLtHandle_t h, const LtArgs& a) {
  Plan p;
  const cudaDataType_t out_type = a.out_f32 ? CUDA_R_32F : CUDA_R_16BF;
  if (cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) return p;
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
  cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
  if (cublasLtMatrixLayoutCreate(&p.la, CUDA_R_16BF, uint64_t(a.k), uint64_t(a.n), a.swn) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatrixLayoutCreate(&p.lb, CUDA_R_16BF, uint64_t(a.k), uint64_t(a.m), a.sxm) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatrixLayoutCreate(&p.lc, out_type, uint64_t(a.n), uint64_t(a.m), a.som) != CUBLAS_STATUS_SUCCESS)
    return p;
  if (a.batch > 1 && !(set_batch(p.la, a.batch, a.swb) && set_batch(p.lb, a.batch, a.sxb) && set_batch(p.lc, a.batch, a.sob)))
    return p;
  cublasLtMatmulPreference_t pref = nullptr;
  if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) return p;
  uint64_t no_workspace = 0;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &no_workspace, sizeof no_workspace);
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, p.op, p.la, p.lb, p.lc, p.lc, pref, 1, &heur, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) return p;
  p.algo = heur.algo;
  p.ok = true;
  return p;
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

}  // namespace

bool cublaslt_requested() {
  const char* v = std::getenv("MOEX_GEMM");
  return v != nullptr && std::strcmp(v, "cublaslt") == 0;
}

bool cublaslt_applies(const LtArgs& a) {
  const int64_t out_elems16 = a.out_f32 ? 4 : 8;  // elements per 16 bytes
  return a.m >= 1 && a.n >= 1 && a.k >= 1 && a.batch >= 1 && a.son == 1 && aligned16(a.x) && aligned16(a.w) &&
         aligned16(a.out) && a.sxm % 8 == 0 && a.swn % 8 == 0 && a.som % out_elems16 == 0 &&
         (a.batch == 1 || (a.sxb % 8 == 0 && a.swb % 8 == 0 && a.sob % out_elems16 == 0));
}

cudaError_t launch_cublaslt(const LtArgs& a, cudaStream_t stream) {
  int device = 0;
  const cudaError_t dev_err = cudaGetDevice(&device);
  if (dev_err != cudaSuccess) return dev_err;
  LtState& s = state();
  Plan plan;
  cublasLtHandle_t h = nullptr;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    auto hit = s.handles.find(device);
    if (hit == s.handles.end()) {
      cublasLtHandle_t created = nullptr;
      if (cublasLtCreate(&created) != CUBLAS_STATUS_SUCCESS) created = nullptr;
      hit = s.handles.emplace(device, created).first;
    }
    if (hit->second == nullptr) return cudaErrorNotSupported;
    h = hit->second;
    const Key key{device, a.m, a.n, a.k, a.batch, a.sxb, a.sxm, a.swb, a.swn, a.sob, a.som, a.out_f32};
    auto it = s.plans.find(key);
    if (it == s.plans.end()) it = s.plans.emplace(key, make_plan(h, a)).first;
    plan = it->second;
  }
  if (!plan.ok) return cudaErrorNotSupported;
  const float alpha = a.alpha, beta = a.accumulate ? 1.f : 0.f;
  const cublasStatus_t st = cublasLtMatmul(h, plan.op, &alpha, a.w, plan.la, a.x, plan.lb, &beta, a.out, plan.lc, a.out,
                                           plan.lc, &plan.algo, nullptr, 0, stream);
  return st == CUBLAS_STATUS_SUCCESS ? cudaGetLastError() : cudaErrorUnknown;
}

}  // namespace moex::kernels::gemm
