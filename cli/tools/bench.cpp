#include "tools/bench.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <regex>

#include "mmkit/array.h"
#include "mmkit/error.h"
#include "mmkit/matmul.h"
#include "mmkit/quantize.h"
#include "mmkit/version.h"
#include "tools/png.h"
#include "tools/presets.h"
#include "tools/random.h"
#include "tools/timing.h"
#include "tools/util.h"

namespace mmkit::tools {

namespace {

constexpr const char* kOp = "bench";
constexpr int kRoutings = 16;  // fresh expert choices cycled through by gather_qmm runs

/// Random codes with sane scales: timing does not depend on the values, and
/// generating them directly avoids quantizing gigabytes of floats.
struct QWeights {
  Array w, scales;
  std::optional<Array> biases;
};

QWeights random_qweights(int64_t batch, int64_t rows, int64_t cols, const QuantSpec& q, uint64_t seed, Device d) {
  QWeights r;
  r.w = Array::empty({batch, rows, cols * q.bits / 32}, Dtype::uint32);
  fill_u32(r.w.data<uint32_t>(), r.w.size(), sub_seed(seed, 1));
  const Shape ss{batch, rows, cols / q.group_size};
  if (q.mode == "affine") {
    r.scales = random_normal(ss, Dtype::bfloat16, sub_seed(seed, 2), 0.01f);
    r.biases = random_normal(ss, Dtype::bfloat16, sub_seed(seed, 3), 0.01f);
  } else {
    r.scales = Array::empty(ss, Dtype::uint8);
    Array raw = Array::empty(ss, Dtype::uint32);
    fill_u32(raw.data<uint32_t>(), raw.size(), sub_seed(seed, 2));
    const uint32_t* src = raw.data<uint32_t>();
    uint8_t* dst = r.scales.data<uint8_t>();
    // e8m0 bytes 120..127 (2^-7..1); e4m3 bytes 0x30..0x3f (0.125..0.47): finite, normal.
    const bool e8m0 = q.mode != "nvfp4";
    for (int64_t i = 0; i < raw.size(); ++i) dst[i] = static_cast<uint8_t>(e8m0 ? 120 + src[i] % 8 : 0x30 + src[i] % 16);
  }
  if (d.is_gpu()) {
    r.w = r.w.to(d);
    r.scales = r.scales.to(d);
    if (r.biases) r.biases = r.biases->to(d);
  }
  return r;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void fill_record(BenchRecord& rec, const std::vector<TimedSample>& samples, double flops, const Roofline& roof) {
  const TimingSummary t = summarize(samples, flops, roof);
  rec.reps = t.samples;
  rec.us_median = t.us_median;
  rec.us_min = t.us_min;
  rec.bytes = t.bytes;
  rec.flops = flops;
  rec.gbps = t.gbps;
  rec.pct_roofline = t.pct_roofline;
  rec.tflops = flops / (rec.us_median * 1e-6) / 1e12;
}

double memory_budget(Device d) {
  // Host memory only: a GPU allocation failure is caught and the case skipped.
  const double ram = static_cast<double>(machine_info().ram_bytes);
  return d.is_cpu() ? ram / 3 : ram / 2;
}

BenchRecord run_case(const BenchCase& c, const BenchOptions& o, Device d, const Roofline& roof, uint64_t l3) {
  BenchRecord rec;
  const TimingPolicy pol{o.budget_s, o.min_reps, o.max_reps};
  rec.c = c;
  const QuantSpec& q = c.quant;
  const double act = 2.0;  // bfloat16 activations and outputs
  const double wbytes = static_cast<double>(q.matrix_bytes(c.N, c.K));
  const uint64_t seed = sub_seed(o.seed, std::hash<std::string>{}(c.name));
  if (c.op == "quantized_matmul" || c.op == "dequantize") {
    // Enough weight copies to overflow the last-level cache, so every run
    // reads its weights from memory (PERF.md's "cold").
    const double rotate = o.quick ? 0.0 : (d.is_cpu() ? 3.0 * static_cast<double>(l3 ? l3 : (32u << 20)) : 256e6);
    const int64_t copies = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(rotate / wbytes)), 1, 16);
    if (copies * wbytes > memory_budget(d)) {
      rec.status = "skipped: needs " + fmt_bytes(copies * wbytes) + " of weights";
      return rec;
    }
    const QWeights w = random_qweights(copies, c.N, c.K, q, seed, d);
    auto wi = [&](int r) { return w.w.index(0, r % copies); };
    auto si = [&](int r) { return w.scales.index(0, r % copies); };
    auto bi = [&](int r) { return w.biases ? std::optional<Array>(w.biases->index(0, r % copies)) : std::nullopt; };
    if (c.op == "dequantize") {
      const double moved = wbytes + act * c.N * c.K;
      const double flops = (q.has_biases() ? 2.0 : 1.0) * c.N * c.K;
      auto call = [&](int r) {
        return dequantize(wi(r), si(r), bi(r), q.group_size, q.bits, q.mode, std::nullopt, Dtype::bfloat16);
      };
      fill_record(rec, time_calls(d, pol, call, [&](int) { return moved; }), flops, roof);
    } else {
      const Array x = random_normal({c.M, c.K}, Dtype::bfloat16, sub_seed(seed, 9), 1.0f).to(d);
      const double moved = wbytes + act * (c.M * c.K + c.M * c.N);
      auto call = [&](int r) {
        return quantized_matmul(x, wi(r), si(r), bi(r), true, q.group_size, q.bits, q.mode);
      };
      fill_record(rec, time_calls(d, pol, call, [&](int) { return moved; }), 2.0 * c.M * c.N * c.K, roof);
    }
    return rec;
  }
  // gather_qmm: the MoE gate+up projection, fresh random routings per run.
  const double all = static_cast<double>(c.experts) * wbytes;
  if (all > memory_budget(d)) {
    rec.status = "skipped: needs " + fmt_bytes(all) + " of expert weights";
    return rec;
  }
  const QWeights w = random_qweights(c.experts, c.N, c.K, q, seed, d);
  const Array x = random_normal({c.M, 1, 1, c.K}, Dtype::bfloat16, sub_seed(seed, 9), 1.0f).to(d);
  std::vector<Array> routes;
  std::vector<double> moved;
  for (int r = 0; r < kRoutings; ++r) {
    const auto idx = random_routing(c.M, c.experts, c.top_k, sub_seed(seed, 100 + static_cast<uint64_t>(r)));
    routes.push_back(Array::from_vector(idx, {c.M, c.top_k}).to(d));
    moved.push_back(static_cast<double>(count_distinct(idx)) * wbytes + act * (c.M * c.K + c.M * c.top_k * c.N));
  }
  auto call = [&](int r) {
    return gather_qmm(x, w.w, w.scales, w.biases, std::nullopt, routes[r % kRoutings], true, q.group_size, q.bits,
                      q.mode);
  };
  fill_record(rec, time_calls(d, pol, call, [&](int r) { return moved[r % kRoutings]; }),
              2.0 * c.M * c.top_k * c.N * c.K, roof);
  return rec;
}

}  // namespace

