// `mmkit demo`: one quantized MoE layer with a real model's shapes (gate+up
// projection, SwiGLU, down projection) run with gather_qmm, timed against
// the measured roofline and checked against a float64 reference on the
// dequantized weights.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "mmkit/device.h"
#include "tools/machine.h"
#include "tools/presets.h"
#include "tools/quant_spec.h"

namespace mmkit::tools {

struct DemoOptions {
  std::string model = "qwen3-30b-a3b";
  int64_t tokens = 8;
  std::string mode = "affine";
  std::optional<int> bits;        // mode default when absent
  std::optional<int> group_size;  // mode default when absent
  std::string device = "auto";    // auto | cpu | gpu | gpu:N
  uint64_t seed = 0;
  /// Tokens whose outputs are checked against float64 (<= 0: all). Each
  /// checked token costs a float64 dequantization of its experts.
  int64_t check_tokens = 2;
  double time_budget_s = 0.4;  // per timed op, after the first (checked) call
  int min_reps = 3;
  int max_reps = 100;
  bool quick_roofline = false;    // smaller buffers for the roofline measurement
  bool measure_roofline = true;   // false: report % roofline as n/a (tests)
};

struct DemoRow {
  std::string op;
  std::string shape;
  std::string device;
  int reps = 0;
  double us_median = 0, us_min = 0;
  double gbps = 0;          // median over runs of bytes moved / time
  double pct_roofline = 0;  // median over runs of t_roofline / time, in percent (0 = unknown)
  double max_abs_err = 0;
  double rel_err = 0;       // ||y - ref||_2 / ||ref||_2
  double ref_max_abs = 0;   // max |ref| (so the error has a scale)
  double weight_bytes = 0;  // quantized weights (all experts)
  double bf16_bytes = 0;    // the same weights in bfloat16
};

struct DemoResult {
  MoePreset preset;
  QuantSpec quant;
  Device device;
  std::string device_label;
  int64_t tokens = 0;
  int64_t distinct_experts = 0;  // touched by the router's choice
  int64_t checked_tokens = 0;
  int timing_routings = 0;
  Roofline roofline;
  double setup_s = 0;
  std::vector<DemoRow> rows;  // gate+up, down, the whole layer
};

/// (done, total, what): progress of the weight generation and quantization.
using DemoProgress = std::function<void(int64_t, int64_t, const std::string&)>;

/// Runs the demo; throws mmkit::Error on bad options.
DemoResult run_demo(const DemoOptions& opts, const DemoProgress& progress = {});
/// The table and the lines around it, as `mmkit demo` prints them.
std::string format_demo(const DemoResult& r);

}  // namespace mmkit::tools
