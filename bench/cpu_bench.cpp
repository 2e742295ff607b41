// mmkit_cpu_bench: the CPU backend against its roofline and its peers, all in
// one run (the machines are shared and noisy, so only same-run ratios count).
//
// 1. Measures the machine: read bandwidth (OpenMP streaming sum, best of 48
//    64 MB windows of a 1 GiB buffer, all threads) and the FMA peak (independent FMA chains at the widest ISA).
// 2. Times each case (median and min of several calls after a warm-up; weights
//    rotated over copies totalling >= 3x the L3 so every call reads DRAM, MoE
//    expert choices drawn fresh per call) at the active SIMD level, and
//    its peers: the portable scalar kernels (MMKIT_CPU_ISA=scalar level),
//    dequantize + OpenBLAS sgemm, and MLX's CPU backend from the JSON that
//    bench/mlx_cpu_peer.py wrote (bench/run_cpu.sh runs both).
// 3. Prints one table (GB/s, % of the bandwidth roofline, GFLOP/s, % of the
//    FMA peak, ratios to the peers) and writes JSON.
//
// Usage: mmkit_cpu_bench [--quick] [--json out.json] [--mlx mlx.json] [--filter substring]
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/cpu_isa.h"
#include "mmkit/mmkit.h"

#if defined(MMKIT_BENCH_HAVE_CBLAS)
#include <cblas.h>
#endif

namespace {

using namespace mmkit;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

// ---- machine ceilings ---------------------------------------------------------------

double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

/// Streaming read bandwidth in GB/s: the best of 48 passes over 64 MB windows
/// of a 1 GiB buffer (rotated, so every pass reads DRAM, not the L3). Short
/// passes make it the same statistic as the kernels' min time on a shared
/// machine (both catch the quiet windows).
double read_bandwidth_gbs(int threads) {
  static std::vector<double> a;
  const size_t n = (size_t(1) << 30) / sizeof(double), win = (size_t(64) << 20) / sizeof(double);
  if (a.empty()) {
    a.resize(n);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) a[i] = 1.0 + double(i & 7);
  }
  double best = 0.0, sink = 0.0;
  for (int pass = 0; pass < 48; ++pass) {
    const double* base = a.data() + (size_t(pass) % (n / win)) * win;
    const double t0 = now_s();
    double total = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
    for (size_t blk = 0; blk < win / 16; ++blk) {
      const double* p = base + blk * 16;
      double s0 = p[0] + p[8], s1 = p[1] + p[9], s2 = p[2] + p[10], s3 = p[3] + p[11];
      double s4 = p[4] + p[12], s5 = p[5] + p[13], s6 = p[6] + p[14], s7 = p[7] + p[15];
      total += ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
    }
    const double dt = now_s() - t0;
    sink += total;
    best = std::max(best, double(win) * sizeof(double) / dt / 1e9);
  }
  if (sink == 42.0) std::printf(" ");
  return best;
}

__attribute__((target("avx512f,fma"))) double fma_chains_avx512(int64_t iters) {
  __m512 c[12];
  for (int i = 0; i < 12; ++i) c[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) c[i] = _mm512_fmadd_ps(c[i], a, b);  // 12 chains: registers, not memory
  }
  alignas(64) float t[16];
  float s = 0;
  for (int i = 0; i < 12; ++i) {
    _mm512_store_ps(t, c[i]);
    for (float v : t) s += v;
  }
  return s;
}

__attribute__((target("avx2,fma"))) double fma_chains_avx2(int64_t iters) {
  __m256 c[12];
  for (int i = 0; i < 12; ++i) c[i] = _mm256_set1_ps(float(i) * 1e-3f);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) c[i] = _mm256_fmadd_ps(c[i], a, b);
  }
  alignas(32) float t[8];
  float s = 0;
  for (int i = 0; i < 12; ++i) {
    _mm256_store_ps(t, c[i]);
    for (float v : t) s += v;
  }
  return s;
}

/// Float32 FMA peak in GFLOP/s over all threads at the widest vector the CPU has.
double fma_peak_gflops(int threads, const char** isa) {
  const bool z = __builtin_cpu_supports("avx512f");
  const bool y = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  *isa = z ? "avx512" : y ? "avx2" : "none";
  if (!z && !y) return 0.0;
  const int lanes = z ? 16 : 8;
  const int64_t iters = 20000000;
  double best = 0.0, sink = 0.0;
  for (int pass = 0; pass < 3; ++pass) {
    const double t0 = now_s();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += z ? fma_chains_avx512(iters) : fma_chains_avx2(iters);
    const double dt = now_s() - t0;
    best = std::max(best, 2.0 * lanes * 12 * double(iters) * threads / dt / 1e9);
  }
  if (sink == 42.0) std::printf(" ");
  return best;
}

