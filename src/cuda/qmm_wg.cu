// qmm_wg: Hopper (sm_90a) quantized matmul on the warpgroup MMA for 4-bit
// affine weights and many rows (prefill, and grouped MoE items of many rows
// per expert),
//   out[l] (M, N) = x[lhs[l]] (M, K) @ dequantize(w[rhs[l]]) (N, K)^T,
// M > 32, float16 / bfloat16 activations, transpose=true, K % 128 == 0,
// group size 32 / 64 / 128, an sm_90 device; cuda_qmm_w4_mma runs it before
// qmm_w4.cu there (MMKIT_QMM_WG=0 turns it off).
//
// wgmma.mma_async m64nBTk16 with A from registers: the W rows are the MMA's
// rows (each warp of a warpgroup 16 of them), the x rows its BT columns, read
// by the tensor cores straight from shared memory (K-major, 128-byte swizzle).
// The weights' natural k order matches the MMA's: lane (g, c) holds k
// 2c, 2c+1 (byte c of the k16 step's first word) and 2c+8, 2c+9 (byte c of
// its second word) of rows g and g + 8. The two codes of byte c become an
// exact T pair q with a PRMT, a LOP3 (magic exponent) and an exact FMA pair.
//
// Numerics (EXACT, the default): no weight is rounded. Two forms:
//  * fold (dense, group size 64 / 128, tiles of <= 128 x rows): the codes go
//    into the MMA as exact T values, each k-tile's sum P of x * q (float32) is
//    folded as acc += s * P a tile later (two P sets alternate by tile), so
//    the MMA count is the MLX variant's. ptxas serializes the MMAs when the
//    fold reads a P whose MMAs it cannot prove retired, which it cannot across
//    the loop's back edge: the first tile of each pair of tiles waits for all
//    MMAs (wait_group 0) before its last step.
//  * split (group size 32, the big tile, grouped items): s * q is exact in
//    float32 (8 + 4 significant bits in bfloat16, 11 + 4 in float16), split into
//    two T values, hi = T(s * q) and lo = s * q - hi (exact in T: an FMA
//    pair computes it with one rounding that has nothing to round), and two
//    MMAs add x * hi and x * lo into the float32 sum.
// The biases' share, sum over groups of b * sum(x in group), is a short
// second K range run first (the "tail" k-tiles): A = the biases (exact in T),
// B = each group's float32 sum of x split the same way into T (hi, lo) pairs
// (relative error 2^-18 in bfloat16), written by a pre-pass (wg_sums_kernel)
// per x row. An output whose sum is not finite (an Inf / NaN input, or an
// intermediate that overflows T) is recomputed element by element
// (w4_exact), so non-finite inputs give the reference's results. The MLX
// variant (MMKIT_QMM_WG=mlx) rounds each weight to T once instead,
// w = fma(q, s, b) in T, like MLX's GPU kernels (SPEC 2.4): one MMA per k16
// step and no tail, with a 2^-9 (bfloat16) relative error per weight.
//
// Block: NWG warpgroups (R m64 tiles each; R = 1 in every tiling), 64 NWG R
// W rows x BT x rows. An S-stage ring holds per k-tile of 64 codes the x rows
// (BT x 128 bytes in the MMA's swizzle), the codes (8 words per W row) and
// the groups' (s, b) pairs; a tail k-tile holds 64 columns of the sums of x
// (32 groups). Dense calls fill it with tensor copies (one thread, 3-D
// tensor maps over x, the sums and the codes: rows past M / N come
// zero-filled; an mbarrier per stage); grouped items, whose x rows are
// gathered, with cp.async (code rows at a 12-word pitch: the lanes' 16-byte
// reads of 8 rows hit distinct bank quads). The (s, b) pairs go through
// registers (L1 keeps their rows' sectors across k-tiles) into the stage,
// loaded a step before they are stored. Tiles run S - 2 ahead; one barrier
// per k-tile.
// MMA groups: one per k16 step, as CUTLASS's register-A mainloop does; before
// step j of tile t the warpgroup waits for step j of tile t - 1 (3 groups stay
// in flight), decodes into that step's fragments and issues. ptxas keeps
// the MMAs asynchronous only when nothing but MMAs writes their accumulators
// (the first MMA of a unit starts the sum instead of zeroed registers), when
// every input is computed before wgmma.fence, and when no loop or branch other
// than the stage wait lies between an MMA and its wait (the copies are
// straight-line and predicated, the scale loads clamped): it says so with
// "wgmma.mma_async instructions are serialized" (C7513 / C7515) otherwise.
// Bound (H200, ncu, the MLX variant): the issue latency of one or two warps
// per scheduler (about 230 instructions per warp and k-tile, 4 - 7 cycles
// each), not the tensor pipe (docs/kernels/cuda.md, sessions 10 - 11).
// Tests: tests/test_cuda_cross.cpp (CudaCross.ManyRowQmmWarpgroupEveryTile
// and the Qmm / GatherQmm cases), conformance with MMKIT_TEST_DEVICE=gpu.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "cuda/device/common.cuh"
#include "cuda/device/decode.cuh"
#include "cuda/device/mma.cuh"
#include "cuda/device/tma.cuh"
#include "cuda/device/wgmma.cuh"
#include "cuda/gather_plan.h"
#include "cuda/qmm_kernels.h"

