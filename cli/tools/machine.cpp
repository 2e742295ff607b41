#include "tools/machine.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <sstream>

#include "mmkit/array.h"
#include "mmkit/error.h"
#include "mmkit/matmul.h"
#include "tools/git_info.h"
#if __has_include("mmkit/cpu.h")
#include "mmkit/cpu.h"
#define MMKIT_TOOLS_HAVE_CPU_ISA 1
#endif
#include "tools/util.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MMKIT_TOOLS_X86 1
#endif

namespace mmkit::tools {

namespace {

std::string read_cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto c = line.find(':');
      if (c != std::string::npos) {
        std::string v = line.substr(c + 1);
        v.erase(0, v.find_first_not_of(" \t"));
        return v;
      }
    }
  }
  return "unknown";
}

uint64_t read_l3_bytes() {
  // sysfs first: glibc's sysconf(_SC_LEVEL3_CACHE_SIZE) decodes CPUID, which
  // some hypervisors fill oddly (10x the real size seen on a KVM guest).
  std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index3/size");
  std::string s;
  if (f >> s && !s.empty()) {
    uint64_t n = std::strtoull(s.c_str(), nullptr, 10);
    if (s.back() == 'K') n <<= 10;
    if (s.back() == 'M') n <<= 20;
    if (n > 0) return n;
  }
  const long v = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return v > 0 ? static_cast<uint64_t>(v) : 0;
}

#ifdef MMKIT_TOOLS_X86
// 12 independent accumulators cover FMA latency x ports on current cores.
__attribute__((target("avx512f"))) double fma_flops_avx512(int64_t iters) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(0.001f * i);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  // (GCC 12's _mm512_reduce_add_ps trips -Wuninitialized, so store and add.)
  alignas(64) float out[16];
  __m512 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
  _mm512_store_ps(out, s);
  volatile float keep = out[0];
  (void)keep;
  return static_cast<double>(iters) * 12 * 16 * 2;
}
__attribute__((target("avx2,fma"))) double fma_flops_avx2(int64_t iters) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(0.001f * i);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  alignas(32) float out[8];
  __m256 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  _mm256_store_ps(out, s);
  volatile float keep = out[0];
  (void)keep;
  return static_cast<double>(iters) * 12 * 8 * 2;
}
#endif

double fma_flops_scalar(int64_t iters) {
  float acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = 0.001f * i;
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = acc[i] * 0.999999f + 1e-7f;
  volatile float keep = acc[0] + acc[11];
  (void)keep;
  return static_cast<double>(iters) * 12 * 2;
}

}  // namespace

MachineInfo machine_info() {
  MachineInfo m;
  m.cpu_model = read_cpu_model();
  m.threads = omp_get_max_threads();
#ifdef MMKIT_TOOLS_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) m.cpu_features.push_back("avx512f");
  if (__builtin_cpu_supports("avx512bw")) m.cpu_features.push_back("avx512bw");
  if (__builtin_cpu_supports("avx512vnni")) m.cpu_features.push_back("avx512vnni");
  if (__builtin_cpu_supports("avx2")) m.cpu_features.push_back("avx2");
  if (__builtin_cpu_supports("fma")) m.cpu_features.push_back("fma");
  const bool avx512 = __builtin_cpu_supports("avx512f"), vnni = __builtin_cpu_supports("avx512vnni");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  m.isa = avx512 ? (vnni ? "avx512+vnni" : "avx512") : (avx2 ? "avx2+fma" : "baseline (x86-64)");
#else
  m.isa = "baseline (non-x86)";
#endif
  m.kernel_isa = "n/a";
#ifdef MMKIT_TOOLS_HAVE_CPU_ISA
  try {
    m.kernel_isa = cpu_isa();
  } catch (const std::exception& e) {
    m.kernel_isa = std::string("error: ") + e.what();
  }
#endif
  m.l3_bytes = read_l3_bytes();
  m.ram_bytes = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  m.cuda_built = built_with_cuda();
  m.gpu_count = gpu_count();
  return m;
}

std::string git_describe() { return MMKIT_GIT_DESCRIBE; }

double Roofline::t_min_s(double bytes, double flops) const {
  double t = 0.0;
  if (bandwidth_gbps > 0) t = std::max(t, bytes / (bandwidth_gbps * 1e9));
  if (peak_gflops > 0) t = std::max(t, flops / (peak_gflops * 1e9));
  return t;
}

double measure_cpu_read_bandwidth(uint64_t bytes, int passes) {
  const int64_t n = static_cast<int64_t>(bytes / sizeof(uint64_t));
  std::unique_ptr<uint64_t[]> buf(new uint64_t[static_cast<size_t>(n)]);
  uint64_t* p = buf.get();
  // First touch in parallel so pages land near the threads that read them.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull;
  double best = 1e30;
  uint64_t sink = 0;
  for (int r = 0; r < passes; ++r) {
    const double t0 = now_s();
    uint64_t s = 0;
    // Integer sum: vectorises without reassociation flags and is never compute bound.
#pragma omp parallel for schedule(static) reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += p[i];
    best = std::min(best, now_s() - t0);
    sink += s;
  }
  volatile uint64_t keep = sink;
  (void)keep;
  return static_cast<double>(n) * sizeof(uint64_t) / best / 1e9;
}

