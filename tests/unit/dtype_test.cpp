#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/dtype.h"
#include "core/status.h"
#include "core/tensor.h"

namespace moex {
namespace {

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties go to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.f, -8)), 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1.0078125 (odd) and 1.015625 (even).
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isinf(bf16_to_f32(f32_to_bf16(3.4e38f))));  // rounds up past max -> inf
}

TEST(DType, F16RoundTripAndSubnormals) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t bits = uint16_t(h);
    const float f = f16_to_f32(bits);
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), bits) << "h=" << h;
  }
  EXPECT_EQ(f32_to_f16(65504.f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.f), 0x7c00);                 // overflow -> inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.f, -25)), 0x0000);    // halfway to the smallest subnormal -> 0
  EXPECT_EQ(f32_to_f16(std::ldexp(3.f, -25)), 0x0002);    // 1.5 ulp -> 2 (even)
}

TEST(DType, Fp8E4M3RoundTripAndSaturation) {
  for (uint32_t v = 0; v < 256; ++v) {
    const float f = f8e4m3_to_f32(uint8_t(v));
    if (std::isnan(f)) continue;
    if (v == 0x80) continue;  // -0 keeps its sign
    ASSERT_EQ(f32_to_f8e4m3(f), v) << "v=" << v;
  }
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.f);
  EXPECT_EQ(f32_to_f8e4m3(1e9f), 0x7e);   // satfinite
  EXPECT_EQ(f32_to_f8e4m3(-1e9f), 0xfe);
  EXPECT_EQ(f32_to_f8e4m3(std::numeric_limits<float>::infinity()), 0x7e);
  EXPECT_EQ(f8e4m3_to_f32(0x01), std::ldexp(1.f, -9));  // smallest subnormal
  // 1.0625 is halfway between 1.0 (0x38) and 1.125 (0x39): ties to even.
  EXPECT_EQ(f32_to_f8e4m3(1.0625f), 0x38);
  EXPECT_EQ(f32_to_f8e4m3(1.1875f), 0x3a);
}

TEST(Tensor, SliceAndContiguity) {
  float data[24];
  Tensor t = Tensor::make(data, DType::kF32, {2, 3, 4});
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.numel(), 24);
  Tensor s = t.slice(2, 1, 3);
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(s.shape[2], 2);
  EXPECT_EQ(static_cast<float*>(s.data), data + 1);
  EXPECT_EQ(reinterpret_cast<float*>(t.at({1, 2})), data + 20);
  EXPECT_EQ(t.shape_string(), "[2, 3, 4] f32");
}

Expected<int> half(int x) {
  if (x % 2) return invalid_argument("odd: " + std::to_string(x));
  return x / 2;
}
Status use_half(int x, int* out) {
  MOEX_ASSIGN_OR_RETURN(*out, half(x));
  return Status::ok();
}

TEST(Status, ExpectedCarriesValueOrError) {
  int v = 0;
  EXPECT_TRUE(use_half(4, &v).is_ok());
  EXPECT_EQ(v, 2);
  Status s = use_half(3, &v);
  EXPECT_FALSE(s.is_ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "odd: 3");
}

}  // namespace
}  // namespace moex
