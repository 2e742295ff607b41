// Fuzzes gather_mm (and through it matmul): a and b of rank 0-4 in any dtype
// and view (transposed b included, which the front end takes K-major without
// a copy), batch dims that broadcast or not, lhs/rhs indices as in
// fuzz_gather_qmm. A success with an out-of-range index is a finding;
// otherwise the result must match the float64 reference on a and b cast to
// the promoted dtype, within the float32 accumulation bound.
#include "fuzz_common.h"

using namespace mmkit;
using namespace mmkit::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fdp p(data, size);
  pick_threads(p);
  const int64_t M = pick_dim(p, 20), N = pick_dim(p, 20), K = pick_dim(p, 70);
  Shape as = pick_shape(p, 2, 4), bs = pick_shape(p, 2, 4);
  const int and_ = p.ConsumeIntegralInRange<int>(0, 7), bnd = p.ConsumeIntegralInRange<int>(0, 7);
  // rank 0 and 1 operands now and then
  if (and_ == 0) as.clear();
  else {
    as.push_back(M);
  }
  if (and_ != 1) as.push_back(K);
  if (bnd == 0) bs.clear();
  else {
    bs.push_back(p.ConsumeIntegralInRange<int>(0, 15) ? K : pick_dim(p, 70));
  }
  if (bnd != 1) bs.push_back(N);
  Array a = make_array(p, as, pick_float_dtype(p), p.ConsumeIntegralInRange<int>(0, 2));
  Array b = make_array(p, bs, pick_float_dtype(p), p.ConsumeIntegralInRange<int>(0, 2));
  const auto batch_size = [](const Array& t) {
    return t.ndim() >= 2 ? shape_size(Shape(t.shape().begin(), t.shape().end() - 2)) : 1;
  };
  std::optional<Array> lhs, rhs;
  const int which = p.ConsumeIntegralInRange<int>(0, 3);
  const Shape ishape = pick_shape(p, 2, 5);
  if (which & 1) lhs = make_indices(p, p.ConsumeIntegralInRange<int>(0, 7) ? ishape : pick_shape(p, 2, 5), batch_size(a));
  if (which & 2) rhs = make_indices(p, p.ConsumeIntegralInRange<int>(0, 7) ? ishape : pick_shape(p, 2, 5), batch_size(b));
  const bool sorted = p.ConsumeBool();

  guarded([&] {
    Array y = gather_mm(a, b, lhs, rhs, sorted);
    if (lhs) FUZZ_CHECK(indices_in_range(*lhs, batch_size(a)), "gather_mm accepted an out-of-range lhs index");
    if (rhs) FUZZ_CHECK(indices_in_range(*rhs, batch_size(b)), "gather_mm accepted an out-of-range rhs index");
    const Dtype T = promote_types(a.dtype(), b.dtype());
    FUZZ_CHECK(y.dtype() == T, "output dtype");
    const Array at = a.astype(T), bt = b.astype(T);
    const int64_t kk = a.shape(-1);
    check_matmul_result(
        y, ref::gather_mm(at, bt, lhs, rhs), [&] { return ref::gather_mm(abs_array(at), abs_array(bt), lhs, rhs); }, kk,
        "gather_mm");
  });
  return 0;
}