std::string BenchCase::shape_str() const {
  const std::string nk = std::to_string(N) + "x" + std::to_string(K);
  if (op == "quantized_matmul") return "M=" + std::to_string(M) + " " + nk;
  if (op == "dequantize") return nk;
  return "T=" + std::to_string(M) + " top-" + std::to_string(top_k) + " of " + std::to_string(experts) + " x " + nk;
}

std::vector<BenchCase> bench_cases(bool quick, Device d) {
  std::vector<BenchCase> out;
  const QuantSpec a4{"affine", 4, 64};
  auto qmm = [&](int64_t M, int64_t N, int64_t K, const QuantSpec& q) {
    BenchCase c{"quantized_matmul", "", "", M, N, K, 0, 0, q};
    c.name = "quantized_matmul " + c.shape_str() + " " + q.str();
    out.push_back(c);
  };
  auto moe = [&](const MoePreset& p, int64_t T, const QuantSpec& q) {
    BenchCase c{"gather_qmm", "", p.name, T, 2 * p.expert_width, p.hidden, p.experts, p.top_k, q};
    c.name = "gather_qmm " + p.name + " gate+up T=" + std::to_string(T) + " " + q.str();
    out.push_back(c);
  };
  auto deq = [&](int64_t N, int64_t K, const QuantSpec& q) {
    BenchCase c{"dequantize", "", "", 0, N, K, 0, 0, q};
    c.name = "dequantize " + c.shape_str() + " " + q.str();
    out.push_back(c);
  };
  if (quick) {
    for (int64_t M : {1, 8}) qmm(M, 1024, 1024, a4);
    qmm(1, 1024, 1024, {"mxfp4", 4, 32});
    for (int64_t T : {1, 4}) moe(find_moe_preset("tiny", kOp), T, a4);
    deq(1024, 1024, a4);
    return out;
  }
  const std::vector<int64_t> ms = d.is_gpu() ? std::vector<int64_t>{1, 8, 32, 128, 512, 2048}
                                             : std::vector<int64_t>{1, 8, 32, 128};
  const std::vector<int64_t> ts = d.is_gpu() ? std::vector<int64_t>{1, 8, 64, 512, 4096}
                                             : std::vector<int64_t>{1, 8, 64};
  // Dense layer shapes of PERF.md section 3 (Llama-3-8B MLP and an 8192^2 projection).
  for (auto [N, K] : {std::pair<int64_t, int64_t>{14336, 4096}, {4096, 14336}, {8192, 8192}})
    for (int64_t M : ms) qmm(M, N, K, a4);
  for (const QuantSpec& q : {QuantSpec{"affine", 4, 32}, QuantSpec{"affine", 4, 128}, QuantSpec{"affine", 2, 64},
                             QuantSpec{"affine", 3, 64}, QuantSpec{"affine", 5, 64}, QuantSpec{"affine", 6, 64},
                             QuantSpec{"affine", 8, 64}, QuantSpec{"mxfp4", 4, 32}, QuantSpec{"nvfp4", 4, 16},
                             QuantSpec{"mxfp8", 8, 32}})
    qmm(1, 14336, 4096, q);
  for (const auto& p : moe_presets())
    if (!p.for_tests)
      for (int64_t T : ts) moe(p, T, a4);
  for (const QuantSpec& q : {a4, QuantSpec{"mxfp4", 4, 32}, QuantSpec{"nvfp4", 4, 16}, QuantSpec{"mxfp8", 8, 32}})
    deq(14336, 4096, q);
  return out;
}

