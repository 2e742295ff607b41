// qmv: quantized matrix-vector products for few activation rows,
//   out[l] (M, N) = x[lhs[l]] (M, K) @ dequantize(w[rhs[l]]) (N, K)^T,  M <= 8,
// every mode and bit width, float32 / float16 / bfloat16 activations,
// transpose=true (w is K-major), K % 32 == 0.
//
// Work split: a block is 4 warps, each warp owns R = 2 consecutive weight
// rows; lane j reads packs j, j+32, ... of both rows (a pack = 32 codes =
// BITS words, one 16-byte load at 4 bits) so the warp streams 512 B of
// contiguous weights per row and step. Packs stream through a cp.async ring
// in shared memory, S - 1 steps ahead (S = 4 at 4 bits: 3 x 1 KB in flight per
// warp, 32 warps per SM), the scales and biases of each pack are loaded with
// its copy. Activations (8 values per load) come through L1, shared by the
// warps of the SM. Each weight is dequantized once in float32 (s * q + b:
// shift, LOP3, magic-number subtraction and an FMA per code, no I2F) and used
// for all M rows; float32 accumulation.
//
// Grouped gather (GROUPED instances, qmv_grouped_run): a plan built on the
// device (gather_plan.h) sorts the L * M rows by expert and cuts them into
// items of <= 4 or 8 rows; block z runs item z (one expert, rows gathered
// from any entries) instead of entry z, so an expert's weights are read and
// dequantized once per item instead of once per entry.
//
// Bound: weight bandwidth in principle (M = 1, 4-bit g64, 8192 x 8192: 37.8 MB,
// 12.7 us at 2.97 TB/s); target >= 60% of the measured device-to-device copy
// bandwidth. Measured on an H100: 31.4 us = 40.5% (docs/kernels/cuda.md): the
// kernel is instruction-bound (about 8.6 instructions per code: ncu counted
// 18.1 M warp instructions for 67 M codes), not bandwidth-bound.
// src/cuda/tools/cuda_gemv_bench.cu measures it.
// Tests: tests/test_cuda_cross.cpp (CudaCross.Qmm*, exact and tolerance;
// CudaCross.GatherQmmGroupedEveryFormat for the grouped instances),
// conformance with MMKIT_TEST_DEVICE=gpu.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/device/common.cuh"
#include "cuda/device/decode.cuh"
#include "cuda/device/mma.cuh"
#include "cuda/gather_plan.h"
#include "cuda/qmm_kernels.h"
#include "cuda/runtime.h"

namespace mmkit::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRows = 2;    // R: weight rows per warp

struct QmvParams {
  const void* x;
  const uint32_t* w;
  const void* scales;
  const void* biases;
  const int64_t* lhs;
  const int64_t* rhs;
  void* out;
  int M, N, K;
  int gshift;  // log2(gs / 32) for gs >= 32
  int64_t x_batch, w_batch, L;
  IndexGuard guard;
};
// The grouped instances' parameters: block z runs item z of the plan, M is the
// plan's rows per item. A struct of its own: adding the plan to QmvParams
// (112 -> 136 bytes) changes the code nvcc generates for the ungrouped kernels.
struct QmvGroupedParams {
  const void* x;
  const uint32_t* w;
  const void* scales;
  const void* biases;
  void* out;
  int M, N, K;
  int gshift;
  GatherPlanView plan;
};
template <bool GROUPED>
using QmvKernelParams = std::conditional_t<GROUPED, QmvGroupedParams, QmvParams>;

/// Raw bits of element i of a T array (affine scales / biases), widened.
template <typename T>
__device__ __forceinline__ uint32_t raw_bits(const void* p, int64_t i) {
  if constexpr (std::is_same_v<T, float>) return __ldg(static_cast<const uint32_t*>(p) + i);
  else return __ldg(static_cast<const unsigned short*>(p) + i);
}
template <typename T>
__device__ __forceinline__ float raw_to_f(uint32_t b) {
  if constexpr (std::is_same_v<T, float>) return __uint_as_float(b);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return bf16_bits_to_f(b);
  else return f16_bits_to_f(b);
}

/// 8 activations starting at p (16-byte aligned) as float32.
template <typename T>
__device__ __forceinline__ void load_x8(const T* p, float (&v)[8]) {
  if constexpr (std::is_same_v<T, float>) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  } else {
    const uint4 r = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        v[2 * i] = __uint_as_float(u[i] << 16);
        v[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
      } else {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&u[i]));
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
      }
    }
  }
}

