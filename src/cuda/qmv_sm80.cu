// qmv_sm80: tensor-core GEMV for 4-bit affine weights and few rows,
//   out[l] (M, N) = x[lhs[l]] (M, K) @ dequantize(w[rhs[l]]) (N, K)^T,
// 2 <= M <= 32 (1, 2 or 4 tiles of 8 columns), float16 / bfloat16 activations,
// transpose=true, K % 128 == 0, group size 32 / 64 / 128.
//
// mma.sync m16n8k16 with the weights as A (16 rows x 16 k) and x^T as B
// (16 k x 8 columns = the M rows), float32 accumulation. Codes go into A
// exactly (a nibble pair (i, i+4) of a word becomes one T pair with a LOP3
// and one subtraction of the magic 128 / 1024); the k order inside an mma is
// a permutation of the physical codes, applied identically to x (4 PRMTs per
// 8 activations), so the dot product is unchanged. A second mma against a
// ones matrix gives sum(x) per group, and each group is folded in float32:
//   acc += s * dot(x, q) + b * sum(x).
// Thread (g, c) of a warp (g = lane / 4, c = lane % 4) takes W = gs / 32
// consecutive words of rows g and g + 8 per group, so every mma step lies in
// one group. Every group is folded without a test; an output whose sum ends
// not finite (a non-finite x, scale or bias in the warp's K range, or an
// overflow) is recomputed over the warp's groups element by element
// (x * (s * q + b)), so Inf and NaN propagate exactly as in the reference.
// Tile: a block is 4 warps on 16 weight rows, each warp a quarter of K; the
// codes stream through an 8-slot ring in shared memory filled by coalesced
// 16-byte cp.async (7 k-tiles of 16 rows x 64 B in flight per warp), the
// groups' scales and biases go into registers 3 tiles ahead, and a tile's x
// (16 bytes per word and m-tile, from global memory / L1) is loaded before
// the tile's ring wait and decode; warps are reduced through shared memory.
// Bound: weight bandwidth; the aim is a time flat in M up to 32 at the copy
// bandwidth. Measured on an H100 at 8192 x 8192 (docs/kernels/cuda.md, run
// 48): 32.0 / 43.5 / 65.0 us at M = 8 / 16 / 32 (before the x loads moved
// ahead and the per-group finiteness tests went: 42.3 / 84.5 / 178.6 us);
// loading the next tile's x one tile ahead as well was slower at M = 8
// (34.9 us; it spilled at one m-tile). src/cuda/tools/cuda_gemv_bench.cu measures it.
// Tests: tests/test_cuda_cross.cpp (CudaCross.Qmm*), conformance, NaN/Inf tests.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/device/common.cuh"
#include "cuda/device/decode.cuh"
#include "cuda/device/mma.cuh"
#include "cuda/gather_plan.h"
#include "cuda/qmm_kernels.h"

namespace mmkit::cuda {
namespace {

constexpr int kWarps = 4;   // K split inside a block
constexpr int kRowsPerBlock = 16;

struct QmvMmaParams {
  const void* x;
  const uint32_t* w;
  const void* scales;
  const void* biases;
  const int64_t* lhs;
  const int64_t* rhs;
  void* out;
  int M, N, K;
  int64_t x_batch, w_batch, L;
  IndexGuard guard;
  // Grouped gather (plan.items != nullptr): block z runs item z of the plan
  // (one expert, up to 8 * MT rows gathered from any entries) instead of
  // batch entry z; M is then the plan's rows per item.
  GatherPlanView plan;
};

/// The low 16 bits of b as a T (float16 / bfloat16) value.
template <typename T>
__device__ __forceinline__ float half_bits_to_f(uint32_t b) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __uint_as_float(b << 16);
  else return __half2float(__ushort_as_half(static_cast<unsigned short>(b)));
}

/// Nibbles (i, i + 4) of v >> 4i as an exact T pair (the shift is the caller's).
template <typename T>
__device__ __forceinline__ uint32_t dec_pair(uint32_t v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const uint32_t h = (v & 0x000F000Fu) | 0x43004300u;  // 128 + q
    __nv_bfloat162 r = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&h), __floats2bfloat162_rn(128.0f, 128.0f));
    return *reinterpret_cast<uint32_t*>(&r);
  } else {
    const uint32_t h = (v & 0x000F000Fu) | 0x64006400u;  // 1024 + q
    __half2 r = __hsub2(*reinterpret_cast<const __half2*>(&h), __floats2half2_rn(1024.0f, 1024.0f));
    return *reinterpret_cast<uint32_t*>(&r);
  }
}

