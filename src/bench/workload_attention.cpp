// Decode attention over a paged KV cache: mla_decode (DeepSeek absorbed MLA, one latent head of
// kv_lora_rank + rope_dim) and gqa_decode (Qwen3-MoE, Mixtral). Every sequence of a case has
// the same KV length; its pages are scattered over the pool in a random order.
#include <algorithm>
#include <numeric>

#include "bench/reference.h"
#include "bench/workloads.h"

namespace moex::bench {
namespace {

struct PagedLayout {
  int64_t batch = 0, q_len = 1, kv_len = 0, page = 64, max_pages = 0, num_pages = 0;
  std::vector<int32_t> block_table;  // [batch, max_pages]
};

PagedLayout make_layout(int64_t batch, int64_t kv_len, int64_t q_len, int64_t page, uint64_t seed) {
  PagedLayout l;
  l.batch = batch;
  l.q_len = q_len;
  l.kv_len = kv_len;
  l.page = page;
  l.max_pages = (kv_len + page - 1) / page;
  l.num_pages = batch * l.max_pages;
  std::vector<int32_t> perm(static_cast<size_t>(l.num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  Rng rng(seed);
  for (int64_t i = l.num_pages - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng.below(i + 1))]);
  l.block_table = perm;  // sequence b owns entries [b * max_pages, (b + 1) * max_pages)
  return l;
}

// Host tensors describing the first `seqs` sequences of a layout, their pages renumbered 0..
struct HostSeqs {
  HostTensor block_table, seq_lens, query_start;
  std::vector<int32_t> device_pages;  // compact page i = device page device_pages[i]
};

HostSeqs host_seqs(const PagedLayout& l, int64_t seqs) {
  HostSeqs h;
  h.block_table = HostTensor(DType::kI32, {seqs, l.max_pages});
  h.seq_lens = HostTensor(DType::kI32, {seqs});
  h.query_start = HostTensor(DType::kI32, {seqs + 1});
  for (int64_t b = 0; b < seqs; ++b) {
    h.seq_lens.ptr<int32_t>()[b] = int32_t(l.kv_len);
    h.query_start.ptr<int32_t>()[b] = int32_t(b * l.q_len);
    for (int64_t pg = 0; pg < l.max_pages; ++pg) {
      h.block_table.ptr<int32_t>()[b * l.max_pages + pg] = int32_t(h.device_pages.size());
      h.device_pages.push_back(l.block_table[size_t(b * l.max_pages + pg)]);
    }
  }
  h.query_start.ptr<int32_t>()[seqs] = int32_t(seqs * l.q_len);
  return h;
}

Status upload_seqs(Backend& be, Workload* w, const PagedLayout& l, ops::PagedSeqs* s) {
  HostTensor bt(DType::kI32, {l.batch, l.max_pages}), lens(DType::kI32, {l.batch}), qs(DType::kI32, {l.batch + 1});
  std::copy(l.block_table.begin(), l.block_table.end(), bt.ptr<int32_t>());
  for (int64_t b = 0; b < l.batch; ++b) {
    lens.ptr<int32_t>()[b] = int32_t(l.kv_len);
    qs.ptr<int32_t>()[b] = int32_t(b * l.q_len);
  }
  qs.ptr<int32_t>()[l.batch] = int32_t(l.batch * l.q_len);
  MOEX_ASSIGN_OR_RETURN(s->block_table, host_to_device(be, w, bt));
  MOEX_ASSIGN_OR_RETURN(s->seq_lens, host_to_device(be, w, lens));
  MOEX_ASSIGN_OR_RETURN(s->query_start, host_to_device(be, w, qs));
  s->page_size = int(l.page);
  return Status::ok();
}

struct AttentionDims {
  int64_t batch, kv_len, q_len, page;
};

Expected<AttentionDims> attention_dims(const BenchCase& c) {
  AttentionDims d{};
  MOEX_ASSIGN_OR_RETURN(d.batch, case_int(c, "batch"));
  MOEX_ASSIGN_OR_RETURN(d.kv_len, case_int(c, "kv_len"));
  d.q_len = case_int_or(c, "q_len", 1);
  d.page = case_int_or(c, "page", 64);
  if (d.batch <= 0 || d.kv_len <= 0 || d.q_len <= 0 || d.q_len > d.kv_len || d.page <= 0)
    return invalid_argument("case " + c.name + ": need batch, page > 0 and 0 < q_len <= kv_len");
  return d;
}

// Sequences checked against the reference: fewer when they are long (the CPU reference is slow).
int64_t check_seqs(const AttentionDims& d) { return std::min<int64_t>(d.batch, d.kv_len > 8192 ? 1 : 2); }

}  // namespace

Expected<std::unique_ptr<Workload>> make_mla_decode_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache) {
  MOEX_ASSIGN_OR_RETURN(AttentionDims d, attention_dims(c));
  MOEX_ASSIGN_OR_RETURN(int64_t heads, case_int(c, "heads"));
  const int64_t rank = case_int_or(c, "kv_lora_rank", 512), rope = case_int_or(c, "rope_dim", 64), dim = rank + rope;
  if (heads <= 0 || rank <= 0 || rope < 0) return invalid_argument("case " + c.name + ": heads, kv_lora_rank > 0");
  const DType act = be.activation_dtype();
  // "cache": "fp8" runs the e4m3 latent cache with one f32 scale per token (random e4m3 values
  // in [-1, 1], random scales); the default is the activation dtype.
  const std::string cache_kind = case_string_or(c, "cache", "act");
  if (cache_kind != "act" && cache_kind != "fp8") return invalid_argument("case " + c.name + ": cache must be act or fp8");
  const bool fp8 = cache_kind == "fp8";
  const PagedLayout l = make_layout(d.batch, d.kv_len, d.q_len, d.page, seed);
  const int64_t n = d.batch * d.q_len;
  auto w = std::make_unique<Workload>();
  ops::MlaAttentionParams p;
  p.kv_lora_rank = int(rank);
  p.scale = float(case_double_or(c, "scale", 0.0723));  // ~ 1/sqrt(192), DeepSeek's q head dim
  MOEX_RETURN_IF_ERROR(upload_seqs(be, w.get(), l, &p.seqs));
  MOEX_ASSIGN_OR_RETURN(p.q, random_tensor(be, w.get(), act, {n, heads, dim}, seed + 1, -1.f, 1.f));
  if (fp8) {
    MOEX_ASSIGN_OR_RETURN(p.cache, cached_random_tensor(be, w.get(), cache, "mla.cache.f8", DType::kF8E4M3, {l.num_pages, d.page, dim},
                                                        seed + 2, -1.f, 1.f));
    MOEX_ASSIGN_OR_RETURN(p.cache_scale, random_tensor(be, w.get(), DType::kF32, {l.num_pages, d.page}, seed + 3, 0.5f, 2.f));
  } else {
    MOEX_ASSIGN_OR_RETURN(p.cache, cached_random_tensor(be, w.get(), cache, "mla.cache", act, {l.num_pages, d.page, dim}, seed + 2, -1.f, 1.f));
  }
  MOEX_ASSIGN_OR_RETURN(DeviceTensor out, device_alloc(be, act, {n, heads, rank}));
  MOEX_ASSIGN_OR_RETURN(DeviceTensor lse, device_alloc(be, DType::kF32, {n, heads}));
  p.out = out.t;
  p.lse = lse.t;
  w->held.push_back(std::move(out));
  w->held.push_back(std::move(lse));

  const double asize = double(dtype_size(act));
  const double token_bytes = fp8 ? double(dim) + 4.0 : double(dim) * asize;  // fp8: e4m3 row + its scale
  w->bytes = double(d.batch * d.kv_len) * token_bytes + double(n * heads) * (double(dim + rank) * asize + 4.0) +
             double(d.batch * l.max_pages) * 4.0;
  w->flops = 2.0 * double(n * heads) * double(d.kv_len) * double(dim + rank);
  w->shape = c.shape;
  w->shape["kv_lora_rank"] = rank;
  w->shape["rope_dim"] = rope;
  w->tolerance = act == DType::kF32 ? 1e-4 : 1e-2;
  Backend* bp = &be;
  w->launch = [bp, p] { return bp->mla_attention(p); };
  w->check = [bp, p, l, d, heads, rank]() -> Expected<double> {
    const int64_t seqs = check_seqs(d), rows = seqs * d.q_len;
    HostSeqs hs = host_seqs(l, seqs);
    MOEX_ASSIGN_OR_RETURN(HostTensor cache_h, download_pages(*bp, p.cache, hs.device_pages));
    HostTensor scale_h;
    if (!p.cache_scale.empty()) {
      MOEX_ASSIGN_OR_RETURN(scale_h, download_pages(*bp, p.cache_scale, hs.device_pages));
    }
    MOEX_ASSIGN_OR_RETURN(HostTensor q, download_rows(*bp, p.q, rows));
    MOEX_RETURN_IF_ERROR(bp->fill(p.out.data, 0xff, p.out.nbytes()));  // NaN: unwritten rows show
    MOEX_RETURN_IF_ERROR(bp->mla_attention(p));
    MOEX_ASSIGN_OR_RETURN(HostTensor got, download_rows(*bp, p.out, rows));
    HostTensor ref_out(DType::kF32, {rows, heads, rank}), ref_lse(DType::kF32, {rows, heads});
    ops::MlaAttentionParams r = p;
    r.q = q.t;
    r.cache = cache_h.t;
    if (!p.cache_scale.empty()) r.cache_scale = scale_h.t;
    r.seqs.block_table = hs.block_table.t;
    r.seqs.seq_lens = hs.seq_lens.t;
    r.seqs.query_start = hs.query_start.t;
    r.out = ref_out.t;
    r.lse = ref_lse.t;
    std::vector<double> want, want_lse;
    if (bp->device() == DeviceType::kCpu) {
      MOEX_RETURN_IF_ERROR(ref::mla_attention(r, &want, &want_lse));
    } else {
      std::unique_ptr<Backend> cpu = make_cpu_backend();
      MOEX_RETURN_IF_ERROR(cpu->mla_attention(r));
      want = to_doubles(ref_out);
    }
    return rel_l2_error(got, want);
  };
  return w;
}

