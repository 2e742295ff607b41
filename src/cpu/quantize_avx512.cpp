// avx512 build of the quantize / dequantize / conversions (quantize_simd.inc) and the kernel table.
// Compiled with this ISA's -m flags (src/cpu/cpu.cmake); only called after
// cpu_isa.cpp has checked the CPU supports it.
#define MMKIT_ISA_NS avx512
#define MMKIT_ISA_MR 12
#define MMKIT_ISA_NR 32
#include "cpu/quantize_simd.inc"

namespace mmkit::cpu {
namespace {
constexpr SimdKernels kTable{
    "avx512", 16, 12, 32, 64,
    avx512::to_f32, avx512::from_f32,
    avx512::qmv_scratch_floats, avx512::qmv, avx512::pack_qt, avx512::pack_qn,
    avx512::pack_a, avx512::pack_b, avx512::gemm_tile,
    avx512::dequantize, avx512::quantize_row,
};
}  // namespace
const SimdKernels* simd_kernels_avx512() { return &kTable; }
}  // namespace mmkit::cpu
