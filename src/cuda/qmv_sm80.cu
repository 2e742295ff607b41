// qmv_sm80: tensor-core GEMV for 4-bit affine weights and few rows,
//   out[l] (M, N) = x[lhs[l]] (M, K) @ dequantize(w[rhs[l]]) (N, K)^T,
// 2 <= M <= 32 (1, 2 or 4 tiles of 8 columns), float16 / bfloat16 activations,
// transpose=true, K % 128 == 0, group size 32 / 64 / 128.
//
// mma.sync m16n8k16 with the weights as A (16 rows x 16 k) and x^T as B
// (16 k x 8 columns = the M rows), float32 accumulation. A nibble pair (i, i+4)
// of a word becomes one exact T pair kPairScale * (kPairOff + q) with a LOP3
// (nib_pair, decode.cuh); the k order inside an mma is a permutation of the
// physical codes, applied identically to x (4 PRMTs per 8 activations), so the
// dot product is unchanged. A second mma against a ones matrix gives sum(x)
// per group, and each group is folded in float32, taking the offset out:
//   acc += (s / kPairScale) * dot(x, code) + (b - kPairOff * s) * sum(x).
// Thread (g, c) of a warp (g = lane / 4, c = lane % 4) takes W = gs / 32
// consecutive words of rows g and g + 8 per group, so every mma step lies in
// one group. Every group is folded without a test; an output whose sum ends
// not finite (a non-finite x, scale or bias in the warp's K range, or an
// overflow) is recomputed over the warp's groups element by element
// (x * (s * q + b)), so Inf and NaN propagate exactly as in the reference.
// Tiling: a block is RT 16-row tiles x KW warps per tile, each warp a K part
// of its tile (Tiling below): 1 x 4 for quantized_matmul and per-entry
// gathers, 8 x 1 for grouped items whose x fits in 32 KB (the block's 8
// warps read an item's x once per 128 rows, sharing it through L1), else
// 1 x 4. Per warp the codes stream through an 8-slot ring in shared memory
// filled by coalesced 16-byte cp.async (7 k-tiles of 16 rows x 64 B in
// flight), the groups' scales and biases go into registers 3 tiles ahead,
// and a tile's x (16 bytes per word and m-tile, from global memory / L1) is
// loaded before the tile's ring wait and decode; the K parts are summed
// through shared memory (reusing the rings).
// Bound: weight bandwidth; the aim is a time flat in M up to 32 at the copy
// bandwidth. Measured on an H100 at 8192 x 8192 (docs/kernels/cuda.md, run
// 58): 30.2 / 40.3 / 56.3 us at M = 8 / 16 / 32 (session 7's first version:
// 42.3 / 84.5 / 178.6 us). src/cuda/tools/cuda_gemv_bench.cu measures it.
// Tests: tests/test_cuda_cross.cpp (CudaCross.Qmm*, CudaCross.GatherQmm*),
// conformance, NaN/Inf tests; MMKIT_QMV_SM80_TILING forces a tiling.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "cuda/device/common.cuh"
#include "cuda/device/decode.cuh"
#include "cuda/device/mma.cuh"
#include "cuda/gather_plan.h"
#include "cuda/qmm_kernels.h"

