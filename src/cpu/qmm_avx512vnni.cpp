// AVX-512 VNNI variant of the fused few-row quantized matmul for affine
// 2/4/8-bit weights: out (mrows, N) = x (mrows, K) @ w_hat(N, K)^T, w (N, K)
// read in its natural row-major layout (one sequential stream, no transposes).
//
// Per 64-byte chunk of a row (64 * 8 / bits codes): 8 / bits vectors of u8
// codes (and, plus a 16-bit shift per further code position in the byte);
// lane j of a vpdpbusd then sums the codes of bytes 4j..4j+3 against x as
// signed bytes. x is held per group in block floating point:
// X = rint(x * 2^(XB - E)), E = the group's largest exponent, XB = 21 (8-bit
// codes: 20), split exactly into three signed bytes X = p2 * 2^16 + p1 * 2^8
// + p0 (vnni_prep_x_avx512, once per call, in the codes' byte order; layout:
// VnniX in simd_kernels.h). Three chained vpdpbusd runs with two 8-bit shifts
// give sum(code * X) per lane exactly in int32 (< 2^31 by the choice of XB);
// it is converted to float once per chunk and FMA'd with the lane's
// scale * 2^(E - XB). The affine bias enters once per row as dot(bias row,
// group sums of x). A partial last chunk loads only the row's bytes (the x
// pieces past K are zero). Accuracy: X is off by at most half a step, so an
// output's error is at most sum over groups of 2^(E - XB - 1) * |scale| *
// sum(codes), plus float32 roundings (scale * code, not the dequantized
// weight: the bias takes the float32 group sums); docs/kernels/cpu.md, pinned
// by VnniQmvBlockExponentErrorBound.
// Tile: (4 rows of w, 1 row of x) or (2 rows of w, 2-4 rows of x) per pass,
// K streamed in 64-byte chunks; rows of w (and their scales and biases)
// prefetched into L2 4 row groups ahead.
// Bound: weight bandwidth at M = 1 (target >= 80% of the measured read
// bandwidth; measured ~43 decoded weights/ns per core for 4-bit, against the
// ~37 the target needs on the development machine: docs/kernels/cpu.md).
// Compiled with -mavx512vnni in addition to the AVX-512 flags; called only when
// the CPU reports AVX512_VNNI (qmm_fast.cpp).
// Tests: tests/test_cpu_isa.cpp (VnniQmvBlockExponentStress,
// VnniQmvBlockExponentErrorBound, and every affine
// 2/4/8-bit few-row case at the avx512 level); bench: bench/cpu_bench.cpp
// (qmm affine2/4/8 ... M <= 4, with and without this kernel).
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