namespace mmkit::cuda {
namespace {

template <int GS, int NWG, int R, int BT, int S, bool TMA>
struct WgCfg {
  static constexpr int kThreads = 128 * NWG;
  static constexpr int BW = 64 * R * NWG;             // W rows per block (R m64 tiles per warpgroup)
  static constexpr int BK = 64;                       // codes per k-tile
  static constexpr int GPS = GS >= BK ? 1 : BK / GS;  // groups a k-tile touches
  // Words per code row in a stage: 8 dense from the tensor copies, else 12
  // (the lanes' 16-byte reads of 8 rows hit distinct bank quads).
  static constexpr int WPITCH = TMA ? 8 : 12;
  static constexpr int kXBytes = BT * 128;
  static constexpr int kWBytes = BW * WPITCH * 4;
  static constexpr int kSBytes = BW * GPS * 4;
  static constexpr int kStage = (kXBytes + kWBytes + kSBytes + 1023) / 1024 * 1024;
  static constexpr int OP = BW + 8;  // out staging pitch (T elements)
  static constexpr int kEpi = BT * OP * 2;
  static constexpr int kMain = S * kStage > kEpi ? S* kStage : kEpi;
  static constexpr int kSmem = 1024 + kMain + 3 * BT * 8 + S * 8;   // + alignment slack, the rows' offsets, barriers
  static constexpr uint32_t kStageTx = kXBytes + BW * 32;           // bytes the tensor copies bring per stage
  static constexpr int P = S - 2;                                   // k-tiles loaded ahead
  static constexpr int SPT = (BW * GPS + kThreads - 1) / kThreads;  // (s, b) entries per thread
  static_assert(S >= 4 && kSmem <= 227 * 1024, "shared memory");
  static_assert(kStageTx > 0 && P > 0 && SPT > 0, "(each referenced in every compilation pass)");
};

/// The exact T pair (q(k), q(k + 1)) of the two codes in byte `c` of code
/// word `w`; sel is the lane's byte-select (see wg_sel).
template <typename T>
__device__ __forceinline__ uint32_t wg_codes(uint32_t w, uint32_t sel) {
  if constexpr (std::is_same_v<T, __half>) {
    // Byte c into halves 0 and 1; low nibble -> 1024 + lo, high -> 1024 + 16 hi.
    const uint32_t u = (__byte_perm(w, 0u, sel) & 0x00F0000Fu) | 0x64006400u;
    const __half2 q =
        __hfma2(*reinterpret_cast<const __half2*>(&u), __halves2half2(__float2half(1.0f), __float2half(0.0625f)),
                __halves2half2(__float2half(-1024.0f), __float2half(-64.0f)));
    return *reinterpret_cast<const uint32_t*>(&q);
  } else {
    // Low nibble of byte c of w, and of byte c of w >> 4: 128 + lo, 128 + hi.
    const uint32_t u = (__byte_perm(w, w >> 4, sel) & 0x000F000Fu) | 0x43004300u;
    const __nv_bfloat162 q =
        __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&u), __floats2bfloat162_rn(128.0f, 128.0f));
    return *reinterpret_cast<const uint32_t*>(&q);
  }
}

template <typename T>
using wg_t2 = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;

/// MLX variant: the weight pair w = fma(q, s, b) in T.
template <typename T>
__device__ __forceinline__ uint32_t wg_deq(uint32_t w, uint32_t sel, uint32_t s2, uint32_t b2) {
  using T2 = wg_t2<T>;
  const uint32_t q = wg_codes<T>(w, sel);
  const T2 r =
      __hfma2(*reinterpret_cast<const T2*>(&q), *reinterpret_cast<const T2*>(&s2), *reinterpret_cast<const T2*>(&b2));
  return *reinterpret_cast<const uint32_t*>(&r);
}

/// Exact variant: s * q as -hi and lo, both T pairs, with no rounding error:
/// -hi = T(q * -s) (ns2 = (-s, -s)), and lo = s q - hi fits T's significand,
/// so the FMA's one rounding has nothing to round. (The MMA takes -hi with a
/// scale-a of -1, which saves negating it.)
template <typename T>
__device__ __forceinline__ void wg_split(uint32_t w, uint32_t sel, uint32_t s2, uint32_t ns2, uint32_t& nhi,
                                         uint32_t& lo) {
  using T2 = wg_t2<T>;
  const uint32_t q = wg_codes<T>(w, sel);
  const T2 h = __hmul2(*reinterpret_cast<const T2*>(&q), *reinterpret_cast<const T2*>(&ns2));
  const T2 l = __hfma2(*reinterpret_cast<const T2*>(&q), *reinterpret_cast<const T2*>(&s2), h);
  nhi = *reinterpret_cast<const uint32_t*>(&h);
  lo = *reinterpret_cast<const uint32_t*>(&l);
}

/// The float value of a T's bits.
template <typename T>
__device__ __forceinline__ float wg_bits_to_f(uint32_t h) {
  if constexpr (std::is_same_v<T, __half>)
    return f16_bits_to_f(h);
  else
    return bf16_bits_to_f(h);
}

/// The lane's PRMT selector for wg_codes (byte c of the word into both halves).
template <typename T>
__device__ __forceinline__ uint32_t wg_sel(int c) {
  return std::is_same_v<T, __half> ? 0x4040u | c | (c << 8) : static_cast<uint32_t>(c | ((4 + c) << 8));
}

/// Column of group i (0..7) of a 16-column chunk of the sums of x: lane c's
/// A fragment holds k 2c, 2c + 1 and 2c + 8, 2c + 9, which carry the (hi, lo)
/// sums of groups 2c and 2c + 1 (so a lane's biases are adjacent groups).
__host__ __device__ constexpr int wg_sum_col(int i) {
  return 8 * (i & 1) + (i & ~1);
}

