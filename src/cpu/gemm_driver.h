// Blocked GEMM driver shared by the fast CPU gather_mm and the large-M
// quantized matmul path: C (M, N) = A (M, K) @ B (K, N), A packed once per
// call (Ap[tile][k][mr]), B packed (or dequantized) panel by panel by the
// job's callback, float32 accumulation, OpenMP over (n-block, m-block)
// items of all jobs together so every core has work even for many small
// problems (one per expert).
//
// Blocking (AVX-512 numbers; AVX2 halves NR): KC = 128 so a packed B
// micro-panel (KC x NR floats = 16 KB) stays in L1 while A micro-panels stream
// from L2; NC = 128 columns (64 KB of packed B per k-block, L2); MC <= 240 rows.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "cpu/simd_kernels.h"

namespace mmkit::cpu {

struct GemmJob {
  int64_t M = 0, N = 0, K = 0;
  int mr = 1;                 // packing width of ap (a gemm_tile width)
  /// A packed k-block-major (pack_a with kblock_stride = a_kblock_stride(M, mr)):
  /// tile t of k-block b at ap + b * kblock_stride + t * kGemmKc * mr.
  const float* ap = nullptr;
  /// Fills bp[k][j] (kc x nr) with B[k0 + k][n0 + j] for j < nv, zeros beyond.
  /// k0 and kc are multiples of kc_align (except a final partial block ending at K).
  std::function<void(int64_t n0, int nv, int64_t k0, int64_t kc, float* bp, float* scratch)> pack_b;
  /// Receives the finished rows [m0, m0 + mv) x columns [n0, n0 + nv) of C (row stride ldc).
  std::function<void(int64_t m0, int mv, int64_t n0, int nv, const float* c, int64_t ldc)> store;
};

/// Largest gemm_tile width not above what M needs (1, 2, 4, 8 or the ISA's mr).
int pick_mr(const SimdKernels& k, int64_t M);

/// Floats between k-blocks of the packed A of an M-row job, and its total size.
inline int64_t a_kblock_stride(int64_t M, int mr) { return (M + mr - 1) / mr * mr * kGemmKc; }
inline int64_t a_packed_floats(int64_t M, int64_t K, int mr) {
  return a_kblock_stride(M, mr) * ((K + kGemmKc - 1) / kGemmKc);
}

/// Runs every job; pack_scratch_floats is the scratch each pack_b call may use.
void run_gemm_jobs(const SimdKernels& k, const std::vector<GemmJob>& jobs, int64_t pack_scratch_floats);


}  // namespace mmkit::cpu
