// GQA over the paged K/V caches (Qwen3-MoE, Mixtral): prefill, decode and sliding window.
#include "kernels/attention/gqa/gqa_split_tc.h"

namespace moex::kernels {

cudaError_t launch_gqa_attention(const ops::GqaAttentionParams& p, Scratch& scratch, cudaStream_t stream) {
  attention::AttnArgs a{};
  const int n = int(p.q.shape[0]);
  if (n == 0) return cudaSuccess;
  a.q = p.q.data; a.s_qt = p.q.stride[0]; a.s_qh = p.q.stride[1];
  a.k = p.k_cache.data; a.s_kp = p.k_cache.stride[0]; a.s_ks = p.k_cache.stride[1]; a.s_kh = p.k_cache.stride[2];
  a.v = p.v_cache.data; a.s_vp = p.v_cache.stride[0]; a.s_vs = p.v_cache.stride[1]; a.s_vh = p.v_cache.stride[2];
  a.block_table = p.seqs.block_table.ptr<int32_t>(); a.s_bt = p.seqs.block_table.stride[0];
  a.seq_lens = p.seqs.seq_lens.ptr<int32_t>();
  a.query_start = p.seqs.query_start.ptr<int32_t>();
  a.num_seqs = int(p.seqs.seq_lens.shape[0]);
  a.page_size = p.seqs.page_size;
  a.heads_q = int(p.q.shape[1]); a.kv_heads = int(p.k_cache.shape[2]); a.group = a.heads_q / a.kv_heads;
  a.dk = int(p.q.shape[2]); a.dv = int(p.v_cache.shape[3]);
  a.v_in_k = false;
  const int64_t max_keys = p.seqs.block_table.shape[1] * int64_t(p.seqs.page_size);
  const AttnVariant variant = attn_variant();
  const attention::SplitLauncher tc = variant.gqa_tensor_cores ? attention::gqa_split_tc_launcher(p) : nullptr;
  // The tensor-core kernel streams 64-key tiles: longer splits for short rows.
  a.short_split_keys = tc != nullptr ? variant.gqa_tc_short_split_keys : variant.short_split_keys;
  a.hoist_pages = variant.hoist_pages;
  a.num_splits = attn_num_splits(max_keys, a.short_split_keys);
  a.scale = p.scale; a.window = p.sliding_window;
  a.out = p.out.data; a.s_ot = p.out.stride[0]; a.s_oh = p.out.stride[1];
  a.lse = nullptr; a.s_lse = 0;

  cudaError_t err = cudaErrorInvalidValue;
  const bool dv_small = a.dv <= attention::kThreads;
  auto run = [&](auto tq, auto tkv) {
    using TQ = decltype(tq);
    using TKV = decltype(tkv);
    dispatch_act(p.out.dtype, [&](auto to) {
      using TO = decltype(to);
      err = dv_small ? attention::run_attention<TQ, TKV, 1, TO>(a, n, scratch, stream, tc)
                     : attention::run_attention<TQ, TKV, 2, TO>(a, n, scratch, stream, tc);
    });
  };
  dispatch_act(p.q.dtype, [&](auto tq) { dispatch_act(p.k_cache.dtype, [&](auto tkv) { run(tq, tkv); }); });
  return err;
}

}  // namespace moex::kernels