/// The pre-pass of the exact variant: per x row and group the float32 sum of
/// x, split into T (hi, lo) = (T(sum), T(sum - hi)), at wg_sum_col's columns
/// of rows of G2 (a multiple of 64; the slots of groups past G are zero). One
/// warp per 256 values of a row (a 16-byte load per lane, the lanes of a
/// group reduced by shuffles): many warps, each one memory latency.
template <typename T, int GS>
__global__ void __launch_bounds__(256)
    wg_sums_kernel(const T* __restrict__ x, T* __restrict__ sums, int64_t rows, int K, int G2) {
  const int chunks = (K + 255) / 256;
  const int64_t wid = static_cast<int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (wid >= rows * chunks) return;
  const int64_t row = wid / chunks;
  const int k = static_cast<int>(wid % chunks) * 256 + lane * 8;
  uint32_t* sr = reinterpret_cast<uint32_t*>(sums + row * G2);
  constexpr int LPG = GS / 8;  // lanes per group
  float s = 0.0f;
  if (k < K) {
    const uint4 v = *reinterpret_cast<const uint4*>(x + row * K + k);
    const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
    for (int i = 0; i < 8; ++i) s += to_f<T>(e[i]);
  }
#pragma unroll
  for (int o = 1; o < LPG; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (k < K && lane % LPG == 0) {
    const int gi = k / GS;
    const T pair[2] = {from_f<T>(s), from_f<T>(s - to_f<T>(from_f<T>(s)))};  // (hi, lo)
    sr[(16 * (gi / 8) + wg_sum_col(gi % 8)) / 2] = *reinterpret_cast<const uint32_t*>(pair);
  }
  // The slots of the groups past K / GS (a chunk's slots interleave: by group, not by column).
  if (wid % chunks == 0)
    for (int gi = K / GS + lane; gi < G2 / 2; gi += 32) sr[(16 * (gi / 8) + wg_sum_col(gi % 8)) / 2] = 0u;
}

/// The tensor maps of a dense call: x as (K, M, x batch) with 64 x BT boxes
/// in the 128-byte swizzle, the codes as (K / 8, N, w batch) words with
/// 8 x BW boxes, the sums of x (exact variant) as (G2, M, x batch) like x
/// (unused when grouped: the rows are gathered); the sums' row pitch G2.
struct WgMaps {
  CUtensorMap x, w, xs;
  const void* sums;
  int g2;
};

// (Exact grouped items: two blocks per SM, at most 128 registers a thread; see
// the forms below.)
template <typename T, int GS, int NWG, int R, int BT, int S, bool GROUPED, bool EXACT>
__global__ void __launch_bounds__(128 * NWG, (GROUPED && EXACT) ? 2 : 1)
    qmm_wg_kernel(QmmKernelParams p, const __grid_constant__ WgMaps maps) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr bool TMA = !GROUPED;
  using C = WgCfg<GS, NWG, R, BT, S, TMA>;
  constexpr int BW = C::BW, kThreads = C::kThreads, WPITCH = C::WPITCH, GPS = C::GPS, P = C::P;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw_s = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t pad = (1024u - (raw_s & 1023u)) & 1023u;  // the swizzled tiles need 1024-byte alignment
  unsigned char* smem = smem_raw + pad;
  const uint32_t smem_s = raw_s + pad;
  int64_t* a_off = reinterpret_cast<int64_t*>(smem + C::kMain);  // x element offset of each tile row
  int64_t* o_off = a_off + BT;                                   // out element offset of each tile row
  int64_t* s_off = o_off + BT;                            // sums element offset of each tile row (grouped, exact)
  const uint32_t bar_s = smem_s + C::kMain + 3 * BT * 8;  // the stages' barriers (tensor copies)
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, c = lane & 3;
  // The warp's first W row in the block in m64 tile r: warpgroup w holds rows
  // [64 R w, 64 R (w + 1)), warp q of it rows 16 q .. 16 q + 15 of each m64 tile.
  const int wrow0 = (warp >> 2) * 64 * R + (warp & 3) * 16;
  const int M = p.M, N = p.N, K = p.K;
  const int n0 = static_cast<int>(blockIdx.x) * BW;
  const int m0 = GROUPED ? 0 : static_cast<int>(blockIdx.y) * BT;
  const int tiles = K / C::BK, G = K / GS, words_per_row = K / 8;
  // Tail k-tiles (exact): 64 columns of the sums of x, 32 groups each, run first.
  const int tt = EXACT ? maps.g2 / 64 : 0, all = tt + tiles;
  const T* X = static_cast<const T*>(p.x);
  const T* XS = static_cast<const T*>(maps.sums);
  const uint16_t* Sc = static_cast<const uint16_t*>(p.scales);
  const uint16_t* Bi = static_cast<const uint16_t*>(p.biases);
  T* O = static_cast<T*>(p.out);
  const uint32_t sel = wg_sel<T>(c);
  if constexpr (TMA) {
    if (tid == 0) {
      for (int i = 0; i < S; ++i) tma::mbar_init(bar_s + 8 * i, 1);
      tma::mbar_init_fence();
    }
  }
  int64_t gbase = 0;  // k-tiles run by the block before this unit (the ring's stage and phase)

  const int64_t n_work = GROUPED ? *p.plan.n_items : p.L;
  for (int64_t l = blockIdx.z; l < n_work; l += gridDim.z) {
    const GatherUnit u =
        gather_unit_block<GROUPED>(p.plan, p.lhs, p.rhs, l, K, N, p.x_batch, p.w_batch, p.guard, M - m0, a_off, o_off);
    const int rows = static_cast<int>(u.rows < BT ? u.rows : BT);
    const int64_t wi = u.w;
    if constexpr (!GROUPED) {
      tma::proxy_fence();  // the previous unit's epilogue wrote the ring: before the copies refill it
      __syncthreads();     // the previous unit's epilogue read the offsets
      for (int r = tid; r < BT; r += kThreads) {
        a_off[r] = (u.x * M + m0 + r) * static_cast<int64_t>(K);
        o_off[r] = (l * M + m0 + r) * static_cast<int64_t>(N);
      }
      __syncthreads();
    } else if constexpr (EXACT) {
      for (int r = tid; r < BT; r += kThreads) s_off[r] = a_off[r] / K * maps.g2;
      __syncthreads();
    }
    // (Not zeroed: the first MMA of the unit starts the sum; ptxas serializes
    // the MMAs when other instructions write their accumulators.)
    float acc[R][BT / 2];
    // Exact, dense, group size 64 / 128, BT <= 128 (FOLD): codes as exact T
    // values, one MMA per step into a per-k-tile sum P (two, alternating by
    // tile), folded as acc += s * P a tile later (the tail's bias sums first,
    // with s = 1): the MLX variant's MMA count. Else exact (hi, lo); dense,
    // BT <= 128 (TWO): the lo products into a second sum, added at the end.
    // Grouped items take the split form with one sum, which fits the 128
    // registers of two blocks per SM (Qwen3-30B-A3B at T = 4096, H200, run
    // 87: gate+up / down 1293 / 777 us, against 1450 / 911 with the fold form
    // at one block per SM).
    constexpr bool FOLD = EXACT && BT <= 128 && GS >= 64 && !GROUPED;
    constexpr bool TWO = EXACT && !FOLD && BT <= 128 && !GROUPED;
    float acc2[R][TWO ? BT / 2 : 1];
    float pacc[2][R][FOLD ? BT / 2 : 1];
    float fsc[2][R][2];  // (FOLD) the scales of the two W rows of a lane, per tile parity
    if constexpr (FOLD) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int i = 0; i < BT / 2; ++i) acc[r][i] = 0.0f;
        fsc[1][r][0] = fsc[1][r][1] = 1.0f;
      }
    }

    if (u.ok) {  // uniform over the block
      const uint32_t* wbase = p.w + (wi * N) * static_cast<int64_t>(words_per_row);
      const int64_t sbase = wi * N * static_cast<int64_t>(G);
      // The ring position of the unit's k-tile v (tail tiles first): stage
      // (gbase + v) % S, phase ((gbase + v) / S) % 2.
      const int g0 = static_cast<int>(gbase % S), q0 = static_cast<int>((gbase / S) & 1);
      auto stage_of = [&](int v) { return (g0 + v) % S; };   // (prologue only: the steps count stages)
      auto wrap = [](int v) { return v >= S ? v - S : v; };  // (selects, not branches)
      // k-tile v's x rows (swizzled) and codes, or (tail) its sums of x, into stage st.
      auto issue = [&](int v, int st) {
        const bool in = v >= tt && v < all, in_tail = v < tt;
        const int t = v - tt;  // (the code k-tile)
        if constexpr (TMA) {
          // One thread: the tensor copies (rows past M and N come zero-filled).
          const bool go = tid == 0 && v < all;
          const uint32_t bar = bar_s + 8 * st, dst = smem_s + st * C::kStage;
          tma::mbar_expect_tx(bar, in ? C::kStageTx : C::kXBytes, go);
          tma::load_3d(dst, &maps.x, t * 64, m0, static_cast<int>(u.x), bar, go && in);
          if constexpr (EXACT) tma::load_3d(dst, &maps.xs, v * 64, m0, static_cast<int>(u.x), bar, go && in_tail);
          tma::load_3d(dst + C::kXBytes, &maps.w, t * 8, n0, static_cast<int>(wi), bar, go && in);
        } else {
          unsigned char* base = smem + st * C::kStage;
          static_assert(BT * 8 % kThreads == 0 && BW * 2 % kThreads == 0, "whole copy rounds");
          // (Straight-line copies: a loop between the MMAs' issue and their
          // wait makes ptxas serialize them.)
#pragma unroll
          for (int i = 0; i < BT * 8 / kThreads; ++i) {
            const int id = tid + i * kThreads;
            const int r = id >> 3, ch = id & 7;
            const bool ok = (in || in_tail) && r < rows;
            const T* src = in ? X + a_off[r] + t * 64 + ch * 8 : XS + s_off[r] + v * 64 + ch * 8;
            cp_async16(base + r * 128 + ((ch ^ (r & 7)) << 4), ok ? src : X, ok);
          }
          uint32_t* ws = reinterpret_cast<uint32_t*>(base + C::kXBytes);
#pragma unroll
          for (int i = 0; i < BW * 2 / kThreads; ++i) {
            const int id = tid + i * kThreads;
            const int r = id >> 1, q = id & 1;
            const bool ok = in && n0 + r < N;
            cp_async16(ws + r * WPITCH + 4 * q,
                       ok ? wbase + static_cast<int64_t>(n0 + r) * words_per_row + t * 8 + 4 * q : wbase, ok);
          }
        }
      };
      // The (s, b) pairs of code k-tile t into registers (L1 keeps the rows'
      // sectors across k-tiles), stored into its stage one step later so that
      // the loads' latency hides behind a whole step. Thread entries: (row,
      // group of the tile); branch-free (clamped in-bounds loads, then a
      // select): branches between the MMAs' issue and their wait make ptxas
      // serialize them.
      const uint16_t* s_row[C::SPT];
      const uint16_t* b_row[C::SPT];
      bool row_ok[C::SPT];
#pragma unroll
      for (int i = 0; i < C::SPT; ++i) {
        const int id = tid + i * kThreads;
        const int r = id / GPS, j = id % GPS;
        row_ok[i] = id < BW * GPS && n0 + r < N;
        const int64_t off = sbase + static_cast<int64_t>(min(n0 + r, N - 1)) * G + (id < BW * GPS ? j : 0);
        s_row[i] = Sc + off;
        b_row[i] = Bi + off;
      }
      // (Only the loads here: their first use is at the store, a step later.)
      auto load_scales = [&](int t, uint32_t(&sreg)[2][C::SPT]) {
        const int gi = (max(min(t, tiles - 1), 0) * C::BK) / GS;
#pragma unroll
        for (int i = 0; i < C::SPT; ++i) {
          sreg[0][i] = __ldg(s_row[i] + gi);
          sreg[1][i] = __ldg(b_row[i] + gi);
        }
      };
      auto store_scales = [&](int st, int t, const uint32_t(&sreg)[2][C::SPT]) {
        uint32_t* ss = reinterpret_cast<uint32_t*>(smem + st * C::kStage + C::kXBytes + C::kWBytes);
#pragma unroll
        for (int i = 0; i < C::SPT; ++i) {
          const int id = tid + i * kThreads;
          if (id < BW * GPS) ss[id] = row_ok[i] && t >= 0 && t < tiles ? sreg[0][i] | (sreg[1][i] << 16) : 0u;
        }
      };
      // The biases a lane's A fragments of tail k-tile v hold (exact): per
      // m64 tile r and k16 step j, rows ra / rb, groups 32 v + 8 j + 2 c (+ 1).
      const int ra0 = min(n0 + wrow0 + g, N - 1), rb0 = min(n0 + wrow0 + g + 8, N - 1);
      auto load_biases = [&](int v, uint32_t(&bv)[R][16]) {
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int gi = 32 * v + 8 * j + 2 * c + h;
              const int64_t col = min(gi, G - 1);
              const int ra = min(ra0 + r * 64, N - 1), rb = min(rb0 + r * 64, N - 1);
              bv[r][4 * j + 2 * h] = __ldg(Bi + sbase + static_cast<int64_t>(ra) * G + col);
              bv[r][4 * j + 2 * h + 1] = __ldg(Bi + sbase + static_cast<int64_t>(rb) * G + col);
            }
      };
      uint32_t af[4][R][4], al[4][R][4], sr0[2][C::SPT], sr1[2][C::SPT], bcur[R][16], bnext[R][16];
      if constexpr (EXACT) load_biases(0, bnext);
