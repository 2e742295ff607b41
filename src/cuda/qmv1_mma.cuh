// qmv1_mma: tensor-core GEMV for a few activation rows and 2-, 3-, 4-, 6- or
// 8-bit codes,
//   out[l] (M, N) = x[lhs[l]] (M, K) @ dequantize(w[rhs[l]]) (N, K)^T,
// float16 / bfloat16, transpose=true, K % 32 == 0 (a partial last chunk of
// 128 codes: its slices past K read zeros for x), 4- and 8-bit affine at
// group size 32 / 64 / 128 with M <= 2 / 4 / 8 (gs / 16 rows, 8 at group
// size 128), mxfp4 and mxfp8 (M <= 2) and nvfp4 (M = 1; FP4 codes: see "FP4"
// below; FP8 codes: "8-bit"), 2-bit affine with M <= gs / 32 and K % 64 ==
// 0 ("2-bit" below), 3-bit affine with M <= gs / 64 and K % 128 == 0, 6-bit
// with M <= gs / 32 and K % 64 == 0 ("3- and 6-bit" below).
// (The kernel is here, its host side in qmv1_mma.cu, the 8-, 2-, 3- and
// 6-bit launches in qmv1_mma_b8.cu, _b2.cu, _b3.cu and _b6.cu.)
// (M = 1 is the decode case: every batch entry of a gather_qmm at decode is one.)
//
// Why a separate kernel: with one activation row, 7 of the 8 columns of an
// m16n8k16 B operand are idle. Here they carry the groups instead: column j of
// B holds x masked to the j-th group of a "super-chunk" of 8 groups, so one
// mma accumulates the 8 per-group dot products dot_j(x, q) of 16 weight rows
// at once; the group sums sum_j(x) are computed when x is staged. With MR
// rows (the kernel is built for MR = 1, 2, 4 or 8 >= M), column n carries x
// row n % MR and group n / MR of a super-chunk of 8 / MR groups, so the same
// weights and mma count serve MR rows. Every group is then folded once:
//   acc += (s / S) * dot(x, S * (OFF + q)) + (b - OFF * s) * sum(x)   (float32)
// where the codes enter the mma as S * (OFF + q) (a LOP3 with a magic number,
// exact in T: 128 + q for bfloat16, (64 + q) / 64 for float16; nib_pair).
//
// Layout. A warp owns 16 weight rows and a range of super-chunks of K. Its
// weights stream through a per-warp cp.async ring in shared memory (kDepth
// chunks in flight, copied in windows of 16 rows x 128 contiguous bytes),
// and lane (g, c) (g = lane / 4, c = lane % 4) reads 16 bytes (32 codes) of
// rows g and g + 8 per chunk of 128 codes; those 32 codes are exactly the k values its A fragments hold
// in the chunk's 8 mma steps: the k order inside an mma is free as long as B
// uses the same one, so a word's nibble pairs (i, i + 4) become A pairs with
// one shift and one LOP3 each, and x is stored in shared memory once per
// block already permuted the same way ([x0 x4 x1 x5 x2 x6 x3 x7] per 8
// values), so B is one 16-byte shared load per word. A lane whose column is
// not the group of its k slice in a chunk reads a zero line instead.
// Per 8 codes and row: 3 shifts, 4 LOP3; per word pair (rows g, g + 8): 2 mma;
// everything else is per chunk or super-chunk.
// Tile: a block is 8 warps: 8 / ks tiles of 16 weight rows, each split over ks
// warps along K (ks = 8 for long K, fewer when K has fewer than 8 super-chunks
// of 8 groups, or when a large one-row grid pays less setup with fewer,
// longer warps: narrow_split), reduced through shared memory; <= 64 registers
// so 32 warps fit per SM (TL = 2: 128, or all a block needs when the grid has
// at most one block per SM). (Measured slower: L2 prefetches, a deeper ring,
// fewer warps per tile, four tiles per warp, shifts as multiplies on the FMA
// pipe; docs/kernels/cuda.md.)
// K > kMaxStagedK: x is read from global memory instead (permuted in registers).
// A lane whose sum is not finite (a non-finite x, scale or bias, or an
// overflow) recomputes its groups element by element (x * (s * q + b)), so Inf
// and NaN propagate like the reference.
// FP4 (mxfp4, nvfp4): the same kernel with the codes decoded to their exact
// T values by byte-table lookups (fp4_pairs, 15 instructions per word in
// bfloat16 against 7 for affine nibbles), in natural pairs, so x is staged
// unpermuted; byte scales (E8M0 / E4M3), no biases and no sums of x: the fold
// is acc += s * dot. nvfp4's 16-code groups put two groups in a lane's
// 32-code slice, so its B columns are chosen per word pair.
// 8-bit affine: a chunk is still 64 bytes of a row, now 64 codes (a lane's
// slice 16 codes, 4 words). A byte q = 16 h + l enters the mma twice, as
// its low nibble pair (nib_pair: 128 + l in bfloat16) and its high one at 16
// times the weight (2048 + 16 h), against the same x values, so a word takes
// the 4-bit decode's 4 LOP3 (and 3 shifts) and 2 mmas for half the codes:
// the same work per byte. x is staged in byte-pair order [x0 x2 x1 x3] per 4
// (permute4x2), and the fold takes out 17 times the 4-bit offset
// (code_off<T, 8>: 2176 in bfloat16). mxfp8: a byte pair becomes a T pair by
// the hardware's E4M3 -> float16 conversion (e4m3_pairs; bfloat16 through
// float32), exact, in natural order: one mma per word, E8M0 scales, the
// FP4 fold.
// 2-bit affine: chunks of 256 codes (a lane's slice 64, spanning two groups
// at group size 32 like nvfp4's), codes (i, i + 8) of a word as a pair
// (4 + q) / 4 with one LOP3 (crumb_pair), 4 mmas per word against x
// interleaved across 16 values (permute16: lanes 2k and 2k + 1 swap their
// vectors when staging).
// 3- and 6-bit affine: codes straddle words, so a chunk is 192 bytes of a
// row (chunk_units 3: 512 3-bit or 256 6-bit codes) and a lane's slice 48
// bytes, 4 packs of 3 words (32 or 16 whole codes). A pack's 3-bit fields
// (the 3-bit codes; a 6-bit code is fields 2i, 2i + 1) decode in pairs
// (i, i + 4) of each 8-field block, one shift (a funnel shift across words)
// and one LOP3 per pair (tri_pair), as code_scale * (offset + field) with
// offsets 8 / 128 by position (x staged as for nibbles, [x0 x4 x1 x5 ..]);
// a 6-bit code's high fields enter a second mma at 8 times the weight against
// the same x ([x0 x2 x1 x3 ..]), as 8-bit codes do. The offsets differ per
// position, so staging x also writes each group's weighted sum sum(tri_off *
// x), which the fold takes out. The ring holds 2 chunks per warp (6 KB, one
// window each); one 16-row tile per warp (<= 3 blocks per SM, 80 registers)
// or, forced, two (MMKIT_QMV1_TILES=2, one row).
// Measured (and the tilings that were slower): docs/kernels/cuda.md. Tests: tests/test_cuda_cross.cpp.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "cuda/device/common.cuh"
#include "cuda/device/decode.cuh"
#include "cuda/device/mma.cuh"
#include "cuda/qmm_kernels.h"

