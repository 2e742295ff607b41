// Scalar float64 reference implementations of every op's semantics, written
// independently of src/ops and the backends. Tests trust only these.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "mmkit/array.h"

namespace mmkit::ref {

struct Tensor {
  Shape shape;
  std::vector<double> v;  // row-major
  double max_abs() const;
};

/// Logical (row-major) values of any array as doubles.
Tensor to_tensor(const Array& a);

/// Float64 dequantize: value(code) * scale (+ bias), no intermediate rounding.
/// Packed codes are read bit by bit from the stream (independent of the
/// library's unpacker).
Tensor dequantize(const Array& w, const Array& scales, const std::optional<Array>& biases, int group_size, int bits,
                  const std::string& mode, std::optional<double> global_scale = std::nullopt);

/// numpy matmul on tensors (1-D promotion and batch broadcasting).
Tensor matmul(const Tensor& a, const Tensor& b);

Tensor quantized_matmul(const Array& x, const Array& w, const Array& scales, const std::optional<Array>& biases,
                        bool transpose, int group_size, int bits, const std::string& mode);

Tensor gather_qmm(const Array& x, const Array& w, const Array& scales, const std::optional<Array>& biases,
                  const std::optional<Array>& lhs, const std::optional<Array>& rhs, bool transpose, int group_size,
                  int bits, const std::string& mode);

Tensor gather_mm(const Array& a, const Array& b, const std::optional<Array>& lhs, const std::optional<Array>& rhs);

/// Masks: bool masks as 0/1, float masks rounded to the output dtype `T`; a
/// float-masked operand element (mask * data) is rounded to float32, as the
/// backends compute it (it can overflow to +-Inf), the rest is exact.
Tensor block_masked_mm(const Array& a, const Array& b, int block_size, const std::optional<Array>& mask_out,
                       const std::optional<Array>& mask_lhs, const std::optional<Array>& mask_rhs);

}  // namespace mmkit::ref
