// Running test-set cases: random inputs per case (seeded by the case), outputs poisoned with
// NaN, unused KV pages filled with NaN, then target vs reference by relative L2 error.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "bench/host_tensor.h"
#include "bench/reference.h"
#include "bench/test_sets.h"

namespace moex::bench {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

HostTensor convert(const HostTensor& h, DType to) {
  HostTensor out;
  out.t = h.t;
  out.t.dtype = to;
  int64_t st = 1;
  for (int d = out.t.ndim - 1; d >= 0; --d) { out.t.stride[d] = st; st *= out.t.shape[d]; }
  out.bytes.assign(size_t(h.numel()) * dtype_size(to), 0);
  out.t.data = out.bytes.data();
  for (int64_t i = 0; i < h.numel(); ++i) store_from_f32(out.bytes.data(), to, size_t(i), load_as_f32(h.bytes.data(), h.t.dtype, size_t(i)));
  return out;
}

// Device copies of host inputs, kept alive while an op runs.
struct Uploads {
  std::vector<DeviceTensor> held;
  Expected<Tensor> put(Backend& be, const HostTensor& h) {
    MOEX_ASSIGN_OR_RETURN(DeviceTensor d, upload(be, h));
    Tensor t = d.t;
    held.push_back(std::move(d));
    return t;
  }
  Expected<Tensor> put_nan(Backend& be, DType dtype, std::initializer_list<int64_t> shape) {
    HostTensor h(dtype, shape);
    fill_nan(&h);
    return put(be, h);
  }
};

CaseResult failed(CaseResult r, const Status& s) {
  r.passed = false;
  r.rel_err = kInf;
  r.error = s.message();
  return r;
}

// Error of lse relative to max(|lse|, 1) per element: lse of a length-1 sequence can be ~0.
double lse_error(const std::vector<double>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return kInf;
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return kInf;
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += std::max(want[i] * want[i], 1.0);
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// ---- fused MoE ----

struct MoeInputs {
  HostTensor x, ids, weights, w13, w2, expert_map;
  int64_t n = 0, hidden = 0;
};

MoeInputs make_moe_inputs(const MoeTestCase& c, DType act) {
  MoeInputs in;
  Routing routing = make_routing({.tokens = c.tokens, .experts = c.experts, .top_k = c.top_k, .shared = c.shared,
                                  .mode = c.routing, .skew = c.skew, .seed = c.seed});
  const int64_t n = c.tokens, slots = routing.slots, all = c.experts + c.shared;
  const int64_t local = c.partial_expert_map ? (all + 1) / 2 : all;
  in.n = n;
  in.hidden = c.hidden;
  in.x = HostTensor(act, {n, c.hidden});
  fill_uniform(&in.x, c.seed * 5 + 1, -1.f, 1.f);
  in.ids = HostTensor(DType::kI32, {n, slots});
  std::memcpy(in.ids.bytes.data(), routing.ids.data(), routing.ids.size() * 4);
  in.weights = HostTensor(DType::kF32, {n, slots});
  std::memcpy(in.weights.bytes.data(), routing.weights.data(), routing.weights.size() * 4);
  // Scaled so that gate/up and the output stay O(1) whatever hidden and inter are.
  float a13 = std::sqrt(3.f / float(c.hidden)) * 2.f, a2 = std::sqrt(3.f / float(c.inter)) * 2.f;
  in.w13 = HostTensor(c.weight_dtype, {local, 2 * c.inter, c.hidden});
  fill_uniform(&in.w13, c.seed * 5 + 2, -a13, a13);
  in.w2 = HostTensor(c.weight_dtype, {local, c.hidden, c.inter});
  fill_uniform(&in.w2, c.seed * 5 + 3, -a2, a2);
  if (c.partial_expert_map) {
    in.expert_map = HostTensor(DType::kI32, {all});
    for (int64_t e = 0; e < all; ++e) in.expert_map.ptr<int32_t>()[e] = e % 2 == 0 ? int32_t(e / 2) : -1;
  }
  return in;
}

ops::FusedMoeParams host_moe_params(const MoeInputs& in, const HostTensor& out) {
  return {.x = in.x.t, .topk_ids = in.ids.t, .topk_weights = in.weights.t, .w13 = in.w13.t, .w2 = in.w2.t,
          .expert_map = in.expert_map.t, .out = out.t};
}

Expected<HostTensor> run_moe_on(Backend& be, const MoeInputs& in) {
  Uploads up;
  HostTensor x = convert(in.x, be.activation_dtype());
  ops::FusedMoeParams p;
  MOEX_ASSIGN_OR_RETURN(p.x, up.put(be, x));
  MOEX_ASSIGN_OR_RETURN(p.topk_ids, up.put(be, in.ids));
  MOEX_ASSIGN_OR_RETURN(p.topk_weights, up.put(be, in.weights));
  // A bf16 backend keeps expert weights in bf16, as the model loader stores them there
  // (WeightLoader::storage_dtype): f32/f16 cases run on the bf16-rounded weights, checked
  // against the reference on the original ones.
  const bool bf16_weights = be.activation_dtype() == DType::kBF16;
  HostTensor w13_bf16, w2_bf16;
  if (bf16_weights) {
    w13_bf16 = convert(in.w13, DType::kBF16);
    w2_bf16 = convert(in.w2, DType::kBF16);
  }
  MOEX_ASSIGN_OR_RETURN(p.w13, up.put(be, bf16_weights ? w13_bf16 : in.w13));
  MOEX_ASSIGN_OR_RETURN(p.w2, up.put(be, bf16_weights ? w2_bf16 : in.w2));
  if (!in.expert_map.t.empty()) {
    MOEX_ASSIGN_OR_RETURN(p.expert_map, up.put(be, in.expert_map));
  }
  MOEX_ASSIGN_OR_RETURN(p.out, up.put_nan(be, be.activation_dtype(), {in.n, in.hidden}));
  MOEX_RETURN_IF_ERROR(be.fused_moe(p));
  return download(be, p.out);
}

// ---- MLA decode ----

struct MlaInputs {
  HostTensor q, cache, block_table, seq_lens, query_start;
  int64_t n = 0, max_pages = 0;
  float scale = 0.1f;
};

MlaInputs make_mla_inputs(const MlaTestCase& c, DType act) {
  MlaInputs in;
  Rng rng(c.seed);
  const int64_t batch = int64_t(c.kv_lens.size()), dim = c.kv_lora_rank + c.rope_dim, ps = c.page_size;
  in.n = batch * c.q_len;
  std::vector<int64_t> pages_of(static_cast<size_t>(batch));
  int64_t used_pages = 0;
  for (int64_t b = 0; b < batch; ++b) {
    pages_of[size_t(b)] = (c.kv_lens[size_t(b)] + ps - 1) / ps;
    used_pages += pages_of[size_t(b)];
    in.max_pages = std::max(in.max_pages, pages_of[size_t(b)]);
  }
  const int64_t num_pages = used_pages + 3;  // three pages no sequence owns
  std::vector<int32_t> perm(static_cast<size_t>(num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  for (int64_t i = num_pages - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng.below(i + 1))]);

  in.block_table = HostTensor(DType::kI32, {batch, in.max_pages});  // unused entries 0
  in.seq_lens = HostTensor(DType::kI32, {batch});
  in.query_start = HostTensor(DType::kI32, {batch + 1});
  in.cache = HostTensor(act, {num_pages, ps, dim});
  fill_nan(&in.cache);  // every slot no sequence owns stays NaN
  int64_t next = 0;
  for (int64_t b = 0; b < batch; ++b) {
    in.seq_lens.ptr<int32_t>()[b] = c.kv_lens[size_t(b)];
    in.query_start.ptr<int32_t>()[b] = int32_t(b * c.q_len);
    for (int64_t pg = 0; pg < pages_of[size_t(b)]; ++pg) {
      int32_t page = perm[size_t(next++)];
      in.block_table.ptr<int32_t>()[b * in.max_pages + pg] = page;
      int64_t slots = std::min<int64_t>(ps, c.kv_lens[size_t(b)] - pg * ps);
      for (int64_t s = 0; s < slots * dim; ++s)
        store_from_f32(in.cache.bytes.data(), act, size_t(page * ps * dim + s), float(rng.uniform(-1, 1)));
    }
  }
  in.query_start.ptr<int32_t>()[batch] = int32_t(in.n);
  in.q = HostTensor(act, {in.n, c.heads, dim});
  fill_uniform(&in.q, c.seed * 7 + 1, -1.f, 1.f);
  in.scale = float(rng.uniform(0.05, 0.15));
  return in;
}

// The e4m3 latent cache of an fp8 case: every slot quantized by the CPU backend's cache_write
// (one power-of-two scale per token). NaN slots stay NaN bytes (amax ignores NaN).
struct Fp8Latents {
  HostTensor f8, scale;  // [pages, page_size, dim] e4m3, [pages, page_size] f32
};

Expected<Fp8Latents> quantize_latents(const HostTensor& cache) {
  const int64_t pages = cache.t.shape[0], ps = cache.t.shape[1], dim = cache.t.shape[2], slots = pages * ps;
  Fp8Latents q{HostTensor(DType::kF8E4M3, {pages, ps, dim}), HostTensor(DType::kF32, {pages, ps})};
  HostTensor map(DType::kI32, {slots});
  std::iota(map.ptr<int32_t>(), map.ptr<int32_t>() + slots, 0);
  ops::CacheWriteParams w;
  w.src = cache.t.reshape({slots, dim});
  w.slot_mapping = map.t;
  w.dst = q.f8.t.reshape({slots, dim});
  w.dst_scale = q.scale.t.reshape({slots});
  MOEX_RETURN_IF_ERROR(make_cpu_backend()->cache_write(w));
  return q;
}

ops::MlaAttentionParams mla_params(const MlaTestCase& c) {
  ops::MlaAttentionParams p;
  p.kv_lora_rank = int(c.kv_lora_rank);
  p.seqs.page_size = c.page_size;
  return p;
}

struct MlaOutputs {
  HostTensor out, lse;
};

// `f8`: run on this e4m3 cache + scales instead of in.cache.
Expected<MlaOutputs> run_mla_on(Backend& be, const MlaTestCase& c, const MlaInputs& in, const Fp8Latents* f8 = nullptr) {
  Uploads up;
  ops::MlaAttentionParams p = mla_params(c);
  p.scale = in.scale;
  MOEX_ASSIGN_OR_RETURN(p.q, up.put(be, convert(in.q, be.activation_dtype())));
  if (f8) {
    MOEX_ASSIGN_OR_RETURN(p.cache, up.put(be, f8->f8));
    MOEX_ASSIGN_OR_RETURN(p.cache_scale, up.put(be, f8->scale));
  } else {
    MOEX_ASSIGN_OR_RETURN(p.cache, up.put(be, convert(in.cache, be.activation_dtype())));
  }
  MOEX_ASSIGN_OR_RETURN(p.seqs.block_table, up.put(be, in.block_table));
  MOEX_ASSIGN_OR_RETURN(p.seqs.seq_lens, up.put(be, in.seq_lens));
  MOEX_ASSIGN_OR_RETURN(p.seqs.query_start, up.put(be, in.query_start));
  MOEX_ASSIGN_OR_RETURN(p.out, up.put_nan(be, be.activation_dtype(), {in.n, c.heads, c.kv_lora_rank}));
  if (c.want_lse) {
    MOEX_ASSIGN_OR_RETURN(p.lse, up.put_nan(be, DType::kF32, {in.n, c.heads}));
  }
  MOEX_RETURN_IF_ERROR(be.mla_attention(p));
  MlaOutputs o;
  MOEX_ASSIGN_OR_RETURN(o.out, download(be, p.out));
  if (c.want_lse) {
    MOEX_ASSIGN_OR_RETURN(o.lse, download(be, p.lse));
  }
  return o;
}

}  // namespace

double tolerance_for(DType out_dtype) {
  switch (out_dtype) {
    case DType::kF32: return 1e-4;
    case DType::kF16: return 5e-3;
    default: return 1e-2;
  }
}

CaseResult run_moe_case(Backend& target, Backend* reference, const MoeTestCase& c) {
  CaseResult r;
  r.name = c.name;
  r.tolerance = tolerance_for(target.activation_dtype());
  MoeInputs in = make_moe_inputs(c, target.activation_dtype());
  Expected<HostTensor> got = run_moe_on(target, in);
  if (!got) return failed(r, got.status());
  std::vector<double> want;
  if (reference) {
    Expected<HostTensor> ref_out = run_moe_on(*reference, in);
    if (!ref_out) return failed(r, Status(ref_out.status().code(), "reference: " + ref_out.status().message()));
    want = to_doubles(*ref_out);
  } else {
    HostTensor unused(DType::kF32, {in.n, in.hidden});
    Status s = ref::fused_moe(host_moe_params(in, unused), &want);
    if (!s.is_ok()) return failed(r, s);
  }
  r.rel_err = rel_l2_error(*got, want);
  r.passed = r.rel_err <= r.tolerance;
  return r;
}

CaseResult run_mla_case(Backend& target, Backend* reference, const MlaTestCase& c) {
  CaseResult r;
  r.name = c.name;
  r.tolerance = tolerance_for(target.activation_dtype());
  MlaInputs in = make_mla_inputs(c, target.activation_dtype());
  const bool fp8 = c.cache_dtype == DType::kF8E4M3;
  Fp8Latents f8;
  if (fp8) {
    Expected<Fp8Latents> q = quantize_latents(in.cache);
    if (!q) return failed(r, q.status());
    f8 = std::move(*q);
  }
  Expected<MlaOutputs> got = run_mla_on(target, c, in, fp8 ? &f8 : nullptr);
  if (!got) return failed(r, got.status());
  // The reference on the case's cache (fp8: the same e4m3 bytes and scales), and for fp8 also
  // on the unquantized cache: the accuracy the e4m3 cache costs.
  auto reference_on = [&](bool quantized, std::vector<double>* out, std::vector<double>* lse) -> Status {
    if (reference) {
      MlaTestCase with_lse = c;
      with_lse.want_lse = true;
      Expected<MlaOutputs> ref_out = run_mla_on(*reference, with_lse, in, quantized ? &f8 : nullptr);
      if (!ref_out) return Status(ref_out.status().code(), "reference: " + ref_out.status().message());
      *out = to_doubles(ref_out->out);
      *lse = to_doubles(ref_out->lse);
      return Status::ok();
    }
    ops::MlaAttentionParams p = mla_params(c);
    p.scale = in.scale;
    p.q = in.q.t;
    p.cache = quantized ? f8.f8.t : in.cache.t;
    if (quantized) p.cache_scale = f8.scale.t;
    p.seqs.block_table = in.block_table.t;
    p.seqs.seq_lens = in.seq_lens.t;
    p.seqs.query_start = in.query_start.t;
    return ref::mla_attention(p, out, lse);
  };
  std::vector<double> want_out, want_lse;
  Status s = reference_on(fp8, &want_out, &want_lse);
  if (!s.is_ok()) return failed(r, s);
  if (fp8) {
    std::vector<double> plain_out, plain_lse;
    s = reference_on(false, &plain_out, &plain_lse);
    if (!s.is_ok()) return failed(r, s);
    r.quant_err = rel_l2_error(got->out, plain_out);
  }
  r.rel_err = rel_l2_error(got->out, want_out);
  if (c.want_lse) r.rel_err = std::max(r.rel_err, lse_error(to_doubles(got->lse), want_lse));
  r.passed = r.rel_err <= r.tolerance;
  return r;
}

Expected<std::vector<CaseResult>> run_moe_test_set(Backend& target, Backend* reference, const std::vector<MoeTestCase>& cases,
                                                   const std::function<void(const CaseResult&)>& on_case) {
  std::vector<CaseResult> results;
  for (const MoeTestCase& c : cases) {
    results.push_back(run_moe_case(target, reference, c));
    if (on_case) on_case(results.back());
  }
  return results;
}

Expected<std::vector<CaseResult>> run_mla_test_set(Backend& target, Backend* reference, const std::vector<MlaTestCase>& cases,
                                                   const std::function<void(const CaseResult&)>& on_case) {
  std::vector<CaseResult> results;
  for (const MlaTestCase& c : cases) {
    results.push_back(run_mla_case(target, reference, c));
    if (on_case) on_case(results.back());
  }
  return results;
}

}  // namespace moex::bench
