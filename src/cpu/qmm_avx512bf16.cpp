// AVX-512 BF16 variant of the fused few-row quantized matmul (qmv) for
// bfloat16 activations: out (mrows, N) = x (mrows, K) @ w_hat(N, K)^T.
//
// The codes of the supported formats (affine 2/4-bit, mxfp4 and nvfp4 E2M1)
// and bfloat16 activations are exact in bfloat16, and vdpbf16ps multiplies
// them exactly into float32 accumulators, so the result is the float32 path's
// (scale once per group, bias * sum(x) for affine), with half the operations:
// one 16-bit shift + one vpermw decode two codes per lane (the low and high
// halves of a word), and one vdpbf16ps consumes them against an (x[k], x[k'])
// pair broadcast. Tile: 16 rows (dword lanes) x all K, up to 8 rows of x,
// 2-4 accumulator chains. Bound: weight bandwidth at M = 1 (target >= 80% of
// the measured read bandwidth); measured per core: 69 codes/ns inner loop
// against 35 for the float32 path.
// Compiled with -mavx512bf16 in addition to the AVX-512 flags; called only
// when the CPU reports AVX512_BF16 (qmm_fast.cpp).
// Tests: tests/test_cpu_isa.cpp (bfloat16 activations, every supported format);
// bench: bench/cpu_bench.cpp (qmm ... bfloat16, gather_qmm ... bf16).
#define MMKIT_ISA_NS avx512bf16
#define MMKIT_ISA_MR 12
#define MMKIT_ISA_NR 32
#include "cpu/simd.h"
#include "cpu/simd_decls.h"
#include "cpu/qdecode_simd.h"
#include "cpu/qtile_simd.h"

