// AVX-512 VNNI variant of the fused few-row quantized matmul for affine
// 4-bit weights: out (mrows, N) = x (mrows, K) @ w_hat(N, K)^T, w (N, K) read
// in its natural row-major layout (one sequential stream, no transposes).
//
// Per 64-byte chunk of a row (128 codes): the low and high nibbles become two
// vectors of u8 codes (and / shift); lane j of a vpdpbusd then sums the 8
// codes of word j of the chunk against x as signed bytes. x is held per group
// in block floating point: X = rint(x * 2^(21 - E)), E = the group's largest
// exponent, |X| <= 2^22, split exactly into three signed bytes
// X = p2 * 2^16 + p1 * 2^8 + p0 (qmm_fast.cpp prepares them once per call,
// even-k and odd-k pieces apart to match the nibble order). Three chained
// vpdpbusd pairs with two 8-bit shifts give sum(code * X) over the 8 codes
// exactly in int32 (|sum| < 2^30); it is converted to float once per chunk and
// FMA'd with the per-lane scale * 2^(E - 21). The affine bias enters once per
// row as dot(bias row, group sums of x). Accuracy: each x keeps 22 bits below
// its group's maximum (float32 keeps 24 of its own), so the error is a few
// float32 roundings of the group's largest term.
// Tile: one row of w x MB (<= 4) rows of x. Bound: weight bandwidth at M = 1
// (target >= 80% of the measured read bandwidth; docs/kernels/cpu.md has the
// measured decode rates).
// Compiled with -mavx512vnni in addition to the AVX-512 flags; called only when
// the CPU reports AVX512_VNNI (qmm_fast.cpp).
// Tests: tests/test_cpu_isa.cpp (Vnni*, and every affine 4-bit case at the
// avx512 level); bench: bench/cpu_bench.cpp (qmm affine4 ... M=1, with and
// without this kernel).
#define MMKIT_ISA_NS avx512vnni
#define MMKIT_ISA_MR 12
#define MMKIT_ISA_NR 32
#include "cpu/simd.h"
#include "cpu/simd_decls.h"