#pragma unroll
      for (int v = 0; v < P; ++v) {
        issue(v, stage_of(v));
        cp_async_commit();
        load_scales(v - tt, sr1);  // (sr1 ends with tile P - 1's pairs: step 0 stores them again)
        store_scales(stage_of(v), v - tt, sr1);
      }
      // The start of k-tile v in stage st (at its first step): (copies) wait
      // until tile v landed for every thread, which also means every
      // warpgroup is done with tile v - 2, then refill that stage with tile v + P.
      auto begin_tile = [&](int v, int st) {
        if constexpr (!TMA) cp_async_wait<P - 1>();
        __syncthreads();
        issue(v + P, wrap(st + P));
        cp_async_commit();
      };
      // Tail k-tile v (exact): A = the biases, one MMA per k16 step; the
      // ring, the waits and the refills as in step() below.
      auto tail_step = [&](int v, int st, int ph) {
        const uint64_t desc0 = wg::desc_k_sw128(smem_s + st * C::kStage);
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int i = 0; i < 16; ++i) bcur[r][i] = bnext[r][i];
        load_biases(v + 1, bnext);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          wg::wait<3>();
          if (j == 0) {
            begin_tile(v, st);
            // (The pairs loaded a tile ago into their stage, then the next ones.)
            store_scales(wrap(st + P - 1), v + P - 1 - tt, sr1);
            load_scales(v + P - tt, sr1);
            if constexpr (TMA) tma::mbar_wait(bar_s + 8 * st, static_cast<uint32_t>(ph));
          }