int64_t l3_bytes() {
  std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index3/size");
  std::string s;
  if (f >> s) {
    int64_t v = std::atoll(s.c_str());
    if (s.back() == 'K') v *= 1024;
    if (s.back() == 'M') v *= 1024 * 1024;
    if (v > 0) return v;
  }
  return 32ll << 20;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

// ---- timing -------------------------------------------------------------------------------

struct Timing {
  double med_us = 0, min_us = 0;
  int reps = 0;
};

/// Calls fn(i) for i = 0.. after `warm` warm-up calls, until `reps` calls or `budget_s` seconds.
Timing time_calls(const std::function<void(int)>& fn, int reps, double budget_s = 4.0, int warm = 1) {
  for (int i = 0; i < warm; ++i) fn(i);
  std::vector<double> t;
  const double start = now_s();
  // Short calls get more repetitions (the min is the robust statistic on a shared machine).
  const double t_first = now_s();
  fn(warm);
  if (now_s() - t_first < 0.02) reps = std::max(reps, 40);
  for (int i = 0; i < reps; ++i) {
    const double t0 = now_s();
    fn(warm + i);
    t.push_back((now_s() - t0) * 1e6);
    if (now_s() - start > budget_s && t.size() >= 3) break;
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t.front(), static_cast<int>(t.size())};
}

// ---- data -----------------------------------------------------------------------------------

struct QFmt {
  const char* mode;  // a literal: "affine", "mxfp4", ...
  int bits, gs;
  bool affine() const { return std::string(mode) == "affine"; }
  std::string name() const {
    return affine() ? "affine" + std::to_string(bits) + "g" + std::to_string(gs) : std::string(mode);
  }
  /// Weight bytes read per weight: codes + scale (+ bias) of `scale_es` bytes each (fp modes: one byte).
  double bytes_per_weight(size_t scale_es = 2) const {
    const double scale_bytes = affine() ? 2.0 * double(scale_es) : 1.0;
    return bits / 8.0 + scale_bytes / gs;
  }
};

/// Random packed codes and realistic scales (bf16 scale and bias for affine),
/// (E, rows, cols): generated directly, no quantize pass over gigabytes.
struct QMat {
  Array w, scales, biases;
};

QMat random_qmat(int64_t E, int64_t rows, int64_t cols, const QFmt& f, uint64_t seed) {
  QMat q;
  q.w = Array::empty({E, rows, cols * f.bits / 32}, Dtype::uint32);
  const int64_t nw = q.w.size();
  uint32_t* w = q.w.data<uint32_t>();
#pragma omp parallel
  {
    std::mt19937 g(static_cast<uint32_t>(seed + 977 * omp_get_thread_num()));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nw; ++i) w[i] = g();
  }
  const int64_t ng = E * rows * (cols / f.gs);
  if (f.affine()) {
    q.scales = Array::empty({E, rows, cols / f.gs}, Dtype::bfloat16);
    q.biases = Array::empty({E, rows, cols / f.gs}, Dtype::bfloat16);
    auto* s = q.scales.data<bfloat16_t>();
    auto* b = q.biases.data<bfloat16_t>();
    const float inv = 1.0f / float((1 << f.bits) - 1);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < ng; ++i) {
      const float r = 0.02f + 0.01f * float((i * 2654435761u) % 97) / 97.0f;
      s[i] = bfloat16_t(2.0f * r * inv);
      b[i] = bfloat16_t(-r);
    }
  } else {
    q.scales = Array::empty({E, rows, cols / f.gs}, Dtype::uint8);
    auto* s = q.scales.data<uint8_t>();
    for (int64_t i = 0; i < ng; ++i) s[i] = std::string(f.mode) == "nvfp4" ? uint8_t(0x20 + i % 16) : uint8_t(120 + i % 4);
  }
  return q;
}

std::optional<Array> opt(const Array& a) { return a.is_null() ? std::nullopt : std::optional<Array>(a); }

// ---- results ----------------------------------------------------------------------------------

struct Row {
  std::string name, group;
  double us = 0, min_us = 0;
  double bytes = 0, flops = 0;
  double roof_us = 0;  // max(bytes / BW, flops / FMA peak)
  std::map<std::string, double> peer_us;
  json extra = json::object();
};

struct Ctx {
  double bw_gbs = 0, fma_gflops = 0;
  int64_t l3 = 0;
  bool quick = false;
  std::string filter;
  json mlx = json::object();
  std::vector<Row> rows;
  bool want(const std::string& name) const { return filter.empty() || name.find(filter) != std::string::npos; }
  double roofline_us(double bytes, double flops) const {
    return std::max(bytes / (bw_gbs * 1e3), fma_gflops > 0 ? flops / (fma_gflops * 1e3) : 0.0);
  }
  void add_mlx(Row& r) const {
    if (mlx.contains(r.name)) r.peer_us["mlx"] = mlx[r.name].get<double>();
  }
};