namespace mmkit::cpu::MMKIT_ISA_NS {
namespace {

/// One row of scales or biases as float32 (dtype code sdt), n values, into dst.
MMKIT_INLINE void row_to_f32(const void* src, int sdt, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; i += 16) {
    const int c = n - i < 16 ? static_cast<int>(n - i) : 16;
    const __mmask16 k = S::lanes(c);
    __m512 v;
    if (sdt == 0) {
      v = _mm512_maskz_loadu_ps(k, static_cast<const float*>(src) + i);
    } else {
      const __m256i h = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(src) + i);
      v = sdt == 1 ? _mm512_cvtph_ps(h) : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    _mm512_storeu_ps(dst + i, v);
  }
}

/// Rows [r0, r0 + R) of w against MB rows of x; results into res[m][r0 - n0 + r].
template <int MB, int R>
MMKIT_INLINE void rows_4bit(const QmvVnniArgs& a, int64_t r0, const __m512i gidx, float* scratch,
                            float (*res)[16], int slot) {
  const QWeights& q = *a.q;
  const int64_t nch = q.cols / 128, G = q.groups, G16 = G + 16;
  const int cpg = 128 / q.group_size;  // groups per chunk (4, 2, 1)
  const size_t ses = q.sdt == 0 ? 4 : 2;
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  // per row r: ps[r][m] = scale * 2^(E - 21) per group (+16 slack for the chunk loads)
  float* ps = scratch;
  float* sf = scratch + R * MB * G16;
  float* bf = sf + G16;
  const uint8_t* wr[R];
  const int64_t rowbytes = q.words * 4;
  __m512 acc[R][MB];
  for (int r = 0; r < R; ++r) {
    const int64_t n = r0 + r;
    wr[r] = reinterpret_cast<const uint8_t*>(q.w + n * q.words);
    row_to_f32(static_cast<const char*>(q.scales) + n * G * ses, q.sdt, G, sf);
    row_to_f32(static_cast<const char*>(q.biases) + n * G * ses, q.sdt, G, bf);
    for (int m = 0; m < MB; ++m) {
      float* pm = ps + (r * MB + m) * G16;
      __m512 b = _mm512_setzero_ps();
      for (int64_t g = 0; g < G; g += 16) {
        const __mmask16 k = S::lanes(G - g < 16 ? static_cast<int>(G - g) : 16);
        const __m512 sc = _mm512_maskz_loadu_ps(k, sf + g);
        b = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, bf + g), _mm512_maskz_loadu_ps(k, a.x[m].xsum + g), b);
        _mm512_mask_storeu_ps(pm + g, k, _mm512_mul_ps(sc, _mm512_maskz_loadu_ps(k, a.x[m].gexp + g)));
      }
      acc[r][m] = b;  // bias * (group sums of x), reduced with the codes' sum below
    }
  }
  for (int64_t c = 0; c < nch; ++c) {
    __m512i lo[R], hi[R];
    for (int r = 0; r < R; ++r) {
      // the same line of the next R rows: rows are contiguous, so this streams
      // the weights one row group ahead
      _mm_prefetch(reinterpret_cast<const char*>(wr[r] + R * rowbytes + c * 64), _MM_HINT_T0);
      const __m512i v = _mm512_loadu_si512(wr[r] + c * 64);
      lo[r] = _mm512_and_si512(v, m4);
      hi[r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    }
    for (int m = 0; m < MB; ++m) {
      const int8_t* p = a.x[m].pieces + c * 384;
      const __m512i x2e = _mm512_load_si512(p), x2o = _mm512_load_si512(p + 64);
      const __m512i x1e = _mm512_load_si512(p + 128), x1o = _mm512_load_si512(p + 192);
      const __m512i x0e = _mm512_load_si512(p + 256), x0o = _mm512_load_si512(p + 320);
      for (int r = 0; r < R; ++r) {
        __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[r], x2e);
        t = _mm512_dpbusd_epi32(t, hi[r], x2o);
        t = _mm512_slli_epi32(t, 8);
        t = _mm512_dpbusd_epi32(t, lo[r], x1e);
        t = _mm512_dpbusd_epi32(t, hi[r], x1o);
        t = _mm512_slli_epi32(t, 8);
        t = _mm512_dpbusd_epi32(t, lo[r], x0e);
        t = _mm512_dpbusd_epi32(t, hi[r], x0o);
        const __m512 sl = _mm512_permutexvar_ps(gidx, _mm512_loadu_ps(ps + (r * MB + m) * G16 + c * cpg));
        acc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sl, acc[r][m]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) res[m][slot + r] = _mm512_reduce_add_ps(acc[r][m]);
}

template <int MB>
void qmv_vnni_mb(const QmvVnniArgs& a) {
  constexpr int RB = MB == 1 ? 4 : 2;  // rows of w in flight: independent dpbusd chains
  const QWeights& q = *a.q;
  const int gs = q.group_size;
  // lane j of a chunk covers codes 8j..8j+7: group j * 8 / gs of the chunk
  const __m512i gidx = _mm512_srli_epi32(_mm512_set_epi32(120, 112, 104, 96, 88, 80, 72, 64, 56, 48, 40, 32, 24, 16, 8, 0),
                                         gs == 32 ? 5 : gs == 64 ? 6 : 7);
  const size_t es = a.odt == 0 ? 4 : 2;
  alignas(64) float res[MB][16];
  for (int64_t n0 = a.n0; n0 < a.n1; n0 += 16) {
    const int nv = a.n1 - n0 < 16 ? static_cast<int>(a.n1 - n0) : 16;
    int r = 0;
    for (; r + RB <= nv; r += RB) rows_4bit<MB, RB>(a, n0 + r, gidx, a.scratch, res, r);
    for (; r < nv; ++r) rows_4bit<MB, 1>(a, n0 + r, gidx, a.scratch, res, r);
    for (int m = 0; m < MB; ++m) store_as(static_cast<char*>(a.out[m]) + n0 * es, a.odt, _mm512_load_ps(res[m]), nv);
  }
}

/// Low byte of each dword as a signed value, and (v - that) / 256 (exact).
MMKIT_INLINE __m512i sext8(__m512i v) { return _mm512_srai_epi32(_mm512_slli_epi32(v, 24), 24); }

}  // namespace
}  // namespace mmkit::cpu::MMKIT_ISA_NS

