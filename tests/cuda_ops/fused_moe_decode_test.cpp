// The fused-MoE decode path (kernels/moe/moe_decode.cu, taken for at most kMoeDecodeMaxTokens
// tokens) against the CPU backend over the model shapes of bench/cases/fused_moe.json, with
// shared experts, partial expert maps and skewed routing; and bit-identity of a token's output
// whether the decode or the prefill path computed it, and whether the decode path ran as one
// launch (moe_decode_fused.cu) or three.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <thread>
#include <vector>

#include "cuda_ops/cuda_ops_util.h"

namespace moex::test {
namespace {

constexpr double kTolBf16 = 5e-3;
constexpr int64_t kDecodeMax = 64;  // kernels/moe/moe_decode.h kMoeDecodeMaxTokens

struct DecodeShape {
  const char* name;
  int routed, top_k, hidden, inter;
  int local_routed;  // < routed: an expert map with -1 entries
  int shared;        // shared experts: global ids routed.., always chosen, always local, weight 1
};

struct DecodeWeights {
  HostTensor w13, w2, map;
  std::vector<int32_t> local_routed;  // global routed ids that are local
  DeviceTensor d_w13, d_w2, d_map;
  bool use_map = false;
};

enum class Routing { kRandom, kOneExpert, kAllExperts, kNoneLocal };

class FusedMoeDecodeTest : public CudaOpsTest {
 protected:
  DecodeWeights make_weights(const DecodeShape& s) {
    DecodeWeights w;
    const int local = s.local_routed + s.shared, global = s.routed + s.shared;
    const float a13 = std::sqrt(3.f / float(s.hidden)), a2 = std::sqrt(3.f / float(s.inter));
    w.w13 = host_random(DType::kBF16, {local, 2 * s.inter, s.hidden}, rng_, -a13, a13);
    w.w2 = host_random(DType::kBF16, {local, s.hidden, s.inter}, rng_, -a2, a2);
    std::vector<int32_t> perm(size_t(s.routed));
    for (int i = 0; i < s.routed; ++i) perm[size_t(i)] = i;
    for (int i = s.routed - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng_.uniform_int(0, i))]);
    std::vector<int32_t> map(size_t(global), -1);
    // Local indices: the chosen routed experts in a shuffled order, then the shared ones.
    for (int l = 0; l < s.local_routed; ++l) {
      map[size_t(perm[size_t(l)])] = l;
      w.local_routed.push_back(perm[size_t(l)]);
    }
    for (int j = 0; j < s.shared; ++j) map[size_t(s.routed + j)] = s.local_routed + j;
    w.use_map = s.local_routed < s.routed;
    w.map = host_i32(map);
    w.d_w13 = to_device(*gpu_, w.w13);
    w.d_w2 = to_device(*gpu_, w.w2);
    w.d_map = to_device(*gpu_, w.map);
    return w;
  }

  // [n, top_k + shared]: distinct routed ids per token, then the shared ids.
  HostTensor make_ids(const DecodeShape& s, const DecodeWeights& w, int64_t n, Routing routing) {
    const int slots = s.top_k + s.shared;
    HostTensor ids = host_tensor(DType::kI32, {n, slots});
    for (int64_t t = 0; t < n; ++t) {
      for (int j = 0; j < s.top_k; ++j) {
        int32_t id;
        bool dup;
        do {
          if (routing == Routing::kAllExperts) {
            id = (j + int(t)) % s.routed;  // top_k == routed: every token on every expert
          } else if (routing == Routing::kNoneLocal) {
            id = rng_.uniform_int(0, s.routed - 1);
            dup = w.map.i32(id) >= 0;  // redraw: only experts of other devices
            if (dup) continue;
          } else if (routing == Routing::kOneExpert && j == int(t % s.top_k)) {
            id = w.use_map ? w.local_routed[0] : 0;  // every token on one expert, in varying slots
          } else if (w.use_map && rng_.uniform_int(0, 3) != 0) {
            id = w.local_routed[size_t(rng_.uniform_int(0, int(w.local_routed.size()) - 1))];
          } else {
            id = rng_.uniform_int(0, s.routed - 1);
          }
          dup = false;
          for (int i = 0; i < j; ++i) dup |= ids.i32(t * slots + i) == id;
          if (routing == Routing::kOneExpert && j != int(t % s.top_k)) dup |= id == (w.use_map ? w.local_routed[0] : 0);
        } while (dup);
        ids.i32(t * slots + j) = id;
      }
      for (int j = 0; j < s.shared; ++j) ids.i32(t * slots + s.top_k + j) = s.routed + j;
    }
    return ids;
  }

