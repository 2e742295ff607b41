// qmm_w4: tensor-core quantized matmul for 4-bit affine weights and many rows
// (prefill, and grouped MoE items of many rows per expert),
//   out[l] (M, N) = x[lhs[l]] (M, K) @ dequantize(w[rhs[l]]) (N, K)^T,
// M > 32, float16 / bfloat16 activations, transpose=true, K % 128 == 0,
// group size 32 / 64 / 128.
//
// mma.sync m16n8k16 with the weights as A (rows of W) and x^T as B (the rows
// of x are the mma's n columns), float32 accumulation, the same exact decode
// as qmv_sm80.cu: a nibble pair (i, i+4) of a word becomes one T pair
// kPairScale * (kPairOff + q) with a LOP3 (nib_pair, decode.cuh), x takes the
// same permutation with 4 PRMTs per 8 values, a ones-mma gives sum(x) per
// group, and each group is folded in float32 with the offset taken out:
//   acc += (s / kPairScale) * dot(x, code) + (b - kPairOff * s) * sum(x).
// Only the float32 accumulation rounds (SPEC decision 5); an output whose
// sum ends not finite is recomputed element by element at the end.
//
// Block: WR x WC warps of 16 MTW W-rows x 32 x-rows each, times KW warps
// that split every k-tile of 128 codes along K (summed through shared memory
// at the end). Tiles (W rows x x rows): large 128 x 128 (64-row warp tiles),
// mid 128 x 64 (K split in 2), small 64 x 64 (K split in 4), the largest
// that makes about one wave of blocks; large2 128 x 64 with 32-row warp tiles
// at two blocks per SM for grouped items (W4Tile below).
// Per k-tile an S-stage cp.async ring holds the tile's packed codes and x
// rows (16-byte copies, row pitches padded so the fragment reads are
// conflict-free) and the groups' folded scales (s / kPairScale,
// b - kPairOff * s as a float pair, loaded into registers S - 1 k-tiles
// ahead and stored after the tile's math); one barrier per k-tile.
// Bound: the issue rate. Per 64 x 32 warp tile and k-tile: 128 mma + 32
// ones-mma, 224 decode ops, 64 PRMTs, 256 fold FMAs, loads and copies: about
// 1100 instructions (ncu, run 61), with 2 warps per scheduler about 43% of
// the issue slots are used (stalls: fixed-latency dependencies, the math
// pipe). Measured on an H200 at 8192 x 8192 (docs/kernels/cuda.md, run 62):
// 80 / 111 / 186 / 366 / 1439 us at M = 64 / 128 / 256 / 512 / 2048
// (qmm_sm80: 211 / 267 / 522 / 898 / -; cuBLAS bf16 38 / 39 / 46 / 80 / 303).
// Tests: tests/test_cuda_cross.cpp (CudaCross.Qmm*, CudaCross.GatherQmm*),
// conformance with MMKIT_TEST_DEVICE=gpu; measured in docs/kernels/cuda.md.
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
#include "cuda/gather_plan.h"
#include "cuda/qmm_kernels.h"

namespace mmkit::cuda {
namespace {

template <typename T, int GS, int MTW, int WR, int WC, int KW, int S>
struct W4Cfg {
  static constexpr int kWarps = WR * WC * KW, kThreads = 32 * kWarps;
  static constexpr int BW = 16 * MTW * WR;  // W rows per block
  static constexpr int BT = 32 * WC;  // x rows per block
  static constexpr int SPW = 4 / KW;  // word slots (of a thread's 4 per k-tile and row) per warp
  static constexpr int WPG = GS / 32;  // word slots per group
  static constexpr int PAIRED = GS >= 64;  // thread c's words of a 64-code subgroup: 2c, 2c+1 (else c of 32)
  // Codes: row pitch in words: the lanes' reads of one word slot (words 2c + j
  // of 8 rows, or c of 8 rows) fall in distinct banks (two 4-byte reads of
  // adjacent slots merge into one 8-byte read, conflict-free at 24 too).
  static constexpr int WP = PAIRED ? 24 : 20;
  // x: row pitch in T elements (272 / 320 bytes: the 16-byte reads of 8 lanes hit 8 distinct bank quads).
  static constexpr int XP = 128 + (PAIRED ? 8 : 32);
  static constexpr int GPT = 128 / GS;  // groups per k-tile
  static constexpr int kWBytes = BW * WP * 4;
  static constexpr int kXBytes = BT * XP * 2;
  static constexpr int kSBytes = BW * GPT * 8;
  static constexpr int kStage = kWBytes + kXBytes + kSBytes;
  static constexpr int RP = BW + 4;  // pitch (floats) of the K-part sums
  static constexpr int kRed = KW * BT * RP * 4;
  static constexpr int kMain = S * kStage > kRed ? S * kStage : kRed;
  static constexpr int kSmem = kMain + 2 * BT * 8;  // + the units' row offsets
  static constexpr int SCALE_PER_THREAD = (BW * GPT + kThreads - 1) / kThreads;
  static_assert(kThreads >= BT, "one thread per x row stages its offsets");
};

/// Physical word (0..15) of a k-tile row for thread c's word slot ws (0..3).
template <bool PAIRED>
__device__ __forceinline__ int word_of(int c, int ws) {
  return PAIRED ? (ws >> 1) * 8 + 2 * c + (ws & 1) : 4 * ws + c;
}

template <typename T>
__device__ __forceinline__ void mma_w4(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

/// d = a * b (the accumulator input is zero).
template <typename T>
__device__ __forceinline__ void mma_w4_zero(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const float z = 0.0f;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(z));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(z));
  }
}