/// Exact contribution of one group to out[row][m]: x * (s * q + b) element by
/// element (taken only when the group's data is not finite).
template <typename T, int GS>
__device__ __noinline__ float exact_group(const T* xm, const uint32_t* wr, float s, float b) {
  float e = 0.0f;
  for (int k = 0; k < GS; ++k) {
    const float q = static_cast<float>((wr[k / 8] >> (4 * (k % 8))) & 15u);
    e = fmaf(to_f<T>(xm[k]), fmaf(s, q, b), e);
  }
  return e;
}

/// The exact sum over groups [g0, g1) of one (row, x row) output: taken at the
/// end for an output whose fast sum is not finite (non-finite x, scale or
/// bias somewhere in the warp's K range, or an overflow).
template <typename T, int GS>
__device__ __noinline__ float exact_groups(const T* xm, const uint32_t* wr, const T* srow, const T* brow, int g0,
                                           int g1) {
  float e = 0.0f;
  for (int grp = g0; grp < g1; ++grp)
    e += exact_group<T, GS>(xm + grp * GS, wr + grp * (GS / 8), to_f<T>(srow[grp]), to_f<T>(brow[grp]));
  return e;
}

// MT = 1 keeps <= 128 registers so 4 blocks (16 warps) fit per SM: one wave of
// 512 blocks for N = 8192 on 132 SMs.
template <typename T, int GS, int MT>
__global__ void __launch_bounds__(kWarps * 32, MT == 1 ? 4 : 2) qmv_mma_kernel(QmvMmaParams p) {
  constexpr int kDepth = 8;    // ring slots: 7 k-tiles (7 KB per warp) in flight
  constexpr int W = GS / 32;   // words per thread, row and group
  constexpr int CH = 4 / W;    // groups per k-tile of 128 codes
  __shared__ float red[kWarps][kRowsPerBlock][8 * MT];  // (warp, row, m) partial sums
  // (warp, slot, row, word): the warp's 16 rows x 128 codes of a k-tile, row
  // pitch 20 words (conflict-free fragment reads). The warp copies the tile
  // with 16-byte cp.async.cg (coalesced, not cached in L1, which keeps x
  // there) and each lane then reads its fragment words: a __syncwarp orders
  // the copies of other lanes before the reads.
  constexpr int kPitch = 20;
  __shared__ __align__(16) uint32_t ring[kWarps][kDepth][16 * kPitch];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int M = p.M, N = p.N, K = p.K;
  const int n0 = blockIdx.x * kRowsPerBlock;
  const int ra = n0 + g, rb = n0 + g + 8;
  const bool va = ra < N, vb = rb < N;
  const int words_per_row = K / 8;
  const int tiles = K / 128, G = K / GS;
  const int tb = static_cast<int>(static_cast<int64_t>(tiles) * warp / kWarps);
  const int te = static_cast<int>(static_cast<int64_t>(tiles) * (warp + 1) / kWarps);
  const T* X = static_cast<const T*>(p.x);
  const T* S = static_cast<const T*>(p.scales);
  const T* B = static_cast<const T*>(p.biases);
  T* O = static_cast<T*>(p.out);
  const uint32_t ones = std::is_same_v<T, __nv_bfloat16> ? 0x3F803F80u : 0x3C003C00u;

  const bool grouped = p.plan.items != nullptr;
  const int64_t n_work = grouped ? *p.plan.n_items : p.L;
  for (int64_t l = blockIdx.z; l < n_work; l += gridDim.z) {
    int64_t xi = 0, wi = 0, rbegin = 0;
    int R = M;  // rows (columns of B) of this work unit
    bool ok = true;
    if (grouped) {
      const GatherItem it = p.plan.items[l];
      wi = it.expert;
      R = it.count;
      rbegin = it.begin;
    } else {
      xi = p.lhs[l];
      wi = p.rhs[l];
      ok = index_ok(xi, l, p.x_batch, p.guard, ErrWhich::lhs) && index_ok(wi, l, p.w_batch, p.guard, ErrWhich::rhs);
    }
    // Row m of this unit in the flattened x (Bx * M, K) and out (L * M, N).
    auto x_row = [&](int m) -> int64_t { return grouped ? p.plan.rows[rbegin + m].x_row : xi * M + m; };
    auto out_row = [&](int m) -> int64_t { return grouped ? p.plan.rows[rbegin + m].out_row : l * M + m; };
    float acc[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][e] = 0.0f;
    if (ok) {
      // Thread (g, c) supplies x rows g, g + 8, ... (one per 8-column m-tile).
      const T* xr[MT];
      bool xv[MT];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        xv[mt] = mt * 8 + g < R;
        xr[mt] = X + x_row(xv[mt] ? mt * 8 + g : 0) * static_cast<int64_t>(K);
      }
      const int64_t sa = (wi * N + ra) * static_cast<int64_t>(G), sb = (wi * N + rb) * static_cast<int64_t>(G);

      // Per k-tile and row: 4 words of codes (cp.async into the ring, kDepth - 1
      // tiles ahead) and the CH groups' scales and biases (raw 16-bit patterns,
      // SW words, into a register ring kScaleDepth - 1 tiles ahead).
      constexpr int SW = CH == 4 ? 2 : 1;
      constexpr int kScaleDepth = 4;
      struct Tile {
        uint32_t sa[SW], ba[SW], sb[SW], bb[SW];
      };
      Tile buf[kScaleDepth];
      auto load_raw = [&](uint32_t (&dst)[SW], const T* src, bool v) {
        if (!v) {
#pragma unroll
          for (int i = 0; i < SW; ++i) dst[i] = 0u;
        } else if constexpr (CH == 4) {
          const uint2 r = __ldg(reinterpret_cast<const uint2*>(src));
          dst[0] = r.x;
          dst[SW - 1] = r.y;
        } else if constexpr (CH == 2) {
          dst[0] = __ldg(reinterpret_cast<const uint32_t*>(src));
        } else {
          dst[0] = __ldg(reinterpret_cast<const unsigned short*>(src));
        }
      };
      auto load_scales = [&](int t, Tile& tl) {
        const bool in = t < te;
        load_raw(tl.sa, S + sa + t * CH, va && in);
        load_raw(tl.ba, B + sa + t * CH, va && in);
        load_raw(tl.sb, S + sb + t * CH, vb && in);
        load_raw(tl.bb, B + sb + t * CH, vb && in);
      };
      auto load_tile = [&](int t, int slot) {
        const bool in = t < te;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int chunk = lane + 32 * h;  // 64 chunks of 16 bytes: (row, part)
          const int row = chunk / 4, part = chunk % 4;
          const bool v = in && n0 + row < N;
          const uint32_t* src = p.w + (wi * N + (v ? n0 + row : 0)) * static_cast<int64_t>(words_per_row) +
                                (v ? t * 16 + part * 4 : 0);
          cp_async16(&ring[warp][slot][row * kPitch + part * 4], src, v);
        }
      };
      // The tile's x (16 bytes per word, m-tile and lane): all loads issued
      // before the tile's decode, so they overlap it (one load at a time in
      // front of each word's mma left the kernel latency-bound).
      auto load_x = [&](int t, uint4 (&xw)[CH * W][MT]) {
#pragma unroll
        for (int q = 0; q < CH; ++q)
#pragma unroll
          for (int j = 0; j < W; ++j) {
            const int koff = (t * 16 + q * 4 * W + c * W + j) * 8;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
              xw[q * W + j][mt] = xv[mt] ? __ldg(reinterpret_cast<const uint4*>(xr[mt] + koff)) : make_uint4(0u, 0u, 0u, 0u);
          }
      };
      auto compute_tile = [&](int slot, const Tile& tl, const uint4 (&xw)[CH * W][MT]) {
        // Thread (g, c): words q * 4W + c * W + j of rows g and g + 8.
        uint32_t a[4], b[4];
#pragma unroll
        for (int q = 0; q < CH; ++q)
#pragma unroll
          for (int j = 0; j < W; ++j) {
            a[q * W + j] = ring[warp][slot][g * kPitch + q * 4 * W + c * W + j];
            b[q * W + j] = ring[warp][slot][(g + 8) * kPitch + q * 4 * W + c * W + j];
          }
#pragma unroll
        for (int q = 0; q < CH; ++q) {
          float gacc[MT][4], xacc[MT][4];
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int e = 0; e < 4; ++e) gacc[mt][e] = xacc[mt][e] = 0.0f;
#pragma unroll
          for (int j = 0; j < W; ++j) {
            const uint32_t A = a[q * W + j], Bw = b[q * W + j];
            // Weight fragments for the word's two k16 steps: pairs (i, i+4), (i+1, i+5).
            uint32_t af[2][4];
#pragma unroll
            for (int s = 0; s < 2; ++s) {
              const int i = 2 * s;
              af[s][0] = dec_pair<T>(A >> (4 * i));
              af[s][1] = dec_pair<T>(Bw >> (4 * i));
              af[s][2] = dec_pair<T>(A >> (4 * i + 4));
              af[s][3] = dec_pair<T>(Bw >> (4 * i + 4));
            }
            const uint32_t of[4] = {ones, ones, ones, ones};
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              const uint4 xq = xw[q * W + j][mt];
              const uint32_t xp[4] = {__byte_perm(xq.x, xq.z, 0x5410), __byte_perm(xq.x, xq.z, 0x7632),
                                      __byte_perm(xq.y, xq.w, 0x5410), __byte_perm(xq.y, xq.w, 0x7632)};
#pragma unroll
              for (int s = 0; s < 2; ++s) {
                mma16816<T>(gacc[mt], af[s], xp[2 * s], xp[2 * s + 1]);
                mma16816<T>(xacc[mt], of, xp[2 * s], xp[2 * s + 1]);
              }
            }
          }
          const float s_a = half_bits_to_f<T>(tl.sa[q / 2] >> (16 * (q % 2)));
          const float b_a = half_bits_to_f<T>(tl.ba[q / 2] >> (16 * (q % 2)));
          const float s_b = half_bits_to_f<T>(tl.sb[q / 2] >> (16 * (q % 2)));
          const float b_b = half_bits_to_f<T>(tl.bb[q / 2] >> (16 * (q % 2)));
          const float sv[4] = {s_a, s_a, s_b, s_b}, bv[4] = {b_a, b_a, b_b, b_b};
          // (Not tested for finiteness here: a non-finite x, scale or bias, or
          // an overflow, reaches acc, which is tested once at the end.)
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][e] = fmaf(sv[e], gacc[mt][e], fmaf(bv[e], xacc[mt][e], acc[mt][e]));
        }
      };

