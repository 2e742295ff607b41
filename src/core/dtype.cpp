#include "mmkit/dtype.h"

#include <cmath>

#include "mmkit/error.h"

namespace mmkit {

size_t itemsize(Dtype d) {
  switch (d) {
    case Dtype::float32: case Dtype::uint32: case Dtype::int32: return 4;
    case Dtype::float16: case Dtype::bfloat16: case Dtype::int16: return 2;
    case Dtype::uint8: case Dtype::int8: case Dtype::bool_: return 1;
    case Dtype::int64: return 8;
  }
  return 0;
}

const char* dtype_name(Dtype d) {
  switch (d) {
    case Dtype::float32: return "float32";
    case Dtype::float16: return "float16";
    case Dtype::bfloat16: return "bfloat16";
    case Dtype::uint32: return "uint32";
    case Dtype::uint8: return "uint8";
    case Dtype::int8: return "int8";
    case Dtype::int16: return "int16";
    case Dtype::int32: return "int32";
    case Dtype::int64: return "int64";
    case Dtype::bool_: return "bool";
  }
  return "?";
}

Dtype dtype_from_name(const std::string& n) {
  for (int i = 0; i < kNumDtypes; ++i) {
    Dtype d = static_cast<Dtype>(i);
    if (n == dtype_name(d)) return d;
  }
  if (n == "bool_") return Dtype::bool_;
  throw_error("dtype", "Unknown dtype '", n, "'.");
}

bool is_floating(Dtype d) {
  return d == Dtype::float32 || d == Dtype::float16 || d == Dtype::bfloat16;
}
bool is_integral(Dtype d) { return !is_floating(d); }

std::ostream& operator<<(std::ostream& os, Dtype d) { return os << dtype_name(d); }

Dtype promote_types(Dtype a, Dtype b) {
  if (a == b) return a;
  const bool fa = is_floating(a), fb = is_floating(b);
  if (fa && fb) return Dtype::float32;  // f16+bf16, half+f32
  if (fa) return a;
  if (fb) return b;
  // Integer promotion (JAX table subset): bool < uint8 < ... ; signed/unsigned mix widens.
  auto is_signed = [](Dtype t) {
    return t == Dtype::int8 || t == Dtype::int16 || t == Dtype::int32 || t == Dtype::int64;
  };
  if (a == Dtype::bool_) return b;
  if (b == Dtype::bool_) return a;
  const size_t sa = itemsize(a), sb = itemsize(b);
  if (is_signed(a) == is_signed(b)) return sa >= sb ? a : b;
  Dtype s = is_signed(a) ? a : b, u = is_signed(a) ? b : a;
  const size_t ss = itemsize(s), su = itemsize(u);
  if (ss > su) return s;
  // unsigned as wide or wider than signed: next wider signed
  if (su == 1) return Dtype::int16;
  if (su == 2) return Dtype::int32;
  return Dtype::int64;
}

uint16_t float_to_f16_bits(float f) {
  const uint32_t u = f32_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7d00u);  // NaN: MLX's x86 half encoding
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf (>= 65520)
  if (a >= 0x38800000u) {  // normal half (>= 2^-14)
    uint32_t m = a + 0xc8000fffu + ((a >> 13) & 1u);  // rebias (-112 << 23) + round
    return static_cast<uint16_t>(sign | (m >> 13));
  }
  // subnormal half: value = a * 2^24 rounded to an integer (RNE)
  const float v = bits_f32(a) * 16777216.0f;  // exact scaling by 2^24
  const float r = (v + 8388608.0f) - 8388608.0f;
  return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
}

float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  if (e == 0) {
    float v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24
    return bits_f32(f32_bits(v) | sign);
  }
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

float round_to(Dtype d, float v) {
  switch (d) {
    case Dtype::float16: return f16_bits_to_float(float_to_f16_bits(v));
    case Dtype::bfloat16: return bf16_bits_to_float(float_to_bf16_bits(v));
    default: return v;
  }
}

}  // namespace mmkit