namespace mmkit::cpu {

bool vnni_prep_x_avx512(const float* x, int64_t K, int gs, int8_t* pieces, float* gexp) {
  using namespace avx512vnni;
  constexpr int kMaxExp = 100;
  const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
  for (int64_t g0 = 0; g0 < K; g0 += gs) {
    // the largest |x| bits: for finite values their order is that of |x|; NaN and Inf sort above
    __m512i mb = _mm512_setzero_si512();
    for (int i = 0; i < gs; i += 16)
      mb = _mm512_max_epu32(mb, _mm512_and_si512(_mm512_loadu_si512(x + g0 + i), _mm512_set1_epi32(0x7fffffff)));
    const uint32_t mbits = static_cast<uint32_t>(_mm512_reduce_max_epu32(mb));
    if (mbits >= 0x7f800000u) return false;  // Inf or NaN
    const int64_t g = g0 / gs;
    __m512 fac;
    if (mbits == 0) {
      gexp[g] = 0.0f;
      fac = _mm512_setzero_ps();
    } else {
      if (mbits < 0x00800000u) return false;  // subnormal maximum: exponent < -126
      const int e = static_cast<int>(mbits >> 23) - 127;
      if (e < -kMaxExp || e > kMaxExp) return false;
      gexp[g] = bits_to_f(static_cast<uint32_t>(e - 21 + 127) << 23);
      fac = _mm512_set1_ps(bits_to_f(static_cast<uint32_t>(21 - e + 127) << 23));
    }
    for (int64_t k0 = g0; k0 < g0 + gs; k0 += 32) {
      const __m512 a = _mm512_loadu_ps(x + k0), b = _mm512_loadu_ps(x + k0 + 16);
      int8_t* pc = pieces + (k0 / 128) * 384 + ((k0 % 128) / 32) * 16;
      for (int par = 0; par < 2; ++par) {
        const __m512 v = _mm512_permutex2var_ps(a, par ? od : ev, b);
        const __m512i X = _mm512_cvtps_epi32(_mm512_mul_ps(v, fac));  // round to nearest even, |X| <= 2^22
        const __m512i x1 = _mm512_srai_epi32(_mm512_sub_epi32(X, sext8(X)), 8);
        const __m512i p2 = _mm512_srai_epi32(_mm512_sub_epi32(x1, sext8(x1)), 8);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(pc + par * 64), _mm512_cvtepi32_epi8(p2));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(pc + 128 + par * 64), _mm512_cvtepi32_epi8(x1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(pc + 256 + par * 64), _mm512_cvtepi32_epi8(X));
      }
    }
  }
  return true;
}

void qmv_vnni_avx512(const QmvVnniArgs& a) {
  for (int m0 = 0; m0 < a.mrows; m0 += 4) {
    QmvVnniArgs s = a;
    s.x = a.x + m0;
    s.out = a.out + m0;
    switch (a.mrows - m0 < 4 ? a.mrows - m0 : 4) {
      case 1: avx512vnni::qmv_vnni_mb<1>(s); break;
      case 2: avx512vnni::qmv_vnni_mb<2>(s); break;
      case 3: avx512vnni::qmv_vnni_mb<3>(s); break;
      default: avx512vnni::qmv_vnni_mb<4>(s); break;
    }
  }
}

}  // namespace mmkit::cpu