namespace mmkit::cuda::qmv1 {

constexpr int kWarps = 8;            // warps per block (split-K inside a block; 16: docs/kernels/cuda.md)
constexpr int kRows = 16;            // weight rows per block
constexpr int kMaxStagedK = 16384;   // x staged in shared memory up to MR * K = this (32 KB)
/// 64-byte units per chunk row: 1, or 3 for 3- and 6-bit codes (a lane's
/// slice is then 48 bytes: 4 packs of 3 words, 32 or 16 whole codes each).
constexpr int chunk_units(int bits) { return bits == 3 || bits == 6 ? 3 : 1; }
/// The zero line inactive lanes read: a lane's slice of x (64 bytes; 128 for
/// 2- and 6-bit codes, 256 for 3-bit).
constexpr int zero_bytes(int bits) { return bits == 2 || bits == 6 ? 128 : bits == 3 ? 256 : 64; }
#ifndef MMKIT_QMV1_DEPTH
#define MMKIT_QMV1_DEPTH 4
#endif
constexpr int kDepth = MMKIT_QMV1_DEPTH;  // chunks of weights in flight per warp (cp.async ring)
#ifndef MMKIT_QMV1_WINDOW
#define MMKIT_QMV1_WINDOW 2
#endif
constexpr int kWindow = MMKIT_QMV1_WINDOW;  // chunks per copy window (the ring refills a window at a time)
/// Ring depth and window (chunks) for a bit width: 3 KB chunks (3- and 6-bit
/// codes) keep 2 in flight, refilled one at a time.
constexpr int ring_depth(int bits) { return chunk_units(bits) == 3 ? 2 : kDepth; }
constexpr int ring_window(int bits) { return chunk_units(bits) == 3 ? 1 : kWindow; }
constexpr int64_t kMaxK = int64_t{1} << 18;  // the group sums of x stay within 32 KB of shared memory

/// x is staged in shared memory when MR * K <= this: kMaxStagedK, or
/// MMKIT_QMV1_STAGE_K (a tuning knob, docs/kernels/cuda.md; read once).
inline int64_t max_staged_k() {
  static const int64_t v = [] {
    const char* e = std::getenv("MMKIT_QMV1_STAGE_K");
    return e ? std::max<int64_t>(0, std::atoll(e)) : int64_t{kMaxStagedK};
  }();
  return v;
}

/// Dynamic shared memory of one block (mr activation rows): the group sums of
/// x (3- and 6-bit codes: also their weighted sums), x, the zero line, the ring.
inline size_t smem_bytes(int64_t K, int gs, int mr, bool xs, int depth, int warps, int tl, int bits) {
  const int64_t G = K / gs;
  const int u = chunk_units(bits);
  return static_cast<size_t>(mr) * (static_cast<size_t>((G + 3) & ~int64_t{3}) * sizeof(float) * (u == 3 ? 2 : 1) +
                                    (xs ? static_cast<size_t>(K) * 2 : 0)) +
         zero_bytes(bits) + static_cast<size_t>(warps) * depth * 1024 * u * tl;
}
/// Activation rows per entry the kernel is built for: M rounded up to a power of two.
inline int rows_built(int64_t M) { return M <= 1 ? 1 : M <= 2 ? 2 : M <= 4 ? 4 : 8; }
/// The most rows per entry for a group size (a super-chunk of 8 / MR groups
/// must hold a chunk: 128 codes at 4 bits (8 rows at most), 256 at 2 and 6
/// bits, 512 at 3 bits; 0: the group size is not supported).
inline int max_rows(int gs, int bits = 4) {
  return bits == 2 || bits == 6 ? gs / 32 : bits == 3 ? gs / 64 : gs >= 128 ? 8 : gs / 16;
}

struct Qmv1Params {
  const void* x;
  const uint32_t* w;
  const void* scales;
  const void* biases;
  const int64_t* lhs;
  const int64_t* rhs;
  void* out;
  int N, K;
  int M;         // activation rows per entry (<= the kernel's MR)
  int ks_log2;   // log2 of ks, the warps splitting K per 16-row tile (1, 2, 4 or 8)
  int64_t x_batch, w_batch, L;
  IndexGuard guard;
};

/// 8 activations [x0 .. x7] (4 pairs) as the B order [x0 x4 x1 x5 x2 x6 x3 x7].
__device__ __forceinline__ uint4 permute8(uint4 v) {
  return make_uint4(__byte_perm(v.x, v.z, 0x5410), __byte_perm(v.x, v.z, 0x7632), __byte_perm(v.y, v.w, 0x5410),
                    __byte_perm(v.y, v.w, 0x7632));
}
/// 8 activations as two B orders of 4 (8-bit codes: a word's byte pairs
/// (0, 2), (1, 3)): [x0 x2 x1 x3 x4 x6 x5 x7].
__device__ __forceinline__ uint4 permute4x2(uint4 v) {
  return make_uint4(__byte_perm(v.x, v.y, 0x5410), __byte_perm(v.x, v.y, 0x7632), __byte_perm(v.z, v.w, 0x5410),
                    __byte_perm(v.z, v.w, 0x7632));
}
/// 16 activations held by lanes 2k and 2k + 1 (v: the lane's 8, o: its
/// partner's) as the B order of 2-bit crumb pairs (i, i + 8):
/// [x0 x8 x1 x9 x2 x10 x3 x11] (even lane), [x4 x12 .. x7 x15] (odd lane).
__device__ __forceinline__ uint4 permute16(uint4 v, uint4 o, bool odd) {
  const uint4 lo = odd ? o : v, hi = odd ? v : o;
  const uint32_t a0 = odd ? lo.z : lo.x, a1 = odd ? lo.w : lo.y, b0 = odd ? hi.z : hi.x, b1 = odd ? hi.w : hi.y;
  return make_uint4(__byte_perm(a0, b0, 0x5410), __byte_perm(a0, b0, 0x7632), __byte_perm(a1, b1, 0x5410),
                    __byte_perm(a1, b1, 0x7632));
}
/// x as the B order of BITS-bit codes (affine; FP4 codes are in natural pairs;
/// 3-bit fields pair like nibbles, (i, i + 4), 6-bit codes like bytes).
template <QKind KIND, int BITS>
__device__ __forceinline__ uint4 permute_x(uint4 v) {
  if constexpr (KIND != QKind::affine) return v;
  else if constexpr (BITS == 4 || BITS == 3) return permute8(v);
  else return permute4x2(v);
}

/// 3-bit fields (8b + j, 8b + j + 4) of a 96-bit pack (w0 w1 w2; field i at
/// bits 3i), k = 4b + j, as a T pair with one shift (a funnel shift across
/// words) and one LOP3, exact. The low field lands at the top three mantissa
/// bits of the low half (bits 4-6 in bfloat16, 7-9 in float16), the high
/// one, 12 bits up, at the bottom of the high half's (bits 0-2 / 3-5); the
/// magic exponents give both the same weight per unit of the field, so the
/// pair is code_scale * (8 + f_lo, 128 + f_hi) (H: the fields at 8 times the
/// weight, code_scale * (64 + 8 f_lo, 1024 + 8 f_hi)), code_scale 1 in
/// bfloat16 and 1 / 64 in float16. 3-bit codes are the fields; a 6-bit code
/// is its low field plus 8 times its high one (fields 2i, 2i + 1).
template <typename T, bool H = false>
__device__ __forceinline__ uint32_t tri_pair(uint32_t w0, uint32_t w1, uint32_t w2, int k) {
  constexpr bool kB = std::is_same_v<T, __nv_bfloat16>;
  const int s = 24 * (k / 4) + 3 * (k % 4) - (kB ? 4 : 7);  // (k is a constant after unrolling)
  uint32_t v;
  if (s < 0) v = w0 << -s;
  else if (s == 0) v = w0;
  else if (s < 32) v = __funnelshift_r(w0, w1, s);
  else if (s == 32) v = w1;
  else if (s < 64) v = __funnelshift_r(w1, w2, s - 32);
  else v = w2 >> (s - 64);
  if constexpr (kB) return and_or<0x00070070u>(v, H ? 0x44804280u : 0x43004100u);
  else return and_or<0x00380380u>(v, H ? 0x4C003C00u : 0x40003000u);
}
/// The offsets of tri_pair's codes per pair of x values (x_{2j}, x_{2j+1}), j =
/// 0..3, of an 8-value x vector, in units of code_scale: 3-bit codes 0 - 3 are
/// low fields (8), 4 - 7 high ones (128); a 6-bit code's two fields sum to 72
/// (codes 0, 1, 4, 5) or 1152 (2, 3, 6, 7).
__host__ __device__ constexpr float tri_off(int bits, int j) {
  return bits == 3 ? (j < 2 ? 8.0f : 128.0f) : (j % 2 ? 1152.0f : 72.0f);
}

template <typename T>
__device__ __forceinline__ float bits_to_f(uint32_t b) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __uint_as_float(b << 16);
  else return __half2float(__ushort_as_half(static_cast<unsigned short>(b & 0xFFFFu)));
}

