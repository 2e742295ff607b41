#include "tools/presets.h"

#include "mmkit/error.h"

namespace mmkit::tools {

const std::vector<MoePreset>& moe_presets() {
  static const std::vector<MoePreset> kPresets = {
      {"qwen3-30b-a3b", "Qwen3-30B-A3B", 128, 8, 2048, 768, false},
      {"gpt-oss-120b", "gpt-oss-120b", 128, 4, 2880, 2880, false},
      {"mixtral-8x7b", "Mixtral 8x7B", 8, 2, 4096, 14336, false},
      {"deepseek-v3", "DeepSeek-V3", 256, 8, 7168, 2048, false},
      {"tiny", "tiny (test shapes)", 8, 2, 256, 128, true},
  };
  return kPresets;
}

const MoePreset& find_moe_preset(const std::string& name, const char* op) {
  std::string known;
  for (const auto& p : moe_presets()) {
    if (p.name == name) return p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  throw_error(op, "unknown model '", name, "' (known: ", known, ").");
}

}  // namespace mmkit::tools