template <typename T, QKind KIND, int BITS, int GPP, int MT, bool GROUPED>
// MT = 1: <= 64 registers so 8 blocks (32 warps) fit per SM: N = 8192 is one
// wave (4096 warps on 132 x 32).
__global__ void __launch_bounds__(kWarps * 32, MT == 1 ? 8 : 1) qmv_kernel(QmvKernelParams<GROUPED> p) {
  constexpr int R = kRows;
  // Ring depth: 16 / BITS slots (2..4), <= 16 KB per block (8 blocks per SM).
  constexpr int S = 16 / BITS < 2 ? 2 : (16 / BITS > 4 ? 4 : 16 / BITS);
  constexpr int CW = BITS % 4 == 0 ? 4 : (BITS % 2 == 0 ? 2 : 1);  // words per cp.async
  __shared__ __align__(16) uint32_t ring[kWarps][S][R][32 * BITS];  // (warp, slot, row, lane's pack)
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int n0 = (blockIdx.x * kWarps + warp) * R;
  if (n0 >= p.N) return;  // no block-wide barriers below
  const int M = p.M, N = p.N, K = p.K;
  const int P = K / 32;                 // packs per row
  const int G = GPP == 2 ? 2 * P : (P >> p.gshift);  // groups per row
  const T* X = static_cast<const T*>(p.x);
  T* O = static_cast<T*>(p.out);
  // Grouped: the item's rows as (x element offset, out element offset), one
  // table per warp (written by lanes m < count, ordered by __syncwarp).
  int64_t* x_off = nullptr;
  int64_t* out_off = nullptr;
  int64_t n_work;  // work units: batch entries or plan items
  if constexpr (GROUPED) {
    __shared__ int64_t row_off[kWarps][2][MT];  // (warp, x / out, row of the item)
    x_off = row_off[warp][0];
    out_off = row_off[warp][1];
    n_work = *p.plan.n_items;
  } else {
    n_work = p.L;
  }

  for (int64_t l = blockIdx.z; l < n_work; l += gridDim.z) {
    int64_t xi = 0, wi = 0;
    int rows = M;  // rows of this work unit
    bool ok = true;
    if constexpr (GROUPED) {
      // Bad indices were reported, and their rows zeroed, by the plan kernel.
      __syncwarp();  // lane 0 has written the previous item's outputs
      const GatherItem it = load_gather_item(p.plan, l, lane, K, N, x_off, out_off);
      wi = it.expert;
      rows = it.count;
      __syncwarp();
    } else {
      xi = p.lhs[l];
      wi = p.rhs[l];
      ok = index_ok(xi, l, p.x_batch, p.guard, ErrWhich::lhs) && index_ok(wi, l, p.w_batch, p.guard, ErrWhich::rhs);
    }
    float acc[R][MT];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;

    if (ok) {
      const T* xb = X + xi * static_cast<int64_t>(M) * K;
      const uint32_t* wb = p.w + (wi * N + n0) * static_cast<int64_t>(P) * BITS;
      const int64_t sbase = (wi * N + n0) * static_cast<int64_t>(G);
      bool valid[R];
#pragma unroll
      for (int r = 0; r < R; ++r) valid[r] = n0 + r < N;

      // The packs stream through a per-warp ring of S shared-memory slots
      // filled by cp.async (S - 1 packs per row and lane in flight); each lane
      // copies and later reads only its own pack, so no barrier is needed
      // (cp.async.wait_group is per thread). The group scales / biases of a
      // pack are loaded into registers when its copy is issued.
      struct Scl {
        uint32_t s[R][GPP], b[R][GPP];
      };
      Scl scl[S];
      auto issue = [&](int pp, int slot, Scl& sc) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const bool in = valid[r] && pp < P;
          const uint32_t* src = in ? wb + (static_cast<int64_t>(r) * P + pp) * BITS : wb;
          uint32_t* dst = &ring[warp][slot][r][lane * BITS];
#pragma unroll
          for (int j = 0; j < BITS; j += CW) {
            if constexpr (CW == 4) cp_async16(dst + j, src + j, in);
            else cp_async_ca<4 * CW>(dst + j, src + j, in);
          }
#pragma unroll
          for (int gp = 0; gp < GPP; ++gp) {
            const int g = GPP == 2 ? 2 * pp + gp : (pp >> p.gshift);
            const int64_t si = sbase + static_cast<int64_t>(r) * G + g;
            sc.s[r][gp] = 0u;
            sc.b[r][gp] = 0u;
            if (in) {
              if constexpr (KIND == QKind::affine) {
                sc.s[r][gp] = raw_bits<T>(p.scales, si);
                sc.b[r][gp] = raw_bits<T>(p.biases, si);
              } else {
                sc.s[r][gp] = __ldg(static_cast<const uint8_t*>(p.scales) + si);
              }
            }
          }
        }
      };
      auto compute = [&](int pp, int slot, const Scl& scv) {
        uint32_t pk[R][BITS];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const uint32_t* src = &ring[warp][slot][r][lane * BITS];
          if constexpr (BITS % 4 == 0) {
#pragma unroll
            for (int v = 0; v < BITS / 4; ++v) {
              const uint4 q4 = reinterpret_cast<const uint4*>(src)[v];
              pk[r][4 * v] = q4.x;
              pk[r][4 * v + 1] = q4.y;
              pk[r][4 * v + 2] = q4.z;
              pk[r][4 * v + 3] = q4.w;
            }
          } else if constexpr (BITS % 2 == 0) {
#pragma unroll
            for (int v = 0; v < BITS / 2; ++v) {
              const uint2 q2 = reinterpret_cast<const uint2*>(src)[v];
              pk[r][2 * v] = q2.x;
              pk[r][2 * v + 1] = q2.y;
            }
          } else {
#pragma unroll
            for (int v = 0; v < BITS; ++v) pk[r][v] = src[v];
          }
        }
        float sc[R][GPP], bi[R][GPP];
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int gp = 0; gp < GPP; ++gp) {
            if constexpr (KIND == QKind::affine) {
              sc[r][gp] = raw_to_f<T>(scv.s[r][gp]);
              bi[r][gp] = raw_to_f<T>(scv.b[r][gp]);
            } else {
              sc[r][gp] = valid[r] ? fp_scale<KIND, GPP == 2 ? 16 : 32>(scv.s[r][gp]) : 0.0f;
              bi[r][gp] = 0.0f;
            }
          }
        // Each weight is dequantized once (w = s * q + b) and used for all M
        // rows; multiplying x by w itself (not factoring s out of the group
        // sum) keeps IEEE propagation exact: Inf * w is +-Inf unless w == 0.
        float part[R][MT];
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int m = 0; m < MT; ++m) part[r][m] = 0.0f;
#pragma unroll
        for (int c8 = 0; c8 < 4; ++c8) {
          const int gp = GPP == 2 ? c8 / 2 : 0;
          float wv[R][8];
#pragma unroll
          for (int r = 0; r < R; ++r)
#pragma unroll
            for (int i = 0; i < 8; ++i) {
              const float q = code_value<KIND>(pack_code<BITS>(pk[r], c8 * 8 + i));
              wv[r][i] = KIND == QKind::affine ? fmaf(sc[r][gp], q, bi[r][gp]) : __fmul_rn(sc[r][gp], q);
            }
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            if (m < rows) {
              const T* xm = GROUPED ? X + x_off[m] : xb + static_cast<int64_t>(m) * K;
              float xv[8];
              load_x8<T>(xm + pp * 32 + c8 * 8, xv);
#pragma unroll
              for (int r = 0; r < R; ++r)
#pragma unroll
                for (int i = 0; i < 8; ++i) part[r][m] = fmaf(xv[i], wv[r][i], part[r][m]);
            }
          }
        }
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int m = 0; m < MT; ++m) acc[r][m] += part[r][m];
      };

      const int NI = (P + 31) / 32;  // packs per lane (warp-uniform trip count)
