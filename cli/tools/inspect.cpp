#include "tools/inspect.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "mmkit/array.h"
#include "tools/util.h"

namespace mmkit::tools {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool same_prefix(const Shape& a, const Shape& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end() - 1, b.begin());
}

}  // namespace

std::optional<QuantSpec> parse_quantization_metadata(const std::string& text) {
  try {
    const auto j = nlohmann::json::parse(text);
    if (!j.is_object() || !j.contains("group_size") || !j.contains("bits")) return std::nullopt;
    QuantSpec q;
    q.group_size = j["group_size"].get<int>();
    q.bits = j["bits"].get<int>();
    q.mode = j.value("mode", std::string("affine"));
    return q;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::optional<DetectedQuant> detect_quantization(const TensorInfo& w, const TensorInfo* scales,
                                                 const TensorInfo* biases, const std::optional<QuantSpec>& meta) {
  if (w.dtype != Dtype::uint32 || !scales || w.shape.size() < 2 || !same_prefix(w.shape, scales->shape)) return std::nullopt;
  if (biases && (biases->shape != scales->shape || biases->dtype != scales->dtype)) return std::nullopt;
  const int64_t words = w.shape.back(), groups = scales->shape.back();
  if (groups <= 0 || (32 * words) % groups != 0) return std::nullopt;
  const int64_t product = 32 * words / groups;  // group_size * bits
  std::vector<QuantSpec> cands;
  if (biases) {
    if (!is_floating(scales->dtype)) return std::nullopt;
    // Preference when the shapes allow several: 4-bit first, then group 64.
    for (int b : {4, 8, 2, 3, 5, 6})
      for (int gs : {64, 32, 128})
        if (int64_t{gs} * b == product) cands.push_back({"affine", b, gs});
  } else {
    if (scales->dtype != Dtype::uint8) return std::nullopt;
    if (product == 16 * 4) cands.push_back({"nvfp4", 4, 16});
    if (product == 32 * 4) cands.push_back({"mxfp4", 4, 32});
    if (product == 32 * 8) cands.push_back({"mxfp8", 8, 32});
  }
  if (cands.empty()) return std::nullopt;
  DetectedQuant d;
  size_t pick = 0;
  if (meta)
    for (size_t i = 0; i < cands.size(); ++i)
      if (cands[i].mode == meta->mode && cands[i].bits == meta->bits && cands[i].group_size == meta->group_size) {
        pick = i;
        d.from_metadata = true;
      }
  d.spec = cands[pick];
  if (!d.from_metadata)
    for (size_t i = 0; i < cands.size(); ++i)
      if (i != pick) d.alternatives.push_back(cands[i]);
  return d;
}

InspectResult inspect_safetensors(const std::string& path) {
  const SafetensorsReader r(path);
  InspectResult res;
  res.path = path;
  res.file_bytes = std::filesystem::file_size(path);
  res.metadata = r.metadata();
  std::optional<QuantSpec> meta;
  if (res.metadata.count("quantization")) {
    meta = parse_quantization_metadata(res.metadata.at("quantization"));
    if (meta) res.quant_source = "file metadata";
  }
  // mlx-lm keeps the parameters in the model directory's config.json.
  const auto config = std::filesystem::path(path).parent_path() / "config.json";
  std::error_code ec;
  if (!meta && std::filesystem::is_regular_file(config, ec)) {
    std::ifstream f(config);
    try {
      const auto j = nlohmann::json::parse(f);
      for (const char* key : {"quantization", "quantization_config"})
        if (!meta && j.contains(key)) {
          meta = parse_quantization_metadata(j[key].dump());
          if (meta) res.quant_source = config.string();
        }
    } catch (const std::exception&) {
      // not JSON: not ours to judge here, the shapes still decide
    }
  }
  std::map<std::string, std::string> role;
  for (const auto& t : r.tensors()) {
    InspectedTensor it;
    it.info = t;
    it.bytes = t.data_end - t.data_begin;
    if (ends_with(t.name, ".weight") && t.dtype == Dtype::uint32) {
      const std::string base = t.name.substr(0, t.name.size() - 7);
      const TensorInfo* s = r.contains(base + ".scales") ? &r.info(base + ".scales") : nullptr;
      const TensorInfo* b = r.contains(base + ".biases") ? &r.info(base + ".biases") : nullptr;
      it.quant = detect_quantization(t, s, b, meta);
      if (it.quant) {
        role[base + ".scales"] = "scales of " + base;
        if (b) role[base + ".biases"] = "biases of " + base;
        ++res.quantized_modules[it.quant->spec.str()];
      }
    }
    res.tensors.push_back(std::move(it));
  }
  for (auto& it : res.tensors)
    if (role.count(it.info.name)) it.role = role[it.info.name];
  return res;
}

std::string format_inspect(const InspectResult& r) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& it : r.tensors) {
    std::string q = it.role;
    if (it.quant) {
      q = it.quant->spec.str();
      if (it.quant->from_metadata) q += " (" + r.quant_source + ")";
      for (const auto& alt : it.quant->alternatives) q += " | or " + alt.str();
    }
    rows.push_back({it.info.name, dtype_name(it.info.dtype), shape_str(it.info.shape), fmt_bytes(static_cast<double>(it.bytes)), q});
  }
  std::string s = r.path + ": " + std::to_string(r.tensors.size()) + " tensors, " +
                  fmt_bytes(static_cast<double>(r.file_bytes)) + "\n";
  for (const auto& [k, v] : r.metadata) s += "  metadata " + k + " = " + v + "\n";
  s += "\n" + format_table({"tensor", "dtype", "shape", "size", "quantization"}, rows, {false, false, false, true, false});
  if (r.quantized_modules.empty()) {
    s += "\nno quantized modules\n";
  } else {
    s += "\nquantized modules:";
    for (const auto& [f, n] : r.quantized_modules) s += " " + std::to_string(n) + " x " + f + ";";
    s.back() = '\n';
  }
  return s;
}

}  // namespace mmkit::tools
