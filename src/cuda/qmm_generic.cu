// qmm_generic: the quantized matmul that accepts every valid descriptor:
//   out[l] (M, N) = x[lhs[l]] (M, K) @ W^T   (transpose=true,  w (N, K/pf))
//                 = x[lhs[l]] (M, K) @ W     (transpose=false, w (K, N/pf))
// any mode / bits / group size, float32, float16 or bfloat16 activations,
// odd shapes (M, N, K not multiples of anything; K = 0 gives zeros).
// Tile: 64 x 64 x 16 on 256 threads (device/simt_tile.cuh); each weight
// element is decoded once per block row and dequantized exactly like the CPU
// (s * q rounded, then + b rounded). Bound: CUDA-core FMA rate; this is the
// correctness fallback, the fast paths are qmv.cu and qmm_sm80.cu.
// Tests: tests/test_cuda_cross.cpp (CudaCross.QmmGeneric*, transpose=false,
// float32, odd shapes), conformance with MMKIT_TEST_DEVICE=gpu.
#include <cuda_runtime.h>

#include "cuda/device/common.cuh"
#include "cuda/device/simt_tile.cuh"
#include "cuda/qmm_kernels.h"
#include "formats/format.h"

namespace mmkit::cuda {
namespace {

struct GenericParams {
  const void* x;
  const uint32_t* w;
  const void* scales;
  const void* biases;
  const int64_t* lhs;
  const int64_t* rhs;
  void* out;
  int64_t M, N, K;
  int64_t rows, words, groups;  // per weight matrix: rows, words per row, groups per row
  int transpose;
  int mode;  // fmt::Mode
  int bits, gs;
  int64_t x_batch, w_batch, L;
  IndexGuard guard;
  GatherPlanView plan;  // grouped instances: work unit l is plan item l
};

template <typename T>
__device__ __forceinline__ float dequant(const GenericParams& p, int64_t wi, int64_t row, int64_t col) {
  const int64_t r = wi * p.rows + row;
  const uint32_t c = fmt::unpack_code(p.w + r * p.words, col, p.bits);
  const int64_t gi = r * p.groups + col / p.gs;
  const fmt::Mode mode = static_cast<fmt::Mode>(p.mode);
  if (mode == fmt::Mode::affine) {
    const float s = to_f<T>(static_cast<const T*>(p.scales)[gi]);
    const float b = to_f<T>(static_cast<const T*>(p.biases)[gi]);
    return __fadd_rn(__fmul_rn(s, static_cast<float>(c)), b);
  }
  const uint32_t sb = static_cast<const uint8_t*>(p.scales)[gi];
  const float s = mode == fmt::Mode::nvfp4 ? fmt::e4m3_to_float(sb) : fmt::e8m0_to_float(sb);
  const float e = mode == fmt::Mode::mxfp8 ? fmt::e4m3_to_float(c) : fmt::e2m1_to_float(c);
  return __fmul_rn(s, e);
}

// GROUPED: work unit l is plan item l (gather_plan.h): up to BM rows of one
// expert, x rows gathered through the plan, outputs scattered to the rows'
// out rows; blockIdx.y is 0 (bad indices: reported and zeroed by the plan).
template <typename T, bool GROUPED>
__global__ void __launch_bounds__(SimtTile::THREADS) qmm_generic_kernel(GenericParams p) {
  constexpr int BM = SimtTile::BM, BN = SimtTile::BN, BK = SimtTile::BK;
  __shared__ float As[BK][BM + SimtTile::PAD];  // (BK, BM)
  __shared__ float Bs[BK][BN + SimtTile::PAD];  // (BK, BN)
  SimtTile t{As, Bs, {}};
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const T* X = static_cast<const T*>(p.x);
  T* O = static_cast<T*>(p.out);
  static_assert(SimtTile::THREADS >= BM, "one thread per item row loads its offsets");
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
    const GatherUnit u = gather_unit_block<GROUPED>(p.plan, p.lhs, p.rhs, l, p.K, p.N, p.x_batch, p.w_batch, p.guard,
                                                    p.M - m0, a_off, o_off);
    const int64_t xi = u.x, wi = u.w;
    const int64_t rows = u.rows;  // the tile's valid rows
    const bool ok = u.ok;         // uniform over the block, so the barriers below are safe
    t.zero();
    if (ok) {
      for (int64_t k0 = 0; k0 < p.K; k0 += BK) {
#pragma unroll
        for (int q = 0; q < (BM * BK) / SimtTile::THREADS; ++q) {
          const int idx = tid + q * SimtTile::THREADS;
          const int m = idx / BK, k = idx % BK;
          const bool in = m < rows && k0 + k < p.K;
          As[k][m] = !in ? 0.0f
                         : to_f<T>(GROUPED ? X[a_off[m] + k0 + k] : X[(xi * p.M + m0 + m) * p.K + k0 + k]);
        }
#pragma unroll
        for (int q = 0; q < (BN * BK) / SimtTile::THREADS; ++q) {
          const int idx = tid + q * SimtTile::THREADS;
          int n, k;
          if (p.transpose) {  // rows are n: walk k fastest (along the packed row)
            n = idx / BK;
            k = idx % BK;
          } else {  // rows are k: walk n fastest
            k = idx / BN;
            n = idx % BN;
          }
          const bool in = n0 + n < p.N && k0 + k < p.K;
          float v = 0.0f;
          if (in) v = p.transpose ? dequant<T>(p, wi, n0 + n, k0 + k) : dequant<T>(p, wi, k0 + k, n0 + n);
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
          if (m < rows && n < p.N) O[o_off[m] + n] = from_f<T>(t.acc[i][j]);
        } else {
          if (m < p.M && n < p.N) O[(l * p.M + m) * p.N + n] = from_f<T>(t.acc[i][j]);
        }
      }
  }
}

template <bool GROUPED>
void launch_generic(const detail::QmmDesc& d, const GenericParams& p, dim3 grid, const OpScope& scope) {
  switch (d.dtype) {
    case Dtype::float16: qmm_generic_kernel<__half, GROUPED><<<grid, SimtTile::THREADS, 0, scope.stream()>>>(p); break;
    case Dtype::bfloat16:
      qmm_generic_kernel<__nv_bfloat16, GROUPED><<<grid, SimtTile::THREADS, 0, scope.stream()>>>(p);
      break;
    default: qmm_generic_kernel<float, GROUPED><<<grid, SimtTile::THREADS, 0, scope.stream()>>>(p); break;
  }
}

GenericParams generic_params(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  GenericParams p{};
  copy_common_params(p, qmm_kernel_params(d, a, scope));
  p.M = d.M, p.N = d.N, p.K = d.K;  // (64-bit here: the generic kernel takes any shape)
  p.rows = d.w_rows();
  p.words = d.words_per_row();
  p.groups = d.groups_per_row();
  p.transpose = d.transpose ? 1 : 0;
  p.mode = static_cast<int>(d.format.mode);
  p.bits = d.format.bits;
  p.gs = d.format.group_size;
  return p;
}

}  // namespace

void qmm_generic_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  const GenericParams p = generic_params(d, a, scope);
  const int64_t gy = ceil_div(d.M, SimtTile::BM);
  if (gy > 65535) throw_error(d.op, "M = ", d.M, " is too large for the GPU kernel grid (at most ", 65535 * 64, ").");
  const dim3 grid(static_cast<unsigned>(ceil_div(d.N, SimtTile::BN)), static_cast<unsigned>(gy),
                  static_cast<unsigned>(d.batch < 65535 ? d.batch : 65535));
  launch_generic<false>(d, p, grid, scope);
  scope.check_launch("qmm_generic");
}

bool qmm_generic_grouped_supports(const detail::QmmDesc& d) {
  return d.K > 0 && gather_grouping_pays(d, int64_t{1} << 31);
}

void qmm_generic_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  GenericParams p = generic_params(d, a, scope);
  GatherPlan plan(scope, p.lhs, p.rhs, d.batch, d.M, d.x_batch, d.w_batch, SimtTile::BM, p.guard, p.out,
                  static_cast<int>(itemsize(d.dtype)), d.N);
  p.plan = plan.view();
  const int64_t items = plan.max_items();
  const dim3 grid(static_cast<unsigned>(ceil_div(d.N, SimtTile::BN)), 1,
                  static_cast<unsigned>(items < 65535 ? items : 65535));
  launch_generic<true>(d, p, grid, scope);
  scope.check_launch("qmm_generic (grouped gather)");
}

}  // namespace mmkit::cuda