template <typename T, int GS, int MTW, int WR, int WC, int KW, int S, bool GROUPED>
__global__ void __launch_bounds__(WR* WC* KW * 32, MTW == 2 ? 2 : 1) qmm_w4_kernel(QmmKernelParams p) {
  using C = W4Cfg<T, GS, MTW, WR, WC, KW, S>;
  constexpr int BW = C::BW, BT = C::BT, SPW = C::SPW, WP = C::WP, XP = C::XP, GPT = C::GPT;
  constexpr int kThreads = C::kThreads;
  constexpr bool PAIRED = C::PAIRED;
  constexpr int FOLD_EVERY = C::WPG < SPW ? C::WPG : SPW;  // word slots between folds
  extern __shared__ __align__(16) unsigned char smem[];
  int64_t* a_off = reinterpret_cast<int64_t*>(smem + C::kMain);  // x element offset of each tile row
  int64_t* o_off = a_off + BT;                                   // out element offset of each tile row
  float* red = reinterpret_cast<float*>(smem);                   // K-part sums (reuse the ring)
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int kp = warp % KW, wc = (warp / KW) % WC, wr = warp / (KW * WC);
  const int M = p.M, N = p.N, K = p.K;
  const int n0 = static_cast<int>(blockIdx.x) * BW;
  const int m0 = GROUPED ? 0 : static_cast<int>(blockIdx.y) * BT;
  const int tiles = K / 128, G = K / GS, words_per_row = K / 8;
  const T* X = static_cast<const T*>(p.x);
  const T* Sc = static_cast<const T*>(p.scales);
  const T* Bi = static_cast<const T*>(p.biases);
  T* O = static_cast<T*>(p.out);
  const uint32_t ones = ones2<T>();
  const uint32_t ones_a[4] = {ones, ones, ones, ones};
  constexpr float kOff = kPairOff<T>, kInv = 1.0f / kPairScale<T>;
  auto stage_w = [&](int st) { return reinterpret_cast<uint32_t*>(smem + st * C::kStage); };
  auto stage_x = [&](int st) { return reinterpret_cast<T*>(smem + st * C::kStage + C::kWBytes); };
  auto stage_s = [&](int st) { return reinterpret_cast<float2*>(smem + st * C::kStage + C::kWBytes + C::kXBytes); };

  const int64_t n_work = GROUPED ? *p.plan.n_items : p.L;
  for (int64_t l = blockIdx.z; l < n_work; l += gridDim.z) {
    const GatherUnit u =
        gather_unit_block<GROUPED>(p.plan, p.lhs, p.rhs, l, K, N, p.x_batch, p.w_batch, p.guard, M - m0, a_off, o_off);
    const int rows = static_cast<int>(u.rows < BT ? u.rows : BT);
    const int64_t wi = u.w;
    if constexpr (!GROUPED) {
      __syncthreads();  // the previous unit's epilogue read the offsets
      if (tid < BT) {
        a_off[tid] = (u.x * M + m0 + tid) * static_cast<int64_t>(K);
        o_off[tid] = (l * M + m0 + tid) * static_cast<int64_t>(N);
      }
      __syncthreads();
    }
    float acc[MTW][4][4];
#pragma unroll
    for (int mt = 0; mt < MTW; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;

    if (u.ok) {  // uniform over the block
      const uint32_t* wbase = p.w + (wi * N) * static_cast<int64_t>(words_per_row);
      const int64_t sbase = wi * N * static_cast<int64_t>(G);
      // One k-tile's codes and x rows into stage st (cp.async).
      auto issue = [&](int t, int st) {
        const bool in = t < tiles;
        uint32_t* ws = stage_w(st);
        // The tile's 16 words per row in their order (16-byte copies), row pitch WP.
        for (int id = tid; id < BW * 4; id += kThreads) {
          const int r = id >> 2, q = id & 3;
          const bool v = in && n0 + r < N;
          cp_async_ca<16>(ws + r * WP + 4 * q,
                          v ? wbase + static_cast<int64_t>(n0 + r) * words_per_row + t * 16 + 4 * q : wbase, v);
        }
        T* xs = stage_x(st);
        for (int id = tid; id < BT * 16; id += kThreads) {
          const int r = id >> 4, ch = id & 15;
          const bool v = in && r < rows;
          cp_async16(xs + r * XP + ch * 8, v ? X + a_off[r] + t * 128 + ch * 8 : X, v);
        }
      };
      // The folded scales of k-tile t: loaded into registers, stored into a stage later.
      float2 sreg[C::SCALE_PER_THREAD];
      auto load_scales = [&](int t) {
#pragma unroll
        for (int i = 0; i < C::SCALE_PER_THREAD; ++i) {
          const int id = tid + i * kThreads;
          const int r = id / GPT, j = id % GPT;
          float2 v = make_float2(0.0f, 0.0f);
          if (id < BW * GPT && t < tiles && n0 + r < N) {
            const int64_t si = sbase + static_cast<int64_t>(n0 + r) * G + t * GPT + j;
            const float s = to_f<T>(Sc[si]), b = to_f<T>(Bi[si]);
            v = make_float2(kInv * s, fmaf(-kOff, s, b));
          }
          sreg[i] = v;
        }
      };
      auto store_scales = [&](int st) {
        float2* ss = stage_s(st);
#pragma unroll
        for (int i = 0; i < C::SCALE_PER_THREAD; ++i) {
          const int id = tid + i * kThreads;
          if (id < BW * GPT) ss[id] = sreg[i];
        }
      };

#pragma unroll
      for (int st = 0; st < S - 1; ++st) {
        issue(st, st);
        cp_async_commit();
        load_scales(st);
        store_scales(st);
      }
      const int wrow = wr * 16 * MTW;  // the warp's first W row in the block
      const int xrow = wc * 32;  // its first x row
      for (int t = 0; t < tiles; ++t) {
        const int st = t % S;
        cp_async_wait<S - 2>();
        __syncthreads();  // tile t landed for every thread; tile t - 1's stage is free
        issue(t + S - 1, (t + S - 1) % S);
        cp_async_commit();
        load_scales(t + S - 1);
        const uint32_t* ws = stage_w(st);
        const T* xs = stage_x(st);
        const float2* ss = stage_s(st);
        float gacc[MTW][4][4], xacc[4][4];
#pragma unroll
        for (int i = 0; i < SPW; ++i) {
          const int slot = kp * SPW + i;
          const int xw = word_of<PAIRED>(c, slot);
          uint32_t wa[MTW], wb[MTW];  // the slot's word of rows g and g + 8 of each m-tile
#pragma unroll
          for (int mt = 0; mt < MTW; ++mt) {
            wa[mt] = ws[(wrow + mt * 16 + g) * WP + xw];
            wb[mt] = ws[(wrow + mt * 16 + g + 8) * WP + xw];
          }
          uint4 xq[4];  // the slot's 8 x values of rows g of each n-tile
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) xq[nt] = *reinterpret_cast<const uint4*>(xs + (xrow + nt * 8 + g) * XP + xw * 8);
#pragma unroll
          for (int s = 0; s < 2; ++s) {
            // Weight fragments of the word's k16 step s: nibble pairs (2s, 2s+4), (2s+1, 2s+5).
            uint32_t af[MTW][4];
#pragma unroll
            for (int mt = 0; mt < MTW; ++mt) {
              af[mt][0] = nib_pair<T>(wa[mt], 2 * s);
              af[mt][1] = nib_pair<T>(wb[mt], 2 * s);
              af[mt][2] = nib_pair<T>(wa[mt], 2 * s + 1);
              af[mt][3] = nib_pair<T>(wb[mt], 2 * s + 1);
            }
            const bool first = i % FOLD_EVERY == 0 && s == 0;  // a group's first k16 step: C = 0
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
              const uint32_t b0 = s == 0 ? __byte_perm(xq[nt].x, xq[nt].z, 0x5410) : __byte_perm(xq[nt].y, xq[nt].w, 0x5410);
              const uint32_t b1 = s == 0 ? __byte_perm(xq[nt].x, xq[nt].z, 0x7632) : __byte_perm(xq[nt].y, xq[nt].w, 0x7632);
              if (first) mma_w4_zero<T>(xacc[nt], ones_a, b0, b1);
              else mma_w4<T>(xacc[nt], ones_a, b0, b1);
#pragma unroll
              for (int mt = 0; mt < MTW; ++mt) {
                if (first) mma_w4_zero<T>(gacc[mt][nt], af[mt], b0, b1);
                else mma_w4<T>(gacc[mt][nt], af[mt], b0, b1);
              }
            }
          }
          if ((i + 1) % FOLD_EVERY == 0) {
            const int j = slot / C::WPG;  // the group of these word slots inside the k-tile
#pragma unroll
            for (int mt = 0; mt < MTW; ++mt) {
              const float2 fa = ss[(wrow + mt * 16 + g) * GPT + j];
              const float2 fb = ss[(wrow + mt * 16 + g + 8) * GPT + j];
#pragma unroll
              for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                  const float2 f = e < 2 ? fa : fb;
                  acc[mt][nt][e] = fmaf(f.x, gacc[mt][nt][e], fmaf(f.y, xacc[nt][e], acc[mt][nt][e]));
                }
            }
          }
        }
        store_scales((t + S - 1) % S);  // (stage read S - 1 tiles later, after as many barriers)
      }
      cp_async_wait<0>();
    }
    // K parts summed through shared memory (reusing the ring), then the
    // exact recompute of non-finite sums, and the stores.
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < MTW; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int n = wr * 16 * MTW + mt * 16 + g + (e >= 2 ? 8 : 0);
          const int m = wc * 32 + nt * 8 + 2 * c + (e & 1);
          red[(kp * BT + m) * C::RP + n] = acc[mt][nt][e];
        }
    __syncthreads();
    for (int o = tid; o < BT * (BW / 2); o += kThreads) {
      const int m = o / (BW / 2), n = (o % (BW / 2)) * 2;
      if (m >= rows || n0 + n >= N) continue;
      float v[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float sum = 0.0f;
#pragma unroll
        for (int q = 0; q < KW; ++q) sum += red[(q * BT + m) * C::RP + n + h];
        v[h] = sum;
        if (u.ok && !isfinite(sum) && n0 + n + h < N) {
          const int64_t row = wi * N + n0 + n + h;
          v[h] = w4_exact<T, GS>(X + a_off[m], p.w + row * words_per_row, Sc + row * G, Bi + row * G, K);
        }
      }
      T* dst = O + o_off[m] + n0 + n;
      if (n0 + n + 1 < N && (reinterpret_cast<uintptr_t>(dst) & 3u) == 0) {
        const T pair[2] = {from_f<T>(v[0]), from_f<T>(v[1])};
        *reinterpret_cast<uint32_t*>(dst) = *reinterpret_cast<const uint32_t*>(pair);
      } else {
        dst[0] = from_f<T>(v[0]);
        if (n0 + n + 1 < N) dst[1] = from_f<T>(v[1]);
      }
    }
  }
}

