// Graph capture of a step on the CUDA backend (backend.h: begin_capture / end_capture). The
// backend's one stream is captured in thread-local mode, as the benchmark harness captures each
// op; what the ops launch is recorded with its arguments and addresses, so a replay computes the
// same bits as the eager step it was captured from.
#include <cuda_runtime.h>

#include "backend/cuda/cuda_backend.h"

namespace moex {
namespace {

class CudaStepGraph final : public StepGraph {
 public:
  CudaStepGraph(cudaGraphExec_t exec, cudaStream_t stream) : exec_(exec), stream_(stream) {}
  ~CudaStepGraph() override { cudaGraphExecDestroy(exec_); }
  Status replay() override { return cuda_status(cudaGraphLaunch(exec_, stream_), "cuda graph replay"); }

 private:
  cudaGraphExec_t exec_;
  cudaStream_t stream_;
};

}  // namespace

Status CudaBackend::begin_capture() {
  if (capturing_) return invalid_argument("cuda begin_capture: a capture is already open");
  MOEX_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device_), "cuda begin_capture: device"));
  MOEX_RETURN_IF_ERROR(cuda_status(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cuda begin_capture"));
  capturing_ = true;
  return Status::ok();
}

Expected<std::unique_ptr<StepGraph>> CudaBackend::end_capture() {
  if (!capturing_) return invalid_argument("cuda end_capture: no capture is open");
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
  for (void* p : deferred_frees_) cudaFreeAsync(p, stream_);
  deferred_frees_.clear();
  if (end != cudaSuccess || graph == nullptr) {
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();  // a broken capture leaves its error behind
    return cuda_status(end != cudaSuccess ? end : cudaErrorStreamCaptureInvalidated, "cuda end_capture");
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  MOEX_RETURN_IF_ERROR(cuda_status(inst, "cuda end_capture: instantiate"));
  return std::unique_ptr<StepGraph>(new CudaStepGraph(exec, stream_));
}

}  // namespace moex