#pragma unroll
          for (int r = 0; r < R; ++r)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const bool ok = 32 * v + 8 * j + 2 * c + h < G;  // (groups past G: their sums are zero columns)
              const uint32_t ba = ok ? bcur[r][4 * j + 2 * h] : 0u, bb = ok ? bcur[r][4 * j + 2 * h + 1] : 0u;
              af[j][r][2 * h] = __byte_perm(ba, ba, 0x1010);
              af[j][r][2 * h + 1] = __byte_perm(bb, bb, 0x1010);
            }
          uint64_t desc = desc0 + 2 * j;
          wg::fence_operand(desc);
#pragma unroll
          for (int r = 0; r < R; ++r)
#pragma unroll
            for (int k = 0; k < 4; ++k) wg::fence_operand(af[j][r][k]);
          wg::fence();
#pragma unroll
          for (int r = 0; r < R; ++r) {
            if constexpr (FOLD)
              wg::mma_rs<BT, T>(pacc[1][r], af[j][r], desc, v > 0 || j > 0);
            else
              wg::mma_rs<BT, T>(acc[r], af[j][r], desc, v > 0 || j > 0);
          }
          wg::commit();
        }
      };
      // Code k-tile t (unit k-tile v = tt + t), one MMA group per k16 step j,
      // CUTLASS-style: wait until the group of step j of the previous tile is
      // done (3 younger groups stay in flight), decode step j's A fragments
      // into af[j] (and al[j]), issue. At j = 0 the block also syncs (every
      // warpgroup is done with tile v - 2), refills tile v - 2's stage with
      // tile v + P and waits for tile v. (Grouped per step, ptxas keeps the
      // MMAs asynchronous across the wait loop; one group per tile with two
      // fragment sets it serializes them.)
      auto step = [&](int v, int st, int ph, uint32_t(&sr_next)[2][C::SPT], const uint32_t(&sr_prev)[2][C::SPT],
                      auto& p_cur, auto& p_prev, auto& fs_cur, const auto& fs_prev, auto drain) {
        [[maybe_unused]] constexpr bool DRAIN = decltype(drain)::value;
        const int t = v - tt;
        const unsigned char* base = smem + st * C::kStage;
        const uint32_t* ws = reinterpret_cast<const uint32_t*>(base + C::kXBytes);
        const uint32_t* ss = reinterpret_cast<const uint32_t*>(base + C::kXBytes + C::kWBytes);
        const uint64_t desc0 = wg::desc_k_sw128(smem_s + st * C::kStage);
        // The lane's code words and (s, s) / (b, b) pairs of the tile, read at
        // j = 0 (one shared-memory latency per tile), decoded step by step.
        uint32_t wa[R][8], wb[R][8], sa[R][GPS], ba[R][GPS], sb[R][GPS], bb[R][GPS], nsa[R][GPS], nsb[R][GPS];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if constexpr (FOLD) {
            // (Before the fold: ptxas serializes the MMAs unless it sees the
            // previous tile's MMAs retired; across the loop it cannot count
            // groups, so the first tile of a pair drains the pipe.)
            if (j == 3 && DRAIN)
              wg::wait<0>();
            else
              wg::wait<3>();
          } else {
            wg::wait<3>();
          }
          if (j == 0) {
            begin_tile(v, st);
            load_scales(t + P, sr_next);
            if constexpr (TMA) tma::mbar_wait(bar_s + 8 * st, static_cast<uint32_t>(ph));
#pragma unroll
            for (int r = 0; r < R; ++r) {
              const int ra = wrow0 + r * 64 + g, rb = ra + 8;  // the lane's two W rows
              const uint4 a0 = *reinterpret_cast<const uint4*>(ws + ra * WPITCH);
              const uint4 a1 = *reinterpret_cast<const uint4*>(ws + ra * WPITCH + 4);
              const uint4 b0 = *reinterpret_cast<const uint4*>(ws + rb * WPITCH);
              const uint4 b1 = *reinterpret_cast<const uint4*>(ws + rb * WPITCH + 4);
              wa[r][0] = a0.x, wa[r][1] = a0.y, wa[r][2] = a0.z, wa[r][3] = a0.w;
              wa[r][4] = a1.x, wa[r][5] = a1.y, wa[r][6] = a1.z, wa[r][7] = a1.w;
              wb[r][0] = b0.x, wb[r][1] = b0.y, wb[r][2] = b0.z, wb[r][3] = b0.w;
              wb[r][4] = b1.x, wb[r][5] = b1.y, wb[r][6] = b1.z, wb[r][7] = b1.w;
#pragma unroll
              for (int q = 0; q < GPS; ++q) {
                const uint32_t va = ss[ra * GPS + q], vb = ss[rb * GPS + q];
                sa[r][q] = __byte_perm(va, va, 0x1010), ba[r][q] = __byte_perm(va, va, 0x3232);
                sb[r][q] = __byte_perm(vb, vb, 0x1010), bb[r][q] = __byte_perm(vb, vb, 0x3232);
                nsa[r][q] = sa[r][q] ^ 0x80008000u, nsb[r][q] = sb[r][q] ^ 0x80008000u;
              }
              if constexpr (FOLD) {  // (GPS = 1)
                const uint32_t va = ss[ra], vb = ss[rb];
                fs_cur[r][0] = wg_bits_to_f<T>(va & 0xFFFFu);
                fs_cur[r][1] = wg_bits_to_f<T>(vb & 0xFFFFu);
              }
            }
          }
          [[maybe_unused]] const int q = GS >= 64 ? 0 : j / 2;  // the k16 step's group in the tile
#pragma unroll
          for (int r = 0; r < R; ++r) {
            if constexpr (FOLD) {
              af[j][r][0] = wg_codes<T>(wa[r][2 * j], sel);
              af[j][r][1] = wg_codes<T>(wb[r][2 * j], sel);
              af[j][r][2] = wg_codes<T>(wa[r][2 * j + 1], sel);
              af[j][r][3] = wg_codes<T>(wb[r][2 * j + 1], sel);
            } else if constexpr (EXACT) {
              wg_split<T>(wa[r][2 * j], sel, sa[r][q], nsa[r][q], af[j][r][0], al[j][r][0]);
              wg_split<T>(wb[r][2 * j], sel, sb[r][q], nsb[r][q], af[j][r][1], al[j][r][1]);
              wg_split<T>(wa[r][2 * j + 1], sel, sa[r][q], nsa[r][q], af[j][r][2], al[j][r][2]);
              wg_split<T>(wb[r][2 * j + 1], sel, sb[r][q], nsb[r][q], af[j][r][3], al[j][r][3]);
            } else {
              af[j][r][0] = wg_deq<T>(wa[r][2 * j], sel, sa[r][q], ba[r][q]);
              af[j][r][1] = wg_deq<T>(wb[r][2 * j], sel, sb[r][q], bb[r][q]);
              af[j][r][2] = wg_deq<T>(wa[r][2 * j + 1], sel, sa[r][q], ba[r][q]);
              af[j][r][3] = wg_deq<T>(wb[r][2 * j + 1], sel, sb[r][q], bb[r][q]);
            }
          }
          // Every input of the MMAs (fragments, descriptor) computed before
          // the fence: ptxas serializes the MMAs otherwise.
          uint64_t desc = desc0 + 2 * j;  // (+ 32 bytes per k16 step in the start address field)
          wg::fence_operand(desc);
#pragma unroll
          for (int r = 0; r < R; ++r)
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              wg::fence_operand(af[j][r][k]);
              if constexpr (EXACT && !FOLD) wg::fence_operand(al[j][r][k]);
            }
          if constexpr (FOLD) {
            if (j == 3) {
              // The previous tile's sum is done (the wait above): acc += s * P.
              // (Here, between the wait and the fence: moved after this step's
              // MMAs, the read makes ptxas serialize them.)
#pragma unroll
              for (int r = 0; r < R; ++r)
#pragma unroll
                for (int i = 0; i < BT / 2; ++i) {
                  wg::fence_operand(p_prev[r][i]);
                  acc[r][i] = fmaf(fs_prev[r][(i & 2) >> 1], p_prev[r][i], acc[r][i]);
                }
            }
          }
          wg::fence();
