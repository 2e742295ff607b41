// Thin SIMD layer for the per-ISA kernel files (qmm_avx512.cpp, ...). Include
// it only from a translation unit compiled with that ISA's -m flags, after
// defining MMKIT_ISA_NS; everything lands in namespace mmkit::cpu::MMKIT_ISA_NS,
// so the AVX-512 and AVX2 copies never share a symbol (no ODR mixing of code
// compiled for different ISAs). Nothing from the standard library that other
// translation units also instantiate may be used in these files: the linker
// could pick the AVX-512 copy for baseline callers.
//
// S::L lanes of float32: 16 (AVX-512) or 8 (AVX2). Tails (n < L lanes) use
// masked loads and stores that never touch memory past the n-th element.
#pragma once

// GCC 12 reports the _mm512_undefined_*() placeholders inside its own
// intrinsics (permutexvar, srli, ...) as uninitialized once inlined here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#if !defined(MMKIT_ISA_NS)
#error "define MMKIT_ISA_NS before including cpu/simd.h"
#endif

// Forces inlining of the small helpers and lambdas the kernels unroll over
// (otherwise accumulators spill to memory across calls).
#define MMKIT_INLINE __attribute__((always_inline)) inline
#define MMKIT_LAMBDA_INLINE __attribute__((always_inline))

namespace mmkit::cpu::MMKIT_ISA_NS {

#if defined(__AVX512F__)

struct S {
  static constexpr int L = 16;
  using F = __m512;
  using I = __m512i;

  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static I set1i(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static I loadi(const void* p) { return _mm512_loadu_si512(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void storei(void* p, I v) { _mm512_storeu_si512(p, v); }
  static __mmask16 lanes(int n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }
  static F load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(lanes(n), p); }
  static I loadi_n(const uint32_t* p, int n) { return _mm512_maskz_loadu_epi32(lanes(n), p); }
  static void store_n(float* p, F v, int n) { _mm512_mask_storeu_ps(p, lanes(n), v); }

  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static float hmin(F a) { return _mm512_reduce_min_ps(a); }
  static float hmax(F a) { return _mm512_reduce_max_ps(a); }

  template <int N> static I srli(I v) { return _mm512_srli_epi32(v, N); }
  template <int N> static I slli(I v) { return _mm512_slli_epi32(v, N); }
  static I srlv(I v, I n) { return _mm512_srlv_epi32(v, n); }
  static I sllv(I v, I n) { return _mm512_sllv_epi32(v, n); }
  static I and_(I a, I b) { return _mm512_and_si512(a, b); }
  static I or_(I a, I b) { return _mm512_or_si512(a, b); }
  static I xor_(I a, I b) { return _mm512_xor_si512(a, b); }
  static I addi(I a, I b) { return _mm512_add_epi32(a, b); }
  static I subi(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I mullo(I a, I b) { return _mm512_mullo_epi32(a, b); }
  static I nonzero(I v) { return _mm512_movm_epi32(_mm512_test_epi32_mask(v, v)); }
  static F keep_n(F v, int n) { return _mm512_maskz_mov_ps(lanes(n), v); }
  static float first(F v) { return _mm512_cvtss_f32(v); }
  static uint32_t first_i(I v) { return static_cast<uint32_t>(_mm_cvtsi128_si32(_mm512_castsi512_si128(v))); }
  static I iota() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
  static F cvt(I v) { return _mm512_cvtepi32_ps(v); }
  static I cvti(F v) { return _mm512_cvtps_epi32(v); }  // current rounding mode (RNE)
  static F castf(I v) { return _mm512_castsi512_ps(v); }
  static I casti(F v) { return _mm512_castps_si512(v); }
  // Lane i of the result is lane idx[i] of `src`, idx read modulo L.
  static I permi(I idx, I src) { return _mm512_permutexvar_epi32(idx, src); }
  static F blend_nan(F v, F replacement) {  // lanes where v is NaN take `replacement`
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v, replacement);
  }
  static I select(I mask_lanes_nonzero, I a, I b) {  // lanes where mask != 0 take a, else b
    return _mm512_mask_blend_epi32(_mm512_test_epi32_mask(mask_lanes_nonzero, mask_lanes_nonzero), b, a);
  }
  static F rint(F v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F abs(F v) { return _mm512_abs_ps(v); }
  static I cmplt_f(F a, F b) {  // all-ones lanes where a < b (ordered)
    return _mm512_movm_epi32(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ));
  }
  static I blendv(I mask, I a, I b) { return select(mask, a, b); }

  // ---- float <-> half conversions (bit-exact with mmkit's scalar ones) -------
  static I load_u16(const void* p, int n) {
    return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes(n), p));
  }
  static __m256i h_f16_rne(F v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F h_f16_to_f(__m256i h) { return _mm512_cvtph_ps(h); }
  static __m256i narrow16(I v) { return _mm512_cvtepi32_epi16(v); }
  static void store_u16(void* p, __m256i h, int n) { _mm256_mask_storeu_epi16(p, lanes(n), h); }
  static I widen16(__m256i h) { return _mm512_cvtepu16_epi32(h); }

  // ---- in-register transposes --------------------------------------------
  // r[0..15] are rows of 16 dwords; on return r[j] holds column j.
  MMKIT_INLINE static void transpose(I r[16]) {
    I t[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i += 4) {
      r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
      r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
      r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
      r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    // r[4a+b] now holds, in 128-bit lane q, rows 4q'.. : element (row 4a + e, col 4q + b) for e = 0..3.
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
      t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xDD);
      t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
      t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xDD);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
      r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
      r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
      r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xDD);
    }
  }
};

