// Warp-level tensor-core pieces (sm_80+): cp.async, ldmatrix and
// mma.sync.m16n8k16 with float32 accumulation, and the 64 x 64 x 32 block
// tile both tensor-core kernels use: 4 warps in a 2 x 2 grid, each warp a
// 32 x 32 sub-tile = 2 (m16) x 4 (n8) mma tiles, K in two k16 steps.
// Shared tiles are row-major with 8 elements of padding (row pitch 80 bytes
// for a 32-wide tile): the 8 rows an ldmatrix phase reads fall in distinct
// 16-byte bank groups.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include <type_traits>

namespace mmkit::cuda {

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = pred ? 16 : 0;  // 0 bytes read: the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
/// cp.async of 4, 8 or 16 bytes through L1 (.ca), zero-filled when !pred.
template <int BYTES>
__device__ __forceinline__ void cp_async_ca(void* smem, const void* gmem, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = pred ? BYTES : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(gmem), "n"(BYTES), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

/// c (16x8, f32) += a (16x16) * b (16x8), T = __half or __nv_bfloat16.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

/// Two exact floats (small integers or few-bit fp values) as a packed T pair.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    // Exact in bfloat16: the high halves of the float32 patterns.
    return __byte_perm(__float_as_uint(lo), __float_as_uint(hi), 0x7632);
  } else {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

/// 1.0 in both halves of a T pair (B operand of the row-sum mma).
template <typename T>
__device__ __forceinline__ uint32_t ones2() {
  return std::is_same_v<T, __nv_bfloat16> ? 0x3F803F80u : 0x3C003C00u;
}

struct MmaTile {
  static constexpr int BM = 64, BN = 64, BK = 32, THREADS = 128;
  static constexpr int LDA = BK + 8;  // shared row pitch (elements) of (rows, BK) tiles
  static constexpr int LDBT = BN + 8;  // pitch of a (BK, BN) tile
};

/// A fragments of one k16 step for the warp's two m16 tiles from As (BM, LDA).
template <typename T>
__device__ __forceinline__ void load_a_frags(uint32_t (&a)[2][4], const T* As, int wm, int ks, int lane) {
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
    ldmatrix_x4(a[mi], As + (wm * 32 + mi * 16 + (lane % 16)) * MmaTile::LDA + ks * 16 + (lane / 16) * 8);
}

/// B fragments of one k16 step for the warp's four n8 tiles from Bs (BN, LDA)
/// stored n-major (k contiguous).
template <typename T>
__device__ __forceinline__ void load_b_frags(uint32_t (&b)[4][2], const T* Bs, int wn, int ks, int lane) {
#pragma unroll
  for (int nj = 0; nj < 2; ++nj) {
    uint32_t r[4];
    ldmatrix_x4(r, Bs + (wn * 32 + nj * 16 + (lane / 16) * 8 + (lane % 8)) * MmaTile::LDA + ks * 16 +
                       ((lane / 8) % 2) * 8);
    b[2 * nj][0] = r[0];
    b[2 * nj][1] = r[1];
    b[2 * nj + 1][0] = r[2];
    b[2 * nj + 1][1] = r[3];
  }
}

/// Same from a (BK, LDBT) tile stored k-major (n contiguous), via ldmatrix.trans.
template <typename T>
__device__ __forceinline__ void load_b_frags_trans(uint32_t (&b)[4][2], const T* Bt, int wn, int ks, int lane) {
#pragma unroll
  for (int nj = 0; nj < 2; ++nj) {
    uint32_t r[4];
    ldmatrix_x4_trans(r, Bt + (ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * MmaTile::LDBT + wn * 32 + nj * 16 +
                             (lane / 16) * 8);
    b[2 * nj][0] = r[0];
    b[2 * nj][1] = r[1];
    b[2 * nj + 1][0] = r[2];
    b[2 * nj + 1][1] = r[3];
  }
}

/// Copies a (64, 32) tile of a row-major (rows, ld) matrix into As (64, LDA)
/// with cp.async, zero-filling rows >= rows_valid and columns >= cols_valid
/// (cols_valid a multiple of 8). 128 threads, 2 chunks of 16 bytes each.
template <typename T>
__device__ __forceinline__ void cp_async_tile_rows(T* As, const T* src, int64_t ld, int64_t rows_valid,
                                                   int64_t cols_valid, int tid) {
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int id = tid + q * MmaTile::THREADS;
    const int r = id / 4, c = (id % 4) * 8;
    const bool in = r < rows_valid && c < cols_valid;
    cp_async16(As + r * MmaTile::LDA + c, in ? src + r * ld + c : src, in);
  }
}

}  // namespace mmkit::cuda
