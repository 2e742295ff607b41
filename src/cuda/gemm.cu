// Dense GPU matmuls: gather_mm / matmul and block_masked_mm.
//   gather_mm   out[l] (M, N) = a[lhs[l]] (M, K) @ b[rhs[l]] (K, N); b stored
//               (Bb, K, N) N-major or (Bb, N, K) K-major (desc.b_kmajor).
//   block_masked_mm  out = E(mask_out) * ((E(mask_lhs) * a) @ (E(mask_rhs) * b))
//               with bs x bs blocks (bs 32 or 64): bool out-mask blocks that are
//               false are written as zeros without any work, bool operand block
//               pairs with a false mask are skipped, float masks multiply (NaN
//               * 0 stays NaN, as on the CPU).
// Kernels:
//   gemm_sm80_mma   float16/bfloat16, tensor cores (mma.sync m16n8k16, float32
//                   accumulation), 64 x 64 x 32 tile, 4 warps, 2-stage cp.async;
//                   needs K % 8 == 0 and, for N-major b, N % 8 == 0 (16-byte
//                   chunks). Bound: this simple tile aims at >= 30% of the bf16
//                   tensor peak at large sizes (not yet measured).
//   grouped (cuda_gemm_grouped, dispatched first): gather_mm whose entries
//                   share experts (the rule of gather_qmm: >= 4 rows per expert
//                   on average, 2 ..= kGatherPlanMaxExperts experts, batch * M
//                   < 2^31), any dtype, M and layout: a plan built on the
//                   device (gather_plan.h) sorts the L * M rows by expert and
//                   cuts them into items of <= 64 rows (the tile's BM); one
//                   item per block row-tile, A rows gathered through the plan,
//                   rows past the item's count zero-filled, outputs scattered
//                   to the rows' out rows, b = the item's expert, so an
//                   expert's b is read once per item instead of once per entry.
//                   The tensor-core tile where gemm_sm80_mma applies (and a / b
//                   are 16-byte aligned), else the SIMT tile.
//   gemm_simt       any dtype / shape: float32 FMA, 64 x 64 x 16 tile.
//   block_masked    float32 FMA, one bs x bs output block per 256-thread block,
//                   work proportional to the unmasked blocks.
// Indices: one launch covers all L entries (grid.z; plan items when grouped);
// device-resident indices are checked on the device (runtime.h; by the plan
// kernel when grouped, which also zeroes a bad entry's output rows).
// Tests: tests/test_cuda_cross.cpp (CudaCross.GatherMm*, GatherMmGrouped*,
// BlockMasked*), conformance with MMKIT_TEST_DEVICE=gpu.
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/device/common.cuh"
#include "cuda/device/mma.cuh"
#include "cuda/device/simt_tile.cuh"
#include "cuda/gather_plan.h"
#include "cuda/runtime.h"

