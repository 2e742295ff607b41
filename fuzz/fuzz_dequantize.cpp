// Fuzzes dequantize: random packed words, scales and biases of any dtype and
// shape (views included), modes, group sizes, bits, global scales and output
// dtypes. A success must match the float64 decoding of SPEC 2.4 element by
// element within the roundings the op is allowed (two in the scale dtype and
// one in the output dtype for affine; the output dtype for the fp modes).
#include "fuzz_common.h"

using namespace mmkit;
using namespace mmkit::fuzz;

namespace {

unsigned code_at(const uint32_t* row, int64_t j, int bits) {
  unsigned c = 0;
  for (int i = 0; i < bits; ++i) {
    const int64_t t = j * bits + i;
    c |= ((row[t / 32] >> (t % 32)) & 1u) << i;
  }
  return c;
}
double e2m1(unsigned c) {
  static const double mag[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  return (c & 8) ? -mag[c & 7] : mag[c & 7];
}
double e4m3(unsigned b) {
  const unsigned e = (b >> 3) & 15, m = b & 7;
  const double v = e == 0 ? m * std::ldexp(1.0, -9) : (1.0 + m / 8.0) * std::ldexp(1.0, static_cast<int>(e) - 7);
  return (b & 0x80) ? -v : v;
}

void check(const Array& y, const Array& w, const Array& scales, const std::optional<Array>& biases, int gs, int bits,
           const std::string& mode, const std::optional<Array>& gscale, Dtype sdt) {
  const Array wc = w.contiguous();
  const ref::Tensor st = ref::to_tensor(scales);
  ref::Tensor bt;
  if (biases) bt = ref::to_tensor(*biases);
  const std::vector<double> v = y.to_double_vector();
  const int64_t words = w.shape(-1), cols = words * 32 / bits, rows = w.size() / words, groups = cols / gs;
  const Dtype odt = y.dtype();
  const double uo = unit_roundoff(odt), us = unit_roundoff(sdt);
  const double g = gscale ? gscale->item_double() / 2688.0 : 1.0;
  const uint32_t* q = wc.data<uint32_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const unsigned c = code_at(q + r * words, j, bits);
      const size_t gi = static_cast<size_t>(r * groups + j / gs);
      const double got = v[static_cast<size_t>(r * cols + j)];
      double expect, tol;
      if (mode == "affine") {
        const double s = st.v[gi], b = bt.v[gi];
        expect = s * c + b;
        // c * s and + b are rounded in the scale dtype, then cast to the output.
        if (!(std::fabs(s * c) < max_finite(sdt) && std::fabs(expect) < max_finite(sdt) &&
              std::fabs(expect) < max_finite(odt) && std::isfinite(b)))
          continue;
        tol = 2 * us * (std::fabs(s * c) + std::fabs(b)) + uo * std::fabs(expect) + tiny(sdt) * 2 + tiny(odt);
      } else {
        const unsigned sb = static_cast<unsigned>(st.v[gi]);
        const double e = mode == "mxfp8" ? e4m3(c) : e2m1(c);
        double s = mode == "nvfp4" ? e4m3(sb) : (sb == 255 ? INFINITY : std::ldexp(1.0, static_cast<int>(sb) - 127));
        s *= g;
        expect = e * s;
        // The scale is formed in the output dtype (float32 with a global
        // scale): out of its range it flushes to 0 or overflows.
        const Dtype sd = gscale ? Dtype::float32 : odt;
        if (!(std::fabs(s) < max_finite(sd) && std::fabs(s) >= std::ldexp(1.0, sd == Dtype::float16 ? -14 : -126) &&
              std::fabs(expect) < max_finite(odt)))
          continue;
        tol = 3 * std::max(uo, unit_roundoff(sd)) * std::fabs(expect) + tiny(odt);
      }
      if (!(std::fabs(got - expect) <= tol))
        fail("dequantize " + mode + " b" + std::to_string(bits) + " g" + std::to_string(gs) + ": element (" +
             std::to_string(r) + "," + std::to_string(j) + ") is " + std::to_string(got) + ", expected " +
             std::to_string(expect) + " (tolerance " + std::to_string(tol) + ")");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fdp p(data, size);
  pick_threads(p);
  const std::string mode = pick_mode(p);
  const std::optional<int> gs = pick_param(p, {32, 64, 128, 16, 32});
  const std::optional<int> bits = pick_param(p, {2, 3, 4, 5, 6, 8});
  const auto defaults = [&]() -> std::pair<int, int> {
    try {
      return quantization_defaults(mode);
    } catch (const Error&) {
      return {64, 4};
    }
  }();
  const int g = gs.value_or(defaults.first), b = bits.value_or(defaults.second);
  const bool affine = mode == "affine";

  // Mostly consistent shapes (so the kernels run), sometimes anything.
  Shape lead = pick_shape(p, 3, 3);
  const bool consistent = p.ConsumeIntegralInRange<int>(0, 5) != 5 && g > 0 && g <= 128 && b > 0 && b <= 8;
  const int64_t ngroups = p.ConsumeIntegralInRange<int64_t>(0, 3);
  Shape wshape = lead, sshape = lead;
  if (consistent) {
    wshape.push_back(ngroups * g * b / 32);
    sshape.push_back(ngroups);
  } else {
    wshape.push_back(pick_dim(p, 24));
    sshape = pick_shape(p, 4, 4);
  }
  const Dtype wdt = p.ConsumeIntegralInRange<int>(0, 15) == 15 ? pick_any_dtype(p) : Dtype::uint32;
  Dtype sdt = affine ? pick_float_dtype(p) : Dtype::uint8;
  if (p.ConsumeIntegralInRange<int>(0, 15) == 15) sdt = pick_any_dtype(p);
  const bool with_biases = affine ? p.ConsumeIntegralInRange<int>(0, 15) != 15 : p.ConsumeIntegralInRange<int>(0, 15) == 15;
  const Dtype bdt = p.ConsumeIntegralInRange<int>(0, 7) == 7 ? pick_float_dtype(p) : sdt;
  std::optional<Dtype> out_dt;
  if (p.ConsumeBool()) out_dt = pick_float_dtype(p);
  std::optional<Array> gscale;
  if (p.ConsumeIntegralInRange<int>(0, 5) == 5) gscale = make_array(p, pick_shape(p, 2, 2), pick_float_dtype(p), 1);

  Array w = make_array(p, wshape, wdt, 2);
  Array scales = make_array(p, sshape, sdt, affine ? 1 : 2);
  std::optional<Array> biases;
  if (with_biases) biases = make_array(p, sshape, bdt, 1);

  guarded([&] {
    Array y = dequantize(w, scales, biases, gs, bits, mode, gscale, out_dt);
    Shape os = wshape;
    os.back() = wshape.back() * 32 / b;
    FUZZ_CHECK(y.shape() == os, "output shape " + shape_str(y.shape()));
    const Dtype sd = affine ? promote_types(sdt, bdt) : Dtype::uint8;
    FUZZ_CHECK(y.dtype() == out_dt.value_or(affine ? sd : Dtype::bfloat16), "output dtype");
    // Views dequantize exactly like contiguous copies.
    Array yc = dequantize(w.copy(), scales.copy(), biases ? std::optional<Array>(biases->copy()) : std::nullopt, gs,
                          bits, mode, gscale, out_dt);
    FUZZ_CHECK(std::memcmp(y.contiguous().raw_data(), yc.contiguous().raw_data(), y.nbytes()) == 0,
               "view and contiguous copy dequantize differently");
    if (y.size() == 0) return;
    // The math uses the scales/biases promoted to one dtype.
    check(y, w, affine ? scales.astype(sd) : scales, biases ? std::optional<Array>(biases->astype(sd)) : std::nullopt, g,
          b, mode, gscale, affine ? sd : Dtype::float32);
  });
  return 0;
}