namespace mmkit::cuda {
namespace {

#ifndef MMKIT_QMV_SM80_MT4_WARPS
#define MMKIT_QMV_SM80_MT4_WARPS 8  // warps per SM the registers are budgeted for at four column tiles
#endif
/// Warps per SM the registers of a block are budgeted for: 16 (128 registers)
/// up to two column tiles (a few spilled bytes at two; measured faster, M = 16
/// 46.8 -> 39.9 us, grouped down T = 256 226 -> 168 us on the H100, run 57a),
/// else MMKIT_QMV_SM80_MT4_WARPS.
constexpr int budget_warps(int mt) { return mt <= 2 ? 16 : MMKIT_QMV_SM80_MT4_WARPS; }
constexpr int kDepth = 8;                // ring slots per warp: 7 k-tiles (7 KB) in flight
constexpr int kPitch = 20;               // ring row pitch in words (conflict-free fragment reads)
constexpr int kSlotWords = 16 * kPitch;  // one k-tile: 16 rows x 128 codes
/// Dynamic shared memory of a block of `warps` warps: their rings (the
/// partial sums reuse them after the k loop).
constexpr size_t smem_bytes(int warps) { return size_t{1} * warps * kDepth * kSlotWords * 4; }

// Grouped gather (plan.items != nullptr): block z runs item z of the plan
// (one expert, up to 8 * MT rows gathered from any entries) instead of batch
// entry z; M is then the plan's rows per item.
using QmvMmaParams = QmmKernelParams;

/// The low 16 bits of b as a T (float16 / bfloat16) value.
template <typename T>
__device__ __forceinline__ float half_bits_to_f(uint32_t b) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __uint_as_float(b << 16);
  else return __half2float(__ushort_as_half(static_cast<unsigned short>(b)));
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

// Block: RT 16-row tiles x KW warps per tile, each warp a K part of its
// tile (RT * KW warps); registers for budget_warps(MT) warps per SM.
template <typename T, int GS, int MT, int RT, int KW>
__global__ void __launch_bounds__(RT * KW * 32, budget_warps(MT) / (RT * KW)) qmv_mma_kernel(QmvMmaParams p) {
  constexpr int W = GS / 32;   // words per thread, row and group
  constexpr int CH = 4 / W;    // groups per k-tile of 128 codes
  constexpr int NC = 8 * MT;   // columns (x rows) per unit
  constexpr int kWarps = RT * KW;
  // Dynamic shared memory: per warp a ring of kDepth slots, each its 16 rows
  // x 128 codes of a k-tile, row pitch 20 words (conflict-free fragment
  // reads). The warp copies a tile with 16-byte cp.async.cg (coalesced, not
  // cached in L1, which keeps x there for the block's warps) and each lane
  // then reads its fragment words: a __syncwarp orders the copies of other
  // lanes before the reads. After the k loop the warps' partial sums
  // (kWarps x 16 rows x NC floats) reuse them.
  extern __shared__ __align__(16) uint32_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  uint32_t* ring = smem + warp * kDepth * kSlotWords;
  float* red = reinterpret_cast<float*>(smem);
  const int M = p.M, N = p.N, K = p.K;
  // Block x: rows [nb, nb + 16 RT) of every unit; warp w: rows nb + 16 (w / KW)
  // ... + 15, K part w % KW.
  const int nb = static_cast<int>(blockIdx.x) * 16 * RT;
  const int n0 = nb + 16 * (warp / KW), part = warp % KW;
  const int ra = n0 + g, rb = n0 + g + 8;
  const bool va = ra < N, vb = rb < N;
  const int words_per_row = K / 8;
  const int tiles = K / 128, G = K / GS;
  const int tb = static_cast<int>(static_cast<int64_t>(tiles) * part / KW);
  const int te = static_cast<int>(static_cast<int64_t>(tiles) * (part + 1) / KW);
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
    if (ok && n0 < N) {  // (warp-uniform)
      // Thread (g, c) supplies x rows g, g + 8, ... (one per 8-column m-tile).
      const T* xr[MT];
      bool xv[MT];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        xv[mt] = mt * 8 + g < R;
        xr[mt] = X + x_row(xv[mt] ? mt * 8 + g : 0) * static_cast<int64_t>(K);
      }
      const int64_t sa = (wi * N + (va ? ra : 0)) * static_cast<int64_t>(G);
      const int64_t sb = (wi * N + (vb ? rb : 0)) * static_cast<int64_t>(G);

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
          const int chunk = lane + 32 * h;  // 64 chunks of 16 bytes: (row, piece)
          const int row = chunk / 4, piece = chunk % 4;
          const bool v = in && n0 + row < N;
          const uint32_t* src = p.w + (wi * N + (v ? n0 + row : 0)) * static_cast<int64_t>(words_per_row) +
                                (v ? t * 16 + piece * 4 : 0);
          cp_async16(ring + slot * kSlotWords + row * kPitch + piece * 4, src, v);
        }
      };
      // The tile's x (16 bytes per word, m-tile and lane): all loads issued
      // before the tile's decode, so they overlap it. (With RT > 1 the block's
      // row tiles load the same x in about the same order: L1 serves most.)
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
        const uint32_t* rs = ring + slot * kSlotWords;
        uint32_t a[4], b[4];
#pragma unroll
        for (int q = 0; q < CH; ++q)
#pragma unroll
          for (int j = 0; j < W; ++j) {
            a[q * W + j] = rs[g * kPitch + q * 4 * W + c * W + j];
            b[q * W + j] = rs[(g + 8) * kPitch + q * 4 * W + c * W + j];
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
              af[s][0] = nib_pair<T>(A, i);
              af[s][1] = nib_pair<T>(Bw, i);
              af[s][2] = nib_pair<T>(A, i + 1);
              af[s][3] = nib_pair<T>(Bw, i + 1);
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
          // The codes entered the mma as kPairScale * (kPairOff + q) (nib_pair):
          // acc += (s / kPairScale) * dot(x, code) + (b - kPairOff * s) * sum(x).
          // (Not tested for finiteness here: a non-finite x, scale or bias, or
          // an overflow, reaches acc, which is tested once at the end.)
          constexpr float kOff = kPairOff<T>, kInv = 1.0f / kPairScale<T>;
          const float sv[4] = {kInv * s_a, kInv * s_a, kInv * s_b, kInv * s_b};
          const float bv[4] = {fmaf(-kOff, s_a, b_a), fmaf(-kOff, s_a, b_a), fmaf(-kOff, s_b, b_b),
                               fmaf(-kOff, s_b, b_b)};
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
      // Outputs whose fast sum is not finite: the part's groups again, element
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
    // Sum the K parts of each (row, column) over the tile's warps. Zeros for a bad index.
    __syncthreads();  // every warp is done with its ring (red reuses it)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float* r0 = red + (warp * 16 + g) * NC + mt * 8 + 2 * c;
      float* r1 = r0 + 8 * NC;
      r0[0] = acc[mt][0];
      r0[1] = acc[mt][1];
      r1[0] = acc[mt][2];
      r1[1] = acc[mt][3];
    }
    __syncthreads();
    for (int o = threadIdx.x; o < RT * 16 * NC; o += kWarps * 32) {
      const int rt = o / (16 * NC), r = (o / NC) % 16, m = o % NC;
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < KW; ++w) v += red[((rt * KW + w) * 16 + r) * NC + m];
      const int row = nb + 16 * rt + r;
      if (m < R && row < N) O[out_row(m) * static_cast<int64_t>(N) + row] = from_f<T>(v);
    }
    __syncthreads();  // the partial sums were read (the rings reuse them next)
  }
}