namespace mmkit::cpu::MMKIT_ISA_NS {
namespace {

/// 32-entry vpermw table: bfloat16 of the value of code (i & 15) (4-bit) or (i & 3) (2-bit).
template <int BITS, int KIND>
inline __m512i table16() {
  alignas(64) uint16_t t[32];
  for (int i = 0; i < 32; ++i) {
    float v;
    if constexpr (KIND == kE2m1) {
      constexpr float kMag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
      v = (i & 8) ? -kMag[i & 7] : kMag[i & 7];
    } else {
      v = static_cast<float>(i & ((1 << BITS) - 1));
    }
    t[i] = static_cast<uint16_t>(f_to_bits(v) >> 16);  // exact: small integers and E2M1 values
  }
  return _mm512_load_si512(t);
}

template <int BITS, int KIND, int MB>
void qmv_bf16_tile(const QWeights& q, int64_t n0, int nv, const uint32_t* const* xp, const float* xsum,
                   void* const* out, int odt, const float* st, const float* bt, uint32_t* wt) {
  constexpr int HALF = 16 / BITS;            // codes per 16-bit half word
  constexpr int P = MB >= 4 ? 1 : 4 / MB;   // independent accumulator chains per row
  const __m512i table = table16<BITS, KIND>();
  const int wpg = q.group_size * BITS / 32;
  const uint32_t* xr[MB];
  F tot[MB];
  for (int m = 0; m < MB; ++m) {
    xr[m] = xp[m];
    tot[m] = S::zero();
  }
  for (int64_t g = 0; g < q.groups; ++g) {
    const uint32_t* wg = wt + g * wpg * L;
    F acc[MB][P];
    for (int m = 0; m < MB; ++m)
      for (int p = 0; p < P; ++p) acc[m][p] = S::zero();
    for (int w = 0; w < wpg; ++w) {
      const I words = S::loadi(wg + w * L);
      const int64_t p0 = (g * wpg + w) * HALF;  // pair index of this word's first pair
      unroll<HALF>([&](auto c) MMKIT_LAMBDA_INLINE {
        constexpr int J = decltype(c)::value;
        const I v = J ? _mm512_srli_epi16(words, BITS * J) : words;
        const __m512bh codes = (__m512bh)_mm512_permutexvar_epi16(v, table);
        for (int m = 0; m < MB; ++m)
          acc[m][J % P] = _mm512_dpbf16_ps(acc[m][J % P], codes,
                                           (__m512bh)_mm512_set1_epi32(static_cast<int>(xr[m][p0 + J])));
      });
    }
    const F s = S::load(st + g * L);
    for (int m = 0; m < MB; ++m) {
      F a = acc[m][0];
      for (int p = 1; p < P; ++p) a = S::add(a, acc[m][p]);
      tot[m] = S::fma(a, s, tot[m]);
      if constexpr (KIND == kAffine) tot[m] = S::fma(S::load(bt + g * L), S::set1(xsum[m * q.groups + g]), tot[m]);
    }
  }
  const size_t es = odt == 0 ? 4 : 2;
  for (int m = 0; m < MB; ++m) store_as(static_cast<char*>(out[m]) + n0 * es, odt, tot[m], nv);
}

template <int BITS, int KIND>
void qmv_bf16_impl(const QmvArgs& a) {
  const QWeights& q = *a.q;
  const int64_t rg = (q.groups + L - 1) / L * L;  // see qmv_scratch_floats
  float* st = a.scratch;
  float* bt = st + rg * L;
  uint32_t* wt = reinterpret_cast<uint32_t*>(bt + rg * L);
  for (int64_t n0 = a.n0; n0 < a.n1; n0 += L) {
    const int nv = static_cast<int>(a.n1 - n0 < L ? a.n1 - n0 : L);
    transpose_scales(q, n0, nv, 0, q.groups, st, bt);
    transpose_tile_words(q, n0, nv, 0, q.words, wt);
    for (int m0 = 0; m0 < a.mrows; m0 += 8) {
      const int mb = a.mrows - m0 < 8 ? a.mrows - m0 : 8;
      const uint32_t* const* x = a.xpairs + m0;
      const float* xs = a.xsum ? a.xsum + m0 * q.groups : nullptr;
      void* const* o = a.out + m0;
      switch (mb) {
        case 1: qmv_bf16_tile<BITS, KIND, 1>(q, n0, nv, x, xs, o, a.odt, st, bt, wt); break;
        case 2: qmv_bf16_tile<BITS, KIND, 2>(q, n0, nv, x, xs, o, a.odt, st, bt, wt); break;
        case 3: qmv_bf16_tile<BITS, KIND, 3>(q, n0, nv, x, xs, o, a.odt, st, bt, wt); break;
        case 4: qmv_bf16_tile<BITS, KIND, 4>(q, n0, nv, x, xs, o, a.odt, st, bt, wt); break;
        case 5: qmv_bf16_tile<BITS, KIND, 5>(q, n0, nv, x, xs, o, a.odt, st, bt, wt); break;
        case 6: qmv_bf16_tile<BITS, KIND, 6>(q, n0, nv, x, xs, o, a.odt, st, bt, wt); break;
        case 7: qmv_bf16_tile<BITS, KIND, 7>(q, n0, nv, x, xs, o, a.odt, st, bt, wt); break;
        default: qmv_bf16_tile<BITS, KIND, 8>(q, n0, nv, x, xs, o, a.odt, st, bt, wt); break;
      }
    }
  }
}

}  // namespace
}  // namespace mmkit::cpu::MMKIT_ISA_NS

namespace mmkit::cpu {

void qmv_bf16_avx512(const QmvArgs& a) {
  const QWeights& q = *a.q;
  if (q.mode == 0 && q.bits == 2) avx512bf16::qmv_bf16_impl<2, avx512bf16::kAffine>(a);
  else if (q.mode == 0) avx512bf16::qmv_bf16_impl<4, avx512bf16::kAffine>(a);
  else avx512bf16::qmv_bf16_impl<4, avx512bf16::kE2m1>(a);
}

}  // namespace mmkit::cpu
