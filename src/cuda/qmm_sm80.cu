// qmm_sm80: tensor-core quantized matmul for more activation rows,
//   out[l] (M, N) = x[lhs[l]] (M, K) @ dequantize(w[rhs[l]]) (N, K)^T,
// float16 / bfloat16 activations, transpose=true, K % 32 == 0, every mode.
//
// The weights are not rounded to T: the tile holds the raw codes (affine) or
// element values (E2M1 / E4M3), all exact in T, and the tensor cores compute
// dot(x, q) per group in float32; a second mma against a ones column gives
// sum(x) per group and row. At each group end
//   acc += s * dot(x, q) + b * sum(x)
// in float32, so only the float32 accumulation rounds (SPEC decision 5).
// A thread that met a group with a non-finite sum(x), scale or bias
// recomputes its outputs element by element, so Inf and NaN propagate exactly
// as in the reference.
// Tile: 64 x 64 x 32 (one pack of 32 codes per weight row and k-step), 4
// warps of 32 x 32; x tiles and the packed weight codes stream through a
// 4-stage cp.async ring (3 k-steps in flight), each k-step's codes are
// decoded from shared memory into one T tile before its mma.
// Bound: dequantisation work at large M (about 3 ops per code per 64 rows
// of M). Aim of this version: correctness for every format and >= 25% of the
// bf16 tensor peak at M >= 512; measured on an H100 at 8192 x 8192: 63 TFLOP/s
// at M = 256 and 86 TFLOP/s at M = 2048 (not reached; docs/kernels/cuda.md).
// Tests: tests/test_cuda_cross.cpp (CudaCross.Qmm* with M in 9..300),
// conformance with MMKIT_TEST_DEVICE=gpu.
#include <cuda_runtime.h>

#include "cuda/device/common.cuh"
#include "cuda/device/decode.cuh"
#include "cuda/device/mma.cuh"
#include "cuda/qmm_kernels.h"

