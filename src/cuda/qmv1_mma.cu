// qmv1_mma: tensor-core GEMV for one activation row and 4-bit affine weights,
//   out[l] (1, N) = x[lhs[l]] (1, K) @ dequantize(w[rhs[l]]) (N, K)^T,
// float16 / bfloat16, transpose=true, K % 128 == 0, group size 32 / 64 / 128.
// (M = 1 is the decode case: every batch entry of a gather_qmm at decode is one.)
//
// Why a separate kernel: with one activation row, 7 of the 8 columns of an
// m16n8k16 B operand are idle. Here they carry the groups instead: column j of
// B holds x masked to the j-th group of a "super-chunk" of 8 groups, so one
// mma accumulates the 8 per-group dot products dot_j(x, q) of 16 weight rows
// at once; the group sums sum_j(x) are computed when x is staged. Every group
// is then folded once:
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
// of 8 groups), reduced through shared memory; <= 64 registers so 32 warps
// fit per SM. (Measured slower: L2 prefetches, a deeper ring, fewer warps per
// tile, shifts as multiplies on the FMA pipe; docs/kernels/cuda.md.)
// K > kMaxStagedK: x is read from global memory instead (permuted in registers).
// A lane whose sum is not finite (a non-finite x, scale or bias, or an
// overflow) recomputes its groups element by element (x * (s * q + b)), so Inf
// and NaN propagate like the reference.
// Measured (and the tilings that were slower): docs/kernels/cuda.md. Tests: tests/test_cuda_cross.cpp.
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

namespace mmkit::cuda {
namespace {

constexpr int kWarps = 8;            // warps per block (split-K inside a block)
constexpr int kRows = 16;            // weight rows per block
constexpr int kMaxStagedK = 16384;   // x staged in shared memory up to this K (32 KB)
constexpr int kZeroBytes = 64;       // the zero line inactive lanes read
constexpr int kDepth = 4;            // chunks of weights in flight per warp (cp.async ring)
constexpr int64_t kMaxK = int64_t{1} << 18;  // the group sums of x stay within 32 KB of shared memory

/// Dynamic shared memory of one block.
inline size_t smem_bytes(int64_t K, int gs, bool xs, int depth, int warps) {
  const int64_t G = K / gs;
  return static_cast<size_t>((G + 3) & ~int64_t{3}) * sizeof(float) + (xs ? static_cast<size_t>(K) * 2 : 0) +
         kZeroBytes + static_cast<size_t>(warps) * depth * 1024;
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
  int ks_log2;   // log2 of ks, the warps splitting K per 16-row tile (1, 2, 4 or 8)
  int warps;     // per block (the kernel's W): W / ks tiles of 16 rows
  int64_t x_batch, w_batch, L;
  IndexGuard guard;
};

/// (v & MASK) | magic in one LOP3 (the compiler splits it in two when both
/// are immediates).
template <uint32_t MASK>
__device__ __forceinline__ uint32_t and_or(uint32_t v, uint32_t magic) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(r) : "r"(v), "n"(MASK), "r"(magic));
  return r;
}

/// Nibbles (i, i + 4) of a word as a T pair with one LOP3 (and a shift for
/// i > 0 in bfloat16, i != 1 in float16), exact, as kPairScale * (kPairOff + q):
///   bfloat16: the nibbles at mantissa bits 0-3 of 128.0:  128 + q;
///   float16:  at mantissa bits 4-7 of 1.0: 1 + q / 64 = (64 + q) / 64.
/// (The offset is taken out per group in the fold. Float16 does not use
/// 1024 + q at bits 0-3: its offset is 16 times larger relative to q, and
/// the cancellation in the fold then costs float16 results about 7 bits.)
template <typename T>
__device__ __forceinline__ uint32_t nib_pair(uint32_t w, int i) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return and_or<0x000F000Fu>(w >> (4 * i), 0x43004300u);
  } else {
    return and_or<0x00F000F0u>(i == 0 ? w << 4 : w >> (4 * i - 4), 0x3C003C00u);
  }
}
template <typename T>
inline constexpr float kPairOff = std::is_same_v<T, __nv_bfloat16> ? 128.0f : 64.0f;
template <typename T>
inline constexpr float kPairScale = std::is_same_v<T, __nv_bfloat16> ? 1.0f : 1.0f / 64.0f;