/// x * (s * q + b) (affine) or x * (s * value(q)) (FP4) over one group,
/// element by element (non-finite groups only).
template <typename T, QKind KIND, int BITS, int GS>
__device__ __noinline__ float exact_group1(const T* xg, const uint32_t* wg, float s, float b) {
  constexpr int PW = 32 / BITS;  // codes per word (3, 5, 6 bits: codes straddle words)
  constexpr bool kStraddle = 32 % BITS != 0;
  float e = 0.0f;
  for (int k = 0; k < GS; ++k) {
    uint32_t c;
    if constexpr (kStraddle) {
      const int bit = BITS * k, wd = bit / 32, sh = bit % 32;
      const uint64_t two = wg[wd] | (sh + BITS > 32 ? static_cast<uint64_t>(wg[wd + 1]) << 32 : 0u);
      c = static_cast<uint32_t>(two >> sh) & ((1u << BITS) - 1u);
    } else {
      c = (wg[k / PW] >> (BITS * (k % PW))) & ((1u << BITS) - 1u);
    }
    const float w = KIND == QKind::affine ? fmaf(s, static_cast<float>(c), b) : __fmul_rn(s, code_value<KIND>(c));
    e = fmaf(to_f<T>(xg[k]), w, e);
  }
  return e;
}

/// Scale of a group from its raw bits: T bits (affine), an E8M0
/// byte (mxfp4) or an E4M3 byte (nvfp4; code_value's shift and one exact
/// multiply, equal to fmt::e4m3_to_float for every byte, 0x7F = 480 included).
template <typename T, QKind KIND, int GS>
__device__ __forceinline__ float scale_f(uint32_t b) {
  if constexpr (KIND == QKind::affine) return bits_to_f<T>(b);
  else if constexpr (GS == 16) return code_value<QKind::e4m3>(b & 0xFFu);
  else return e8m0_f(b & 0xFFu);
}

/// The exact recomputation of lane (g, c)'s four terms (rows ra / rb x its
/// two B columns n = 2c + e: group slot n / MR, x row n % MR of the entry)
/// over its super-chunks (something was not finite): off the hot loop, so it
/// costs the loop no registers. acc[2 * r + e].
template <typename T, QKind KIND, int BITS, int GS, int MR, typename SB>
__device__ __noinline__ float4 redo_exact(const uint32_t* w, const SB* S, const SB* Bi,
                                          const T* xrows, int M, int64_t wi, int N, int K, int ra, int rb, int ub,
                                          int ue, int c) {
  constexpr int SG = 8 / MR;  // groups per super-chunk
  const int G = K / GS;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int r = 0; r < 2; ++r) {
    const int row = r ? rb : ra;
    if (row >= N) continue;
    const uint32_t* wr = w + (wi * N + row) * static_cast<int64_t>(32 % BITS ? K / 32 * BITS : K / (32 / BITS));
    const int64_t srow = (wi * N + row) * static_cast<int64_t>(G);
    for (int e = 0; e < 2; ++e) {
      const int n = 2 * c + e, m = n % MR;
      if (m >= M) continue;
      for (int u = ub; u < ue; ++u) {
        const int grp = u * SG + n / MR;
        if (grp >= G) continue;
        acc[2 * r + e] += exact_group1<T, KIND, BITS, GS>(
            xrows + static_cast<int64_t>(m) * K + static_cast<int64_t>(grp) * GS, wr + grp * (GS * BITS / 32),
            scale_f<T, KIND, GS>(S[srow + grp]), KIND == QKind::affine ? bits_to_f<T>(Bi[srow + grp]) : 0.0f);
      }
    }
  }
  return make_float4(acc[0], acc[1], acc[2], acc[3]);
}

/// 16-byte shared load / async copy at a shared-window address; volatile, so
/// they keep their order with cp.async.wait_group.
__device__ __forceinline__ uint4 lds128(uint32_t a) {
  uint4 r;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "r"(a));
  return r;
}
__device__ __forceinline__ void cp16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}

