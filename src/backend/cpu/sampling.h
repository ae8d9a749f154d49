// The host sampling rule for one row of logits, shared by the CPU sample op (sampling.cpp) and
// the runtime's Sampler (runtime/sampler.cpp), so both pick the same id from the same draw.
// Rule (ops/sampling.h): greedy when temperature <= 0; otherwise candidates sorted by logit
// descending (ties by id), top-k, softmax at the temperature in fp64, top-p (smallest prefix
// whose probability reaches top_p, at least one token), then the first candidate whose
// cumulative weight exceeds uniform * total.
#pragma once
#include <cstdint>
#include <vector>

namespace moex::cpu {

struct SampleRowScratch {
  std::vector<int32_t> order;  // [vocab] candidate ids
  std::vector<double> probs;   // [kept] unnormalized weights
};

// How close a sampled row came to a cumulative-probability boundary: a backend that rounds
// differently may pick a neighbouring id when margin is tiny (tests exclude such rows).
struct SampleRowInfo {
  double margin = 1.0;  // min distance (as a probability) from uniform / top_p to a boundary
  int64_t kept = 0;     // candidates left after top-k and top-p
};

// Argmax, ties to the lower id (strict >, so NaN never wins unless it is logits[0]).
int32_t argmax_row(const float* logits, int64_t vocab);  // logits [vocab]

// logits [vocab] f32; uniform in [0, 1) (unused when temperature <= 0); info may be null.
int32_t sample_row(const float* logits, int64_t vocab, float temperature, int top_k, float top_p, double uniform,
                   SampleRowScratch* scratch, SampleRowInfo* info = nullptr);

}  // namespace moex::cpu