#pragma unroll
      for (int st = 0; st < S - 1; ++st) {
        issue(lane + 32 * st, st, scl[st]);
        cp_async_commit();
      }
      for (int i0 = 0; i0 < NI; i0 += S) {
#pragma unroll
        for (int st = 0; st < S; ++st) {
          const int i = i0 + st;
          if (i < NI) {
            cp_async_wait<S - 2>();
            const int pp = lane + 32 * i;
            if (pp < P) compute(pp, st, scl[st]);
            issue(lane + 32 * (i + S - 1), (st + S - 1) % S, scl[(st + S - 1) % S]);
            cp_async_commit();
          }
        }
      }
      cp_async_wait<0>();
    }
    // Warp reduction; lane 0 writes (zeros for a bad index, see index_ok).
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        float v = acc[r][m];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        acc[r][m] = v;
      }
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m)
          if (m < rows && n0 + r < N) {
            const int64_t o = GROUPED ? out_off[m] : (l * M + m) * static_cast<int64_t>(N);
            O[o + n0 + r] = from_f<T>(acc[r][m]);
          }
    }
  }
}

// Grouped instances: items of 4 or 8 rows only (the plan is used from 4 rows
// per expert on average).
template <typename T, QKind KIND, int BITS, int GPP, bool GROUPED>
void launch_mt(const QmvKernelParams<GROUPED>& p, int64_t units, const OpScope& scope) {
  const dim3 block(kWarps * 32);
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, kWarps * kRows)), 1,
                  static_cast<unsigned>(units < 65535 ? units : 65535));
  if constexpr (GROUPED) {
    if (p.M <= 4) qmv_kernel<T, KIND, BITS, GPP, 4, true><<<grid, block, 0, scope.stream()>>>(p);
    else qmv_kernel<T, KIND, BITS, GPP, 8, true><<<grid, block, 0, scope.stream()>>>(p);
  } else {
    if (p.M <= 1) qmv_kernel<T, KIND, BITS, GPP, 1, false><<<grid, block, 0, scope.stream()>>>(p);
    else if (p.M <= 2) qmv_kernel<T, KIND, BITS, GPP, 2, false><<<grid, block, 0, scope.stream()>>>(p);
    else if (p.M <= 4) qmv_kernel<T, KIND, BITS, GPP, 4, false><<<grid, block, 0, scope.stream()>>>(p);
    else qmv_kernel<T, KIND, BITS, GPP, 8, false><<<grid, block, 0, scope.stream()>>>(p);
  }
}

