// Deterministic, platform-independent random numbers: SplitMix64 (public-domain algorithm by
// Sebastiano Vigna) and FNV-1a for naming streams. Used by sampling, random weights, benchmark
// inputs and tests, so a seed means the same numbers everywhere.
#pragma once
#include <cstdint>
#include <string_view>

namespace moex {

// The SplitMix64 output function of one 64-bit input (a counter-based hash).
constexpr uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

constexpr uint64_t fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// 53 random bits as a double in [0, 1).
constexpr double unit_double(uint64_t bits) { return double(bits >> 11) * (1.0 / 9007199254740992.0); }

// Element i of a seeded uniform tensor in [-half_width, half_width): (2 u - 1) * half_width with
// u = unit_double(splitmix64(stream + i)), in double (the caller rounds once to its dtype). The
// random weights of every backend and of tools/hf_random_parity.py. 2 u is exact, so a fused
// multiply-add of 2 u - 1 gives the same double.
constexpr double uniform_element(uint64_t stream, uint64_t i, double half_width) {
  return (2.0 * unit_double(splitmix64(stream + i)) - 1.0) * half_width;
}

// The sequential SplitMix64 generator: state advances by the golden-ratio increment.
class SplitMix64 {
 public:
  explicit constexpr SplitMix64(uint64_t seed) : state_(seed) {}
  constexpr uint64_t next() {
    const uint64_t out = splitmix64(state_);
    state_ += 0x9e3779b97f4a7c15ull;
    return out;
  }
  constexpr double uniform() { return unit_double(next()); }  // [0, 1)

 private:
  uint64_t state_;
};

}  // namespace moex
