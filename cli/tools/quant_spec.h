// A resolved quantization format (mode, bits, group size) and the byte
// accounting of PERF.md section 1 that the demo and the bench both use.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "mmkit/dtype.h"

namespace mmkit::tools {

struct QuantSpec {
  std::string mode = "affine";
  int bits = 4;
  int group_size = 64;

  bool has_biases() const { return mode == "affine"; }
  /// Bytes of one scale (and of one bias, affine only) for weights stored in `wdtype`.
  size_t scale_bytes(Dtype wdtype = Dtype::bfloat16) const;
  /// Bytes of a quantized (rows, cols) matrix: codes + scales (+ biases).
  uint64_t matrix_bytes(int64_t rows, int64_t cols, Dtype wdtype = Dtype::bfloat16) const;
  /// "affine 4-bit g64", "mxfp4".
  std::string str() const;
  /// {"group_size": 64, "bits": 4, "mode": "affine"} as mlx-lm's config writes it.
  std::string json() const;
};

/// Fills in the mode's defaults and validates the combination exactly as
/// mmkit::quantize does (its error messages, tag "[quantize]").
QuantSpec resolve_quant_spec(const std::string& mode, std::optional<int> bits, std::optional<int> group_size);

}  // namespace mmkit::tools