template <typename T, int GS, int MTW, int WR, int WC, int KW, int S, bool GROUPED>
void launch_cfg(const QmmKernelParams& p, int64_t units, const OpScope& scope) {
  using Cf = W4Cfg<T, GS, MTW, WR, WC, KW, S>;
  constexpr auto kernel = qmm_w4_kernel<T, GS, MTW, WR, WC, KW, S, GROUPED>;
  static std::atomic<uint64_t> opted{0};
  opt_in_shared_memory(kernel, Cf::kSmem, opted, scope, "qmm_w4_mma");
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, Cf::BW)),
                  GROUPED ? 1u : static_cast<unsigned>(ceil_div(p.M, Cf::BT)),
                  static_cast<unsigned>(units < 65535 ? units : 65535));
  kernel<<<grid, Cf::kThreads, Cf::kSmem, scope.stream()>>>(p);
}

/// Tilings (W rows x x rows per block, warps along K): large 128 x 128 x 1
/// (64 x 32 warp tiles, one block per SM) for many rows, mid 128 x 64 x 2 and
/// small 64 x 64 x 4 where fewer blocks would leave SMs idle, and large2
/// 128 x 64 x 1 (32 x 32 warp tiles, two blocks per SM: more warps to hide
/// latency, more decode per mma) for grouped items.
/// MMKIT_QMM_W4_TILE=large|large2|mid|small forces one (tests and tuning).
enum class W4Tile { large, large2, mid, small };