template <auto Kernel, int WARPS>
void launch_kernel(dim3 grid, const QmvMmaParams& p, const OpScope& scope) {
  constexpr size_t smem = smem_bytes(WARPS);
  if constexpr (smem > 48 * 1024) {  // the kernel's opt-in, once per device
    static std::atomic<uint64_t> opted{0};
    const uint64_t bit = uint64_t{1} << (scope.device() & 63);
    if (!(opted.load(std::memory_order_relaxed) & bit)) {
      check_cuda(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                 "qmv_sm80_mma", "cudaFuncSetAttribute");
      opted.fetch_or(bit, std::memory_order_relaxed);
    }
  }
  Kernel<<<grid, WARPS * 32, smem, scope.stream()>>>(p);
}

/// Block tilings (RT row tiles x KW warps along K): narrow_1x4 = one 16-row
/// tile split over 4 warps along K (quantized_matmul and per-entry gathers:
/// many small blocks), wide_8x1 = 8 tiles of one warp each (the grouped
/// gather: an item's x is read once per 128 rows instead of once per 16, and
/// the 8 warps share it through L1), and two in between for tuning.
/// Measured: docs/kernels/cuda.md.
enum class Tiling { narrow_1x4, wide_8x1, mid_2x4, mid_4x2 };

template <typename T, int GS, int MT, int RT, int KW>
void launch_rt(const QmvMmaParams& p, const OpScope& scope) {
  const unsigned units = static_cast<unsigned>(p.L < 65535 ? p.L : 65535);  // p.L: the plan's max_items when grouped
  launch_kernel<qmv_mma_kernel<T, GS, MT, RT, KW>, RT * KW>(
      dim3(static_cast<unsigned>(ceil_div(p.N, 16 * RT)), 1, units), p, scope);
}

template <typename T, int GS, int MT>
void launch_tiling(const QmvMmaParams& p, Tiling t, const OpScope& scope) {
  switch (t) {
    case Tiling::wide_8x1: launch_rt<T, GS, MT, 8, 1>(p, scope); break;
    case Tiling::mid_2x4: launch_rt<T, GS, MT, 2, 4>(p, scope); break;
    case Tiling::mid_4x2: launch_rt<T, GS, MT, 4, 2>(p, scope); break;
    default: launch_rt<T, GS, MT, 1, 4>(p, scope); break;
  }
}

