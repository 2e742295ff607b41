// Front end of the matmul family (SPEC.md sections 3-6): validation in MLX's
// order plus decisions 2 and 3, canonicalisation to the layouts of
// descriptors.h, then one registry dispatch.
#include "mmkit/matmul.h"

#include <algorithm>

#include "ops/common.h"

namespace mmkit {
namespace detail {
QFormat resolve_format(const std::string& mode, std::optional<int> gs, std::optional<int> bits, const char* op);
void check_format(const QFormat& f, const char* op);
}  // namespace detail
using namespace detail;

namespace {

Array int64_vector(const std::vector<int64_t>& v) {
  return Array::from_vector(v, Shape{static_cast<int64_t>(v.size())});
}

// ---------------------------------------------------------------------------
// quantized weights: checks shared by quantized_matmul and gather_qmm

struct QWeights {
  QFormat f;
  Dtype dtype;  // T
  int64_t K, N;
};

QWeights check_quantized(const Array& x, const Array& w, const Array& scales, const std::optional<Array>& biases,
                         bool transpose, std::optional<int> gs, std::optional<int> bits, const std::string& mode,
                         const char* op) {
  QFormat f = resolve_format(mode, gs, bits, op);
  require_non_null(x, op, "x");
  require_non_null(w, op, "w");
  require_non_null(scales, op, "scales");
  Dtype sdt = Dtype::uint8;
  if (f.mode == fmt::Mode::affine) {
    if (!biases) throw_error(op, "Biases must be provided for affine quantization.");
    require_non_null(*biases, op, "biases");
    sdt = promote_types(scales.dtype(), biases->dtype());
    if (!is_floating(sdt))
      throw_error(op, "Only real floating types are supported but scales.dtype() == ", scales.dtype(),
                  " and biases.dtype() == ", biases->dtype(), ".");
  } else {
    if (scales.dtype() != Dtype::uint8)
      throw_error(op, "Scale type must be uint8 but received type ", scales.dtype(), ".");
    if (biases) throw_error(op, "Biases must be null for quantization mode '", mode, "'.");
  }
  if (w.dtype() != Dtype::uint32)
    throw_error(op, "The weight matrix should be uint32 but received ", w.dtype(), ".");
  if (biases && scales.shape() != biases->shape())
    throw_error(op, "Scales and biases should have the same shape. Received scales with shape ",
                shape_str(scales.shape()), " and biases with ", shape_str(biases->shape()), ".");
  if (x.ndim() < 1) throw_error(op, "The input x must have at least 1 dimension but it is a 0-d array.");
  if (w.ndim() < 2)
    throw_error(op, "The weight matrix must have at least 2 dimensions but has shape ", shape_str(w.shape()), ".");
  if (scales.ndim() != w.ndim())
    throw_error(op, "Weight and scales should have the same number of dimensions. Received weight with shape ",
                shape_str(w.shape()), ", scales with ", shape_str(scales.shape()), ".");
  for (int i = 0; i < w.ndim() - 1; ++i)
    if (w.shape(i) != scales.shape(i))
      throw_error(op, "Weight and scales should have the same batch shape and rows. Received weight with shape ",
                  shape_str(w.shape()), ", scales with ", shape_str(scales.shape()), ".");
  check_format(f, op);
  const int64_t unpacked = w.shape(-1) * 32 / f.bits;
  if (unpacked != scales.shape(-1) * f.group_size)
    throw_error(op, "The shapes of the weight and scales are incompatible based on bits and group_size. w.shape() == ",
                shape_str(w.shape()), " and scales.shape() == ", shape_str(scales.shape()),
                " with group_size=", f.group_size, " and bits=", f.bits, ".");
  const int64_t K = transpose ? unpacked : w.shape(-2);
  const int64_t N = transpose ? w.shape(-2) : unpacked;
  if (x.shape(-1) != K)
    throw_error(op, "Last dimension of first input with shape (..., ", x.shape(-1),
                ") does not match the expanded quantized matrix (", K, ", ", N, ") computed from shape ",
                shape_str(w.shape()), " with group_size=", f.group_size, ", bits=", f.bits,
                " and transpose=", transpose ? "true" : "false", ".");
  Dtype T = f.mode == fmt::Mode::affine ? promote_types(x.dtype(), sdt) : x.dtype();
  if (!is_floating(T)) throw_error(op, "Only real floating types are supported but x.dtype() == ", x.dtype(), ".");
  return {f, T, K, N};
}

Array run_qmm(QmmDesc d, const Array& x3, const Array& w, const Array& scales, const std::optional<Array>& biases,
              Array lhs, Array rhs, const Stream& st) {
  QmmArgs a;
  const Device dev = st.device;
  a.out = Array::empty({d.batch, d.M, d.N}, d.dtype, dev);
  if (d.batch * d.M * d.N == 0) return a.out;
  const bool affine = d.format.mode == fmt::Mode::affine;
  a.x = flatten_batch(on_device(x3, dev), d.dtype);
  a.w = flatten_batch(on_device(w, dev), Dtype::uint32);
  a.scales = flatten_batch(on_device(scales, dev), affine ? d.dtype : Dtype::uint8);
  if (affine) a.biases = flatten_batch(on_device(*biases, dev), d.dtype);
  a.lhs = on_device(lhs, dev);
  a.rhs = on_device(rhs, dev);
  d.x_batch = a.x.shape(0);
  d.w_batch = a.w.shape(0);
  registries().qmm.run(d, a, st);
  return a.out;
}

Array quantized_matmul_impl(const Array& x, const Array& w, const Array& scales, const std::optional<Array>& biases,
                            bool transpose, std::optional<int> gs, std::optional<int> bits, const std::string& mode,
                            const StreamOrDevice& s) {
  const char* op = "quantized_matmul";
  QWeights q = check_quantized(x, w, scales, biases, transpose, gs, bits, mode, op);
  if (x.ndim() <= 2 && w.ndim() > 2)
    throw_error(op, "A batched weight matrix of shape ", shape_str(w.shape()), " needs x with a batch dimension, but x has shape ",
                shape_str(x.shape()), "; pass x as (B, M, K) or index the weight.");
  Stream st = resolve_stream(s, {&x, &w});
  QmmDesc d;
  d.format = q.f;
  d.transpose = transpose;
  d.K = q.K;
  d.N = q.N;
  d.dtype = q.dtype;
  d.op = op;
  if (w.ndim() == 2) {
    // Every row of x (all batches) against one weight matrix.
    Shape oshape = x.shape();
    oshape.back() = q.N;
    const int64_t rows = x.ndim() == 1 ? 1 : x.size() / std::max<int64_t>(q.K, 1);
    d.M = q.K == 0 ? shape_size(batch_of(x, 1)) : rows;
    Array x3 = x.reshape({1, d.M, q.K});
    Array idx = int64_vector({0});
    Array out = run_qmm(d, x3, w, scales, biases, idx, idx, st);
    return out.reshape(oshape);
  }
  // Both batched: numpy broadcasting of the batch dims.
  Shape xb = batch_of(x), wb = batch_of(w);
  Shape ob = broadcast_shapes_for(xb, wb, op, "The batch dimensions of x and w");
  std::vector<int64_t> xm, wm;
  broadcast_index_maps(xb, wb, ob, xm, wm);
  d.M = x.shape(-2);
  d.batch = shape_size(ob);
  Array out = run_qmm(d, x, w, scales, biases, int64_vector(xm), int64_vector(wm), st);
  Shape oshape = ob;
  oshape.push_back(d.M);
  oshape.push_back(q.N);
  return out.reshape(oshape);
}

// ---------------------------------------------------------------------------
// gemm helpers

/// b (..., K, N) as a flat (Bb, K, N) N-major or (Bb, N, K) K-major array
/// without copying when either layout is already contiguous.
Array canonical_b(const Array& b, Dtype T, bool* kmajor) {
  Array bt = b.swapaxes(-1, -2);
  if (b.dtype() == T && !b.is_contiguous() && bt.is_contiguous() && b.shape(-1) > 1 && b.shape(-2) > 1) {
    *kmajor = true;
    return bt.reshape({shape_size(batch_of(b)), b.shape(-1), b.shape(-2)});
  }
  *kmajor = false;
  return flatten_batch(b, T);
}

Array run_gemm(GemmDesc d, const Array& a, const Array& b, Array lhs, Array rhs, const Stream& st) {
  GemmArgs g;
  const Device dev = st.device;
  g.out = Array::empty({d.batch, d.M, d.N}, d.dtype, dev);
  if (d.batch * d.M * d.N == 0) return g.out;
  g.a = flatten_batch(on_device(a, dev), d.dtype);
  g.b = canonical_b(on_device(b, dev), d.dtype, &d.b_kmajor);
  g.lhs = on_device(lhs, dev);
  g.rhs = on_device(rhs, dev);
  d.a_batch = g.a.shape(0);
  d.b_batch = g.b.shape(0);
  registries().gemm.run(d, g, st);
  return g.out;
}

Dtype check_float_pair(const Array& a, const Array& b, const char* op) {
  Dtype T = promote_types(a.dtype(), b.dtype());
  if (!is_floating(T))
    throw_error(op, "Only real floating point types are supported but ", a.dtype(), " and ", b.dtype(),
                " were provided which results in ", T, ", which is not a real floating point type.");
  return T;
}

void check_k(const Array& a, const Array& b, const char* op) {
  if (a.shape(-1) != b.shape(-2))
    throw_error(op, "Last dimension of first input with shape ", shape_str(a.shape()),
                " must match second to last dimension of second input with shape ", shape_str(b.shape()), ".");
}

Array matmul_impl(const Array& a0, const Array& b0, const StreamOrDevice& s, const char* op) {
  require_non_null(a0, op, "a");
  require_non_null(b0, op, "b");
  if (a0.ndim() == 0 || b0.ndim() == 0)
    throw_error(op, "Got 0 dimension input. Inputs must have at least one dimension.");
  const bool a1 = a0.ndim() == 1, b1 = b0.ndim() == 1;
  Array a = a1 ? a0.expand_dims(0) : a0;
  Array b = b1 ? b0.expand_dims(1) : b0;
  check_k(a, b, op);
  Dtype T = check_float_pair(a, b, op);
  Stream st = resolve_stream(s, {&a0, &b0});
  Shape ab = batch_of(a), bb = batch_of(b);
  Shape ob = broadcast_shapes_for(ab, bb, op, "The batch dimensions of a and b");
  GemmDesc d;
  d.M = a.shape(-2);
  d.N = b.shape(-1);
  d.K = a.shape(-1);
  d.dtype = T;
  d.op = op;
  Array out;
  if (bb.empty() || shape_size(bb) == 1) {
    // One b: stack all rows of a into a single GEMM (weights read once).
    Shape full = ob;
    full.push_back(d.M);
    full.push_back(d.K);
    Array af = a.broadcast_to(full);
    d.M = shape_size(ob) * a.shape(-2);
    d.batch = 1;
    Array idx = int64_vector({0});
    out = run_gemm(d, af.reshape({1, d.M, d.K}), b.reshape({1, d.K, d.N}), idx, idx, st);
    d.M = a.shape(-2);
  } else {
    std::vector<int64_t> am, bm;
    broadcast_index_maps(ab, bb, ob, am, bm);
    d.batch = shape_size(ob);
    out = run_gemm(d, a, b, int64_vector(am), int64_vector(bm), st);
  }
  Shape oshape = ob;
  if (!a1) oshape.push_back(d.M);
  if (!b1) oshape.push_back(d.N);
  return out.reshape(oshape);
}

}  // namespace

// ---------------------------------------------------------------------------
// public ops

Array quantized_matmul(const Array& x, const Array& w, const Array& scales, const std::optional<Array>& biases,
                       bool transpose, std::optional<int> group_size, std::optional<int> bits, const std::string& mode,
                       StreamOrDevice s) {
  return quantized_matmul_impl(x, w, scales, biases, transpose, group_size, bits, mode, s);
}

Array gather_qmm(const Array& x, const Array& w, const Array& scales, const std::optional<Array>& biases,
                 const std::optional<Array>& lhs_indices, const std::optional<Array>& rhs_indices, bool transpose,
                 std::optional<int> group_size, std::optional<int> bits, const std::string& mode,
                 bool sorted_indices, StreamOrDevice s) {
  if (!lhs_indices && !rhs_indices)
    return quantized_matmul_impl(x, w, scales, biases, transpose, group_size, bits, mode, s);
  const char* op = "gather_qmm";
  QWeights q = check_quantized(x, w, scales, biases, transpose, group_size, bits, mode, op);
  auto check_idx = [&](const std::optional<Array>& idx) {
    if (idx) {
      require_non_null(*idx, op, "indices");
      if (!is_integral(idx->dtype()) || idx->dtype() == Dtype::bool_)
        throw_error(op, "Got indices with invalid dtype ", idx->dtype(), ". Indices must be integral.");
    }
  };
  if (x.ndim() < 2)
    throw_error(op, "Input must have at least two dimensions but got input with shape ", shape_str(x.shape()), ".");
  check_idx(lhs_indices);
  check_idx(rhs_indices);
  Stream st = resolve_stream(s, {&x, &w});
  Shape xb = batch_of(x), wb = batch_of(w);
  Array lhs = lhs_indices ? *lhs_indices : arange_batch(xb);
  Array rhs = rhs_indices ? *rhs_indices : arange_batch(wb);
  Shape ib = broadcast_shapes_for(lhs.shape(), rhs.shape(), op, "lhs_indices and rhs_indices");
  QmmDesc d;
  d.format = q.f;
  d.transpose = transpose;
  d.K = q.K;
  d.N = q.N;
  d.M = x.shape(-2);
  d.dtype = q.dtype;
  d.batch = shape_size(ib);
  d.op = op;
  d.rhs_sorted = sorted_indices && rhs_indices && !lhs_indices;
  const int64_t L = d.batch;
  Array l = prepare_indices(lhs, ib, shape_size(xb), st.device, op, "lhs_indices", "x", &d.indices_checked)
                .reshape({L});
  Array r = prepare_indices(rhs, ib, shape_size(wb), st.device, op, "rhs_indices", "w", &d.indices_checked)
                .reshape({L});
  Array out = run_qmm(d, x, w, scales, biases, l, r, st);
  Shape oshape = ib;
  oshape.push_back(d.M);
  oshape.push_back(d.N);
  return out.reshape(oshape);
}

Array matmul(const Array& a, const Array& b, StreamOrDevice s) { return matmul_impl(a, b, s, "matmul"); }

Array gather_mm(const Array& a0, const Array& b0, const std::optional<Array>& lhs_indices,
                const std::optional<Array>& rhs_indices, bool sorted_indices, StreamOrDevice s) {
  const char* op = "gather_mm";
  if (!lhs_indices && !rhs_indices) return matmul_impl(a0, b0, s, op);
  require_non_null(a0, op, "a");
  require_non_null(b0, op, "b");
  if (a0.ndim() == 0 || b0.ndim() == 0)
    throw_error(op, "Got 0 dimension input. Inputs must have at least one dimension.");
  const bool a1 = a0.ndim() == 1, b1 = b0.ndim() == 1;
  Array a = a1 ? a0.expand_dims(0) : a0;
  Array b = b1 ? b0.expand_dims(1) : b0;
  check_k(a, b, op);
  Dtype T = check_float_pair(a, b, op);
  for (const auto* idx : {&lhs_indices, &rhs_indices}) {
    if (*idx) {
      require_non_null(**idx, op, "indices");
      if (!is_integral((*idx)->dtype()) || (*idx)->dtype() == Dtype::bool_)
        throw_error(op, "Got indices with invalid dtype ", (*idx)->dtype(), ". Indices must be integral.");
    }
  }
  Stream st = resolve_stream(s, {&a0, &b0});
  Shape ab = batch_of(a), bb = batch_of(b);
  Array lhs = lhs_indices ? *lhs_indices : arange_batch(ab);
  Array rhs = rhs_indices ? *rhs_indices : arange_batch(bb);
  Shape ib = broadcast_shapes_for(lhs.shape(), rhs.shape(), op, "lhs_indices and rhs_indices");
  GemmDesc d;
  d.M = a.shape(-2);
  d.N = b.shape(-1);
  d.K = a.shape(-1);
  d.dtype = T;
  d.batch = shape_size(ib);
  d.op = op;
  d.rhs_sorted = sorted_indices && rhs_indices && !lhs_indices;
  Array l = prepare_indices(lhs, ib, shape_size(ab), st.device, op, "lhs_indices", "a", &d.indices_checked)
                .reshape({d.batch});
  Array r = prepare_indices(rhs, ib, shape_size(bb), st.device, op, "rhs_indices", "b", &d.indices_checked)
                .reshape({d.batch});
  Array out = run_gemm(d, a, b, l, r, st);
  Shape oshape = ib;
  if (!a1) oshape.push_back(d.M);
  if (!b1) oshape.push_back(d.N);
  return out.reshape(oshape);
}

Array block_masked_mm(const Array& a0, const Array& b0, int block_size, const std::optional<Array>& mask_out,
                      const std::optional<Array>& mask_lhs, const std::optional<Array>& mask_rhs, StreamOrDevice s) {
  const char* op = "block_masked_mm";
  if (!mask_out && !mask_lhs && !mask_rhs) return matmul_impl(a0, b0, s, op);
  if (block_size != 32 && block_size != 64)
    throw_error(op, "Only block sizes 32 and 64 are supported. Got block size ", block_size, ".");
  require_non_null(a0, op, "a");
  require_non_null(b0, op, "b");
  if (a0.ndim() == 0 || b0.ndim() == 0)
    throw_error(op, "Got 0 dimension input. Inputs must have at least one dimension.");
  const bool a1 = a0.ndim() == 1, b1 = b0.ndim() == 1;
  Array a = a1 ? a0.expand_dims(0) : a0;
  Array b = b1 ? b0.expand_dims(1) : b0;
  check_k(a, b, op);
  Dtype T = check_float_pair(a, b, op);
  Stream st = resolve_stream(s, {&a0, &b0});
  Shape ab = batch_of(a), bb = batch_of(b);
  Shape ob = broadcast_shapes_for(ab, bb, op, "The batch dimensions of a and b");
  BlockMaskedDesc d;
  d.M = a.shape(-2);
  d.N = b.shape(-1);
  d.K = a.shape(-1);
  d.block_size = block_size;
  d.dtype = T;
  d.batch = shape_size(ob);
  const int64_t tm = d.tm(), tn = d.tn(), tk = d.tk();

  // Masks: broadcast into B + (tiles), 1-D operands insert the squeezed axis.
  auto prep = [&](const std::optional<Array>& m, int64_t r, int64_t c, bool insert_row, bool insert_col,
                  const char* name, bool as_bool) -> Array {
    if (!m) return Array();
    require_non_null(*m, op, name);
    Array mm = *m;
    if (insert_row) mm = mm.expand_dims(mm.ndim() >= 1 ? -2 : 0);
    if (insert_col) mm = mm.expand_dims(-1);
    Shape target = ob;
    target.push_back(r);
    target.push_back(c);
    Shape bshape;
    try {
      bshape = broadcast_shapes(mm.shape(), target);
    } catch (const Error&) {
      bshape.clear();
    }
    if (bshape != target)
      throw_error(op, "Cannot broadcast ", name, " of shape ", shape_str(m->shape()), " into shape ",
                  shape_str(target), " (batch + (", r, ", ", c, ") blocks of ", block_size, ").");
    // Values as float32 rounded to T (bool -> 0/1), materialised per batch entry.
    Array v = as_bool ? mm.broadcast_to(target).astype(Dtype::bool_).astype(Dtype::float32)
                      : mm.broadcast_to(target).astype(T).astype(Dtype::float32);
    return on_device(v.reshape({d.batch, r, c}), st.device);
  };
  d.has_out_mask = mask_out.has_value();
  d.out_mask_bool = mask_out && mask_out->dtype() == Dtype::bool_;
  d.has_op_masks = mask_lhs.has_value() || mask_rhs.has_value();
  d.op_masks_bool = (!mask_lhs || mask_lhs->dtype() == Dtype::bool_) && (!mask_rhs || mask_rhs->dtype() == Dtype::bool_);
  BlockMaskedArgs g;
  g.mask_out = prep(mask_out, tm, tn, a1, b1, "mask_out", d.out_mask_bool);
  g.mask_lhs = prep(mask_lhs, tm, tk, a1, false, "mask_lhs", d.op_masks_bool);
  g.mask_rhs = prep(mask_rhs, tk, tn, false, b1, "mask_rhs", d.op_masks_bool);
  std::vector<int64_t> am, bm;
  broadcast_index_maps(ab, bb, ob, am, bm);
  g.out = Array::empty({d.batch, d.M, d.N}, T, st.device);
  if (d.batch * d.M * d.N > 0) {
    g.a = flatten_batch(on_device(a, st.device), T);
    g.b = canonical_b(on_device(b, st.device), T, &d.b_kmajor);
    g.a_idx = on_device(int64_vector(am), st.device);
    g.b_idx = on_device(int64_vector(bm), st.device);
    d.a_batch = g.a.shape(0);
    d.b_batch = g.b.shape(0);
    registries().block_masked.run(d, g, st);
  }
  Shape oshape = ob;
  if (!a1) oshape.push_back(d.M);
  if (!b1) oshape.push_back(d.N);
  return g.out.reshape(oshape);
}

}  // namespace mmkit