/// 8 activations [x0 .. x7] (4 pairs) as the B order [x0 x4 x1 x5 x2 x6 x3 x7].
__device__ __forceinline__ uint4 permute8(uint4 v) {
  return make_uint4(__byte_perm(v.x, v.z, 0x5410), __byte_perm(v.x, v.z, 0x7632), __byte_perm(v.y, v.w, 0x5410),
                    __byte_perm(v.y, v.w, 0x7632));
}

template <typename T>
__device__ __forceinline__ float bits_to_f(uint32_t b) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __uint_as_float(b << 16);
  else return __half2float(__ushort_as_half(static_cast<unsigned short>(b & 0xFFFFu)));
}

/// x * (s * q + b) over one group, element by element (non-finite groups only).
template <typename T, int GS>
__device__ __noinline__ float exact_group1(const T* xg, const uint32_t* wg, float s, float b) {
  float e = 0.0f;
  for (int k = 0; k < GS; ++k) {
    const float q = static_cast<float>((wg[k / 8] >> (4 * (k % 8))) & 15u);
    e = fmaf(to_f<T>(xg[k]), fmaf(s, q, b), e);
  }
  return e;
}

/// The exact recomputation of lane (g, c)'s share of rows ra / rb over its
/// groups (a group's sum(x), dot, scale or bias was not finite): off the hot
/// loop, so it costs the loop no registers.
template <typename T, int GS>
__device__ __noinline__ float2 redo_exact(const uint32_t* w, const unsigned short* S, const unsigned short* Bi,
                                          const T* xrow, int64_t wi, int N, int K, int ra, int rb, int ub, int ue,
                                          int c) {
  const int G = K / GS;
  float acc[2] = {0.0f, 0.0f};
  for (int r = 0; r < 2; ++r) {
    const int row = r ? rb : ra;
    if (row >= N) continue;
    const uint32_t* wr = w + (wi * N + row) * static_cast<int64_t>(K / 8);
    const int64_t srow = (wi * N + row) * static_cast<int64_t>(G);
    for (int u = ub; u < ue; ++u)
      for (int e = 0; e < 2; ++e) {
        const int grp = u * 8 + 2 * c + e;
        if (grp >= G) continue;
        acc[r] += exact_group1<T, GS>(xrow + static_cast<int64_t>(grp) * GS, wr + grp * (GS / 8),
                                      bits_to_f<T>(S[srow + grp]), bits_to_f<T>(Bi[srow + grp]));
      }
  }
  return make_float2(acc[0], acc[1]);
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

// XS: x staged in shared memory (K <= kMaxStagedK), else read from global.
// D: chunks of weights in flight per warp (the cp.async ring).
// Shared memory: the group sums of x (G floats, padded with zeros to a
// multiple of 4), [x permuted (K values)], a zero line, the ring
// (W x D slots of 2 rows x 32 lanes x 16 bytes).
template <typename T, int GS, bool XS, int D, int W, int CW>
__global__ void __launch_bounds__(W * 32, 32 / W) qmv1_mma_kernel(Qmv1Params p) {
  constexpr int CPS = GS / 16;    // 128-code chunks per super-chunk of 8 groups
  constexpr int NG = 128 / GS;    // groups per chunk
  constexpr int LPG = GS / 8;     // 16-byte x vectors (lanes) per group
  static_assert(D == 4 || D == 8, "ring depth: a power of two, slots of 1 KB per warp");
  static_assert(D == 2 * CW && CW >= 1 && GS / 16 % CW == 0, "the ring holds two windows; windows tile super-chunks");
  // Codes become kPairScale * (kPairOff + q) (nib_pair); the fold takes the
  // offset out per group: dot(x, q) = dot(x, code) / kPairScale - kPairOff * sum(x).
  constexpr float kOff = kPairOff<T>, kInv = 1.0f / kPairScale<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float red[W][kRows];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int N = p.N, K = p.K;
  // Warp w: 16-row tile w / ks of the block, K part w % ks.
  const int ks = 1 << p.ks_log2, tile = warp >> p.ks_log2, kpart = warp & (ks - 1);
  const int ntiles = W >> p.ks_log2;
  const int n0 = (blockIdx.x * ntiles + tile) * kRows;
  const int words_per_row = K / 8;
  const int G = K / GS;  // groups per row
  const int chunks = K / 128;
  const int supers = (chunks + CPS - 1) / CPS;
  const int ub = (supers * kpart) >> p.ks_log2;  // supers < 2^16 (K <= kMaxK)
  const int ue = (supers * (kpart + 1)) >> p.ks_log2;
  const int tb = ub * CPS, te = min(ue * CPS, chunks);
  const int ra = n0 + g, rb = n0 + g + 8;
  // Rows past N read row N - 1 (valid memory; their results are dropped).
  // (A tile wholly past N does no work; n0c keeps its addresses valid.)
  const int n0c = min(n0, N - 1);
  const int oa = min(ra, N - 1) - n0c, ob = min(rb, N - 1) - n0c;  // row offsets in the tile
  const T* X = static_cast<const T*>(p.x);
  T* O = static_cast<T*>(p.out);
  float* gsum = reinterpret_cast<float*>(smem);
  const int gpad = (G + 3) & ~3;
  T* xs = reinterpret_cast<T*>(smem + gpad * sizeof(float));
  unsigned char* zero_line = smem + gpad * sizeof(float) + (XS ? static_cast<size_t>(K) * sizeof(T) : 0);
  const uint32_t ring = static_cast<uint32_t>(__cvta_generic_to_shared(zero_line + kZeroBytes)) +
                        static_cast<uint32_t>(warp * D * 1024 + lane * 16);
  if (threadIdx.x < kZeroBytes / 4) reinterpret_cast<uint32_t*>(zero_line)[threadIdx.x] = 0u;
  if (threadIdx.x < gpad - G) gsum[G + threadIdx.x] = 0.0f;
  // The chunk-column of lane c's 32-code slice: slot (t % CPS) * NG + c * 32 / GS.
  const int my_slot_c = (c * 32) / GS;

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
    const uint32_t ring_w = ring - static_cast<uint32_t>(lane * 16);
    auto issue_win = [&](int w) {
      const int t0 = tb + w * CW;
      if (t0 < te) {
#pragma unroll
        for (int i = 0; i < 2 * CW; ++i) {
          const int r = i * (8 / CW) + lane / (4 * CW);
          const int piece = lane % (4 * CW);
          const int t = t0 + piece / 4, cc = piece % 4;
          if (t < te) {
            const int rr = min(n0 + r, N - 1) - n0c;
            const uint32_t dst = ring_w + ((static_cast<uint32_t>(t) & (D - 1)) << 10) + (r >= 8 ? 512u : 0u) +
                                 static_cast<uint32_t>(((r & 7) * 4 + cc) << 4);
            cp16(dst, wblk + rr * words_per_row + t * 16 + cc * 4);
          }
        }
      }
      cp_async_commit();
    };
    if (fill) {
      issue_win(0);
      issue_win(1);
    }
    const bool ok = index_ok(xi, l, p.x_batch, p.guard, ErrWhich::lhs) &&
                    index_ok(wi, l, p.w_batch, p.guard, ErrWhich::rhs);
    float acc_a = 0.0f, acc_b = 0.0f;
    const T* xrow = X + (ok ? xi : 0) * static_cast<int64_t>(K);
    const bool work = ok && fill;
    // The warps of a K part stage it, the block's tiles taking turns: group
    // sums and (XS) the permuted values.
    if (ok)
      for (int base = tb * 16 + tile * 32; base < te * 16; base += 32 * ntiles) {
        const int i = base + lane;
        float sum = 0.0f;
        if (i < te * 16) {
          const uint4 v = __ldg(reinterpret_cast<const uint4*>(xrow) + i);
          if constexpr (XS) reinterpret_cast<uint4*>(xs)[i] = permute8(v);
          const uint32_t wv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
          for (int j = 0; j < 4; ++j) sum += bits_to_f<T>(wv[j]) + bits_to_f<T>(wv[j] >> 16);
        }
#pragma unroll
        for (int o = 1; o < LPG; o *= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (i < te * 16 && i % LPG == 0) gsum[i / LPG] = sum;
      }
    __syncthreads();  // x, the sums and the zero line are written (and red of the last entry was read)
    if (work) {
      const int64_t sblk = ((ok ? wi : 0) * N + n0c) * static_cast<int64_t>(G);
      const unsigned short* S = static_cast<const unsigned short*>(p.scales) + sblk;
      const unsigned short* Bi = static_cast<const unsigned short*>(p.biases) + sblk;
      const int soa = oa * G + 2 * c, sob = ob * G + 2 * c;
      float dacc[4];
      uint32_t sc[2], bc[2];  // raw (group 2c, 2c + 1) pairs of rows a / b
      auto load_scales = [&](int u) {
        const int grp = u * 8 + 2 * c;
        if (grp < G) {
          if (GS < 128 || G % 2 == 0) {  // K % 128 == 0: G is even below group size 128
            sc[0] = __ldg(reinterpret_cast<const uint32_t*>(S + soa + u * 8));
            bc[0] = __ldg(reinterpret_cast<const uint32_t*>(Bi + soa + u * 8));
            sc[1] = __ldg(reinterpret_cast<const uint32_t*>(S + sob + u * 8));
            bc[1] = __ldg(reinterpret_cast<const uint32_t*>(Bi + sob + u * 8));
          } else {  // odd G (group size 128 only): rows are not 4-byte aligned
            const bool two = grp + 1 < G;
            const int ia = soa + u * 8, ib = sob + u * 8;
            sc[0] = __ldg(S + ia) | (two ? static_cast<uint32_t>(__ldg(S + ia + 1)) << 16 : 0u);
            bc[0] = __ldg(Bi + ia) | (two ? static_cast<uint32_t>(__ldg(Bi + ia + 1)) << 16 : 0u);
            sc[1] = __ldg(S + ib) | (two ? static_cast<uint32_t>(__ldg(S + ib + 1)) << 16 : 0u);
            bc[1] = __ldg(Bi + ib) | (two ? static_cast<uint32_t>(__ldg(Bi + ib + 1)) << 16 : 0u);
          }
        } else {
          sc[0] = bc[0] = sc[1] = bc[1] = 0u;
        }
      };
      // acc += (s / kPairScale) * dot(x, code) + (b - OFF * s) * sum(x) per group. (Groups
      // past G: zero scale, bias, dot and sum.) Non-finite values are not
      // tested here: they reach acc, which is tested once at the end.
      auto fold = [&](int u) {
        const int grp0 = u * 8 + 2 * c;
        const float2 xs2 = grp0 < G ? *reinterpret_cast<const float2*>(gsum + grp0) : make_float2(0.0f, 0.0f);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float xsv = e ? xs2.y : xs2.x;
          const float s_a = bits_to_f<T>(sc[0] >> (16 * e)), b_a = bits_to_f<T>(bc[0] >> (16 * e));
          const float s_b = bits_to_f<T>(sc[1] >> (16 * e)), b_b = bits_to_f<T>(bc[1] >> (16 * e));
          acc_a = fmaf(kInv * s_a, dacc[e], fmaf(fmaf(-kOff, s_a, b_a), xsv, acc_a));
          acc_b = fmaf(kInv * s_b, dacc[2 + e], fmaf(fmaf(-kOff, s_b, b_b), xsv, acc_b));
        }
      };
      // B operand of lane (g, c) in chunk t: its 32-code slice of permuted x,
      // or the zero line when its column is not the group of that slice.
      const uint32_t xs_lane = static_cast<uint32_t>(__cvta_generic_to_shared(xs)) + 64u * c;
      const uint32_t zero_addr = static_cast<uint32_t>(__cvta_generic_to_shared(zero_line));
      auto compute = [&](int t, int sub, const uint4& cwa, const uint4& cwb) {
        const bool active = g == sub * NG + my_slot_c;
        const uint32_t xb = active ? xs_lane + 256u * static_cast<uint32_t>(t) : zero_addr;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          uint4 xp;
          if constexpr (XS) {
            xp = lds128(xb + 16 * j);
          } else {
            xp = make_uint4(0u, 0u, 0u, 0u);
            if (active) xp = permute8(__ldg(reinterpret_cast<const uint4*>(xrow + t * 128 + 32 * c) + j));
          }
          const uint32_t w_a = (&cwa.x)[j], w_b = (&cwb.x)[j];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int i = 2 * h;
            const uint32_t af[4] = {nib_pair<T>(w_a, i), nib_pair<T>(w_b, i), nib_pair<T>(w_a, i + 1),
                                    nib_pair<T>(w_b, i + 1)};
            mma16816<T>(dacc, af, h ? xp.z : xp.x, h ? xp.w : xp.y);
          }
        }
      };

      for (int u = ub; u < ue; ++u) {
        load_scales(u);
#pragma unroll
        for (int e = 0; e < 4; ++e) dacc[e] = 0.0f;
#pragma unroll
        for (int sub = 0; sub < CPS; ++sub) {
          const int t = u * CPS + sub;
          if (t < te) {  // warp-uniform; only the last super-chunk of K can be partial
            if (sub % CW == 0) {
              cp_async_wait<1>();  // the window of chunk t is in (the next one may be in flight)
              __syncwarp();
            }
            const uint32_t src = ring + ((static_cast<uint32_t>(t) & (D - 1)) << 10);
            const uint4 cwa = lds128(src), cwb = lds128(src + 512);
            compute(t, sub, cwa, cwb);
            if (sub % CW == CW - 1) {
              __syncwarp();  // every lane has read the window's slots
              issue_win((t - tb) / CW + 2);
            }
          }
        }
        fold(u);
      }
      cp_async_wait<0>();
      if (!isfinite(acc_a) || !isfinite(acc_b)) {
        // A non-finite sum, dot, scale or bias (or an overflow) somewhere in
        // this lane's groups: recompute them element by element.
        const float2 r = redo_exact<T, GS>(p.w, static_cast<const unsigned short*>(p.scales),
                                           static_cast<const unsigned short*>(p.biases), xrow, wi, N, K, ra, rb, ub,
                                           ue, c);
        acc_a = r.x;
        acc_b = r.y;
      }
    }
    if (fill && !work) cp_async_wait<0>();  // (a bad lhs index: the copies land before the ring is reused)
    // Sum the lane's partial rows over c, then over the warps.
    acc_a += __shfl_xor_sync(0xffffffffu, acc_a, 1);
    acc_a += __shfl_xor_sync(0xffffffffu, acc_a, 2);
    acc_b += __shfl_xor_sync(0xffffffffu, acc_b, 1);
    acc_b += __shfl_xor_sync(0xffffffffu, acc_b, 2);
    if (c == 0) {
      red[warp][g] = acc_a;
      red[warp][g + 8] = acc_b;
    }
    __syncthreads();
    if (threadIdx.x < kRows * ntiles) {
      const int tl = threadIdx.x / kRows, r = threadIdx.x % kRows;
      float v = 0.0f;
      for (int w = 0; w < ks; ++w) v += red[tl * ks + w][r];
      const int row = (blockIdx.x * ntiles + tl) * kRows + r;
      if (row < N) O[l * static_cast<int64_t>(N) + row] = from_f<T>(v);
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
  Kernel<<<grid, dim3(static_cast<unsigned>(p.warps * 32)), smem, stream>>>(p);
}

