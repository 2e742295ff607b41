// Tiles of L weight rows for the per-ISA quantized kernels (qmm_simd.inc,
// qmm_avx512bf16.cpp): the rows' packed words and their scales / biases
// transposed (L x L in registers, then stored) so lane i holds row n0 + i. Include after
// cpu/qdecode_simd.h; everything is local to the including translation unit.
#pragma once

namespace mmkit::cpu::MMKIT_ISA_NS {
namespace {

constexpr int L = S::L;

/// Scales (and biases) of rows [n0, n0 + nv) for groups [g0, g0 + ng) as
/// float32, transposed: st[g][lane]. Rows >= nv are zero. st and bt must hold
/// round_up(ng, L) * L floats.
void transpose_scales(const QWeights& q, int64_t n0, int nv, int64_t g0, int64_t ng, float* st, float* bt) {
  const bool affine = q.mode == 0;
  // 16-bit scales and biases travel together: (bias << 16 | scale) per lane, one transpose.
  const bool pair16 = affine && q.sdt != 0;
  for (int64_t gb = 0; gb < ng; gb += L) {
    const int n = static_cast<int>(ng - gb < L ? ng - gb : L);
    for (int pass = 0; pass < (affine && !pair16 ? 2 : 1); ++pass) {
      I r[L];
      for (int i = 0; i < L; ++i) {
        if (i >= nv) {
          r[i] = S::set1i(0);
          continue;
        }
        const int64_t off = (n0 + i) * q.groups + g0 + gb;
        if (pair16) {
          const I sv = S::load_u16(static_cast<const uint16_t*>(q.scales) + off, n);
          const I bv = S::load_u16(static_cast<const uint16_t*>(q.biases) + off, n);
          r[i] = S::or_(sv, S::slli<16>(bv));
        } else if (affine) {
          const void* src = pass == 0 ? q.scales : q.biases;
          r[i] = S::casti(load_as_f(static_cast<const float*>(src) + off, 0, n));
        } else {
          const uint8_t* sp = static_cast<const uint8_t*>(q.scales) + off;
#if defined(__AVX512F__)
          const I b = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(S::lanes(n), sp));
#else
          alignas(16) uint8_t tmp[16] = {};
          std::memcpy(tmp, sp, static_cast<size_t>(n));
          const I b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(tmp)));
#endif
          if (q.mode == 3) {  // nvfp4: E4M3 scale
            r[i] = S::casti(decode<8, kE4m3>(b, S::zero()));
          } else {  // E8M0: 2^(s-127); s = 0 is the float32 subnormal 2^-127
            r[i] = pick(S::nonzero(b), S::slli<23>(b), S::set1i(0x00400000u));
          }
        }
      }
      S::transpose(r);
      // All L columns are stored (st and bt have room for the groups rounded up to L).
      if (pair16) {
        const I lo = S::set1i(0xffffu);
#pragma GCC unroll 16
        for (int j = 0; j < L; ++j) {
          const I v = r[j];
          if (q.sdt == 2) {
            S::store(st + (gb + j) * L, bf16_lanes_to_f(S::and_(v, lo)));
            S::store(bt + (gb + j) * L, bf16_lanes_to_f(S::srli<16>(v)));
          } else {
            S::store(st + (gb + j) * L, f16_lanes_to_f(S::and_(v, lo)));
            S::store(bt + (gb + j) * L, f16_lanes_to_f(S::srli<16>(v)));
          }
        }
        continue;
      }
      float* dst = pass == 0 ? st : bt;
#pragma GCC unroll 16
      for (int j = 0; j < L; ++j) S::storei(dst + (gb + j) * L, r[j]);
    }
  }
}

/// Bytes ahead of the current chunk that transpose_words prefetches (into L2)
/// in each of the tile's rows: the L rows are L concurrent streams, more than
/// the hardware prefetchers follow reliably.
constexpr int64_t kPrefetchBytes = 1024;

/// Transposes words [w0, w0 + nw) (nw <= L) of rows [n0, n0 + nv) into
/// wt[word][lane]; writes all L word vectors (those past nw are don't-care), so
/// the registers never need an address (wt has room for 32 words).
MMKIT_INLINE void transpose_words(const QWeights& q, int64_t n0, int nv, int64_t w0, int nw, uint32_t* wt) {
  I r[L];
  const uint32_t* base = q.w + n0 * q.words + w0;
  const bool pf = w0 * 4 + kPrefetchBytes < q.words * 4;
  if (nv == L) {
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) r[i] = S::loadi_n(base + i * q.words, nw);
    if (pf) {
#pragma GCC unroll 16
      for (int i = 0; i < L; ++i)
        _mm_prefetch(reinterpret_cast<const char*>(base + i * q.words) + kPrefetchBytes, _MM_HINT_T1);
    }
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) r[i] = i < nv ? S::loadi_n(base + i * q.words, nw) : S::set1i(0);
  }
  S::transpose(r);
#pragma GCC unroll 16
  for (int j = 0; j < L; ++j) S::storei(wt + j * L, r[j]);
}

/// Transposes words [w0, w1) of rows [n0, n0 + nv) into wt[w - w0][lane], one
/// L x L register transpose per L words, before any decoding: the decode loops
/// then read contiguous vectors and stay small (no transposes interleaved).
/// wt must hold round_up(w1 - w0, L) * L words.
inline void transpose_tile_words(const QWeights& q, int64_t n0, int nv, int64_t w0, int64_t w1, uint32_t* wt) {
  for (int64_t w = w0; w < w1; w += L)
    transpose_words(q, n0, nv, w, static_cast<int>(w1 - w < L ? w1 - w : L), wt + (w - w0) * L);
}

}  // namespace
}  // namespace mmkit::cpu::MMKIT_ISA_NS
