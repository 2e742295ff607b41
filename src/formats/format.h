// Quantization formats as data. Compiled by both g++ and nvcc (no other
// includes from the project), so host and device decode identically.
//
// Packed layout (SPEC 0.2, docs/formats.md): each packed row is one
// little-endian bit stream; element j occupies stream bits [j*b, (j+1)*b),
// least significant bit first; stream bit t is bit (t % 32) of uint32 word
// t / 32. Groups of `group_size` consecutive elements share one scale (and,
// for affine, one bias); every group starts at a word boundary.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MMKIT_HD __host__ __device__ __forceinline__
#else
#define MMKIT_HD inline
#endif

namespace mmkit::fmt {

enum class Mode : uint8_t { affine = 0, mxfp4 = 1, mxfp8 = 2, nvfp4 = 3 };

enum class ScaleKind : uint8_t {
  native,  // affine: scale and bias in the weight's float dtype
  e8m0,    // 2^(s-127)
  e4m3,    // MLX's E4M3 (no NaN)
};

enum class ElemKind : uint8_t { uint_code, e2m1, e4m3 };

struct FormatTraits {
  Mode mode;
  const char* name;
  int default_group_size;
  int default_bits;
  ElemKind elem;
  ScaleKind scale;
  bool has_bias;
  float elem_max;  // largest element magnitude (fp modes), 0 for affine
};

inline constexpr FormatTraits kFormats[] = {
    {Mode::affine, "affine", 64, 4, ElemKind::uint_code, ScaleKind::native, true, 0.0f},
    {Mode::mxfp4, "mxfp4", 32, 4, ElemKind::e2m1, ScaleKind::e8m0, false, 6.0f},
    {Mode::mxfp8, "mxfp8", 32, 8, ElemKind::e4m3, ScaleKind::e8m0, false, 448.0f},
    {Mode::nvfp4, "nvfp4", 16, 4, ElemKind::e2m1, ScaleKind::e4m3, false, 6.0f},
};
static_assert(sizeof(kFormats) / sizeof(kFormats[0]) == 4);

MMKIT_HD constexpr const FormatTraits& traits(Mode m) { return kFormats[static_cast<int>(m)]; }

/// Affine bit widths and group sizes the matmuls and quantize accept.
MMKIT_HD constexpr bool affine_bits_supported(int b) {
  return b == 2 || b == 3 || b == 4 || b == 5 || b == 6 || b == 8;
}
MMKIT_HD constexpr bool affine_group_supported(int g) { return g == 32 || g == 64 || g == 128; }

/// uint32 words per group of `gs` codes of `bits` bits (always integral).
MMKIT_HD constexpr int words_per_group(int bits, int gs) { return gs * bits / 32; }

/// Extracts code j from a packed row (bit stream), any bits in 2..8.
MMKIT_HD uint32_t unpack_code(const uint32_t* row, int64_t j, int bits) {
  const int64_t t = j * bits;
  const int64_t w = t >> 5;
  const int s = static_cast<int>(t & 31);
  uint64_t v = row[w];
  if (s + bits > 32) v |= static_cast<uint64_t>(row[w + 1]) << 32;
  return static_cast<uint32_t>((v >> s) & ((1u << bits) - 1u));
}

/// ORs code `c` (already < 2^bits) into a zero-initialised packed row.
MMKIT_HD void pack_code(uint32_t* row, int64_t j, int bits, uint32_t c) {
  const int64_t t = j * bits;
  const int64_t w = t >> 5;
  const int s = static_cast<int>(t & 31);
  row[w] |= c << s;
  if (s + bits > 32) row[w + 1] |= c >> (32 - s);
}

// ---- element and scale decoding ---------------------------------------------

/// E2M1: bit 3 sign, bits 0-2 index {0, .5, 1, 1.5, 2, 3, 4, 6}.
MMKIT_HD float e2m1_to_float(uint32_t c) {
  constexpr float kMag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  float m = kMag[c & 7u];
  return (c & 8u) ? -m : m;
}

MMKIT_HD float pow2_int(int e) {
  // 2^e for e in [-149, 127] as an exact float; overflow gives +inf, underflow 0.
  if (e > 127) return __builtin_huge_valf();
  if (e >= -126) {
    uint32_t u = static_cast<uint32_t>(e + 127) << 23;
    return __builtin_bit_cast(float, u);
  }
  if (e >= -149) {
    uint32_t u = 1u << (e + 149);
    return __builtin_bit_cast(float, u);
  }
  return 0.0f;
}

/// MLX's E4M3: e = bits 3-6, m = bits 0-2; e == 0 -> m * 2^-9; otherwise
/// (1 + m/8) * 2^(e-7). No NaN: 0x7F = 480.
MMKIT_HD float e4m3_to_float(uint32_t byte) {
  const uint32_t e = (byte >> 3) & 15u;
  const uint32_t m = byte & 7u;
  float v = e == 0 ? static_cast<float>(m) * 0.001953125f
                   : (1.0f + static_cast<float>(m) * 0.125f) * pow2_int(static_cast<int>(e) - 7);
  return (byte & 0x80u) ? -v : v;
}

/// E8M0: 2^(s-127); 0 -> 2^-127 (float32 denormal), 255 -> +inf.
MMKIT_HD float e8m0_to_float(uint32_t s) { return pow2_int(static_cast<int>(s) - 127); }

/// MLX's float -> E4M3 encoder (SPEC 0.4): saturates |f| >= 448 (NaN and Inf
/// included, the test is on the raw bits) to 0x7E, RNE elsewhere, sign by OR.
MMKIT_HD uint8_t float_to_e4m3(float f) {
  uint32_t u = __builtin_bit_cast(uint32_t, f);
  const uint32_t sign = (u >> 24) & 0x80u;
  u &= 0x7fffffffu;
  uint8_t r;
  if (u >= 0x43E00000u) {  // 448.0f
    r = 0x7E;
  } else if (u < 0x3C800000u) {  // 2^-6, smallest normal
    // f * 2^9 is exact and < 8; adding and removing 2^23 rounds it to an
    // integer with ties to even (float32 addition rounds RNE).
    const float scaled = __builtin_bit_cast(float, u) * 512.0f;
    const float q = (scaled + 8388608.0f) - 8388608.0f;
    r = static_cast<uint8_t>(static_cast<int>(q));
  } else {
    const uint32_t mant_odd = (u >> 20) & 1u;
    u += (static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu;
    u += mant_odd;
    r = static_cast<uint8_t>(u >> 20);
  }
  return static_cast<uint8_t>(r | sign);
}

}  // namespace mmkit::fmt