// MR: activation rows per entry the kernel is built for (1, 2, 4 or 8; the
// entry's M <= MR, rows past M are computed from row M - 1 and dropped). B
// column n = g of lane (g, c) carries x row n % MR masked to group slot
// n / MR of a super-chunk of SG = 8 / MR groups.
// XS: x staged in shared memory (MR * K <= kMaxStagedK), else read from global.
// D: chunks of weights in flight per warp (the cp.async ring).
// Shared memory: the group sums of x (MR x G floats, each row padded with
// zeros to a multiple of 4), [x permuted (MR x K values)], a zero line, the
// ring (W x D slots of 2 rows x 32 lanes x 16 bytes).
// TL: 16-row tiles per warp (1 or 2); with 2 a warp streams both tiles'
// weights against the same x fragments (half the x loads, staging and
// per-warp overhead per weight byte; 128 registers, 16 warps per SM).
// MINB: blocks per SM the registers are budgeted for (32 / W / TL, or 1 for
// grids of at most one block per SM: no spills, addresses kept).
// KP: K % CC may be non-zero (a partial last chunk; groups per row may be
// odd). With KP = false the kernel assumes K % CC == 0 and needs none of
// the checks (measured: they cost g32 / nvfp4 6 - 11%, run 96).
// BITS: 4 (affine, mxfp4, nvfp4), 8 (affine, mxfp8), 2, 3 or 6 (affine). A
// chunk is 64 bytes of a row (192 at 3 and 6 bits): CC = 128 codes at 4
// bits, 64 at 8, 256 at 2 and 6, 512 at 3; a lane's slice CC / 4 codes.
template <typename T, QKind KIND, int BITS, int GS, int MR, bool XS, int D, int W, int CW, int TL, int MINB, bool KP>
__global__ void __launch_bounds__(W * 32, MINB) qmv1_mma_kernel(Qmv1Params p) {
  // KIND: affine (4 or 8 bits, T scales and biases, codes as kPairScale *
  // (kPairOff + q) in nib_pair's pairs (8 bits: code_off<T, 8> + q as a low
  // nibble pair plus a high nibble pair at 16 times the weight, two mmas on
  // the same x), x permuted, the sums of x staged for the fold) or e2m1 (mxfp4
  // at GS 32, nvfp4 at GS 16: byte scales, no biases, codes as their exact
  // values in natural pairs (fp4_pairs), x in natural order, no sums) or
  // e4m3 (mxfp8, 8 bits at GS 32: the same with e4m3_pairs, one mma per word).
  // At GS 16 a lane's 32-code slice spans two groups: its words 0 - 1 belong
  // to the first, 2 - 3 to the second.
  constexpr bool kAff = KIND == QKind::affine;
  static_assert((BITS == 4 && (kAff || KIND == QKind::e2m1)) || (BITS == 8 && (kAff || KIND == QKind::e4m3)) ||
                    ((BITS == 2 || BITS == 3 || BITS == 6) && kAff),
                "4-bit affine / FP4, 8-bit affine / FP8 or 2-, 3-, 6-bit affine codes");
  using SB = std::conditional_t<kAff, unsigned short, uint8_t>;  // raw scale / bias element
  constexpr int U = chunk_units(BITS);     // 64-byte units per chunk row (3: 3- and 6-bit codes)
  constexpr bool kU3 = U == 3;
  constexpr int CC = 512 * U / BITS;       // codes per chunk (64 U bytes of a row)
  constexpr int LC = CC / 4;               // codes per lane slice (16 U bytes)
  constexpr int XV = CC / 8;               // 16-byte x vectors per chunk
  constexpr int SG = 8 / MR;               // groups per super-chunk
  constexpr int CPS = SG * GS / CC;        // chunks per super-chunk
  constexpr int LPG = GS / 8;              // 16-byte x vectors (lanes) per group
  static_assert(CPS >= 1 && (SG * GS) % CC == 0, "a super-chunk holds whole chunks (MR <= GS * 8 / CC)");
  // A lane's slice lies in one group, or (nvfp4's GS 16, 2-bit GS 32) spans
  // two: words 0 - 1 in one, 2 - 3 in the next (one row only).
  static_assert(GS >= LC || (2 * GS == LC && MR == 1), "a slice spans at most two groups (then one row)");
  constexpr bool kSplitSlice = 2 * GS == LC;
  static_assert(D == 4 || D == 8 || (kU3 && D == 2), "ring depth: a power of two, slots of U KB per warp");
  static_assert(D % CW == 0 && D / CW >= 2, "the ring holds two or more windows");
  constexpr int NW = D / CW;               // windows in the ring
  static_assert(TL == 1 || TL == 2, "one or two 16-row tiles per warp");
  constexpr int kRowsW = kRows * TL;       // weight rows per warp
  constexpr int kSlot = 1024 * U * TL;     // ring slot: one chunk of every tile of the warp
  // Affine codes become code_scale * (code_off + q) (nib_pair, crumb_pair);
  // the fold takes the offset out per group:
  // dot(x, q) = dot(x, code) / code_scale - code_off * sum(x).
  constexpr float kOff = code_off<T, BITS>, kInv = 1.0f / code_scale<T, BITS>;  // (affine)
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float red[W][kRowsW][MR];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int N = p.N, K = p.K, M = p.M;
  // Warp w: 16-row tile w / ks of the block, K part w % ks.
  const int ks = 1 << p.ks_log2, tile = warp >> p.ks_log2, kpart = warp & (ks - 1);
  const int ntiles = W >> p.ks_log2;
  const int n0 = (blockIdx.x * ntiles + tile) * kRowsW;
  const int words_per_row = kU3 ? K / 32 * BITS : K / (32 / BITS);
  const int G = K / GS;  // groups per row
  const int chunks = KP ? (K + CC - 1) / CC : K / CC;  // (KP: the last chunk may hold 32, 64 or 96 codes)
  const int supers = (chunks + CPS - 1) / CPS;
  const int ub = (supers * kpart) >> p.ks_log2;  // supers < 2^17 (K <= kMaxK)
  const int ue = (supers * (kpart + 1)) >> p.ks_log2;
  const int tb = ub * CPS, te = min(ue * CPS, chunks);
  const int tfull = KP ? min(te, K / CC) : te;  // chunks before a partial one (windows copied whole)
  // Lane (g, c) holds rows n0 + 16 * tl + g (a) and + 8 (b) of tile tl.
  // Rows past N read row N - 1 (valid memory; their results are dropped).
  // (A tile wholly past N does no work; n0c keeps its addresses valid.)
  const int n0c = min(n0, N - 1);
  const T* X = static_cast<const T*>(p.x);
  T* O = static_cast<T*>(p.out);
  float* gsum = reinterpret_cast<float*>(smem);
  const int gpad = (G + 3) & ~3;
  // (3- and 6-bit codes: the weighted sums of x, sum(tri_off * x), after the sums.)
  constexpr int kSums = kU3 ? 2 : 1;
  float* gw = gsum + MR * gpad;
  T* xs = reinterpret_cast<T*>(smem + kSums * MR * gpad * sizeof(float));
  unsigned char* zero_line =
      smem + kSums * MR * gpad * sizeof(float) + (XS ? static_cast<size_t>(MR) * K * sizeof(T) : 0);
  constexpr int kZeroBytes = zero_bytes(BITS);
  const uint32_t ring = static_cast<uint32_t>(__cvta_generic_to_shared(zero_line + kZeroBytes)) +
                        static_cast<uint32_t>(warp * D * kSlot + lane * 16 * U);
  if (threadIdx.x < kZeroBytes / 4) reinterpret_cast<uint32_t*>(zero_line)[threadIdx.x] = 0u;
  if (threadIdx.x < gpad - G)
#pragma unroll
    for (int m = 0; m < kSums * MR; ++m) gsum[m * gpad + G + threadIdx.x] = 0.0f;
  // The group slot of lane c's slice in chunk t: ((t % CPS) * CC + c * LC) / GS
  // = (t % CPS) * CC / GS + my_slot_c (GS | CC or CC | GS).
  const int my_slot_c = (c * LC) / GS;  // (GS 16: the slot of words 0 - 1; + 1 for words 2 - 3)
  // Chunks whose slice of lane c lies inside K (all but a partial last one's tail).
  const int t_lane = (K - LC * c + CC - 1) >> (BITS == 4 ? 7 : BITS == 8 ? 6 : BITS == 3 ? 9 : 8);  // (/ CC: K - LC * c > 0)
  // Lane (g, c)'s B column: group slot g / MR, x row g % MR.
  const int col_slot = g / MR, col_m = g % MR;

  for (int64_t l = blockIdx.z; l < p.L; l += gridDim.z) {
    // (No index arrays: a quantized_matmul of one batch entry, both indices 0.)
    const int64_t xi = p.lhs ? p.lhs[l] : 0, wi = p.rhs ? p.rhs[l] : 0;
    // The ring starts filling first (an in-range weight index is enough; the
    // index checks and their error path come after).
    const bool w_in = wi >= 0 && wi < p.w_batch;
    const bool fill = w_in && tb < te && n0 < N;
    // The warp's weights (its 16 tile rows, 64 bytes per chunk and row) stream
    // into its ring in windows of CW chunks: a window is 16 rows x CW * 64
    // contiguous bytes, copied by the whole warp (lanes copy for each other,
    // hence a __syncwarp after each wait and before each slot is refilled),
    // and the ring holds two windows (chunk t in slot t % D).
    const uint32_t* wblk = p.w + ((w_in ? wi : 0) * N + n0c) * static_cast<int64_t>(words_per_row);
    const uint32_t ring_w = ring - static_cast<uint32_t>(lane * 16 * U);
    // Copy i of a window (2 * CW * TL per lane) is row r = i * (8 / CW) + rsub
    // of the warp's tiles, 16-byte piece cc of chunk t0 + piece / 4; it lands
    // at slot * kSlot + (r / 16) * 1024 + (r & 8 ? 512 : 0) + ((r & 7) * 4 + cc) * 16.
    const int rsub = lane / (4 * CW), piece = lane % (4 * CW), cc = piece % 4;
    constexpr int kRowStep = 8 / CW;
    auto row_off = [](int r) { return (r / 16) * 1024 + (r & 8 ? 512 : 0) + (r & 7) * 64; };
    // Whole windows of whole tiles (the common case): one base address per
    // lane, the copies at fixed offsets from it.
    const bool full_rows = n0 + kRowsW <= N;
    const uint32_t* wlane = wblk + static_cast<int64_t>(rsub) * words_per_row + piece * 4;
    const uint32_t dlane = ring_w + static_cast<uint32_t>(rsub * 64 + cc * 16);
    const int64_t step = static_cast<int64_t>(kRowStep) * words_per_row;
    auto issue_win = [&](int w) {
      const int t0 = tb + w * CW;
      if constexpr (kU3) {
        // Windows of one chunk (CW = 1): copy (tl, half, j) of lane (g, c) is
        // row 16 tl + 8 half + g, 16-byte piece 4 j + c of the chunk's 12
        // (a warp copies 8 rows x 64 contiguous bytes per instruction); it
        // lands at tl * 3 KB + half * 1536 + g * 192 + (4 j + c) * 16, so lane
        // (g, c)'s slice (pieces 3c .. 3c + 2) is 48 contiguous bytes.
        if (t0 < te) {
          const uint32_t d = ring_w + static_cast<uint32_t>((t0 & (D - 1)) * kSlot + g * 64 * U + c * 16);
          if (full_rows && t0 < tfull) {
            const uint32_t* src = wblk + static_cast<int64_t>(g) * words_per_row + t0 * 16 * U + 4 * c;
#pragma unroll
            for (int i = 0; i < 2 * TL; ++i)
#pragma unroll
              for (int j = 0; j < U; ++j)
                cp16(d + static_cast<uint32_t>(i * 512 * U + 64 * j), src + static_cast<int64_t>(8 * i) * words_per_row + 16 * j);
          } else {
#pragma unroll
            for (int i = 0; i < 2 * TL; ++i)
#pragma unroll
              for (int j = 0; j < U; ++j) {
                const int r = 8 * i + g;
                const int wo = t0 * 16 * U + 16 * j + 4 * c;  // (past K: old codes stay, x is 0 there)
                if (!KP || wo < words_per_row) {
                  const int rr = min(n0 + r, N - 1) - n0c;
                  cp16(d + static_cast<uint32_t>(i * 512 * U + 64 * j), wblk + static_cast<int64_t>(rr) * words_per_row + wo);
                }
              }
          }
        }
        cp_async_commit();
        return;
      }
      if (t0 < te) {
        if (full_rows && t0 + CW <= tfull) {
          const uint32_t d = dlane + static_cast<uint32_t>(((t0 + piece / 4) & (D - 1)) * kSlot);
          const uint32_t* src = wlane + t0 * 16;
#pragma unroll
          for (int i = 0; i < 2 * CW * TL; ++i) cp16(d + static_cast<uint32_t>(row_off(i * kRowStep)), src + i * step);
        } else {
#pragma unroll
          for (int i = 0; i < 2 * CW * TL; ++i) {
            const int r = i * kRowStep + rsub;
            const int t = t0 + piece / 4;
            if (t < te && (!KP || t * 16 + cc * 4 < words_per_row)) {  // (past K: old codes stay, x is 0 there)
              const int rr = min(n0 + r, N - 1) - n0c;
              const uint32_t dst = ring_w + static_cast<uint32_t>((t & (D - 1)) * kSlot + row_off(r) + cc * 16);
              cp16(dst, wblk + static_cast<int64_t>(rr) * words_per_row + t * 16 + cc * 4);
            }
          }
        }
      }
      cp_async_commit();
    };
    // The first x vectors this lane stages (row 0) are loaded before the
    // ring fills: behind the fill they would wait for the whole first wave
    // of weight reads (measured: a fifth of all stall samples).
    constexpr int kXPre = 4;
    const int xbeg = tb * XV + tile * 32, xend = KP ? min(te * XV, K / 8) : te * XV, xstep = 32 * ntiles;
    const bool x_in = xi >= 0 && xi < p.x_batch;
    uint4 xpre[kXPre];
    {
      const uint4* xv0 = reinterpret_cast<const uint4*>(X + (x_in ? xi : 0) * static_cast<int64_t>(M) * K);
#pragma unroll
      for (int q = 0; q < kXPre; ++q) {
        const int i = xbeg + q * xstep + lane;
        xpre[q] = x_in && i < xend ? __ldg(xv0 + i) : make_uint4(0u, 0u, 0u, 0u);
      }
    }
    if (fill) {
#pragma unroll
      for (int w = 0; w < NW; ++w) issue_win(w);
    }
    const bool ok = index_ok(xi, l, p.x_batch, p.guard, ErrWhich::lhs) &&
                    index_ok(wi, l, p.w_batch, p.guard, ErrWhich::rhs);
    float acc[TL][4];  // [tile][2 * (row b) + e]: rows a / b x columns 2c + e
#pragma unroll
    for (int tl = 0; tl < TL; ++tl)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[tl][e] = 0.0f;
    const T* xrows = X + (ok ? xi : 0) * static_cast<int64_t>(M) * K;  // the entry's M rows
    const bool work = ok && fill;
    // The warps of a K part stage it (each of the MR rows; rows past M repeat
    // row M - 1), the block's tiles taking turns: group sums and (XS) the
    // permuted values.
    if (ok)
#pragma unroll
      for (int m = 0; m < MR; ++m) {
        const uint4* xv = reinterpret_cast<const uint4*>(xrows + static_cast<int64_t>(min(m, M - 1)) * K);
        int q = 0;
        for (int base = xbeg; base < xend; base += xstep, ++q) {
          const int i = base + lane;
          float sum = 0.0f, wsum = 0.0f;  // (wsum: 3- and 6-bit codes)
          if constexpr (BITS == 2) {
            // The B order interleaves 16 values: lanes 2k and 2k + 1 swap
            // their vectors (xend is even: K % 64 == 0).
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (i < xend) {
              if (m == 0 && q < kXPre) {
#pragma unroll
                for (int r = 0; r < kXPre; ++r)
                  if (r == q) v = xpre[r];
              } else {
                v = __ldg(xv + i);
              }
            }
            uint4 o;
            o.x = __shfl_xor_sync(0xffffffffu, v.x, 1);
            o.y = __shfl_xor_sync(0xffffffffu, v.y, 1);
            o.z = __shfl_xor_sync(0xffffffffu, v.z, 1);
            o.w = __shfl_xor_sync(0xffffffffu, v.w, 1);
            if (i < xend) {
              if constexpr (XS) reinterpret_cast<uint4*>(xs)[m * (K / 8) + i] = permute16(v, o, lane & 1);
              const uint32_t wv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
              for (int j = 0; j < 4; ++j) sum += bits_to_f<T>(wv[j]) + bits_to_f<T>(wv[j] >> 16);
            }
          } else if (i < xend) {
            uint4 v;
            if (m == 0 && q < kXPre) {  // (q < kXPre: unrolled selects, xpre stays in registers)
#pragma unroll
              for (int r = 0; r < kXPre; ++r)
                if (r == q) v = xpre[r];
            } else {
              v = __ldg(xv + i);
            }
            if constexpr (XS) reinterpret_cast<uint4*>(xs)[m * (K / 8) + i] = permute_x<KIND, BITS>(v);
            if constexpr (kAff) {
              const uint32_t wv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
              for (int j = 0; j < 4; ++j) {
                const float pj = bits_to_f<T>(wv[j]) + bits_to_f<T>(wv[j] >> 16);
                sum += pj;
                if constexpr (kU3) wsum = fmaf(tri_off(BITS, j), pj, wsum);
              }
            }
          }
          if constexpr (kAff) {
#pragma unroll
            for (int o = 1; o < LPG; o *= 2) {
              sum += __shfl_xor_sync(0xffffffffu, sum, o);
              if constexpr (kU3) wsum += __shfl_xor_sync(0xffffffffu, wsum, o);
            }
            if (i < xend && i % LPG == 0) {
              gsum[m * gpad + i / LPG] = sum;
              if constexpr (kU3) gw[m * gpad + i / LPG] = wsum;
            }
          }
        }
      }
    __syncthreads();  // x, the sums and the zero line are written (and red of the last entry was read)
    if (work) {
      const int64_t sblk = ((ok ? wi : 0) * N + n0c) * static_cast<int64_t>(G);
      const SB* S = static_cast<const SB*>(p.scales) + sblk;
      const SB* Bi = kAff ? static_cast<const SB*>(p.biases) + sblk : S;  // (FP4: no biases, never read)
      // This lane's columns n = 2c + e: group slots (2c + e) / MR (two groups
      // for MR = 1, one for MR >= 2), x rows (2c + e) % MR.
      constexpr bool kTwoGroups = MR == 1;
      const int slot0 = (2 * c) / MR;
      float dacc[TL][4];
      uint32_t sc[TL][2], bc[TL][2];  // raw scales / biases of rows a / b (two groups as a pair for MR = 1)
      // Scale / bias rows of the lane: Sa / Ba point at its first (row a of
      // tile 0), soff[tl][r] is row 16 tl + 8 r + g from there: 8 G apart in
      // whole tiles, else clamped (rows past N read row N - 1).
      // (Opaque to the compiler, so the loop keeps them instead of
      // recomputing the whole address each super-chunk.)
      const int g8 = 8 * G;
      auto srow = [&](int r) { return (min(n0 + r, N - 1) - n0c) * G + slot0; };
      const int so00 = srow(g);
      const SB* Sa = S + so00;
      const SB* Ba = Bi + so00;
      asm volatile("" : "+l"(Sa), "+l"(Ba));
      int soff[TL][2];
#pragma unroll
      for (int tl = 0; tl < TL; ++tl)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          soff[tl][r] = full_rows ? (2 * tl + r) * g8 : srow(16 * tl + 8 * r + g) - so00;
          asm volatile("" : "+r"(soff[tl][r]));
        }
      auto load_scales = [&](int u) {
        const int grp = u * SG + slot0;
#pragma unroll
        for (int tl = 0; tl < TL; ++tl)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int ia = soff[tl][r] + u * SG;
            const SB* S = Sa;
            const SB* Bi = Ba;
            if (grp < G) {
              if constexpr (!kAff) {  // one byte per group, two as a pair (2-byte aligned rows when G is even)
                if (!kTwoGroups) {
                  sc[tl][r] = __ldg(S + ia);
                } else if (!KP || G % 2 == 0) {
                  sc[tl][r] = __ldg(reinterpret_cast<const unsigned short*>(S + ia));
                } else {
                  sc[tl][r] = __ldg(S + ia) | (grp + 1 < G ? static_cast<uint32_t>(__ldg(S + ia + 1)) << 8 : 0u);
                }
                bc[tl][r] = 0u;
              } else if constexpr (kTwoGroups) {
                if ((!KP && 2 * GS <= CC) || G % 2 == 0) {  // (K % CC == 0: G is even up to group size CC / 2)
                  sc[tl][r] = __ldg(reinterpret_cast<const uint32_t*>(S + ia));
                  bc[tl][r] = __ldg(reinterpret_cast<const uint32_t*>(Bi + ia));
                } else {  // odd G: rows are not 4-byte aligned
                  const bool two = grp + 1 < G;
                  sc[tl][r] = __ldg(S + ia) | (two ? static_cast<uint32_t>(__ldg(S + ia + 1)) << 16 : 0u);
                  bc[tl][r] = __ldg(Bi + ia) | (two ? static_cast<uint32_t>(__ldg(Bi + ia + 1)) << 16 : 0u);
                }
              } else {
                sc[tl][r] = __ldg(S + ia);
                bc[tl][r] = __ldg(Bi + ia);
              }
            } else {
              sc[tl][r] = bc[tl][r] = 0u;
            }
          }
      };
      // acc += (s / kPairScale) * dot(x, code) + (b - OFF * s) * sum(x) per
      // group and column. (Groups past G: zero scale, bias, dot and sum.)
      // Non-finite values are not tested here: they reach acc, which is
      // tested once at the end.
      auto fold = [&](int u) {
        float2 xs2 = make_float2(0.0f, 0.0f);  // the sums of x for columns 2c and 2c + 1 (affine only)
        float2 ws2 = make_float2(0.0f, 0.0f);  // (3- and 6-bit codes: their weighted sums)
        if constexpr (kAff && MR == 1) {  // groups 2c, 2c + 1 of row 0 (the row's sums are padded to a multiple of 4)
          const int grp0 = u * SG + 2 * c;
          xs2 = grp0 < G ? *reinterpret_cast<const float2*>(gsum + grp0) : make_float2(0.0f, 0.0f);
          if constexpr (kU3) ws2 = grp0 < G ? *reinterpret_cast<const float2*>(gw + grp0) : make_float2(0.0f, 0.0f);
        } else if constexpr (kAff) {  // one group, x rows (2c) % MR and (2c + 1) % MR
          const int grp = u * SG + slot0;
          xs2 = grp < G ? make_float2(gsum[((2 * c) % MR) * gpad + grp], gsum[((2 * c + 1) % MR) * gpad + grp])
                        : make_float2(0.0f, 0.0f);
          if constexpr (kU3)
            ws2 = grp < G ? make_float2(gw[((2 * c) % MR) * gpad + grp], gw[((2 * c + 1) % MR) * gpad + grp])
                          : make_float2(0.0f, 0.0f);
        }
#pragma unroll
        for (int tl = 0; tl < TL; ++tl)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float xsv = e ? xs2.y : xs2.x, wsv = e ? ws2.y : ws2.x;
            const int sh = kTwoGroups ? (kAff ? 16 : 8) * e : 0;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              const float s_r = scale_f<T, KIND, GS>(sc[tl][r] >> sh);
              if constexpr (kU3) {  // acc += s * (dot / code_scale - sum(tri_off * x)) + b * sum(x)
                const float b_r = bits_to_f<T>(bc[tl][r] >> sh);
                acc[tl][2 * r + e] =
                    fmaf(kInv * s_r, dacc[tl][2 * r + e], fmaf(b_r, xsv, fmaf(-s_r, wsv, acc[tl][2 * r + e])));
              } else if constexpr (kAff) {
                const float b_r = bits_to_f<T>(bc[tl][r] >> sh);
                acc[tl][2 * r + e] =
                    fmaf(kInv * s_r, dacc[tl][2 * r + e], fmaf(fmaf(-kOff, s_r, b_r), xsv, acc[tl][2 * r + e]));
              } else {
                acc[tl][2 * r + e] = fmaf(s_r, dacc[tl][2 * r + e], acc[tl][2 * r + e]);
              }
            }
          }
      };
      // B operand of lane (g, c) in chunk t: its 32-code slice of permuted x
      // row col_m, or the zero line when its column's group slot is not the
      // group of that slice.
      uint32_t xs_lane = static_cast<uint32_t>(__cvta_generic_to_shared(xs)) +
                         static_cast<uint32_t>(col_m * K * static_cast<int>(sizeof(T))) + (2u * LC) * c;
      uint32_t zero_addr = static_cast<uint32_t>(__cvta_generic_to_shared(zero_line));
      uint32_t ring_l = ring;
      asm volatile("" : "+r"(xs_lane), "+r"(zero_addr), "+r"(ring_l));  // (kept, not recomputed per chunk)
      const T* xcol = xrows + static_cast<int64_t>(min(col_m, M - 1)) * K;
      // Chunk t of every tile (its ring slot holds TL x 1 KB: rows a in the
      // first 512 bytes of a tile's KB, rows b in the second).
      auto compute = [&](int t, int sub) {
        const uint32_t src = ring_l + (static_cast<uint32_t>(t) & (D - 1)) * kSlot;
        uint4 cw[TL][2];
        if constexpr (!kU3) {
#pragma unroll
          for (int tl = 0; tl < TL; ++tl) {
            cw[tl][0] = lds128(src + 1024 * tl);
            cw[tl][1] = lds128(src + 1024 * tl + 512);
          }
        }
        // (A slice past K, in a partial last chunk, reads the zero line.)
        const bool in_k = !KP || t < t_lane;
        const bool active = col_slot == sub * CC / GS + my_slot_c && in_k;
        const uint32_t xb = active ? xs_lane + (2u * CC) * static_cast<uint32_t>(t) : zero_addr;
        if constexpr (kU3) {
          // A lane's slice: 4 packs of 3 words per row (32 3-bit or 16 6-bit
          // codes each); packs 2 - 3 lie in the next group slot when the slice
          // spans two groups. Pack p, x vector v of it (8 codes):
          //   3-bit: fields (j, j + 4) of block v, 2 mmas ([x0 x4 x1 x5 ..]);
          //   6-bit: blocks 2v + h of 4 codes, each code pair (i, i + 2) as its
          //   low fields and (H) its high fields: 2 mmas per pair against the
          //   same x ([x0 x2 x1 x3 ..]).
          constexpr int PV = BITS == 3 ? 4 : 2;  // x vectors per pack
          uint32_t ra[TL][4 * U], rb[TL][4 * U];  // the slice's words of rows a / b
#pragma unroll
          for (int tl = 0; tl < TL; ++tl)
#pragma unroll
            for (int j = 0; j < U; ++j) {
              const uint4 qa = lds128(src + 1024 * U * tl + 16 * j), qb = lds128(src + 1024 * U * tl + 512 * U + 16 * j);
              ra[tl][4 * j] = qa.x, ra[tl][4 * j + 1] = qa.y, ra[tl][4 * j + 2] = qa.z, ra[tl][4 * j + 3] = qa.w;
              rb[tl][4 * j] = qb.x, rb[tl][4 * j + 1] = qb.y, rb[tl][4 * j + 2] = qb.z, rb[tl][4 * j + 3] = qb.w;
            }
          const bool active_hi = kSplitSlice ? col_slot == sub * CC / GS + my_slot_c + 1 && in_k : active;
          const uint32_t xb_hi =
              kSplitSlice ? (active_hi ? xs_lane + (2u * CC) * static_cast<uint32_t>(t) : zero_addr) : xb;
#pragma unroll
          for (int pk = 0; pk < 4; ++pk) {
#pragma unroll
            for (int v = 0; v < PV; ++v) {
              const int xv = pk * PV + v;  // x vector of the slice
              uint4 xp;
              if constexpr (XS) {
                xp = lds128((pk < 2 ? xb : xb_hi) + 16 * xv);
              } else {
                xp = make_uint4(0u, 0u, 0u, 0u);
                if (pk < 2 ? active : active_hi)
                  xp = permute_x<KIND, BITS>(__ldg(reinterpret_cast<const uint4*>(xcol + t * CC + LC * c) + xv));
              }
#pragma unroll
              for (int tl = 0; tl < TL; ++tl)
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                const uint32_t* wa = ra[tl] + 3 * pk;
                const uint32_t* wb = rb[tl] + 3 * pk;
                if constexpr (BITS == 3) {
                  const int k = 4 * v + 2 * h;
                  const uint32_t af[4] = {tri_pair<T>(wa[0], wa[1], wa[2], k), tri_pair<T>(wb[0], wb[1], wb[2], k),
                                          tri_pair<T>(wa[0], wa[1], wa[2], k + 1),
                                          tri_pair<T>(wb[0], wb[1], wb[2], k + 1)};
                  mma16816<T>(dacc[tl], af, h ? xp.z : xp.x, h ? xp.w : xp.y);
                } else {
                  const int k = 4 * (2 * v + h);  // fields of block 2v + h: pairs k (low), k + 1 (high), k + 2, k + 3
                  const uint32_t lo[4] = {tri_pair<T>(wa[0], wa[1], wa[2], k), tri_pair<T>(wb[0], wb[1], wb[2], k),
                                          tri_pair<T>(wa[0], wa[1], wa[2], k + 2),
                                          tri_pair<T>(wb[0], wb[1], wb[2], k + 2)};
                  mma16816<T>(dacc[tl], lo, h ? xp.z : xp.x, h ? xp.w : xp.y);
                  const uint32_t hi[4] = {
                      tri_pair<T, true>(wa[0], wa[1], wa[2], k + 1), tri_pair<T, true>(wb[0], wb[1], wb[2], k + 1),
                      tri_pair<T, true>(wa[0], wa[1], wa[2], k + 3), tri_pair<T, true>(wb[0], wb[1], wb[2], k + 3)};
                  mma16816<T>(dacc[tl], hi, h ? xp.z : xp.x, h ? xp.w : xp.y);
                }
              }
            }
          }
          return;
        }
        if constexpr (BITS == 8) {
          // A word is 4 codes: x vector jx serves words 2 jx and 2 jx + 1
          // (B pairs [x0 x2] [x1 x3] each); a word's low nibbles go to one
          // mma and its high nibbles (at 16 times the weight) to another
          // against the same B.
#pragma unroll
          for (int jx = 0; jx < 2; ++jx) {
            uint4 xp;
            if constexpr (XS) {
              xp = lds128(xb + 16 * jx);
            } else {
              xp = make_uint4(0u, 0u, 0u, 0u);
              if (active) xp = permute_x<KIND, BITS>(__ldg(reinterpret_cast<const uint4*>(xcol + t * CC + LC * c) + jx));
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int j = 2 * jx + h;
#pragma unroll
              for (int tl = 0; tl < TL; ++tl) {
                const uint32_t w_a = (&cw[tl][0].x)[j], w_b = (&cw[tl][1].x)[j];
                if constexpr (!kAff) {  // mxfp8: natural pairs, one mma per word
                  uint32_t pa[2], pb[2];
                  e4m3_pairs<T>(w_a, pa);
                  e4m3_pairs<T>(w_b, pb);
                  const uint32_t af[4] = {pa[0], pb[0], pa[1], pb[1]};
                  mma16816<T>(dacc[tl], af, h ? xp.z : xp.x, h ? xp.w : xp.y);
                  continue;
                }
                const uint32_t lo[4] = {nib_pair<T>(w_a, 0), nib_pair<T>(w_b, 0), nib_pair<T>(w_a, 2),
                                        nib_pair<T>(w_b, 2)};
                mma16816<T>(dacc[tl], lo, h ? xp.z : xp.x, h ? xp.w : xp.y);
                const uint32_t hi[4] = {nib_pair<T, true>(w_a, 1), nib_pair<T, true>(w_b, 1),
                                        nib_pair<T, true>(w_a, 3), nib_pair<T, true>(w_b, 3)};
                mma16816<T>(dacc[tl], hi, h ? xp.z : xp.x, h ? xp.w : xp.y);
              }
            }
          }
          return;
        }
        // GS 16: words 2 - 3 belong to the next group slot.
        const bool active_hi = kSplitSlice ? col_slot == sub * CC / GS + my_slot_c + 1 && in_k : active;
        const uint32_t xb_hi =
            kSplitSlice ? (active_hi ? xs_lane + (2u * CC) * static_cast<uint32_t>(t) : zero_addr) : xb;
        if constexpr (BITS == 2) {
          // A word is 16 codes: crumb pairs (i, i + 8), 4 mmas against two x
          // vectors ([x0 x8 x1 x9 ..] [x4 x12 ..], permute16).
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const bool act = j < 2 ? active : active_hi;
            uint4 xp[2];
            if constexpr (XS) {
              xp[0] = lds128((j < 2 ? xb : xb_hi) + 32 * j);
              xp[1] = lds128((j < 2 ? xb : xb_hi) + 32 * j + 16);
            } else {
              xp[0] = xp[1] = make_uint4(0u, 0u, 0u, 0u);
              if (act) {
                const uint4* src = reinterpret_cast<const uint4*>(xcol + t * CC + LC * c) + 2 * j;
                const uint4 v0 = __ldg(src), v1 = __ldg(src + 1);
                xp[0] = permute16(v0, v1, false);
                xp[1] = permute16(v1, v0, true);
              }
            }
#pragma unroll
            for (int tl = 0; tl < TL; ++tl) {
              const uint32_t w_a = (&cw[tl][0].x)[j], w_b = (&cw[tl][1].x)[j];
#pragma unroll
              for (int h = 0; h < 4; ++h) {
                const int i = 2 * h;
                const uint32_t af[4] = {crumb_pair<T>(w_a, i), crumb_pair<T>(w_b, i), crumb_pair<T>(w_a, i + 1),
                                        crumb_pair<T>(w_b, i + 1)};
                const uint4& xv = xp[h / 2];
                mma16816<T>(dacc[tl], af, h % 2 ? xv.z : xv.x, h % 2 ? xv.w : xv.y);
              }
            }
          }
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const bool act = j < 2 ? active : active_hi;
            uint4 xp;
            if constexpr (XS) {
              xp = lds128((j < 2 ? xb : xb_hi) + 16 * j);
            } else {
              xp = make_uint4(0u, 0u, 0u, 0u);
              if (act) {
                xp = permute_x<KIND, BITS>(__ldg(reinterpret_cast<const uint4*>(xcol + t * CC + LC * c) + j));
              }
            }
