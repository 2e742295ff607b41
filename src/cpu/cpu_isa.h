// Runtime SIMD level of the CPU backend. The library is compiled for
// baseline x86-64; kernels for wider ISAs live in their own translation units
// (per-file -m flags, src/cpu/cpu.cmake) and are only called after this module
// has checked that the CPU and OS support them. The level is chosen once per
// process: the best the machine has, or MMKIT_CPU_ISA=avx512|avx2|scalar.
#pragma once

#include <cstdint>
#include <vector>

namespace mmkit::cpu {

enum class Isa : uint8_t { scalar = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);

/// Every level this machine can run, best first (always ends in scalar).
std::vector<Isa> available_isas();
bool isa_available(Isa isa);
/// AVX-512 VNNI present: the avx512 level then runs affine 4-bit qmv with
/// vpdpbusd (qmm_avx512vnni.cpp) unless disabled for testing.
bool has_avx512_vnni();
/// has_avx512_vnni() and not switched off by set_cpu_vnni_qmv_for_testing.
bool vnni_qmv_enabled();
/// AVX-512 BF16 present: the avx512 level then runs bfloat16-activation qmv
/// with vdpbf16ps (exact products, float32 accumulation).
bool has_avx512_bf16();

/// The level the fast kernels run at. Throws mmkit::Error when MMKIT_CPU_ISA
/// names an unknown level or one this CPU lacks.
Isa active_isa();

}  // namespace mmkit::cpu

namespace mmkit::detail {
/// Tests and benchmarks only: switches the active level for the whole process
/// (not thread-safe against concurrent ops). Throws when `isa` is unavailable.
/// Returns the previous level.
cpu::Isa set_cpu_isa_for_testing(cpu::Isa isa);
/// Tests and benchmarks only: allows (true, the default) or forbids the VNNI
/// qmv kernel, to compare it with the float32 one in one process. Returns the
/// previous setting.
bool set_cpu_vnni_qmv_for_testing(bool on);
}  // namespace mmkit::detail