#else  // AVX2 + FMA + F16C

struct S {
  static constexpr int L = 8;
  using F = __m256;
  using I = __m256i;

  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static I set1i(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static I loadi(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void storei(void* p, I v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }
  static I lanes(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), iota()); }
  static F load_n(const float* p, int n) { return n >= 8 ? load(p) : _mm256_maskload_ps(p, lanes(n)); }
  static I loadi_n(const uint32_t* p, int n) {
    return n >= 8 ? loadi(p) : _mm256_maskload_epi32(reinterpret_cast<const int*>(p), lanes(n));
  }
  static void store_n(float* p, F v, int n) {
    if (n >= 8) store(p, v);
    else _mm256_maskstore_ps(p, lanes(n), v);
  }

  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static float hmin(F a) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  static float hmax(F a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }

  template <int N> static I srli(I v) { return _mm256_srli_epi32(v, N); }
  template <int N> static I slli(I v) { return _mm256_slli_epi32(v, N); }
  static I srlv(I v, I n) { return _mm256_srlv_epi32(v, n); }
  static I sllv(I v, I n) { return _mm256_sllv_epi32(v, n); }
  static I and_(I a, I b) { return _mm256_and_si256(a, b); }
  static I or_(I a, I b) { return _mm256_or_si256(a, b); }
  static I xor_(I a, I b) { return _mm256_xor_si256(a, b); }
  static I addi(I a, I b) { return _mm256_add_epi32(a, b); }
  static I subi(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I mullo(I a, I b) { return _mm256_mullo_epi32(a, b); }
  static I nonzero(I v) {
    return _mm256_xor_si256(_mm256_cmpeq_epi32(v, _mm256_setzero_si256()), _mm256_set1_epi32(-1));
  }
  static F keep_n(F v, int n) { return _mm256_and_ps(v, castf(lanes(n))); }
  static float first(F v) { return _mm256_cvtss_f32(v); }
  static uint32_t first_i(I v) { return static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_castsi256_si128(v))); }
  static I iota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
  static F cvt(I v) { return _mm256_cvtepi32_ps(v); }
  static I cvti(F v) { return _mm256_cvtps_epi32(v); }
  static F castf(I v) { return _mm256_castsi256_ps(v); }
  static I casti(F v) { return _mm256_castps_si256(v); }
  static I permi(I idx, I src) { return _mm256_permutevar8x32_epi32(src, idx); }
  static F blend_nan(F v, F replacement) {
    return _mm256_blendv_ps(v, replacement, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  static I select(I mask_lanes_nonzero, I a, I b) {
    const I m = _mm256_cmpeq_epi32(mask_lanes_nonzero, _mm256_setzero_si256());
    return _mm256_blendv_epi8(a, b, m);
  }
  static F rint(F v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F abs(F v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }
  static I cmplt_f(F a, F b) { return casti(_mm256_cmp_ps(a, b, _CMP_LT_OQ)); }
  static I blendv(I mask, I a, I b) { return _mm256_blendv_epi8(b, a, mask); }

  static I load_u16(const void* p, int n) {
    alignas(16) uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (n >= 8) return _mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(p)));
    std::memcpy(tmp, p, static_cast<size_t>(n) * 2);
    return _mm256_cvtepu16_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
  }
  static __m128i h_f16_rne(F v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F h_f16_to_f(__m128i h) { return _mm256_cvtph_ps(h); }
  static __m128i narrow16(I v) {
    // values are < 2^16: pack the low halves of the eight dwords
    const __m256i sh = _mm256_shuffle_epi8(
        v, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13, -1,
                            -1, -1, -1, -1, -1, -1, -1));
    return _mm_unpacklo_epi64(_mm256_castsi256_si128(sh), _mm256_extracti128_si256(sh, 1));
  }
  static void store_u16(void* p, __m128i h, int n) {
    if (n >= 8) {
      _mm_storeu_si128(static_cast<__m128i*>(p), h);
      return;
    }
    alignas(16) uint16_t tmp[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), h);
    std::memcpy(p, tmp, static_cast<size_t>(n) * 2);
  }
  static I widen16(__m128i h) { return _mm256_cvtepu16_epi32(h); }

  MMKIT_INLINE static void transpose(I r[8]) {
    I t[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    I u[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i += 4) {
      u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
      u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
      u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
      u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x20);
      r[i + 4] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x31);
    }
  }
};

