// GPU timing, steady clocks and roofline ceilings (device copy bandwidth, bf16 and fp8 GEMM
// rates through cuBLASLt). Host code plus three tiny kernels; nothing here is op-specific.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "bench/gpu_bench.h"

namespace moex::bench::gpu {
namespace {

Status cuda_error(cudaError_t e, const char* what) {
  return internal_error(std::string("gpu_bench: ") + what + ": " + cudaGetErrorString(e));
}
#define GB_CUDA(expr, what)                             \
  do {                                                  \
    cudaError_t gb_e_ = (expr);                         \
    if (gb_e_ != cudaSuccess) return cuda_error(gb_e_, what); \
  } while (0)

Status blas_error(cublasStatus_t s, const char* what) {
  return internal_error(std::string("gpu_bench: cuBLASLt ") + what + " failed with status " + std::to_string(int(s)));
}
#define GB_BLAS(expr, what)                              \
  do {                                                   \
    cublasStatus_t gb_s_ = (expr);                       \
    if (gb_s_ != CUBLAS_STATUS_SUCCESS) return blas_error(gb_s_, what); \
  } while (0)

// Device memory freed on scope exit.
struct DeviceMem {
  void* p = nullptr;
  ~DeviceMem() { if (p) cudaFree(p); }
};
struct Events {
  std::vector<cudaEvent_t> ev;
  ~Events() { for (cudaEvent_t e : ev) cudaEventDestroy(e); }
  Status create(size_t n) {
    ev.resize(n, nullptr);
    for (cudaEvent_t& e : ev) GB_CUDA(cudaEventCreate(&e), "cudaEventCreate");
    return Status::ok();
  }
};

__device__ __forceinline__ uint32_t hash32(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return uint32_t(x);
}
// Uniform in [-1, 1): never all zeros, finite in every format.
__device__ __forceinline__ float hash_uniform(uint64_t i, uint64_t seed) {
  return float(hash32(i * 0x9e3779b97f4a7c15ull + seed) >> 8) * (2.f / 16777216.f) - 1.f;
}

__global__ void fill_bf16_kernel(__nv_bfloat16* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = __float2bfloat16(hash_uniform(i, seed));
}
__global__ void fill_fp8_kernel(__nv_fp8_e4m3* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = __nv_fp8_e4m3(hash_uniform(i, seed));
}
// Copy with 16-byte accesses, grid-stride (n4 = number of uint4).
__global__ void copy_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, size_t n4) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n4; i += size_t(gridDim.x) * blockDim.x) dst[i] = src[i];
}
// Register-only FMA chains: keeps every SM busy at full clock without touching memory much.
__global__ void spin_kernel(float* sink, int iters) {
  float a = threadIdx.x * 1e-3f, b = 1.0001f, c = 0.9999f;
  for (int i = 0; i < iters; ++i) {
    a = fmaf(a, b, c);
    c = fmaf(c, b, a * 1e-7f);
  }
  if (a == 12345.f) sink[threadIdx.x] = a + c;  // practically never: keeps the loop alive
}

int sm_count() {
  int dev = 0, sms = 132;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  return sms;
}