double measure_cpu_peak_gflops(double seconds) {
  double (*kernel)(int64_t) = fma_flops_scalar;
#ifdef MMKIT_TOOLS_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f"))
    kernel = fma_flops_avx512;
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    kernel = fma_flops_avx2;
#endif
  // Calibrate on one thread, then run all threads for about `seconds`.
  int64_t iters = 1 << 14;
  double t = 0;
  for (;;) {
    const double t0 = now_s();
    kernel(iters);
    t = now_s() - t0;
    if (t > seconds / 8 || iters > (int64_t{1} << 34)) break;
    iters *= 2;
  }
  iters = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(iters) * (seconds / 2) / std::max(t, 1e-9)));
  double best = 0;
  for (int r = 0; r < 2; ++r) {
    double flops = 0;
    const double t0 = now_s();
#pragma omp parallel reduction(+ : flops)
    flops += kernel(iters);
    best = std::max(best, flops / (now_s() - t0) / 1e9);
  }
  return best;
}

void sync_device(Device d) {
  if (d.is_gpu()) synchronize(d);
}

double measure_gpu_copy_bandwidth(Device d, uint64_t bytes, int reps) {
  Array src = Array::zeros({static_cast<int64_t>(bytes)}, Dtype::uint8, d);
  (void)src.copy();  // warm-up (allocator, first launch)
  sync_device(d);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    Array c = src.copy();
    sync_device(d);
    best = std::min(best, now_s() - t0);
  }
  return 2.0 * static_cast<double>(bytes) / best / 1e9;
}

double measure_gpu_matmul_gflops(Device d, int64_t n, int reps) {
  Array a = Array::zeros({n, n}, Dtype::bfloat16, d), b = Array::zeros({n, n}, Dtype::bfloat16, d);
  (void)matmul(a, b);
  sync_device(d);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    Array c = matmul(a, b);
    sync_device(d);
    best = std::min(best, now_s() - t0);
  }
  return 2.0 * static_cast<double>(n) * n * n / best / 1e9;
}

Roofline measure_roofline(Device d, bool quick) {
  Roofline r;
  if (d.is_cpu()) {
    // Several times the L3 so the sum streams from DRAM, yet bounded (no GBs of RAM).
    const uint64_t l3 = machine_info().l3_bytes;
    const uint64_t bytes = std::clamp<uint64_t>(4 * (l3 ? l3 : (32u << 20)), 64u << 20, quick ? (128u << 20) : (512u << 20));
    r.bandwidth_gbps = measure_cpu_read_bandwidth(bytes, quick ? 3 : 5);
    r.bandwidth_source = "CPU read bandwidth: OpenMP streaming sum over " + fmt_bytes(static_cast<double>(bytes)) +
                         ", " + std::to_string(omp_get_max_threads()) + " threads (measured)";
    r.peak_gflops = measure_cpu_peak_gflops(quick ? 0.02 : 0.1);
    r.peak_source = "float32 FMA throughput, all threads (measured)";
    return r;
  }
  try {
    const uint64_t bytes = quick ? (256u << 20) : (1024u << 20);
    r.bandwidth_gbps = measure_gpu_copy_bandwidth(d, bytes, quick ? 3 : 10);
    r.bandwidth_source = "GPU device-to-device copy of " + fmt_bytes(static_cast<double>(bytes)) +
                         ", read + write counted (measured)";
  } catch (const std::exception& e) {
    r.bandwidth_source = std::string("not measured: ") + e.what();
  }
  try {
    r.peak_gflops = measure_gpu_matmul_gflops(d, quick ? 2048 : 4096, quick ? 2 : 5);
    r.peak_source = std::string("mmkit::matmul bfloat16 ") + (quick ? "2048^3" : "4096^3") + " (measured)";
  } catch (const std::exception& e) {
    r.peak_source = std::string("not measured: ") + e.what();
  }
  return r;
}

std::string device_label(Device d) {
  if (d.is_cpu()) return "cpu (" + std::to_string(omp_get_max_threads()) + " threads)";
  std::ostringstream os;
  os << d;
  return os.str();
}

Device resolve_device(const std::string& name, const char* op) {
  if (name == "auto") return gpu_count() > 0 ? Device::gpu(0) : Device::cpu();
  Device d = parse_device(name);
  if (d.is_gpu()) {
    if (!built_with_cuda()) throw_error(op, "device '", name, "' requested but mmkit was built without CUDA.");
    const int n = gpu_count();
    if (d.index >= n)
      throw_error(op, "device '", name, "' requested but ", n, " CUDA GPU", n == 1 ? " is" : "s are", " visible.");
  }
  return d;
}

}  // namespace mmkit::tools
