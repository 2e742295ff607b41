// Fuzzes quantize: random shapes (0-d to 4-d, empty dims), dtypes, strided
// views, modes, group sizes, bits and global scales. A success must give the
// documented shapes and dtypes, the same bytes as quantizing a contiguous
// copy, and (float32, affine, finite input) a reconstruction within 1.5 |scale|
// of every input; fp-mode codes must decode to finite values.
#include "fuzz_common.h"

using namespace mmkit;
using namespace mmkit::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fdp p(data, size);
  pick_threads(p);
  const std::string mode = pick_mode(p);
  const std::optional<int> gs = pick_param(p, {32, 64, 128, 16, 32});
  const std::optional<int> bits = pick_param(p, {2, 3, 4, 5, 6, 8});
  const Dtype dt = pick_float_dtype(p);
  const int style = p.ConsumeIntegralInRange<int>(0, 2);
  Shape shape = pick_shape(p, 4, 4);
  if (!shape.empty()) {
    // a multiple of 16 or 32 (0..128) most of the time, sometimes off by one
    const int64_t units = (p.ConsumeIntegralInRange<int64_t>(0, 4) + 1) % 5;
    shape.back() = units * (p.ConsumeBool() ? 16 : 32) + (p.ConsumeIntegralInRange<int>(0, 7) == 7 ? 1 : 0);
  }
  std::optional<Array> gscale;
  if (p.ConsumeIntegralInRange<int>(0, 7) == 7) {
    const Shape gshape = pick_shape(p, 2, 2);
    gscale = make_array(p, gshape, pick_float_dtype(p), 2);
  }
  Array w = make_array(p, shape, dt, style);

  guarded([&] {
    std::vector<Array> q = quantize(w, gs, bits, mode, gscale);
    // Only reachable with valid parameters: resolve them as the op did.
    const auto [dgs, dbits] = quantization_defaults(mode);
    const int g = gs.value_or(dgs), b = bits.value_or(dbits);
    const bool affine = mode == "affine";
    FUZZ_CHECK(q.size() == (affine ? 3u : 2u), "output count");
    Shape qs = shape, ss = shape;
    qs.back() = shape.back() * b / 32;
    ss.back() = shape.back() / g;
    FUZZ_CHECK(q[0].shape() == qs && q[0].dtype() == Dtype::uint32, "w_q shape/dtype " + shape_str(q[0].shape()));
    FUZZ_CHECK(q[1].shape() == ss, "scales shape " + shape_str(q[1].shape()));
    FUZZ_CHECK(q[1].dtype() == (affine ? dt : Dtype::uint8), "scales dtype");
    if (affine) FUZZ_CHECK(q[2].shape() == ss && q[2].dtype() == dt, "biases shape/dtype");

    // A view quantizes exactly like its contiguous copy.
    std::vector<Array> qc = quantize(w.copy(), gs, bits, mode, gscale);
    for (size_t i = 0; i < q.size(); ++i) {
      FUZZ_CHECK(q[i].nbytes() == qc[i].nbytes() &&
                     std::memcmp(q[i].contiguous().raw_data(), qc[i].contiguous().raw_data(), q[i].nbytes()) == 0,
                 "view and contiguous copy quantize differently (output " + std::to_string(i) + ")");
    }
    if (w.size() == 0) return;

    const std::optional<double> gval = gscale ? std::optional<double>(gscale->item_double()) : std::nullopt;
    const ref::Tensor wt = ref::to_tensor(w);
    const ref::Tensor hat =
        ref::dequantize(q[0], q[1], affine ? std::optional<Array>(q[2]) : std::nullopt, g, b, mode, gval);
    if (affine && dt == Dtype::float32) {
      const ref::Tensor st = ref::to_tensor(q[1]);
      const int64_t cols = shape.back();
      for (size_t grp = 0; grp < st.v.size(); ++grp) {
        bool finite = true;
        for (int64_t i = 0; i < g; ++i) finite &= std::fabs(wt.v[grp * g + i]) < 1e30;
        if (!finite) continue;
        const double s = std::fabs(st.v[grp]);
        for (int64_t i = 0; i < g; ++i) {
          const size_t j = grp * g + i;
          const double err = std::fabs(hat.v[j] - wt.v[j]);
          const double tol = 1.5 * s + 1e-6 * std::fabs(wt.v[j]) + 1e-30;
          if (!(err <= tol))
            fail("affine round trip: element " + std::to_string(j) + " of " + shape_str(shape) + " (cols " +
                 std::to_string(cols) + ") is " + std::to_string(wt.v[j]) + ", reconstructed " +
                 std::to_string(hat.v[j]) + ", |scale| " + std::to_string(s));
        }
      }
    }
    if (!affine) {
      // Element codes never decode to NaN (E2M1 has none; E4M3 as MLX has none).
      const std::vector<double> codes_only =
          ref::dequantize(q[0], Array::full(q[1].shape(), mode == "nvfp4" ? 56 : 127, Dtype::uint8), std::nullopt,
                          g, b, mode)
              .v;
      for (double c : codes_only) FUZZ_CHECK(std::isfinite(c) && std::fabs(c) <= 480.0, "fp code out of range");
    }
  });
  return 0;
}