#pragma unroll
      for (int d = 0; d < kDepth - 1; ++d) {
        load_tile(tb + d, d);
        cp_async_commit();
      }
#pragma unroll
      for (int d = 0; d < kScaleDepth - 1; ++d) load_scales(tb + d, buf[d]);
      for (int t0 = tb; t0 < te; t0 += kDepth) {
#pragma unroll
        for (int d = 0; d < kDepth; ++d) {
          const int t = t0 + d;  // t0 - tb is a multiple of kDepth (and of kScaleDepth)
          if (t < te) {  // warp-uniform
            uint4 xw[CH * W][MT];
            load_x(t, xw);  // (first: independent of the ring, in flight while it is waited for)
            cp_async_wait<kDepth - 2>();
            __syncwarp();  // the other lanes' copies of this tile are visible
            load_scales(t + kScaleDepth - 1, buf[(d + kScaleDepth - 1) % kScaleDepth]);
            compute_tile(d, buf[d % kScaleDepth], xw);
            __syncwarp();  // every lane has read the slot that is refilled next
            load_tile(t + kDepth - 1, (d + kDepth - 1) % kDepth);
            cp_async_commit();
          }
        }
      }
      cp_async_wait<0>();
      // Outputs whose fast sum is not finite: the warp's groups again, element
      // by element (x * (s * q + b)), so Inf and NaN propagate like the reference.
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = e < 2 ? ra : rb, m = mt * 8 + 2 * c + (e & 1);
          if (!isfinite(acc[mt][e]) && m < R && row < N) {
            const int64_t so = (wi * N + row) * static_cast<int64_t>(G);
            acc[mt][e] = exact_groups<T, GS>(X + x_row(m) * static_cast<int64_t>(K),
                                             p.w + (wi * N + row) * static_cast<int64_t>(words_per_row), S + so, B + so,
                                             tb * CH, te * CH);
          }
        }
    }
    // Cross-warp reduction of the (16 rows, 8 * MT) tile; zeros for a bad index.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      red[warp][g][mt * 8 + 2 * c] = acc[mt][0];
      red[warp][g][mt * 8 + 2 * c + 1] = acc[mt][1];
      red[warp][g + 8][mt * 8 + 2 * c] = acc[mt][2];
      red[warp][g + 8][mt * 8 + 2 * c + 1] = acc[mt][3];
    }
    __syncthreads();