/// The tiling of a launch: `dflt`, or MMKIT_QMV_SM80_TILING=1x4|8x1|2x4|4x2
/// (tests and tuning; read per call, so a test can set it).
Tiling tiling(Tiling dflt) {
  const char* e = std::getenv("MMKIT_QMV_SM80_TILING");
  if (!e) return dflt;
  const std::string v = e;
  return v == "1x4" ? Tiling::narrow_1x4 : v == "8x1" ? Tiling::wide_8x1 : v == "2x4" ? Tiling::mid_2x4
         : v == "4x2" ? Tiling::mid_4x2 : dflt;
}

template <typename T, int MT>
void launch_gs(const detail::QmmDesc& d, const QmvMmaParams& p, Tiling t, const OpScope& scope) {
  switch (d.format.group_size) {
    case 32: launch_tiling<T, 32, MT>(p, t, scope); break;
    case 64: launch_tiling<T, 64, MT>(p, t, scope); break;
    default: launch_tiling<T, 128, MT>(p, t, scope); break;
  }
}

template <typename T>
void launch_mt(const detail::QmmDesc& d, const QmvMmaParams& p, Tiling t, const OpScope& scope) {
  if (d.M <= 8) launch_gs<T, 1>(d, p, t, scope);
  else if (d.M <= 16) launch_gs<T, 2>(d, p, t, scope);
  else launch_gs<T, 4>(d, p, t, scope);
}

}  // namespace

bool qmv_mma_supports(const detail::QmmDesc& d) {
  // M = 1 runs faster on the SIMT GEMV (qmv.cu) in the bench on an H100
  // (31 vs 37 us at 8192 x 8192); from M = 2 on this kernel's time stays flat.
  return d.M >= 2 && d.M <= kQmvMmaMaxM && affine4_tensor_core_ok(d);
}

namespace {
bool qmv_mma_aligned(const detail::QmmArgs& a) {
  return aligned(a.x.raw_data(), 16) && aligned(a.w.raw_data(), 16) && aligned(a.scales.raw_data(), 8) &&
         aligned(a.biases.raw_data(), 8);
}
}  // namespace

bool qmv_mma_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  if (!qmv_mma_aligned(a)) return false;
  const QmvMmaParams p = qmm_kernel_params(d, a, scope);
  const Tiling t = tiling(Tiling::narrow_1x4);
  if (d.dtype == Dtype::float16) launch_mt<__half>(d, p, t, scope);
  else launch_mt<__nv_bfloat16>(d, p, t, scope);
  scope.check_launch("qmv_sm80_mma");
  return true;
}

bool gather_grouped_supports(const detail::QmmDesc& d) {
  return gather_grouping_pays(d, kQmvMmaMaxM) && affine4_tensor_core_ok(d);  // at most 32 rows per entry
}

bool gather_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  if (!qmv_mma_aligned(a)) return false;
  QmvMmaParams p = qmm_kernel_params(d, a, scope);
  // Rows per item from the average rows per distinct expert.
  const int64_t avg = gather_rows_per_expert(d);
  const int mt = avg <= 8 ? 1 : (avg <= 16 ? 2 : 4);
  GatherPlan plan(scope, p.lhs, p.rhs, d.batch, d.M, d.x_batch, d.w_batch, 8 * mt, p.guard, p.out, 2, d.N);
  p.plan = plan.view();
  p.M = 8 * mt;
  p.L = plan.max_items();
  detail::QmmDesc dd = d;
  dd.M = p.M;
  // Wide blocks while an item's x rows (8 MT x K values) fit in 32 KB: the 8
  // warps then share them through L1 (H100, Qwen3-30B-A3B: gate+up at 4 rows
  // per expert and down at 4 and 16 rows faster wide, gate+up at 16 rows with
  // 64 KB of x faster narrow; docs/kernels/cuda.md).
  const bool wide = int64_t{p.M} * d.K * 2 <= 32 * 1024;
  const Tiling t = tiling(wide ? Tiling::wide_8x1 : Tiling::narrow_1x4);
  if (d.dtype == Dtype::float16) launch_mt<__half>(dd, p, t, scope);
  else launch_mt<__nv_bfloat16>(dd, p, t, scope);
  scope.check_launch("qmv_sm80_mma (grouped gather)");
  return true;
}

}  // namespace mmkit::cuda
