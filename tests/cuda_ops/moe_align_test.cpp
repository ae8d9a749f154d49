// The MoE align step against a host computation: counts, offsets, the expert-grouped slot
// list (ascending within an expert) and the tile plan must match exactly, for both kernel sets
// (the chunked one with its block_base scratch, and the per-expert one without).
#if defined(MOEX_WITH_CUDA)
#include <algorithm>

#include "backend/cuda/cuda_backend.h"
#include "cuda_ops/cuda_ops_util.h"
#include "kernels/moe/moe.h"

namespace moex::test {
namespace {

class MoeAlignTest : public CudaOpsTest {};

TEST_F(MoeAlignTest, MatchesHostGrouping) {
  struct Case { int experts, local, top_k, tokens, tile_m; };
  for (const Case c : {Case{128, 128, 8, 1, 16}, Case{128, 128, 8, 300, 64}, Case{256, 17, 8, 77, 16},
                       Case{8, 8, 2, 1000, 64}, Case{10, 3, 3, 5, 16}, Case{128, 128, 8, 4099, 128},
                       Case{256, 40, 9, 1500, 128}, Case{1100, 1100, 4, 600, 64}}) {
   for (const bool chunked : {true, false}) {
    SCOPED_TRACE("experts " + std::to_string(c.experts) + " local " + std::to_string(c.local) + " tokens " +
                 std::to_string(c.tokens) + (chunked ? " chunked" : " per-expert") + " seed " + std::to_string(seed_));
    const int slots = c.tokens * c.top_k;
    std::vector<int32_t> ids(static_cast<size_t>(slots)), map(static_cast<size_t>(c.experts), -1);
    for (auto& id : ids) id = rng_.uniform_int(0, c.experts - 1);
    for (int l = 0; l < c.local; ++l) map[size_t(rng_.uniform_int(0, c.experts - 1))] = l;  // some collide: fine
    std::vector<int32_t> local_of(size_t(c.experts), -1);
    const bool identity = c.local == c.experts;
    for (int e = 0; e < c.experts; ++e) local_of[size_t(e)] = identity ? e : map[size_t(e)];
    // Host reference.
    std::vector<int32_t> counts(size_t(c.local), 0), offsets(size_t(c.local) + 1, 0), sorted;
    for (int s = 0; s < slots; ++s)
      if (local_of[size_t(ids[size_t(s)])] >= 0) ++counts[size_t(local_of[size_t(ids[size_t(s)])])];
    for (int e = 0; e < c.local; ++e) offsets[size_t(e) + 1] = offsets[size_t(e)] + counts[size_t(e)];
    std::vector<int32_t> tile_expert, tile_row;
    for (int e = 0; e < c.local; ++e) {
      for (int s = 0; s < slots; ++s)
        if (local_of[size_t(ids[size_t(s)])] == e) sorted.push_back(s);
      for (int r = 0; r < counts[size_t(e)]; r += c.tile_m) {
        tile_expert.push_back(e);
        tile_row.push_back(offsets[size_t(e)] + r);
      }
    }
    const int max_tiles = kernels::moe_max_tiles(slots, c.local, c.tile_m);
    ASSERT_LE(int(tile_expert.size()), max_tiles);
    // Device run.
    DeviceTensor d_ids = to_device(*gpu_, host_i32(ids)), d_map = to_device(*gpu_, host_i32(map));
    DeviceTensor d_counts = device_poisoned(*gpu_, DType::kI32, {c.local});
    DeviceTensor d_offsets = device_poisoned(*gpu_, DType::kI32, {c.local + 1});
    DeviceTensor d_sorted = device_poisoned(*gpu_, DType::kI32, {slots});
    DeviceTensor d_te = device_poisoned(*gpu_, DType::kI32, {max_tiles});
    DeviceTensor d_tr = device_poisoned(*gpu_, DType::kI32, {max_tiles});
    DeviceTensor d_nt = device_poisoned(*gpu_, DType::kI32, {1});
    const int scratch = kernels::moe_align_scratch(slots, c.local);
    DeviceTensor d_base = device_poisoned(*gpu_, DType::kI32, {std::max(1, scratch)});
    kernels::MoeAlignment al{d_counts.t.ptr<int32_t>(), d_offsets.t.ptr<int32_t>(), d_sorted.t.ptr<int32_t>(),
                             d_te.t.ptr<int32_t>(), d_tr.t.ptr<int32_t>(), d_nt.t.ptr<int32_t>(),
                             chunked && scratch > 0 ? d_base.t.ptr<int32_t>() : nullptr};
    auto* cuda = dynamic_cast<CudaBackend*>(gpu_.get());
    ASSERT_NE(cuda, nullptr);
    ASSERT_EQ(kernels::launch_moe_align(d_ids.t.ptr<int32_t>(), slots, identity ? nullptr : d_map.t.ptr<int32_t>(),
                                        c.experts, c.local, c.tile_m, al, cuda->stream()),
              cudaSuccess);
    HostTensor h_counts = to_host(*gpu_, d_counts), h_offsets = to_host(*gpu_, d_offsets);
    HostTensor h_sorted = to_host(*gpu_, d_sorted), h_te = to_host(*gpu_, d_te), h_tr = to_host(*gpu_, d_tr);
    HostTensor h_nt = to_host(*gpu_, d_nt);
    for (int e = 0; e < c.local; ++e) ASSERT_EQ(h_counts.i32(e), counts[size_t(e)]) << "expert " << e;
    for (int e = 0; e <= c.local; ++e) ASSERT_EQ(h_offsets.i32(e), offsets[size_t(e)]) << "offset " << e;
    for (size_t i = 0; i < sorted.size(); ++i) ASSERT_EQ(h_sorted.i32(int64_t(i)), sorted[i]) << "sorted " << i;
    ASSERT_EQ(h_nt.i32(0), int(tile_expert.size()));
    for (size_t i = 0; i < tile_expert.size(); ++i) {
      ASSERT_EQ(h_te.i32(int64_t(i)), tile_expert[i]) << "tile " << i;
      ASSERT_EQ(h_tr.i32(int64_t(i)), tile_row[i]) << "tile " << i;
    }
   }
  }
}

}  // namespace
}  // namespace moex::test
#endif  // MOEX_WITH_CUDA
