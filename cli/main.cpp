// The `mmkit` command: argument handling and output only; the work lives in
// mmkit_tools (cli/tools/). Every failure prints one line
// "mmkit: error: ..." on stderr and exits non-zero (2 for usage errors).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>

#include "mmkit/mmkit.h"
#include "tools/bench.h"
#include "tools/demo.h"
#include "tools/inspect.h"
#include "tools/machine.h"
#include "tools/quantize_file.h"
#include "tools/util.h"

namespace {

using namespace mmkit::tools;

int cmd_demo(const DemoOptions& o) {
  Progress bar("setup", 1, 1.0);
  const DemoResult r = run_demo(o, [&](int64_t done, int64_t total, const std::string& what) {
    bar.set_total(total);
    bar.update(done, what);
  });
  bar.finish();
  std::cout << format_demo(r);
  return 0;
}

int cmd_bench(const BenchOptions& o, const std::string& json_path, const std::string& plot_path) {
  Progress bar("bench", 1);
  const BenchResult r = run_bench(o, [&](size_t done, size_t total, const std::string& what) {
    bar.set_total(static_cast<int64_t>(total));
    bar.update(static_cast<int64_t>(done), what);
  });
  bar.finish();
  std::cout << format_bench(r);
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << bench_json(r).dump(2) << "\n";
    f.close();
    if (!f) throw mmkit::Error("[bench] cannot write '" + json_path + "'.");
    std::cout << "wrote " << json_path << "\n";
  }
  if (!plot_path.empty()) {
    write_bench_plot(r, plot_path);
    std::cout << "wrote " << plot_path << "\n";
  }
  return 0;
}

int cmd_quantize(const std::string& in, const std::string& out, const QuantizeFileOptions& o) {
  Progress bar("quantize", 1);
  const QuantizeFileReport rep = quantize_safetensors(in, out, o, [&](size_t i, size_t n, const std::string& name) {
    bar.set_total(static_cast<int64_t>(n));
    bar.update(static_cast<int64_t>(i), name);
  });
  bar.finish();
  for (const auto& s : rep.not_quantizable) std::cerr << "mmkit: note: kept unchanged: " << s << "\n";
  std::cout << "quantized " << rep.quantized << " tensors to " << rep.quant.str() << ", copied " << rep.copied
            << " unchanged: " << fmt_bytes(static_cast<double>(rep.in_bytes)) << " -> "
            << fmt_bytes(static_cast<double>(rep.out_bytes)) << ", wrote " << out << "\n";
  return 0;
}

int cmd_info() {
  const MachineInfo m = machine_info();
  std::cout << "mmkit " << mmkit::version() << " (" << git_describe() << ")\n";
  std::cout << "build: CUDA backend " << (m.cuda_built ? "built" : "not built") << ", OpenMP threads " << m.threads
            << "\n";
  std::cout << "cpu: " << m.cpu_model << "\n";
  std::cout << "cpu isa: " << m.isa << " (";
  for (size_t i = 0; i < m.cpu_features.size(); ++i) std::cout << (i ? " " : "") << m.cpu_features[i];
  std::cout << (m.cpu_features.empty() ? "none of avx512f/avx512vnni/avx2/fma" : "") << "); kernels run at "
            << m.kernel_isa << "\n";
  std::cout << "cpu caches/memory: L3 " << (m.l3_bytes ? fmt_bytes(static_cast<double>(m.l3_bytes)) : "n/a") << ", RAM "
            << fmt_bytes(static_cast<double>(m.ram_bytes)) << "\n";
  std::cout << "gpus: " << m.gpu_count;
  if (m.gpu_count > 0) std::cout << " (SM count, memory: n/a through mmkit's public API)";
  else if (!m.cuda_built) std::cout << " (built without CUDA)";
  std::cout << "\n";
  const auto kernels = mmkit::registered_kernels();
  std::cout << "registered kernels (" << kernels.size() << ", dispatch order):\n";
  for (const auto& k : kernels) std::cout << "  " << k << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mmkit " + std::string(mmkit::version()) + ": MLX-compatible quantized matmuls", "mmkit"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(mmkit::version()));

  DemoOptions demo;
  auto* d = app.add_subcommand("demo", "Run one quantized MoE layer with a real model's shapes: timed, checked");
  d->add_option("--model", demo.model, "qwen3-30b-a3b | gpt-oss-120b | mixtral-8x7b | deepseek-v3 | tiny")
      ->capture_default_str();
  d->add_option("--tokens", demo.tokens, "tokens routed through the layer")->capture_default_str();
  d->add_option("--mode", demo.mode, "affine | mxfp4 | mxfp8 | nvfp4")->capture_default_str();
  d->add_option("--bits", demo.bits, "bits per weight (default: the mode's)");
  d->add_option("--group-size", demo.group_size, "quantization group size (default: the mode's)");
  d->add_option("--device", demo.device, "auto | cpu | gpu | gpu:N")->capture_default_str();
  d->add_option("--seed", demo.seed, "random seed")->capture_default_str();
  d->add_option("--check-tokens", demo.check_tokens, "tokens checked against float64 (0: all)")->capture_default_str();

  BenchOptions bench;
  std::string json_path, plot_path;
  auto* b = app.add_subcommand("bench", "Benchmark suite: quantized_matmul, gather_qmm, dequantize vs the roofline");
  b->add_flag("--quick", bench.quick, "small shapes, short runs");
  b->add_option("--device", bench.device, "auto | cpu | gpu | gpu:N")->capture_default_str();
  b->add_option("--filter", bench.filter, "only cases whose name matches this regex");
  b->add_option("--json", json_path, "write the results as JSON to FILE");
  b->add_option("--plot", plot_path, "write a roofline plot (PNG) to FILE");
  b->add_option("--budget", bench.budget_s, "seconds of timed runs per case")->capture_default_str();

  std::string qin, qout;
  QuantizeFileOptions qopt;
  auto* q = app.add_subcommand("quantize", "Quantize a safetensors checkpoint into MLX's layout (as mlx-lm writes it)");
  q->add_option("IN", qin, "input .safetensors")->required();
  q->add_option("OUT", qout, "output .safetensors")->required();
  q->add_option("--mode", qopt.mode, "affine | mxfp4 | mxfp8 | nvfp4")->capture_default_str();
  q->add_option("--bits", qopt.bits, "bits per weight (default: the mode's)");
  q->add_option("--group-size", qopt.group_size, "quantization group size (default: the mode's)");
  q->add_option("--filter", qopt.filter,
                "regex on tensor names to quantize (default: names ending in .weight without 'norm')");
  q->add_flag("--force", qopt.force, "overwrite OUT if it exists");

  std::string ipath;
  auto* ins = app.add_subcommand("inspect", "List a safetensors file's tensors and detected quantization");
  ins->add_option("FILE", ipath, ".safetensors file")->required();

  auto* info = app.add_subcommand("info", "Version, build features, CPU, GPUs, registered kernels");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "mmkit: error: %s (see 'mmkit --help')\n", e.what());
    return 2;
  }
  try {
    if (*d) return cmd_demo(demo);
    if (*b) return cmd_bench(bench, json_path, plot_path);
    if (*q) return cmd_quantize(qin, qout, qopt);
    if (*ins) {
      std::cout << format_inspect(inspect_safetensors(ipath));
      return 0;
    }
    if (*info) return cmd_info();
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "mmkit: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mmkit: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
