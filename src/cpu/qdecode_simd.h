// Code decoding shared by the per-ISA quantized kernels (qmm_simd.inc,
// quantize_simd.inc): codes -> float lanes for every element kind, and the
// two code orders (transposed tiles with a compile-time shift per code;
// natural order with per-lane variable shifts). Include after cpu/simd.h;
// everything is local to the including translation unit.
#pragma once

#include <utility>

namespace mmkit::cpu::MMKIT_ISA_NS {
namespace {

enum Kind { kAffine = 0, kE2m1 = 1, kE4m3 = 2 };


/// Lookup table for decode(): codes to float through a lane permute (AVX-512),
/// the low 4 bits index it, so codes narrower than 4 bits repeat.
template <int BITS, int KIND>
inline F decode_table() {
  alignas(64) float t[16];
  for (int i = 0; i < 16; ++i) {
    if constexpr (KIND == kE2m1) {
      constexpr float kMag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
      t[i] = (i & 8) ? -kMag[i & 7] : kMag[i & 7];
    } else {
      t[i] = static_cast<float>(i & ((1 << (BITS < 4 ? BITS : 4)) - 1));
    }
  }
#if defined(__AVX512F__)
  return _mm512_load_ps(t);
#else
  return _mm256_load_ps(t);  // lanes 0..7: e2m1 magnitudes / small codes
#endif
}

/// Codes in the low BITS of each lane (higher bits are garbage) -> float values.
template <int BITS, int KIND>
MMKIT_INLINE F decode(I v, F table) {
  if constexpr (KIND == kAffine) {
#if defined(__AVX512F__)
    if constexpr (BITS <= 4) return _mm512_permutexvar_ps(v, table);
#else
    if constexpr (BITS <= 3) return _mm256_permutevar8x32_ps(table, v);
#endif
    return S::cvt(S::and_(v, S::set1i((1u << BITS) - 1u)));
  } else if constexpr (KIND == kE2m1) {
#if defined(__AVX512F__)
    return _mm512_permutexvar_ps(v, table);
#else
    const F mag = _mm256_permutevar8x32_ps(table, v);  // low 3 bits index the magnitudes
    return S::castf(S::or_(S::casti(mag), S::and_(S::slli<28>(v), S::set1i(0x80000000u))));
#endif
  } else {
    // MLX's E4M3 (no NaN): exponent and mantissa placed in a float32 and
    // rescaled by 2^120 (exact, subnormals included), sign or'ed in.
    const I mag = S::slli<20>(S::and_(v, S::set1i(0x7fu)));
    const I sign = S::slli<24>(S::and_(v, S::set1i(0x80u)));
    return S::castf(S::or_(S::casti(S::mul(S::castf(mag), S::set1(0x1p120f))), sign));
  }
}

/// Code C of a 32-code unit whose BITS words (transposed) start at u[0].
template <int BITS, int C>
MMKIT_INLINE I extract(const uint32_t* u) {
  constexpr int t = C * BITS, w = t / 32, s = t % 32;
  const I lo = S::loadi(u + w * S::L);
  I v = s ? S::template srli<s>(lo) : lo;
  if constexpr (s + BITS > 32) v = S::or_(v, S::template slli<32 - s>(S::loadi(u + (w + 1) * S::L)));
  return v;
}

template <int N, class Fn>
MMKIT_INLINE void unroll(Fn&& fn) {
  [&]<int... C>(std::integer_sequence<int, C...>) MMKIT_LAMBDA_INLINE { (fn(std::integral_constant<int, C>{}), ...); }
  (std::make_integer_sequence<int, N>{});
}

/// n (<= L) consecutive codes of a packed row starting at code c0: lane i
/// gets code c0 + i in its low bits (garbage above); only the words those
/// codes occupy are read (masked load), lanes >= n see zero words.
template <int BITS>
inline I codes_natural(const uint32_t* row, int64_t c0, int n) {
  const int64_t bit0 = c0 * BITS;
  const int sh0 = static_cast<int>(bit0 & 31);
  const int nw = (sh0 + n * BITS + 31) / 32;
  const I w = S::loadi_n(row + (bit0 >> 5), nw);
  const I t = S::addi(S::set1i(static_cast<uint32_t>(sh0)), S::mullo(S::iota(), S::set1i(BITS)));
  const I idx = S::srli<5>(t);
  const I sh = S::and_(t, S::set1i(31u));
  const I lo = S::srlv(S::permi(idx, w), sh);
  if constexpr (BITS == 2 || BITS == 4 || BITS == 8) return lo;  // never straddles
  const I hi = S::sllv(S::permi(S::addi(idx, S::set1i(1u)), w), S::subi(S::set1i(32u), sh));
  return S::or_(lo, hi);
}

}  // namespace
}  // namespace mmkit::cpu::MMKIT_ISA_NS
