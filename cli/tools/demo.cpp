#include "tools/demo.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "mmkit/array.h"
#include "mmkit/error.h"
#include "mmkit/matmul.h"
#include "mmkit/quantize.h"
#include "ref/ref.h"
#include "tools/random.h"
#include "tools/timing.h"
#include "tools/util.h"

namespace mmkit::tools {

namespace {

constexpr const char* kOp = "demo";
// Timed runs cycle through this many fresh random routings so the experts
// come from memory, not from a cache warmed by the previous run.
constexpr int kTimingRoutings = 16;

/// Stacked (E, N, K) quantized expert weights, on the host.
struct Experts {
  Array w, scales;
  std::optional<Array> biases;
  std::optional<Array> biases_on(Device d) const { return biases ? std::optional<Array>(biases->to(d)) : std::nullopt; }
};

void copy_expert(const Array& dst, int64_t e, const Array& src) {
  const Array c = src.contiguous();
  const size_t per = dst.nbytes() / static_cast<size_t>(dst.shape(0));
  if (c.nbytes() != per) throw_error(kOp, "internal: expert slice of ", per, " bytes, quantized ", c.nbytes());
  std::memcpy(static_cast<char*>(dst.raw_data()) + static_cast<size_t>(e) * per, c.raw_data(), per);
}

/// Each expert's (N, K) bfloat16 weights come from their own seed and are
/// quantized one expert at a time, so memory stays at the quantized size.
Experts make_experts(int64_t E, int64_t N, int64_t K, const QuantSpec& q, uint64_t seed,
                     const std::function<void()>& on_expert) {
  Experts ex;
  const Dtype sdt = q.mode == "affine" ? Dtype::bfloat16 : Dtype::uint8;
  ex.w = Array::empty({E, N, K * q.bits / 32}, Dtype::uint32);
  ex.scales = Array::empty({E, N, K / q.group_size}, sdt);
  if (q.has_biases()) ex.biases = Array::empty({E, N, K / q.group_size}, sdt);
  const float sigma = 1.0f / std::sqrt(static_cast<float>(K));  // outputs of order 1
  for (int64_t e = 0; e < E; ++e) {
    const Array wf = random_normal({N, K}, Dtype::bfloat16, sub_seed(seed, static_cast<uint64_t>(e)), sigma);
    const auto qs = quantize(wf, q.group_size, q.bits, q.mode);
    copy_expert(ex.w, e, qs[0]);
    copy_expert(ex.scales, e, qs[1]);
    if (ex.biases) copy_expert(*ex.biases, e, qs[2]);
    if (on_expert) on_expert();
  }
  return ex;
}

struct ErrAcc {
  double max_abs = 0, sse = 0, ssr = 0, ref_max = 0;
  void add(double y, double r) {
    const double d = std::fabs(y - r);
    // NaN must not hide behind max(): report it as an infinite error.
    max_abs = std::isnan(d) ? INFINITY : std::max(max_abs, d);
    sse += d * d;
    ssr += r * r;
    ref_max = std::max(ref_max, std::fabs(r));
  }
  double rel() const { return ssr > 0 ? std::sqrt(sse / ssr) : (sse > 0 ? INFINITY : 0.0); }
};

}  // namespace

DemoResult run_demo(const DemoOptions& o, const DemoProgress& progress) {
  DemoResult res;
  res.preset = find_moe_preset(o.model, kOp);
  const MoePreset& P = res.preset;
  res.quant = resolve_quant_spec(o.mode, o.bits, o.group_size);
  const QuantSpec& q = res.quant;
  if (o.tokens < 1 || o.tokens > (1 << 20)) throw_error(kOp, "--tokens must be in [1, 1048576], got ", o.tokens, ".");
  if (o.min_reps < 1 || o.max_reps < o.min_reps) throw_error(kOp, "repetitions must satisfy 1 <= min <= max.");
  const int64_t E = P.experts, k = P.top_k, H = P.hidden, I = P.expert_width, T = o.tokens;
  if (H % q.group_size || I % q.group_size)
    throw_error(kOp, "group size ", q.group_size, " does not divide the hidden size ", H, " and expert width ", I,
                " of ", P.name, "; pick another --group-size.");
  res.device = resolve_device(o.device, kOp);
  const Device dev = res.device;
  res.device_label = device_label(dev);
  res.tokens = T;
  res.timing_routings = kTimingRoutings;

  const double gu_bytes = static_cast<double>(q.matrix_bytes(2 * I, H));  // one expert
  const double dn_bytes = static_cast<double>(q.matrix_bytes(H, I));
  const double total_q = static_cast<double>(E) * (gu_bytes + dn_bytes);
  const double ram = static_cast<double>(machine_info().ram_bytes);
  if (ram > 0 && total_q > 0.7 * ram)
    throw_error(kOp, P.name, " needs ", fmt_bytes(total_q), " of quantized weights; this machine has ", fmt_bytes(ram),
                " of memory.");

  // ---- setup: weights, router, tokens ---------------------------------------------
  const double t_setup = now_s();
  int64_t done = 0;
  auto tick = [&] {
    ++done;
    if (progress) progress(done, 2 * E, "generating + quantizing experts");
  };
  const Experts gu = make_experts(E, 2 * I, H, q, sub_seed(o.seed, 1), tick);
  const Experts dn = make_experts(E, H, I, q, sub_seed(o.seed, 2), tick);
  const Array router = random_normal({E, H}, Dtype::float32, sub_seed(o.seed, 3), 1.0f / std::sqrt(static_cast<float>(H)));
  const Array x = random_normal({T, H}, Dtype::bfloat16, sub_seed(o.seed, 4), 1.0f);
  res.setup_s = now_s() - t_setup;

  // Router: softmax over the top-k logits of a linear gate (as Mixtral and
  // Qwen3 with normalised top-k probabilities do).
  const std::vector<double> xd = x.to_double_vector();
  const std::vector<double> rd = router.to_double_vector();
  std::vector<int32_t> idx(static_cast<size_t>(T * k));
  std::vector<double> rw(static_cast<size_t>(T * k));
  for (int64_t t = 0; t < T; ++t) {
    std::vector<std::pair<double, int32_t>> logits(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      double s = 0;
      for (int64_t h = 0; h < H; ++h) s += xd[t * H + h] * rd[e * H + h];
      logits[e] = {-s, static_cast<int32_t>(e)};  // ascending sort = descending logit, ties by index
    }
    std::partial_sort(logits.begin(), logits.begin() + k, logits.end());
    double z = 0;
    for (int64_t j = 0; j < k; ++j) z += std::exp(-(logits[j].first - logits[0].first));
    for (int64_t j = 0; j < k; ++j) {
      idx[t * k + j] = logits[j].second;
      rw[t * k + j] = std::exp(-(logits[j].first - logits[0].first)) / z;
    }
  }
  res.distinct_experts = count_distinct(idx);

  // ---- device copies and the checked run ------------------------------------------
  const Array x4 = x.reshape({T, 1, 1, H}).to(dev);
  const Array gw = gu.w.to(dev), gs = gu.scales.to(dev), dw = dn.w.to(dev), ds = dn.scales.to(dev);
  const std::optional<Array> gb = gu.biases_on(dev), db = dn.biases_on(dev);
  const Array idx_dev = Array::from_vector(idx, {T, k}).to(dev);
  std::vector<Array> routings;
  std::vector<int64_t> routing_distinct;
  for (int r = 0; r < kTimingRoutings; ++r) {
    const auto ri = random_routing(T, E, k, sub_seed(o.seed, 100 + static_cast<uint64_t>(r)));
    routings.push_back(Array::from_vector(ri, {T, k}).to(dev));
    routing_distinct.push_back(count_distinct(ri));
  }
  auto gate_up = [&](const Array& ri) {
    return gather_qmm(x4, gw, gs, gb, std::nullopt, ri, true, q.group_size, q.bits, q.mode);
  };
  const Array gu_out = gate_up(idx_dev).to(Device::cpu());  // (T, k, 1, 2I)
  const std::vector<double> guv = gu_out.to_double_vector();

  // SwiGLU on the host (it is not what this demo measures), rounded to bfloat16
  // as the next layer's input would be.
  std::vector<bfloat16_t> hv(static_cast<size_t>(T * k * I));
  for (int64_t p = 0; p < T * k; ++p)
    for (int64_t i = 0; i < I; ++i) {
      const float g = static_cast<float>(guv[p * 2 * I + i]), u = static_cast<float>(guv[p * 2 * I + I + i]);
      hv[p * I + i] = bfloat16_t(g / (1.0f + std::exp(-g)) * u);
    }
  const Array h = Array::from_vector(hv, {T, k, 1, I}).to(dev);
  auto down = [&](const Array& ri) {
    return gather_qmm(h, dw, ds, db, std::nullopt, ri, true, q.group_size, q.bits, q.mode);
  };
  const Array dn_out = down(idx_dev).to(Device::cpu());  // (T, k, 1, H)
  const std::vector<double> dnv = dn_out.to_double_vector();
  std::vector<double> y(static_cast<size_t>(T * H), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t hh = 0; hh < H; ++hh)
        y[t * H + hh] += static_cast<double>(static_cast<float>(rw[t * k + j])) * dnv[(t * k + j) * H + hh];
  for (auto& v : y) v = static_cast<double>(static_cast<float>(v));  // the layer output is float32

  // ---- float64 reference on the dequantized weights for the checked tokens ----------
  const int64_t C = o.check_tokens <= 0 ? T : std::min<int64_t>(o.check_tokens, T);
  res.checked_tokens = C;
  const int64_t npairs = C * k;
  std::vector<int32_t> experts_checked(idx.begin(), idx.begin() + npairs);
  std::sort(experts_checked.begin(), experts_checked.end());
  experts_checked.erase(std::unique(experts_checked.begin(), experts_checked.end()), experts_checked.end());
  const int64_t nex = static_cast<int64_t>(experts_checked.size());
  auto slice = [](const std::optional<Array>& a, int64_t e) {
    return a ? std::optional<Array>(a->index(0, e)) : std::nullopt;
  };
  std::vector<double> ref_gu(static_cast<size_t>(npairs * 2 * I));
#pragma omp parallel for schedule(dynamic)
  for (int64_t n = 0; n < nex; ++n) {
    const int32_t e = experts_checked[n];
    const ref::Tensor wd = ref::dequantize(gu.w.index(0, e), gu.scales.index(0, e), slice(gu.biases, e),
                                           q.group_size, q.bits, q.mode);
    for (int64_t p = 0; p < npairs; ++p) {
      if (idx[p] != e) continue;
      const double* xt = xd.data() + (p / k) * H;
      for (int64_t r = 0; r < 2 * I; ++r) {
        double s = 0;
        for (int64_t c = 0; c < H; ++c) s += wd.v[r * H + c] * xt[c];
        ref_gu[p * 2 * I + r] = s;
      }
    }
  }
  ErrAcc e_gu;
  for (int64_t p = 0; p < npairs; ++p)
    for (int64_t r = 0; r < 2 * I; ++r) e_gu.add(guv[p * 2 * I + r], ref_gu[p * 2 * I + r]);
  std::vector<double> h64(static_cast<size_t>(npairs * I));
  for (int64_t p = 0; p < npairs; ++p)
    for (int64_t i = 0; i < I; ++i) {
      const double g = ref_gu[p * 2 * I + i], u = ref_gu[p * 2 * I + I + i];
      h64[p * I + i] = g / (1.0 + std::exp(-g)) * u;
    }
  std::vector<double> ref_dn_k(static_cast<size_t>(npairs * H)), ref_dn_64(static_cast<size_t>(npairs * H));
#pragma omp parallel for schedule(dynamic)
  for (int64_t n = 0; n < nex; ++n) {
    const int32_t e = experts_checked[n];
    const ref::Tensor wd = ref::dequantize(dn.w.index(0, e), dn.scales.index(0, e), slice(dn.biases, e),
                                           q.group_size, q.bits, q.mode);
    for (int64_t p = 0; p < npairs; ++p) {
      if (idx[p] != e) continue;
      for (int64_t r = 0; r < H; ++r) {
        double sk = 0, s64 = 0;
        for (int64_t c = 0; c < I; ++c) {
          sk += wd.v[r * I + c] * static_cast<double>(static_cast<float>(hv[p * I + c]));
          s64 += wd.v[r * I + c] * h64[p * I + c];
        }
        ref_dn_k[p * H + r] = sk;
        ref_dn_64[p * H + r] = s64;
      }
    }
  }
  ErrAcc e_dn, e_layer;
  for (int64_t p = 0; p < npairs; ++p)
    for (int64_t r = 0; r < H; ++r) e_dn.add(dnv[p * H + r], ref_dn_k[p * H + r]);
  for (int64_t t = 0; t < C; ++t)
    for (int64_t hh = 0; hh < H; ++hh) {
      double r = 0;
      for (int64_t j = 0; j < k; ++j) r += rw[t * k + j] * ref_dn_64[(t * k + j) * H + hh];
      e_layer.add(y[t * H + hh], r);
    }

  // ---- timing -------------------------------------------------------------------------
  if (o.measure_roofline) res.roofline = measure_roofline(dev, o.quick_roofline);
  const double act = 2.0;  // bfloat16 activations
  const double gu_flops = 2.0 * T * k * 2 * I * H, dn_flops = 2.0 * T * k * H * I;
  auto gu_moved = [&](int r) { return routing_distinct[r] * gu_bytes + act * (T * H + T * k * 2 * I); };
  auto dn_moved = [&](int r) { return routing_distinct[r] * dn_bytes + act * (T * k * I + T * k * H); };
  const TimingPolicy pol{o.time_budget_s, o.min_reps, o.max_reps};
  const TimingSummary tg = summarize(
      time_calls(dev, pol, [&](int i) { return gate_up(routings[i % kTimingRoutings]); },
                 [&](int i) { return gu_moved(i % kTimingRoutings); }),
      gu_flops, res.roofline);
  const TimingSummary td = summarize(
      time_calls(dev, pol, [&](int i) { return down(routings[i % kTimingRoutings]); },
                 [&](int i) { return dn_moved(i % kTimingRoutings); }),
      dn_flops, res.roofline);

  const std::string devname = dev.is_cpu() ? "cpu" : res.device_label;
  auto make_row = [&](const std::string& op, const std::string& shape, const TimingSummary& tm, const ErrAcc& err,
                      double wbytes, double bf16) {
    DemoRow row;
    row.op = op;
    row.shape = shape;
    row.device = devname;
    row.reps = tm.samples;
    row.us_median = tm.us_median;
    row.us_min = tm.us_min;
    row.gbps = tm.gbps;
    row.pct_roofline = tm.pct_roofline;
    row.max_abs_err = err.max_abs;
    row.rel_err = err.rel();
    row.ref_max_abs = err.ref_max;
    row.weight_bytes = wbytes;
    row.bf16_bytes = bf16;
    return row;
  };
  const std::string tok = "T=" + std::to_string(T) + " top-" + std::to_string(k) + " of " + std::to_string(E) + " x ";
  const double bf16_gu = 2.0 * E * 2 * I * H, bf16_dn = 2.0 * E * H * I;
  res.rows.push_back(make_row("gather_qmm gate+up", tok + "(" + std::to_string(2 * I) + "x" + std::to_string(H) + ")",
                              tg, e_gu, E * gu_bytes, bf16_gu));
  res.rows.push_back(make_row("gather_qmm down", tok + "(" + std::to_string(H) + "x" + std::to_string(I) + ")", td,
                              e_dn, E * dn_bytes, bf16_dn));
  // The layer: both projections back to back (SwiGLU and the weighted sum run
  // on the host and are not timed), checked end to end against float64.
  DemoRow layer = make_row("moe layer", "T=" + std::to_string(T) + " H=" + std::to_string(H), tg, e_layer,
                           E * (gu_bytes + dn_bytes), bf16_gu + bf16_dn);
  // Sum of the two medians; bytes and the roofline time are the medians' sums too.
  const double tsum = (tg.us_median + td.us_median) * 1e-6;
  layer.reps = std::min(tg.samples, td.samples);
  layer.us_median = tsum * 1e6;
  layer.us_min = tg.us_min + td.us_min;
  layer.gbps = (tg.bytes + td.bytes) / tsum / 1e9;
  const double tmin = res.roofline.t_min_s(tg.bytes, gu_flops) + res.roofline.t_min_s(td.bytes, dn_flops);
  layer.pct_roofline = tmin > 0 ? 100.0 * tmin / tsum : 0.0;
  res.rows.push_back(layer);
  return res;
}

std::string format_demo(const DemoResult& r) {
  const MoePreset& P = r.preset;
  std::string s;
  s += "mmkit demo: " + P.display + " MoE layer: " + std::to_string(P.experts) + " experts, top-" +
       std::to_string(P.top_k) + ", hidden " + std::to_string(P.hidden) + ", expert width " +
       std::to_string(P.expert_width) + " (gate+up, SwiGLU, down)\n";
  s += "  " + std::to_string(r.tokens) + " token" + (r.tokens == 1 ? "" : "s") + " routed to " +
       std::to_string(r.distinct_experts) + " distinct experts; weights " + r.quant.str() +
       (r.quant.mode == "affine" ? " (bfloat16 scales + biases)" : "") + ", activations bfloat16\n";
  s += "  device " + r.device_label + "; roofline: ";
  const Roofline& rf = r.roofline;
  if (rf.bandwidth_gbps <= 0 && rf.peak_gflops <= 0) {
    s += "not measured";
    if (!rf.bandwidth_source.empty()) s += " (" + rf.bandwidth_source + ")";
    s += "\n\n";
  } else {
    s += rf.bandwidth_gbps > 0 ? fmt_fixed(rf.bandwidth_gbps, 1) + " GB/s" : std::string("bandwidth n/a");
    s += rf.peak_gflops > 0 ? ", " + fmt_fixed(rf.peak_gflops, 0) + " GFLOP/s" : std::string(", peak n/a");
    s += " (measured in this run)\n\n";
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& row : r.rows) {
    const double saved = row.bf16_bytes > 0 ? 1.0 - row.weight_bytes / row.bf16_bytes : 0.0;
    rows.push_back({row.op, row.shape, row.device, fmt_time_us(row.us_median), fmt_fixed(row.gbps, row.gbps < 10 ? 2 : 1),
                    row.pct_roofline > 0 ? fmt_fixed(row.pct_roofline, 1) + "%" : "n/a", fmt_sci(row.max_abs_err),
                    fmt_sci(row.rel_err), fmt_fixed(100.0 * saved, 1) + "% (" + fmt_fixed(row.bf16_bytes / row.weight_bytes, 2) + "x)"});
  }
  s += format_table({"op", "shape", "device", "time", "GB/s", "% roofline", "max abs err", "rel err", "memory saved vs bf16"},
                    rows, {false, false, false, true, true, true, true, true, true});
  s += "\n";
  s += "time: median of " + std::to_string(r.rows[0].reps) + " samples" +
       (r.device.is_gpu() ? " (each the mean of a group of back-to-back calls, one synchronize per group)" : "") +
       ";\n  every call takes fresh random expert choices (" + std::to_string(r.timing_routings) +
       " routings) so the weights come from memory, not cache.\n"
       "GB/s: distinct experts' weights + activations per call; % roofline = max(bytes / bandwidth, flops / peak)\n"
       "  / time. SwiGLU and the weighted sum run on the host, untimed.\n";
  s += "error: " + std::to_string(r.checked_tokens) + " of " + std::to_string(r.tokens) +
       " tokens (every output) against float64 on the dequantized weights; rel err = ||y - ref|| / ||ref||.\n"
       "  The layer row compares the whole layer (bfloat16 intermediates) with an all-float64 chain.\n";
  s += "setup: " + fmt_fixed(r.setup_s, 1) + " s to generate and quantize " + fmt_bytes(r.rows[2].bf16_bytes) +
       " of bfloat16 expert weights into " + fmt_bytes(r.rows[2].weight_bytes) + ".\n";
  return s;
}

}  // namespace mmkit::tools