/// Runs `fn` at the scalar level (the portable kernels).
Timing time_scalar(const std::function<void(int)>& fn, int reps, double budget_s) {
  const cpu::Isa prev = detail::set_cpu_isa_for_testing(cpu::Isa::scalar);
  Timing t = time_calls(fn, reps, budget_s, 1);
  detail::set_cpu_isa_for_testing(prev);
  return t;
}

#if defined(MMKIT_BENCH_HAVE_CBLAS)
/// The dequantize + OpenBLAS sgemm peer: y (M, N) = x (M, K) @ dequantize(w)^T.
void deq_sgemm(const Array& x, const Array& w, const Array& s, const std::optional<Array>& b, const QFmt& f,
               Array& wd_buf, std::vector<float>& y) {
  Array wd = dequantize(w, s, b, f.gs, f.bits, f.mode, std::nullopt, Dtype::float32);
  const int64_t N = wd.shape(-2), K = wd.shape(-1), M = x.size() / K;
  y.resize(static_cast<size_t>(M * N));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.0f, x.data<float>(), int(K),
              wd.data<float>(), int(K), 0.0f, y.data(), int(N));
  wd_buf = wd;
}
#endif

// ---- cases ----------------------------------------------------------------------------------------

void bench_qmm(Ctx& c) {
  const int64_t N = 14336, K = 4096;
  struct V {
    QFmt f;
    std::vector<int64_t> Ms;
    Dtype dt;
  };
  std::vector<V> vs = {
      {{"affine", 4, 64}, {1, 2, 4, 8, 16, 32, 64, 256}, Dtype::float32},
      {{"affine", 4, 64}, {1, 2, 4, 8}, Dtype::bfloat16},
      {{"affine", 4, 128}, {1}, Dtype::float32},
      {{"affine", 4, 32}, {1}, Dtype::float32},
      {{"affine", 2, 64}, {1}, Dtype::float32},
      {{"affine", 3, 64}, {1}, Dtype::float32},
      {{"affine", 5, 64}, {1}, Dtype::float32},
      {{"affine", 6, 64}, {1}, Dtype::float32},
      {{"affine", 8, 64}, {1}, Dtype::float32},
      {{"mxfp4", 4, 32}, {1, 8}, Dtype::float32},
      {{"nvfp4", 4, 16}, {1}, Dtype::float32},
      {{"mxfp8", 8, 32}, {1}, Dtype::float32},
  };
  if (c.quick) vs.resize(2);
  for (const V& v : vs) {
    // Affine scales and biases in the activation dtype (the front end would convert them per call otherwise).
    const double wbytes = double(N) * K * v.f.bytes_per_weight(itemsize(v.dt));
    const int copies = std::max<int>(2, int(std::ceil(3.0 * c.l3 / wbytes)));
    bool any = false;
    for (int64_t M : v.Ms)
      any = any || c.want("qmm " + v.f.name() + " " + dtype_name(v.dt) + " M=" + std::to_string(M) + " ");
    if (!any) continue;
    std::vector<QMat> qs;
    for (int i = 0; i < copies; ++i) qs.push_back(random_qmat(1, N, K, v.f, 11 + i));
    for (auto& q : qs) {
      q.w = q.w.reshape({N, K * v.f.bits / 32});
      q.scales = q.scales.reshape({N, K / v.f.gs});
      if (!q.biases.is_null()) q.biases = q.biases.reshape({N, K / v.f.gs});
      if (v.f.affine() && v.dt == Dtype::float32) {  // scales in the activation dtype
        q.scales = q.scales.astype(Dtype::float32);
        q.biases = q.biases.astype(Dtype::float32);
      }
    }
    for (int64_t M : v.Ms) {
      Row r;
      r.group = "quantized_matmul";
      r.name = "qmm " + v.f.name() + " " + dtype_name(v.dt) + " M=" + std::to_string(M) + " " + std::to_string(N) +
               "x" + std::to_string(K);
      if (!c.want(r.name)) continue;
      std::fprintf(stderr, "  %s\n", r.name.c_str());
      Array x = Array::full({M, K}, 0.5, Dtype::float32);
      {
        std::mt19937 g(5);
        std::normal_distribution<float> nd;
        for (int64_t i = 0; i < M * K; ++i) x.data<float>()[i] = nd(g);
      }
      Array xt = x.astype(v.dt);
      auto call = [&](int i) {
        const QMat& q = qs[static_cast<size_t>(i % copies)];
        Array y = quantized_matmul(xt, q.w, q.scales, opt(q.biases), true, v.f.gs, v.f.bits, v.f.mode);
      };
      const size_t es = itemsize(v.dt);
      r.bytes = wbytes + double(M) * K * es + double(M) * N * es;
      r.flops = 2.0 * M * N * K;
      r.roof_us = c.roofline_us(r.bytes, r.flops);
      Timing t = time_calls(call, c.quick ? 5 : 15, 4.0);
      r.us = t.med_us;
      r.min_us = t.min_us;
      // The AVX-512 VNNI kernel (affine 2/4/8-bit, <= 4 rows) against the float32 /
      // bfloat16 kernel it replaces, calls alternating so both see the same machine.
      // (bfloat16 x keeps the vdpbf16ps kernel above 2 rows: nothing to compare there)
      const int64_t vnni_rows = v.dt == Dtype::bfloat16 && cpu::has_avx512_bf16() ? 2 : 4;
      if (v.f.affine() && (v.f.bits == 2 || v.f.bits == 4 || v.f.bits == 8) && M <= vnni_rows &&
          cpu::vnni_qmv_enabled() &&
          std::string(cpu_isa()) == "avx512") {
        std::vector<double> on, off;
        for (int i = 0; i < (c.quick ? 6 : 20); ++i) {
          for (bool use : {true, false}) {
            detail::set_cpu_vnni_qmv_for_testing(use);
            const double t0 = now_s();
            call(i);
            (use ? on : off).push_back((now_s() - t0) * 1e6);
          }
        }
        detail::set_cpu_vnni_qmv_for_testing(true);
        std::sort(on.begin(), on.end());
        std::sort(off.begin(), off.end());
        r.peer_us["no-vnni"] = off[off.size() / 2];
        r.extra["vnni_speedup_median"] = off[off.size() / 2] / on[on.size() / 2];
        r.extra["vnni_speedup_min"] = off.front() / on.front();
        r.extra["no_vnni_min_us"] = off.front();
      }
      // peers
      const double scalar_est_s = 2e-9 * double(N) * K * std::max<int64_t>(1, M) / 2;
      if (M <= 16 && scalar_est_s < 20) r.peer_us["scalar"] = time_scalar(call, 3, 6.0).med_us;
#if defined(MMKIT_BENCH_HAVE_CBLAS)
      if (v.dt == Dtype::float32) {
        Array wd;
        std::vector<float> y;
        auto peer = [&](int i) {
          const QMat& q = qs[static_cast<size_t>(i % copies)];
          deq_sgemm(x, q.w, q.scales, opt(q.biases), v.f, wd, y);
        };
        r.peer_us["deq+sgemm"] = time_calls(peer, 3, 6.0).med_us;
      }
#endif
      c.add_mlx(r);
      c.rows.push_back(r);
    }
  }
}

