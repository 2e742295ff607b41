// Fuzzes block_masked_mm: a and b of rank 0-4 in any dtype and view, block
// sizes 32 / 64 / others, out / lhs / rhs masks that are bool or float (any
// float dtype, fractional, NaN) or neither, of broadcastable or wrong shapes,
// and data with NaN / Inf. A success must match the float64 reference: float
// masks multiply (NaN * 0 stays NaN), bool false blocks are zero.
#include "fuzz_common.h"

using namespace mmkit;
using namespace mmkit::fuzz;

namespace {
std::optional<Array> make_mask(Fdp& p, const Shape& batch, int64_t r, int64_t c) {
  const uint8_t k = p.ConsumeIntegral<uint8_t>();
  if (k >= 160) return std::nullopt;
  Shape s;
  if (k < 136) {
    // batch + (r, c), with some dims dropped or set to 1 (broadcast)
    s = batch;
    s.push_back(r);
    s.push_back(c);
    const int drop = p.ConsumeIntegralInRange<int>(0, static_cast<int>(batch.size()));
    s.erase(s.begin(), s.begin() + drop);
    for (auto& d : s)
      if (p.ConsumeIntegralInRange<int>(0, 4) == 0) d = 1;
  } else {
    s = pick_shape(p, 3, 4);
  }
  const uint8_t t = p.ConsumeIntegral<uint8_t>();
  const Dtype dt = t < 128 ? Dtype::bool_ : t < 240 ? kAllDtypes[t % 3] : pick_any_dtype(p);
  return make_array(p, s, dt, t < 200 ? 0 : 2);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fdp p(data, size);
  pick_threads(p);
  const uint8_t bsel = p.ConsumeIntegral<uint8_t>();
  const int bsz = bsel < 120 ? 32 : bsel < 240 ? 64 : static_cast<int>(bsel) - 240;
  const int64_t M = pick_dim(p, 36), N = pick_dim(p, 36), K = pick_dim(p, 68);
  Shape batch = pick_shape(p, 2, 2);
  Shape as = batch, bs = batch;
  for (auto& d : as)
    if (p.ConsumeBool()) d = 1;
  for (auto& d : bs)
    if (p.ConsumeBool()) d = 1;
  if (p.ConsumeBool() && !as.empty()) as.erase(as.begin());
  const bool a1 = p.ConsumeIntegralInRange<int>(0, 9) == 9, b1 = p.ConsumeIntegralInRange<int>(0, 9) == 9;
  if (a1) as = {K};
  else {
    as.push_back(M);
    as.push_back(K);
  }
  if (b1) bs = {p.ConsumeIntegralInRange<int>(0, 15) ? K : pick_dim(p, 68)};
  else {
    bs.push_back(p.ConsumeIntegralInRange<int>(0, 15) ? K : pick_dim(p, 68));
    bs.push_back(N);
  }
  Array a = make_array(p, as, pick_float_dtype(p), p.ConsumeIntegralInRange<int>(0, 2));
  Array b = make_array(p, bs, pick_float_dtype(p), p.ConsumeIntegralInRange<int>(0, 2));
  const int64_t B = std::max<int64_t>(bsz, 1);
  const int64_t tm = (M + B - 1) / B, tn = (N + B - 1) / B, tk = (K + B - 1) / B;
  const std::optional<Array> mo = make_mask(p, batch, a1 ? 1 : tm, b1 ? 1 : tn);
  const std::optional<Array> ml = make_mask(p, batch, a1 ? 1 : tm, tk);
  const std::optional<Array> mr = make_mask(p, batch, tk, b1 ? 1 : tn);
  // 1-D operands: the user passes the mask without the squeezed axis.
  auto squeeze_for_1d = [&](std::optional<Array> m, bool row, bool col) {
    if (!m || m->ndim() < 2) return m;
    if (row && m->shape(-2) == 1) m = m->squeeze(m->ndim() - 2);
    else if (col && m->shape(-1) == 1) m = m->squeeze(m->ndim() - 1);
    return m;
  };
  const std::optional<Array> mo1 = squeeze_for_1d(mo, a1, b1), ml1 = squeeze_for_1d(ml, a1, false),
                             mr1 = squeeze_for_1d(mr, false, b1);

  guarded([&] {
    Array y = block_masked_mm(a, b, bsz, mo1, ml1, mr1);
    const Dtype T = promote_types(a.dtype(), b.dtype());
    FUZZ_CHECK(y.dtype() == T, "output dtype");
    const Array at = a.astype(T), bt = b.astype(T);
    auto absm = [](const std::optional<Array>& m) { return m ? std::optional<Array>(abs_array(*m)) : m; };
    const int64_t kk = at.ndim() >= 1 ? at.shape(-1) : 0;
    // A float out mask multiplies the float32 accumulation, which overflows to
    // +-Inf where the unmasked bound does (then Inf * 0 = NaN): such elements
    // get an infinite bound, so only the reference's NaNs are checked there.
    auto bound = [&] {
      ref::Tensor b = ref::block_masked_mm(abs_array(at), abs_array(bt), bsz, absm(mo1), absm(ml1), absm(mr1));
      if (mo1 && mo1->dtype() != Dtype::bool_) {
        const ref::Tensor pre =
            ref::block_masked_mm(abs_array(at), abs_array(bt), bsz, std::nullopt, absm(ml1), absm(mr1));
        for (size_t i = 0; i < b.v.size(); ++i)
          if (!(pre.v[i] <= 1e36)) b.v[i] = std::numeric_limits<double>::infinity();
      }
      return b;
    };
    check_matmul_result(y, ref::block_masked_mm(at, bt, bsz, mo1, ml1, mr1), bound, kk, "block_masked_mm");
  });
  return 0;
}
