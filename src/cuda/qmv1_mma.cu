// qmv1_mma: tensor-core GEMV for one activation row and 4-bit affine weights,
//   out[l] (1, N) = x[lhs[l]] (1, K) @ dequantize(w[rhs[l]]) (N, K)^T,
// float16 / bfloat16, transpose=true, K % 128 == 0, group size 32 / 64 / 128.
// (M = 1 is the decode case: every batch entry of a gather_qmm at decode is one.)
//
// Why a separate kernel: with one activation row, 7 of the 8 columns of an
// m16n8k16 B operand are idle. Here they carry the groups instead: column j of
// B holds x masked to the j-th group of a "super-chunk" of 8 groups, so one
// mma accumulates the 8 per-group dot products dot_j(x, q) of 16 weight rows
// at once, and a second mma against ones gives the 8 group sums sum_j(x).
// Every group is then folded once, exactly as the other kernels do:
//   acc += s * dot(x, q) + b * sum(x)   (float32; codes exact in T).
// No shared-memory staging: lane (g, c) of a warp (g = lane / 4, c = lane % 4)
// loads 16 bytes (32 codes) of each of its rows g, g + 8 (+ 16, + 24) per
// k-chunk of 128 codes straight from global memory (ld.global.nc, L1 bypass,
// 4 lanes = 64 contiguous bytes per row), and those 32 codes are exactly the
// k values its A fragments hold in the chunk's 8 mma steps; its x fragment is
// x[32c .. 32c + 32) of the chunk, kept only when g is that slice's column.
// Per 8 codes: 3 shifts, 4 LOP3, 4 half2 subtractions (the decode), and
// 1/16 of an mma; x, the ones-mma and the fold are shared by RT m16 tiles.
// Tile: a block is WARPS (8) warps on 16 * RT (32) weight rows, each warp a range of
// super-chunks of K (split-K, reduced through shared memory); kPD (2) chunks of
// registers per warp in flight.
// Non-finite groups (sum(x), dot, scale or bias not finite) are recomputed
// element by element (x * (s * q + b)), so Inf and NaN propagate like the
// reference.
// Measured (and the tilings that were slower): docs/kernels/cuda.md. Tests: tests/test_cuda_cross.cpp.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/device/common.cuh"
#include "cuda/device/mma.cuh"
#include "cuda/qmm_kernels.h"

namespace mmkit::cuda {
namespace {

struct Qmv1Params {
  const void* x;
  const uint32_t* w;
  const void* scales;
  const void* biases;
  const int64_t* lhs;
  const int64_t* rhs;
  void* out;
  int N, K;
  int64_t x_batch, w_batch, L;
  IndexGuard guard;
};

/// 16 bytes of weights that are read once: no L1 allocation.
__device__ __forceinline__ uint4 ld_stream16(const void* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

/// Nibbles (i, i + 4) of v >> 4i as an exact T pair (the shift is the caller's).
template <typename T>
__device__ __forceinline__ uint32_t nib_pair(uint32_t v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const uint32_t h = (v & 0x000F000Fu) | 0x43004300u;  // 128 + q
    const __nv_bfloat162 r =
        __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&h), __floats2bfloat162_rn(128.0f, 128.0f));
    return *reinterpret_cast<const uint32_t*>(&r);
  } else {
    const uint32_t h = (v & 0x000F000Fu) | 0x64006400u;  // 1024 + q
    const __half2 r = __hsub2(*reinterpret_cast<const __half2*>(&h), __floats2half2_rn(1024.0f, 1024.0f));
    return *reinterpret_cast<const uint32_t*>(&r);
  }
}

template <typename T>
__device__ __forceinline__ float bits_to_f(unsigned short b) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __uint_as_float(static_cast<uint32_t>(b) << 16);
  else return __half2float(__ushort_as_half(b));
}

/// x * (s * q + b) over one group, element by element (non-finite groups only).
template <typename T, int GS>
__device__ __forceinline__ float exact_group1(const T* xg, const uint32_t* wg, float s, float b) {
  float e = 0.0f;
  for (int k = 0; k < GS; ++k) {
    const float q = static_cast<float>((wg[k / 8] >> (4 * (k % 8))) & 15u);
    e = fmaf(to_f<T>(xg[k]), fmaf(s, q, b), e);
  }
  return e;
}

