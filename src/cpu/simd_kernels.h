// The seam between the baseline CPU dispatchers (qmm_fast.cpp, gemm_fast.cpp,
// quantize_fast.cpp: validation-free planning, OpenMP threading, buffers) and
// the per-ISA kernel files (*_avx512.cpp, *_avx2.cpp: SIMD only, no threads,
// no allocation, no standard-library templates). Plain structs and function
// pointers, so nothing compiled with wider -m flags leaks into baseline code.
//
// Dtype codes in these structs: 0 float32, 1 float16, 2 bfloat16
// (mmkit::Dtype's numbering).
#pragma once

#include <cstdint>

namespace mmkit::cpu {

/// Block size along K of the packed GEMM panels (a multiple of every group size).
constexpr int64_t kGemmKc = 256;

/// One quantized weight matrix (one expert), as descriptors.h lays it out:
/// rows x words packed codes, rows x groups scales (and biases).
struct QWeights {
  const uint32_t* w = nullptr;
  const void* scales = nullptr;
  const void* biases = nullptr;  // affine only
  int64_t rows = 0;              // transpose ? N : K
  int64_t cols = 0;              // codes per row: transpose ? K : N
  int64_t words = 0;             // uint32 per row
  int64_t groups = 0;            // scale groups per row
  int bits = 4, group_size = 64;
  int mode = 0;                  // fmt::Mode: 0 affine, 1 mxfp4, 2 mxfp8, 3 nvfp4
  int sdt = 0;                   // affine scale/bias dtype code
};

/// Small-M fused quantized matmul, weights (N, K) (transpose = true):
/// out[m][n] = sum_k x[m][k] * w_hat[n][k] for n in [n0, n1), all m < mrows.
struct QmvArgs {
  const QWeights* q = nullptr;
  int64_t n0 = 0, n1 = 0;
  int mrows = 0;
  const float* const* x = nullptr;  // mrows rows of K float32
  const float* xsum = nullptr;      // affine: mrows x groups sums of x over each group
  const uint32_t* const* xpairs = nullptr;  // qmv_bf16_avx512 only: per row, bf16 pairs (qmm_fast.cpp)
  void* const* out = nullptr;       // mrows output rows (element n at index n), dtype odt
  int odt = 0;
  float* scratch = nullptr;         // qmv_scratch_floats(q) floats, 64-byte aligned
};

struct SimdKernels {
  const char* name;
  int lanes;  // float32 lanes per vector
  int mr;     // GEMM micro-tile rows (largest)
  int nr;     // GEMM micro-tile columns (= packed panel width)
  /// Rows per expert up to which qmv beats decode-to-panel + GEMM (qmv re-decodes
  /// the weights every 8 (AVX2: 4) rows, the GEMM decodes once but pads tiles).
  int qmv_max_rows;

  // ---- conversions ---------------------------------------------------------
  void (*to_f32)(const void* src, int dt, int64_t n, float* dst);
  void (*from_f32)(const float* src, int64_t n, int dt, void* dst);

  // ---- quantized matmul ------------------------------------------------------
  int64_t (*qmv_scratch_floats)(const QWeights& q);
  void (*qmv)(const QmvArgs& a);
  /// Packs the dequantized panel Bp[k][j] = w_hat[n0 + j][k0 + k] (transpose = true)
  /// for j < nv (zeros for nv <= j < nr), k < kc; k0, kc multiples of the group size.
  void (*pack_qt)(const QWeights& q, int64_t n0, int nv, int64_t k0, int64_t kc, float* bp, float* scratch);
  /// Same for transpose = false: Bp[k][j] = w_hat[k0 + k][n0 + j]; n0 a multiple of nr.
  void (*pack_qn)(const QWeights& q, int64_t n0, int nv, int64_t k0, int64_t kc, float* bp);

  // ---- float GEMM --------------------------------------------------------------
  /// Packs rows (row pointers, dtype dt) into an A micro-panel: element (k, i)
  /// at ap[(k / kGemmKc) * kblock_stride + (k % kGemmKc) * mr_pack + i] for k < K,
  /// zero rows beyond mrows (mrows <= mr_pack). kblock_stride = kGemmKc * mr_pack
  /// gives one contiguous K x mr panel; larger strides interleave the tiles of
  /// a k-block so the micro-kernel streams them back to back. Optional per-row-and-k scale:
  /// when kscale is set, element (i, k) is multiplied by kscale[i * kscale_ld + k / kscale_div].
  void (*pack_a)(const void* const* rows, int dt, int mrows, int mr_pack, int64_t K, float* ap,
                 int64_t kblock_stride, const float* kscale, int64_t kscale_ld, int64_t kscale_div);
  /// Packs Bp[k][j] = b[k0 + k][n0 + j] (kmajor = false, b row stride ldb) or
  /// b[n0 + j][k0 + k] (kmajor = true), converted to float32, times
  /// kscale[(k0 + k) / kscale_div] when kscale is set; zeros for j >= nv.
  void (*pack_b)(const void* b, int dt, bool kmajor, int64_t ldb, int64_t n0, int nv, int64_t k0, int64_t kc,
                 float* bp, const float* kscale, int64_t kscale_div);
  /// C[i][j] (+)= sum_k Ap[k][i] * Bp[k][j] for i < mv, j < nv; mr_pack in {1,2,4,8,12} (AVX2: {1,2,4,6}).
  void (*gemm_tile)(int mr_pack, int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, int mv, int nv,
                    bool accumulate);

