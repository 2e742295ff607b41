// avx512 build of the quantized matmul kernels (qmm_simd.inc).
// Compiled with this ISA's -m flags (src/cpu/cpu.cmake); only called after
// cpu_isa.cpp has checked the CPU supports it.
#define MMKIT_ISA_NS avx512
#define MMKIT_ISA_MR 12
#define MMKIT_ISA_NR 32
#include "cpu/qmm_simd.inc"
