// Fuzzes to_fp8 / from_fp8 on any dtype, shape and view. to_fp8 must equal
// a brute-force encoder (nearest of the 127 non-negative E4M3 codes up to
// 0x7E, ties to the even code, |x| >= 448 / Inf / NaN saturating to 0x7E,
// sign OR-ed in, SPEC 0.4); from_fp8 must equal the exact decoded value.
#include "fuzz_common.h"

using namespace mmkit;
using namespace mmkit::fuzz;

namespace {

double decode(unsigned b) {
  const unsigned e = (b >> 3) & 15, m = b & 7;
  const double v = e == 0 ? m * std::ldexp(1.0, -9) : (1.0 + m / 8.0) * std::ldexp(1.0, static_cast<int>(e) - 7);
  return (b & 0x80) ? -v : v;
}

uint8_t encode_brute(float f) {
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const double a = std::fabs(static_cast<double>(f));
  if (!(a < 448.0)) return 0x7E | sign;  // NaN fails the comparison too
  unsigned best = 0;
  double bd = a;
  for (unsigned c = 1; c <= 0x7E; ++c) {
    const double d = std::fabs(decode(c) - a);
    if (d < bd || (d == bd && (c & 1) == 0)) {
      bd = d;
      best = c;
    }
  }
  return static_cast<uint8_t>(best | sign);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fdp p(data, size);
  pick_threads(p);
  const bool to = p.ConsumeBool();
  const Shape shape = pick_shape(p, 3, 12);
  const Dtype in_dt = to ? pick_float_dtype(p) : (p.ConsumeIntegralInRange<int>(0, 7) ? Dtype::uint8 : pick_any_dtype(p));
  const Dtype out_dt = pick_float_dtype(p);
  Array x = make_array(p, shape, in_dt, 2);
  guarded([&] {
    if (to) {
      Array y = to_fp8(x);
      FUZZ_CHECK(y.shape() == shape && y.dtype() == Dtype::uint8, "to_fp8 shape/dtype");
      const Array xf = x.astype(Dtype::float32);
      const float* xv = xf.data<float>();
      const uint8_t* yv = y.contiguous().data<uint8_t>();
      for (int64_t i = 0; i < y.size(); ++i) {
        const uint8_t e = encode_brute(xv[i]);
        if (yv[i] != e)
          fail("to_fp8(" + std::to_string(xv[i]) + ") = " + std::to_string(yv[i]) + ", expected " +
               std::to_string(e));
      }
    } else {
      Array y = from_fp8(x, out_dt);
      FUZZ_CHECK(y.shape() == shape && y.dtype() == out_dt, "from_fp8 shape/dtype");
      const Array xc = x.contiguous();
      const uint8_t* xv = xc.data<uint8_t>();
      const std::vector<double> yv = y.to_double_vector();
      for (int64_t i = 0; i < y.size(); ++i) {
        // Every E4M3 value is exact in float16, bfloat16 and float32.
        if (yv[i] != decode(xv[i]) || std::signbit(yv[i]) != ((xv[i] & 0x80) != 0))
          fail("from_fp8(" + std::to_string(xv[i]) + ") = " + std::to_string(yv[i]) + ", expected " +
               std::to_string(decode(xv[i])));
      }
    }
  });
  return 0;
}
