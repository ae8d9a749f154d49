// NSA mean pooling (contract: src/ops/nsa.h, branch 1): k_cmp[j] = mean of k over the tokens
// [j*d, j*d + l) of a sequence, summed in f32 in token order then divided by l once. The forward
// keeps the result in f32 scratch (as the CPU reference does); decode writes it into the
// caller's compressed cache in the cache's dtype.
#include "kernels/attention/nsa/nsa_common.cuh"

namespace moex::kernels::nsa {
namespace {

// cu_cmp[i + 1] = cu_cmp[i] + blocks of sequence i; one thread: B is small and this is O(B).
__global__ void cu_cmp_kernel(const int32_t* cu_seqlens, int num_seqs, int l, int d, int32_t* cu_cmp) {
  if (threadIdx.x != 0) return;
  int32_t acc = 0;
  cu_cmp[0] = 0;
  for (int i = 0; i < num_seqs; ++i) {
    const int len = cu_seqlens[i + 1] - cu_seqlens[i];
    acc += len >= l ? (len - l) / d + 1 : 0;
    cu_cmp[i + 1] = acc;
  }
}

// grid (tc_bound, H): block row r of the concatenated compressed rows, kv head h.
__global__ void __launch_bounds__(kThreads) pool_forward_kernel(CompressForward c) {
  const int r = blockIdx.x, h = blockIdx.y;
  const int32_t* cu_cmp = c.cu_cmp;
  if (r >= cu_cmp[c.rows.num_seqs]) return;
  const int seq = upper_index(cu_cmp, c.rows.num_seqs, r);
  const int j = r - cu_cmp[seq];
  const int64_t t0 = int64_t(c.rows.cu_seqlens[seq]) + int64_t(j) * c.block_stride;
  const float div = float(c.block_len);
  for (int e = threadIdx.x; e < c.dk + c.dv; e += kThreads) {
    const bool is_k = e < c.dk;
    const int col = is_k ? e : e - c.dk;
    const FloatRef& src = is_k ? c.k : c.v;
    const int64_t st = is_k ? c.k_st : c.v_st;
    const int64_t base = t0 * st + h * (is_k ? c.k_sh : c.v_sh) + col;
    float s = 0.f;
    for (int i = 0; i < c.block_len; ++i) s += ld(src, base + int64_t(i) * st);
    const float mean = s / div;
    if (is_k) c.k_cmp[(int64_t(r) * c.h + h) * c.dk + col] = mean;
    else c.v_cmp[(int64_t(r) * c.h + h) * c.dv + col] = mean;
  }
}

// grid (B, H): the block sequence b's new token closes, if any.
__global__ void __launch_bounds__(kThreads) pool_decode_kernel(CompressDecode c) {
  const int b = blockIdx.x, h = blockIdx.y;
  const int len = c.rows.seq_lens[b];
  const int l = c.block_len, d = c.block_stride;
  if (len < l || (len - l) % d != 0) return;
  const int j = (len - l) / d;
  int64_t kbase, vbase;
  cmp_base(c.cmp, b, h, kbase, vbase);
  for (int e = threadIdx.x; e < c.dk + c.dv; e += kThreads) {
    const bool is_k = e < c.dk;
    const int col = is_k ? e : e - c.dk;
    float s = 0.f;
    for (int i = 0; i < l; ++i) {
      int64_t ko, vo;
      raw_offsets(c.raw, b, 0, j * d + i, h, ko, vo);
      s += is_k ? ld(c.raw.k, ko + col) : ld(c.raw.v, vo + col);
    }
    const float mean = s / float(l);
    if (is_k) st(c.cmp.k, kbase + int64_t(j) * c.cmp.k_sj + col, mean);
    else st(c.cmp.v, vbase + int64_t(j) * c.cmp.v_sj + col, mean);
  }
}

}  // namespace

cudaError_t launch_compress_forward(const CompressForward& c, cudaStream_t stream) {
  cu_cmp_kernel<<<1, 32, 0, stream>>>(c.rows.cu_seqlens, c.rows.num_seqs, c.block_len, c.block_stride, c.cu_cmp);
  if (c.tc_bound > 0) pool_forward_kernel<<<dim3(c.tc_bound, c.h), kThreads, 0, stream>>>(c);
  return cudaGetLastError();
}

cudaError_t launch_compress_decode(const CompressDecode& c, cudaStream_t stream) {
  pool_decode_kernel<<<dim3(c.rows.num_seqs, c.h), kThreads, 0, stream>>>(c);
  return cudaGetLastError();
}

}  // namespace moex::kernels::nsa
