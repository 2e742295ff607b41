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
// is then folded once, exactly as the other kernels do:
//   acc += s * dot(x, q) + b * sum(x)   (float32; codes exact in T).
//
// Layout. A warp owns 16 weight rows and a range of super-chunks of K. Lane
// (g, c) (g = lane / 4, c = lane % 4) loads 16 bytes (32 codes) of rows g and
// g + 8 per chunk of 128 codes straight from global memory (ld.global.nc, no
// L1 allocation; the 4 lanes of a row read 64 contiguous bytes), and those 32
// codes are exactly the k values its A fragments hold in the chunk's 8 mma
// steps: the k order inside an mma is free as long as B uses the same one, so
// a word's nibble pairs (i, i + 4) become A pairs with one LOP3 and one half2
// subtraction each, and x is stored in shared memory once per block already
// permuted the same way ([x0 x4 x1 x5 x2 x6 x3 x7] per 8 values), so B is one
// 16-byte shared load per word. A lane whose column is not the group of its
// k slice in a chunk reads a zero line instead (one select per chunk).
// Per 8 codes and row: 3 shifts, 4 LOP3, 4 half2 subtractions; per word pair
// (rows g, g + 8): 2 mma; everything else is per chunk or super-chunk.
// Tile: a block is 8 warps: 8 / ks tiles of 16 weight rows, each split over ks
// warps along K (ks = 8 for long K, fewer when K has fewer than 8 super-chunks
// of 8 groups), reduced through shared memory; <= 64 registers so 32 warps
// fit per SM; 2 chunks of loads in flight per warp. (Measured slower: L2
// prefetches 2 - 8 chunks ahead, and issuing the first loads before staging x;
// docs/kernels/cuda.md.)
// K > kMaxStagedK: x is read from global memory instead (permuted in registers).
// Non-finite groups (sum(x), dot, scale or bias not finite) are recomputed
// element by element (x * (s * q + b)), so Inf and NaN propagate like the
// reference.
// Measured (and the tilings that were slower): docs/kernels/cuda.md. Tests: tests/test_cuda_cross.cpp.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/device/common.cuh"
#include "cuda/device/decode.cuh"
#include "cuda/device/mma.cuh"
#include "cuda/qmm_kernels.h"

namespace mmkit::cuda {
namespace {

constexpr int kWarps = 8;            // split-K inside a block
constexpr int kRows = 16;            // weight rows per block
constexpr int kMaxStagedK = 16384;   // x staged in shared memory up to this K (32 KB)
constexpr int kZeroBytes = 64;       // the zero line inactive lanes read

struct Qmv1Params {
  const void* x;
  const uint32_t* w;
  const void* scales;
  const void* biases;
  const int64_t* lhs;
  const int64_t* rhs;
  void* out;
  int N, K;
  int ks;        // warps splitting K per 16-row tile (1, 2, 4 or 8): the block has 8 / ks tiles
  int64_t x_batch, w_batch, L;
  IndexGuard guard;
};

/// (v & mask) | magic in one LOP3 (the compiler splits it in two when both
/// are immediates).
__device__ __forceinline__ uint32_t and_or(uint32_t v, uint32_t magic) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(r) : "r"(v), "n"(0x000F000F), "r"(magic));
  return r;
}

/// Nibbles (i, i + 4) of v >> 4i as an exact T pair (the shift is the caller's).
template <typename T>
__device__ __forceinline__ uint32_t nib_pair(uint32_t v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const uint32_t h = and_or(v, 0x43004300u);  // 128 + q
    const __nv_bfloat162 r =
        __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&h), __floats2bfloat162_rn(128.0f, 128.0f));
    return *reinterpret_cast<const uint32_t*>(&r);
  } else {
    const uint32_t h = and_or(v, 0x64006400u);  // 1024 + q
    const __half2 r = __hsub2(*reinterpret_cast<const __half2*>(&h), __floats2half2_rn(1024.0f, 1024.0f));
    return *reinterpret_cast<const uint32_t*>(&r);
  }
}

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

