// Shared by tests/runtime/engine_sampling_test.cpp (CPU) and tests/cuda_model/
// engine_sampling_cuda_test.cpp (GPU): step_sample on a batch of 4 sequences with different
// samplers, against step() + the host Sampler on the same logits.
#pragma once
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/sampling.h"
#include "runtime/engine.h"

namespace moex::sampling_test {

inline std::unique_ptr<Engine> make_engine(const std::string& device) {
  EngineOptions o;
  o.model_dir = std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/models/qwen3_moe";
  o.device = device;
  o.max_context = 1024;
  auto e = Engine::create(o);
  return e ? std::move(*e) : nullptr;
}

inline std::vector<SamplingParams> batch_params() {
  std::vector<SamplingParams> ps(4);
  ps[0] = {0.f, 0, 1.f, 1};       // greedy
  ps[1] = {1.0f, 0, 1.f, 2};      // temperature
  ps[2] = {0.8f, 5, 1.f, 3};      // top-k
  ps[3] = {1.2f, 40, 0.9f, 4};    // top-k + top-p
  return ps;
}

// Runs `steps` sampling steps of 4 sequences in one batch on `engine`, twice over: once with
// step_sample, once with step() + host Samplers of the same seeds. Counts ids that differ at a
// boundary (allowed) and elsewhere (not allowed).
inline void compare(Engine& engine, int steps, int* compared, int* at_boundary, int* differ) {
  const int64_t vocab = engine.model().config().vocab_size;
  const std::vector<SamplingParams> ps = batch_params();
  std::vector<Sequence> a(ps.size()), b(ps.size());
  std::vector<Sampler> sa, sb;
  for (size_t i = 0; i < ps.size(); ++i) {
    a[i].tokens = b[i].tokens = {int32_t(3 + 5 * i), int32_t(17 + i), int32_t(40 + 3 * i)};
    sa.emplace_back(ps[i]);
    sb.emplace_back(ps[i]);
  }
  for (int s = 0; s < steps; ++s) {
    std::vector<Sequence*> seqs_a, seqs_b;
    std::vector<Sampler*> samp_a;
    for (size_t i = 0; i < ps.size(); ++i) {
      seqs_a.push_back(&a[i]);
      seqs_b.push_back(&b[i]);
      samp_a.push_back(&sa[i]);
    }
    std::vector<int32_t> ids;
    Status st = engine.step_sample(seqs_a, samp_a, &ids);
    ASSERT_TRUE(st.is_ok()) << st.message();
    ASSERT_EQ(ids.size(), ps.size());
    std::vector<float> logits;
    st = engine.step(seqs_b, &logits);
    ASSERT_TRUE(st.is_ok()) << st.message();
    for (size_t i = 0; i < ps.size(); ++i) {
      const float* row = logits.data() + i * size_t(vocab);
      // The draw sb[i] takes, seen ahead on a copy, for the boundary check.
      Sampler peek = sb[i];
      cpu::SampleRowScratch scratch;
      cpu::SampleRowInfo info;
      const double u = peek.greedy() ? 0.0 : peek.next_uniform();
      cpu::sample_row(row, vocab, ps[i].temperature, ps[i].top_k, ps[i].top_p, u, &scratch, &info);
      const int32_t want = sb[i].sample(row, vocab);
      ++*compared;
      if (ids[i] != want) ++*(info.margin < 1e-6 ? at_boundary : differ);
      // Both sequences continue with the host's choice so the paths stay comparable.
      a[i].tokens.push_back(want);
      b[i].tokens.push_back(want);
    }
  }
  for (size_t i = 0; i < ps.size(); ++i) {
    engine.release(&a[i]);
    engine.release(&b[i]);
  }
}

}  // namespace moex::sampling_test
