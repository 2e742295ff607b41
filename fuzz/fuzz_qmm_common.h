// Quantized weights for the quantized_matmul / gather_qmm fuzzers: mostly
// produced by quantize (valid, in any storage layout), sometimes with random
// codes and scales (NaN / Inf / huge decoded values), sometimes with shapes
// and dtypes that are plainly wrong (validation paths).
#pragma once

#include "fuzz_common.h"

namespace mmkit::fuzz {

struct QWeights {
  std::string mode;
  std::optional<int> gs_arg, bits_arg;  // what the call passes
  int gs = 64, bits = 4;               // what it resolves to
  Array w, scales;
  std::optional<Array> biases;
  /// After a successful call: the group size and bits the op resolved.
  void resolve() {
    const auto d = quantization_defaults(mode);
    gs = gs_arg.value_or(d.first);
    bits = bits_arg.value_or(d.second);
  }
};

/// `batch` + (rows, cols) weights quantized along cols.
inline QWeights make_qweights(Fdp& p, const Shape& batch, int64_t rows, int64_t cols_groups, bool* valid) {
  QWeights q;
  *valid = p.ConsumeIntegralInRange<int>(0, 9) != 9;
  if (*valid) {
    static const char* kModes[] = {"affine", "affine", "mxfp4", "mxfp8", "nvfp4"};
    q.mode = kModes[p.ConsumeIntegralInRange<int>(0, 4)];
    if (q.mode == "affine") {
      static const int kGs[] = {32, 64, 128};
      static const int kBits[] = {2, 3, 4, 5, 6, 8};
      q.gs = kGs[p.ConsumeIntegralInRange<int>(0, 2)];
      q.bits = kBits[p.ConsumeIntegralInRange<int>(0, 5)];
    } else {
      const auto d = quantization_defaults(q.mode);
      q.gs = d.first;
      q.bits = d.second;
    }
    // Sometimes rely on the defaults.
    q.gs_arg = q.gs;
    q.bits_arg = q.bits;
    if (p.ConsumeBool() && quantization_defaults(q.mode) == std::make_pair(q.gs, q.bits)) {
      q.gs_arg.reset();
      q.bits_arg.reset();
    }
    Shape ws = batch;
    ws.push_back(rows);
    ws.push_back(cols_groups * q.gs);
    const Dtype dt = pick_float_dtype(p);
    const Array wf = make_array(p, ws, is_floating(dt) ? dt : Dtype::float32, p.ConsumeIntegralInRange<int>(0, 1));
    std::vector<Array> r = quantize(wf, q.gs, q.bits, q.mode);
    q.w = r[0];
    q.scales = r[1];
    if (q.mode == "affine") q.biases = r[2];
    const uint8_t corrupt = p.ConsumeIntegral<uint8_t>();
    if (corrupt < 24) {
      // Random codes and scales of the right shapes.
      fill(p, q.w, 2);
      fill(p, q.scales, 2);
      if (q.biases) fill(p, *q.biases, p.ConsumeIntegralInRange<int>(0, 2));
    } else if (corrupt < 48 && q.biases) {
      // Scales and biases of another float dtype (promotion).
      q.scales = q.scales.astype(pick_float_dtype(p));
      q.biases = q.biases->astype(pick_float_dtype(p));
    }
    q.w = restride(p, q.w);
    q.scales = restride(p, q.scales);
    if (q.biases) q.biases = restride(p, *q.biases);
    // A batch of one broadcast over several entries is still a valid weight.
    if (!batch.empty() && shape_size(batch) > 0 && p.ConsumeIntegralInRange<int>(0, 7) == 0) {
      Shape b1(batch.size(), 1), bb = batch;
      bb[0] = p.ConsumeIntegralInRange<int64_t>(1, 3);
      auto bc = [&](const Array& a) {
        Shape s1 = b1, sb = bb;
        s1.insert(s1.end(), a.shape().end() - 2, a.shape().end());
        sb.insert(sb.end(), a.shape().end() - 2, a.shape().end());
        Array first = a;
        for (size_t i = 0; i < batch.size(); ++i) first = first.slice(static_cast<int>(i), 0, 1);
        return first.broadcast_to(sb);
      };
      q.w = bc(q.w);
      q.scales = bc(q.scales);
      if (q.biases) q.biases = bc(*q.biases);
    }
    return q;
  }
  // Anything goes: random shapes, dtypes, parameters.
  q.mode = pick_mode(p);
  q.gs_arg = pick_param(p, {32, 64, 128, 16});
  q.bits_arg = pick_param(p, {2, 3, 4, 5, 6, 8});
  q.w = make_array(p, pick_shape(p, 4, 6), p.ConsumeIntegralInRange<int>(0, 3) ? Dtype::uint32 : pick_any_dtype(p), 2);
  q.scales = make_array(p, pick_shape(p, 4, 4), pick_any_dtype(p), 2);
  if (p.ConsumeBool()) q.biases = make_array(p, pick_shape(p, 4, 4), pick_any_dtype(p), 1);
  return q;
}

/// Float64 reference and its error bound for x @ w_hat(.T): the reference on
/// x cast to T, the bound on |x| and weights of magnitude >= |w_hat|.
template <typename RefFn>
void check_qmm(const Array& y, const Array& x, const QWeights& q, Dtype T, int64_t K, const char* op, RefFn ref_fn) {
  const bool affine = q.mode == "affine";
  const Array xt = x.astype(T);
  const Array st = affine ? q.scales.astype(T) : q.scales;
  const std::optional<Array> bt = affine ? std::optional<Array>(q.biases->astype(T)) : std::nullopt;
  const ref::Tensor r = ref_fn(xt, q.w, st, bt);
  const AbsQuantized aq = abs_quantized(q.w, st, bt, q.mode);
  // Decoded weights beyond float32 range overflow in the kernel, not in float64.
  const ref::Tensor wmax = ref::dequantize(aq.w, aq.scales, aq.biases, q.gs, q.bits, q.mode);
  if (wmax.max_abs() > 1e36) {
    const std::vector<double> v = y.to_double_vector();
    for (size_t i = 0; i < r.v.size(); ++i)
      if (std::isnan(r.v[i]) && !std::isnan(v[i])) {
        if (std::getenv("MMKIT_FUZZ_DEBUG")) {
          std::fprintf(stderr, "element %zu: got %g, reference NaN; x dtype %s shape %s, scales %s\n", i, v[i],
                       dtype_name(xt.dtype()), shape_str(xt.shape()).c_str(), shape_str(st.shape()).c_str());
          const std::vector<double> xv = xt.to_double_vector(), sv = st.astype(Dtype::float32).to_double_vector();
          for (double e : xv) std::fprintf(stderr, "%g ", e);
          std::fprintf(stderr, "\nscales: ");
          for (double e : sv) std::fprintf(stderr, "%g ", e);
          std::fprintf(stderr, "\n");
        }
        fail(std::string(op) + ": NaN not propagated");
      }
    return;
  }
  check_matmul_result(y, r, [&] { return ref_fn(abs_array(xt), aq.w, aq.scales, aq.biases); }, K, op);
}

}  // namespace mmkit::fuzz