namespace mmkit::cuda {
namespace {
using detail::BlockMaskedArgs;
using detail::BlockMaskedDesc;
using detail::GemmArgs;
using detail::GemmDesc;

struct GemmParams {
  const void* a;
  const void* b;
  const int64_t* lhs;
  const int64_t* rhs;
  void* out;
  int64_t M, N, K;
  int kmajor;
  int64_t a_batch, b_batch, L;
  IndexGuard guard;
};

// The grouped instances' parameters (gemm_grouped_run): block z runs item z of
// the plan (up to BM rows of one expert), a struct of its own so that the
// ungrouped instances keep their parameters and code.
struct GemmGroupedParams {
  const void* a;
  const void* b;
  void* out;
  int64_t N, K;
  int kmajor;  // (the SIMT kernel; the tensor-core one takes it as a template argument)
  GatherPlanView plan;
};
template <bool GROUPED>
using GemmKernelParams = std::conditional_t<GROUPED, GemmGroupedParams, GemmParams>;

// ---- tensor-core gemm ------------------------------------------------------------

// GROUPED: work unit l is plan item l instead of batch entry l; the tile's
// rows are the item's rows (A rows gathered through plan.rows[begin + i].x_row,
// rows >= count zero-filled, outputs to plan.rows[begin + i].out_row), b is the
// item's expert; blockIdx.y is 0. Bad indices were reported, and their output
// rows zeroed, by the plan kernel.
template <typename T, bool KMAJOR, bool GROUPED>
__global__ void __launch_bounds__(MmaTile::THREADS) gemm_mma_kernel(GemmKernelParams<GROUPED> p) {
  constexpr int BM = MmaTile::BM, BN = MmaTile::BN, BK = MmaTile::BK, LDA = MmaTile::LDA, LDBT = MmaTile::LDBT;
  constexpr int kBElems = KMAJOR ? BN * LDA : BK * LDBT;
  __shared__ __align__(16) T As[2][BM * LDA];  // (stage, BM, BK)
  __shared__ __align__(16) T Bs[2][kBElems];   // (stage, BN, BK) K-major or (stage, BK, BN) N-major
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / 2, wn = warp % 2;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t N = p.N, K = p.K;
  const int KT = static_cast<int>(ceil_div(K, BK));
  const T* A = static_cast<const T*>(p.a);
  const T* B = static_cast<const T*>(p.b);
  T* O = static_cast<T*>(p.out);
  // Grouped: the item's rows as (A element offset, out element offset).
  int64_t* a_off = nullptr;
  int64_t* o_off = nullptr;
  int64_t M, n_work;  // ungrouped: rows per entry, entries; grouped: unused, plan items
  if constexpr (GROUPED) {
    __shared__ int64_t row_off[2][BM];
    a_off = row_off[0];
    o_off = row_off[1];
    M = BM;
    n_work = *p.plan.n_items;
  } else {
    M = p.M;
    n_work = p.L;
  }

  for (int64_t l = blockIdx.z; l < n_work; l += gridDim.z) {
    int64_t ai = 0, bi = 0;
    int rows = 0;  // grouped: the item's row count
    bool ok = true;
    if constexpr (GROUPED) {
      const GatherItem it = load_gather_item_block(p.plan, l, K, N, a_off, o_off);
      bi = it.expert;
      rows = it.count;
    } else {
      ai = p.lhs[l];
      bi = p.rhs[l];
      ok = index_ok(ai, l, p.a_batch, p.guard, ErrWhich::lhs) && index_ok(bi, l, p.b_batch, p.guard, ErrWhich::rhs);
    }
    float acc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
    if (ok) {
      const T* ab = A + (ai * M + m0) * K;
      auto issue = [&](int kt, int st) {
        const int64_t k0 = static_cast<int64_t>(kt) * BK;
        if constexpr (GROUPED) {
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            const int id = tid + q * MmaTile::THREADS;
            const int r = id / 4, c = (id % 4) * 8;
            const bool in = r < rows && k0 + c < K;
            cp_async16(As[st] + r * LDA + c, in ? A + a_off[r] + k0 + c : A, in);
          }
        } else {
          cp_async_tile_rows<T>(As[st], ab + k0, K, M - m0, K - k0, tid);
        }
        if constexpr (KMAJOR) {
          cp_async_tile_rows<T>(Bs[st], B + (bi * N + n0) * K + k0, K, N - n0, K - k0, tid);
        } else {
          const T* bb = B + (bi * K + k0) * N + n0;
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            const int id = tid + q * MmaTile::THREADS;
            const int k = id / 8, c = (id % 8) * 8;
            const bool in = k0 + k < K && n0 + c < N;
            cp_async16(Bs[st] + k * LDBT + c, in ? bb + k * N + c : bb, in);
          }
        }
      };
      issue(0, 0);
      cp_async_commit();
      for (int kt = 0; kt < KT; ++kt) {
        const int st = kt & 1;
        if (kt + 1 < KT) issue(kt + 1, st ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
          uint32_t af[2][4], bf[4][2];
          load_a_frags<T>(af, As[st], wm, ks, lane);
          if constexpr (KMAJOR) load_b_frags<T>(bf, Bs[st], wn, ks, lane);
          else load_b_frags_trans<T>(bf, Bs[st], wn, ks, lane);
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) mma16816<T>(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
        }
        __syncthreads();
      }
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t m = m0 + wm * 32 + mi * 16 + lane / 4 + (e >= 2 ? 8 : 0);
          const int64_t n = n0 + wn * 32 + ni * 8 + 2 * (lane % 4) + (e & 1);
          if constexpr (GROUPED) {
            if (m < rows && n < N) O[o_off[m] + n] = from_f<T>(acc[mi][ni][e]);
          } else {
            if (m < M && n < N) O[(l * M + m) * N + n] = from_f<T>(acc[mi][ni][e]);
          }
        }
  }
}

// ---- SIMT gemm (any dtype / shape) ------------------------------------------------