#endif

using F = S::F;
using I = S::I;

// ---- exact scalar conversions (local copies: no shared inline code here) ------

inline float bits_to_f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t f_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// ---- vector float <-> storage dtype, bit-exact with mmkit's scalar code --------
// dtype codes: 0 float32, 1 float16, 2 bfloat16 (the values of mmkit::Dtype).

/// bf16 (RNE, NaN -> quiet NaN with the top bits kept) as 16-bit values in 32-bit lanes.
inline I f_to_bf16_lanes(F v) {
  const I u = S::casti(v);
  const I abs = S::and_(u, S::set1i(0x7fffffffu));
  const I r = S::srli<16>(S::addi(u, S::addi(S::set1i(0x7fffu), S::and_(S::srli<16>(u), S::set1i(1u)))));
  const I nan = S::or_(S::srli<16>(u), S::set1i(0x40u));
#if defined(__AVX512F__)
  const __mmask16 isnan = _mm512_cmpgt_epu32_mask(abs, S::set1i(0x7f800000u));
  return _mm512_mask_blend_epi32(isnan, r, nan);
#else
  const I isnan = _mm256_cmpgt_epi32(abs, S::set1i(0x7f800000u));  // abs < 2^31: signed compare is fine
  return _mm256_blendv_epi8(r, nan, isnan);
#endif
}
inline F bf16_lanes_to_f(I h) { return S::castf(S::slli<16>(h)); }

/// Lanes where `m` (a 0/~0 per-lane mask) is set take `a`, the others `b`.
inline I pick(I m, I a, I b) { return S::blendv(m, a, b); }
inline I is_nan_f(F v) {  // all-ones lanes where v is NaN
#if defined(__AVX512F__)
  return _mm512_movm_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
#else
  return S::casti(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
#endif
}
inline I gt_u31(I a, uint32_t b) {  // all-ones lanes where a > b (both < 2^31)
#if defined(__AVX512F__)
  return _mm512_movm_epi32(_mm512_cmpgt_epi32_mask(a, S::set1i(b)));
#else
  return _mm256_cmpgt_epi32(a, S::set1i(b));
#endif
}

/// f16 bits in 32-bit lanes: RNE, overflow to inf, NaN -> sign|0x7d00 (MLX's x86 encoding).
inline I f_to_f16_lanes(F v) {
  const I h = S::widen16(S::h_f16_rne(v));
  const I nanbits = S::or_(S::and_(S::srli<16>(S::casti(v)), S::set1i(0x8000u)), S::set1i(0x7d00u));
  return pick(is_nan_f(v), nanbits, h);
}
/// f16 bits in 32-bit lanes -> float; NaN payloads kept as is (no quieting).
inline F f16_lanes_to_f(I h) {
  const F hw = S::h_f16_to_f(S::narrow16(h));
  const I exact_nan = S::or_(S::or_(S::slli<16>(S::and_(h, S::set1i(0x8000u))), S::set1i(0x7f800000u)),
                             S::slli<13>(S::and_(h, S::set1i(0x3ffu))));
  return S::castf(pick(gt_u31(S::and_(h, S::set1i(0x7fffu)), 0x7c00u), exact_nan, S::casti(hw)));
}

/// n (<= L) elements of dtype `dt` (0 f32, 1 f16, 2 bf16) as float32 lanes.
inline F load_as_f(const void* p, int dt, int n) {
  if (dt == 0) return S::load_n(static_cast<const float*>(p), n);
  const I h = S::load_u16(p, n);
  return dt == 1 ? f16_lanes_to_f(h) : bf16_lanes_to_f(h);
}
/// Stores n (<= L) lanes rounded to dtype `dt`.
inline void store_as(void* p, int dt, F v, int n) {
  if (dt == 0) {
    S::store_n(static_cast<float*>(p), v, n);
    return;
  }
  const I h = dt == 1 ? f_to_f16_lanes(v) : f_to_bf16_lanes(v);
  S::store_u16(p, S::narrow16(h), n);
}
/// round_to(dt, v): float32 rounded to dtype precision and back.
inline F round_as(int dt, F v) {
  if (dt == 0) return v;
  return dt == 1 ? f16_lanes_to_f(f_to_f16_lanes(v)) : bf16_lanes_to_f(f_to_bf16_lanes(v));
}

/// Exact scalar half loads (for per-group scales).
inline float f16_to_f(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) return bits_to_f(f_to_bits(static_cast<float>(m) * 5.9604644775390625e-8f) | sign);
  if (e == 31) return bits_to_f(sign | 0x7f800000u | (m << 13));
  return bits_to_f(sign | ((e + 112u) << 23) | (m << 13));
}
inline float load1(const void* p, int dt, int64_t i) {
  if (dt == 0) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return dt == 1 ? f16_to_f(h) : bits_to_f(static_cast<uint32_t>(h) << 16);
}

}  // namespace mmkit::cpu::MMKIT_ISA_NS
