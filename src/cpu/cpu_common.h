// Small helpers shared by the CPU kernels.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "mmkit/array.h"

namespace mmkit::cpu {

/// Loads element i of a float-typed buffer as float32.
inline float load_f(const void* p, Dtype dt, int64_t i) {
  switch (dt) {
    case Dtype::float16: return f16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    case Dtype::bfloat16: return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

/// Stores v (rounded to dt) at element i.
inline void store_f(void* p, Dtype dt, int64_t i, float v) {
  switch (dt) {
    case Dtype::float16: static_cast<uint16_t*>(p)[i] = float_to_f16_bits(v); break;
    case Dtype::bfloat16: static_cast<uint16_t*>(p)[i] = float_to_bf16_bits(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

/// Converts n elements of dt to float32.
void to_float(const void* src, Dtype dt, int64_t n, float* dst);
/// Converts n float32 values to dt (round to nearest even).
void from_float(const float* src, int64_t n, Dtype dt, void* dst);

/// Uninitialised float32 scratch (no zero-fill pass over large packed panels).
using FloatBuffer = std::unique_ptr<float[]>;
inline FloatBuffer float_buffer(size_t n) { return FloatBuffer(new float[n > 0 ? n : 1]); }

/// Number of worker threads the CPU backend uses.
int num_threads();

}  // namespace mmkit::cpu
