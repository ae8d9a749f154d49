// wgmma MLA decode for head counts that fill 64-row tiles (64 and 128 query heads per KV head):
// bf16 q [n, heads, 576] over a bf16 paged latent cache [pages, page_size, 576], values = the
// first 512 features. Selected inside launch_mla_decode_tc (mla_decode_tc.cu) by
// mla_decode_wg_selected(); MOEX_MLA_WG=0|1 overrides the default. See docs/kernels/mla.md.
#pragma once
#include <cuda_runtime.h>

#include "kernels/common/scratch.h"
#include "ops/attention.h"

namespace moex::kernels {

// Keys per split of the wgmma kernel: a constant (MOEX_MLA_WG_SPLIT, a power of two in
// [64, 8192], default 1024), so a row's split depends only on its own length.
int mla_wg_split_keys();

// True when the wgmma kernel runs these params: the tensor-core kernel's conditions (checked by
// the caller), a bf16 cache, heads a multiple of 64, an sm_90a device, and MOEX_MLA_WG (read at
// every call) not 0 (default: see kMlaWgDefault in mla_decode_wg.cu). Depends on dtypes, the
// head count and the device only, never on the batch.
bool mla_decode_wg_selected(const ops::MlaAttentionParams& p);

cudaError_t launch_mla_decode_wg(const ops::MlaAttentionParams& p, Scratch& scratch, cudaStream_t stream);

}  // namespace moex::kernels