template <typename T, bool GROUPED>
void launch_format(const detail::QmmDesc& d, const QmvKernelParams<GROUPED>& p, int64_t units, const OpScope& scope) {
  switch (d.format.mode) {
    case fmt::Mode::affine:
      switch (d.format.bits) {
        case 2: return launch_mt<T, QKind::affine, 2, 1, GROUPED>(p, units, scope);
        case 3: return launch_mt<T, QKind::affine, 3, 1, GROUPED>(p, units, scope);
        case 4: return launch_mt<T, QKind::affine, 4, 1, GROUPED>(p, units, scope);
        case 5: return launch_mt<T, QKind::affine, 5, 1, GROUPED>(p, units, scope);
        case 6: return launch_mt<T, QKind::affine, 6, 1, GROUPED>(p, units, scope);
        default: return launch_mt<T, QKind::affine, 8, 1, GROUPED>(p, units, scope);
      }
    case fmt::Mode::mxfp4: return launch_mt<T, QKind::e2m1, 4, 1, GROUPED>(p, units, scope);
    case fmt::Mode::nvfp4: return launch_mt<T, QKind::e2m1, 4, 2, GROUPED>(p, units, scope);
    case fmt::Mode::mxfp8: return launch_mt<T, QKind::e4m3, 8, 1, GROUPED>(p, units, scope);
  }
}

/// units: batch entries, or the plan's max_items (the grid's z extent).
template <bool GROUPED>
void launch_dtype(const detail::QmmDesc& d, const QmvKernelParams<GROUPED>& p, int64_t units, const OpScope& scope) {
  switch (d.dtype) {
    case Dtype::float16: launch_format<__half, GROUPED>(d, p, units, scope); break;
    case Dtype::bfloat16: launch_format<__nv_bfloat16, GROUPED>(d, p, units, scope); break;
    default: launch_format<float, GROUPED>(d, p, units, scope); break;
  }
}

bool qmv_aligned(const detail::QmmDesc& d, const detail::QmmArgs& a) {
  return aligned(a.x.raw_data(), 16) && aligned(a.w.raw_data(), pack_align(d.format.bits));
}

QmvParams qmv_params(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  QmvParams p{};
  copy_common_params(p, qmm_kernel_params(d, a, scope));
  p.gshift = d.format.group_size >= 32 ? __builtin_ctz(static_cast<unsigned>(d.format.group_size / 32)) : 0;
  return p;
}

}  // namespace

bool qmv_supports(const detail::QmmDesc& d) {
  return d.transpose && d.M >= 1 && d.M <= kQmvMaxM && d.K % 32 == 0 && d.N < (int64_t{1} << 31) &&
         d.K < (int64_t{1} << 31);
}

bool qmv_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  if (!qmv_aligned(d, a)) return false;
  launch_dtype<false>(d, qmv_params(d, a, scope), d.batch, scope);
  scope.check_launch("qmv");
  return true;
}

bool qmv_grouped_supports(const detail::QmmDesc& d) {
  return qmv_supports(d) && gather_grouping_pays(d, kQmvMaxM) && !solo_gemv_entries(d);
}

bool qmv_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  if (!qmv_aligned(d, a)) return false;
  const QmvParams u = qmv_params(d, a, scope);
  // Rows per item from the average rows per distinct expert.
  const int64_t avg = gather_rows_per_expert(d);
  const int rows_per_item = avg <= 4 ? 4 : kQmvMaxM;
  GatherPlan plan(scope, u.lhs, u.rhs, d.batch, d.M, d.x_batch, d.w_batch, rows_per_item, u.guard, u.out,
                  static_cast<int>(itemsize(d.dtype)), d.N);
  const QmvGroupedParams p{u.x, u.w, u.scales, u.biases, u.out, rows_per_item, u.N, u.K, u.gshift, plan.view()};
  launch_dtype<true>(d, p, plan.max_items(), scope);
  scope.check_launch("qmv (grouped gather)");
  return true;
}

}  // namespace mmkit::cuda
