// GEMV / GEMM bandwidth bench of the CUDA backend's quantized matmul
// kernels, measured against the same run's ceilings:
//   * device-to-device copy bandwidth (cudaMemcpyAsync, 2 x 512 MiB buffers,
//     bytes read + written), the roofline for memory-bound kernels;
//   * cuBLAS bf16 GEMV/GEMM on the same shape (peer);
//   * the read-only streaming floor of the headline's bytes (a plain
//     coalesced read kernel: what reading 36 MB once costs at this size).
// Each call is bracketed by CUDA events recorded back to back (median of the
// runs after a warm-up; the host enqueues ahead, so a delta is the call's
// device time); the latency of one call on an idle GPU, host launch included,
// is printed beside it. The weights rotate over copies totalling > 100 MB
// (several times the L2) so each call reads them from HBM. The registry entry
// runs directly on prepared device arrays (the op front end is not timed).
// Before timing, each quantized case is checked against the generic kernel.
//
//   cuda_gemv_bench [--json out.json] [--quick] [--m 1,2,4] [--t 1,4] [--sorted] [--nk N,K]
// (--nk: the quantized matmuls' weight shape, default 8192,8192 (a multiple
// of 128 each); --m / --t: only these M of the headline format / T of the MoE shapes;
// with --m and no --t the MoE part is skipped. --sorted: the MoE routings
// sorted by expert, passed as sorted indices, for the unsorted / sorted ratio.)
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/registry.h"
#include "formats/format.h"
#include "mmkit/mmkit.h"
#include "ops/descriptors.h"
#include "timing.cuh"

namespace {

using namespace mmkit;
using tools::median_us;


/// Median latency of one call on an idle GPU (host launch overhead included):
/// the host waits for each call before issuing the next.
template <typename F>
double median_sync_us(int iters, F&& body) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    CK(cudaEventRecord(a, cudaStreamLegacy));
    body(i);
    CK(cudaEventRecord(b, cudaStreamLegacy));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1e3);
  }
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Result {
  std::string name;
  int64_t M, N, K;
  double us, gbs, pct_copy, tflops;
  double max_err;
  double sync_us;
};

struct QFmt {
  const char* label;
  fmt::Mode mode;
  int bits, gs;
};

/// Uniform random codes; for mxfp8 without the bytes 0x7F / 0xFF, which MLX's
/// encoder never writes (it saturates at 0x7E) and which the tensor-core
/// GEMV decodes on its slow exact path.
Array random_codes(int64_t rows, int64_t words, uint64_t seed, bool fp8 = false) {
  std::mt19937 g(static_cast<uint32_t>(seed));
  std::vector<uint32_t> v(static_cast<size_t>(rows * words));
  for (auto& x : v) {
    x = g();
    if (fp8)
      for (int b = 0; b < 4; ++b)
        if (((x >> (8 * b)) & 0x7Fu) == 0x7Fu) x ^= 1u << (8 * b);  // 0x7F -> 0x7E, 0xFF -> 0xFE
  }
  return Array::from_vector(v, {1, rows, words}).to(Device::gpu());
}

Array random_scales(const QFmt& f, int64_t rows, int64_t groups, uint64_t seed, bool bias) {
  std::mt19937 g(static_cast<uint32_t>(seed));
  if (f.mode == fmt::Mode::affine) {
    std::normal_distribution<float> n(0.0f, bias ? 0.05f : 0.01f);
    std::vector<float> v(static_cast<size_t>(rows * groups));
    for (auto& x : v) x = n(g);
    return Array::from_vector(v, {1, rows, groups}).astype(Dtype::bfloat16).to(Device::gpu());
  }
  std::vector<uint8_t> v(static_cast<size_t>(rows * groups));
  for (auto& x : v) x = f.mode == fmt::Mode::nvfp4 ? static_cast<uint8_t>(0x28 + g() % 16) : static_cast<uint8_t>(118 + g() % 6);
  return Array::from_vector(v, {1, rows, groups}).to(Device::gpu());
}