#pragma unroll
    for (int o = threadIdx.x; o < kRowsPerBlock * 8 * MT; o += kWarps * 32) {
      const int row = o / (8 * MT), m = o % (8 * MT);
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) v += red[w][row][m];
      if (m < R && n0 + row < N) O[out_row(m) * static_cast<int64_t>(N) + n0 + row] = from_f<T>(v);
    }
    __syncthreads();
  }
}

template <typename T, int MT>
void launch_gs(const detail::QmmDesc& d, const QmvMmaParams& p, const OpScope& scope) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, kRowsPerBlock)), 1,
                  static_cast<unsigned>(p.L < 65535 ? p.L : 65535));  // p.L: the plan's max_items when grouped
  switch (d.format.group_size) {
    case 32: qmv_mma_kernel<T, 32, MT><<<grid, kWarps * 32, 0, scope.stream()>>>(p); break;
    case 64: qmv_mma_kernel<T, 64, MT><<<grid, kWarps * 32, 0, scope.stream()>>>(p); break;
    default: qmv_mma_kernel<T, 128, MT><<<grid, kWarps * 32, 0, scope.stream()>>>(p); break;
  }
}

template <typename T>
void launch_mt(const detail::QmmDesc& d, const QmvMmaParams& p, const OpScope& scope) {
  if (d.M <= 8) launch_gs<T, 1>(d, p, scope);
  else if (d.M <= 16) launch_gs<T, 2>(d, p, scope);
  else launch_gs<T, 4>(d, p, scope);
}

}  // namespace

