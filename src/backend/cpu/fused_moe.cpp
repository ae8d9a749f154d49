// fused_moe: the routed experts of an MoE layer (contract in src/ops/fused_moe.h).
//
// Tokens are processed in chunks; within a chunk the (token, slot) pairs are grouped by local
// expert so each expert's weights stream once for all its tokens. Grouping changes no result:
//   h[pair, i]  = silu(dot(x[t], gate_e[i])) * dot(x[t], up_e[i])   (fp32; dots in the 16-lane
//                 order of cpu_common.h), rounded to x's dtype as a bf16 GPU kernel stores it
//   y[pair, c]  = dot(h[pair], down_e[c])
//   p[pair, c]  = w[t, j] * y[pair, c] in fp32 (one product, no FMA), rounded to out's dtype:
//                 the weighted partial the GPU's GEMM 2 epilogue stores (kernels/moe/moe_combine.cuh)
//   out[t, c]   = sum over slots j = 0..top_k-1 in slot order of p[(t, j), c], fp32, starting
//                 from 0; slots whose expert is not local (expert_map -1) are skipped; one
//                 rounding to out's dtype.
#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace moex::cpu {
namespace {

constexpr int64_t kTokenChunk = 64;
constexpr int64_t kColBlock = 16;

inline float round_as(DType t, float v) {
  switch (t) {
    case DType::kBF16: return round_to_bf16(v);
    case DType::kF16: return f16_to_f32(f32_to_f16(v));
    default: return v;
  }
}

struct Item {
  int64_t expert;  // local expert index
  int64_t c0;      // first output column of the block
};

}  // namespace