#pragma unroll
          for (int r = 0; r < R; ++r) {
            if constexpr (FOLD) {
              wg::mma_rs<BT, T>(p_cur[r], af[j][r], desc, j > 0);
            } else if constexpr (EXACT) {
              wg::mma_rs_neg<BT, T>(acc[r], af[j][r], desc, true);  // (x * hi)
              if constexpr (TWO)
                wg::mma_rs<BT, T>(acc2[r], al[j][r], desc, t > 0 || j > 0);
              else
                wg::mma_rs<BT, T>(acc[r], al[j][r], desc, true);
            } else {
              wg::mma_rs<BT, T>(acc[r], af[j][r], desc, t > 0 || j > 0);
            }
          }
          wg::commit();
        }
        // Tile t - 1 + P's pairs (loaded last step) into their stage, which
        // tile t - 3 used and tile t - 1 + P reads after at least one barrier
        // (at t = 0 the prologue's, stored again: no branch here).
        store_scales(wrap(st + P - 1), t + P - 1, sr_prev);
      };
      int st = g0, ph = q0;
      auto advance = [&] {
        const int nx = st + 1;
        ph ^= nx == S ? 1 : 0;
        st = nx == S ? 0 : nx;
      };
      if constexpr (EXACT) {
        for (int v = 0; v < tt; ++v) {
          tail_step(v, st, ph);
          advance();
        }
      }
      for (int v = tt; v < all; v += 2) {  // (tiles is even: K % 128 == 0)
        step(v, st, ph, sr0, sr1, pacc[0], pacc[1], fsc[0], fsc[1], std::true_type{});
        advance();
        step(v + 1, st, ph, sr1, sr0, pacc[1], pacc[0], fsc[1], fsc[0], std::false_type{});
        advance();
      }
      wg::wait<0>();
      gbase += all;
      if constexpr (FOLD) {  // the last tile's sum
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int i = 0; i < BT / 2; ++i) {
            wg::fence_operand(pacc[1][r][i]);
            acc[r][i] = fmaf(fsc[1][r][(i & 2) >> 1], pacc[1][r][i], acc[r][i]);
          }
      }
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int i = 0; i < BT / 2; ++i) {
          wg::fence_operand(acc[r][i]);
          if constexpr (TWO) {
            wg::fence_operand(acc2[r][i]);
            acc[r][i] += acc2[r][i];
          }
        }
      cp_async_wait<0>();
    }
    // Stage the tile as T (rows = x rows, W rows contiguous), then 16-byte
    // stores; (exact) a sum that is not finite is recomputed element by element.
    __syncthreads();  // every warpgroup is done with the ring
    T* ot = reinterpret_cast<T*>(smem);
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int i = 0; i < BT / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int m = 8 * i + 2 * c + (e & 1), n = wrow0 + r * 64 + g + (e >= 2 ? 8 : 0);
          float v = u.ok ? acc[r][4 * i + e] : 0.0f;  // (a bad index: zeros)
          if constexpr (EXACT) {
            if (!isfinite(v) && m < rows && n0 + n < N) {
              const int64_t row = wi * N + n0 + n;
              v = w4_exact<T, GS>(X + a_off[m], p.w + row * words_per_row, reinterpret_cast<const T*>(Sc) + row * G,
                                  reinterpret_cast<const T*>(Bi) + row * G, K);
            }
          }
          ot[m * C::OP + n] = from_f<T>(v);
        }
    __syncthreads();
    for (int id = tid; id < BT * (BW / 8); id += kThreads) {
      const int m = id / (BW / 8), n = (id % (BW / 8)) * 8;
      if (m >= rows || n0 + n >= N) continue;
      T* dst = O + o_off[m] + n0 + n;
      const T* src = ot + m * C::OP + n;
      if (n0 + n + 8 <= N && (reinterpret_cast<uintptr_t>(dst) & 15u) == 0) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
      } else {
        for (int h = 0; h < 8 && n0 + n + h < N; ++h) dst[h] = src[h];
      }
    }
  }
