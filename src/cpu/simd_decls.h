// Declarations of the per-ISA kernel functions (defined in qmm_simd.inc,
// gemm_simd.inc, quantize_simd.inc), gathered into a SimdKernels table by
// quantize_simd.inc. Include after defining MMKIT_ISA_NS.
#pragma once

#include "cpu/simd_kernels.h"

#if !defined(MMKIT_ISA_NS)
#error "define MMKIT_ISA_NS before including cpu/simd_decls.h"
#endif

namespace mmkit::cpu::MMKIT_ISA_NS {

constexpr int kGemmMr = MMKIT_ISA_MR;  // micro-tile rows
constexpr int kGemmNr = MMKIT_ISA_NR;  // micro-tile columns (two vectors)

void to_f32(const void* src, int dt, int64_t n, float* dst);
void from_f32(const float* src, int64_t n, int dt, void* dst);
int64_t qmv_scratch_floats(const QWeights& q);
void qmv(const QmvArgs& a);
void pack_qt(const QWeights& q, int64_t n0, int nv, int64_t k0, int64_t kc, float* bp, float* scratch);
void pack_qn(const QWeights& q, int64_t n0, int nv, int64_t k0, int64_t kc, float* bp);
void pack_a(const void* const* rows, int dt, int mrows, int mr_pack, int64_t K, float* ap, int64_t kblock_stride,
            const float* kscale, int64_t kscale_ld, int64_t kscale_div);
void pack_b(const void* b, int dt, bool kmajor, int64_t ldb, int64_t n0, int nv, int64_t k0, int64_t kc, float* bp,
            const float* kscale, int64_t kscale_div);
void gemm_tile(int mr_pack, int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, int mv, int nv,
               bool accumulate);
void dequantize(const QWeights& q, int64_t r0, int64_t r1, void* out, int odt, bool has_gs, float gmul);
void quantize_row(const float* w, int64_t cols, int mode, int bits, int gs, int dt, float enc, bool has_gs,
                  uint32_t* q, void* scales, void* biases);

}  // namespace mmkit::cpu::MMKIT_ISA_NS
