// `mmkit bench`: the benchmark suite over PERF.md's shapes (quantized_matmul
// on dense layer shapes, gather_qmm on the MoE presets, dequantize), timed
// against the roofline measured in the same run, with a table, JSON and a
// roofline plot.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "mmkit/device.h"
#include "tools/machine.h"
#include "tools/quant_spec.h"

namespace mmkit::tools {

struct BenchCase {
  std::string op;    // quantized_matmul | gather_qmm | dequantize
  std::string name;  // unique, what --filter matches
  std::string preset;  // gather_qmm: the model preset
  // quantized_matmul: x (M, K) @ w (N, K)^T; gather_qmm: M = T tokens, each
  // routed to top_k of `experts` (N, K) matrices; dequantize: w (N, K).
  int64_t M = 0, N = 0, K = 0;
  int64_t experts = 0, top_k = 0;
  QuantSpec quant;
  std::string shape_str() const;
};

struct BenchOptions {
  bool quick = false;  // small shapes and short runs (what the tests use)
  std::string device = "auto";
  std::optional<std::string> filter;  // regex searched in case names
  double budget_s = 0.3;              // timing budget per case
  int min_reps = 5;
  int max_reps = 200;
  uint64_t seed = 0;
};

struct BenchRecord {
  BenchCase c;
  std::string status = "ok";  // or "skipped: <why>"
  int reps = 0;
  double us_median = 0, us_min = 0;
  double bytes = 0, flops = 0;  // per call (median over routings for gather_qmm)
  double gbps = 0, tflops = 0, pct_roofline = 0;
  bool ok() const { return status == "ok"; }
};

struct BenchResult {
  std::string version, commit, date;
  Device device;
  std::string device_label;
  MachineInfo machine;
  Roofline roofline;
  bool quick = false;
  std::vector<BenchRecord> records;
};

/// The suite for a device (GPUs get larger M and T lists).
std::vector<BenchCase> bench_cases(bool quick, Device d);

using BenchProgress = std::function<void(size_t, size_t, const std::string&)>;
BenchResult run_bench(const BenchOptions& o, const BenchProgress& progress = {});

nlohmann::ordered_json bench_json(const BenchResult& r);
std::string format_bench(const BenchResult& r);
/// Log-log roofline: measured points against the bandwidth and compute lines.
void write_bench_plot(const BenchResult& r, const std::string& png_path);

}  // namespace mmkit::tools
