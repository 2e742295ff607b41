// A float32 SIMT tile engine shared by the generic kernels: a 256-thread
// block computes a 64 x 64 output tile, each thread 4 x 4 outputs at rows
// ty + 16 i and columns tx + 16 j (conflict-free shared-memory reads), over
// K in steps of 16 held in shared memory as As[k][m], Bs[k][n] (float32).
// Loaders fill the tiles (converting / dequantizing to float32); the engine
// does the multiply-adds. Bound: CUDA-core FMA rate (these are the fallbacks).
#pragma once

namespace mmkit::cuda {

struct SimtTile {
  static constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;
  static constexpr int PAD = 4;
  float (*As)[BM + PAD];  // (BK, BM + PAD)
  float (*Bs)[BN + PAD];  // (BK, BN + PAD)
  float acc[4][4];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  }
  /// acc += As^T Bs over the BK rows of the tiles (call between barriers).
  __device__ __forceinline__ void mac(int ty, int tx) {
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[k][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[k][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }
};

}  // namespace mmkit::cuda
