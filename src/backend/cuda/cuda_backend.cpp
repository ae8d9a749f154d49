// Device, memory and stream of the CUDA backend. The ops live in cuda_ops.cpp.
#include "backend/cuda/cuda_backend.h"

namespace moex {

Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::ok();
  const StatusCode code = err == cudaErrorMemoryAllocation ? StatusCode::kOutOfMemory : StatusCode::kInternal;
  return {code, std::string(what) + " (" + cudaGetErrorName(err) + ": " + cudaGetErrorString(err) + ")"};
}

Expected<std::unique_ptr<Backend>> CudaBackend::create(int device_index) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return unsupported("cuda backend: no CUDA device available (" + std::string(cudaGetErrorString(err)) + ")");
  }
  if (device_index < 0 || device_index >= count)
    return invalid_argument("cuda backend: device index " + std::to_string(device_index) + " out of range [0, " +
                            std::to_string(count) + ")");
  MOEX_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device_index), "cuda backend: cudaSetDevice"));
  cudaDeviceProp prop{};
  MOEX_RETURN_IF_ERROR(cuda_status(cudaGetDeviceProperties(&prop, device_index), "cuda backend: device properties"));
  if (prop.major < 8)
    return unsupported("cuda backend: device " + std::string(prop.name) + " is sm_" + std::to_string(prop.major * 10 + prop.minor) +
                       "; bf16 tensor cores (sm_80+) are required");
  // Keep freed memory in the pool instead of returning it to the driver at each sync.
  cudaMemPool_t pool = nullptr;
  if (cudaDeviceGetDefaultMemPool(&pool, device_index) == cudaSuccess) {
    uint64_t keep_all = UINT64_MAX;
    cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all);
  }
  cudaStream_t stream = nullptr;
  MOEX_RETURN_IF_ERROR(cuda_status(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cuda backend: stream"));
  unsigned int* counters = nullptr;
  const size_t counter_bytes = kernels::kCountersTotal * sizeof(unsigned int);
  err = cudaMalloc(&counters, counter_bytes);
  // On the backend's stream (non-blocking: not ordered after the legacy stream), and waited
  // for, so every kernel that counts in them finds zeros.
  if (err == cudaSuccess) err = cudaMemsetAsync(counters, 0, counter_bytes, stream);
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
  if (err != cudaSuccess) {
    if (counters != nullptr) cudaFree(counters);
    cudaStreamDestroy(stream);
    return cuda_status(err, "cuda backend: arrival counters");
  }
  return std::unique_ptr<Backend>(
      new CudaBackend(device_index, stream, counters, std::string("cuda:") + std::to_string(device_index) + " " + prop.name));
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  if (scratch_) cudaFreeAsync(scratch_, stream_);
  cudaStreamSynchronize(stream_);
  cudaFree(counters_);
  cudaStreamDestroy(stream_);
}

void* CudaBackend::get(size_t bytes) {
  if (bytes <= scratch_bytes_) return scratch_;
  if (capturing_) return nullptr;  // a graph must not own the block: the op fails, the capture is dropped
  constexpr size_t kGranule = size_t(1) << 20;
  const size_t want = (bytes + kGranule - 1) / kGranule * kGranule;
  if (scratch_) cudaFreeAsync(scratch_, stream_);
  ++scratch_generation_;  // graphs captured with the old block must not replay
  scratch_ = nullptr;
  scratch_bytes_ = 0;
  if (cudaMallocAsync(&scratch_, want, stream_) != cudaSuccess) {
    scratch_ = nullptr;
    return nullptr;
  }
  scratch_bytes_ = want;
  return scratch_;
}

Expected<Buffer> CudaBackend::alloc(size_t bytes) {
  void* p = nullptr;
  if (bytes == 0) return Buffer(this, nullptr, 0);
  if (capturing_) return invalid_argument("cuda alloc of " + std::to_string(bytes) + " bytes during a graph capture");
  // Stream-ordered allocation from the device's pool: per-step scratch buffers are reused
  // without a device-wide synchronisation (cudaFree would synchronise the device).
  MOEX_RETURN_IF_ERROR(cuda_status(cudaMallocAsync(&p, bytes, stream_), ("cuda alloc of " + std::to_string(bytes) + " bytes").c_str()));
  return Buffer(this, p, bytes);
}

void CudaBackend::free(void* data) {
  if (!data) return;
  if (capturing_) {  // not into the graph: freed once the capture ends
    deferred_frees_.push_back(data);
    return;
  }
  cudaFreeAsync(data, stream_);
}

Status CudaBackend::copy_from_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::ok();
  return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_), "cuda copy_from_host");
}

Status CudaBackend::copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::ok();
  MOEX_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "cuda copy_to_host"));
  // The caller reads dst right after: wait for this copy (and everything before it).
  return cuda_status(cudaStreamSynchronize(stream_), "cuda copy_to_host: stream");
}

Status CudaBackend::fill(void* dst, uint8_t byte, size_t bytes) {
  if (bytes == 0) return Status::ok();
  return cuda_status(cudaMemsetAsync(dst, byte, bytes, stream_), "cuda fill");
}

Status CudaBackend::synchronize() {
  return cuda_status(cudaStreamSynchronize(stream_), "cuda synchronize (an earlier op failed on the device)");
}

Expected<std::unique_ptr<Backend>> make_cuda_backend(int device_index) { return CudaBackend::create(device_index); }

}  // namespace moex