template <typename T, int GS, int RT, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, 16 / WARPS) qmv1_mma_kernel(Qmv1Params p) {
  constexpr int kPD = 2;  // chunks of weight loads in flight per warp
  constexpr int CPS = GS / 16;       // 128-code chunks per super-chunk of 8 groups
  constexpr int ROWS = 16 * RT;      // weight rows per block
  __shared__ float red[WARPS][ROWS];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int N = p.N, K = p.K;
  const int n0 = blockIdx.x * ROWS;
  const int64_t words_per_row = K / 8;
  const int G = K / GS;                       // groups per row
  const int chunks = K / 128;
  const int supers = (chunks + CPS - 1) / CPS;
  const int ub = static_cast<int>(static_cast<int64_t>(supers) * warp / WARPS);
  const int ue = static_cast<int>(static_cast<int64_t>(supers) * (warp + 1) / WARPS);
  const int tb = ub * CPS, te = min(ue * CPS, chunks);
  const T* X = static_cast<const T*>(p.x);
  const unsigned short* S = static_cast<const unsigned short*>(p.scales);
  const unsigned short* Bi = static_cast<const unsigned short*>(p.biases);
  T* O = static_cast<T*>(p.out);
  const uint32_t one2 = ones2<T>();
  const uint32_t ones[4] = {one2, one2, one2, one2};

  for (int64_t l = blockIdx.z; l < p.L; l += gridDim.z) {
    const int64_t xi = p.lhs[l], wi = p.rhs[l];
    const bool ok = index_ok(xi, l, p.x_batch, p.guard, ErrWhich::lhs) &&
                    index_ok(wi, l, p.w_batch, p.guard, ErrWhich::rhs);
    // Row r = 0..2RT-1 of this lane: n0 + 8r + g (tiles of 16: rows g, g + 8).
    float acc[2 * RT];
#pragma unroll
    for (int r = 0; r < 2 * RT; ++r) acc[r] = 0.0f;
    if (ok && tb < te) {
      const T* xrow = X + xi * static_cast<int64_t>(K);
      // Lane rows n0 + 8r + g, r < 2 RT: one base pointer, row r at 8r rows on.
      const int64_t row_step = 8 * words_per_row;
      const uint32_t* wlane = p.w + (wi * N + n0 + g) * words_per_row + 4 * c;
      unsigned rvalid = 0;
#pragma unroll
      for (int r = 0; r < 2 * RT; ++r) rvalid |= (n0 + 8 * r + g < N ? 1u : 0u) << r;
      uint4 wb[kPD][2 * RT], xb[kPD][4];
      auto load = [&](int t, int s) {
        if (t < te) {
#pragma unroll
          for (int r = 0; r < 2 * RT; ++r)
            wb[s][r] = (rvalid >> r) & 1u ? ld_stream16(wlane + r * row_step + static_cast<int64_t>(t) * 16)
                                          : make_uint4(0u, 0u, 0u, 0u);
          const int col = ((t % CPS) * 128 + 32 * c) / GS;
          const T* xs = xrow + t * 128 + 32 * c;
#pragma unroll
          for (int j = 0; j < 4; ++j)
            xb[s][j] = g == col ? __ldg(reinterpret_cast<const uint4*>(xs + 8 * j)) : make_uint4(0u, 0u, 0u, 0u);
        }
      };
      float dacc[RT][4], xsum[4];
      auto zero_d = [&]() {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          xsum[e] = 0.0f;
#pragma unroll
          for (int mt = 0; mt < RT; ++mt) dacc[mt][e] = 0.0f;
        }
      };
      zero_d();
      // Raw scales / biases of the lane's rows for groups G0 + 2c + e of the
      // current super-chunk, loaded when it starts and used when it ends.
      bool redo = false;  // a group of this lane was not finite: recompute its share exactly
      // (scale | bias << 16), raw 16-bit patterns.
      uint32_t sb[2 * RT][2];
      auto load_scales = [&](int u) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int grp = u * 8 + 2 * c + e;
#pragma unroll
          for (int r = 0; r < 2 * RT; ++r) {
            const bool v = ((rvalid >> r) & 1u) && grp < G;
            const int64_t at = (wi * N + n0 + 8 * r + g) * static_cast<int64_t>(G) + grp;
            sb[r][e] = v ? (static_cast<uint32_t>(__ldg(S + at)) | static_cast<uint32_t>(__ldg(Bi + at)) << 16) : 0u;
          }
        }
      };
      auto fold = [&](int u) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int grp = u * 8 + 2 * c + e;
          const float xs = xsum[e];  // rows g and g + 8 of the ones-mma hold the same sums