struct MoeShape {
  std::string model;
  int64_t E, k, H, I;
};

void bench_gather_qmm(Ctx& c) {
  const std::vector<MoeShape> shapes = {
      {"qwen3-30b-a3b", 128, 8, 2048, 768}, {"gpt-oss-120b", 128, 4, 2880, 2880}, {"mixtral-8x7b", 8, 2, 4096, 14336}};
  const QFmt f{"affine", 4, 64};
  for (const MoeShape& m : shapes) {
    std::vector<int64_t> Ts = m.model == "qwen3-30b-a3b" ? std::vector<int64_t>{1, 8, 64, 512}
                                                          : std::vector<int64_t>{1, 8};
    if (c.quick) Ts = {1, 8};
    bool any = false;
    for (int64_t T : Ts) any = any || c.want("gather_qmm " + m.model + " bf16 T=" + std::to_string(T) + " ");
    if (!any) continue;
    const int64_t N = 2 * m.I, K = m.H;
    std::fprintf(stderr, "  (building %s weights: %lld x %lld x %lld)\n", m.model.c_str(), (long long)m.E,
                 (long long)N, (long long)K);
    QMat q = random_qmat(m.E, N, K, f, 3);
    const double expert_bytes = double(N) * K * f.bytes_per_weight();
    for (int64_t T : Ts) {
      for (bool sorted : {false, true}) {
        if (sorted && T < 8) continue;
        Row r;
        r.group = "gather_qmm";
        r.name = "gather_qmm " + m.model + " bf16 T=" + std::to_string(T) + " " + (sorted ? "sorted" : "unsorted");
        if (!c.want(r.name)) continue;
        std::fprintf(stderr, "  %s\n", r.name.c_str());
        // fresh routing per call: 8 index sets rotated, experts distinct per token
        const int sets = 8;
        std::vector<Array> lhs(sets), rhs(sets);
        std::vector<int64_t> distinct(sets);
        std::mt19937 g(17);
        for (int s = 0; s < sets; ++s) {
          std::vector<std::pair<int64_t, int64_t>> pairs;
          for (int64_t t = 0; t < T; ++t) {
            std::vector<int64_t> ex(static_cast<size_t>(m.E));
            for (int64_t e = 0; e < m.E; ++e) ex[static_cast<size_t>(e)] = e;
            std::shuffle(ex.begin(), ex.end(), g);
            for (int64_t j = 0; j < m.k; ++j) pairs.push_back({t, ex[static_cast<size_t>(j)]});
          }
          if (sorted) std::sort(pairs.begin(), pairs.end(), [](auto a, auto b) { return a.second < b.second; });
          std::vector<int64_t> l, rr;
          std::vector<char> seen(static_cast<size_t>(m.E), 0);
          for (auto& p : pairs) {
            l.push_back(p.first);
            rr.push_back(p.second);
            seen[static_cast<size_t>(p.second)] = 1;
          }
          distinct[s] = std::count(seen.begin(), seen.end(), 1);
          lhs[s] = Array::from_vector(l);
          rhs[s] = Array::from_vector(rr);
        }
        Array x = Array::full({T, 1, K}, 0.25, Dtype::float32);
        for (int64_t i = 0; i < T * K; ++i) x.data<float>()[i] = float((i * 7919) % 101) / 101.0f - 0.5f;
        Array xb = x.astype(Dtype::bfloat16);
        const Array& sc = q.scales;  // bfloat16, as in bf16 checkpoints
        const Array& bi = q.biases;
        auto call = [&](int i) {
          const int s = i % sets;
          Array y = gather_qmm(xb, q.w, sc, bi, lhs[s], rhs[s], true, f.gs, f.bits, f.mode, sorted);
        };
        double dmean = 0;
        for (int64_t d : distinct) dmean += double(d) / sets;
        r.bytes = dmean * expert_bytes + double(T) * K * 2 + double(T) * m.k * N * 2;
        r.flops = 2.0 * T * m.k * N * K;
        r.roof_us = c.roofline_us(r.bytes, r.flops);
        r.extra["distinct_experts_mean"] = dmean;
        Timing t = time_calls(call, c.quick ? 5 : 16, 5.0);
        r.us = t.med_us;
        r.min_us = t.min_us;
        if (T <= 64) r.peer_us["scalar"] = time_scalar(call, 3, 8.0).med_us;
#if defined(MMKIT_BENCH_HAVE_CBLAS)
        if (T <= 64 || m.model == "qwen3-30b-a3b") {
          // per-expert loop: dequantize each routed expert, sgemm its rows
          auto peer = [&](int i) {
            const int s = i % sets;
            const int64_t* l = lhs[s].data<int64_t>();
            const int64_t* rr = rhs[s].data<int64_t>();
            const int64_t L = lhs[s].size();
            std::map<int64_t, std::vector<int64_t>> by;
            for (int64_t p = 0; p < L; ++p) by[rr[p]].push_back(l[p]);
            std::vector<float> xs, y;
            for (auto& [e, toks] : by) {
              Array wd = dequantize(q.w.index(0, e), sc.index(0, e), bi.index(0, e), f.gs, f.bits, f.mode,
                                    std::nullopt, Dtype::float32);
              xs.resize(toks.size() * static_cast<size_t>(K));
              for (size_t t2 = 0; t2 < toks.size(); ++t2)
                std::memcpy(xs.data() + t2 * K, x.data<float>() + toks[t2] * K, size_t(K) * 4);
              y.resize(toks.size() * static_cast<size_t>(N));
              cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(toks.size()), int(N), int(K), 1.0f, xs.data(),
                          int(K), wd.data<float>(), int(K), 0.0f, y.data(), int(N));
            }
          };
          r.peer_us["deq+sgemm"] = time_calls(peer, 3, 8.0).med_us;
        }
#endif
        c.add_mlx(r);
        c.rows.push_back(r);
      }
    }
  }
}