template <typename T, bool XS, int D, int W>
void launch_xs(const detail::QmmDesc& d, const Qmv1Params& p, const OpScope& scope) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, kRows * (p.warps >> p.ks_log2))), 1,
                  static_cast<unsigned>(p.L < 65535 ? p.L : 65535));
  const size_t smem = smem_bytes(p.K, d.format.group_size, XS, D, W);
  switch (d.format.group_size) {
    case 32: launch_kernel<qmv1_mma_kernel<T, 32, XS, D, W, D / 2>>(grid, smem, scope.stream(), p); break;
    case 64: launch_kernel<qmv1_mma_kernel<T, 64, XS, D, W, D / 2>>(grid, smem, scope.stream(), p); break;
    default: launch_kernel<qmv1_mma_kernel<T, 128, XS, D, W, D / 2>>(grid, smem, scope.stream(), p); break;
  }
}

template <typename T>
void launch(const detail::QmmDesc& d, const Qmv1Params& p, const OpScope& scope) {
  if (p.K <= kMaxStagedK) launch_xs<T, true, kDepth, kWarps>(d, p, scope);
  else launch_xs<T, false, kDepth, kWarps>(d, p, scope);
}

}  // namespace

bool qmv1_mma_supports(const detail::QmmDesc& d) {
  if (!d.transpose || d.format.mode != fmt::Mode::affine || d.format.bits != 4) return false;
  if (d.dtype != Dtype::float16 && d.dtype != Dtype::bfloat16) return false;
  if (d.M != 1 || d.K % 128 != 0 || d.K == 0) return false;
  if (d.N >= (int64_t{1} << 31) || d.K > kMaxK) return false;
  return device_info(current_device()).cc_major >= 8;
}