Status fused_moe(const Ctx& ctx, const ops::FusedMoeParams& p) {
  constexpr const char* op = "fused_moe";
  MOEX_RETURN_IF_ERROR(check_tensor(op, "x", p.x, 2));
  MOEX_RETURN_IF_ERROR(check_output(op, "x", p.x));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "topk_ids", p.topk_ids, 2));
  MOEX_RETURN_IF_ERROR(check_i32(op, "topk_ids", p.topk_ids));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "topk_weights", p.topk_weights, 2));
  if (p.topk_weights.dtype != DType::kF32)
    return invalid_argument("fused_moe: topk_weights must be f32, got " + shape_of(p.topk_weights));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "w13", p.w13, 3));
  MOEX_RETURN_IF_ERROR(check_float(op, "w13", p.w13));
  MOEX_RETURN_IF_ERROR(check_inner_contiguous(op, "w13", p.w13));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "w2", p.w2, 3));
  MOEX_RETURN_IF_ERROR(check_float(op, "w2", p.w2));
  MOEX_RETURN_IF_ERROR(check_inner_contiguous(op, "w2", p.w2));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "out", p.out, 2));
  MOEX_RETURN_IF_ERROR(check_output(op, "out", p.out));
  const int64_t n = p.x.shape[0], hidden = p.x.shape[1], k = p.topk_ids.shape[1];
  const int64_t local = p.w13.shape[0], inter = p.w2.shape[2];
  MOEX_RETURN_IF_ERROR(check_dim(op, "topk_ids", p.topk_ids, 0, n));
  MOEX_RETURN_IF_ERROR(check_dim(op, "topk_weights", p.topk_weights, 0, n));
  MOEX_RETURN_IF_ERROR(check_dim(op, "topk_weights", p.topk_weights, 1, k));
  MOEX_RETURN_IF_ERROR(check_dim(op, "w13", p.w13, 1, 2 * inter));
  MOEX_RETURN_IF_ERROR(check_dim(op, "w13", p.w13, 2, hidden));
  MOEX_RETURN_IF_ERROR(check_dim(op, "w2", p.w2, 0, local));
  MOEX_RETURN_IF_ERROR(check_dim(op, "w2", p.w2, 1, hidden));
  MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, 0, n));
  MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, 1, hidden));

  // Global expert id -> local index (-1: not here).
  std::vector<int32_t> map;
  if (p.expert_map.empty()) {
    map.resize(static_cast<size_t>(local));
    for (int64_t e = 0; e < local; ++e) map[size_t(e)] = int32_t(e);
  } else {
    MOEX_RETURN_IF_ERROR(check_tensor(op, "expert_map", p.expert_map, 1));
    MOEX_RETURN_IF_ERROR(check_i32(op, "expert_map", p.expert_map));
    map.resize(static_cast<size_t>(p.expert_map.shape[0]));
    for (size_t e = 0; e < map.size(); ++e) {
      map[e] = i32_at(p.expert_map, int64_t(e));
      if (map[e] < -1 || map[e] >= local)
        return invalid_argument("fused_moe: expert_map[" + std::to_string(e) + "] = " + std::to_string(map[e]) +
                                " is outside [-1, " + std::to_string(local) + ")");
    }
  }
  const int64_t num_experts = int64_t(map.size());
  auto id_at = [&](int64_t t, int64_t j) {
    return p.topk_ids.ptr<const int32_t>()[t * p.topk_ids.stride[0] + j * p.topk_ids.stride[1]];
  };
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t id = id_at(t, j);
      if (id < 0 || id >= num_experts)
        return invalid_argument("fused_moe: topk_ids[" + std::to_string(t) + ", " + std::to_string(j) + "] = " +
                                std::to_string(id) + " is outside [0, " + std::to_string(num_experts) + ")");
    }
  if (n == 0) return Status::ok();

  const size_t w13s = dtype_size(p.w13.dtype), w2s = dtype_size(p.w2.dtype);
  const int64_t max_pairs = kTokenChunk * k;
  std::vector<float> hbuf(static_cast<size_t>(max_pairs * inter));  // [pairs, inter]
  std::vector<float> ybuf(static_cast<size_t>(max_pairs * hidden));  // [pairs, hidden]
  // Per thread: gate and up results [max_pairs, kColBlock] each, weight-conversion scratch.
  const int64_t per_thread = 2 * max_pairs * kColBlock + kScratchFloats;
  std::vector<float> scratch(static_cast<size_t>(ctx.threads * per_thread));
  std::vector<float> acc(static_cast<size_t>(ctx.threads * hidden));  // [threads, hidden]
  F32Rows xr;
  std::vector<int64_t> pair_local(static_cast<size_t>(max_pairs));  // [pairs] local expert or -1
  std::vector<int64_t> start(static_cast<size_t>(local + 1)), order(static_cast<size_t>(max_pairs));
  std::vector<const float*> xptr(static_cast<size_t>(max_pairs)), hptr(static_cast<size_t>(max_pairs));
  std::vector<Item> items;

  for (int64_t t0 = 0; t0 < n; t0 += kTokenChunk) {
    const int64_t tn = std::min(kTokenChunk, n - t0), pairs = tn * k;
    load_rows(p.x.slice(0, t0, t0 + tn), tn, hidden, p.x.stride[0], &xr, ctx);
    // Counting sort of pairs by local expert: order[start[e] .. start[e+1]) are expert e's pairs.
    std::fill(start.begin(), start.end(), 0);
    for (int64_t q = 0; q < pairs; ++q) {
      pair_local[size_t(q)] = map[size_t(id_at(t0 + q / k, q % k))];
      if (pair_local[size_t(q)] >= 0) ++start[size_t(pair_local[size_t(q)] + 1)];
    }
    for (int64_t e = 0; e < local; ++e) start[size_t(e + 1)] += start[size_t(e)];
    {
      std::vector<int64_t> fillpos(start.begin(), start.end() - 1);
      for (int64_t q = 0; q < pairs; ++q)
        if (pair_local[size_t(q)] >= 0) order[size_t(fillpos[size_t(pair_local[size_t(q)])]++)] = q;
    }
    for (int64_t s = 0; s < start[size_t(local)]; ++s) {
      const int64_t q = order[size_t(s)];
      xptr[size_t(s)] = xr.row[size_t(q / k)];
      hptr[size_t(s)] = hbuf.data() + q * inter;
    }

    // Stage 1: h for every pair, items = (expert, block of intermediate columns).
    items.clear();
    for (int64_t e = 0; e < local; ++e)
      if (start[size_t(e + 1)] > start[size_t(e)])
        for (int64_t c0 = 0; c0 < inter; c0 += kColBlock) items.push_back({e, c0});
    parallel_for(ctx, int64_t(items.size()), kColBlock * hidden * 2 * k, [&](int64_t it, int th) {
      const Item item = items[size_t(it)];
      const int64_t s0 = start[size_t(item.expert)], np = start[size_t(item.expert + 1)] - s0;
      const int64_t c1 = std::min(inter, item.c0 + kColBlock), nc = c1 - item.c0;
      float* gate = scratch.data() + th * per_thread;  // [np, nc]
      float* up = gate + max_pairs * kColBlock;          // [np, nc]
      float* conv = up + max_pairs * kColBlock;        // [kScratchFloats]
      // [2 * inter, hidden] of this expert
      const char* w = static_cast<const char*>(p.w13.data) + item.expert * p.w13.stride[0] * int64_t(w13s);
      gemm_cols(xptr.data() + s0, np, w, p.w13.dtype, p.w13.stride[1], hidden, item.c0, c1, gate, nc, conv);
      gemm_cols(xptr.data() + s0, np, w, p.w13.dtype, p.w13.stride[1], hidden, inter + item.c0, inter + c1, up, nc,
                conv);
      for (int64_t s = 0; s < np; ++s) {
        float* h = hbuf.data() + order[size_t(s0 + s)] * inter;  // [inter]
        for (int64_t c = 0; c < nc; ++c) h[item.c0 + c] = round_as(p.x.dtype, silu(gate[s * nc + c]) * up[s * nc + c]);
      }
    });

    // Stage 2: y = down_e h, items = (expert, block of hidden columns).
    items.clear();
    for (int64_t e = 0; e < local; ++e)
      if (start[size_t(e + 1)] > start[size_t(e)])
        for (int64_t c0 = 0; c0 < hidden; c0 += kColBlock) items.push_back({e, c0});
    parallel_for(ctx, int64_t(items.size()), kColBlock * inter * k, [&](int64_t it, int th) {
      const Item item = items[size_t(it)];
      const int64_t s0 = start[size_t(item.expert)], np = start[size_t(item.expert + 1)] - s0;
      const int64_t c1 = std::min(hidden, item.c0 + kColBlock), nc = c1 - item.c0;
      float* y = scratch.data() + th * per_thread;  // [np, nc]
      float* conv = y + 2 * max_pairs * kColBlock;  // [kScratchFloats]
      // [hidden, inter] of this expert
      const char* w = static_cast<const char*>(p.w2.data) + item.expert * p.w2.stride[0] * int64_t(w2s);
      gemm_cols(hptr.data() + s0, np, w, p.w2.dtype, p.w2.stride[1], inter, item.c0, c1, y, nc, conv);
      for (int64_t s = 0; s < np; ++s) {
        float* dst = ybuf.data() + order[size_t(s0 + s)] * hidden;  // [hidden]
        for (int64_t c = 0; c < nc; ++c) dst[item.c0 + c] = y[s * nc + c];
      }
    });

    // Stage 3: weighted sum over slots in slot order, one rounding.
    const size_t os = dtype_size(p.out.dtype);
    parallel_for(ctx, tn, k * hidden, [&](int64_t tl, int th) {
      float* a = acc.data() + th * hidden;  // [hidden]
      std::fill(a, a + hidden, 0.f);
      const int64_t t = t0 + tl;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t q = tl * k + j;
        if (pair_local[size_t(q)] < 0) continue;
        const float w = p.topk_weights.ptr<const float>()[t * p.topk_weights.stride[0] + j * p.topk_weights.stride[1]];
        const float* y = ybuf.data() + q * hidden;  // [hidden]
        for (int64_t c = 0; c < hidden; ++c) {
          const float prod = w * y[c];  // rounded to fp32 here: never fused with the add below
          a[c] += round_as(p.out.dtype, prod);
        }
      }
      store_row(static_cast<char*>(p.out.data) + t * p.out.stride[0] * int64_t(os), p.out.dtype, p.out.stride[1], hidden, a);
    });
  }
  return Status::ok();
}

}  // namespace moex::cpu