void bench_gemm(Ctx& c) {
  const std::vector<int64_t> sizes = c.quick ? std::vector<int64_t>{1024} : std::vector<int64_t>{1024, 2048};
  for (int64_t n : sizes) {
    for (Dtype dt : {Dtype::float32, Dtype::bfloat16}) {
      Row r;
      r.group = "gather_mm";
      r.name = "matmul " + std::string(dtype_name(dt)) + " " + std::to_string(n) + "^3";
      if (!c.want(r.name)) continue;
      std::fprintf(stderr, "  %s\n", r.name.c_str());
      Array a = Array::full({n, n}, 0.5, Dtype::float32), b = Array::full({n, n}, 0.25, Dtype::float32);
      for (int64_t i = 0; i < n * n; ++i) {
        a.data<float>()[i] = float((i * 31) % 17) / 17.0f - 0.5f;
        b.data<float>()[i] = float((i * 13) % 19) / 19.0f - 0.5f;
      }
      Array at = a.astype(dt), bt = b.astype(dt);
      auto call = [&](int) { Array y = gather_mm(at, bt); };
      const double es = double(itemsize(dt));
      r.bytes = 3.0 * n * n * es;
      r.flops = 2.0 * n * n * n;
      r.roof_us = c.roofline_us(r.bytes, r.flops);
      Timing t = time_calls(call, 5, 6.0);
      r.us = t.med_us;
      r.min_us = t.min_us;
      if (n <= 1024) r.peer_us["scalar"] = time_scalar(call, 2, 6.0).med_us;
#if defined(MMKIT_BENCH_HAVE_CBLAS)
      if (dt == Dtype::float32) {
        std::vector<float> y(static_cast<size_t>(n * n));
        auto peer = [&](int) {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(n), int(n), 1.0f, a.data<float>(), int(n),
                      b.data<float>(), int(n), 0.0f, y.data(), int(n));
        };
        r.peer_us["sgemm"] = time_calls(peer, 5, 6.0).med_us;
      }
#endif
      c.rows.push_back(r);
    }
  }
}

