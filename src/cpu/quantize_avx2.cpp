// avx2 build of the quantize / dequantize / conversions (quantize_simd.inc) and the kernel table.
// Compiled with this ISA's -m flags (src/cpu/cpu.cmake); only called after
// cpu_isa.cpp has checked the CPU supports it.
#define MMKIT_ISA_NS avx2
#define MMKIT_ISA_MR 6
#define MMKIT_ISA_NR 16
#include "cpu/quantize_simd.inc"

namespace mmkit::cpu {
namespace {
constexpr SimdKernels kTable{
    "avx2", 8, 6, 16, 12,
    avx2::to_f32, avx2::from_f32,
    avx2::qmv_scratch_floats, avx2::qmv, avx2::pack_qt, avx2::pack_qn,
    avx2::pack_a, avx2::pack_b, avx2::gemm_tile,
    avx2::dequantize, avx2::quantize_row,
};
}  // namespace
const SimdKernels* simd_kernels_avx2() { return &kTable; }
}  // namespace mmkit::cpu
