// Front end of quantize / dequantize / to_fp8 / from_fp8: every check of
// SPEC.md 1.5 and 2.5 (plus decision 2), then one descriptor per call.
#include "mmkit/quantize.h"

#include "ops/common.h"

namespace mmkit {
using namespace detail;

std::pair<int, int> quantization_defaults(const std::string& mode, const char* op) {
  const auto& t = fmt::traits(parse_mode(mode, op));
  return {t.default_group_size, t.default_bits};
}

namespace detail {

/// gs/bits checks for a mode (quantize wording, SPEC 1.5 steps 6-7).
void check_format(const QFormat& f, const char* op) {
  const auto& t = f.traits();
  if (f.mode == fmt::Mode::affine) {
    if (!fmt::affine_group_supported(f.group_size))
      throw_error(op, "The requested group size ", f.group_size,
                  " is not supported. The supported group sizes are 32, 64, and 128.");
    if (!fmt::affine_bits_supported(f.bits))
      throw_error(op, "The requested number of bits ", f.bits,
                  " is not supported. The supported bits are 2, 3, 4, 5, 6 and 8.");
  } else {
    if (f.group_size != t.default_group_size)
      throw_error(op, t.name, " quantization requires group size ", t.default_group_size, " but got ",
                  f.group_size, ".");
    if (f.bits != t.default_bits)
      throw_error(op, t.name, " quantization requires bits to be ", t.default_bits, " but got ", f.bits, ".");
  }
}

QFormat resolve_format(const std::string& mode, std::optional<int> gs, std::optional<int> bits, const char* op) {
  QFormat f;
  f.mode = parse_mode(mode, op);
  f.group_size = gs.value_or(f.traits().default_group_size);
  f.bits = bits.value_or(f.traits().default_bits);
  return f;
}

static void check_global_scale(const std::optional<Array>& gs, const QFormat& f, const char* op) {
  if (!gs) return;
  require_non_null(*gs, op, "global_scale");
  if (f.mode != fmt::Mode::nvfp4)
    throw_error(op, "Global scale is only supported for 'nvfp4' quantization mode.");
  if (gs->size() != 1) throw_error(op, "Global scale must be a scalar but got shape ", shape_str(gs->shape()), ".");
  if (gs->dtype() != Dtype::float32)
    throw_error(op, "Global scale must have dtype float32 but got ", gs->dtype(), ".");
}

}  // namespace detail

std::vector<Array> quantize(const Array& w, std::optional<int> group_size, std::optional<int> bits,
                            const std::string& mode, const std::optional<Array>& global_scale, StreamOrDevice s) {
  const char* op = "quantize";
  QFormat f = resolve_format(mode, group_size, bits, op);
  require_non_null(w, op, "w");
  if (!is_floating(w.dtype()))
    throw_error(op, "Only real floating types can be quantized but w has type ", w.dtype(), ".");
  if (w.ndim() < 2)
    throw_error(op, "The matrix to be quantized must have at least 2 dimensions but it has only ", w.ndim(), ".");
  if (f.group_size <= 0) throw_error(op, "Invalid group size ", f.group_size, ".");
  if (w.shape(-1) % f.group_size != 0)
    throw_error(op, "The last dimension of the matrix needs to be divisible by the quantization group size ",
                f.group_size, ". However the provided matrix has shape ", shape_str(w.shape()), ".");
  check_global_scale(global_scale, f, op);
  check_format(f, op);

  Stream st = resolve_stream(s, {&w});
  const Device dev = st.device;
  const int64_t cols = w.shape(-1);
  const int64_t rows = cols == 0 ? shape_size(batch_of(w, 1)) : w.size() / cols;
  Shape qshape = w.shape(), sshape = w.shape();
  qshape.back() = cols * f.bits / 32;
  sshape.back() = cols / f.group_size;
  const Dtype scale_dt = f.mode == fmt::Mode::affine ? w.dtype() : Dtype::uint8;

  QuantizeArgs a;
  a.w_q = Array::empty({rows, cols * f.bits / 32}, Dtype::uint32, dev);
  a.scales = Array::empty({rows, cols / f.group_size}, scale_dt, dev);
  if (f.mode == fmt::Mode::affine) a.biases = Array::empty({rows, cols / f.group_size}, scale_dt, dev);
  if (rows * cols > 0) {
    a.w = on_device(w, dev).contiguous().reshape({rows, cols});
    if (global_scale) a.global_scale = on_device(*global_scale, dev).reshape({});
    QuantizeDesc d{rows, cols, f, w.dtype(), global_scale.has_value()};
    registries().quantize.run(d, a, st);
  }
  std::vector<Array> out{a.w_q.reshape(qshape), a.scales.reshape(sshape)};
  if (f.mode == fmt::Mode::affine) out.push_back(a.biases.reshape(sshape));
  return out;
}

Array dequantize(const Array& w, const Array& scales, const std::optional<Array>& biases,
                 std::optional<int> group_size, std::optional<int> bits, const std::string& mode,
                 const std::optional<Array>& global_scale, std::optional<Dtype> dtype, StreamOrDevice s) {
  const char* op = "dequantize";
  QFormat f = resolve_format(mode, group_size, bits, op);
  require_non_null(w, op, "w");
  require_non_null(scales, op, "scales");
  if (dtype && !is_floating(*dtype))
    throw_error(op, "Only real floating types are supported but output dtype == ", *dtype, ".");
  Dtype scale_dt;
  if (f.mode == fmt::Mode::affine) {
    if (!biases) throw_error(op, "Biases must be provided for affine quantization.");
    require_non_null(*biases, op, "biases");
    scale_dt = promote_types(scales.dtype(), biases->dtype());
    if (!is_floating(scale_dt))
      throw_error(op, "Only real floating types are supported but scales.dtype() == ", scales.dtype(),
                  " and biases.dtype() == ", biases->dtype(), ".");
  } else {
    if (scales.dtype() != Dtype::uint8)
      throw_error(op, "Scale type must be uint8 but received type ", scales.dtype(), ".");
    if (biases) throw_error(op, "Biases must be null for quantization mode '", mode, "'.");
    scale_dt = Dtype::uint8;
  }
  if (f.bits <= 0) throw_error(op, "Invalid value for bits: ", f.bits, ".");
  if (f.group_size <= 0) throw_error(op, "Invalid value for group_size: ", f.group_size, ".");
  if (w.dtype() != Dtype::uint32)
    throw_error(op, "The matrix should be given as a uint32 but received ", w.dtype(), ".");
  if (w.ndim() < 2)
    throw_error(op, "The matrix to be dequantized must have at least 2 dimensions but it has only ", w.ndim(), ".");
  check_global_scale(global_scale, f, op);
  check_format(f, op);
  auto same_lead = [&](const Array& sc) {
    if (sc.ndim() != w.ndim()) return false;
    for (int i = 0; i < w.ndim() - 1; ++i)
      if (sc.shape(i) != w.shape(i)) return false;
    return true;
  };
  const char* what = f.mode == fmt::Mode::affine ? "scales and biases" : "scales";
  if (!same_lead(scales) || (biases && biases->shape() != scales.shape()))
    throw_error(op, "Shape of ", what, " does not match the matrix: w has shape ", shape_str(w.shape()),
                ", scales ", shape_str(scales.shape()),
                biases ? ", biases " + shape_str(biases->shape()) : std::string(), ".");
  const int64_t cols = w.shape(-1) * 32 / f.bits;
  if (w.shape(-1) * 32 % f.bits != 0 || cols != scales.shape(-1) * f.group_size)
    throw_error(op, "Shape of ", what,
                " does not match the matrix given the quantization parameters. Provided matrix of shape ",
                shape_str(w.shape()), " and scales of shape ", shape_str(scales.shape()),
                " with group_size=", f.group_size, " and bits=", f.bits, ".");

  const Dtype out_dt = dtype.value_or(f.mode == fmt::Mode::affine ? scale_dt : Dtype::bfloat16);
  Stream st = resolve_stream(s, {&w, &scales});
  const Device dev = st.device;
  Shape oshape = w.shape();
  oshape.back() = cols;
  const int64_t rows = shape_size(batch_of(w, 1));
  DequantizeArgs a;
  a.out = Array::empty({rows, cols}, out_dt, dev);
  if (rows * cols > 0) {
    a.w_q = on_device(w, dev).contiguous().reshape({rows, w.shape(-1)});
    a.scales = on_device(scales, dev).astype(scale_dt).reshape({rows, cols / f.group_size});
    if (biases) a.biases = on_device(*biases, dev).astype(scale_dt).reshape({rows, cols / f.group_size});
    if (global_scale) a.global_scale = on_device(*global_scale, dev).reshape({});
    DequantizeDesc d{rows, cols, f, scale_dt, out_dt, global_scale.has_value()};
    registries().dequantize.run(d, a, st);
  }
  return a.out.reshape(oshape);
}

Array to_fp8(const Array& x, StreamOrDevice s) {
  const char* op = "to_fp8";
  require_non_null(x, op, "x");
  if (!is_floating(x.dtype())) throw_error(op, "Only real floating types can be converted to fp8 but x has type ", x.dtype(), ".");
  Stream st = resolve_stream(s, {&x});
  Fp8Args a;
  a.out = Array::empty(x.shape(), Dtype::uint8, st.device);
  if (x.size()) {
    a.in = on_device(x, st.device).contiguous();
    registries().fp8.run(Fp8Desc{x.size(), true, x.dtype()}, a, st);
  }
  return a.out;
}

Array from_fp8(const Array& x, Dtype dtype, StreamOrDevice s) {
  const char* op = "from_fp8";
  require_non_null(x, op, "x");
  if (x.dtype() != Dtype::uint8) throw_error(op, "Input must have dtype uint8 but got ", x.dtype(), ".");
  if (!is_floating(dtype)) throw_error(op, "Only real floating output types are supported but got ", dtype, ".");
  Stream st = resolve_stream(s, {&x});
  Fp8Args a;
  a.out = Array::empty(x.shape(), dtype, st.device);
  if (x.size()) {
    a.in = on_device(x, st.device).contiguous();
    registries().fp8.run(Fp8Desc{x.size(), false, dtype}, a, st);
  }
  return a.out;
}

}  // namespace mmkit