/// MMKIT_QMM_W4_TILE, read per call (so a test can set it).
bool forced_tile(W4Tile& t) {
  const int i = env_choice("MMKIT_QMM_W4_TILE", {"large", "large2", "mid", "small"});
  if (i >= 0) t = static_cast<W4Tile>(i);
  return i >= 0;
}

/// The largest tile whose blocks still make about one wave (H200, 8192 x 8192,
/// run 62: M = 64 small 80 us (mid 112, large 190); M = 128 mid 111 (small
/// 155, large 187); M = 256 large 186 (mid 221); M = 2048 large 1439 (mid 1726).
W4Tile pick_tile(int64_t M, int64_t N, int64_t units, int sms) {
  W4Tile t;
  if (forced_tile(t)) return t;
  const int64_t wave = sms - sms / 10;
  if (ceil_div(N, 128) * ceil_div(M, 128) * units >= wave) return W4Tile::large;
  if (ceil_div(N, 128) * ceil_div(M, 64) * units >= wave) return W4Tile::mid;
  return W4Tile::small;
}

template <typename T, int GS, bool GROUPED>
void launch_tile(const QmmKernelParams& p, W4Tile tile, int64_t units, const OpScope& scope) {
  switch (tile) {
    case W4Tile::large: return launch_cfg<T, GS, 4, 2, 4, 1, 4, GROUPED>(p, units, scope);
    case W4Tile::large2: return launch_cfg<T, GS, 2, 4, 2, 1, 3, GROUPED>(p, units, scope);
    case W4Tile::mid: return launch_cfg<T, GS, 4, 2, 2, 2, 4, GROUPED>(p, units, scope);
    default: return launch_cfg<T, GS, 4, 1, 2, 4, 4, GROUPED>(p, units, scope);
  }
}

