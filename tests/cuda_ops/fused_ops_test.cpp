// The fused small ops (ops/fused.h) on the GPU: bit-identical to their defining sequence of
// separate CUDA ops on fresh random inputs (real model shapes and odd ones), close to the CPU
// reference, outputs poisoned with NaN first, and one-line errors on bad input.
#include <cmath>
#include <cstring>

#include "cuda_ops/cuda_ops_util.h"

namespace moex::test {
namespace {

constexpr double kTolBf16 = 5e-3;
constexpr double kTolF32 = 1e-4;  // RoPE: cos/sin of large angles differ by ulps between libm and CUDA

class FusedOpsTest : public CudaOpsTest {};

bool same_bytes(const HostTensor& a, const HostTensor& b) {
  return a.bytes.size() == b.bytes.size() && std::memcmp(a.bytes.data(), b.bytes.data(), a.bytes.size()) == 0;
}

// A view of `cols` columns starting at `col` of a [rows, width] host tensor.
Tensor columns_of(const HostTensor& h, int64_t col, int64_t cols) {
  Tensor v = h.t;
  v.data = static_cast<char*>(h.t.data) + col * int64_t(dtype_size(h.t.dtype));
  v.shape[1] = cols;
  return v;
}

TEST_F(FusedOpsTest, AddRmsNormIsAddThenRmsNormBitForBit) {
  struct Case { int64_t dim; DType dtype, wtype; };
  // Qwen3-30B-A3B 2048, Mixtral 4096, DeepSeek-V3 7168, odd sizes below and above 1024 threads.
  for (const Case c : {Case{2048, DType::kBF16, DType::kBF16}, Case{4096, DType::kBF16, DType::kBF16},
                       Case{7168, DType::kBF16, DType::kF32}, Case{1, DType::kBF16, DType::kBF16},
                       Case{37, DType::kBF16, DType::kBF16}, Case{1500, DType::kBF16, DType::kBF16},
                       Case{512, DType::kF32, DType::kBF16}, Case{3001, DType::kF32, DType::kF32}}) {
    const int64_t rows = rng_.uniform_int(0, 1) == 0 ? 1 : rng_.uniform_int(2, 70), width = c.dim + 9;
    SCOPED_TRACE("dim " + std::to_string(c.dim) + " rows " + std::to_string(rows) + " seed " + std::to_string(seed_));
    // residual as a strided view (rows of a wider buffer), branch and out contiguous.
    HostTensor res_full = host_random(c.dtype, {rows, width}, rng_, -3.f, 3.f);
    HostTensor br = host_random(c.dtype, {rows, c.dim}, rng_, -3.f, 3.f);
    HostTensor w = host_random(c.wtype, {c.dim}, rng_, 0.5f, 1.5f);
    const Tensor res = columns_of(res_full, 4, c.dim);
    DeviceTensor d_w = to_device(*gpu_, w), d_br = to_device(*gpu_, br);
    // Fused.
    DeviceTensor d_res1 = to_device(*gpu_, res_full);
    DeviceTensor d_out1 = device_poisoned(*gpu_, c.dtype, {rows, c.dim});
    const Tensor r1 = rebase(res, res_full.t.data, d_res1.t.data, DeviceType::kCuda);
    MOEX_ASSERT_OK(gpu_->add_rms_norm({.residual = r1, .branch = d_br.t, .weight = d_w.t, .out = d_out1.t, .eps = 1e-6f}));
    // Separate ops.
    DeviceTensor d_res2 = to_device(*gpu_, res_full);
    DeviceTensor d_out2 = device_poisoned(*gpu_, c.dtype, {rows, c.dim});
    const Tensor r2 = rebase(res, res_full.t.data, d_res2.t.data, DeviceType::kCuda);
    MOEX_ASSERT_OK(gpu_->add({.a = r2, .b = d_br.t, .out = r2}));
    MOEX_ASSERT_OK(gpu_->rms_norm({.x = r2, .weight = d_w.t, .out = d_out2.t, .eps = 1e-6f}));
    HostTensor res1 = to_host(*gpu_, d_res1), res2 = to_host(*gpu_, d_res2);
    HostTensor out1 = to_host(*gpu_, d_out1), out2 = to_host(*gpu_, d_out2);
    EXPECT_TRUE(same_bytes(res1, res2)) << "residual differs from add";
    EXPECT_TRUE(same_bytes(out1, out2)) << "out differs from add + rms_norm";
    // Against the CPU reference on the same inputs (columns outside the view untouched: whole buffer).
    HostTensor ref_out = host_tensor(c.dtype, {rows, c.dim});
    MOEX_ASSERT_OK(cpu_->add_rms_norm({.residual = res, .branch = br.t, .weight = w.t, .out = ref_out.t, .eps = 1e-6f}));
    EXPECT_LT(rel_l2(res1, res_full), c.dtype == DType::kF32 ? 1e-6 : kTolBf16);  // res_full now holds the CPU sum
    EXPECT_LT(rel_l2(out1, ref_out), c.dtype == DType::kF32 ? 1e-5 : kTolBf16);
  }
}

// A q | k | v projection buffer [n, width] (rows wider than q | k | v) and its views.
struct QkvViews {
  Tensor q, k, v;  // [n, heads, head_dim] strided
};
QkvViews qkv_views(const HostTensor& buf, int64_t qh, int64_t kvh, int64_t d) {
  const int64_t n = buf.t.shape[0], width = buf.t.shape[1];
  const size_t es = dtype_size(buf.t.dtype);
  auto view = [&](int64_t col, int64_t heads) {
    Tensor x = Tensor::make(static_cast<char*>(buf.t.data) + col * int64_t(es), buf.t.dtype, {n, heads, d});
    x.stride[0] = width;
    return x;
  };
  return {view(2, qh), view(2 + qh * d, kvh), view(2 + (qh + kvh) * d, kvh)};
}

TEST_F(FusedOpsTest, QkvRopeCacheIsTheOpSequenceBitForBit) {
  struct Case { const char* name; int64_t qh, kvh, d, rot; bool norm, interleaved; float scale; DType t; };
  for (const Case c : {Case{"qwen3-30b-a3b", 32, 4, 128, 128, true, false, 1.f, DType::kBF16},
                       Case{"qwen3-235b-a22b", 64, 4, 128, 128, true, false, 1.f, DType::kBF16},
                       Case{"mixtral-8x7b", 32, 8, 128, 128, false, false, 1.f, DType::kBF16},
                       Case{"odd-partial-interleaved", 5, 1, 40, 24, true, true, 1.2f, DType::kBF16},
                       Case{"odd-no-norm-partial", 3, 3, 18, 10, false, false, 1.f, DType::kBF16},
                       Case{"f32-256", 4, 2, 256, 64, true, false, 1.f, DType::kF32}}) {
    const int64_t n = rng_.uniform_int(0, 1) == 0 ? 1 : rng_.uniform_int(2, 40);
    const int64_t kv_dim = c.kvh * c.d, width = (c.qh + 2 * c.kvh) * c.d + 5, slots = 4 * n + 3;
    SCOPED_TRACE(std::string(c.name) + " n " + std::to_string(n) + " seed " + std::to_string(seed_));
    HostTensor qkv = host_random(c.t, {n, width}, rng_, -2.f, 2.f);
    HostTensor qn = host_random(DType::kBF16, {c.d}, rng_, 0.5f, 1.5f), kn = host_random(DType::kBF16, {c.d}, rng_, 0.5f, 1.5f);
    HostTensor inv_freq = host_tensor(DType::kF32, {c.rot / 2});
    for (int64_t i = 0; i < c.rot / 2; ++i) inv_freq.set(i, std::pow(1e6f, -2.f * float(i) / float(c.rot)));
    std::vector<int32_t> pos(static_cast<size_t>(n)), slot(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      pos[size_t(i)] = rng_.uniform_int(0, 4000);
      slot[size_t(i)] = int32_t(4 * i + 1);  // scattered; slot 0 and every 4th are never written
    }
    HostTensor positions = host_i32(pos), slot_mapping = host_i32(slot);
    const QkvViews hv = qkv_views(qkv, c.qh, c.kvh, c.d);
    DeviceTensor d_qn = to_device(*gpu_, qn), d_kn = to_device(*gpu_, kn), d_if = to_device(*gpu_, inv_freq);
    DeviceTensor d_pos = to_device(*gpu_, positions), d_slot = to_device(*gpu_, slot_mapping);
    struct Run { DeviceTensor qkv, kc, vc; QkvViews v; };
    auto start = [&]() {
      Run r{to_device(*gpu_, qkv), device_poisoned(*gpu_, c.t, {slots, kv_dim}), device_poisoned(*gpu_, c.t, {slots, kv_dim}), {}};
      r.v = {rebase(hv.q, qkv.t.data, r.qkv.t.data, DeviceType::kCuda), rebase(hv.k, qkv.t.data, r.qkv.t.data, DeviceType::kCuda),
             rebase(hv.v, qkv.t.data, r.qkv.t.data, DeviceType::kCuda)};
      return r;
    };
    Run fused = start(), separate = start();
    MOEX_ASSERT_OK(gpu_->qkv_rope_cache({.q = fused.v.q, .k = fused.v.k, .v = fused.v.v,
                                         .q_norm = c.norm ? d_qn.t : Tensor{}, .k_norm = c.norm ? d_kn.t : Tensor{},
                                         .eps = 1e-6f, .positions = d_pos.t, .inv_freq = d_if.t, .attn_scale = c.scale,
                                         .interleaved = c.interleaved, .slot_mapping = d_slot.t,
                                         .k_cache = fused.kc.t, .v_cache = fused.vc.t}));
    const QkvViews& s = separate.v;
    if (c.norm) {
      MOEX_ASSERT_OK(gpu_->rms_norm({.x = s.q, .weight = d_qn.t, .out = s.q, .eps = 1e-6f}));
      MOEX_ASSERT_OK(gpu_->rms_norm({.x = s.k, .weight = d_kn.t, .out = s.k, .eps = 1e-6f}));
    }
    for (const Tensor& x : {s.q, s.k})
      MOEX_ASSERT_OK(gpu_->rope({.x = x, .positions = d_pos.t, .inv_freq = d_if.t, .attn_scale = c.scale,
                                 .interleaved = c.interleaved}));
    for (const auto& [src, dst] : {std::pair{s.k, separate.kc.t}, std::pair{s.v, separate.vc.t}}) {
      Tensor src2 = src;
      src2.ndim = 2;
      src2.shape[1] = kv_dim;
      src2.stride[1] = 1;
      MOEX_ASSERT_OK(gpu_->cache_write({.src = src2, .slot_mapping = d_slot.t, .dst = dst}));
    }
    HostTensor f_qkv = to_host(*gpu_, fused.qkv), s_qkv = to_host(*gpu_, separate.qkv);
    HostTensor f_kc = to_host(*gpu_, fused.kc), s_kc = to_host(*gpu_, separate.kc);
    HostTensor f_vc = to_host(*gpu_, fused.vc), s_vc = to_host(*gpu_, separate.vc);
    EXPECT_TRUE(same_bytes(f_qkv, s_qkv)) << "q | k | v buffer differs";
    EXPECT_TRUE(same_bytes(f_kc, s_kc)) << "k cache differs";  // includes the poisoned, unwritten slots
    EXPECT_TRUE(same_bytes(f_vc, s_vc)) << "v cache differs";
    EXPECT_TRUE(std::isnan(f_kc.get(0)) && std::isnan(f_vc.get(0))) << "slot 0 was written";
    // Against the CPU reference (written slots only: the rest stay NaN on both sides).
    HostTensor ref_kc = host_tensor(c.t, {slots, kv_dim}), ref_vc = host_tensor(c.t, {slots, kv_dim});
    MOEX_ASSERT_OK(cpu_->qkv_rope_cache({.q = hv.q, .k = hv.k, .v = hv.v, .q_norm = c.norm ? qn.t : Tensor{},
                                         .k_norm = c.norm ? kn.t : Tensor{}, .eps = 1e-6f, .positions = positions.t,
                                         .inv_freq = inv_freq.t, .attn_scale = c.scale, .interleaved = c.interleaved,
                                         .slot_mapping = slot_mapping.t, .k_cache = ref_kc.t, .v_cache = ref_vc.t}));
    const double tol = c.t == DType::kF32 ? kTolF32 : kTolBf16;
    EXPECT_LT(rel_l2(f_qkv, qkv), tol) << "q | k | v against the CPU";
    HostTensor f_rows = host_tensor(c.t, {n, kv_dim}), ref_rows = host_tensor(c.t, {n, kv_dim});
    for (const auto& [got, ref] : {std::pair{&f_kc, &ref_kc}, std::pair{&f_vc, &ref_vc}}) {
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < kv_dim; ++j) {
          f_rows.set(i * kv_dim + j, got->get(int64_t(slot[size_t(i)]) * kv_dim + j));
          ref_rows.set(i * kv_dim + j, ref->get(int64_t(slot[size_t(i)]) * kv_dim + j));
        }
      EXPECT_LT(rel_l2(f_rows, ref_rows), tol) << (got == &f_kc ? "k cache" : "v cache") << " against the CPU";
    }
  }
}

TEST_F(FusedOpsTest, QkvRopeCacheSkipsPaddingSlots) {
  // A negative slot (a padding token) writes no cache row, like cache_write; q and k still rotate.
  const int64_t n = 3, qh = 4, kvh = 2, d = 64, kv_dim = kvh * d, width = (qh + 2 * kvh) * d + 5, slots = 8;
  HostTensor qkv = host_random(DType::kBF16, {n, width}, rng_, -2.f, 2.f);
  HostTensor inv_freq = host_tensor(DType::kF32, {d / 2});
  for (int64_t i = 0; i < d / 2; ++i) inv_freq.set(i, std::pow(1e4f, -2.f * float(i) / float(d)));
  HostTensor positions = host_i32({5, 6, 7}), slot_mapping = host_i32({2, -1, 6});
  const QkvViews hv = qkv_views(qkv, qh, kvh, d);
  DeviceTensor d_qkv = to_device(*gpu_, qkv), d_if = to_device(*gpu_, inv_freq);
  DeviceTensor d_pos = to_device(*gpu_, positions), d_slot = to_device(*gpu_, slot_mapping);
  DeviceTensor kc = device_poisoned(*gpu_, DType::kBF16, {slots, kv_dim}), vc = device_poisoned(*gpu_, DType::kBF16, {slots, kv_dim});
  auto dev = [&](const Tensor& t) { return rebase(t, qkv.t.data, d_qkv.t.data, DeviceType::kCuda); };
  MOEX_ASSERT_OK(gpu_->qkv_rope_cache({.q = dev(hv.q), .k = dev(hv.k), .v = dev(hv.v), .q_norm = {}, .k_norm = {},
                                       .eps = 1e-6f, .positions = d_pos.t, .inv_freq = d_if.t, .attn_scale = 1.f,
                                       .interleaved = false, .slot_mapping = d_slot.t, .k_cache = kc.t, .v_cache = vc.t}));
  HostTensor h_kc = to_host(*gpu_, kc), h_vc = to_host(*gpu_, vc), h_qkv = to_host(*gpu_, d_qkv);
  int written = 0;
  for (int64_t s = 0; s < slots; ++s) {
    const bool w = !std::isnan(h_kc.get(s * kv_dim)) && !std::isnan(h_vc.get(s * kv_dim));
    written += w;
    EXPECT_EQ(w, s == 2 || s == 6) << "slot " << s;
  }
  EXPECT_EQ(written, 2);
  // v of token 2 landed in slot 6 unchanged.
  for (int64_t j = 0; j < kv_dim; j += 7)
    EXPECT_EQ(h_vc.get(6 * kv_dim + j), qkv.get(2 * width + 2 + (qh + kvh) * d + j));
  // Token 1's q was rotated although it has no slot (position 6 != 0 moves it).
  double moved = 0;
  for (int64_t j = 0; j < qh * d; ++j) moved += std::fabs(h_qkv.get(width + 2 + j) - qkv.get(width + 2 + j));
  EXPECT_GT(moved, 0.0);
}

TEST_F(FusedOpsTest, MlaRopeCacheIsTheOpSequenceBitForBit) {
  struct Case { const char* name; int64_t heads, rank, rope, nope; bool interleaved, copy; DType t; };
  for (const Case c : {Case{"deepseek-v3", 128, 512, 64, 128, true, true, DType::kBF16},
                       Case{"deepseek-v2-lite", 16, 512, 64, 128, true, true, DType::kBF16},
                       Case{"odd", 3, 40, 8, 5, false, false, DType::kBF16},
                       Case{"odd-f32", 7, 1100, 16, 3, true, true, DType::kF32}}) {
    const int64_t n = rng_.uniform_int(0, 1) == 0 ? 1 : rng_.uniform_int(2, 33);
    const int64_t latent = c.rank + c.rope, qk = c.nope + c.rope, slots = 3 * n + 2;
    SCOPED_TRACE(std::string(c.name) + " n " + std::to_string(n) + " seed " + std::to_string(seed_));
    HostTensor kv = host_random(c.t, {n, latent}, rng_, -2.f, 2.f);
    HostTensor q = host_random(c.t, {n, c.heads * qk}, rng_, -2.f, 2.f);
    HostTensor w = host_random(DType::kBF16, {c.rank}, rng_, 0.5f, 1.5f);
    HostTensor inv_freq = host_tensor(DType::kF32, {c.rope / 2});
    for (int64_t i = 0; i < c.rope / 2; ++i) inv_freq.set(i, std::pow(1e4f, -2.f * float(i) / float(c.rope)));
    std::vector<int32_t> pos(static_cast<size_t>(n)), slot(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      pos[size_t(i)] = rng_.uniform_int(0, 4000);
      slot[size_t(i)] = i == 1 ? -1 : int32_t(3 * i + 1);  // token 1 (when present) is padding
    }
    HostTensor positions = host_i32(pos), slot_mapping = host_i32(slot);
    DeviceTensor d_w = to_device(*gpu_, w), d_if = to_device(*gpu_, inv_freq);
    DeviceTensor d_pos = to_device(*gpu_, positions), d_slot = to_device(*gpu_, slot_mapping);
    struct Run { DeviceTensor kv, q, cache, out; Tensor q_rope, q_out; };
    auto start = [&]() {
      Run r{to_device(*gpu_, kv), to_device(*gpu_, q), device_poisoned(*gpu_, c.t, {slots, latent}),
            device_poisoned(*gpu_, c.t, {n, c.heads, c.rope + 2}), {}, {}};
      r.q_rope = Tensor::make(static_cast<char*>(r.q.t.data) + c.nope * int64_t(dtype_size(c.t)), c.t, {n, c.heads, c.rope},
                              DeviceType::kCuda);
      r.q_rope.stride[0] = c.heads * qk;
      r.q_rope.stride[1] = qk;
      r.q_out = r.out.t;  // [n, heads, rope] columns of a wider buffer (the absorbed query)
      r.q_out.shape[2] = c.rope;
      return r;
    };
    Run fused = start(), separate = start();
    MOEX_ASSERT_OK(gpu_->mla_rope_cache({.kv_a = fused.kv.t, .kv_norm = d_w.t, .eps = 1e-6f, .q_rope = fused.q_rope,
                                         .q_rope_out = c.copy ? fused.q_out : Tensor{}, .positions = d_pos.t,
                                         .inv_freq = d_if.t, .attn_scale = 1.1f, .interleaved = c.interleaved,
                                         .slot_mapping = d_slot.t, .cache = fused.cache.t}));
    Tensor lat = separate.kv.t;
    lat.shape[1] = c.rank;
    Tensor key = Tensor::make(static_cast<char*>(separate.kv.t.data) + c.rank * int64_t(dtype_size(c.t)), c.t,
                              {n, 1, c.rope}, DeviceType::kCuda);
    key.stride[0] = latent;
    MOEX_ASSERT_OK(gpu_->rms_norm({.x = lat, .weight = d_w.t, .out = lat, .eps = 1e-6f}));
    for (const Tensor& x : {key, separate.q_rope})
      MOEX_ASSERT_OK(gpu_->rope({.x = x, .positions = d_pos.t, .inv_freq = d_if.t, .attn_scale = 1.1f,
                                 .interleaved = c.interleaved}));
    MOEX_ASSERT_OK(gpu_->cache_write({.src = separate.kv.t, .slot_mapping = d_slot.t, .dst = separate.cache.t}));
    if (c.copy) {
      MOEX_ASSERT_OK(gpu_->copy({.src = separate.q_rope, .dst = separate.q_out}));
    }
    HostTensor f_kv = to_host(*gpu_, fused.kv), s_kv = to_host(*gpu_, separate.kv);
    HostTensor f_q = to_host(*gpu_, fused.q), s_q = to_host(*gpu_, separate.q);
    HostTensor f_c = to_host(*gpu_, fused.cache), s_c = to_host(*gpu_, separate.cache);
    HostTensor f_o = to_host(*gpu_, fused.out), s_o = to_host(*gpu_, separate.out);
    EXPECT_TRUE(same_bytes(f_kv, s_kv)) << "kv_a differs";
    EXPECT_TRUE(same_bytes(f_q, s_q)) << "q differs";
    EXPECT_TRUE(same_bytes(f_c, s_c)) << "latent cache differs";  // unwritten slots stay poisoned in both
    EXPECT_TRUE(same_bytes(f_o, s_o)) << "q_rope_out differs";
    EXPECT_TRUE(std::isnan(f_c.get(0))) << "slot 0 was written";
    EXPECT_TRUE(std::isnan(f_o.get(c.rope))) << "the column after q_rope_out was written";
    // Against the CPU reference (valid slots only: the CPU refuses a padding slot).
    for (auto& v : slot) v = v < 0 ? int32_t(3 * n + 1) : v;  // a slot the GPU run left alone
    HostTensor cpu_slots = host_i32(slot), ref_c = host_tensor(c.t, {slots, latent});
    HostTensor ref_kv = kv, ref_q = q;
    ref_kv.t.data = ref_kv.bytes.data();
    ref_q.t.data = ref_q.bytes.data();
    Tensor ref_rope = Tensor::make(static_cast<char*>(ref_q.t.data) + c.nope * int64_t(dtype_size(c.t)), c.t, {n, c.heads, c.rope});
    ref_rope.stride[0] = c.heads * qk;
    ref_rope.stride[1] = qk;
    MOEX_ASSERT_OK(cpu_->mla_rope_cache({.kv_a = ref_kv.t, .kv_norm = w.t, .eps = 1e-6f, .q_rope = ref_rope,
                                         .q_rope_out = {}, .positions = positions.t, .inv_freq = inv_freq.t,
                                         .attn_scale = 1.1f, .interleaved = c.interleaved, .slot_mapping = cpu_slots.t,
                                         .cache = ref_c.t}));
    const double tol = c.t == DType::kF32 ? kTolF32 : kTolBf16;
    EXPECT_LT(rel_l2(f_kv, ref_kv), tol) << "kv_a against the CPU";
    EXPECT_LT(rel_l2(f_q, ref_q), tol) << "q against the CPU";
  }
}

TEST_F(FusedOpsTest, BadInputIsAOneLineError) {
  const int64_t n = 2, qh = 4, kvh = 2, d = 16, width = (qh + 2 * kvh) * d + 5;
  HostTensor qkv = host_random(DType::kBF16, {n, width}, rng_);
  const QkvViews hv = qkv_views(qkv, qh, kvh, d);
  DeviceTensor d_qkv = to_device(*gpu_, qkv);
  DeviceTensor d_if = to_device(*gpu_, host_tensor(DType::kF32, {d / 2}));
  DeviceTensor d_pos = to_device(*gpu_, host_i32({0, 1})), d_slot = to_device(*gpu_, host_i32({0, 1}));
  DeviceTensor kc = device_poisoned(*gpu_, DType::kBF16, {4, kvh * d}), vc = device_poisoned(*gpu_, DType::kBF16, {4, kvh * d});
  DeviceTensor vc_f32 = device_poisoned(*gpu_, DType::kF32, {4, kvh * d});
  auto dev = [&](const Tensor& t) { return rebase(t, qkv.t.data, d_qkv.t.data, DeviceType::kCuda); };
  const ops::QkvRopeCacheParams ok{.q = dev(hv.q), .k = dev(hv.k), .v = dev(hv.v), .q_norm = {}, .k_norm = {},
                                   .eps = 1e-6f, .positions = d_pos.t, .inv_freq = d_if.t, .attn_scale = 1.f,
                                   .interleaved = false, .slot_mapping = d_slot.t, .k_cache = kc.t, .v_cache = vc.t};
  MOEX_ASSERT_OK(gpu_->qkv_rope_cache(ok));
  auto expect_error = [&](const Status& s, const char* what) {
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find(what), std::string::npos) << s.message();
    EXPECT_EQ(s.message().find('\n'), std::string::npos) << s.message();
  };
  ops::QkvRopeCacheParams bad = ok;
  bad.v_cache = vc_f32.t;
  expect_error(gpu_->qkv_rope_cache(bad), "v_cache");
  bad = ok;
  bad.q = hv.q;  // host memory
  expect_error(gpu_->qkv_rope_cache(bad), "not a CUDA tensor");
  bad = ok;
  bad.k.stride[1] = 2 * d;  // heads not contiguous
  expect_error(gpu_->qkv_rope_cache(bad), "contiguous heads");
  DeviceTensor res = device_poisoned(*gpu_, DType::kBF16, {3, 64}), br = device_poisoned(*gpu_, DType::kF32, {3, 64});
  DeviceTensor w = device_poisoned(*gpu_, DType::kBF16, {64}), out = device_poisoned(*gpu_, DType::kBF16, {3, 64});
  expect_error(gpu_->add_rms_norm({.residual = res.t, .branch = br.t, .weight = w.t, .out = out.t, .eps = 1e-6f}), "branch");
  DeviceTensor w63 = device_poisoned(*gpu_, DType::kBF16, {63});
  expect_error(gpu_->add_rms_norm({.residual = res.t, .branch = out.t, .weight = w63.t, .out = out.t, .eps = 1e-6f}), "weight");
}

}  // namespace
}  // namespace moex::test
