#include "core/dtype.h"

#include <cmath>

namespace moex {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: case DType::kI32: return 4;
    case DType::kF16: case DType::kBF16: return 2;
    case DType::kF8E4M3: case DType::kU8: return 1;
    case DType::kI64: return 8;
  }
  return 0;
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kF8E4M3: return "f8e4m3";
    case DType::kI32: return "i32";
    case DType::kI64: return "i64";
    case DType::kU8: return "u8";
  }
  return "?";
}

bool dtype_from_safetensors(std::string_view s, DType* out) {
  struct Entry { std::string_view name; DType type; };
  static constexpr Entry kTable[] = {{"F32", DType::kF32}, {"F16", DType::kF16},     {"BF16", DType::kBF16},
                                     {"F8_E4M3", DType::kF8E4M3}, {"I32", DType::kI32}, {"I64", DType::kI64},
                                     {"U8", DType::kU8}};
  for (const auto& e : kTable) {
    if (e.name == s) { *out = e.type; return true; }
  }
  return false;
}

bool dtype_is_float(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kF8E4M3;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t man = h & 0x3ff;
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    const float v = std::ldexp(float(man), -24);
    return bits_to_f32(f32_to_bits(v) | sign);
  }
  if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (man << 13));
  return bits_to_f32(sign | ((exp + 112) << 23) | (man << 13));
}

// Round |a| (finite, non-negative) to a float format with `man_bits` mantissa bits, minimum
// normal exponent `emin`; returns the biased exponent field and mantissa (unbounded exponent).
static void round_narrow(float a, int man_bits, int emin, int bias, uint32_t* exp_field, uint32_t* man_field) {
  if (a == 0.f) { *exp_field = 0; *man_field = 0; return; }
  int e = 0;
  std::frexp(a, &e);
  int lead = e - 1;  // a in [2^lead, 2^(lead+1))
  if (lead < emin) {  // subnormal: multiples of 2^(emin - man_bits)
    const float q = std::nearbyint(std::ldexp(a, man_bits - emin));
    const uint32_t qi = uint32_t(q);
    if (qi >= (1u << man_bits)) { *exp_field = 1; *man_field = 0; return; }
    *exp_field = 0; *man_field = qi; return;
  }
  uint32_t r = uint32_t(std::nearbyint(std::ldexp(a, man_bits - lead)));  // in [2^m, 2^(m+1)]
  if (r == (1u << (man_bits + 1))) { r >>= 1; ++lead; }
  *exp_field = uint32_t(lead + bias);
  *man_field = r - (1u << man_bits);
}

uint16_t f32_to_f16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return 0x7e00;
  const float a = std::fabs(f);
  if (std::isinf(a) || a >= 65520.f) return sign | 0x7c00;  // overflow rounds to inf
  uint32_t e, m;
  round_narrow(a, 10, -14, 15, &e, &m);
  return uint16_t(sign | (e << 10) | m);
}

float f8e4m3_to_f32(uint8_t v) {
  const float sign = (v & 0x80) ? -1.f : 1.f;
  const int exp = (v >> 3) & 0xf;
  const int man = v & 0x7;
  if (exp == 15 && man == 7) return std::nanf("");
  if (exp == 0) return sign * std::ldexp(float(man), -9);
  return sign * std::ldexp(float(8 + man), exp - 7 - 3);
}

uint8_t f32_to_f8e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  if (a >= 448.f) return sign | 0x7e;  // satfinite
  uint32_t e, m;
  round_narrow(a, 3, -6, 7, &e, &m);
  const uint8_t bits = uint8_t((e << 3) | m);
  return sign | (bits > 0x7e ? 0x7e : bits);
}

}  // namespace moex