  HostTensor make_weights_of(const DecodeShape& s, int64_t n) {
    const int slots = s.top_k + s.shared;
    HostTensor wts = host_random(DType::kF32, {n, slots}, rng_, 0.05f, 1.f);
    for (int64_t t = 0; t < n; ++t)
      for (int j = 0; j < s.shared; ++j) wts.set(t * slots + s.top_k + j, 1.f);
    return wts;
  }

  static ops::FusedMoeParams params(const Tensor& x, const Tensor& ids, const Tensor& wts, const DecodeWeights& w,
                                    bool on_device, const Tensor& out) {
    ops::FusedMoeParams p;
    p.x = x; p.topk_ids = ids; p.topk_weights = wts;
    p.w13 = on_device ? w.d_w13.t : w.w13.t;
    p.w2 = on_device ? w.d_w2.t : w.w2.t;
    if (w.use_map) p.expert_map = on_device ? w.d_map.t : w.map.t;
    p.out = out;
    return p;
  }

  void check(const DecodeShape& s, const DecodeWeights& w, int64_t n, Routing routing = Routing::kRandom,
             DType out_dtype = DType::kBF16) {
    SCOPED_TRACE(std::string(s.name) + " n " + std::to_string(n) + " routing " + std::to_string(int(routing)) +
                 " seed " + std::to_string(seed_));
    HostTensor x = host_random(DType::kBF16, {n, s.hidden}, rng_);
    HostTensor ids = make_ids(s, w, n, routing);
    HostTensor wts = make_weights_of(s, n);
    HostTensor ref = host_tensor(out_dtype, {n, s.hidden});
    MOEX_ASSERT_OK(cpu_->fused_moe(params(x.t, ids.t, wts.t, w, false, ref.t)));
    DeviceTensor dx = to_device(*gpu_, x), dids = to_device(*gpu_, ids), dwts = to_device(*gpu_, wts);
    DeviceTensor dout = device_poisoned(*gpu_, out_dtype, {n, s.hidden});
    MOEX_ASSERT_OK(gpu_->fused_moe(params(dx.t, dids.t, dwts.t, w, true, dout.t)));
    const HostTensor got = to_host(*gpu_, dout);
    EXPECT_LT(rel_l2(got, ref), kTolBf16);
    // Each row on its own too: a row that the decode path dropped would hide in the global norm.
    for (int64_t t = 0; t < n; ++t) {
      double num = 0, den = 0;
      for (int64_t c = 0; c < s.hidden; ++c) {
        const double d = double(got.get(t * s.hidden + c)) - double(ref.get(t * s.hidden + c));
        num += d * d;
        den += double(ref.get(t * s.hidden + c)) * double(ref.get(t * s.hidden + c));
      }
      ASSERT_LT(std::sqrt(num / std::max(den, 1e-30)), 2 * kTolBf16) << "token " << t;
    }
  }
};

TEST_F(FusedMoeDecodeTest, Qwen3_30B_A3B) {
  const DecodeShape s{"qwen3-30b-a3b", 128, 8, 2048, 768, 128, 0};
  const DecodeWeights w = make_weights(s);
  for (const int64_t n : {1, 2, 3, 8, 17, 64}) check(s, w, n);
}

TEST_F(FusedMoeDecodeTest, Qwen3_235B_A22BExpertMap) {
  const DecodeShape s{"qwen3-235b-a22b (12 of 128 local)", 128, 8, 4096, 1536, 12, 0};
  const DecodeWeights w = make_weights(s);
  for (const int64_t n : {1, 3, 17, 64}) check(s, w, n);
}