namespace mmkit::cuda {
namespace {

constexpr int kStages = 4;  // k-steps of x and packed weights in flight (cp.async ring)

struct MmaQParams : QmmKernelParams {
  int gs = 0;  // group size
};

/// Codes 16*HALF .. 16*HALF+15 of a pack as 8 packed T pairs.
template <typename T, QKind KIND, int BITS, int HALF>
__device__ __forceinline__ void decode_half(const uint32_t (&pk)[BITS], uint32_t (&v)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
    v[i] = pack2<T>(code_value<KIND>(pack_code<BITS>(pk, 16 * HALF + 2 * i)),
                    code_value<KIND>(pack_code<BITS>(pk, 16 * HALF + 2 * i + 1)));
}

/// Exact out[m][n] = sum_k x[m][k] * w[n][k], element by element: used for the
/// (rare) elements whose groups had a non-finite sum(x), scale or bias, so Inf
/// and NaN propagate exactly as in the reference.
template <typename T, QKind KIND, int BITS>
__device__ __noinline__ float exact_dot(const T* xm, const uint32_t* wrow, const void* scales, const void* biases,
                                        int64_t srow, int K, int gs) {
  float e = 0.0f;
  for (int k = 0; k < K; ++k) {
    const uint32_t c = fmt::unpack_code(wrow, k, BITS);
    const int64_t si = srow + k / gs;
    float w;
    if constexpr (KIND == QKind::affine) {
      w = fmaf(to_f<T>(static_cast<const T*>(scales)[si]), static_cast<float>(c), to_f<T>(static_cast<const T*>(biases)[si]));
    } else {
      const uint32_t sb = static_cast<const uint8_t*>(scales)[si];
      const float sc = gs == 16 ? fmt::e4m3_to_float(sb) : fmt::e8m0_to_float(sb);
      w = __fmul_rn(sc, KIND == QKind::e2m1 ? fmt::e2m1_to_float(c) : fmt::e4m3_to_float(c));
    }
    e = fmaf(to_f<T>(xm[k]), w, e);
  }
  return e;
}

// GROUPED: work unit l is plan item l (gather_plan.h): up to BM rows of one
// expert, x rows gathered through the plan (rows past the item's count
// zero-filled), outputs scattered to the rows' out rows; blockIdx.y is 0.
// Bad indices were reported, and their output rows zeroed, by the plan kernel.
template <typename T, QKind KIND, int BITS, int GPP, bool GROUPED>
__global__ void __launch_bounds__(MmaTile::THREADS) qmm_mma_kernel(MmaQParams p) {
  constexpr int BM = MmaTile::BM, BN = MmaTile::BN, LDA = MmaTile::LDA;
  constexpr int S = kStages;
  constexpr bool kAffine = KIND == QKind::affine;
  constexpr int CW = BITS % 4 == 0 ? 4 : (BITS % 2 == 0 ? 2 : 1);  // words per cp.async of packed codes
  __shared__ __align__(16) T As[S][BM * LDA];             // (stage, BM, BK) x tiles
  __shared__ __align__(16) uint32_t Wq[S][BN * BITS];     // (stage, BN, BITS) packed codes
  __shared__ __align__(16) T Bs[BN * LDA];                // (BN, BK) decoded codes
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / 2, wn = warp % 2;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int M = p.M, N = p.N, K = p.K;
  const int P = K / 32, G = K / p.gs;
  const int brow = tid % BN, bhalf = tid / BN;  // decode assignment: weight row, half of its pack
  const T* X = static_cast<const T*>(p.x);
  T* O = static_cast<T*>(p.out);
  static_assert(MmaTile::THREADS >= BM, "one thread per item row loads its offsets");
  int64_t* a_off = nullptr;  // grouped: the item's rows as (x element offset, out element offset)
  int64_t* o_off = nullptr;
  int64_t n_work = p.L;
  if constexpr (GROUPED) {
    __shared__ int64_t row_off[2][BM];
    a_off = row_off[0];
    o_off = row_off[1];
    n_work = *p.plan.n_items;
  }

  for (int64_t l = blockIdx.z; l < n_work; l += gridDim.z) {
    const GatherUnit u =
        gather_unit_block<GROUPED>(p.plan, p.lhs, p.rhs, l, K, N, p.x_batch, p.w_batch, p.guard, M - m0, a_off, o_off);
    const int64_t xi = u.x, wi = u.w;
    const int rows = static_cast<int>(u.rows);  // the tile's valid rows
    const bool ok = u.ok;
    float acc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;

    if (ok) {  // uniform over the block
      const T* xb = X + (xi * M + m0) * static_cast<int64_t>(K);
      const uint32_t* wbase = p.w + (wi * N + n0) * static_cast<int64_t>(P) * BITS;
      const int64_t sbase = (wi * N) * static_cast<int64_t>(G);
      float g[2][4][4], xa[2][4];
      bool nonfinite = false;  // some group of this thread's elements had non-finite data
      auto zero_groups = [&] {
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
          for (int e = 0; e < 4; ++e) xa[mi][e] = 0.0f;
#pragma unroll
          for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) g[mi][ni][e] = 0.0f;
        }
      };
      // acc += s * dot + b * sum(x) for group `grp` of the thread's 8 columns.
      auto fold = [&](int grp) {
        float s[4][2], b[4][2];
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int n = n0 + wn * 32 + ni * 8 + 2 * (lane % 4) + j;
            s[ni][j] = 0.0f;
            b[ni][j] = 0.0f;
            if (n < N) {
              const int64_t si = sbase + static_cast<int64_t>(n) * G + grp;
              if constexpr (kAffine) {
                s[ni][j] = to_f<T>(static_cast<const T*>(p.scales)[si]);
                b[ni][j] = to_f<T>(static_cast<const T*>(p.biases)[si]);
              } else {
                s[ni][j] = fp_scale<KIND, GPP == 2 ? 16 : 32>(static_cast<const uint8_t*>(p.scales)[si]);
              }
            }
          }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
          for (int j = 0; j < 2; ++j) nonfinite |= !isfinite(s[ni][j]) || !isfinite(b[ni][j]);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
          for (int e = 0; e < 4; e += 2) nonfinite |= !isfinite(xa[mi][e]);
#pragma unroll
          for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              acc[mi][ni][e] = fmaf(s[ni][e & 1], g[mi][ni][e], acc[mi][ni][e]);
              if constexpr (kAffine) acc[mi][ni][e] = fmaf(b[ni][e & 1], xa[mi][e], acc[mi][ni][e]);
            }
        }
        zero_groups();
      };
      // One k-step (32 codes) of x and packed weights into stage `st`.
      auto issue = [&](int kt, int st) {
        if constexpr (GROUPED) {
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            const int id = tid + q * MmaTile::THREADS;
            const int r = id / 4, c = (id % 4) * 8;
            const bool in = r < rows && kt * 32 + c < K;
            cp_async16(As[st] + r * LDA + c, in ? X + a_off[r] + kt * 32 + c : X, in);
          }
        } else {
          cp_async_tile_rows<T>(As[st], xb + kt * 32, K, rows, K - kt * 32, tid);
        }
        constexpr int chunks = BN * BITS / CW;