#pragma unroll
            for (int tl = 0; tl < TL; ++tl) {
              const uint32_t w_a = (&cw[tl][0].x)[j], w_b = (&cw[tl][1].x)[j];
              if constexpr (kAff) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                  const int i = 2 * h;
                  const uint32_t af[4] = {nib_pair<T>(w_a, i), nib_pair<T>(w_b, i), nib_pair<T>(w_a, i + 1),
                                          nib_pair<T>(w_b, i + 1)};
                  mma16816<T>(dacc[tl], af, h ? xp.z : xp.x, h ? xp.w : xp.y);
                }
              } else {
                uint32_t pa[4], pb[4];
                fp4_pairs<T>(w_a, pa);
                fp4_pairs<T>(w_b, pb);
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                  const uint32_t af[4] = {pa[2 * h], pb[2 * h], pa[2 * h + 1], pb[2 * h + 1]};
                  mma16816<T>(dacc[tl], af, h ? xp.z : xp.x, h ? xp.w : xp.y);
                }
              }
            }
          }
        }  // (BITS == 2)
      };

      int wcount = 0;  // chunks consumed (windows are counted from tb)
      for (int u = ub; u < ue; ++u) {
        load_scales(u);
#pragma unroll
        for (int tl = 0; tl < TL; ++tl)
#pragma unroll
          for (int e = 0; e < 4; ++e) dacc[tl][e] = 0.0f;
#pragma unroll
        for (int sub = 0; sub < CPS; ++sub) {
          const int t = u * CPS + sub;
          if (t < te) {  // warp-uniform; only the last super-chunk of K can be partial
            // (Windows tile super-chunks when CPS % CW == 0: positions known at compile time.)
            const int wpos = CPS % CW == 0 ? sub % CW : wcount % CW;
            if (wpos == 0) {
              cp_async_wait<NW - 1>();  // the window of chunk t is in (the next ones may be in flight)
              __syncwarp();
            }
            compute(t, sub);
            if (wpos == CW - 1) {
              __syncwarp();  // every lane has read the window's slots
              issue_win((CPS % CW == 0 ? t - tb : wcount) / CW + NW);
            }
            ++wcount;
          }
        }
        fold(u);
      }
      cp_async_wait<0>();