#else
  __trap();  // launched only on sm_90 devices (qmm_wg_supports)
#endif
}

/// cuTensorMapEncodeTiled from the driver (through the runtime: no link to
/// libcuda); null if the driver lacks it.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

/// The call's tensor maps (WgMaps: x and the codes when dense; the sums of x
/// when m.sums is set and dense); false if they cannot be made.
template <typename T>
bool make_maps(const QmmKernelParams& p, int BT, int BW, WgMaps& m) {
  const PFN_cuTensorMapEncodeTiled_v12000 enc = tensor_map_encoder();
  if (!enc) return false;
  const auto K = static_cast<cuuint64_t>(p.K), M = static_cast<cuuint64_t>(p.M), N = static_cast<cuuint64_t>(p.N);
  const cuuint32_t one[3] = {1, 1, 1};
  const cuuint32_t xb[3] = {64, static_cast<cuuint32_t>(BT), 1};
  const CUtensorMapDataType xt =
      std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  // (cols, M, x batch) T values at `base` in 64 x BT boxes, 128-byte swizzle.
  auto x_like = [&](CUtensorMap* map, const void* base, cuuint64_t cols) {
    const cuuint64_t d[3] = {cols, M, static_cast<cuuint64_t>(p.x_batch)}, s[2] = {cols * 2, M * cols * 2};
    return enc(map, xt, 3, const_cast<void*>(base), d, s, xb, one, CU_TENSOR_MAP_INTERLEAVE_NONE,
               CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
  };
  if (!x_like(&m.x, p.x, K)) return false;
  if (m.sums && !x_like(&m.xs, m.sums, static_cast<cuuint64_t>(m.g2))) return false;
  const cuuint64_t wd[3] = {K / 8, N, static_cast<cuuint64_t>(p.w_batch)}, wstr[2] = {K / 2, N * K / 2};
  const cuuint32_t wb[3] = {8, static_cast<cuuint32_t>(BW), 1};
  return enc(&m.w, CU_TENSOR_MAP_DATA_TYPE_UINT32, 3, const_cast<uint32_t*>(p.w), wd, wstr, wb, one,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/// Launches one configuration; false (nothing launched) if a dense call's
/// tensor maps cannot be made.
template <typename T, int GS, int NWG, int R, int BT, int S, bool GROUPED, bool EXACT>
bool launch_cfg(const QmmKernelParams& p, int64_t units, WgMaps maps, const OpScope& scope) {
  using Cf = WgCfg<GS, NWG, R, BT, S, !GROUPED>;
  constexpr auto kernel = qmm_wg_kernel<T, GS, NWG, R, BT, S, GROUPED, EXACT>;
  if (!GROUPED && !make_maps<T>(p, BT, Cf::BW, maps)) return false;
  static std::atomic<uint64_t> opted{0};
  opt_in_shared_memory(kernel, Cf::kSmem, opted, scope, "qmm_wg");
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, Cf::BW)), GROUPED ? 1u : static_cast<unsigned>(ceil_div(p.M, BT)),
                  static_cast<unsigned>(units < 65535 ? units : 65535));
  kernel<<<grid, Cf::kThreads, Cf::kSmem, scope.stream()>>>(p, maps);
  return true;
}

/// Tilings (W rows x x rows per block; stages): big 128 x 256 (4), mid 128 x
/// 128 (6), small 64 x 128 (6), tiny 64 x 64 (8); dense calls take the one
/// pick_wg_tile names. Grouped items of 64 rows: g128 (128 x 64), or tiny
/// (64 x 64, several blocks per SM), 6 stages each.
/// MMKIT_QMM_WG_TILE=big|mid|small|tiny|g128 forces one (tests and tuning).
enum class WgTile { big, mid, small, tiny, g128 };

bool forced_wg_tile(WgTile& t) {
  const int i = env_choice("MMKIT_QMM_WG_TILE", {"big", "mid", "small", "tiny", "g128"});
  if (i >= 0) t = static_cast<WgTile>(i);
  return i >= 0;
}

/// Among the tiles whose blocks make about one wave (0.9 x the SMs), the one
/// that computes the fewest padded rows (blocks x W rows x x rows), the
/// larger on a tie; tiny when none does. (H200, 8192 x 8192, MLX variant,
/// run 78: M = 64 tiny 62 us (small 69); M = 128 small 65 (tiny 90); M = 256
/// mid 101 (small 123, big 130); M = 512 big 130 (mid 197); M = 2048 big 506.)
WgTile pick_wg_tile(int64_t M, int64_t N, int64_t units, int sms) {
  WgTile t;
  if (forced_wg_tile(t)) return t;
  const int64_t wave = sms - sms / 10;
  struct Cand {
    WgTile tile;
    int64_t bw, bt;
  };
  const Cand cands[] = {
      {WgTile::big, 128, 256}, {WgTile::mid, 128, 128}, {WgTile::small, 64, 128}, {WgTile::tiny, 64, 64}};
  WgTile best = WgTile::tiny;
  int64_t best_cost = -1;
  for (const Cand& c : cands) {
    const int64_t blocks = ceil_div(N, c.bw) * ceil_div(M, c.bt) * units;
    const int64_t cost = blocks * c.bw * c.bt;
    if (blocks >= wave && (best_cost < 0 || cost < best_cost)) best = c.tile, best_cost = cost;
  }
  return best;
}

