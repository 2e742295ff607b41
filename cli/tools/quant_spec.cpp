#include "tools/quant_spec.h"

#include <nlohmann/json.hpp>

#include "mmkit/array.h"
#include "mmkit/error.h"
#include "mmkit/quantize.h"

namespace mmkit::tools {

size_t QuantSpec::scale_bytes(Dtype wdtype) const { return mode == "affine" ? itemsize(wdtype) : 1; }

uint64_t QuantSpec::matrix_bytes(int64_t rows, int64_t cols, Dtype wdtype) const {
  const uint64_t codes = static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols) * bits / 8;
  const uint64_t groups = static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols / group_size);
  return codes + groups * scale_bytes(wdtype) * (has_biases() ? 2 : 1);
}

std::string QuantSpec::str() const {
  if (mode == "affine") return "affine " + std::to_string(bits) + "-bit g" + std::to_string(group_size);
  return mode;
}

std::string QuantSpec::json() const {
  nlohmann::ordered_json j;
  j["group_size"] = group_size;
  j["bits"] = bits;
  j["mode"] = mode;
  return j.dump();
}

QuantSpec resolve_quant_spec(const std::string& mode, std::optional<int> bits, std::optional<int> group_size) {
  const auto [dgs, dbits] = quantization_defaults(mode, "quantize");
  QuantSpec q{mode, bits.value_or(dbits), group_size.value_or(dgs)};
  // Out-of-range values would make the probe below divide by zero or allocate a lot.
  if (q.group_size <= 0 || q.group_size > 1024)
    throw_error("quantize", "The requested group size ", q.group_size, " is not supported.");
  if (q.bits <= 0 || q.bits > 32) throw_error("quantize", "The requested number of bits ", q.bits, " is not supported.");
  // Quantizing one zero group runs every check of mmkit::quantize, so the
  // tools accept exactly what the library accepts, with its messages.
  (void)quantize(Array::zeros({1, q.group_size}, Dtype::float32), q.group_size, q.bits, q.mode);
  return q;
}

}  // namespace mmkit::tools