/// Rows [r0, r0 + R) of w against MB rows of x; results into res[m][slot + r].
/// A chunk is 64 bytes of a row: CPB = 8 / BITS code vectors (code s of every
/// byte), 64 * CPB codes; lane j sums the 4 * CPB codes of bytes 4j..4j+3.
template <int BITS, int MB, int R>
MMKIT_INLINE void rows_q(const QmvVnniArgs& a, int64_t r0, const __m512i gidx, float* scratch, float (*res)[16],
                         int slot) {
  constexpr int CPB = 8 / BITS, CH = 64 * CPB;
  const QWeights& q = *a.q;
  // whole chunks, then a partial one (K a multiple of the group size, >= 32 codes)
  const int64_t nfull = q.cols / CH, tail_bytes = (q.cols % CH) / CPB, G = q.groups, G16 = G + 16;
  const int gshift = __builtin_ctz(static_cast<unsigned>(q.group_size));  // group sizes are powers of two
  const size_t ses = q.sdt == 0 ? 4 : 2;
  const __m512i mask = _mm512_set1_epi8(static_cast<char>((1 << BITS) - 1));
  // per row r and x row m: ps = scale * 2^(E - XB) per group (+16 slack for the chunk loads)
  float* ps = scratch;
  float* sf = scratch + R * MB * G16;
  float* bf = sf + G16;
  const uint8_t* wr[R];
  const int64_t rowbytes = q.words * 4;
  __m512 acc[R][MB];
  for (int r = 0; r < R; ++r) {
    const int64_t n = r0 + r;
    wr[r] = reinterpret_cast<const uint8_t*>(q.w + n * q.words);
    // this row's scales and biases 4 row groups ahead, into L2 like its weights
    // below (measured: 5-15% less time at M = 1 and in gather_qmm decode)
    for (int64_t b = 0; b < G * static_cast<int64_t>(ses); b += 64) {
      _mm_prefetch(static_cast<const char*>(q.scales) + (n + 4 * R) * G * ses + b, _MM_HINT_T1);
      _mm_prefetch(static_cast<const char*>(q.biases) + (n + 4 * R) * G * ses + b, _MM_HINT_T1);
    }
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
      _mm512_storeu_ps(pm + G, _mm512_setzero_ps());  // lanes past the last group of a partial chunk
      acc[r][m] = b;  // bias * (group sums of x), reduced with the codes' sum below
    }
  }
  auto chunk = [&](int64_t c, bool tail) MMKIT_LAMBDA_INLINE {
    __m512i cv[R][CPB];
    for (int r = 0; r < R; ++r) {
      // the same line 4 row groups ahead, into L2: rows are contiguous, so this
      // streams the weights (measured: 1.0 ms against 1.4 ms for one group
      // ahead into L1, 14336 x 4096 4-bit g64, M = 1, 2 threads)
      _mm_prefetch(reinterpret_cast<const char*>(wr[r] + 4 * R * rowbytes + c * 64), _MM_HINT_T1);
      // a partial chunk reads only the row's bytes (zero codes beyond; x pieces are zero there too)
      const __m512i v = tail ? _mm512_maskz_loadu_epi8(_cvtu64_mask64(~0ull >> (64 - tail_bytes)), wr[r] + c * 64)
                             : _mm512_loadu_si512(wr[r] + c * 64);
      for (int t = 0; t < CPB; ++t) {
        if constexpr (BITS == 8) cv[r][t] = v;
        else cv[r][t] = _mm512_and_si512(t ? _mm512_srli_epi16(v, BITS * t) : v, mask);
      }
    }
    const int64_t goff = (c * CH) >> gshift;  // the chunk's first group (a shift, not a division per chunk)
    for (int m = 0; m < MB; ++m) {
      const int8_t* p = a.x[m].pieces + c * 3 * 64 * CPB;
      for (int r = 0; r < R; ++r) {
        __m512i t = _mm512_setzero_si512();
        for (int pc = 0; pc < 3; ++pc) {  // pieces 2, 1, 0
          if (pc) t = _mm512_slli_epi32(t, 8);
          for (int u = 0; u < CPB; ++u) t = _mm512_dpbusd_epi32(t, cv[r][u], _mm512_load_si512(p + (pc * CPB + u) * 64));
        }
        const __m512 sl = _mm512_permutexvar_ps(gidx, _mm512_loadu_ps(ps + (r * MB + m) * G16 + goff));
        acc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sl, acc[r][m]);
      }
    }
  };
  for (int64_t c = 0; c < nfull; ++c) chunk(c, false);
  if (tail_bytes) chunk(nfull, true);
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) res[m][slot + r] = _mm512_reduce_add_ps(acc[r][m]);
}

template <int BITS, int MB>
void qmv_vnni_mb(const QmvVnniArgs& a) {
  constexpr int RB = MB == 1 ? 4 : 2;  // rows of w in flight: independent dpbusd chains
  constexpr int CPB = 8 / BITS;
  const int gs = a.q->group_size;
  // lane j of a chunk covers codes 4 * CPB * j ...: group (4 * CPB * j) / gs of the chunk
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const int sh = (gs == 16 ? 4 : gs == 32 ? 5 : gs == 64 ? 6 : 7) - (CPB == 1 ? 2 : CPB == 2 ? 3 : 4);
  const __m512i gidx = sh >= 0 ? _mm512_srli_epi32(lane, sh) : _mm512_slli_epi32(lane, -sh);
  const size_t es = a.odt == 0 ? 4 : 2;
  alignas(64) float res[MB][16];
  for (int64_t n0 = a.n0; n0 < a.n1; n0 += 16) {
    const int nv = a.n1 - n0 < 16 ? static_cast<int>(a.n1 - n0) : 16;
    int r = 0;
    for (; r + RB <= nv; r += RB) rows_q<BITS, MB, RB>(a, n0 + r, gidx, a.scratch, res, r);
    for (; r < nv; ++r) rows_q<BITS, MB, 1>(a, n0 + r, gidx, a.scratch, res, r);
    for (int m = 0; m < MB; ++m) store_as(static_cast<char*>(a.out[m]) + n0 * es, a.odt, _mm512_load_ps(res[m]), nv);
  }
}