bool qmv_mma_supports(const detail::QmmDesc& d) {
  if (!d.transpose || d.format.mode != fmt::Mode::affine || d.format.bits != 4) return false;
  if (d.dtype != Dtype::float16 && d.dtype != Dtype::bfloat16) return false;
  // M = 1 runs faster on the SIMT GEMV (qmv.cu) in the bench on an H100
  // (31 vs 37 us at 8192 x 8192); from M = 2 on this kernel's time stays flat.
  if (d.M < 2 || d.M > kQmvMmaMaxM || d.K % 128 != 0 || d.K == 0) return false;
  if (d.N >= (int64_t{1} << 31) || d.K >= (int64_t{1} << 31)) return false;
  return device_info(current_device()).cc_major >= 8;
}

namespace {
bool qmv_mma_aligned(const detail::QmmArgs& a) {
  return aligned(a.x.raw_data(), 16) && aligned(a.w.raw_data(), 16) && aligned(a.scales.raw_data(), 8) &&
         aligned(a.biases.raw_data(), 8);
}
QmvMmaParams qmv_mma_params(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  QmvMmaParams p{};
  p.x = a.x.raw_data();
  p.w = a.w.data<uint32_t>();
  p.scales = a.scales.raw_data();
  p.biases = a.biases.raw_data();
  p.lhs = a.lhs.data<int64_t>();
  p.rhs = a.rhs.data<int64_t>();
  p.out = a.out.raw_data();
  p.M = static_cast<int>(d.M);
  p.N = static_cast<int>(d.N);
  p.K = static_cast<int>(d.K);
  p.x_batch = d.x_batch;
  p.w_batch = d.w_batch;
  p.L = d.batch;
  p.guard = index_guard(scope.device(), d.op, d.indices_checked);
  return p;
}
}  // namespace

bool qmv_mma_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  if (!qmv_mma_aligned(a)) return false;
  const QmvMmaParams p = qmv_mma_params(d, a, scope);
  if (d.dtype == Dtype::float16) launch_mt<__half>(d, p, scope);
  else launch_mt<__nv_bfloat16>(d, p, scope);
  scope.check_launch("qmv_sm80_mma");
  return true;
}

bool gather_grouped_supports(const detail::QmmDesc& d) {
  if (!d.transpose || d.format.mode != fmt::Mode::affine || d.format.bits != 4) return false;
  if (d.dtype != Dtype::float16 && d.dtype != Dtype::bfloat16) return false;
  if (d.K % 128 != 0 || d.K == 0 || d.N >= (int64_t{1} << 31) || d.K >= (int64_t{1} << 31)) return false;
  if (!gather_grouping_pays(d, kQmvMmaMaxM)) return false;  // at most 32 rows per entry
  return device_info(current_device()).cc_major >= 8;
}

bool gather_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  if (!qmv_mma_aligned(a)) return false;
  QmvMmaParams p = qmv_mma_params(d, a, scope);
  // Rows per item from the average rows per distinct expert (at most min(E, L) experts).
  const int64_t experts = d.w_batch < d.batch ? d.w_batch : d.batch;
  const int64_t avg = (d.batch * d.M + experts - 1) / experts;
  const int mt = avg <= 8 ? 1 : (avg <= 16 ? 2 : 4);
  GatherPlan plan(scope, p.lhs, p.rhs, d.batch, d.M, d.x_batch, d.w_batch, 8 * mt, p.guard, p.out, 2, d.N);
  p.plan = plan.view();
  p.M = 8 * mt;
  p.L = plan.max_items();
  detail::QmmDesc dd = d;
  dd.M = p.M;
  if (d.dtype == Dtype::float16) launch_mt<__half>(dd, p, scope);
  else launch_mt<__nv_bfloat16>(dd, p, scope);
  scope.check_launch("qmv_sm80_mma (grouped gather)");
  return true;
}

}  // namespace mmkit::cuda
