// MoE layer shapes of real models (PERF.md section 3), used by `mmkit demo`
// and the gather_qmm cases of `mmkit bench`.
#pragma once

#include <string>
#include <vector>

namespace mmkit::tools {

struct MoePreset {
  std::string name;     // what --model takes
  std::string display;  // the model's own name
  int experts = 0;      // E
  int top_k = 0;        // k experts per token
  int hidden = 0;       // H (model width, K of gate+up)
  int expert_width = 0; // I (gate+up weight is (E, 2I, H), down is (E, H, I))
  bool for_tests = false;  // small shapes, not a real model
};

/// qwen3-30b-a3b, gpt-oss-120b, mixtral-8x7b, deepseek-v3, then `tiny` (tests).
const std::vector<MoePreset>& moe_presets();
/// Throws mmkit::Error "[<op>] unknown model '<name>' (known: ...)".
const MoePreset& find_moe_preset(const std::string& name, const char* op = "demo");

}  // namespace mmkit::tools