Expected<std::unique_ptr<Workload>> make_gqa_decode_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache) {
  MOEX_ASSIGN_OR_RETURN(AttentionDims d, attention_dims(c));
  MOEX_ASSIGN_OR_RETURN(int64_t qh, case_int(c, "q_heads"));
  MOEX_ASSIGN_OR_RETURN(int64_t kvh, case_int(c, "kv_heads"));
  const int64_t hd = case_int_or(c, "head_dim", 128);
  if (qh <= 0 || kvh <= 0 || qh % kvh != 0 || hd <= 0)
    return invalid_argument("case " + c.name + ": q_heads must be a positive multiple of kv_heads, head_dim > 0");
  const DType act = be.activation_dtype();
  const PagedLayout l = make_layout(d.batch, d.kv_len, d.q_len, d.page, seed);
  const int64_t n = d.batch * d.q_len;
  auto w = std::make_unique<Workload>();
  ops::GqaAttentionParams p;
  p.scale = float(1.0 / std::sqrt(double(hd)));
  p.sliding_window = int(case_int_or(c, "sliding_window", 0));
  MOEX_RETURN_IF_ERROR(upload_seqs(be, w.get(), l, &p.seqs));
  MOEX_ASSIGN_OR_RETURN(p.q, random_tensor(be, w.get(), act, {n, qh, hd}, seed + 1, -1.f, 1.f));
  MOEX_ASSIGN_OR_RETURN(p.k_cache, cached_random_tensor(be, w.get(), cache, "gqa.k", act, {l.num_pages, d.page, kvh, hd}, seed + 2, -1.f, 1.f));
  MOEX_ASSIGN_OR_RETURN(p.v_cache, cached_random_tensor(be, w.get(), cache, "gqa.v", act, {l.num_pages, d.page, kvh, hd}, seed + 3, -1.f, 1.f));
  MOEX_ASSIGN_OR_RETURN(DeviceTensor out, device_alloc(be, act, {n, qh, hd}));
  p.out = out.t;
  w->held.push_back(std::move(out));

  const double asize = double(dtype_size(act));
  const int64_t visible = p.sliding_window > 0 ? std::min<int64_t>(d.kv_len, p.sliding_window) : d.kv_len;
  w->bytes = 2.0 * double(d.batch * visible * kvh * hd) * asize + 2.0 * double(n * qh * hd) * asize +
             double(d.batch * l.max_pages) * 4.0;
  w->flops = 4.0 * double(n * qh) * double(visible) * double(hd);
  w->shape = c.shape;
  w->shape["head_dim"] = hd;
  w->tolerance = act == DType::kF32 ? 1e-4 : 1e-2;
  Backend* bp = &be;
  w->launch = [bp, p] { return bp->gqa_attention(p); };
  w->check = [bp, p, l, d, qh, hd]() -> Expected<double> {
    const int64_t seqs = check_seqs(d), rows = seqs * d.q_len;
    HostSeqs hs = host_seqs(l, seqs);
    MOEX_ASSIGN_OR_RETURN(HostTensor k_h, download_pages(*bp, p.k_cache, hs.device_pages));
    MOEX_ASSIGN_OR_RETURN(HostTensor v_h, download_pages(*bp, p.v_cache, hs.device_pages));
    MOEX_ASSIGN_OR_RETURN(HostTensor q, download_rows(*bp, p.q, rows));
    MOEX_RETURN_IF_ERROR(bp->fill(p.out.data, 0xff, p.out.nbytes()));
    MOEX_RETURN_IF_ERROR(bp->gqa_attention(p));
    MOEX_ASSIGN_OR_RETURN(HostTensor got, download_rows(*bp, p.out, rows));
    HostTensor ref_out(DType::kF32, {rows, qh, hd});
    ops::GqaAttentionParams r = p;
    r.q = q.t;
    r.k_cache = k_h.t;
    r.v_cache = v_h.t;
    r.seqs.block_table = hs.block_table.t;
    r.seqs.seq_lens = hs.seq_lens.t;
    r.seqs.query_start = hs.query_start.t;
    r.out = ref_out.t;
    std::vector<double> want;
    if (bp->device() == DeviceType::kCpu) {
      MOEX_RETURN_IF_ERROR(ref::gqa_attention(r, &want));
    } else {
      std::unique_ptr<Backend> cpu = make_cpu_backend();
      MOEX_RETURN_IF_ERROR(cpu->gqa_attention(r));
      want = to_doubles(ref_out);
    }
    return rel_l2_error(got, want);
  };
  return w;
}

}  // namespace moex::bench
