// Fuzzes quantized_matmul: x of rank 0-4 (any dtype, any view), weights from
// quantize in every mode / group size / bits (any view, batch broadcast,
// random codes and scales) or random arrays, both transposes. A success must
// match the float64 reference on x @ w_hat(.T) within the float32
// accumulation bound, with NaN propagated.
#include "fuzz_qmm_common.h"

using namespace mmkit;
using namespace mmkit::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fdp p(data, size);
  pick_threads(p);
  const bool transpose = p.ConsumeBool();
  const Shape wbatch = pick_shape(p, 2, 3);
  const int64_t rows = pick_dim(p, 40);
  const int64_t groups = pick_dim(p, 3);
  bool valid = false;
  QWeights q = make_qweights(p, wbatch, rows, groups, &valid);

  // x: (..., M, K) with K matching the weights most of the time.
  int64_t K = 0;
  if (valid) K = transpose ? groups * q.gs : rows;
  if (!valid || p.ConsumeIntegralInRange<int>(0, 15) == 15) K = pick_dim(p, 130);
  const int xnd = (p.ConsumeIntegralInRange<int>(0, 4) + 2) % 5;
  Shape xs;
  for (int i = 0; i + 2 < xnd; ++i) {
    // batch dims that broadcast against w's (right-aligned), or not
    const int wi = static_cast<int>(wbatch.size()) - (xnd - 2 - i);
    const uint8_t r = p.ConsumeIntegral<uint8_t>();
    xs.push_back(r < 160 && wi >= 0 ? wbatch[wi] : r < 230 ? 1 : r % 4);
  }
  if (xnd >= 2) xs.push_back(pick_dim(p, 9));
  if (xnd >= 1) xs.push_back(K);
  Array x = make_array(p, xs, pick_float_dtype(p), p.ConsumeIntegralInRange<int>(0, 2));

  guarded([&] {
    Array y = quantized_matmul(x, q.w, q.scales, q.biases, transpose, q.gs_arg, q.bits_arg, q.mode);
    q.resolve();
    const Dtype T = q.mode == "affine" ? promote_types(x.dtype(), promote_types(q.scales.dtype(), q.biases->dtype()))
                                       : x.dtype();
    FUZZ_CHECK(y.dtype() == T, "output dtype " + std::string(dtype_name(y.dtype())));
    const int64_t kk = transpose ? q.w.shape(-1) * 32 / q.bits : q.w.shape(-2);
    check_qmm(y, x, q, T, kk, "quantized_matmul",
              [&](const Array& xx, const Array& w, const Array& s, const std::optional<Array>& b) {
                return ref::quantized_matmul(xx, w, s, b, transpose, q.gs, q.bits, q.mode);
              });
  });
  return 0;
}
