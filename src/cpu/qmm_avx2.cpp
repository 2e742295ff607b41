// avx2 build of the quantized matmul kernels (qmm_simd.inc).
// Compiled with this ISA's -m flags (src/cpu/cpu.cmake); only called after
// cpu_isa.cpp has checked the CPU supports it.
#define MMKIT_ISA_NS avx2
#define MMKIT_ISA_MR 6
#define MMKIT_ISA_NR 16
#include "cpu/qmm_simd.inc"