#pragma unroll
        for (int q = 0; q < (chunks + MmaTile::THREADS - 1) / MmaTile::THREADS; ++q) {
          const int id = tid + q * MmaTile::THREADS;
          if (id < chunks) {
            const int r = id / (BITS / CW), j = (id % (BITS / CW)) * CW;
            const bool in = n0 + r < N;
            const uint32_t* src = wbase + (static_cast<int64_t>(r) * P + kt) * BITS + j;
            cp_async_ca<4 * CW>(&Wq[st][r * BITS + j], in ? src : wbase, in);
          }
        }
      };
      zero_groups();
#pragma unroll
      for (int st = 0; st < S - 1; ++st) {
        if (st < P) issue(st, st);
        cp_async_commit();
      }
      for (int kt = 0; kt < P; ++kt) {
        const int st = kt % S;
        cp_async_wait<S - 2>();
        __syncthreads();  // stage kt landed everywhere; the previous k-step's reads are done
        {
          uint32_t pk[BITS];
#pragma unroll
          for (int i = 0; i < BITS; ++i) pk[i] = Wq[st][brow * BITS + i];
          uint32_t v[8];
          if (bhalf == 0) decode_half<T, KIND, BITS, 0>(pk, v);
          else decode_half<T, KIND, BITS, 1>(pk, v);
          uint4* dst = reinterpret_cast<uint4*>(Bs + brow * LDA + 16 * bhalf);
          dst[0] = make_uint4(v[0], v[1], v[2], v[3]);
          dst[1] = make_uint4(v[4], v[5], v[6], v[7]);
        }
        if (kt + S - 1 < P) issue(kt + S - 1, (kt + S - 1) % S);
        cp_async_commit();
        __syncthreads();  // Bs ready
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
          uint32_t a[2][4], bf[4][2];
          load_a_frags<T>(a, As[st], wm, ks, lane);
          load_b_frags<T>(bf, Bs, wn, ks, lane);
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) mma16816<T>(g[mi][ni], a[mi], bf[ni][0], bf[ni][1]);
          // sum(x) per row and group: the affine bias term, and the finiteness check.
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) mma16816<T>(xa[mi], a[mi], ones2<T>(), ones2<T>());
          if constexpr (GPP == 2) fold(kt * 2 + ks);
        }
        if constexpr (GPP == 1) {
          if (((kt + 1) * 32) % p.gs == 0) fold((kt * 32) / p.gs);
        }
      }
      cp_async_wait<0>();
      __syncthreads();  // before the next batch entry reuses the stages
      if (nonfinite) {
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int m = m0 + wm * 32 + mi * 16 + lane / 4 + (e >= 2 ? 8 : 0);
              const int n = n0 + wn * 32 + ni * 8 + 2 * (lane % 4) + (e & 1);
              if (m - m0 < rows && n < N)
                acc[mi][ni][e] = exact_dot<T, KIND, BITS>(GROUPED ? X + a_off[m] : X + (xi * M + m) * static_cast<int64_t>(K),
                                                          p.w + (wi * N + n) * static_cast<int64_t>(P) * BITS, p.scales,
                                                          p.biases, sbase + static_cast<int64_t>(n) * G, K, p.gs);
            }
      }
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int m = m0 + wm * 32 + mi * 16 + lane / 4 + (e >= 2 ? 8 : 0);
          const int n = n0 + wn * 32 + ni * 8 + 2 * (lane % 4) + (e & 1);
          if constexpr (GROUPED) {
            if (m < rows && n < N) O[o_off[m] + n] = from_f<T>(acc[mi][ni][e]);
          } else {
            if (m < M && n < N) O[(l * M + m) * static_cast<int64_t>(N) + n] = from_f<T>(acc[mi][ni][e]);
          }
        }
  }
}

template <typename T, QKind KIND, int BITS, int GPP, bool GROUPED>
void launch(const MmaQParams& p, dim3 grid, const OpScope& scope) {
  qmm_mma_kernel<T, KIND, BITS, GPP, GROUPED><<<grid, MmaTile::THREADS, 0, scope.stream()>>>(p);
}