#pragma unroll
      for (int tl = 0; tl < TL; ++tl) {
        bool finite = true;
#pragma unroll
        for (int e = 0; e < 4; ++e) finite = finite && ((2 * c + (e & 1)) % MR >= M || isfinite(acc[tl][e]));
        if (!finite) {
          // A non-finite sum, dot, scale or bias (or an overflow) somewhere in
          // this lane's groups: recompute them element by element.
          const float4 r = redo_exact<T, KIND, BITS, GS, MR, SB>(
              p.w, static_cast<const SB*>(p.scales), static_cast<const SB*>(kAff ? p.biases : p.scales), xrows, M,
              wi, N, K, n0 + 16 * tl + g, n0 + 16 * tl + g + 8, ub, ue, c);
          acc[tl][0] = r.x;
          acc[tl][1] = r.y;
          acc[tl][2] = r.z;
          acc[tl][3] = r.w;
        }
      }
    }
    if (fill && !work) cp_async_wait<0>();  // (a bad lhs index: the copies land before the ring is reused)
    // Sum each output (weight row, x row m) over the lanes and columns that
    // hold it, then over the warps. Column 2c + e holds x row (2c + e) % MR.
#pragma unroll
    for (int tl = 0; tl < TL; ++tl) {
      if constexpr (MR == 1) {
        acc[tl][0] += acc[tl][1];
        acc[tl][2] += acc[tl][3];
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if constexpr (MR <= 2) acc[tl][e] += __shfl_xor_sync(0xffffffffu, acc[tl][e], 1);
        if constexpr (MR <= 4) acc[tl][e] += __shfl_xor_sync(0xffffffffu, acc[tl][e], 2);
      }
    }
    constexpr int kWriters = MR <= 2 ? 1 : MR / 2;  // lanes c < kWriters hold distinct x rows
    if (c < kWriters) {
#pragma unroll
      for (int tl = 0; tl < TL; ++tl)
#pragma unroll
        for (int e = 0; e < (MR == 1 ? 1 : 2); ++e) {
          const int m = (2 * c + e) % MR;
          red[warp][16 * tl + g][m] = acc[tl][e];
          red[warp][16 * tl + g + 8][m] = acc[tl][2 + e];
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < kRowsW * ntiles * MR; idx += W * 32) {
      const int m = idx % MR, r = (idx / MR) % kRowsW, wt = idx / (MR * kRowsW);
      if (m >= M) continue;
      float v = 0.0f;
      for (int w = 0; w < ks; ++w) v += red[wt * ks + w][r][m];
      const int row = (blockIdx.x * ntiles + wt) * kRowsW + r;
      if (row < N) O[(l * M + m) * static_cast<int64_t>(N) + row] = from_f<T>(v);
    }
  }
}

