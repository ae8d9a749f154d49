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
// change) and MOEX_GEMM_TILE=wmma keeps the WMMA tiles of mma_tile.cuh. wgmma|wgsq force the
// wgmma tiles (wgmma_pipeline.cuh: WgWide 128x256, WgSquare 128x128) where the device has them
// (else the mma.sync tile of the same shape).
enum class PipeTile { kAuto, kWide, kWide4, kSquare, kShort, kWmma, kWgWide, kWgSquare };
PipeTile pipe_tile_override();

// The wgmma mainloop for many rows (dense m > 64, MoE > 64 rows per expert): used by default
// when kWgmmaDefault, on compute capability 9.0 only; MOEX_GEMM_WGMMA=0|1 overrides (read at
// every launch). docs/kernels/gemm.md has the bits comparison behind the default.
inline constexpr bool kWgmmaDefault = true;
bool wgmma_available();
bool wgmma_enabled();
// The mma.sync tile of a wgmma tile's shape (identity for the others): where wgmma is missing.
PipeTile pipe_equivalent(PipeTile t);
}  // namespace gemm

}  // namespace moex::kernels
