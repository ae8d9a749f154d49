// Dense matmul launcher (ops/matmul.h): bf16 x bf16 on tensor cores, other dtype mixes on a
// plain fp32 SIMT kernel. Shapes are validated by the backend before the call.
#pragma once
#include <cuda_runtime.h>

#include "ops/matmul.h"

namespace moex::kernels {

// p.x / p.w / p.out are 3-D ([b, m, k], [b, n, k], [b, m, n]); 2-D callers add a unit batch.
cudaError_t launch_matmul(const ops::MatmulParams& p, cudaStream_t stream);

namespace gemm {
// Tile of the pipelined mainloop (mma_pipeline.cuh) for many rows. kAuto lets each launcher
// choose; MOEX_GEMM_TILE=wide|wide4|square|short forces one (for benchmarking: bits never
// change) and MOEX_GEMM_TILE=wmma keeps the WMMA tiles of mma_tile.cuh.
enum class PipeTile { kAuto, kWide, kWide4, kSquare, kShort, kWmma };
PipeTile pipe_tile_override();
}  // namespace gemm

}  // namespace moex::kernels