TEST_F(FusedMoeDecodeTest, DeepSeekV3SharedExpertAndMap) {
  const DecodeShape s{"deepseek-v3 (4 of 256 local + 1 shared)", 256, 8, 7168, 2048, 4, 1};
  const DecodeWeights w = make_weights(s);
  for (const int64_t n : {1, 2, 8}) check(s, w, n);
}

TEST_F(FusedMoeDecodeTest, DeepSeekV2LiteTwoSharedExperts) {
  const DecodeShape s{"deepseek-v2-lite (64 + 2 shared)", 64, 6, 2048, 1408, 64, 2};
  const DecodeWeights w = make_weights(s);
  for (const int64_t n : {1, 3, 17, 64}) check(s, w, n);
}

TEST_F(FusedMoeDecodeTest, MixtralExpertMap) {
  const DecodeShape s{"mixtral-8x7b (3 of 8 local)", 8, 2, 4096, 14336, 3, 0};
  const DecodeWeights w = make_weights(s);
  for (const int64_t n : {1, 2, 17}) check(s, w, n);
}

// Every token on one expert: 64 slots on it (more than one 32-row token group) and the rest
// spread; experts with no token at all are skipped.
TEST_F(FusedMoeDecodeTest, AllTokensOnOneExpert) {
  const DecodeShape s{"one expert", 32, 4, 1024, 512, 32, 0};
  const DecodeWeights w = make_weights(s);
  for (const int64_t n : {1, 17, 64}) check(s, w, n, Routing::kOneExpert);
  const DecodeShape m{"one expert, mapped", 32, 4, 1024, 512, 7, 0};
  const DecodeWeights wm = make_weights(m);
  for (const int64_t n : {3, 64}) check(m, wm, n, Routing::kOneExpert);
}

// No slot routed to a local expert: nothing to stream, the output is all zeros (not left unwritten).
TEST_F(FusedMoeDecodeTest, NoLocalExpertGivesZeros) {
  const DecodeShape s{"none local", 64, 6, 1024, 512, 8, 0};
  const DecodeWeights w = make_weights(s);
  for (const int64_t n : {1, 5, 64}) check(s, w, n, Routing::kNoneLocal);
}

// top_k == experts: each expert gets every token; f32 output as well.
TEST_F(FusedMoeDecodeTest, TopKEqualsExperts) {
  const DecodeShape s{"top_k = E", 8, 8, 512, 256, 8, 0};
  const DecodeWeights w = make_weights(s);
  for (const int64_t n : {1, 8, 33, 64}) check(s, w, n, Routing::kAllExperts);
  check(s, w, 17, Routing::kAllExperts, DType::kF32);
  check(s, w, 5, Routing::kRandom, DType::kF32);
}

// A token's bits are the same alone, in decode batches and in prefill batches (the path switch
// at kDecodeMax tokens changes no bit), with and without an expert map.
TEST_F(FusedMoeDecodeTest, TokenBitsDoNotDependOnPath) {
  for (const DecodeShape& s : {DecodeShape{"qwen3-30b-a3b", 128, 8, 2048, 768, 128, 0},
                               DecodeShape{"deepseek-v2-lite (24 of 64 local + 2 shared)", 64, 6, 2048, 1408, 24, 2}}) {
    SCOPED_TRACE(s.name);
    const DecodeWeights w = make_weights(s);
    const int64_t n = 160;
    HostTensor x = host_random(DType::kBF16, {n, s.hidden}, rng_);
    HostTensor ids = make_ids(s, w, n, Routing::kRandom);
    HostTensor wts = make_weights_of(s, n);
    DeviceTensor dx = to_device(*gpu_, x), dids = to_device(*gpu_, ids), dwts = to_device(*gpu_, wts);
    DeviceTensor dall = device_poisoned(*gpu_, DType::kBF16, {n, s.hidden});
    MOEX_ASSERT_OK(gpu_->fused_moe(params(dx.t, dids.t, dwts.t, w, true, dall.t)));  // prefill path
    HostTensor all = to_host(*gpu_, dall);
    for (const int64_t batch : {int64_t(1), int64_t(2), int64_t(17), kDecodeMax, kDecodeMax + 1, int64_t(100)}) {
      const int64_t t0 = rng_.uniform_int(0, int(n - batch));
      DeviceTensor dpart = device_poisoned(*gpu_, DType::kBF16, {batch, s.hidden});
      MOEX_ASSERT_OK(gpu_->fused_moe(params(dx.t.slice(0, t0, t0 + batch), dids.t.slice(0, t0, t0 + batch),
                                            dwts.t.slice(0, t0, t0 + batch), w, true, dpart.t)));
      HostTensor part = to_host(*gpu_, dpart);
      for (int64_t r = 0; r < batch; ++r)
        ASSERT_TRUE(rows_bit_equal(part, r, all, t0 + r)) << "token " << t0 + r << " in a batch of " << batch;
    }
  }
}