#pragma unroll
          for (int r = 0; r < 2 * RT; ++r) {
            const float dot = dacc[r / 2][(r % 2) * 2 + e];
            const float s = bits_to_f<T>(static_cast<unsigned short>(sb[r][e] & 0xFFFFu));
            const float b = bits_to_f<T>(static_cast<unsigned short>(sb[r][e] >> 16));
            if (isfinite(xs) && isfinite(dot) && isfinite(s) && isfinite(b)) acc[r] = fmaf(s, dot, fmaf(b, xs, acc[r]));
            else if (((rvalid >> r) & 1u) && grp < G) redo = true;
          }
        }
        zero_d();
      };
      auto compute = [&](int s) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint4 xw = xb[s][j];
          // k order inside each mma: pairs (i, i + 4) of the word, as the A side.
          const uint32_t xp[4] = {__byte_perm(xw.x, xw.z, 0x5410), __byte_perm(xw.x, xw.z, 0x7632),
                                  __byte_perm(xw.y, xw.w, 0x5410), __byte_perm(xw.y, xw.w, 0x7632)};
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int i = 2 * h;
#pragma unroll
            for (int mt = 0; mt < RT; ++mt) {
              const uint32_t wa = (&wb[s][2 * mt].x)[j], wc = (&wb[s][2 * mt + 1].x)[j];
              const uint32_t af[4] = {nib_pair<T>(wa >> (4 * i)), nib_pair<T>(wc >> (4 * i)),
                                      nib_pair<T>(wa >> (4 * i + 4)), nib_pair<T>(wc >> (4 * i + 4))};
              mma16816<T>(dacc[mt], af, xp[2 * h], xp[2 * h + 1]);
            }
            mma16816<T>(xsum, ones, xp[2 * h], xp[2 * h + 1]);
          }
        }
      };

#pragma unroll
      for (int s = 0; s < kPD; ++s) load(tb + s, s);
      load_scales(tb / CPS);
      for (int t0 = tb; t0 < te; t0 += kPD) {
#pragma unroll
        for (int s = 0; s < kPD; ++s) {
          const int t = t0 + s;
          if (t < te) {  // warp-uniform
            compute(s);
            load(t + kPD, s);
            if ((t + 1) % CPS == 0 || t + 1 == te) {
              fold(t / CPS);
              if (t + 1 < te) load_scales((t + 1) / CPS);
            }
          }
        }
      }
      if (redo) {  // off the hot loop, so the call does not cost it registers
#pragma unroll
        for (int r = 0; r < 2 * RT; ++r) {
          acc[r] = 0.0f;
          if (!((rvalid >> r) & 1u)) continue;
          const uint32_t* wr = p.w + (wi * N + n0 + 8 * r + g) * words_per_row;
          const int64_t srow = (wi * N + n0 + 8 * r + g) * static_cast<int64_t>(G);
          for (int u = ub; u < ue; ++u)
            for (int e = 0; e < 2; ++e) {
              const int grp = u * 8 + 2 * c + e;
              if (grp >= G) continue;
              acc[r] += exact_group1<T, GS>(xrow + static_cast<int64_t>(grp) * GS, wr + grp * (GS / 8),
                                            bits_to_f<T>(S[srow + grp]), bits_to_f<T>(Bi[srow + grp]));
            }
        }
      }
    }
    // Sum the lane's partial rows over c, then over the warps.
#pragma unroll
    for (int r = 0; r < 2 * RT; ++r) {
      float v = acc[r];
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      if (c == 0) red[warp][8 * r + g] = v;
    }
    __syncthreads();
    if (threadIdx.x < ROWS) {
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < WARPS; ++w) v += red[w][threadIdx.x];
      const int row = n0 + threadIdx.x;
      if (row < N) O[l * static_cast<int64_t>(N) + row] = from_f<T>(v);
    }
    __syncthreads();
  }
}

template <typename T>
void launch(const detail::QmmDesc& d, const Qmv1Params& p, const OpScope& scope) {
  constexpr int RT = 2, WARPS = 8;  // 32 rows per warp, 8 warps split K: 16 warps per SM
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, 16 * RT)), 1, static_cast<unsigned>(p.L < 65535 ? p.L : 65535));
  switch (d.format.group_size) {
    case 32: qmv1_mma_kernel<T, 32, RT, WARPS><<<grid, WARPS * 32, 0, scope.stream()>>>(p); break;
    case 64: qmv1_mma_kernel<T, 64, RT, WARPS><<<grid, WARPS * 32, 0, scope.stream()>>>(p); break;
    default: qmv1_mma_kernel<T, 128, RT, WARPS><<<grid, WARPS * 32, 0, scope.stream()>>>(p); break;
  }
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
  if (!aligned(a.x.raw_data(), 16) || !aligned(a.w.raw_data(), 16) || !aligned(a.scales.raw_data(), 2) ||
      !aligned(a.biases.raw_data(), 2))
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
  if (d.dtype == Dtype::float16) launch<__half>(d, p, scope);
  else launch<__nv_bfloat16>(d, p, scope);
  scope.check_launch("qmv1_mma");
  return true;
}

}  // namespace mmkit::cuda
