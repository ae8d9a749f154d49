// Scratch memory the backend lends to a launcher for the duration of one op (stream-ordered).
// A launcher asks once with the total it needs and carves the block itself: a second request
// may move the block.
#pragma once
#include <cstddef>

namespace moex::kernels {

// Arrival counters of kernels whose blocks count in (the last to arrive does the rest), by user:
// each has a fixed range of Scratch::counters().
constexpr size_t kCountersMoeDecode = 0;     // moe_decode_fused.cu: ready [512], tickets [1024], exit [1]
constexpr size_t kCountersMoeDecodeSize = 2048;
constexpr size_t kCountersNsaDecode = kCountersMoeDecode + kCountersMoeDecodeSize;  // nsa_decode_fast.cu
constexpr size_t kCountersNsaDecodeSize = 2 * 65536;  // [stage][B x H]
constexpr size_t kCountersTotal = kCountersNsaDecode + kCountersNsaDecodeSize;

class Scratch {
 public:
  virtual ~Scratch() = default;
  // At least `bytes` bytes, 256-byte aligned; nullptr if the device is out of memory.
  virtual void* get(size_t bytes) = 0;
  // [kCountersTotal] zero-initialised counters owned by this backend and never moved (device
  // globals would be shared by every backend on the device, so two backends stepping from two
  // host threads could interleave their counts). A kernel must leave its counters at zero.
  virtual unsigned int* counters() = 0;
};

// Bump allocator over one scratch block: carve(n) returns the next n-byte piece (256-aligned).
struct ScratchCarver {
  char* base = nullptr;
  size_t used = 0;
  template <class T>
  T* carve(size_t count) {
    T* p = reinterpret_cast<T*>(base + used);
    used += (count * sizeof(T) + 255) / 256 * 256;
    return p;
  }
  template <class T>
  static size_t bytes_for(size_t count) { return (count * sizeof(T) + 255) / 256 * 256; }
};

}  // namespace moex::kernels
