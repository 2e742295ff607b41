// Fuzzes gather_qmm: quantized weights as in fuzz_quantized_matmul, x with
// its own batch, lhs/rhs indices of any integer dtype (and some that are
// not), broadcasting or not, in range or negative / just past the end / huge,
// sorted_indices set only when true (and then also on unsorted indices, where
// only the absence of crashes is checked). A success with an out-of-range
// index is a finding (SPEC decision 3); otherwise the result must match the
// float64 reference.
#include "fuzz_qmm_common.h"

using namespace mmkit;
using namespace mmkit::fuzz;

namespace {
bool non_decreasing(const Array& idx) {
  if (!is_integral(idx.dtype())) return false;
  Array c = idx.astype(Dtype::int64);
  const int64_t* v = c.data<int64_t>();
  for (int64_t i = 1; i < c.size(); ++i)
    if (v[i] < v[i - 1]) return false;
  return true;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fdp p(data, size);
  pick_threads(p);
  const bool transpose = p.ConsumeBool();
  const Shape wbatch = pick_shape(p, 2, 4);
  const int64_t rows = pick_dim(p, 24);
  const int64_t groups = pick_dim(p, 2);
  bool valid = false;
  QWeights q = make_qweights(p, wbatch, rows, groups, &valid);

  int64_t K = valid ? (transpose ? groups * q.gs : rows) : pick_dim(p, 130);
  if (p.ConsumeIntegralInRange<int>(0, 15) == 15) K = pick_dim(p, 130);
  Shape xs = pick_shape(p, 2, 4);
  const int64_t nx = shape_size(xs);
  if (p.ConsumeIntegralInRange<int>(0, 15) != 15) xs.push_back(pick_dim(p, 6));  // M
  xs.push_back(K);
  Array x = make_array(p, xs, pick_float_dtype(p), p.ConsumeIntegralInRange<int>(0, 2));

  const int64_t nw = valid ? shape_size(q.w.shape()) / std::max<int64_t>(1, q.w.shape(-1) * q.w.shape(-2)) : 4;
  std::optional<Array> lhs, rhs;
  const int which = p.ConsumeIntegralInRange<int>(0, 3);  // 0 none, 1 lhs, 2 rhs, 3 both
  Shape ishape = pick_shape(p, 2, 5);
  if (which & 1) lhs = make_indices(p, p.ConsumeIntegralInRange<int>(0, 7) ? ishape : pick_shape(p, 2, 5), nx);
  if (which & 2) rhs = make_indices(p, p.ConsumeIntegralInRange<int>(0, 7) ? ishape : pick_shape(p, 2, 5), nw);
  const bool claim_sorted = p.ConsumeBool();
  const bool sorted_true = claim_sorted && rhs && !lhs && non_decreasing(*rhs);

  guarded([&] {
    Array y = gather_qmm(x, q.w, q.scales, q.biases, lhs, rhs, transpose, q.gs_arg, q.bits_arg, q.mode, claim_sorted);
    q.resolve();
    if (lhs)
      FUZZ_CHECK(indices_in_range(*lhs, shape_size(Shape(x.shape().begin(), x.shape().end() - 2))),
                 "gather_qmm accepted an out-of-range lhs index");
    if (rhs)
      FUZZ_CHECK(indices_in_range(*rhs, shape_size(Shape(q.w.shape().begin(), q.w.shape().end() - 2))),
                 "gather_qmm accepted an out-of-range rhs index");
    if (claim_sorted && !sorted_true && rhs && !lhs) return;  // false claim: no crash is all we ask
    const Dtype T = q.mode == "affine" ? promote_types(x.dtype(), promote_types(q.scales.dtype(), q.biases->dtype()))
                                       : x.dtype();
    FUZZ_CHECK(y.dtype() == T, "output dtype");
    const int64_t kk = transpose ? q.w.shape(-1) * 32 / q.bits : q.w.shape(-2);
    check_qmm(y, x, q, T, kk, "gather_qmm",
              [&](const Array& xx, const Array& w, const Array& s, const std::optional<Array>& b) {
                return ref::gather_qmm(xx, w, s, b, lhs, rhs, transpose, q.gs, q.bits, q.mode);
              });
  });
  return 0;
}