bool qmv1_mma_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  if (!aligned(a.x.raw_data(), 16) || !aligned(a.w.raw_data(), 16) || !aligned(a.scales.raw_data(), 4) ||
      !aligned(a.biases.raw_data(), 4))
    return false;
  Qmv1Params p{};
  p.x = a.x.raw_data();
  p.w = a.w.data<uint32_t>();
  p.scales = a.scales.raw_data();
  p.biases = a.biases.raw_data();
  const bool no_indices = d.batch == 1 && !std::strcmp(d.op, "quantized_matmul");
  p.lhs = no_indices ? nullptr : a.lhs.data<int64_t>();
  p.rhs = no_indices ? nullptr : a.rhs.data<int64_t>();
  p.out = a.out.raw_data();
  p.N = static_cast<int>(d.N);
  p.K = static_cast<int>(d.K);
  p.x_batch = d.x_batch;
  p.w_batch = d.w_batch;
  p.L = d.batch;
  p.guard = index_guard(scope.device(), d.op, d.indices_checked);
  // Split K over as many warps as leave each at least one super-chunk (8 groups).
  const int64_t supers = ceil_div(d.K / 128, d.format.group_size / 16);
  p.ks_log2 = 3;
  while (p.ks_log2 > 0 && supers < (int64_t{1} << p.ks_log2)) --p.ks_log2;
  if (const char* e = std::getenv("MMKIT_QMV1_KS_LOG2"))  // tuning knob (docs/kernels/cuda.md): at most the default
    p.ks_log2 = std::min(p.ks_log2, std::max(0, std::atoi(e)));
  p.warps = kWarps;  // (16 measured: 3% faster on 8192 x 8192, 12% slower on the MoE T = 1 shapes)
  if (smem_bytes(d.K, d.format.group_size, d.K <= kMaxStagedK, kDepth, p.warps) >
      device_info(scope.device()).smem_optin)
    return false;
  if (d.dtype == Dtype::float16) launch<__half>(d, p, scope);
  else launch<__nv_bfloat16>(d, p, scope);
  scope.check_launch("qmv1_mma");
  return true;
}

}  // namespace mmkit::cuda