void bench_block_masked(Ctx& c) {
  const int64_t n = c.quick ? 1024 : 2048;
  Array a = Array::full({n, n}, 0.5, Dtype::float32), b = Array::full({n, n}, 0.25, Dtype::float32);
  for (int64_t i = 0; i < n * n; ++i) {
    a.data<float>()[i] = float((i * 31) % 17) / 17.0f - 0.5f;
    b.data<float>()[i] = float((i * 13) % 19) / 19.0f - 0.5f;
  }
  double dense_us = 0;
  {
    Row r;
    r.group = "block_masked_mm";
    r.name = "block_masked_mm dense f32 " + std::to_string(n) + "^3";
    if (c.want("block_masked_mm")) {
      std::fprintf(stderr, "  %s\n", r.name.c_str());
      auto call = [&](int) { Array y = matmul(a, b); };
      Timing t = time_calls(call, 5, 6.0);
      r.us = dense_us = t.med_us;
      r.min_us = t.min_us;
      r.flops = 2.0 * n * n * n;
      r.bytes = 3.0 * n * n * 4;
      r.roof_us = c.roofline_us(r.bytes, r.flops);
      c.rows.push_back(r);
    }
  }
  if (dense_us == 0) return;
  for (int bs : {64, 32}) {
    for (double d : {1.0, 0.5, 0.25, 0.1}) {
      Row r;
      r.group = "block_masked_mm";
      char buf[64];
      std::snprintf(buf, sizeof buf, "block_masked_mm bs=%d d=%.2f f32 %lld^3", bs, d, (long long)n);
      r.name = buf;
      if (!c.want(r.name)) continue;
      std::fprintf(stderr, "  %s\n", r.name.c_str());
      const int64_t t = n / bs;
      Array mo = Array::empty({t, t}, Dtype::bool_);
      std::mt19937 g(3);
      std::uniform_real_distribution<double> u(0.0, 1.0);
      int64_t on = 0;
      for (int64_t i = 0; i < t * t; ++i) {
        const bool v = u(g) < d;
        mo.data<bool>()[i] = v;
        on += v;
      }
      const double frac = double(on) / double(t * t);
      auto call = [&](int) { Array y = block_masked_mm(a, b, bs, mo); };
      Timing tm = time_calls(call, 5, 6.0);
      r.us = tm.med_us;
      r.min_us = tm.min_us;
      r.flops = 2.0 * n * n * n * frac;
      r.bytes = 3.0 * n * n * 4;
      r.roof_us = c.roofline_us(r.bytes, r.flops);
      r.peer_us["dense"] = dense_us;
      // target: speed-up over dense >= 0.7 / d, i.e. efficiency = (dense / masked) * frac >= 0.7
      r.extra["unmasked_fraction"] = frac;
      r.extra["efficiency_vs_dense"] = dense_us / tm.med_us * frac;
      c.rows.push_back(r);
    }
  }
}