// XS: x staged in shared memory (K <= kMaxStagedK), else read from global.
// Shared memory: the group sums of x (G floats), [x permuted (K values)], a zero line.
template <typename T, int GS, bool XS>
__global__ void __launch_bounds__(kWarps * 32, 4) qmv1_mma_kernel(Qmv1Params p) {
  constexpr int CPS = GS / 16;    // 128-code chunks per super-chunk of 8 groups
  constexpr int NG = 128 / GS;    // groups per chunk
  constexpr int LPG = GS / 8;     // 16-byte x vectors (lanes) per group
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float red[kWarps][kRows];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int N = p.N, K = p.K;
  // Warp w: 16-row tile w / ks of the block, K part w % ks.
  const int ks = p.ks, tile = warp / ks, kpart = warp % ks;
  const int n0 = (blockIdx.x * (kWarps / ks) + tile) * kRows;
  const int words_per_row = K / 8;
  const int G = K / GS;  // groups per row
  const int chunks = K / 128;
  const int supers = (chunks + CPS - 1) / CPS;
  const int ub = static_cast<int>(static_cast<int64_t>(supers) * kpart / ks);
  const int ue = static_cast<int>(static_cast<int64_t>(supers) * (kpart + 1) / ks);
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
  if (threadIdx.x < kZeroBytes / 4) reinterpret_cast<uint32_t*>(zero_line)[threadIdx.x] = 0u;
  // The chunk-column of lane c's 32-code slice: slot (t % CPS) * NG + c * 32 / GS.
  const int my_slot_c = (c * 32) / GS;

  for (int64_t l = blockIdx.z; l < p.L; l += gridDim.z) {
    const int64_t xi = p.lhs[l], wi = p.rhs[l];
    const bool ok = index_ok(xi, l, p.x_batch, p.guard, ErrWhich::lhs) &&
                    index_ok(wi, l, p.w_batch, p.guard, ErrWhich::rhs);
    float acc_a = 0.0f, acc_b = 0.0f;
    const T* xrow = X + (ok ? xi : 0) * static_cast<int64_t>(K);
    const bool work = ok && tb < te && n0 < N;
    // The warps of tile 0 stage x, each its own K part: group sums and (XS)
    // the permuted values.
    if (ok && tile == 0)
      for (int base = tb * 16; base < te * 16; base += 32) {
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
      // This lane's weights: block tile rows, 32-bit offsets from one base.
      const uint32_t* wblk = p.w + (wi * N + n0c) * static_cast<int64_t>(words_per_row);
      const int woa = oa * words_per_row + 4 * c, wob = ob * words_per_row + 4 * c;
      uint4 cw[2][2];  // (slot, row a/b): 2 chunks of codes in flight
      auto load = [&](int t, int s) {
        if (t < te) {
          cw[s][0] = ld_stream_v4(wblk + woa + t * 16);
          cw[s][1] = ld_stream_v4(wblk + wob + t * 16);
        }
      };
      const int64_t sblk = (wi * N + n0c) * static_cast<int64_t>(G);
      const unsigned short* S = static_cast<const unsigned short*>(p.scales) + sblk;
      const unsigned short* Bi = static_cast<const unsigned short*>(p.biases) + sblk;
      const int soa = oa * G, sob = ob * G;
      float dacc[4];
      bool redo = false;
      uint32_t sc[2], bc[2];  // raw (group 2c, 2c + 1) pairs of rows a / b
      auto load_scales = [&](int u) {
        const int grp = u * 8 + 2 * c;
        if (grp < G) {
          if (G % 2 == 0) {
            sc[0] = __ldg(reinterpret_cast<const uint32_t*>(S + soa + grp));
            bc[0] = __ldg(reinterpret_cast<const uint32_t*>(Bi + soa + grp));
            sc[1] = __ldg(reinterpret_cast<const uint32_t*>(S + sob + grp));
            bc[1] = __ldg(reinterpret_cast<const uint32_t*>(Bi + sob + grp));
          } else {  // odd G (group size 128 only): rows are not 4-byte aligned
            const bool two = grp + 1 < G;
            sc[0] = __ldg(S + soa + grp) | (two ? static_cast<uint32_t>(__ldg(S + soa + grp + 1)) << 16 : 0u);
            bc[0] = __ldg(Bi + soa + grp) | (two ? static_cast<uint32_t>(__ldg(Bi + soa + grp + 1)) << 16 : 0u);
            sc[1] = __ldg(S + sob + grp) | (two ? static_cast<uint32_t>(__ldg(S + sob + grp + 1)) << 16 : 0u);
            bc[1] = __ldg(Bi + sob + grp) | (two ? static_cast<uint32_t>(__ldg(Bi + sob + grp + 1)) << 16 : 0u);
          }
        } else {
          sc[0] = bc[0] = sc[1] = bc[1] = 0u;
        }
      };
      auto fold = [&](int u) {
        const int grp0 = u * 8 + 2 * c;
        const float2 xs2 = grp0 < G ? *reinterpret_cast<const float2*>(gsum + grp0) : make_float2(0.0f, 0.0f);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int grp = grp0 + e;
          const float xsv = e ? xs2.y : xs2.x;
          const float s_a = bits_to_f<T>(sc[0] >> (16 * e)), b_a = bits_to_f<T>(bc[0] >> (16 * e));
          const float s_b = bits_to_f<T>(sc[1] >> (16 * e)), b_b = bits_to_f<T>(bc[1] >> (16 * e));
          const float d_a = dacc[e], d_b = dacc[2 + e];
          const bool fin = isfinite(xsv);
          if (fin && isfinite(d_a) && isfinite(s_a) && isfinite(b_a)) acc_a = fmaf(s_a, d_a, fmaf(b_a, xsv, acc_a));
          else if (grp < G) redo = true;
          if (fin && isfinite(d_b) && isfinite(s_b) && isfinite(b_b)) acc_b = fmaf(s_b, d_b, fmaf(b_b, xsv, acc_b));
          else if (grp < G) redo = true;
        }
      };
      auto compute = [&](int t, int s) {
        // B operand, word j: 8 permuted activations, or zeros when this lane's
        // column is not the group of its slice in this chunk.
        const bool active = g == (t % CPS) * NG + my_slot_c;
        const uint4* xb = nullptr;
        if constexpr (XS)
          xb = active ? reinterpret_cast<const uint4*>(xs + t * 128 + 32 * c) : reinterpret_cast<const uint4*>(zero_line);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          uint4 xp;
          if constexpr (XS) {
            xp = xb[j];
          } else {
            xp = make_uint4(0u, 0u, 0u, 0u);
            if (active) xp = permute8(__ldg(reinterpret_cast<const uint4*>(xrow + t * 128 + 32 * c) + j));
          }
          const uint32_t w_a = (&cw[s][0].x)[j], w_b = (&cw[s][1].x)[j];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int i = 2 * h;
            const uint32_t af[4] = {nib_pair<T>(w_a >> (4 * i)), nib_pair<T>(w_b >> (4 * i)),
                                    nib_pair<T>(w_a >> (4 * i + 4)), nib_pair<T>(w_b >> (4 * i + 4))};
            mma16816<T>(dacc, af, h ? xp.z : xp.x, h ? xp.w : xp.y);
          }
        }
      };

      load(tb, 0);
      load(tb + 1, 1);
      for (int u = ub; u < ue; ++u) {
        load_scales(u);
#pragma unroll
        for (int e = 0; e < 4; ++e) dacc[e] = 0.0f;
#pragma unroll
        for (int sub = 0; sub < CPS; ++sub) {
          const int t = u * CPS + sub;
          if (t < te) {  // warp-uniform; only the last super-chunk of K can be partial
            compute(t, sub % 2);
            load(t + 2, sub % 2);
          }
        }
        fold(u);
      }
      if (redo) {
        const float2 r = redo_exact<T, GS>(p.w, static_cast<const unsigned short*>(p.scales),
                                           static_cast<const unsigned short*>(p.biases), xrow, wi, N, K, ra, rb, ub,
                                           ue, c);
        acc_a = r.x;
        acc_b = r.y;
      }
    }
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
    if (threadIdx.x < kRows * (kWarps / ks)) {
      const int tl = threadIdx.x / kRows, r = threadIdx.x % kRows;
      float v = 0.0f;
      for (int w = 0; w < ks; ++w) v += red[tl * ks + w][r];
      const int row = (blockIdx.x * (kWarps / ks) + tl) * kRows + r;
      if (row < N) O[l * static_cast<int64_t>(N) + row] = from_f<T>(v);
    }
  }
}