// GROUPED: as in gemm_mma_kernel (work unit l is plan item l, A rows
// gathered through the plan, b the item's expert, outputs scattered).
template <typename T, bool GROUPED>
__global__ void __launch_bounds__(SimtTile::THREADS) gemm_simt_kernel(GemmKernelParams<GROUPED> p) {
  constexpr int BM = SimtTile::BM, BN = SimtTile::BN, BK = SimtTile::BK;
  static_assert(SimtTile::THREADS >= BM, "one thread per item row loads its offsets");
  __shared__ float As[BK][BM + SimtTile::PAD];  // (BK, BM)
  __shared__ float Bs[BK][BN + SimtTile::PAD];  // (BK, BN)
  SimtTile t{As, Bs, {}};
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t N = p.N, K = p.K;
  const bool kmajor = p.kmajor != 0;
  const T* A = static_cast<const T*>(p.a);
  const T* B = static_cast<const T*>(p.b);
  T* O = static_cast<T*>(p.out);
  int64_t* a_off = nullptr;
  int64_t* o_off = nullptr;
  int64_t M, n_work;  // ungrouped: rows per entry, entries; grouped: unused, plan items
  if constexpr (GROUPED) {
    __shared__ int64_t row_off[2][BM];
    a_off = row_off[0];
    o_off = row_off[1];
    M = BM;
    n_work = *p.plan.n_items;
  } else {
    M = p.M;
    n_work = p.L;
  }
  for (int64_t l = blockIdx.z; l < n_work; l += gridDim.z) {
    int64_t ai = 0, bi = 0;
    int rows = 0;  // grouped: the item's row count
    bool ok = true;
    if constexpr (GROUPED) {
      const GatherItem it = load_gather_item_block(p.plan, l, K, N, a_off, o_off);
      bi = it.expert;
      rows = it.count;
    } else {
      ai = p.lhs[l];
      bi = p.rhs[l];
      ok = index_ok(ai, l, p.a_batch, p.guard, ErrWhich::lhs) && index_ok(bi, l, p.b_batch, p.guard, ErrWhich::rhs);
    }
    t.zero();
    if (ok) {
      for (int64_t k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
        for (int q = 0; q < (BM * BK) / SimtTile::THREADS; ++q) {
          const int idx = tid + q * SimtTile::THREADS;
          const int m = idx / BK, k = idx % BK;
          float v = 0.0f;
          if constexpr (GROUPED) {
            if (m < rows && k0 + k < K) v = to_f<T>(A[a_off[m] + k0 + k]);
          } else {
            if (m0 + m < M && k0 + k < K) v = to_f<T>(A[(ai * M + m0 + m) * K + k0 + k]);
          }
          As[k][m] = v;
        }
#pragma unroll
        for (int q = 0; q < (BN * BK) / SimtTile::THREADS; ++q) {
          const int idx = tid + q * SimtTile::THREADS;
          int n, k;
          if (kmajor) {
            n = idx / BK;
            k = idx % BK;
          } else {
            k = idx / BN;
            n = idx % BN;
          }
          const bool in = n0 + n < N && k0 + k < K;
          float v = 0.0f;
          if (in) v = to_f<T>(kmajor ? B[(bi * N + n0 + n) * K + k0 + k] : B[(bi * K + k0 + k) * N + n0 + n]);
          Bs[k][n] = v;
        }
        __syncthreads();
        t.mac(ty, tx);
        __syncthreads();
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
        if constexpr (GROUPED) {
          if (m < rows && n < N) O[o_off[m] + n] = from_f<T>(t.acc[i][j]);
        } else {
          if (m < M && n < N) O[(l * M + m) * N + n] = from_f<T>(t.acc[i][j]);
        }
      }
  }
}

// ---- block_masked_mm -------------------------------------------------------------------

struct MaskedParams {
  const void* a;
  const void* b;
  const int64_t* a_idx;
  const int64_t* b_idx;
  const float* mask_out;
  const float* mask_lhs;
  const float* mask_rhs;
  void* out;
  int64_t M, N, K, tm, tn, tk, L;
  int kmajor, out_bool, op_bool;
};

template <typename T, int BS>
__global__ void __launch_bounds__(256) block_masked_kernel(MaskedParams p) {
  constexpr int BK = 16, TPT = BS / 16;  // outputs per thread per dim
  __shared__ float As[BK][BS + 4];       // (BK, BS)
  __shared__ float Bs[BK][BS + 4];       // (BK, BS)
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t i = blockIdx.y, j = blockIdx.x;
  const int64_t m0 = i * BS, n0 = j * BS;
  const T* A = static_cast<const T*>(p.a);
  const T* B = static_cast<const T*>(p.b);
  T* O = static_cast<T*>(p.out);
  for (int64_t l = blockIdx.z; l < p.L; l += gridDim.z) {
    const int64_t ai = p.a_idx[l], bi = p.b_idx[l];  // built on the host, always valid
    const float om = p.mask_out ? p.mask_out[(l * p.tm + i) * p.tn + j] : 1.0f;
    float acc[TPT][TPT];
#pragma unroll
    for (int u = 0; u < TPT; ++u)
#pragma unroll
      for (int v = 0; v < TPT; ++v) acc[u][v] = 0.0f;
    const bool skip_block = p.mask_out && p.out_bool && om == 0.0f;  // uniform over the block
    if (!skip_block) {
      for (int64_t kb = 0; kb < p.tk; ++kb) {
        const float lw = p.mask_lhs ? p.mask_lhs[(l * p.tm + i) * p.tk + kb] : 1.0f;
        const float rw = p.mask_rhs ? p.mask_rhs[(l * p.tk + kb) * p.tn + j] : 1.0f;
        if (p.op_bool && (lw == 0.0f || rw == 0.0f)) continue;  // a zeroed operand block
        const int64_t kend = (kb + 1) * BS < p.K ? (kb + 1) * BS : p.K;
        for (int64_t k0 = kb * BS; k0 < kend; k0 += BK) {
#pragma unroll
          for (int q = 0; q < (BS * BK) / 256; ++q) {
            const int idx = tid + q * 256;
            const int m = idx / BK, k = idx % BK;
            const bool in = m0 + m < p.M && k0 + k < p.K;
            // Padding stays exactly 0 (a NaN mask must not reach valid outputs through it).
            As[k][m] = in ? lw * to_f<T>(A[(ai * p.M + m0 + m) * p.K + k0 + k]) : 0.0f;
          }
#pragma unroll
          for (int q = 0; q < (BS * BK) / 256; ++q) {
            const int idx = tid + q * 256;
            int n, k;
            if (p.kmajor) {
              n = idx / BK;
              k = idx % BK;
            } else {
              k = idx / BS;
              n = idx % BS;
            }
            const bool in = n0 + n < p.N && k0 + k < p.K;
            float v = 0.0f;
            if (in)
              v = rw * to_f<T>(p.kmajor ? B[(bi * p.N + n0 + n) * p.K + k0 + k] : B[(bi * p.K + k0 + k) * p.N + n0 + n]);
            Bs[k][n] = v;
          }
          __syncthreads();
#pragma unroll
          for (int k = 0; k < BK; ++k) {
            float av[TPT], bv[TPT];
#pragma unroll
            for (int u = 0; u < TPT; ++u) av[u] = As[k][ty + 16 * u];
#pragma unroll
            for (int v = 0; v < TPT; ++v) bv[v] = Bs[k][tx + 16 * v];
#pragma unroll
            for (int u = 0; u < TPT; ++u)
#pragma unroll
              for (int v = 0; v < TPT; ++v) acc[u][v] = fmaf(av[u], bv[v], acc[u][v]);
          }
          __syncthreads();
        }
      }
      if (p.mask_out && !p.out_bool) {
#pragma unroll
        for (int u = 0; u < TPT; ++u)
#pragma unroll
          for (int v = 0; v < TPT; ++v) acc[u][v] *= om;
      }
    }
#pragma unroll
    for (int u = 0; u < TPT; ++u)
#pragma unroll
      for (int v = 0; v < TPT; ++v) {
        const int64_t m = m0 + ty + 16 * u, n = n0 + tx + 16 * v;
        if (m < p.M && n < p.N) O[(l * p.M + m) * p.N + n] = from_f<T>(acc[u][v]);
      }
  }
}

// ---- host side ----------------------------------------------------------------------

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

GemmParams gemm_params(const GemmDesc& d, GemmArgs& g, const OpScope& scope) {
  GemmParams p{};
  p.a = g.a.raw_data();
  p.b = g.b.raw_data();
  p.lhs = g.lhs.data<int64_t>();
  p.rhs = g.rhs.data<int64_t>();
  p.out = g.out.raw_data();
  p.M = d.M;
  p.N = d.N;
  p.K = d.K;
  p.kmajor = d.b_kmajor ? 1 : 0;
  p.a_batch = d.a_batch;
  p.b_batch = d.b_batch;
  p.L = d.batch;
  p.guard = index_guard(scope.device(), d.op, d.indices_checked);
  return p;
}

dim3 tile_grid(const char* op, int64_t M, int64_t N, int64_t L, int tile) {
  const int64_t gy = ceil_div(M, tile);
  if (gy > 65535) throw_error(op, "M = ", M, " is too large for the GPU kernel grid (at most ", 65535 * tile, ").");
  return dim3(static_cast<unsigned>(ceil_div(N, tile)), static_cast<unsigned>(gy),
              static_cast<unsigned>(L < 65535 ? L : 65535));
}

template <bool GROUPED>
void launch_gemm_simt(const GemmDesc& d, const GemmKernelParams<GROUPED>& p, dim3 grid, const OpScope& scope) {
  switch (d.dtype) {
    case Dtype::float16: gemm_simt_kernel<__half, GROUPED><<<grid, SimtTile::THREADS, 0, scope.stream()>>>(p); break;
    case Dtype::bfloat16:
      gemm_simt_kernel<__nv_bfloat16, GROUPED><<<grid, SimtTile::THREADS, 0, scope.stream()>>>(p);
      break;
    default: gemm_simt_kernel<float, GROUPED><<<grid, SimtTile::THREADS, 0, scope.stream()>>>(p); break;
  }
}

void run_gemm_simt(const GemmDesc& d, GemmArgs& g, const OpScope& scope) {
  const GemmParams p = gemm_params(d, g, scope);
  const dim3 grid = tile_grid(d.op, d.M, d.N, d.batch, SimtTile::BM);
  launch_gemm_simt<false>(d, p, grid, scope);
  scope.check_launch("gemm_simt");
}

bool gemm_mma_supports(const GemmDesc& d) {
  if (d.dtype != Dtype::float16 && d.dtype != Dtype::bfloat16) return false;
  if (d.K == 0 || d.K % 8 != 0 || (!d.b_kmajor && d.N % 8 != 0)) return false;
  if (ceil_div(d.M, MmaTile::BM) > 65535) return false;
  return device_info(current_device()).cc_major >= 8;
}

/// gather_mm whose entries share experts (b matrices): the rule of gather_qmm
/// (gather_grouping_pays in qmm_kernels.h): >= 4 rows per expert on average,
/// 2 ..= kGatherPlanMaxExperts experts, batch * M < 2^31. Any dtype and shape:
/// the tensor-core tile where it applies, else the SIMT tile (float32, odd
/// K / N, unaligned operands).
bool gemm_grouped_supports(const GemmDesc& d) {
  if (d.batch < 2 || d.b_batch < 2 || d.b_batch > kGatherPlanMaxExperts || d.M < 1 || d.K == 0) return false;
  return d.batch * d.M >= 4 * d.b_batch && d.batch * d.M < (int64_t{1} << 31);
}

template <typename T, bool GROUPED>
void launch_gemm_mma(const GemmDesc& d, const GemmKernelParams<GROUPED>& p, dim3 grid, const OpScope& scope) {
  if (d.b_kmajor) gemm_mma_kernel<T, true, GROUPED><<<grid, MmaTile::THREADS, 0, scope.stream()>>>(p);
  else gemm_mma_kernel<T, false, GROUPED><<<grid, MmaTile::THREADS, 0, scope.stream()>>>(p);
}

void run_gemm_mma(const GemmDesc& d, GemmArgs& g, const OpScope& scope) {
  if (!aligned16(g.a.raw_data()) || !aligned16(g.b.raw_data())) return run_gemm_simt(d, g, scope);
  const GemmParams p = gemm_params(d, g, scope);
  const dim3 grid = tile_grid(d.op, d.M, d.N, d.batch, MmaTile::BM);
  if (d.dtype == Dtype::float16) launch_gemm_mma<__half, false>(d, p, grid, scope);
  else launch_gemm_mma<__nv_bfloat16, false>(d, p, grid, scope);
  scope.check_launch("gemm_sm80_mma");
}

/// Rows grouped by expert on the device (gather_plan.h, items of one tile's
/// BM rows), then the tensor-core gemm per item (float16 / bfloat16, aligned,
/// K % 8 == 0 ...: gemm_mma_supports) or else the SIMT one.
void gemm_grouped_run(const GemmDesc& d, GemmArgs& g, const OpScope& scope) {
  const bool mma = gemm_mma_supports(d) && aligned16(g.a.raw_data()) && aligned16(g.b.raw_data());
  const int bm = mma ? MmaTile::BM : SimtTile::BM;
  const GemmParams u = gemm_params(d, g, scope);
  GatherPlan plan(scope, u.lhs, u.rhs, d.batch, d.M, d.a_batch, d.b_batch, bm, u.guard, u.out,
                  static_cast<int>(itemsize(d.dtype)), d.N);
  const GemmGroupedParams p{u.a, u.b, u.out, u.N, u.K, u.kmajor, plan.view()};
  const int64_t items = plan.max_items();
  const dim3 grid(static_cast<unsigned>(ceil_div(d.N, mma ? MmaTile::BN : SimtTile::BN)), 1,
                  static_cast<unsigned>(items < 65535 ? items : 65535));
  if (!mma) {
    launch_gemm_simt<true>(d, p, grid, scope);
    scope.check_launch("gemm_simt (grouped gather)");
  } else {
    if (d.dtype == Dtype::float16) launch_gemm_mma<__half, true>(d, p, grid, scope);
    else launch_gemm_mma<__nv_bfloat16, true>(d, p, grid, scope);
    scope.check_launch("gemm_sm80_mma (grouped gather)");
  }
}

void run_gemm_mma_entry(const GemmDesc& d, GemmArgs& g, const Stream& s) {
  OpScope scope(s, d.op);
  run_gemm_mma(d, g, scope);
}

void run_gemm_grouped_entry(const GemmDesc& d, GemmArgs& g, const Stream& s) {
  OpScope scope(s, d.op);
  gemm_grouped_run(d, g, scope);
}

void run_gemm_simt_entry(const GemmDesc& d, GemmArgs& g, const Stream& s) {
  OpScope scope(s, d.op);
  run_gemm_simt(d, g, scope);
}

template <typename T, int BS>
void launch_masked(const BlockMaskedDesc& d, const MaskedParams& p, const OpScope& scope) {
  const dim3 grid = tile_grid("block_masked_mm", d.M, d.N, d.batch, BS);
  block_masked_kernel<T, BS><<<grid, 256, 0, scope.stream()>>>(p);
}

template <typename T>
void launch_masked_bs(const BlockMaskedDesc& d, const MaskedParams& p, const OpScope& scope) {
  if (d.block_size == 32) launch_masked<T, 32>(d, p, scope);
  else launch_masked<T, 64>(d, p, scope);
}

void run_block_masked(const BlockMaskedDesc& d, BlockMaskedArgs& g, const Stream& s) {
  OpScope scope(s, "block_masked_mm");
  MaskedParams p{};
  p.a = g.a.raw_data();
  p.b = g.b.raw_data();
  p.a_idx = g.a_idx.data<int64_t>();
  p.b_idx = g.b_idx.data<int64_t>();
  p.mask_out = g.mask_out.is_null() ? nullptr : g.mask_out.data<float>();
  p.mask_lhs = g.mask_lhs.is_null() ? nullptr : g.mask_lhs.data<float>();
  p.mask_rhs = g.mask_rhs.is_null() ? nullptr : g.mask_rhs.data<float>();
  p.out = g.out.raw_data();
  p.M = d.M;
  p.N = d.N;
  p.K = d.K;
  p.tm = d.tm();
  p.tn = d.tn();
  p.tk = d.tk();
  p.L = d.batch;
  p.kmajor = d.b_kmajor ? 1 : 0;
  p.out_bool = d.out_mask_bool ? 1 : 0;
  p.op_bool = d.op_masks_bool ? 1 : 0;
  switch (d.dtype) {
    case Dtype::float16: launch_masked_bs<__half>(d, p, scope); break;
    case Dtype::bfloat16: launch_masked_bs<__nv_bfloat16>(d, p, scope); break;
    default: launch_masked_bs<float>(d, p, scope); break;
  }
  scope.check_launch("block_masked");
}

}  // namespace

void register_gemm_kernels(detail::Registries& r) {
  r.gemm.add({"cuda_gemm_grouped", Device::Type::gpu, gemm_grouped_supports, run_gemm_grouped_entry, 20});
  r.gemm.add({"cuda_gemm_sm80_mma", Device::Type::gpu, gemm_mma_supports, run_gemm_mma_entry, 10});
  r.gemm.add({"cuda_gemm_simt", Device::Type::gpu, [](const GemmDesc&) { return true; }, run_gemm_simt_entry, 0});
  r.block_masked.add({"cuda_block_masked_simt", Device::Type::gpu, [](const BlockMaskedDesc&) { return true; },
                      run_block_masked, 0});
}

}  // namespace mmkit::cuda