void bench_quantize(Ctx& c) {
  const int64_t R = 14336, C = 4096;
  struct V {
    QFmt f;
    Dtype odt;
  };
  for (const V& v : std::vector<V>{{{"affine", 4, 64}, Dtype::float32},
                                   {{"affine", 4, 64}, Dtype::bfloat16},
                                   {{"mxfp4", 4, 32}, Dtype::bfloat16}}) {
    Row r;
    r.group = "dequantize";
    r.name = "dequantize " + v.f.name() + " -> " + dtype_name(v.odt) + " " + std::to_string(R) + "x" + std::to_string(C);
    if (!c.want(r.name)) continue;
    std::fprintf(stderr, "  %s\n", r.name.c_str());
    QMat q = random_qmat(1, R, C, v.f, 9);
    Array w = q.w.reshape({R, C * v.f.bits / 32}), s = q.scales.reshape({R, C / v.f.gs});
    std::optional<Array> b;
    if (!q.biases.is_null()) b = q.biases.reshape({R, C / v.f.gs});
    auto call = [&](int) { Array y = dequantize(w, s, b, v.f.gs, v.f.bits, v.f.mode, std::nullopt, v.odt); };
    r.bytes = double(R) * C * (v.f.bytes_per_weight() + double(itemsize(v.odt)));
    r.roof_us = c.roofline_us(r.bytes, 0);
    Timing t = time_calls(call, 7, 4.0);
    r.us = t.med_us;
    r.min_us = t.min_us;
    r.peer_us["scalar"] = time_scalar(call, 3, 6.0).med_us;
    c.add_mlx(r);
    c.rows.push_back(r);
  }
  for (const QFmt& f : {QFmt{"affine", 4, 64}, QFmt{"mxfp4", 4, 32}}) {
    for (Dtype dt : {Dtype::float32, Dtype::bfloat16}) {
      Row r;
      r.group = "quantize";
      r.name = "quantize " + std::string(dtype_name(dt)) + " -> " + f.name() + " 4096x4096";
      if (!c.want(r.name)) continue;
      std::fprintf(stderr, "  %s\n", r.name.c_str());
      Array w = Array::empty({4096, 4096}, Dtype::float32);
      std::mt19937 g(1);
      std::normal_distribution<float> nd;
      for (int64_t i = 0; i < w.size(); ++i) w.data<float>()[i] = nd(g);
      Array wt = w.astype(dt);
      auto call = [&](int) { auto q = quantize(wt, f.gs, f.bits, f.mode); };
      r.bytes = double(w.size()) * (double(itemsize(dt)) + f.bytes_per_weight());
      r.roof_us = c.roofline_us(r.bytes, 0);
      Timing t = time_calls(call, 5, 4.0);
      r.us = t.med_us;
      r.min_us = t.min_us;
      r.peer_us["scalar"] = time_scalar(call, 2, 8.0).med_us;
      c.add_mlx(r);
      c.rows.push_back(r);
    }
  }
}

// ---- output ---------------------------------------------------------------------------------------

std::string fmt_us(double us) {
  char b[32];
  if (us >= 1e6) std::snprintf(b, sizeof b, "%.2f s", us / 1e6);
  else if (us >= 1e4) std::snprintf(b, sizeof b, "%.1f ms", us / 1e3);
  else if (us >= 1e3) std::snprintf(b, sizeof b, "%.2f ms", us / 1e3);
  else std::snprintf(b, sizeof b, "%.0f us", us);
  return b;
}

void print_table(const Ctx& c) {
  std::printf("\n%-50s %9s %9s %7s %6s %8s %6s %9s %9s %9s %10s %8s\n", "case", "median", "min", "GB/s", "%BW",
              "GFLOP/s", "%FMA", "%roof med", "%roof min", "x scalar", "x deq+BLAS", "x MLX");
  for (const Row& r : c.rows) {
    auto ratio = [&](const char* k) -> std::string {
      auto it = r.peer_us.find(k);
      if (it == r.peer_us.end()) return "-";
      char b[32];
      std::snprintf(b, sizeof b, "%.2fx", it->second / r.us);
      return b;
    };
    std::string blas = ratio("deq+sgemm");
    if (blas == "-") blas = ratio("sgemm");
    if (blas == "-") blas = ratio("dense");
    // throughput columns from the min time (the robust statistic on a shared machine)
    const double gbs = r.bytes / (r.min_us * 1e3), gf = r.flops / (r.min_us * 1e3);
    const double roof = c.roofline_us(r.bytes, r.flops);
    std::printf("%-50s %9s %9s %7.1f %5.0f%% %8.1f %5.0f%% %8.0f%% %8.0f%% %9s %10s %8s\n", r.name.c_str(),
                fmt_us(r.us).c_str(), fmt_us(r.min_us).c_str(), gbs, 100.0 * gbs / c.bw_gbs, gf,
                c.fma_gflops > 0 ? 100.0 * gf / c.fma_gflops : 0.0, 100.0 * roof / r.us, 100.0 * roof / r.min_us,
                ratio("scalar").c_str(), blas.c_str(), ratio("mlx").c_str());
    if (r.extra.contains("vnni_speedup_median"))
      std::printf("%-50s   (without the VNNI kernel: %s median, %s min; VNNI %.2fx faster by median, %.2fx by min)\n",
                  "", fmt_us(r.peer_us.at("no-vnni")).c_str(),
                  fmt_us(r.extra["no_vnni_min_us"].get<double>()).c_str(),
                  r.extra["vnni_speedup_median"].get<double>(), r.extra["vnni_speedup_min"].get<double>());
    if (r.extra.contains("efficiency_vs_dense"))
      std::printf("%-50s   (dense/masked x unmasked fraction = %.2f; target >= 0.7)\n", "",
                  r.extra["efficiency_vs_dense"].get<double>());
  }
  std::printf("\nGB/s, %%BW, GFLOP/s, %%FMA from the min time; %%roof = roofline time / measured time.\n"
              "x peer = peer median / mmkit median (higher is better for mmkit). x deq+BLAS column: dequantize +\n"
              "OpenBLAS sgemm (quantized ops), OpenBLAS sgemm (matmul), dense matmul (block_masked_mm).\n");
}

}  // namespace

