// `mmkit quantize`: a safetensors checkpoint -> the same checkpoint with its
// linear-layer weights quantized in MLX's layout, as mlx-lm writes it:
// `<module>.weight` (uint32 codes), `<module>.scales`, `<module>.biases`
// (affine only). Streams one tensor at a time and never leaves a partial file.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "mmkit/io.h"
#include "tools/quant_spec.h"

namespace mmkit::tools {

struct QuantizeFileOptions {
  std::string mode = "affine";
  std::optional<int> bits;
  std::optional<int> group_size;
  /// ECMAScript regex searched in each tensor name; replaces the default name
  /// rule (see would_quantize). The shape/dtype requirements always apply.
  std::optional<std::string> filter;
  bool force = false;  // overwrite an existing output
};

struct QuantizeFileReport {
  QuantSpec quant;
  int64_t quantized = 0;  // tensors quantized
  int64_t copied = 0;     // tensors copied unchanged
  /// With a filter: names it matched that cannot be quantized, with why.
  std::vector<std::string> not_quantizable;
  uint64_t in_bytes = 0, out_bytes = 0;  // file sizes
};

/// (index, total, tensor name), called before each input tensor is processed.
using TensorProgress = std::function<void(size_t, size_t, const std::string&)>;

/// The default choice, which is mlx-lm's (it quantizes every Linear and
/// Embedding, lm_head included): names ending in ".weight" without "norm".
bool default_name_rule(const std::string& name);
/// Empty when `t` can be quantized with `q`, else the reason it cannot
/// (not a float type, fewer than 2 dims, last dim not a multiple of the
/// group size, not named <module>.weight).
std::string quantize_blocker(const TensorInfo& t, const QuantSpec& q);

/// Writes `out` (via `out`.tmp.<pid>, renamed at the end; removed on any
/// error or on SIGINT/SIGTERM). Throws mmkit::Error.
QuantizeFileReport quantize_safetensors(const std::string& in, const std::string& out, const QuantizeFileOptions& o,
                                        const TensorProgress& progress = {});

}  // namespace mmkit::tools
