// Device helpers shared by every CUDA kernel: bit-exact float16/bfloat16
// conversions (mirrors of include/mmkit/dtype.h, so GPU and CPU round the
// same way, NaN encodings included), typed loads/stores, index checks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

#include "cuda/device/error_record.h"

namespace mmkit::cuda {

// Storage types: float, __half, __nv_bfloat16 (2-byte bit patterns).
__device__ __forceinline__ float bf16_bits_to_f(uint32_t h) { return __uint_as_float(h << 16); }

__device__ __forceinline__ uint16_t f_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

__device__ __forceinline__ uint16_t f_to_f16_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7d00u);
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (a >= 0x38800000u) return static_cast<uint16_t>(sign | ((a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13));
  // Subnormal: a * 2^24 rounded to an integer, ties to even (explicit _rn ops
  // so no contraction changes the rounding).
  const float v = __fmul_rn(__uint_as_float(a), 16777216.0f);
  const float r = __fsub_rn(__fadd_rn(v, 8388608.0f), 8388608.0f);
  return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
}

__device__ __forceinline__ float f16_bits_to_f(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  if (e == 0) return __uint_as_float(__float_as_uint(__fmul_rn(static_cast<float>(m), 5.9604644775390625e-8f)) | sign);
  if (e == 31) return __uint_as_float(sign | 0x7f800000u | (m << 13));
  return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}

template <typename T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f<__half>(__half v) { return f16_bits_to_f(__half_as_ushort(v)); }
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return bf16_bits_to_f(__bfloat16_as_ushort(v));
}

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __ushort_as_half(f_to_f16_bits(v)); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __ushort_as_bfloat16(f_to_bf16_bits(v));
}

// NaN results with x86 (SSE/AVX) rules, so NaN bit patterns match the CPU
// backend: a NaN operand comes back quieted (the first one), an invalid
// operation on non-NaN operands gives the negative default NaN 0xFFC00000.
// (The GPU itself always returns the positive canonical NaN.)
__device__ __forceinline__ float x86_nan(float r, float a, float b) {
  if (r == r) return r;
  if (a != a) return __uint_as_float(__float_as_uint(a) | 0x00400000u);
  if (b != b) return __uint_as_float(__float_as_uint(b) | 0x00400000u);
  return __uint_as_float(0xFFC00000u);
}
__device__ __forceinline__ float mul_x86(float a, float b) { return x86_nan(__fmul_rn(a, b), a, b); }
__device__ __forceinline__ float add_x86(float a, float b) { return x86_nan(__fadd_rn(a, b), a, b); }
__device__ __forceinline__ float sub_x86(float a, float b) { return x86_nan(__fsub_rn(a, b), a, b); }
__device__ __forceinline__ float div_x86(float a, float b) { return x86_nan(__fdiv_rn(a, b), a, b); }
__device__ __forceinline__ float rint_x86(float a) { return a != a ? __uint_as_float(__float_as_uint(a) | 0x00400000u) : rintf(a); }

/// Rounds v to T's precision and back (round_to() of dtype.h).
template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_f<T>(from_f<T>(v)); }

/// Checks a device-resident index; on failure records it (first writer wins)
/// and returns false so the caller skips the work (never reads out of bounds).
__device__ __forceinline__ bool index_ok(int64_t v, int64_t pos, int64_t bound, const IndexGuard& g, ErrWhich which) {
  if (v >= 0 && v < bound) return true;
  if (g.rec != nullptr && atomicCAS(&g.rec->flag, 0, 1) == 0) {
    g.rec->op = g.op;
    g.rec->which = static_cast<int32_t>(which);
    g.rec->value = v;
    g.rec->position = pos;
    g.rec->bound = bound;
    __threadfence_system();
  }
  return false;
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace mmkit::cuda