template <typename T, int GS, bool GROUPED, bool EXACT>
bool launch_tile(const QmmKernelParams& p, WgTile tile, int64_t units, const WgMaps& maps, const OpScope& scope) {
  if constexpr (GROUPED) {
    if (tile == WgTile::g128) return launch_cfg<T, GS, 2, 1, 64, 6, true, EXACT>(p, units, maps, scope);
    return launch_cfg<T, GS, 1, 1, 64, 6, true, EXACT>(p, units, maps, scope);
  } else {
    switch (tile) {
      case WgTile::big:
        return launch_cfg<T, GS, 2, 1, 256, 4, false, EXACT>(p, units, maps, scope);
      case WgTile::mid:
        return launch_cfg<T, GS, 2, 1, 128, 6, false, EXACT>(p, units, maps, scope);
      case WgTile::small:
        return launch_cfg<T, GS, 1, 1, 128, 6, false, EXACT>(p, units, maps, scope);
      default:
        return launch_cfg<T, GS, 1, 1, 64, 8, false, EXACT>(p, units, maps, scope);
    }
  }
}

/// The exact variant (the sums of x of the x_rows rows first) or the MLX one.
template <typename T, int GS, bool GROUPED>
bool launch_mode(const QmmKernelParams& p, WgTile tile, int64_t units, int64_t x_rows, bool exact,
                 const OpScope& scope) {
  if (!exact) return launch_tile<T, GS, GROUPED, false>(p, tile, units, WgMaps{}, scope);
  WgMaps maps{};
  maps.g2 = static_cast<int>(ceil_div(2 * (p.K / GS), 64) * 64);
  const StreamScratch sums(scope, static_cast<size_t>(x_rows) * static_cast<size_t>(maps.g2) * sizeof(T),
                           "allocating qmm_wg's sums of x");
  maps.sums = sums.get();
  wg_sums_kernel<T, GS><<<static_cast<unsigned>(ceil_div(x_rows * ceil_div(p.K, 256), 8)), 256, 0, scope.stream()>>>(
      static_cast<const T*>(p.x), static_cast<T*>(sums.get()), x_rows, p.K, maps.g2);
  scope.check_launch("qmm_wg (sums of x)");
  return launch_tile<T, GS, GROUPED, true>(p, tile, units, maps, scope);
}

template <typename T, bool GROUPED>
bool launch_gs(int gs, const QmmKernelParams& p, WgTile tile, int64_t units, int64_t x_rows, bool exact,
               const OpScope& scope) {
  switch (gs) {
    case 32:
      return launch_mode<T, 32, GROUPED>(p, tile, units, x_rows, exact, scope);
    case 64:
      return launch_mode<T, 64, GROUPED>(p, tile, units, x_rows, exact, scope);
    default:
      return launch_mode<T, 128, GROUPED>(p, tile, units, x_rows, exact, scope);
  }
}

bool wg_format_ok(const detail::QmmDesc& d) {
  const int gs = d.format.group_size;
  if (!(gs == 32 || gs == 64 || gs == 128) || !affine4_tensor_core_ok(d)) return false;
  const DeviceInfo& info = device_info(current_device());
  return info.cc_major == 9 && info.cc_minor == 0;  // the kernels are sm_90a machine code
}

}  // namespace

QmmWgMode qmm_wg_mode() {
  const int i = env_choice("MMKIT_QMM_WG", {"0", "1", "mlx"});
  return i == 0 ? QmmWgMode::off : i == 2 ? QmmWgMode::mlx : QmmWgMode::exact;
}

bool qmm_wg_supports(const detail::QmmDesc& d) {
  if (d.M <= kQmvMmaMaxM || d.M >= (int64_t{1} << 31) / 2 || ceil_div(d.M, 64) > 65535) return false;
  return wg_format_ok(d);
}

bool qmm_wg_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  if (!affine4_copies_aligned(a)) return false;
  const QmmKernelParams p = qmm_kernel_params(d, a, scope);
  const WgTile tile = pick_wg_tile(d.M, d.N, d.batch, device_info(scope.device()).sm_count);
  const bool exact = qmm_wg_mode() != QmmWgMode::mlx;
  const int64_t x_rows = d.x_batch * d.M;
  const bool launched =
      d.dtype == Dtype::float16
          ? launch_gs<__half, false>(d.format.group_size, p, tile, d.batch, x_rows, exact, scope)
          : launch_gs<__nv_bfloat16, false>(d.format.group_size, p, tile, d.batch, x_rows, exact, scope);
  if (launched) scope.check_launch("qmm_wg");
  return launched;
}

bool qmm_wg_grouped_supports(const detail::QmmDesc& d) {
  return affine4_many_rows_grouped(d) && wg_format_ok(d);
}

bool qmm_wg_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  if (!affine4_copies_aligned(a)) return false;
  QmmKernelParams p = qmm_kernel_params(d, a, scope);
  // Items of 64 rows on 128 x 64 blocks (g128): Qwen3-30B-A3B at T = 4096
  // (256 rows per expert), H200, MLX variant: gate+up 983 us against 1254 us
  // on 64 x 64 blocks (tiny), down 560 against 716 (docs/kernels/cuda.md, run 70).
  WgTile tile = WgTile::g128;
  forced_wg_tile(tile);
  if (tile != WgTile::tiny) tile = WgTile::g128;
  GatherPlan plan(scope, p.lhs, p.rhs, d.batch, d.M, d.x_batch, d.w_batch, 64, p.guard, p.out,
                  static_cast<int>(itemsize(d.dtype)), d.N);
  p.plan = plan.view();
  p.M = 64;
  const int64_t items = plan.max_items();
  const bool exact = qmm_wg_mode() != QmmWgMode::mlx;
  const int64_t x_rows = d.x_batch * d.M;
  if (d.dtype == Dtype::float16)
    launch_gs<__half, true>(d.format.group_size, p, tile, items, x_rows, exact, scope);
  else
    launch_gs<__nv_bfloat16, true>(d.format.group_size, p, tile, items, x_rows, exact, scope);
  scope.check_launch("qmm_wg (grouped gather)");
  return true;
}

}  // namespace mmkit::cuda