BenchResult run_bench(const BenchOptions& o, const BenchProgress& progress) {
  BenchResult res;
  res.device = resolve_device(o.device, kOp);
  res.device_label = device_label(res.device);
  res.version = version();
  res.commit = git_describe();
  res.date = utc_now();
  res.machine = machine_info();
  res.quick = o.quick;
  std::optional<std::regex> re;
  if (o.filter) {
    try {
      re.emplace(*o.filter, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw_error(kOp, "invalid --filter regular expression '", *o.filter, "': ", e.what(), ".");
    }
  }
  std::vector<BenchCase> cases;
  for (const auto& c : bench_cases(o.quick, res.device))
    if (!re || std::regex_search(c.name, *re)) cases.push_back(c);
  if (cases.empty()) throw_error(kOp, "--filter '", o.filter.value_or(""), "' matches no benchmark case.");
  if (progress) progress(0, cases.size() + 1, "measuring the roofline");
  res.roofline = measure_roofline(res.device, o.quick);
  for (size_t i = 0; i < cases.size(); ++i) {
    if (progress) progress(i + 1, cases.size() + 1, cases[i].name);
    try {
      res.records.push_back(run_case(cases[i], o, res.device, res.roofline, res.machine.l3_bytes));
    } catch (const std::bad_alloc&) {
      BenchRecord rec;
      rec.c = cases[i];
      rec.status = "skipped: out of memory";
      res.records.push_back(rec);
    }
  }
  if (progress) progress(cases.size() + 1, cases.size() + 1, "");
  return res;
}

nlohmann::ordered_json bench_json(const BenchResult& r) {
  using J = nlohmann::ordered_json;
  J j;
  j["mmkit_version"] = r.version;
  j["commit"] = r.commit;
  j["date"] = r.date;
  j["quick"] = r.quick;
  const MachineInfo& m = r.machine;
  j["machine"] = {{"cpu_model", m.cpu_model},     {"threads", m.threads},       {"cpu_features", m.cpu_features},
                  {"isa", m.isa},                 {"kernel_isa", m.kernel_isa}, {"l3_bytes", m.l3_bytes},     {"ram_bytes", m.ram_bytes},
                  {"cuda_built", m.cuda_built},   {"gpu_count", m.gpu_count}};
  j["device"] = r.device_label;
  j["timer"] = r.device.is_gpu()
                   ? "host monotonic clock around groups of back-to-back calls (about 2 ms), one synchronize per group"
                   : "host monotonic clock around each call";
  J roof;
  roof["bandwidth_gbps"] = r.roofline.bandwidth_gbps > 0 ? J(r.roofline.bandwidth_gbps) : J(nullptr);
  roof["bandwidth_source"] = r.roofline.bandwidth_source;
  roof["peak_gflops"] = r.roofline.peak_gflops > 0 ? J(r.roofline.peak_gflops) : J(nullptr);
  roof["peak_source"] = r.roofline.peak_source;
  j["roofline"] = roof;
  J cases = J::array();
  for (const auto& rec : r.records) {
    const BenchCase& c = rec.c;
    J shape = {{"M", c.M}, {"N", c.N}, {"K", c.K}};
    if (c.op == "gather_qmm") {
      shape = {{"T", c.M}, {"N", c.N}, {"K", c.K}, {"experts", c.experts}, {"top_k", c.top_k}};
    } else if (c.op == "dequantize") {
      shape = {{"N", c.N}, {"K", c.K}};
    }
    J e = {{"op", c.op}, {"name", c.name}, {"shape", shape}, {"shape_str", c.shape_str()}, {"dtype", "bfloat16"},
           {"mode", c.quant.mode}, {"bits", c.quant.bits}, {"group_size", c.quant.group_size}, {"status", rec.status}};
    if (!c.preset.empty()) e["preset"] = c.preset;
    auto num = [&](double v) { return rec.ok() ? J(v) : J(nullptr); };
    e["reps"] = rec.reps;
    e["us_median"] = num(rec.us_median);
    e["us_min"] = num(rec.us_min);
    e["bytes"] = num(rec.bytes);
    e["flops"] = num(rec.flops);
    e["gbps"] = num(rec.gbps);
    e["tflops"] = num(rec.tflops);
    e["pct_roofline"] = rec.ok() && rec.pct_roofline > 0 ? J(rec.pct_roofline) : J(nullptr);
    cases.push_back(e);
  }
  j["cases"] = cases;
  return j;
}

std::string format_bench(const BenchResult& r) {
  std::string s = "mmkit bench " + r.version + " (" + r.commit + "), " + r.device_label + ", " + r.machine.cpu_model + "\n";
  s += "roofline: " + (r.roofline.bandwidth_gbps > 0 ? fmt_fixed(r.roofline.bandwidth_gbps, 1) + " GB/s" : "bandwidth n/a") +
       " [" + r.roofline.bandwidth_source + "]; " +
       (r.roofline.peak_gflops > 0 ? fmt_fixed(r.roofline.peak_gflops, 0) + " GFLOP/s" : "peak n/a") + " [" +
       r.roofline.peak_source + "]\n\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& rec : r.records) {
    const BenchCase& c = rec.c;
    const std::string shape = c.preset.empty() ? c.shape_str() : c.preset + " " + c.shape_str();
    if (!rec.ok()) {
      rows.push_back({c.op, shape, c.quant.str(), rec.status, "", "", "", ""});
      continue;
    }
    rows.push_back({c.op, shape, c.quant.str(), fmt_time_us(rec.us_median), fmt_time_us(rec.us_min),
                    fmt_fixed(rec.gbps, rec.gbps < 10 ? 2 : 1), fmt_fixed(rec.tflops, rec.tflops < 1 ? 3 : 1),
                    rec.pct_roofline > 0 ? fmt_fixed(rec.pct_roofline, 1) + "%" : "n/a"});
  }
  s += format_table({"op", "shape", "format", "median", "min", "GB/s", "TFLOP/s", "% roofline"}, rows,
                    {false, false, false, true, true, true, true, true});
  s += "\nbfloat16 activations; ";
  s += r.quick ? "quick run: small shapes whose weights stay in cache, so GB/s can exceed the memory roofline"
               : "cold weights (rotated copies / fresh expert choices)";
  s += ".\nGB/s counts weights + scales (+ biases) + activations + outputs; for gather_qmm only the distinct experts"
       " touched.\n";
  return s;
}

