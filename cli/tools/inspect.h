// `mmkit inspect`: the tensors of a safetensors file and the quantization
// each quantized module uses, inferred from the shapes (and the metadata).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mmkit/io.h"
#include "tools/quant_spec.h"

namespace mmkit::tools {

struct DetectedQuant {
  QuantSpec spec;
  /// Other (mode, bits, group size) the shapes allow when the metadata does not decide.
  std::vector<QuantSpec> alternatives;
  bool from_metadata = false;
};

/// A `.weight` uint32 tensor with a sibling `.scales` (and `.biases` for
/// affine): the shapes fix group_size * bits; `meta` (the file's
/// "quantization" metadata or mlx-lm's config.json entry {"group_size",
/// "bits", "mode"}) picks among the candidates, otherwise 4-bit then group 64
/// is preferred. nullopt when the tensors are not a consistent MLX layout.
std::optional<DetectedQuant> detect_quantization(const TensorInfo& w, const TensorInfo* scales,
                                                 const TensorInfo* biases, const std::optional<QuantSpec>& meta);

/// mlx-lm's metadata/config entry {"group_size": 64, "bits": 4, "mode": "affine"} (mode optional).
std::optional<QuantSpec> parse_quantization_metadata(const std::string& json);

struct InspectedTensor {
  TensorInfo info;
  uint64_t bytes = 0;
  std::string role;  // "" or "scales of <module>" / "biases of <module>"
  std::optional<DetectedQuant> quant;  // on <module>.weight
};

struct InspectResult {
  std::string path;
  uint64_t file_bytes = 0;
  std::map<std::string, std::string> metadata;
  std::vector<InspectedTensor> tensors;
  std::map<std::string, int64_t> quantized_modules;  // format -> count
  std::string quant_source;  // where the parameters came from: "file metadata", a config.json, or ""
};

InspectResult inspect_safetensors(const std::string& path);
std::string format_inspect(const InspectResult& r);

}  // namespace mmkit::tools