  // ---- dequantize (bit-exact with the portable kernel) ----------------------------
  /// Rows [r0, r1) of a (rows, cols) quantized matrix into out (row-major, dtype odt).
  /// has_gs: nvfp4 with a global scale (value * (e4m3(scale) * gmul)).
  void (*dequantize)(const QWeights& q, int64_t r0, int64_t r1, void* out, int odt, bool has_gs, float gmul);

  // ---- quantize (bit-exact with the portable kernel) ------------------------------
  /// One row of `cols` float32 values -> packed codes + scales (+ biases).
  /// dt: the input dtype (its rounding steps are reproduced); enc: nvfp4 global encode factor.
  void (*quantize_row)(const float* w, int64_t cols, int mode, int bits, int gs, int dt, float enc, bool has_gs,
                       uint32_t* q, void* scales, void* biases);
};

/// One row of x prepared for qmv_vnni_avx512 (qmm_fast.cpp, once per call),
/// affine 2/4/8-bit weights. Per group g: E_g = the exponent of its largest |x|
/// (all-zero groups: zeros), X = rint(x * 2^(XB - E_g)) with XB =
/// vnni_x_bits(bits) (|X| <= 2^(XB + 1)), split exactly into signed bytes
/// X = p2 * 2^16 + p1 * 2^8 + p0. A chunk is 64 bytes of a weight row: CPB =
/// 8 / bits codes per byte, 64 * CPB codes. Per chunk c, pieces holds 3 * CPB
/// 64-byte vectors, piece-major (p2, p1, p0), then code position s in the byte:
/// byte b of vector (p, s) is p of x[64 * CPB * c + CPB * b + s] (zero past K:
/// a partial last chunk is padded). 64-byte aligned. gexp holds 2^(E_g - XB)
/// per group.
struct VnniX {
  const int8_t* pieces = nullptr;
  const float* gexp = nullptr;
  const float* xsum = nullptr;  // the group sums of x (the affine bias term)
};

/// Bits of x kept below its group's largest exponent: 21 for 2/4-bit codes
/// (|X| <= 2^22 keeps the top piece p2 within a signed byte; X up to 2^23
/// would not), 20 for 8-bit codes, whose larger products need the headroom: a
/// chunk lane sums 4 codes, 4 * 255 * 2^21 = 2^31 - 2^23 fits int32 (21 would
/// not).
constexpr int vnni_x_bits(int bits) { return bits == 8 ? 20 : 21; }

struct QmvVnniArgs {
  const QWeights* q = nullptr;  // affine 2/4/8-bit
  int64_t n0 = 0, n1 = 0;
  int mrows = 0;
  const VnniX* x = nullptr;
  void* const* out = nullptr;  // mrows output rows, dtype odt
  int odt = 0;
  float* scratch = nullptr;    // qmv_vnni_scratch_floats(q) floats
};
inline int64_t qmv_vnni_scratch_floats(const QWeights& q) { return 12 * (q.groups + 16); }

/// Prepares one row of K float32 x as VnniX pieces (3 * K rounded up to a
/// chunk's codes bytes) and gexp (gfac: G floats of scratch). Returns false (x unusable) when a group holds Inf/NaN or its
/// largest |x| has an exponent outside [-100, 100] (subnormal maxima included).
bool vnni_prep_x_avx512(const float* x, int64_t K, int gs, int bits, int8_t* pieces, float* gexp, float* gfac);

/// AVX-512 VNNI qmv, natural weight layout (qmm_avx512vnni.cpp). Call only
/// when the CPU has AVX512_VNNI.
void qmv_vnni_avx512(const QmvVnniArgs& a);

/// AVX-512 BF16 qmv for bfloat16 activations, formats affine 2/4-bit, mxfp4,
/// nvfp4 (qmm_avx512bf16.cpp). Pair p = w * h + j (h = 16 / bits codes per half
/// word) of a row of x holds bf16(x[w * 2h + j]) | bf16(x[w * 2h + h + j]) << 16.
/// Call only when the CPU has AVX512_BF16.
void qmv_bf16_avx512(const QmvArgs& a);

const SimdKernels* simd_kernels_avx512();
const SimdKernels* simd_kernels_avx2();

}  // namespace mmkit::cpu