// MOEX_MOE_DECODE_FUSED (read at every call) sets the single-launch plan's token limit: "0" runs
// the three-kernel plan, "16" the single launch up to 16 tokens.
HostTensor run_plan(Backend& gpu, const char* fused, const ops::FusedMoeParams& p, DType out_dtype, int64_t n,
                    int64_t hidden) {
  setenv("MOEX_MOE_DECODE_FUSED", fused, 1);
  DeviceTensor d = device_poisoned(gpu, out_dtype, {n, hidden});
  ops::FusedMoeParams q = p;
  q.out = d.t;
  const Status st = gpu.fused_moe(q);
  unsetenv("MOEX_MOE_DECODE_FUSED");
  EXPECT_TRUE(st.is_ok()) << st.message();
  return to_host(gpu, d);
}

// The single launch against the CPU backend and bit-identical to the three-kernel plan, over
// shared experts, expert maps, one hot expert, no local expert, top_k = E and f32 output.
TEST_F(FusedMoeDecodeTest, SingleLaunchMatchesCpuAndThreeKernelBits) {
  struct Case {
    DecodeShape s;
    Routing routing;
    DType out;
    std::vector<int64_t> ns;
  };
  const std::vector<Case> cases = {
      {{"qwen3-30b-a3b", 128, 8, 2048, 768, 128, 0}, Routing::kRandom, DType::kBF16, {1, 2, 5, 16}},
      {{"deepseek-v2-lite (24 of 64 local + 2 shared)", 64, 6, 2048, 1408, 24, 2}, Routing::kRandom, DType::kBF16, {1, 3, 16}},
      {{"qwen3-235b-a22b (12 of 128 local)", 128, 8, 4096, 1536, 12, 0}, Routing::kRandom, DType::kF32, {1, 7}},
      {{"one expert, mapped", 32, 4, 1024, 512, 7, 0}, Routing::kOneExpert, DType::kBF16, {1, 9, 16}},
      {{"none local", 64, 6, 1024, 512, 8, 0}, Routing::kNoneLocal, DType::kBF16, {1, 4}},
      {{"top_k = E", 8, 8, 512, 256, 8, 0}, Routing::kAllExperts, DType::kBF16, {1, 16}},
      {{"top_k = E", 8, 8, 512, 256, 8, 0}, Routing::kAllExperts, DType::kF32, {3}},
  };
  for (const Case& c : cases) {
    const DecodeWeights w = make_weights(c.s);
    for (const int64_t n : c.ns) {
      SCOPED_TRACE(std::string(c.s.name) + " n " + std::to_string(n) + " seed " + std::to_string(seed_));
      HostTensor x = host_random(DType::kBF16, {n, c.s.hidden}, rng_);
      HostTensor ids = make_ids(c.s, w, n, c.routing);
      HostTensor wts = make_weights_of(c.s, n);
      HostTensor ref = host_tensor(c.out, {n, c.s.hidden});
      MOEX_ASSERT_OK(cpu_->fused_moe(params(x.t, ids.t, wts.t, w, false, ref.t)));
      DeviceTensor dx = to_device(*gpu_, x), dids = to_device(*gpu_, ids), dwts = to_device(*gpu_, wts);
      const ops::FusedMoeParams p = params(dx.t, dids.t, dwts.t, w, true, Tensor{});
      const HostTensor one = run_plan(*gpu_, "16", p, c.out, n, c.s.hidden);
      const HostTensor three = run_plan(*gpu_, "0", p, c.out, n, c.s.hidden);
      EXPECT_LT(rel_l2(one, ref), kTolBf16);
      for (int64_t r = 0; r < n; ++r) ASSERT_TRUE(rows_bit_equal(one, r, three, r)) << "token " << r;
    }
  }
}

