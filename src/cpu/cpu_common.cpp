#include "cpu/cpu_common.h"

#include <cstring>

#include "core/registry.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace mmkit::cpu {

void to_float(const void* src, Dtype dt, int64_t n, float* dst) {
  if (n <= 0) return;  // K = 0: dst may be an empty vector's null data()
  switch (dt) {
    case Dtype::float32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case Dtype::float16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_bits_to_float(s[i]);
      return;
    }
    case Dtype::bfloat16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_float(s[i]);
      return;
    }
    default: break;
  }
}

void from_float(const float* src, int64_t n, Dtype dt, void* dst) {
  for (int64_t i = 0; i < n; ++i) store_f(dst, dt, i, src[i]);
}

int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void register_quantize_kernels(detail::Registries& r);
void register_qmm_kernels(detail::Registries& r);
void register_gemm_kernels(detail::Registries& r);
void register_qmm_fast_kernels(detail::Registries& r);
void register_gemm_fast_kernels(detail::Registries& r);
void register_quantize_fast_kernels(detail::Registries& r);

}  // namespace mmkit::cpu

namespace mmkit::detail {
void register_cpu_kernels(Registries& r) {
  cpu::register_quantize_kernels(r);
  cpu::register_qmm_kernels(r);
  cpu::register_gemm_kernels(r);
  // SIMD entries (higher priority; each supports() checks the active ISA level).
  cpu::register_qmm_fast_kernels(r);
  cpu::register_gemm_fast_kernels(r);
  cpu::register_quantize_fast_kernels(r);
}
}  // namespace mmkit::detail
