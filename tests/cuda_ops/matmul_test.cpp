// CUDA vs CPU: dense and batched matmul (bf16 tensor-core path, f32 fallback, f32 router
// logits, strided views, accumulate), and batch-invariance of a row's bits across every tile
// configuration (WMMA tiles and the pipelined tiles forced through MOEX_GEMM_TILE, the decode
// kernels through MOEX_GEMM_DECODE / MOEX_GEMM_DECODE_BN) and of the router kernel's bits.
#include <cstdlib>

#include "cuda_ops/cuda_ops_util.h"

namespace moex::test {
namespace {

constexpr double kTolBf16 = 5e-3;
constexpr double kTolF32 = 1e-5;

// Forces one pipelined tile (kernels/gemm/gemm.h) for the scope; nullptr = the launcher's choice.
class ScopedGemmTile {
 public:
  explicit ScopedGemmTile(const char* tile) {
    if (tile != nullptr) setenv("MOEX_GEMM_TILE", tile, 1);
    else unsetenv("MOEX_GEMM_TILE");
  }
  ~ScopedGemmTile() { unsetenv("MOEX_GEMM_TILE"); }
  ScopedGemmTile(const ScopedGemmTile&) = delete;
  ScopedGemmTile& operator=(const ScopedGemmTile&) = delete;
};
constexpr const char* kPipeTiles[] = {"wide", "square", "short"};

class MatmulTest : public CudaOpsTest {
 protected:
  // Runs out = alpha * x @ w^T (+ out) on both backends; x and out are [b, m, *] or [m, *].
  void check(int64_t b, int64_t m, int64_t n, int64_t k, DType xt, DType wt, DType ot, float alpha, bool accumulate) {
    SCOPED_TRACE("b " + std::to_string(b) + " m " + std::to_string(m) + " n " + std::to_string(n) + " k " + std::to_string(k) +
                 " x " + std::string(dtype_name(xt)) + " w " + std::string(dtype_name(wt)) + " out " +
                 std::string(dtype_name(ot)) + " seed " + std::to_string(seed_));
    const bool batched = b > 0;
    const int64_t bb = batched ? b : 1;
    HostTensor x = host_random(xt, {bb, m, k}, rng_);
    HostTensor w = host_random(wt, {bb, n, k}, rng_, -0.1f, 0.1f);
    HostTensor init = host_random(ot, {bb, m, n}, rng_);
    HostTensor ref = init;
    ref.t.data = ref.bytes.data();
    auto view = [&](const Tensor& t) { return batched ? t : t.reshape({t.shape[1], t.shape[2]}); };
    MOEX_ASSERT_OK(cpu_->matmul({view(x.t), view(w.t), view(ref.t), alpha, accumulate}));
    DeviceTensor dx = to_device(*gpu_, x), dw = to_device(*gpu_, w);
    DeviceTensor dout = accumulate ? to_device(*gpu_, init) : device_poisoned(*gpu_, ot, {bb, m, n});
    MOEX_ASSERT_OK(gpu_->matmul({view(dx.t), view(dw.t), view(dout.t), alpha, accumulate}));
    const double err = rel_l2(to_host(*gpu_, dout), ref);
    const bool all_f32 = xt == DType::kF32 && wt == DType::kF32 && ot == DType::kF32;
    EXPECT_LT(err, all_f32 ? kTolF32 : kTolBf16);
  }
};

TEST_F(MatmulTest, ModelShapesBf16) {
  check(0, 1, 2048, 2048, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);   // decode projection
  check(0, 7, 128, 2048, DType::kBF16, DType::kBF16, DType::kF32, 1.f, false);     // Qwen3 router logits
  check(0, 3, 256, 7168, DType::kBF16, DType::kBF16, DType::kF32, 1.f, false);     // DeepSeek-V3 router
  check(0, 37, 1536, 2048, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);  // MLA q_a-like
  check(0, 130, 576, 7168, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);  // kv_a (576), many rows
  check(0, 65, 4096, 4096, DType::kBF16, DType::kBF16, DType::kBF16, 0.5f, false);  // Mixtral o_proj, alpha
}

TEST_F(MatmulTest, OddSizesUnalignedKAndAccumulate) {
  check(0, 17, 54, 97, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);  // k % 8 != 0: scalar loads
  check(0, 1, 3, 5, DType::kBF16, DType::kBF16, DType::kF32, 1.f, false);
  check(0, 33, 70, 200, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, true);  // out += x @ w^T
  check(0, 5, 64, 64, DType::kBF16, DType::kBF16, DType::kF32, -2.f, true);
}

// Many rows: the pipelined tiles, with M, N and K off every tile size (K % 64 != 0 exercises
// the zero-filled tail chunk), alpha, accumulate and f32 output, under each forced tile.
TEST_F(MatmulTest, PipelinedTilesOddSizes) {
  for (const char* tile : kPipeTiles) {
    SCOPED_TRACE(std::string("tile ") + tile);
    ScopedGemmTile scoped(tile);
    check(0, 333, 200, 1032, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);
    check(0, 130, 328, 520, DType::kBF16, DType::kBF16, DType::kF32, -0.5f, true);
    check(3, 150, 130, 264, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);
  }
  check(0, 1000, 1100, 2056, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);  // the launcher's choice
}

// Few rows with K % 64 == 0: the streaming decode kernel (skinny_gemm.cu), against the CPU on
// odd n (row guards), batched views, alpha, accumulate and both output dtypes.
TEST_F(MatmulTest, DecodeKernelOddSizes) {
  check(0, 1, 4100, 2048, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);  // q_proj-like, n % 64 != 0
  check(0, 16, 15, 64, DType::kBF16, DType::kBF16, DType::kF32, 1.f, false);      // n < 16
  check(0, 7, 520, 4160, DType::kBF16, DType::kBF16, DType::kF32, -0.5f, true);   // accumulate, alpha
  check(3, 5, 130, 128, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);    // batched
  check(0, 2, 151, 2048, DType::kBF16, DType::kBF16, DType::kF32, 1.f, false);    // logits-like, f32 out
  check(0, 5, 8460, 256, DType::kBF16, DType::kBF16, DType::kF32, 1.f, false);    // lm_head-like: 4-warp blocks, a partial last block
  check(0, 33, 1000, 4160, DType::kBF16, DType::kBF16, DType::kBF16, 0.5f, true);  // 17..64 rows, short last slice
  check(0, 64, 600, 2048, DType::kBF16, DType::kBF16, DType::kF32, 1.f, false);    // 64 rows, f32 out (n > 256)
  check(2, 20, 72, 192, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);     // batched, 17..64 rows
  check(0, 130, 520, 1152, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, true);   // 3 m tiles, the last of 2 rows
  ScopedEnv wg("MOEX_GEMM_DECODE", "wg");     // the wgmma kernel also for m <= 16
  for (const char* bn : {"8", "16", "32"}) {  // each of its block widths
    SCOPED_TRACE(std::string("MOEX_GEMM_DECODE=wg, MOEX_GEMM_DECODE_BN ") + bn);
    ScopedEnv scoped("MOEX_GEMM_DECODE_BN", bn);
    check(0, 3, 1030, 1088, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);
    check(0, 50, 270, 576, DType::kBF16, DType::kBF16, DType::kF32, 1.f, true);
    check(2, 200, 100, 704, DType::kBF16, DType::kBF16, DType::kBF16, -1.f, false);  // batched m tiles
  }
}

// The decode kernels (auto: mma.sync up to 16 rows, its warp or block ring also forced with
// MOEX_GEMM_DECODE_RING; wgmma streaming for 17..256 on sm_90a; MOEX_GEMM_DECODE=mma keeps the
// 64-row pipelined tile / wgmma tiles above 16 rows, =wg takes the streaming kernel at every row
// count, at each block width) and the WMMA tiles (MOEX_GEMM_TILE=wmma) give the same bits for
// every row count up to 160, and all equal the rows of a many-row launch.
TEST_F(MatmulTest, DecodeKernelBitsEqualTheOtherTiles) {
  const int64_t n = 600, k = 1536, rows = 200;
  HostTensor x = host_random(DType::kBF16, {rows, k}, rng_);
  HostTensor w = host_random(DType::kBF16, {n, k}, rng_, -0.1f, 0.1f);
  DeviceTensor dx = to_device(*gpu_, x), dw = to_device(*gpu_, w);
  struct Variant {
    const char* tile;    // MOEX_GEMM_TILE
    const char* decode;  // MOEX_GEMM_DECODE
    const char* bn;      // MOEX_GEMM_DECODE_BN
    const char* ring;    // MOEX_GEMM_DECODE_RING
  };
  const Variant variants[] = {{nullptr, nullptr, nullptr, nullptr}, {nullptr, nullptr, nullptr, "block"},
                              {nullptr, nullptr, nullptr, "warp"},  {nullptr, "mma", nullptr, nullptr},
                              {nullptr, "wg", nullptr, nullptr},    {nullptr, "wg", "8", nullptr},
                              {nullptr, "wg", "16", nullptr},       {nullptr, "wg", "32", nullptr},
                              {"wmma", nullptr, nullptr, nullptr}};
  for (const DType ot : {DType::kF32, DType::kBF16}) {
    DeviceTensor full = device_poisoned(*gpu_, ot, {rows, n});
    MOEX_ASSERT_OK(gpu_->matmul({dx.t, dw.t, full.t, 1.f, false}));
    HostTensor all = to_host(*gpu_, full);
    for (const int64_t m : {1, 2, 3, 8, 13, 16, 17, 40, 64, 100, 160}) {
      const int64_t r0 = rng_.uniform_int(0, int(rows - m));
      for (const Variant& v : variants) {
        ScopedGemmTile tile(v.tile);
        ScopedEnv decode("MOEX_GEMM_DECODE", v.decode);
        ScopedEnv bn("MOEX_GEMM_DECODE_BN", v.bn);
        ScopedEnv ring("MOEX_GEMM_DECODE_RING", v.ring);
        DeviceTensor part = device_poisoned(*gpu_, ot, {m, n});
        MOEX_ASSERT_OK(gpu_->matmul({dx.t.slice(0, r0, r0 + m), dw.t, part.t, 1.f, false}));
        HostTensor got = to_host(*gpu_, part);
        for (int64_t r = 0; r < m; ++r)
          ASSERT_TRUE(rows_bit_equal(got, r, all, r0 + r))
              << "row " << r0 + r << " of " << m << " tile " << (v.tile ? v.tile : "auto") << " decode "
              << (v.decode ? v.decode : "auto") << " bn " << (v.bn ? v.bn : "auto") << " ring "
              << (v.ring ? v.ring : "auto");
      }
    }
  }
}

// Router logits (f32 out, n <= 256) take the router kernel for every row count, with its own K
// order (chunks of 256 summed in order, router_gemm.cu): a row's bits are the same alone, in
// any batch and whichever tile shape (16, 32 or 64 rows per block) computes it; the values
// agree with the CPU. Shapes: Qwen3 (128 x 2048), DeepSeek-V3 (256 x 7168: 28 chunks),
// Mixtral (8 x 4096), and K with a short last chunk.
TEST_F(MatmulTest, RouterBitsDoNotDependOnBatch) {
  struct Shape {
    int64_t n, k;
  };
  for (const Shape sh : {Shape{128, 2048}, Shape{256, 7168}, Shape{8, 4096}, Shape{61, 2080}}) {
    const int64_t rows = 150;
    SCOPED_TRACE("n " + std::to_string(sh.n) + " k " + std::to_string(sh.k) + " seed " + std::to_string(seed_));
    HostTensor x = host_random(DType::kBF16, {rows, sh.k}, rng_);
    HostTensor w = host_random(DType::kBF16, {sh.n, sh.k}, rng_, -0.1f, 0.1f);
    HostTensor ref = host_tensor(DType::kF32, {rows, sh.n});
    MOEX_ASSERT_OK(cpu_->matmul({x.t, w.t, ref.t, 1.f, false}));
    DeviceTensor dx = to_device(*gpu_, x), dw = to_device(*gpu_, w);
    DeviceTensor full = device_poisoned(*gpu_, DType::kF32, {rows, sh.n});
    MOEX_ASSERT_OK(gpu_->matmul({dx.t, dw.t, full.t, 1.f, false}));
    HostTensor all = to_host(*gpu_, full);
    EXPECT_LT(rel_l2(all, ref), kTolBf16);
    for (const int64_t batch : {1, 5, 16, 17, 33, 64, 100}) {
      const int64_t r0 = rng_.uniform_int(0, int(rows - batch));
      DeviceTensor part = device_poisoned(*gpu_, DType::kF32, {batch, sh.n});
      MOEX_ASSERT_OK(gpu_->matmul({dx.t.slice(0, r0, r0 + batch), dw.t, part.t, 1.f, false}));
      HostTensor got = to_host(*gpu_, part);
      for (int64_t r = 0; r < batch; ++r)
        ASSERT_TRUE(rows_bit_equal(got, r, all, r0 + r)) << "row " << r0 + r << " in a batch of " << batch;
    }
  }
}

// Many rows, few columns (routers: Mixtral 8 experts, DeepSeek-V2-Lite 64) on the launcher's
// choice of tile (the wgmma tiles on an H100), f32 and bf16 out.
TEST_F(MatmulTest, ManyRowsFewColumns) {
  check(0, 256, 8, 4096, DType::kBF16, DType::kBF16, DType::kF32, 1.f, false);   // Mixtral router, prefill
  check(0, 300, 13, 2048, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);
  check(0, 129, 64, 2048, DType::kBF16, DType::kBF16, DType::kF32, 1.f, false);  // V2-Lite router
}

// MOEX_GEMM=cublaslt (opt-in): the same results within bf16 tolerance through cuBLASLt, for
// shapes it takes (decode rows, many rows, batched MLA absorption, accumulate, f32 out).
TEST_F(MatmulTest, CublasLtOptIn) {
  setenv("MOEX_GEMM", "cublaslt", 1);
  check(0, 1, 4096, 2048, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);
  check(0, 333, 200, 1032, DType::kBF16, DType::kBF16, DType::kF32, -0.5f, true);
  check(0, 1000, 1100, 2056, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);
  check(3, 150, 128, 264, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);
  check(0, 17, 54, 97, DType::kBF16, DType::kBF16, DType::kBF16, 1.f, false);  // unaligned rows: moex's GEMM
  unsetenv("MOEX_GEMM");
}

TEST_F(MatmulTest, F32AndMixedFallback) {
  check(0, 9, 33, 130, DType::kF32, DType::kF32, DType::kF32, 1.f, false);
  check(0, 4, 128, 2048, DType::kF32, DType::kBF16, DType::kF32, 1.f, false);
  check(0, 3, 40, 64, DType::kBF16, DType::kF32, DType::kBF16, 1.f, true);
}

TEST_F(MatmulTest, BatchedMlaAbsorption) {
  // q_nope [n, 128 heads, 128] seen as [heads, n, 128] times w_uk [heads, 512, 128] -> [heads, n, 512].
  for (const int64_t heads : {16, 128}) {
    const int64_t n = rng_.uniform_int(1, 9), dn = 128, r = 512;
    SCOPED_TRACE("heads " + std::to_string(heads) + " n " + std::to_string(n) + " seed " + std::to_string(seed_));
    HostTensor q = host_random(DType::kBF16, {n, heads, dn}, rng_);
    HostTensor w = host_random(DType::kBF16, {heads, r, dn}, rng_, -0.1f, 0.1f);
    Tensor qv = q.t;  // [heads, n, dn] view
    qv.shape[0] = heads; qv.shape[1] = n;
    qv.stride[0] = dn; qv.stride[1] = heads * dn;
    // Output written into a [n, heads, r] buffer through a [heads, n, r] view.
    HostTensor ref = host_tensor(DType::kBF16, {n, heads, r});
    Tensor ov = ref.t;
    ov.shape[0] = heads; ov.shape[1] = n;
    ov.stride[0] = r; ov.stride[1] = heads * r;
    MOEX_ASSERT_OK(cpu_->matmul({qv, w.t, ov, 1.f, false}));
    DeviceTensor dq = to_device(*gpu_, q), dw = to_device(*gpu_, w);
    DeviceTensor dout = device_poisoned(*gpu_, DType::kBF16, {n, heads, r});
    MOEX_ASSERT_OK(gpu_->matmul({rebase(qv, q.t.data, dq.t.data, DeviceType::kCuda), dw.t,
                                 rebase(ov, ref.t.data, dout.t.data, DeviceType::kCuda), 1.f, false}));
    EXPECT_LT(rel_l2(to_host(*gpu_, dout), ref), kTolBf16);
  }
}

// Every tile configuration (WMMA 16 rows, pipelined 64/128 rows, 128 or 256 columns) gives a
// row the same bits: the K order per element is the same everywhere (mma_pipeline.cuh).
TEST_F(MatmulTest, RowBitsDoNotDependOnTile) {
  const int64_t n = 520, k = 1544, rows = 260;
  HostTensor x = host_random(DType::kBF16, {rows, k}, rng_);
  HostTensor w = host_random(DType::kBF16, {n, k}, rng_, -0.1f, 0.1f);
  DeviceTensor dx = to_device(*gpu_, x), dw = to_device(*gpu_, w);
  DeviceTensor ref = device_poisoned(*gpu_, DType::kF32, {rows, n});
  {
    ScopedGemmTile scoped(nullptr);
    MOEX_ASSERT_OK(gpu_->matmul({dx.t, dw.t, ref.t, 1.f, false}));
  }
  HostTensor all = to_host(*gpu_, ref);
  for (const char* tile : kPipeTiles) {
    ScopedGemmTile scoped(tile);
    DeviceTensor got = device_poisoned(*gpu_, DType::kF32, {rows, n});
    MOEX_ASSERT_OK(gpu_->matmul({dx.t, dw.t, got.t, 1.f, false}));
    HostTensor h = to_host(*gpu_, got);
    for (int64_t r = 0; r < rows; ++r) ASSERT_TRUE(rows_bit_equal(h, r, all, r)) << "row " << r << " tile " << tile;
  }
  for (int64_t r0 = 0; r0 < rows; r0 += 37) {  // single rows: the 16-row WMMA tile
    DeviceTensor one = device_poisoned(*gpu_, DType::kF32, {1, n});
    MOEX_ASSERT_OK(gpu_->matmul({dx.t.slice(0, r0, r0 + 1), dw.t, one.t, 1.f, false}));
    ASSERT_TRUE(rows_bit_equal(to_host(*gpu_, one), 0, all, r0)) << "row " << r0 << " alone";
  }
}

TEST_F(MatmulTest, RowBitsDoNotDependOnBatch) {
  const int64_t n = 768, k = 2048, rows = 300;
  HostTensor x = host_random(DType::kBF16, {rows, k}, rng_);
  HostTensor w = host_random(DType::kBF16, {n, k}, rng_, -0.1f, 0.1f);
  DeviceTensor dx = to_device(*gpu_, x), dw = to_device(*gpu_, w);
  for (const DType ot : {DType::kBF16, DType::kF32}) {
    DeviceTensor full = device_poisoned(*gpu_, ot, {rows, n});
    MOEX_ASSERT_OK(gpu_->matmul({dx.t, dw.t, full.t, 1.f, false}));
    HostTensor all = to_host(*gpu_, full);
    for (const int64_t batch : {1, 2, 5, 16, 17, 64, 130, 257}) {
      const int64_t r0 = rng_.uniform_int(0, int(rows - batch));
      DeviceTensor part = device_poisoned(*gpu_, ot, {batch, n});
      MOEX_ASSERT_OK(gpu_->matmul({dx.t.slice(0, r0, r0 + batch), dw.t, part.t, 1.f, false}));
      HostTensor got = to_host(*gpu_, part);
      for (int64_t r = 0; r < batch; ++r)
        ASSERT_TRUE(rows_bit_equal(got, r, all, r0 + r)) << "row " << r0 + r << " in a batch of " << batch;
    }
  }
}

}  // namespace
}  // namespace moex::test
