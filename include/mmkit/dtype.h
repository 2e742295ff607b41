// Element types and correctly rounded conversions between them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <string>

namespace mmkit {

enum class Dtype : uint8_t {
  float32,
  float16,
  bfloat16,
  uint32,
  uint8,
  int8,
  int16,
  int32,
  int64,
  bool_,
};

inline constexpr int kNumDtypes = 10;

size_t itemsize(Dtype d);
const char* dtype_name(Dtype d);  // "float32", "bfloat16", "bool", ...
bool is_floating(Dtype d);        // float32, float16, bfloat16
bool is_integral(Dtype d);        // integer types and bool
/// Parses a dtype name ("float32", "bf16" is not accepted); throws mmkit::Error.
Dtype dtype_from_name(const std::string& name);
/// JAX-style promotion (mlx/dtype.cpp): int/bool with a float gives the float,
/// float16 + bfloat16 = float32, any half + float32 = float32.
Dtype promote_types(Dtype a, Dtype b);

std::ostream& operator<<(std::ostream& os, Dtype d);

// ---------------------------------------------------------------------------
// Scalar half types. Storage is the raw 16-bit pattern; conversions round to
// nearest even and keep NaN a NaN.

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

uint16_t float_to_f16_bits(float f);
float f16_bits_to_float(uint16_t h);

struct bfloat16_t {
  uint16_t bits = 0;
  bfloat16_t() = default;
  explicit bfloat16_t(float f) : bits(float_to_bf16_bits(f)) {}
  static bfloat16_t from_bits(uint16_t b) {
    bfloat16_t r;
    r.bits = b;
    return r;
  }
  operator float() const { return bf16_bits_to_float(bits); }
};

struct float16_t {
  uint16_t bits = 0;
  float16_t() = default;
  explicit float16_t(float f) : bits(float_to_f16_bits(f)) {}
  static float16_t from_bits(uint16_t b) {
    float16_t r;
    r.bits = b;
    return r;
  }
  operator float() const { return f16_bits_to_float(bits); }
};

static_assert(sizeof(bfloat16_t) == 2 && sizeof(float16_t) == 2);

/// Rounds a float32 value to the precision of `d` (float types only) and back.
float round_to(Dtype d, float v);

template <typename T>
struct DtypeOf;
template <> struct DtypeOf<float> { static constexpr Dtype value = Dtype::float32; };
template <> struct DtypeOf<float16_t> { static constexpr Dtype value = Dtype::float16; };
template <> struct DtypeOf<bfloat16_t> { static constexpr Dtype value = Dtype::bfloat16; };
template <> struct DtypeOf<uint32_t> { static constexpr Dtype value = Dtype::uint32; };
template <> struct DtypeOf<uint8_t> { static constexpr Dtype value = Dtype::uint8; };
template <> struct DtypeOf<int8_t> { static constexpr Dtype value = Dtype::int8; };
template <> struct DtypeOf<int16_t> { static constexpr Dtype value = Dtype::int16; };
template <> struct DtypeOf<int32_t> { static constexpr Dtype value = Dtype::int32; };
template <> struct DtypeOf<int64_t> { static constexpr Dtype value = Dtype::int64; };
template <> struct DtypeOf<bool> { static constexpr Dtype value = Dtype::bool_; };

template <typename T>
inline constexpr Dtype dtype_of = DtypeOf<T>::value;

}  // namespace mmkit