/// Launches Kernel; dynamic shared memory above the 48 KB default needs the
/// kernel's opt-in (per kernel and device; raised when a larger K asks for more).
template <auto Kernel>
void launch_kernel(dim3 grid, size_t smem, cudaStream_t stream, const Qmv1Params& p) {
  static std::atomic<size_t> allowed[64];
  if (smem > 48 * 1024) {
    std::atomic<size_t>& a = allowed[current_device() & 63];
    if (smem > a.load(std::memory_order_relaxed)) {
      check_cuda(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                 "qmv1_mma", "cudaFuncSetAttribute");
      size_t cur = a.load(std::memory_order_relaxed);
      while (cur < smem && !a.compare_exchange_weak(cur, smem, std::memory_order_relaxed)) {
      }
    }
  }
  Kernel<<<grid, kWarps * 32, smem, stream>>>(p);
}

template <typename T, QKind KIND, int BITS, int GS, int MR, bool XS, int TL, bool KP>
void launch_one(const Qmv1Params& p, const OpScope& scope) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, kRows * TL * (kWarps >> p.ks_log2))), 1,
                  static_cast<unsigned>(p.L < 65535 ? p.L : 65535));
  if constexpr (chunk_units(BITS) == 3) {  // 3 KB chunks: 2 in flight; one tile per warp (<= 3 blocks per SM) or two (1)
    const size_t smem = smem_bytes(p.K, GS, MR, XS, ring_depth(BITS), kWarps, TL, BITS);
    launch_kernel<
        qmv1_mma_kernel<T, KIND, BITS, GS, MR, XS, ring_depth(BITS), kWarps, ring_window(BITS), TL, TL == 1 ? 3 : 1, KP>>(
        grid, smem, scope.stream(), p);
  } else {
    const size_t smem = smem_bytes(p.K, GS, MR, XS, kDepth, kWarps, TL, BITS);
    if constexpr (MR == 1 && TL == 2) {
      if (static_cast<int64_t>(grid.x) * grid.z <= device_info(scope.device()).sm_count) {
        launch_kernel<qmv1_mma_kernel<T, KIND, BITS, GS, MR, XS, kDepth, kWarps, kWindow, TL, 1, KP>>(
            grid, smem, scope.stream(), p);
        return;
      }
    }
    launch_kernel<qmv1_mma_kernel<T, KIND, BITS, GS, MR, XS, kDepth, kWarps, kWindow, TL, 32 / kWarps / TL, KP>>(
        grid, smem, scope.stream(), p);
  }
}