template <int BITS>
void qmv_vnni_bits(const QmvVnniArgs& a) {
  for (int m0 = 0; m0 < a.mrows; m0 += 4) {
    QmvVnniArgs s = a;
    s.x = a.x + m0;
    s.out = a.out + m0;
    switch (a.mrows - m0 < 4 ? a.mrows - m0 : 4) {
      case 1: qmv_vnni_mb<BITS, 1>(s); break;
      case 2: qmv_vnni_mb<BITS, 2>(s); break;
      case 3: qmv_vnni_mb<BITS, 3>(s); break;
      default: qmv_vnni_mb<BITS, 4>(s); break;
    }
  }
}

/// Low byte of each dword as a signed value, and (v - that) / 256 (exact).
MMKIT_INLINE __m512i sext8(__m512i v) { return _mm512_srai_epi32(_mm512_slli_epi32(v, 24), 24); }

}  // namespace
}  // namespace mmkit::cpu::MMKIT_ISA_NS

namespace mmkit::cpu {

bool vnni_prep_x_avx512(const float* x, int64_t K, int gs, int bits, int8_t* pieces, float* gexp, float* gfac) {
  using namespace avx512vnni;
  constexpr int kMaxExp = 100;
  const int xb = vnni_x_bits(bits);  // |X| <= 2^(xb + 1)
  const int cpb = 8 / bits, ch = 64 * cpb;
  for (int64_t g0 = 0; g0 < K; g0 += gs) {
    // the largest |x| bits: for finite values their order is that of |x|; NaN and Inf sort above
    __m512i mb = _mm512_setzero_si512();
    for (int i = 0; i < gs; i += 16)
      mb = _mm512_max_epu32(mb, _mm512_and_si512(_mm512_loadu_si512(x + g0 + i), _mm512_set1_epi32(0x7fffffff)));
    const uint32_t mbits = static_cast<uint32_t>(_mm512_reduce_max_epu32(mb));
    if (mbits >= 0x7f800000u) return false;  // Inf or NaN
    const int64_t g = g0 / gs;
    if (mbits == 0) {
      gexp[g] = gfac[g] = 0.0f;
      continue;
    }
    if (mbits < 0x00800000u) return false;  // subnormal maximum: exponent < -126
    const int e = static_cast<int>(mbits >> 23) - 127;
    if (e < -kMaxExp || e > kMaxExp) return false;
    gexp[g] = bits_to_f(static_cast<uint32_t>(e - xb + 127) << 23);
    gfac[g] = bits_to_f(static_cast<uint32_t>(xb - e + 127) << 23);
  }
  // code s of byte b of chunk c is k = c * ch + cpb * b + s
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int64_t c = 0; c < (K + ch - 1) / ch; ++c) {  // a partial last chunk is padded with zeros
    int8_t* pc = pieces + c * 3 * ch;
    for (int s = 0; s < cpb; ++s) {
      for (int b0 = 0; b0 < 64; b0 += 16) {
        const __m512i k = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(c * ch + cpb * b0 + s)),
                                           _mm512_mullo_epi32(lane, _mm512_set1_epi32(cpb)));
        // k / gs for gs a power of two
        const __m512i gi = _mm512_srlv_epi32(k, _mm512_set1_epi32(31 - __builtin_clz(static_cast<unsigned>(gs))));
        const __mmask16 in = _mm512_cmplt_epi32_mask(k, _mm512_set1_epi32(static_cast<int>(K)));
        const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), in, k, x, 4);
        const __m512 f = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), in, gi, gfac, 4);
        const __m512i X = _mm512_cvtps_epi32(_mm512_mul_ps(v, f));  // round to nearest even
        const __m512i x1 = _mm512_srai_epi32(_mm512_sub_epi32(X, sext8(X)), 8);
        const __m512i p2 = _mm512_srai_epi32(_mm512_sub_epi32(x1, sext8(x1)), 8);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(pc + (0 * cpb + s) * 64 + b0), _mm512_cvtepi32_epi8(p2));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(pc + (1 * cpb + s) * 64 + b0), _mm512_cvtepi32_epi8(x1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(pc + (2 * cpb + s) * 64 + b0), _mm512_cvtepi32_epi8(X));
      }
    }
  }
  return true;
}

void qmv_vnni_avx512(const QmvVnniArgs& a) {
  switch (a.q->bits) {
    case 2: avx512vnni::qmv_vnni_bits<2>(a); break;
    case 8: avx512vnni::qmv_vnni_bits<8>(a); break;
    default: avx512vnni::qmv_vnni_bits<4>(a); break;
  }
}

}  // namespace mmkit::cpu