// Median of samples in seconds.
double median_s(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n == 0 ? 0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

// Times `body` (enqueue work on stream 0) `reps` times after `warm` runs; seconds per run.
template <class Body>
Expected<std::vector<double>> time_simple(Body body, int warm, int reps) {
  for (int i = 0; i < warm; ++i) MOEX_RETURN_IF_ERROR(body());
  Events ev;
  MOEX_RETURN_IF_ERROR(ev.create(size_t(2 * reps)));
  for (int i = 0; i < reps; ++i) {
    GB_CUDA(cudaEventRecord(ev.ev[2 * i], 0), "cudaEventRecord");
    MOEX_RETURN_IF_ERROR(body());
    GB_CUDA(cudaEventRecord(ev.ev[2 * i + 1], 0), "cudaEventRecord");
  }
  GB_CUDA(cudaDeviceSynchronize(), "timed runs");
  std::vector<double> out;
  for (int i = 0; i < reps; ++i) {
    float ms = 0;
    GB_CUDA(cudaEventElapsedTime(&ms, ev.ev[2 * i], ev.ev[2 * i + 1]), "cudaEventElapsedTime");
    out.push_back(double(ms) * 1e-3);
  }
  return out;
}

// One cuBLASLt GEMM D[m, n] = A[m, k] B[k, n] ("TN": A stored k-major, as cuBLASLt needs for fp8).
Expected<double> gemm_rate(cublasLtHandle_t lt, cudaDataType_t in_type, int size, std::string* note) {
  const int64_t m = size, n = size, k = size;
  const size_t in_bytes = in_type == CUDA_R_16BF ? 2 : 1;
  DeviceMem a, b, d, ws;
  const size_t ws_bytes = size_t(64) << 20;
  GB_CUDA(cudaMalloc(&a.p, size_t(m * k) * in_bytes), "cudaMalloc A");
  GB_CUDA(cudaMalloc(&b.p, size_t(k * n) * in_bytes), "cudaMalloc B");
  GB_CUDA(cudaMalloc(&d.p, size_t(m * n) * 2), "cudaMalloc D");
  GB_CUDA(cudaMalloc(&ws.p, ws_bytes), "cudaMalloc workspace");
  int grid = sm_count() * 8;
  if (in_type == CUDA_R_16BF) {
    fill_bf16_kernel<<<grid, 256>>>(static_cast<__nv_bfloat16*>(a.p), size_t(m * k), 1);
    fill_bf16_kernel<<<grid, 256>>>(static_cast<__nv_bfloat16*>(b.p), size_t(k * n), 2);
  } else {
    fill_fp8_kernel<<<grid, 256>>>(static_cast<__nv_fp8_e4m3*>(a.p), size_t(m * k), 1);
    fill_fp8_kernel<<<grid, 256>>>(static_cast<__nv_fp8_e4m3*>(b.p), size_t(k * n), 2);
  }
  GB_CUDA(cudaGetLastError(), "fill kernels");

  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  struct Cleanup {
    cublasLtMatmulDesc_t& op;
    cublasLtMatrixLayout_t &la, &lb, &lc;
    cublasLtMatmulPreference_t& pref;
    ~Cleanup() {
      if (pref) cublasLtMatmulPreferenceDestroy(pref);
      if (lc) cublasLtMatrixLayoutDestroy(lc);
      if (lb) cublasLtMatrixLayoutDestroy(lb);
      if (la) cublasLtMatrixLayoutDestroy(la);
      if (op) cublasLtMatmulDescDestroy(op);
    }
  } cleanup{op, la, lb, lc, pref};

  GB_BLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  GB_BLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
  GB_BLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
  // Column-major: A is k x m (transposed to m x k), B is k x n, C and D are m x n.
  GB_BLAS(cublasLtMatrixLayoutCreate(&la, in_type, uint64_t(k), uint64_t(m), k), "layout A");
  GB_BLAS(cublasLtMatrixLayoutCreate(&lb, in_type, uint64_t(k), uint64_t(n), k), "layout B");
  GB_BLAS(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, uint64_t(m), uint64_t(n), m), "layout C/D");
  GB_BLAS(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate");
  uint64_t ws_limit = ws_bytes;
  GB_BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_limit, sizeof ws_limit),
          "set workspace");
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  GB_BLAS(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 1, &heur, &found), "AlgoGetHeuristic");
  if (found == 0) return unsupported(std::string("gpu_bench: cuBLASLt has no algorithm for this GEMM (") + note->c_str() + ")");
  const float alpha = 1.f, beta = 0.f;
  auto body = [&]() -> Status {
    GB_BLAS(cublasLtMatmul(lt, op, &alpha, a.p, la, b.p, lb, &beta, d.p, lc, d.p, lc, &heur.algo, ws.p, ws_bytes, 0),
            "Matmul");
    return Status::ok();
  };
  MOEX_ASSIGN_OR_RETURN(std::vector<double> t, time_simple(body, 5, 20));
  double med = median_s(t);
  double rate = 2.0 * double(m) * double(n) * double(k) / med;
  *note += " " + std::to_string(size) + "^3 median " + std::to_string(med * 1e3) + " ms";
  return rate;
}

}  // namespace

bool built_with_cuda() { return true; }

void* backend_stream(Backend& be) {
  auto* cuda = dynamic_cast<CudaBackend*>(&be);
  return cuda ? static_cast<void*>(cuda->stream()) : nullptr;
}

Expected<std::string> device_name(int device) {
  cudaDeviceProp prop{};
  GB_CUDA(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return std::string(prop.name);
}

Expected<std::vector<double>> time_launches(void* stream_ptr, const std::function<Status()>& launch, int warmup, int repeat,
                                            bool flush_l2, bool use_graph, std::string* method) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  int dev = 0, l2 = 0;
  GB_CUDA(cudaGetDevice(&dev), "cudaGetDevice");
  GB_CUDA(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev), "L2 size");
  DeviceMem flush;
  // Twice the L2 (and at least 128 MB): a write of it leaves none of the op's data cached.
  const size_t flush_bytes = std::max<size_t>(size_t(2) * size_t(l2), size_t(128) << 20);
  if (flush_l2) GB_CUDA(cudaMalloc(&flush.p, flush_bytes), "cudaMalloc L2 flush buffer");

  for (int i = 0; i < warmup; ++i) MOEX_RETURN_IF_ERROR(launch());
  GB_CUDA(cudaStreamSynchronize(stream), "warm-up");

  cudaGraphExec_t exec = nullptr;
  if (use_graph && stream != nullptr) {
    cudaGraph_t graph = nullptr;
    if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
      Status st = launch();
      cudaError_t end = cudaStreamEndCapture(stream, &graph);
      if (st.is_ok() && end == cudaSuccess && graph != nullptr) {
        if (cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) exec = nullptr;
      }
      if (graph) cudaGraphDestroy(graph);
    }
    cudaGetLastError();  // a refused capture leaves an error behind; the fallback does not care
  }
  struct ExecGuard {
    cudaGraphExec_t& e;
    ~ExecGuard() { if (e) cudaGraphExecDestroy(e); }
  } guard{exec};
  *method = exec ? "cuda-graph" : "cuda-events";

  Events ev;
  MOEX_RETURN_IF_ERROR(ev.create(size_t(2 * repeat)));
  for (int i = 0; i < repeat; ++i) {
    if (flush_l2) GB_CUDA(cudaMemsetAsync(flush.p, i & 0xff, flush_bytes, stream), "L2 flush");
    GB_CUDA(cudaEventRecord(ev.ev[2 * i], stream), "cudaEventRecord");
    if (exec) {
      GB_CUDA(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    } else {
      MOEX_RETURN_IF_ERROR(launch());
    }
    GB_CUDA(cudaEventRecord(ev.ev[2 * i + 1], stream), "cudaEventRecord");
  }
  GB_CUDA(cudaStreamSynchronize(stream), "timed runs");
  std::vector<double> out;
  for (int i = 0; i < repeat; ++i) {
    float ms = 0;
    GB_CUDA(cudaEventElapsedTime(&ms, ev.ev[2 * i], ev.ev[2 * i + 1]), "cudaEventElapsedTime");
    out.push_back(double(ms) * 1e-3);
  }
  return out;
}

