// CPU backend introspection.
#pragma once

namespace mmkit {

/// The SIMD level the CPU kernels run at in this process: "avx512", "avx2" or
/// "scalar" (the portable kernels). Chosen once, at first use: the best level
/// the CPU supports, or the one MMKIT_CPU_ISA=avx512|avx2|scalar forces
/// (throws mmkit::Error if the CPU lacks it or the name is unknown).
const char* cpu_isa();

}  // namespace mmkit