template <typename T, bool XS>
void launch_xs(const detail::QmmDesc& d, const Qmv1Params& p, const OpScope& scope) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, kRows * (kWarps / p.ks))), 1,
                  static_cast<unsigned>(p.L < 65535 ? p.L : 65535));
  const int G = p.K / d.format.group_size;
  const size_t smem = ((G + 3) & ~3) * sizeof(float) + (XS ? static_cast<size_t>(p.K) * sizeof(T) : 0) + kZeroBytes;
  switch (d.format.group_size) {
    case 32: qmv1_mma_kernel<T, 32, XS><<<grid, kWarps * 32, smem, scope.stream()>>>(p); break;
    case 64: qmv1_mma_kernel<T, 64, XS><<<grid, kWarps * 32, smem, scope.stream()>>>(p); break;
    default: qmv1_mma_kernel<T, 128, XS><<<grid, kWarps * 32, smem, scope.stream()>>>(p); break;
  }
}

template <typename T>
void launch(const detail::QmmDesc& d, const Qmv1Params& p, const OpScope& scope) {
  if (p.K <= kMaxStagedK) launch_xs<T, true>(d, p, scope);
  else launch_xs<T, false>(d, p, scope);
}

}  // namespace

bool qmv1_mma_supports(const detail::QmmDesc& d) {
  if (!d.transpose || d.format.mode != fmt::Mode::affine || d.format.bits != 4) return false;
  if (d.dtype != Dtype::float16 && d.dtype != Dtype::bfloat16) return false;
  if (d.M != 1 || d.K % 128 != 0 || d.K == 0) return false;
  if (d.N >= (int64_t{1} << 31) || d.K >= (int64_t{1} << 31)) return false;
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
  p.lhs = a.lhs.data<int64_t>();
  p.rhs = a.rhs.data<int64_t>();
  p.out = a.out.raw_data();
  p.N = static_cast<int>(d.N);
  p.K = static_cast<int>(d.K);
  p.x_batch = d.x_batch;
  p.w_batch = d.w_batch;
  p.L = d.batch;
  p.guard = index_guard(scope.device(), d.op, d.indices_checked);
  // Split K over as many warps as leave each at least one super-chunk (8 groups).
  const int64_t supers = ceil_div(d.K / 128, d.format.group_size / 16);
  p.ks = kWarps;
  while (p.ks > 1 && supers < p.ks) p.ks /= 2;
  if (d.dtype == Dtype::float16) launch<__half>(d, p, scope);
  else launch<__nv_bfloat16>(d, p, scope);
  scope.check_launch("qmv1_mma");
  return true;
}

}  // namespace mmkit::cuda
