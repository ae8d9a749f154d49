// Programmatic dependent launch (sm_90+). A kernel launched with the programmatic-stream-
// serialization attribute (pdl::launch with pdl = true) may start while the kernel before it in
// the stream still runs: once every block of that kernel has called pdl::trigger() or exited.
// Such a kernel must call pdl::wait() before it reads anything earlier kernels wrote and before
// it writes anything (they may still be reading it); before the wait it may only touch inputs
// that no kernel writes (weights), e.g. prefetch them into L2. pdl::wait() returns once the
// kernel before has completed and its writes are visible; that kernel itself waited for its own
// predecessor, so the chain stays ordered. trigger() and wait() are no-ops in a kernel launched
// without the attribute (or without a programmatic predecessor), so a kernel body is the same
// either way, and nothing about the bits changes: only when blocks start.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

namespace moex::kernels::pdl {

__device__ __forceinline__ void trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// [ptr, ptr + bytes) into L2 by the bulk-copy unit (no registers, no completion to wait for).
// ptr 16-byte aligned, bytes a multiple of 16 (below 2^32).
__device__ __forceinline__ void prefetch_l2(const void* ptr, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(ptr), "r"(bytes) : "memory");
#endif
}

// Host: true on a compute-capability 9.x+ device when MOEX_PDL=1 (opt-in until measured on a
// GPU; read at every launch, for A/B runs and tests; a captured graph keeps what its launches
// saw). Off, every launch is a plain launch and trigger() / wait() do nothing. pdl.cu.
bool enabled();

// kernel<<<grid, block, smem, stream>>>(args...), with the programmatic-stream-serialization
// attribute when `pdl`.
template <class... Params, class... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                   Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace moex::kernels::pdl
