// Absorbed MLA over the latent cache (DeepSeek-V2/V3): one latent head of kv_lora_rank + rope
// features shared by all query heads; values are the first kv_lora_rank features.
#include "kernels/attention/common/paged_attention.cuh"

namespace moex::kernels {

cudaError_t launch_mla_attention(const ops::MlaAttentionParams& p, Scratch& scratch, cudaStream_t stream) {
  attention::AttnArgs a{};
  const int n = int(p.q.shape[0]);
  if (n == 0) return cudaSuccess;
  a.q = p.q.data; a.s_qt = p.q.stride[0]; a.s_qh = p.q.stride[1];
  a.k = p.cache.data; a.s_kp = p.cache.stride[0]; a.s_ks = p.cache.stride[1]; a.s_kh = 0;
  a.v = p.cache.data; a.s_vp = p.cache.stride[0]; a.s_vs = p.cache.stride[1]; a.s_vh = 0;
  a.block_table = p.seqs.block_table.ptr<int32_t>(); a.s_bt = p.seqs.block_table.stride[0];
  a.seq_lens = p.seqs.seq_lens.ptr<int32_t>();
  a.query_start = p.seqs.query_start.ptr<int32_t>();
  a.num_seqs = int(p.seqs.seq_lens.shape[0]);
  a.page_size = p.seqs.page_size;
  a.heads_q = int(p.q.shape[1]); a.kv_heads = 1; a.group = a.heads_q;
  a.dk = int(p.q.shape[2]); a.dv = p.kv_lora_rank;
  a.v_in_k = true;
  const int64_t max_keys = p.seqs.block_table.shape[1] * int64_t(p.seqs.page_size);
  const AttnVariant variant = attn_variant();
  a.short_split_keys = variant.short_split_keys;
  a.hoist_pages = variant.hoist_pages;
  a.num_splits = attn_num_splits(max_keys, a.short_split_keys);
  a.scale = p.scale; a.window = 0;
  a.out = p.out.data; a.s_ot = p.out.stride[0]; a.s_oh = p.out.stride[1];
  a.lse = p.lse.empty() ? nullptr : p.lse.ptr<float>();
  a.s_lse = p.lse.empty() ? 0 : p.lse.stride[0];

  cudaError_t err = cudaErrorInvalidValue;
  auto run = [&](auto tq, auto tkv) {
    using TQ = decltype(tq);
    using TKV = decltype(tkv);
    dispatch_act(p.out.dtype, [&](auto to) {
      using TO = decltype(to);
      err = attention::run_attention<TQ, TKV, kAttnMaxValueDim / attention::kThreads, TO>(a, n, scratch, stream);
    });
  };
  dispatch_act(p.q.dtype, [&](auto tq) { dispatch_act(p.cache.dtype, [&](auto tkv) { run(tq, tkv); }); });
  return err;
}

}  // namespace moex::kernels