Status steady_clocks(double seconds) {
  DeviceMem sink;
  GB_CUDA(cudaMalloc(&sink.p, 1024 * sizeof(float)), "cudaMalloc");
  const int grid = sm_count() * 8;
  auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
    for (int i = 0; i < 4; ++i) spin_kernel<<<grid, 256>>>(static_cast<float*>(sink.p), 1 << 16);
    GB_CUDA(cudaGetLastError(), "spin kernel launch");
    GB_CUDA(cudaDeviceSynchronize(), "spin kernel");
  }
  return Status::ok();
}

Expected<RooflineMeasurement> measure_roofline(int device, size_t copy_bytes, int gemm_size) {
  GB_CUDA(cudaSetDevice(device), "cudaSetDevice");
  RooflineMeasurement r;
  MOEX_ASSIGN_OR_RETURN(r.device_name, device_name(device));
  MOEX_RETURN_IF_ERROR(steady_clocks(1.5));

  // Copy: bytes read + bytes written per second.
  copy_bytes = copy_bytes / 16 * 16;
  {
    DeviceMem src, dst;
    GB_CUDA(cudaMalloc(&src.p, copy_bytes), "cudaMalloc copy source");
    GB_CUDA(cudaMalloc(&dst.p, copy_bytes), "cudaMalloc copy destination");
    GB_CUDA(cudaMemset(src.p, 0x3c, copy_bytes), "cudaMemset");
    auto memcpy_body = [&]() -> Status {
      GB_CUDA(cudaMemcpyAsync(dst.p, src.p, copy_bytes, cudaMemcpyDeviceToDevice, 0), "cudaMemcpyAsync");
      return Status::ok();
    };
    const int grid = sm_count() * 16;
    auto kernel_body = [&]() -> Status {
      copy_kernel<<<grid, 512>>>(static_cast<const uint4*>(src.p), static_cast<uint4*>(dst.p), copy_bytes / 16);
      GB_CUDA(cudaGetLastError(), "copy kernel");
      return Status::ok();
    };
    MOEX_ASSIGN_OR_RETURN(std::vector<double> t1, time_simple(memcpy_body, 3, 20));
    MOEX_ASSIGN_OR_RETURN(std::vector<double> t2, time_simple(kernel_body, 3, 20));
    double bw1 = 2.0 * double(copy_bytes) / median_s(t1), bw2 = 2.0 * double(copy_bytes) / median_s(t2);
    r.copy_bytes_per_s = std::max(bw1, bw2);
    r.notes += "copy " + std::to_string(copy_bytes >> 20) + " MiB: cudaMemcpy " + std::to_string(bw1 / 1e12) +
               " TB/s, kernel " + std::to_string(bw2 / 1e12) + " TB/s; ";
  }

  cublasLtHandle_t lt = nullptr;
  GB_BLAS(cublasLtCreate(&lt), "Create");
  struct LtGuard {
    cublasLtHandle_t h;
    ~LtGuard() { cublasLtDestroy(h); }
  } lt_guard{lt};
  std::string note = "bf16";
  MOEX_ASSIGN_OR_RETURN(r.bf16_flops_per_s, gemm_rate(lt, CUDA_R_16BF, gemm_size, &note));
  r.notes += note + "; ";
  note = "fp8 e4m3";
  Expected<double> fp8 = gemm_rate(lt, CUDA_R_8F_E4M3, gemm_size, &note);
  if (fp8) {
    r.fp8_flops_per_s = *fp8;
    r.notes += note;
  } else {
    r.notes += "fp8 not measured: " + fp8.status().message();  // e.g. a GPU before sm_89
  }
  return r;
}

}  // namespace moex::bench::gpu
