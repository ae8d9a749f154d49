// Sequence lookup shared by the attention kernels: the sequence of a flattened row is the last
// i with start[i] <= row in a cumulative start array (query_start, cu_seqlens).
#pragma once
#include <cstdint>

namespace moex::kernels {

// Last i in [0, n) with a[i] <= x (a ascending, a[0] <= x).
__device__ __forceinline__ int upper_index(const int32_t* a, int n, int x) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (a[mid] <= x) lo = mid; else hi = mid - 1;
  }
  return lo;
}

}  // namespace moex::kernels