// ---- the roofline picture ---------------------------------------------------------------

namespace {

enum Color : uint8_t { kWhite, kBlack, kGrid, kRed, kDark, kBlue, kOrange, kGreen, kPurple, kMid };
const std::vector<Rgb> kPalette = {{255, 255, 255}, {0, 0, 0},      {225, 225, 225}, {200, 40, 40}, {80, 80, 80},
                                   {31, 119, 180},  {255, 127, 14}, {44, 160, 44},   {148, 103, 189}, {160, 160, 160}};

std::string decade_label(int k) {
  if (k >= 0 && k <= 4) return std::to_string(static_cast<long long>(std::pow(10.0, k)));
  if (k < 0 && k >= -3) return "0." + std::string(static_cast<size_t>(-k - 1), '0') + "1";
  return "1E" + std::to_string(k);
}

}  // namespace

void write_bench_plot(const BenchResult& r, const std::string& path) {
  constexpr int W = 1060, H = 640, L = 90, R = 730, T = 60, B = 570;  // plot area [L, R] x [T, B]
  Canvas cv(W, H, kWhite);
  const double bw = r.roofline.bandwidth_gbps, peak = r.roofline.peak_gflops;
  const std::vector<std::pair<std::string, Color>> series = {
      {"quantized_matmul", kBlue}, {"gather_qmm", kOrange}, {"dequantize", kGreen}};
  // Axis ranges in decades, covering every point and the ridge.
  double xlo = 1e30, xhi = 0, ylo = 1e30, yhi = 0;
  for (const auto& rec : r.records) {
    if (!rec.ok() || rec.flops <= 0 || rec.bytes <= 0) continue;
    const double ai = rec.flops / rec.bytes, perf = rec.flops / (rec.us_median * 1e-6) / 1e9;
    xlo = std::min(xlo, ai), xhi = std::max(xhi, ai), ylo = std::min(ylo, perf), yhi = std::max(yhi, perf);
  }
  if (xhi == 0) xlo = 0.1, xhi = 100, ylo = 1, yhi = 100;
  if (bw > 0 && peak > 0) xlo = std::min(xlo, peak / bw / 10), xhi = std::max(xhi, peak / bw * 4);
  if (peak > 0) yhi = std::max(yhi, peak);
  if (bw > 0) ylo = std::min(ylo, bw * xlo);
  const int x0 = static_cast<int>(std::floor(std::log10(xlo / 1.2))), x1 = static_cast<int>(std::ceil(std::log10(xhi * 1.01)));
  const int y0 = static_cast<int>(std::floor(std::log10(ylo / 1.5))), y1 = static_cast<int>(std::ceil(std::log10(yhi * 1.5)));
  auto px = [&](double ai) { return L + static_cast<int>((std::log10(ai) - x0) / (x1 - x0) * (R - L)); };
  auto py = [&](double g) { return B - static_cast<int>((std::log10(g) - y0) / (y1 - y0) * (B - T)); };

  for (int k = x0; k <= x1; ++k) {
    cv.line(px(std::pow(10.0, k)), T, px(std::pow(10.0, k)), B, kGrid);
    const std::string lab = decade_label(k);
    cv.text(px(std::pow(10.0, k)) - Canvas::text_width(lab, 2) / 2, B + 12, lab, kBlack, 2);
  }
  for (int k = y0; k <= y1; ++k) {
    cv.line(L, py(std::pow(10.0, k)), R, py(std::pow(10.0, k)), kGrid);
    const std::string lab = decade_label(k);
    cv.text(L - 8 - Canvas::text_width(lab, 2), py(std::pow(10.0, k)) - 7, lab, kBlack, 2);
  }
  cv.line(L, T, L, B, kBlack, 2);
  cv.line(L, B, R, B, kBlack, 2);
  const std::string xt = "ARITHMETIC INTENSITY (FLOP/BYTE)";
  cv.text((L + R) / 2 - Canvas::text_width(xt, 2) / 2, B + 34, xt, kBlack, 2);
  cv.text(L - 60, T - 22, "GFLOP/S", kBlack, 2);
  const std::string title = "MMKIT ROOFLINE: " + r.device_label + ", " + r.commit;
  cv.text(L, 14, title, kBlack, 2);

  // The roof: min(bandwidth x intensity, peak), sampled along x.
  const double xa = std::pow(10.0, x0), xb = std::pow(10.0, x1);
  auto roof_at = [&](double ai) { return std::min(bw > 0 ? bw * ai : 1e300, peak > 0 ? peak : 1e300); };
  if (bw > 0 || peak > 0) {
    int prevx = -1, prevy = -1;
    for (int i = 0; i <= 400; ++i) {
      const double ai = xa * std::pow(xb / xa, i / 400.0);
      const double g = roof_at(ai);
      if (g <= std::pow(10.0, y0) || g >= std::pow(10.0, y1)) {
        prevx = -1;
        continue;
      }
      const int cx = px(ai), cy = py(g);
      const Color col = (peak > 0 && g >= peak) ? kDark : kRed;
      if (prevx >= 0) cv.line(prevx, prevy, cx, cy, col, 3);
      prevx = cx, prevy = cy;
    }
  }
  for (const auto& rec : r.records) {
    if (!rec.ok() || rec.flops <= 0 || rec.bytes <= 0) continue;
    Color col = kPurple;
    for (const auto& [name, c] : series)
      if (name == rec.c.op) col = c;
    const int cx = px(rec.flops / rec.bytes), cy = py(rec.flops / (rec.us_median * 1e-6) / 1e9);
    cv.disc(cx, cy, 6, kBlack);
    cv.disc(cx, cy, 5, col);
  }
  // Legend.
  int ly = T + 10;
  const int lx = R + 25;
  for (const auto& [name, c] : series) {
    cv.disc(lx + 6, ly + 6, 6, kBlack);
    cv.disc(lx + 6, ly + 6, 5, c);
    cv.text(lx + 20, ly, name, kBlack, 2);
    ly += 28;
  }
  ly += 10;
  if (bw > 0) {
    cv.line(lx, ly + 6, lx + 14, ly + 6, kRed, 3);
    cv.text(lx + 20, ly, fmt_fixed(bw, 1) + " GB/S", kBlack, 2);
    ly += 28;
  }
  if (peak > 0) {
    cv.line(lx, ly + 6, lx + 14, ly + 6, kDark, 3);
    cv.text(lx + 20, ly, fmt_fixed(peak, 0) + " GFLOP/S", kBlack, 2);
    ly += 28;
  }
  cv.text(lx, ly + 10, "MEASURED IN THIS RUN", kMid, 1);
  if (r.quick) cv.text(lx, ly + 24, "QUICK RUN: WEIGHTS FIT IN CACHE", kMid, 1);
  write_png(path, cv, kPalette);
}

}  // namespace mmkit::tools