// Back-to-back single launches without a host sync between them, alternating routings with
// different active expert counts (8+, 1 and 0 local experts): the counters each launch leaves
// behind must be zero for the next one, and every call gives the same bits as the first of its kind.
TEST_F(FusedMoeDecodeTest, SingleLaunchBackToBackCalls) {
  const DecodeShape s{"qwen3-30b-a3b (32 local)", 128, 8, 2048, 768, 32, 0};
  const DecodeWeights w = make_weights(s);
  const Routing kinds[3] = {Routing::kRandom, Routing::kOneExpert, Routing::kNoneLocal};
  const int64_t ns[3] = {5, 1, 2};
  std::vector<HostTensor> xs, idss, wtss, refs;
  std::vector<DeviceTensor> dev;  // x, ids, weights per kind
  for (int k = 0; k < 3; ++k) {
    xs.push_back(host_random(DType::kBF16, {ns[k], s.hidden}, rng_));
    idss.push_back(make_ids(s, w, ns[k], kinds[k]));
    wtss.push_back(make_weights_of(s, ns[k]));
    refs.push_back(host_tensor(DType::kBF16, {ns[k], s.hidden}));
    MOEX_ASSERT_OK(cpu_->fused_moe(params(xs[size_t(k)].t, idss[size_t(k)].t, wtss[size_t(k)].t, w, false, refs[size_t(k)].t)));
    dev.push_back(to_device(*gpu_, xs[size_t(k)]));
    dev.push_back(to_device(*gpu_, idss[size_t(k)]));
    dev.push_back(to_device(*gpu_, wtss[size_t(k)]));
  }
  constexpr int kRounds = 12;
  std::vector<DeviceTensor> outs;
  setenv("MOEX_MOE_DECODE_FUSED", "16", 1);
  for (int i = 0; i < 3 * kRounds; ++i) {
    const int k = i % 3;
    outs.push_back(device_poisoned(*gpu_, DType::kBF16, {ns[k], s.hidden}));
    const Status st = gpu_->fused_moe(params(dev[size_t(3 * k)].t, dev[size_t(3 * k + 1)].t, dev[size_t(3 * k + 2)].t, w,
                                             true, outs.back().t));
    if (!st.is_ok()) unsetenv("MOEX_MOE_DECODE_FUSED");
    MOEX_ASSERT_OK(st);
  }
  unsetenv("MOEX_MOE_DECODE_FUSED");
  std::vector<HostTensor> first;
  for (int i = 0; i < 3 * kRounds; ++i) {
    const int k = i % 3;
    SCOPED_TRACE("call " + std::to_string(i) + " seed " + std::to_string(seed_));
    HostTensor got = to_host(*gpu_, outs[size_t(i)]);
    if (i < 3) {
      EXPECT_LT(rel_l2(got, refs[size_t(k)]), kTolBf16);
      first.push_back(std::move(got));
      continue;
    }
    for (int64_t r = 0; r < ns[k]; ++r) ASSERT_TRUE(rows_bit_equal(got, r, first[size_t(k)], r)) << "token " << r;
  }
}