int main(int argc, char** argv) {
  Ctx c;
  std::string json_path = "cpu_bench.json", mlx_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") c.quick = true;
    else if (a == "--json" && i + 1 < argc) json_path = argv[++i];
    else if (a == "--mlx" && i + 1 < argc) mlx_path = argv[++i];
    else if (a == "--filter" && i + 1 < argc) c.filter = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--json out.json] [--mlx mlx.json] [--filter substring]\n", argv[0]);
      return 2;
    }
  }
  if (!mlx_path.empty()) {
    std::ifstream f(mlx_path);
    if (f) {
      json m = json::parse(f);
      if (m.contains("cases")) c.mlx = m["cases"];
    }
  }
  const int threads = omp_get_max_threads();
#if defined(MMKIT_BENCH_HAVE_CBLAS)
  openblas_set_num_threads(threads);
#endif
  c.l3 = l3_bytes();
  const char* fma_isa = "";
  std::fprintf(stderr, "measuring the machine...\n");
  c.bw_gbs = read_bandwidth_gbs(threads);
  const double bw1 = read_bandwidth_gbs(1);
  c.fma_gflops = fma_peak_gflops(threads, &fma_isa);
  std::printf("mmkit_cpu_bench: %s, %d threads, L3 %.1f MB, SIMD level %s (AVX-512 VNNI: %s)\n", cpu_model().c_str(),
              threads, c.l3 / 1048576.0, cpu_isa(), cpu::has_avx512_vnni() ? "yes" : "no");
  std::printf("read bandwidth %.1f GB/s (%d threads), %.1f GB/s (1 thread); FMA peak %.0f GFLOP/s (%s)\n", c.bw_gbs,
              threads, bw1, c.fma_gflops, fma_isa);
  // The roofline uses the best bandwidth seen in the run (re-measured between
  // groups): conservative on a shared machine.
  auto remeasure = [&] { c.bw_gbs = std::max(c.bw_gbs, read_bandwidth_gbs(threads)); };
  bench_qmm(c);
  remeasure();
  bench_gather_qmm(c);
  remeasure();
  bench_gemm(c);
  bench_block_masked(c);
  bench_quantize(c);
  remeasure();
  std::printf("best read bandwidth over the run: %.1f GB/s (the roofline below)\n", c.bw_gbs);
  print_table(c);

  json out;
  out["machine"] = {{"cpu", cpu_model()},       {"threads", threads},       {"l3_bytes", c.l3},
                    {"read_bw_gbs", c.bw_gbs}, {"read_bw_1t_gbs", bw1},   {"fma_gflops", c.fma_gflops},
                    {"isa", cpu_isa()},         {"vnni", cpu::has_avx512_vnni()}};
  out["mlx_json"] = mlx_path;
  for (const Row& r : c.rows) {
    json j = {{"name", r.name},       {"group", r.group}, {"median_us", r.us}, {"min_us", r.min_us},
              {"bytes", r.bytes},     {"flops", r.flops}, {"roofline_us", c.roofline_us(r.bytes, r.flops)},
              {"gbs", r.bytes / (r.us * 1e3)}, {"peers_us", r.peer_us}, {"extra", r.extra}};
    out["rows"].push_back(j);
  }
  std::ofstream(json_path) << out.dump(2) << "\n";
  std::printf("wrote %s\n", json_path.c_str());
  return 0;
}
