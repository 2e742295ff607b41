// What the machine is and what it can do, measured in-process: the roofline
// that `mmkit demo` and `mmkit bench` compare their timings against.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mmkit/device.h"

namespace mmkit::tools {

struct MachineInfo {
  std::string cpu_model;            // /proc/cpuinfo "model name", or "unknown"
  int threads = 1;                  // OpenMP threads mmkit's CPU kernels use
  std::vector<std::string> cpu_features;  // of avx512f, avx512vnni, avx512bw, avx2, fma
  std::string isa;                  // highest level: "avx512+vnni", "avx512", "avx2+fma", "baseline"
  std::string kernel_isa;           // the level mmkit's CPU kernels run at (mmkit::cpu_isa()), or "n/a"
  uint64_t l3_bytes = 0;            // 0 when unknown
  uint64_t ram_bytes = 0;
  bool cuda_built = false;
  int gpu_count = 0;
};

MachineInfo machine_info();

/// `git describe --always --dirty` of the tree that was built, or "unknown".
std::string git_describe();

/// The bound a measured time is compared against (PERF.md section 1):
/// t_min = max(bytes / bandwidth, flops / peak). A zero means "not measured".
struct Roofline {
  double bandwidth_gbps = 0.0;
  std::string bandwidth_source;
  double peak_gflops = 0.0;
  std::string peak_source;
  /// Seconds at the roofline, or 0 when nothing is known.
  double t_min_s(double bytes, double flops) const;
};

/// Streaming sum (OpenMP, all threads) over `bytes` of memory, best of
/// `passes` passes: the CPU's read bandwidth in GB/s.
double measure_cpu_read_bandwidth(uint64_t bytes, int passes);
/// float32 FMA throughput of all threads (AVX-512 / AVX2 when present), GFLOP/s.
double measure_cpu_peak_gflops(double seconds);
/// Device-to-device copy of `bytes` on the GPU, read + write counted (the
/// figure PERF.md section 2 uses), best of `reps`. Throws when the GPU path
/// is unavailable.
double measure_gpu_copy_bandwidth(Device d, uint64_t bytes, int reps);
/// mmkit::matmul bfloat16 n x n x n on the GPU, GFLOP/s (throws when unavailable).
double measure_gpu_matmul_gflops(Device d, int64_t n, int reps);

/// Measures the roofline of `d`; `quick` uses smaller buffers and fewer passes.
/// Never throws: a failed measurement leaves that field 0 with the reason as source.
Roofline measure_roofline(Device d, bool quick);

/// "cpu (2 threads)", "gpu", "gpu:1".
std::string device_label(Device d);
/// "auto" -> gpu when mmkit::gpu_count() > 0 else cpu; otherwise mmkit::parse_device,
/// with a clear error when a GPU is asked for and none is usable. `op` tags errors.
Device resolve_device(const std::string& name, const char* op);

/// Synchronizes `d` when it is a GPU (timings must include the device work).
void sync_device(Device d);

}  // namespace mmkit::tools