// Two backends on one device, stepping from two host threads at once: each keeps its own arrival
// counters (Scratch::counters), so the single-launch calls of one never count in the other's
// (with device-global counters they could interleave: a down block could start on a count that
// the other backend's blocks made). Every call gives the bits of a call made alone.
TEST_F(FusedMoeDecodeTest, TwoBackendsFromTwoThreads) {
  const DecodeShape s{"qwen3-30b-a3b (32 local)", 128, 8, 2048, 768, 32, 0};
  const DecodeWeights w = make_weights(s);
  const int64_t n = 1;
  HostTensor x = host_random(DType::kBF16, {n, s.hidden}, rng_);
  HostTensor ids = make_ids(s, w, n, Routing::kRandom);
  HostTensor wts = make_weights_of(s, n);
  HostTensor ref = host_tensor(DType::kBF16, {n, s.hidden});
  MOEX_ASSERT_OK(cpu_->fused_moe(params(x.t, ids.t, wts.t, w, false, ref.t)));
  auto second = make_cuda_backend(0);
  MOEX_ASSERT_OK(second.status());
  Backend* backends[2] = {gpu_.get(), second->get()};
  constexpr int kCalls = 200;
  struct PerBackend {
    DeviceTensor x, ids, wts;
    std::vector<DeviceTensor> outs;
    Status status = Status::ok();
  };
  std::vector<PerBackend> per(2);
  for (int b = 0; b < 2; ++b) {
    per[size_t(b)].x = to_device(*backends[b], x);
    per[size_t(b)].ids = to_device(*backends[b], ids);
    per[size_t(b)].wts = to_device(*backends[b], wts);
    for (int i = 0; i < kCalls; ++i) per[size_t(b)].outs.push_back(device_poisoned(*backends[b], DType::kBF16, {n, s.hidden}));
  }
  DeviceTensor alone = device_poisoned(*gpu_, DType::kBF16, {n, s.hidden});
  MOEX_ASSERT_OK(gpu_->fused_moe(params(per[0].x.t, per[0].ids.t, per[0].wts.t, w, true, alone.t)));
  const HostTensor want = to_host(*gpu_, alone);
  EXPECT_LT(rel_l2(want, ref), kTolBf16);
  std::vector<std::thread> threads;
  for (int b = 0; b < 2; ++b) {
    threads.emplace_back([&, b] {
      PerBackend& p = per[size_t(b)];
      for (int i = 0; i < kCalls && p.status.is_ok(); ++i)
        p.status = backends[b]->fused_moe(params(p.x.t, p.ids.t, p.wts.t, w, true, p.outs[size_t(i)].t));
      if (p.status.is_ok()) p.status = backends[b]->synchronize();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int b = 0; b < 2; ++b) {
    MOEX_ASSERT_OK(per[size_t(b)].status);
    for (int i = 0; i < kCalls; ++i) {
      const HostTensor got = to_host(*backends[b], per[size_t(b)].outs[size_t(i)]);
      ASSERT_TRUE(rows_bit_equal(got, 0, want, 0)) << "backend " << b << " call " << i;
    }
  }
}

// Repeated calls give the same bits (no atomic arithmetic, no order that depends on scheduling).
TEST_F(FusedMoeDecodeTest, RepeatedCallsAreBitIdentical) {
  const DecodeShape s{"qwen3-30b-a3b (32 local)", 128, 8, 2048, 768, 32, 0};
  const DecodeWeights w = make_weights(s);
  const int64_t n = 9;
  HostTensor x = host_random(DType::kBF16, {n, s.hidden}, rng_);
  HostTensor ids = make_ids(s, w, n, Routing::kRandom);
  HostTensor wts = make_weights_of(s, n);
  DeviceTensor dx = to_device(*gpu_, x), dids = to_device(*gpu_, ids), dwts = to_device(*gpu_, wts);
  DeviceTensor d1 = device_poisoned(*gpu_, DType::kBF16, {n, s.hidden});
  DeviceTensor d2 = device_poisoned(*gpu_, DType::kBF16, {n, s.hidden});
  MOEX_ASSERT_OK(gpu_->fused_moe(params(dx.t, dids.t, dwts.t, w, true, d1.t)));
  MOEX_ASSERT_OK(gpu_->fused_moe(params(dx.t, dids.t, dwts.t, w, true, d2.t)));
  const HostTensor a = to_host(*gpu_, d1), b = to_host(*gpu_, d2);
  for (int64_t r = 0; r < n; ++r) ASSERT_TRUE(rows_bit_equal(a, r, b, r)) << "token " << r;
}

}  // namespace
}  // namespace moex::test