template <typename T, bool GROUPED>
void launch_gs(int gs, const QmmKernelParams& p, W4Tile tile, int64_t units, const OpScope& scope) {
  switch (gs) {
    case 32: return launch_tile<T, 32, GROUPED>(p, tile, units, scope);
    case 64: return launch_tile<T, 64, GROUPED>(p, tile, units, scope);
    default: return launch_tile<T, 128, GROUPED>(p, tile, units, scope);
  }
}

bool w4_format_ok(const detail::QmmDesc& d) {
  const int gs = d.format.group_size;
  return (gs == 32 || gs == 64 || gs == 128) && affine4_tensor_core_ok(d);
}

}  // namespace

bool qmm_w4_supports(const detail::QmmDesc& d) {
  if (d.M <= kQmvMmaMaxM || d.M >= (int64_t{1} << 31) / 2 || ceil_div(d.M, 64) > 65535) return false;
  return w4_format_ok(d);
}

bool qmm_w4_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  if (!affine4_copies_aligned(a)) return false;
  const QmmKernelParams p = qmm_kernel_params(d, a, scope);
  const W4Tile tile = pick_tile(d.M, d.N, d.batch, device_info(scope.device()).sm_count);
  if (d.dtype == Dtype::float16) launch_gs<__half, false>(d.format.group_size, p, tile, d.batch, scope);
  else launch_gs<__nv_bfloat16, false>(d.format.group_size, p, tile, d.batch, scope);
  scope.check_launch("qmm_w4_mma");
  return true;
}

bool qmm_w4_grouped_supports(const detail::QmmDesc& d) {
  return affine4_many_rows_grouped(d) && w4_format_ok(d);
}

bool qmm_w4_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  if (!affine4_copies_aligned(a)) return false;
  QmmKernelParams p = qmm_kernel_params(d, a, scope);
  // Items of 64 rows on 128-row x 64-column blocks at two blocks per SM
  // (large2): faster than 128-row items on the large tile and than the mid
  // tile (Qwen3-30B-A3B at T = 4096, 256 rows per expert, H200 run 62:
  // gate+up 1560 / 1625 / 1765 us, down 947 / 1073 / 1168 us).
  W4Tile tile = W4Tile::large2;
  forced_tile(tile);
  const int item_rows = tile == W4Tile::large ? 128 : 64;
  GatherPlan plan(scope, p.lhs, p.rhs, d.batch, d.M, d.x_batch, d.w_batch, item_rows, p.guard, p.out,
                  static_cast<int>(itemsize(d.dtype)), d.N);
  p.plan = plan.view();
  p.M = item_rows;
  const int64_t items = plan.max_items();
  if (d.dtype == Dtype::float16) launch_gs<__half, true>(d.format.group_size, p, tile, items, scope);
  else launch_gs<__nv_bfloat16, true>(d.format.group_size, p, tile, items, scope);
  scope.check_launch("qmm_w4_mma (grouped gather)");
  return true;
}

}  // namespace mmkit::cuda