double max_abs_diff(const Array& a, const Array& b) {
  auto x = a.to_double_vector(), y = b.to_double_vector();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::fabs(x[i] - y[i]));
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  bool quick = false;
  std::vector<int64_t> only_m, only_t;
  bool have_m = false, have_t = false, sorted_routing = false;
  std::vector<int64_t> nk = {8192, 8192};
  std::vector<std::string> only_fmt;  // --fmt: format labels containing one of these
  auto parse_list = [](const char* a) {
    std::vector<int64_t> v;
    for (const char* p = a; *p;) {
      char* end = nullptr;
      const long long n = std::strtoll(p, &end, 10);
      if (end == p || n < 1) {
        std::fprintf(stderr, "cuda_gemv_bench: bad list '%s' (expected positive integers like 1,2,4)\n", a);
        std::exit(2);
      }
      v.push_back(n);
      p = *end == ',' ? end + 1 : end;
    }
    return v;
  };
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--m") && i + 1 < argc) have_m = true, only_m = parse_list(argv[++i]);
    else if (!std::strcmp(argv[i], "--t") && i + 1 < argc) have_t = true, only_t = parse_list(argv[++i]);
    else if (!std::strcmp(argv[i], "--sorted")) sorted_routing = true;
    else if (!std::strcmp(argv[i], "--nk") && i + 1 < argc) nk = parse_list(argv[++i]);
    else if (!std::strcmp(argv[i], "--fmt") && i + 1 < argc) {
      for (std::string a = argv[++i]; !a.empty();) {
        const size_t c = a.find(',');
        only_fmt.push_back(a.substr(0, c));
        a = c == std::string::npos ? std::string() : a.substr(c + 1);
      }
    } else {
      std::fprintf(stderr,
                   "usage: cuda_gemv_bench [--json out.json] [--quick] [--m 1,2,4] [--t 1,4] [--sorted] [--nk N,K] "
                   "[--fmt mxfp4,b4 g64]\n");
      return 2;
    }
  }
  if (nk.size() != 2 || nk[0] % 128 || nk[1] % 128) {
    std::fprintf(stderr, "cuda_gemv_bench: --nk takes N,K, each a multiple of 128\n");
    return 2;
  }
  const int64_t N = nk[0], K = nk[1];
  if (gpu_count() == 0) {
    std::printf("cuda_gemv_bench: no CUDA GPU (built_with_cuda=%d); nothing measured\n", built_with_cuda());
    return 0;
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  std::printf("device: %s, %d SMs, L2 %d MB, driver %d, runtime %d\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20, driver, runtime);
  const int iters = quick ? 30 : 100, warm = 10;
  const bool sm90 = prop.major == 9 && prop.minor == 0;  // where cuda_qmm_w4_mma can run qmm_wg.cu

  // ---- ceiling: device-to-device copy ------------------------------------------------
  const size_t copy_bytes = size_t{512} << 20;
  void *c0 = nullptr, *c1 = nullptr;
  CK(cudaMalloc(&c0, copy_bytes));
  CK(cudaMalloc(&c1, copy_bytes));
  CK(cudaMemset(c0, 1, copy_bytes));
  const double copy_us = median_us(3, 20, [&](int) { CK(cudaMemcpyAsync(c1, c0, copy_bytes, cudaMemcpyDeviceToDevice, cudaStreamLegacy)); });
  const double copy_gbs = 2.0 * copy_bytes / (copy_us * 1e-6) / 1e9;
  CK(cudaFree(c0));
  CK(cudaFree(c1));
  std::printf("device-to-device copy: %.1f GB/s (read + write, 512 MiB, median of 20)\n", copy_gbs);

  // ---- floor: reading the headline's bytes once (4-bit g64 N x K weights,
  // scales and biases), cold (rotating copies), timed like the kernels -----------------
  const size_t floor_bytes = static_cast<size_t>(N * K / 2 + N * (K / 64) * 4);
  const int floor_copies = 8;
  void* fb = nullptr;
  uint32_t* fo = nullptr;
  CK(cudaMalloc(&fb, floor_bytes * floor_copies));
  CK(cudaMalloc(&fo, 4));
  CK(cudaMemset(fb, 3, floor_bytes * floor_copies));
  const size_t fn = floor_bytes / 16;
  const double floor_us = median_us(10, iters, [&](int i) {
    tools::stream_read<4><<<prop.multiProcessorCount * 8, 256, 0, cudaStreamLegacy>>>(
        static_cast<const uint4*>(fb) + (i % floor_copies) * fn, fn, fo);
  });
  CK(cudaGetLastError());
  CK(cudaFree(fb));
  CK(cudaFree(fo));
  const double floor_gbs = floor_bytes / (floor_us * 1e-6) / 1e9;
  std::printf("read-only streaming of %.1f MB (the 4-bit g64 %lld x %lld bytes), cold: %.2f us = %.1f GB/s = %.1f%% of copy\n",
              floor_bytes / 1e6, static_cast<long long>(N), static_cast<long long>(K), floor_us, floor_gbs,
              100.0 * floor_gbs / copy_gbs);

  auto& reg = detail::registries();
  std::vector<Result> results;
  const int64_t kRotateBytes = int64_t{200} << 20;

  // ---- quantized matmuls ---------------------------------------------------------------
  std::vector<QFmt> fmts = {{"affine b4 g64", fmt::Mode::affine, 4, 64},  {"affine b4 g128", fmt::Mode::affine, 4, 128},
                            {"affine b4 g32", fmt::Mode::affine, 4, 32},  {"affine b2 g64", fmt::Mode::affine, 2, 64},
                            {"affine b3 g64", fmt::Mode::affine, 3, 64},  {"affine b8 g64", fmt::Mode::affine, 8, 64},
                            {"affine b8 g128", fmt::Mode::affine, 8, 128}, {"affine b8 g32", fmt::Mode::affine, 8, 32},
                            {"affine b2 g128", fmt::Mode::affine, 2, 128}, {"affine b2 g32", fmt::Mode::affine, 2, 32},
                            {"affine b3 g128", fmt::Mode::affine, 3, 128}, {"affine b6 g64", fmt::Mode::affine, 6, 64},
                            {"affine b6 g128", fmt::Mode::affine, 6, 128}, {"affine b6 g32", fmt::Mode::affine, 6, 32},
                            {"mxfp4", fmt::Mode::mxfp4, 4, 32},           {"nvfp4", fmt::Mode::nvfp4, 4, 16},
                            {"mxfp8", fmt::Mode::mxfp8, 8, 32}};
  if (quick) fmts.resize(1);
  auto fmt_wanted = [&](const char* label) {
    if (only_fmt.empty()) return true;
    for (const std::string& o : only_fmt)
      if (std::string(label).find(o) != std::string::npos) return true;
    return false;
  };
  for (const QFmt& f : fmts) {
    if (!fmt_wanted(f.label)) continue;
    const bool headline = f.mode == fmt::Mode::affine && f.bits == 4 && f.gs == 64;
    std::vector<int64_t> Ms = {1};
    if (headline) Ms = quick ? std::vector<int64_t>{1, 8, 256} : std::vector<int64_t>{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 2048};
    if (have_m) {
      if (!headline) continue;
      Ms = only_m;
    }
    const int64_t words = K * f.bits / 32, groups = K / f.gs;
    const double wbytes = double(N) * words * 4 + double(N) * groups * (f.mode == fmt::Mode::affine ? 4 : 1);
    const int copies = static_cast<int>(std::max<int64_t>(2, kRotateBytes / static_cast<int64_t>(wbytes) + 1));
    std::vector<detail::QmmArgs> sets(copies);
    for (int c = 0; c < copies; ++c) {
      sets[c].w = random_codes(N, words, 10 + c, f.mode == fmt::Mode::mxfp8);
      sets[c].scales = random_scales(f, N, groups, 100 + c, false);
      if (f.mode == fmt::Mode::affine) sets[c].biases = random_scales(f, N, groups, 200 + c, true);
      sets[c].lhs = Array::from_vector(std::vector<int64_t>{0}, {1}).to(Device::gpu());
      sets[c].rhs = sets[c].lhs;
    }
    for (int64_t M : Ms) {
      detail::QmmDesc d;
      d.format = {f.mode, f.bits, f.gs};
      d.M = M;
      d.N = N;
      d.K = K;
      d.dtype = Dtype::bfloat16;
      Array x = Array::from_vector(std::vector<float>(static_cast<size_t>(M * K), 0.0f), {1, M, K});
      {
        std::mt19937 g(7);
        std::normal_distribution<float> n(0.0f, 1.0f / 90.0f);
        for (int64_t i = 0; i < M * K; ++i) x.data<float>()[i] = n(g);
      }
      x = x.astype(Dtype::bfloat16).to(Device::gpu());
      for (auto& s : sets) {
        s.x = x;
        s.out = Array::empty({1, M, N}, Dtype::bfloat16, Device::gpu());
      }
      const detail::KernelEntry<detail::QmmDesc, detail::QmmArgs>* generic = nullptr;
      const detail::KernelEntry<detail::QmmDesc, detail::QmmArgs>* simt_qmv = nullptr;
      const detail::KernelEntry<detail::QmmDesc, detail::QmmArgs>* few_rows = nullptr;
      const detail::KernelEntry<detail::QmmDesc, detail::QmmArgs>* any_format_mma = nullptr;
      for (const auto& e : reg.qmm.entries()) {
        if (e.device != Device::Type::gpu) continue;
        if (e.name == "cuda_qmm_generic") generic = &e;
        if (e.name == "cuda_qmv") simt_qmv = &e;
        if (e.name == "cuda_qmv_sm80_mma") few_rows = &e;
        if (e.name == "cuda_qmm_sm80_mma") any_format_mma = &e;
      }
      struct Runner {
        std::string name;
        std::function<void(const detail::QmmDesc&, detail::QmmArgs&, const Stream&)> run;
      };
      std::vector<Runner> entries;
      {
        const auto& sel = reg.qmm.select(d, Device::Type::gpu);
        entries.push_back({sel.name, sel.run});
        // The SIMT GEMV too where a tensor-core GEMV is chosen (comparison in the same run).
        if ((M == 1 || (headline && M == 8)) && simt_qmv && sel.name != "cuda_qmv")
          entries.push_back({simt_qmv->name, simt_qmv->run});
        // And the few-row tensor-core GEMV where the one-row kernel takes 2 - 4 rows.
        if (headline && M >= 2 && few_rows && sel.name != few_rows->name && few_rows->supports(d))
          entries.push_back({few_rows->name, few_rows->run});
        // And the every-format tensor-core kernel where the 4-bit many-row kernel is chosen.
        if (headline && any_format_mma && sel.name == "cuda_qmm_w4_mma" && M <= 512)
          entries.push_back({any_format_mma->name, any_format_mma->run});
        // On sm_90 that entry runs the warpgroup-MMA kernel (qmm_wg.cu, exact);
        // its variants are timed beside it: the mma.sync kernel (qmm_w4.cu,
        // MMKIT_QMM_WG=0) and MLX's numerics (MMKIT_QMM_WG=mlx: weights rounded to T).
        if (headline && sel.name == "cuda_qmm_w4_mma" && sm90 && !std::getenv("MMKIT_QMM_WG")) {
          for (const char* v : {"0", "mlx"})
            entries.push_back({std::string("cuda_qmm_w4_mma:") + (v[0] == '0' ? "mma.sync" : "wgmma-mlx"),
                               [run = sel.run, v](const detail::QmmDesc& dd, detail::QmmArgs& aa, const Stream& ss) {
                                 setenv("MMKIT_QMM_WG", v, 1);
                                 run(dd, aa, ss);
                                 unsetenv("MMKIT_QMM_WG");
                               }});
        }
      }
      for (const auto& entry : entries) {
        // Check against the generic kernel before timing.
        detail::QmmArgs chk = sets[0];
        chk.out = Array::empty({1, M, N}, Dtype::bfloat16, Device::gpu());
        const Stream st(Device::gpu());
        entry.run(d, sets[0], st);
        double err = -1;
        if (generic && M <= 256) {
          generic->run(d, chk, st);
          err = max_abs_diff(sets[0].out, chk.out);
        }
        const int it = M >= 1024 ? std::max(10, iters / 5) : iters;
        const double us = median_us(warm, it, [&](int i) { entry.run(d, sets[i % copies], st); });
        const double bytes = wbytes + double(M) * K * 2 + double(M) * N * 2;
        const double sync_us = median_sync_us(20, [&](int i) { entry.run(d, sets[i % copies], st); });
        Result r{std::string(f.label) + " [" + entry.name + "]", M, N, K, us, bytes / (us * 1e-6) / 1e9, 0,
                 2.0 * M * N * K / (us * 1e-6) / 1e12, err, sync_us};
        r.pct_copy = 100.0 * r.gbs / copy_gbs;
        results.push_back(r);
        std::printf("  %-40s M=%-5lld %9.2f us %8.1f GB/s %6.1f%% of copy %7.2f TFLOP/s  (idle-GPU call %.2f us)  check max|diff|=%.3g\n",
                    r.name.c_str(), static_cast<long long>(M), us, r.gbs, r.pct_copy, r.tflops, sync_us, err);
        std::fflush(stdout);
      }
    }
  }

  // ---- MoE decode: gather_qmm over routed tokens ------------------------------------------
  // Qwen3-30B-A3B's expert projections (128 experts, top-8, hidden 2048,
  // expert width 768): gate and up stacked as one (E, 1536, 2048) weight, and
  // down (E, 2048, 768); for mxfp4 also gpt-oss-120b's (128 experts, top-4,
  // hidden and expert width 2880: (E, 5760, 2880) and (E, 2880, 2880)).
  // T tokens, each routed to top-k distinct random experts;
  // 16 routings rotate so consecutive calls touch different experts (cold-ish
  // L2). GB/s counts the distinct active experts' bytes once per call.
  {
    struct MoeShape {
      const char* label;
      int64_t E, N, K, topk;
      bool fp4_only;
    };
    const MoeShape shapes[] = {{"qwen3-30b-a3b gate+up", 128, 1536, 2048, 8, false},
                               {"qwen3-30b-a3b down", 128, 2048, 768, 8, false},
                               {"gpt-oss-120b gate+up", 128, 5760, 2880, 4, true},
                               {"gpt-oss-120b down", 128, 2880, 2880, 4, true}};
    // 4-bit affine g64, mxfp4 (gpt-oss's format), 8-bit affine g64, mxfp8,
    // 2-, 3- and 6-bit affine g64; per entry all run the one-row tensor-core
    // GEMV, and all but 4-bit affine also time the SIMT GEMV beside it.
    struct MoeFmt {
      QFmt f;
      const char* suffix;
      std::vector<std::string> per_entry;  // per-entry kernels timed beside the registry's choice
      std::vector<int64_t> Ts;
    };
    const std::vector<MoeFmt> moe_fmts = {
        {{"affine b4 g64", fmt::Mode::affine, 4, 64}, "", {"cuda_qmv1_mma"},
         quick ? std::vector<int64_t>{1, 64} : std::vector<int64_t>{1, 4, 16, 64, 256}},
        {{"mxfp4", fmt::Mode::mxfp4, 4, 32}, " mxfp4", {"cuda_qmv1_mma", "cuda_qmv"},
         quick ? std::vector<int64_t>{1} : std::vector<int64_t>{1, 4, 16, 64, 256}},
        {{"affine b8 g64", fmt::Mode::affine, 8, 64}, " b8", {"cuda_qmv1_mma", "cuda_qmv"},
         quick ? std::vector<int64_t>{1} : std::vector<int64_t>{1, 4, 16, 64, 256}},
        {{"mxfp8", fmt::Mode::mxfp8, 8, 32}, " mxfp8", {"cuda_qmv1_mma", "cuda_qmv"},
         quick ? std::vector<int64_t>{1} : std::vector<int64_t>{1, 4, 16, 64, 256}},
        {{"affine b2 g64", fmt::Mode::affine, 2, 64}, " b2", {"cuda_qmv1_mma", "cuda_qmv"},
         quick ? std::vector<int64_t>{1} : std::vector<int64_t>{1, 4, 16, 64, 256}},
        {{"affine b3 g64", fmt::Mode::affine, 3, 64}, " b3", {"cuda_qmv1_mma", "cuda_qmv"},
         quick ? std::vector<int64_t>{1} : std::vector<int64_t>{1, 4, 16, 64, 256}},
        {{"affine b6 g64", fmt::Mode::affine, 6, 64}, " b6", {"cuda_qmv1_mma", "cuda_qmv"},
         quick ? std::vector<int64_t>{1} : std::vector<int64_t>{1, 4, 16, 64, 256}}};
    for (const MoeFmt& mf : moe_fmts)
    if ((!have_m || have_t) && fmt_wanted(mf.f.label))
    for (const MoeShape& sh : shapes) {
      if (sh.fp4_only && mf.f.mode != fmt::Mode::mxfp4) continue;
      const QFmt& f = mf.f;
      const bool affine = f.mode == fmt::Mode::affine;
      const int64_t words = sh.K * f.bits / 32, groups = sh.K / f.gs;
      detail::QmmArgs base;
      base.w = random_codes(sh.E * sh.N, words, 77, f.mode == fmt::Mode::mxfp8).reshape({sh.E, sh.N, words});
      base.scales = random_scales(f, sh.E * sh.N, groups, 78, false).reshape({sh.E, sh.N, groups});
      if (affine) base.biases = random_scales(f, sh.E * sh.N, groups, 79, true).reshape({sh.E, sh.N, groups});
      const double expert_bytes = double(sh.N) * words * 4 + double(sh.N) * groups * (affine ? 4 : 1);
      for (int64_t T : have_t ? only_t : mf.Ts) {
        if (sh.fp4_only && T > 64 && !have_t) continue;  // (gpt-oss: decode sizes only)
        const int64_t L = T * sh.topk;
        std::mt19937 g(1234 + static_cast<uint32_t>(T));
        const int kSets = 16;
        std::vector<detail::QmmArgs> sets(kSets, base);
        double distinct_sum = 0;
        std::vector<int64_t> lhs(static_cast<size_t>(L));
        for (int64_t l = 0; l < L; ++l) lhs[l] = l / sh.topk;
        for (int i = 0; i < kSets; ++i) {
          std::vector<int64_t> rhs;
          std::vector<char> used(static_cast<size_t>(sh.E), 0);
          for (int64_t t = 0; t < T; ++t) {
            std::vector<int64_t> perm(static_cast<size_t>(sh.E));
            for (int64_t e = 0; e < sh.E; ++e) perm[e] = e;
            std::shuffle(perm.begin(), perm.end(), g);
            for (int64_t k = 0; k < sh.topk; ++k) {
              rhs.push_back(perm[k]);
              used[perm[k]] = 1;
            }
          }
          distinct_sum += std::count(used.begin(), used.end(), 1);
          std::vector<int64_t> lhs_i = lhs;
          if (sorted_routing) {  // entries in expert order (stable: tokens ascending per expert)
            std::vector<int64_t> order(static_cast<size_t>(L));
            for (int64_t l = 0; l < L; ++l) order[l] = l;
            std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rhs[a] < rhs[b]; });
            std::vector<int64_t> r2(static_cast<size_t>(L));
            for (int64_t l = 0; l < L; ++l) lhs_i[l] = lhs[order[l]], r2[l] = rhs[order[l]];
            rhs = r2;
          }
          sets[i].lhs = Array::from_vector(lhs_i, {L}).to(Device::gpu());
          sets[i].rhs = Array::from_vector(rhs, {L}).to(Device::gpu());
        }
        const double distinct = distinct_sum / kSets;
        Array x = Array::from_vector(std::vector<float>(static_cast<size_t>(T * sh.K), 0.0f), {T, 1, sh.K});
        {
          std::mt19937 gx(9);
          std::normal_distribution<float> n(0.0f, 0.02f);
          for (int64_t i = 0; i < T * sh.K; ++i) x.data<float>()[i] = n(gx);
        }
        x = x.astype(Dtype::bfloat16).to(Device::gpu());
        for (auto& st : sets) {
          st.x = x;
          st.out = Array::empty({L, 1, sh.N}, Dtype::bfloat16, Device::gpu());
        }
        detail::QmmDesc d;
        d.format = {f.mode, f.bits, f.gs};
        d.M = 1;
        d.N = sh.N;
        d.K = sh.K;
        d.batch = L;
        d.x_batch = T;
        d.w_batch = sh.E;
        d.dtype = Dtype::bfloat16;
        d.op = "gather_qmm";
        d.rhs_sorted = sorted_routing;
        const auto& sel = reg.qmm.select(d, Device::Type::gpu);
        const detail::KernelEntry<detail::QmmDesc, detail::QmmArgs>* generic = nullptr;
        std::vector<const detail::KernelEntry<detail::QmmDesc, detail::QmmArgs>*> per_entry;
        const detail::KernelEntry<detail::QmmDesc, detail::QmmArgs>* grouped = nullptr;
        for (const std::string& name : mf.per_entry)
          for (const auto& e : reg.qmm.entries())
            if (e.device == Device::Type::gpu && e.name == name && e.supports(d)) per_entry.push_back(&e);
        for (const auto& e : reg.qmm.entries()) {
          if (e.device != Device::Type::gpu) continue;
          if (e.name == "cuda_qmm_generic") generic = &e;
          if (e.name == "cuda_gather_grouped") grouped = &e;
        }
        std::vector<const detail::KernelEntry<detail::QmmDesc, detail::QmmArgs>*> runs = {&sel};
        for (const auto* e : per_entry)
          if (sel.name != e->name) runs.push_back(e);  // ungrouped, same run
        // Grouped by expert, same run, where the registry keeps the entries
        // apart although experts are shared (>= 4 rows per expert).
        if (grouped && sel.name != grouped->name && L >= 4 * sh.E) runs.push_back(grouped);
        const Stream st(Device::gpu());
        for (const auto* entry : runs) {
          detail::QmmArgs chk = sets[0];
          chk.out = Array::empty({L, 1, sh.N}, Dtype::bfloat16, Device::gpu());
          entry->run(d, sets[0], st);
          double err = -1;
          if (generic) {
            generic->run(d, chk, st);
            err = max_abs_diff(sets[0].out, chk.out);
          }
          const double us = median_us(warm, iters, [&](int i) { entry->run(d, sets[i % kSets], st); });
          const double sync_us = median_sync_us(20, [&](int i) { entry->run(d, sets[i % kSets], st); });
          const double bytes = distinct * expert_bytes + double(T) * sh.K * 2 + double(L) * sh.N * 2;
          Result r{std::string(sh.label) + mf.suffix + (sorted_routing ? " sorted" : "") + " T=" + std::to_string(T) +
                       " [" + entry->name + "]",
                   L, sh.N, sh.K, us,
                   bytes / (us * 1e-6) / 1e9, 0, 2.0 * L * sh.N * sh.K / (us * 1e-6) / 1e12, err, sync_us};
          r.pct_copy = 100.0 * r.gbs / copy_gbs;
          results.push_back(r);
          std::printf("  %-52s %6.1f experts %9.2f us %8.1f GB/s %6.1f%% of copy (idle-GPU call %.2f us) check max|diff|=%.3g\n",
                      r.name.c_str(), distinct, us, r.gbs, r.pct_copy, sync_us, err);
          std::fflush(stdout);
        }
      }
    }
  }

  // ---- MoE decode with bf16 experts: gather_mm grouped by expert vs per entry ----------
  // Qwen3-30B-A3B gate+up as bf16 (128, 1536, 2048) K-major weights, top-8,
  // 16 rotating routings; the dispatched entry against the ungrouped tiles.
  if (!quick) {
    const int64_t E = 128, N2 = 1536, K2 = 2048, topk = 8;
    Array w = Array::empty({E, N2, K2}, Dtype::bfloat16, Device::gpu());
    {
      std::vector<uint16_t> hw(static_cast<size_t>(E * N2 * K2));
      uint32_t st = 12345u;
      for (auto& v : hw) {  // sign and mantissa random, |v| in [2^-7, 2^-6)
        st = st * 1664525u + 1013904223u;
        v = static_cast<uint16_t>(((st >> 9) & 0x807Fu) | 0x3C00u);
      }
      CK(cudaMemcpy(w.raw_data(), hw.data(), hw.size() * 2, cudaMemcpyHostToDevice));
    }
    const double expert_bytes = double(N2) * K2 * 2;
    for (int64_t T : std::vector<int64_t>{16, 64, 256}) {
      const int64_t L = T * topk;
      std::mt19937 g(4321 + static_cast<uint32_t>(T));
      const int kSets = 16;
      std::vector<detail::GemmArgs> sets(kSets);
      double distinct_sum = 0;
      std::vector<int64_t> lhs(static_cast<size_t>(L));
      for (int64_t l = 0; l < L; ++l) lhs[l] = l / topk;
      Array x = Array::from_vector(std::vector<float>(static_cast<size_t>(T * K2), 0.0f), {T, 1, K2});
      {
        std::normal_distribution<float> n(0.0f, 0.02f);
        for (int64_t i = 0; i < T * K2; ++i) x.data<float>()[i] = n(g);
      }
      x = x.astype(Dtype::bfloat16).to(Device::gpu());
      for (int i = 0; i < kSets; ++i) {
        std::vector<int64_t> rhs;
        std::vector<char> used(static_cast<size_t>(E), 0);
        for (int64_t t = 0; t < T; ++t) {
          std::vector<int64_t> perm(static_cast<size_t>(E));
          for (int64_t e = 0; e < E; ++e) perm[e] = e;
          std::shuffle(perm.begin(), perm.end(), g);
          for (int64_t k = 0; k < topk; ++k) {
            rhs.push_back(perm[k]);
            used[perm[k]] = 1;
          }
        }
        distinct_sum += std::count(used.begin(), used.end(), 1);
        sets[i].a = x;
        sets[i].b = w;
        sets[i].lhs = Array::from_vector(lhs, {L}).to(Device::gpu());
        sets[i].rhs = Array::from_vector(rhs, {L}).to(Device::gpu());
        sets[i].out = Array::empty({L, 1, N2}, Dtype::bfloat16, Device::gpu());
      }
      const double distinct = distinct_sum / kSets;
      detail::GemmDesc d;
      d.M = 1;
      d.N = N2;
      d.K = K2;
      d.batch = L;
      d.a_batch = T;
      d.b_batch = E;
      d.dtype = Dtype::bfloat16;
      d.b_kmajor = true;
      d.op = "gather_mm";
      const auto& sel = reg.gemm.select(d, Device::Type::gpu);
      const detail::KernelEntry<detail::GemmDesc, detail::GemmArgs>* ungrouped = nullptr;
      for (const auto& e : reg.gemm.entries())
        if (e.device == Device::Type::gpu && e.name == "cuda_gemm_sm80_mma") ungrouped = &e;
      std::vector<const detail::KernelEntry<detail::GemmDesc, detail::GemmArgs>*> runs = {&sel};
      if (ungrouped && sel.name != ungrouped->name) runs.push_back(ungrouped);
      const Stream st(Device::gpu());
      Array first;
      for (const auto* entry : runs) {
        detail::GemmArgs chk = sets[0];
        chk.out = Array::empty({L, 1, N2}, Dtype::bfloat16, Device::gpu());
        entry->run(d, chk, st);
        double err = -1;
        if (first.is_null()) first = chk.out;
        else err = max_abs_diff(first, chk.out);
        const double us = median_us(warm, iters, [&](int i) { entry->run(d, sets[i % kSets], st); });
        const double sync_us = median_sync_us(20, [&](int i) { entry->run(d, sets[i % kSets], st); });
        const double bytes = distinct * expert_bytes + double(T) * K2 * 2 + double(L) * N2 * 2;
        Result r{"qwen3-30b-a3b gate+up bf16 gather_mm T=" + std::to_string(T) + " [" + entry->name + "]", L, N2, K2, us,
                 bytes / (us * 1e-6) / 1e9, 0, 2.0 * L * N2 * K2 / (us * 1e-6) / 1e12, err, sync_us};
        r.pct_copy = 100.0 * r.gbs / copy_gbs;
        results.push_back(r);
        std::printf("  %-52s %6.1f experts %9.2f us %8.1f GB/s %6.1f%% of copy (idle-GPU call %.2f us) max|diff| to the first=%.3g\n",
                    r.name.c_str(), distinct, us, r.gbs, r.pct_copy, sync_us, err);
        std::fflush(stdout);
      }
    }
  }

  // ---- peer: cuBLAS bf16 ---------------------------------------------------------------
  {
    cublasHandle_t h;
    if (cublasCreate(&h) == CUBLAS_STATUS_SUCCESS) {
      const size_t wb = size_t(N) * K * 2;
      const int copies = 2;
      std::vector<void*> w(copies);
      for (auto& p : w) {
        CK(cudaMalloc(&p, wb));
        CK(cudaMemset(p, 0x3c, wb));
      }
      for (int64_t M : quick ? std::vector<int64_t>{1}
                       : have_m ? only_m
                                : std::vector<int64_t>{1, 16, 32, 64, 128, 256, 2048}) {
        void *x = nullptr, *y = nullptr;
        CK(cudaMalloc(&x, size_t(M) * K * 2));
        CK(cudaMalloc(&y, size_t(M) * N * 2));
        CK(cudaMemset(x, 0x3c, size_t(M) * K * 2));
        const float alpha = 1.0f, beta = 0.0f;
        // y^T (N, M) = W (N, K) x^T: column-major view with W stored (N, K) row-major = (K, N) col-major.
        auto run = [&](int i) {
          cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha,
                       w[i % copies], CUDA_R_16BF, static_cast<int>(K), x, CUDA_R_16BF, static_cast<int>(K), &beta, y,
                       CUDA_R_16BF, static_cast<int>(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        };
        const double us = median_us(warm, M >= 1024 ? 20 : iters, run);
        const double bytes = double(wb) + double(M) * K * 2 + double(M) * N * 2;
        const double sync_us = median_sync_us(20, run);
        Result r{"cuBLAS bf16 (peer)", M, N, K, us, bytes / (us * 1e-6) / 1e9, 0, 2.0 * M * N * K / (us * 1e-6) / 1e12,
                 -1, sync_us};
        r.pct_copy = 100.0 * r.gbs / copy_gbs;
        results.push_back(r);
        std::printf("  %-40s M=%-5lld %9.2f us %8.1f GB/s %6.1f%% of copy %7.2f TFLOP/s\n", r.name.c_str(),
                    static_cast<long long>(M), us, r.gbs, r.pct_copy, r.tflops);
        CK(cudaFree(x));
        CK(cudaFree(y));
      }
      for (auto p : w) CK(cudaFree(p));
      cublasDestroy(h);
    }
  }

  const std::string head = "kernel (" + std::to_string(N) + " x " + std::to_string(K) + ", bf16 x)";
  std::printf("\n%-42s %6s %10s %9s %8s %9s %10s\n", head.c_str(), "M", "us", "GB/s", "% copy", "TFLOP/s", "idle-call");
  for (const auto& r : results)
    std::printf("%-42s %6lld %10.2f %9.1f %8.1f %9.2f %10.2f\n", r.name.c_str(), static_cast<long long>(r.M), r.us,
                r.gbs, r.pct_copy, r.tflops, r.sync_us);
  std::printf("copy bandwidth (same run): %.1f GB/s\n", copy_gbs);

  if (!json_path.empty()) {
    std::ofstream o(json_path);
    o << "{\n  \"device\": \"" << prop.name << "\", \"driver\": " << driver << ", \"runtime\": " << runtime
      << ",\n  \"copy_gbs\": " << copy_gbs << ",\n  \"stream_floor\": {\"bytes\": " << floor_bytes
      << ", \"median_us\": " << floor_us << ", \"gbs\": " << floor_gbs << ", \"pct_copy\": " << 100.0 * floor_gbs / copy_gbs
      << "},\n  \"results\": [\n";
    for (size_t i = 0; i < results.size(); ++i) {
      const auto& r = results[i];
      o << "    {\"name\": \"" << r.name << "\", \"M\": " << r.M << ", \"N\": " << r.N << ", \"K\": " << r.K
        << ", \"median_us\": " << r.us << ", \"gbs\": " << r.gbs << ", \"pct_copy\": " << r.pct_copy
        << ", \"tflops\": " << r.tflops << ", \"idle_call_us\": " << r.sync_us
        << ", \"check_max_abs_diff\": " << r.max_err << "}"
        << (i + 1 < results.size() ? "," : "") << "\n";
    }
    o << "  ]\n}\n";
  }
  return 0;
}
