// PTX wrappers of the wgmma MLA decode kernel (mla_decode_wg.cu) that the GEMM wrappers
// (gemm/wgmma_ptx.cuh) do not have: m64n32k16 for S = Q K^T (both operands K-major) and the
// descriptor of the N-major V operand (O += P V, V being the K tile itself, by
// gemm::wg::wgmma_m64n256k16<1>). PTX ISA 9.7.15 (wgmma); sm_90a only.
#pragma once
#include <cstdint>

namespace moex::kernels::mla_wg {

// 9.7.15.5.1.2 matrix descriptor of an N-major (MN-major) operand with the 128-byte swizzle,
// canonical layout ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO)) in 16-byte units: each 128-byte row
// holds 64 consecutive n of one k, rows of consecutive k 128 bytes apart, 8 rows an atom;
// LBO = bytes between 64-wide n blocks, SBO = bytes between 8-row k groups. The K tile of the
// kernel is exactly this for V: per 64-feature block, key j at j * 128 bytes.
__device__ __forceinline__ uint64_t desc_sw128_mn(uint32_t smem_addr, uint32_t lbo, uint32_t sbo) {
  uint64_t d = uint64_t((smem_addr & 0x3FFFF) >> 4);
  d |= uint64_t((lbo >> 4) & 0x3FFF) << 16;
  d |= uint64_t((sbo >> 4) & 0x3FFF) << 32;
  d |= uint64_t(1) << 62;  // 128-byte swizzle
  return d;
}

// 9.7.15.5.2 m64n32k16 .f32.bf16.bf16, A and B K-major descriptors: d += a @ b.
__device__ __forceinline__ void wgmma_m64n32k16(float (&d)[16], uint64_t desc_a, uint64_t desc_b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
      "}, %16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(desc_a), "l"(desc_b), "r"(1));
#else
  (void)d; (void)desc_a; (void)desc_b;
  __trap();  // sm_90a only: the launcher selects this kernel only there
#endif
}

}  // namespace moex::kernels::mla_wg