template <typename T, bool GROUPED>
void launch_format(const detail::QmmDesc& d, const MmaQParams& p, dim3 grid, const OpScope& scope) {
  switch (d.format.mode) {
    case fmt::Mode::affine:
      switch (d.format.bits) {
        case 2: return launch<T, QKind::affine, 2, 1, GROUPED>(p, grid, scope);
        case 3: return launch<T, QKind::affine, 3, 1, GROUPED>(p, grid, scope);
        case 4: return launch<T, QKind::affine, 4, 1, GROUPED>(p, grid, scope);
        case 5: return launch<T, QKind::affine, 5, 1, GROUPED>(p, grid, scope);
        case 6: return launch<T, QKind::affine, 6, 1, GROUPED>(p, grid, scope);
        default: return launch<T, QKind::affine, 8, 1, GROUPED>(p, grid, scope);
      }
    case fmt::Mode::mxfp4: return launch<T, QKind::e2m1, 4, 1, GROUPED>(p, grid, scope);
    case fmt::Mode::nvfp4: return launch<T, QKind::e2m1, 4, 2, GROUPED>(p, grid, scope);
    case fmt::Mode::mxfp8: return launch<T, QKind::e4m3, 8, 1, GROUPED>(p, grid, scope);
  }
}

bool qmm_mma_aligned(const detail::QmmDesc& d, const detail::QmmArgs& a) {
  return aligned(a.x.raw_data(), 16) && aligned(a.w.raw_data(), pack_align(d.format.bits));
}

MmaQParams qmm_mma_params(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  MmaQParams p;
  static_cast<QmmKernelParams&>(p) = qmm_kernel_params(d, a, scope);
  p.gs = d.format.group_size;
  return p;
}

}  // namespace

bool qmm_mma_supports(const detail::QmmDesc& d) {
  if (!d.transpose || (d.dtype != Dtype::float16 && d.dtype != Dtype::bfloat16)) return false;
  if (d.M <= kQmvMaxM || d.K % 32 != 0 || d.K == 0) return false;
  if (qmv_mma_supports(d)) return false;  // the GEMV kernel covers these rows
  if (d.M >= (int64_t{1} << 31) / 2 || d.N >= (int64_t{1} << 31) || d.K >= (int64_t{1} << 31)) return false;
  if (ceil_div(d.M, MmaTile::BM) > 65535) return false;
  const DeviceInfo& info = device_info(current_device());
  return info.cc_major >= 8;
}

bool qmm_mma_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  if (!qmm_mma_aligned(d, a)) return false;
  const MmaQParams p = qmm_mma_params(d, a, scope);
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, MmaTile::BN)), static_cast<unsigned>(ceil_div(p.M, MmaTile::BM)),
                  static_cast<unsigned>(p.L < 65535 ? p.L : 65535));
  if (d.dtype == Dtype::float16) launch_format<__half, false>(d, p, grid, scope);
  else launch_format<__nv_bfloat16, false>(d, p, grid, scope);
  scope.check_launch("qmm_sm80_mma");
  return true;
}

bool qmm_mma_grouped_supports(const detail::QmmDesc& d) {
  if (!d.transpose || (d.dtype != Dtype::float16 && d.dtype != Dtype::bfloat16)) return false;
  // More than 8 rows per entry, or solo entries of the one-row GEMV (grouped
  // here from solo_group_from(d) rows per expert, qmm.cpp).
  if ((d.M <= kQmvMaxM && !solo_gemv_entries(d)) || d.K % 32 != 0 || d.K == 0) return false;
  if (d.N >= (int64_t{1} << 31) || d.K >= (int64_t{1} << 31)) return false;
  if (!gather_grouping_pays(d, int64_t{1} << 31)) return false;
  return device_info(current_device()).cc_major >= 8;
}

bool qmm_mma_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  if (!qmm_mma_aligned(d, a)) return false;
  MmaQParams p = qmm_mma_params(d, a, scope);
  GatherPlan plan(scope, p.lhs, p.rhs, d.batch, d.M, d.x_batch, d.w_batch, MmaTile::BM, p.guard, p.out,
                  static_cast<int>(itemsize(d.dtype)), d.N);
  p.plan = plan.view();
  const int64_t items = plan.max_items();
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, MmaTile::BN)), 1,
                  static_cast<unsigned>(items < 65535 ? items : 65535));
  if (d.dtype == Dtype::float16) launch_format<__half, true>(d, p, grid, scope);
  else launch_format<__nv_bfloat16, true>(d, p, grid, scope);
  scope.check_launch("qmm_sm80_mma (grouped gather)");
  return true;
}

}  // namespace mmkit::cuda