template <typename T, int BITS, int GS, int MR, QKind KIND, bool KP>
void launch_rows_k(const Qmv1Params& p, int tl, const OpScope& scope) {
  const bool xs = static_cast<int64_t>(MR) * p.K <= max_staged_k();
  if constexpr (chunk_units(BITS) == 1 ? MR <= 4 : MR == 1) {
    if (tl == 2) {
      if (xs) launch_one<T, KIND, BITS, GS, MR, true, 2, KP>(p, scope);
      else launch_one<T, KIND, BITS, GS, MR, false, 2, KP>(p, scope);
      return;
    }
  }
  if (xs) launch_one<T, KIND, BITS, GS, MR, true, 1, KP>(p, scope);
  else launch_one<T, KIND, BITS, GS, MR, false, 1, KP>(p, scope);
}

/// Codes per chunk (64 bytes of a row, 192 at 3 and 6 bits).
constexpr int chunk_codes(int bits) { return 512 * chunk_units(bits) / bits; }

template <typename T, int GS, int MR, QKind KIND = QKind::affine, int BITS = 4>
void launch_rows(const Qmv1Params& p, int tl, const OpScope& scope) {
  if constexpr (GS < chunk_codes(BITS)) {  // (K % GS == 0: K is a multiple of the chunk from there)
    if (p.K % chunk_codes(BITS) != 0) return launch_rows_k<T, BITS, GS, MR, KIND, true>(p, tl, scope);
  }
  launch_rows_k<T, BITS, GS, MR, KIND, false>(p, tl, scope);
}

/// The launches of affine codes whose rows per entry are group size / 32
/// (2- and 6-bit, max_rows): group size 32 takes one row, 64 up to two, 128
/// up to four (launch_b2, launch_b6).
template <typename T, int BITS>
void launch_rows_gs32(const detail::QmmDesc& d, const Qmv1Params& p, int tl, const OpScope& scope) {
  const int mr = rows_built(d.M);
  constexpr QKind A = QKind::affine;
  switch (d.format.group_size) {
    case 32:
      launch_rows<T, 32, 1, A, BITS>(p, tl, scope);
      break;
    case 64:
      if (mr == 1) launch_rows<T, 64, 1, A, BITS>(p, tl, scope);
      else launch_rows<T, 64, 2, A, BITS>(p, tl, scope);
      break;
    default:
      if (mr == 1) launch_rows<T, 128, 1, A, BITS>(p, tl, scope);
      else if (mr == 2) launch_rows<T, 128, 2, A, BITS>(p, tl, scope);
      else launch_rows<T, 128, 4, A, BITS>(p, tl, scope);
      break;
  }
}

/// 8-bit launches, affine and mxfp8 (qmv1_mma_b8.cu), and 2-bit ones
/// (qmv1_mma_b2.cu): translation units of their own.
template <typename T>
void launch_b8(const detail::QmmDesc& d, const Qmv1Params& p, int tl, const OpScope& scope);
template <typename T>
void launch_b2(const detail::QmmDesc& d, const Qmv1Params& p, int tl, const OpScope& scope);
/// 3- and 6-bit launches (qmv1_mma_b3.cu, qmv1_mma_b6.cu).
template <typename T>
void launch_b3(const detail::QmmDesc& d, const Qmv1Params& p, int tl, const OpScope& scope);
template <typename T>
void launch_b6(const detail::QmmDesc& d, const Qmv1Params& p, int tl, const OpScope& scope);
extern template void launch_b3<__half>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);
extern template void launch_b3<__nv_bfloat16>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);
extern template void launch_b6<__half>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);
extern template void launch_b6<__nv_bfloat16>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);
extern template void launch_b2<__half>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);
extern template void launch_b2<__nv_bfloat16>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);
extern template void launch_b8<__half>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);
extern template void launch_b8<__nv_bfloat16>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);

}  // namespace mmkit::cuda::qmv1
