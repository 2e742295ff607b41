// The ops with MLX's Python signatures (positional-only and keyword-only
// markers, defaults). Arguments are converted and the C++ API is called with
// the GIL released. The one addition: quantized_matmul / gather_qmm accept an
// unquantized floating `w`, quantized here with mmkit::quantize first.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include "mmkit_py.h"

namespace mmkit::py {

using namespace nb::literals;

namespace {

#define MMKIT_STREAM_DOC                                                                  \
  "    stream (Device | Stream | str, optional): where to run: ``None`` (default) runs\n" \
  "      where the inputs live; ``mmkit.cpu``, ``mmkit.gpu``, a ``Stream`` or\n"          \
  "      ``\"cpu\"`` / ``\"gpu\"`` / ``\"gpu:N\"``. Inputs elsewhere are copied there.\n"

#define MMKIT_STREAM_SIG "stream: Device | Stream | str | None = None"

#define MMKIT_MODES_DOC                                                                      \
  "    group_size (int, optional): elements sharing one scale. Default by mode: affine 64,\n" \
  "      mxfp4 32, mxfp8 32, nvfp4 16. affine allows 32, 64, 128; the fp modes only\n"         \
  "      their default.\n"                                                                   \
  "    bits (int, optional): bits per element. Default by mode: affine 4, mxfp4 4, mxfp8 8,\n" \
  "      nvfp4 4. affine allows 2, 3, 4, 5, 6, 8; the fp modes only their default.\n"        \
  "    mode (str, optional): ``\"affine\"`` (default), ``\"mxfp4\"``, ``\"mxfp8\"`` or\n"     \
  "      ``\"nvfp4\"``.\n"

struct Weights {
  Array w, scales;
  std::optional<Array> biases;
};

// The packed weight triple of a quantized matmul. A floating `w` is the plain
// matrix: it is quantized here (along its last axis) with the call's mode,
// group size and bits, and then scales/biases must be omitted.
Weights weights_for(const char* op, nb::handle w_h, nb::handle scales_h, nb::handle biases_h,
                    std::optional<int> group_size, std::optional<int> bits, const std::string& mode,
                    const StreamOrDevice& s) {
  Array w = to_array(w_h);
  if (is_floating(w.dtype())) {
    quantization_defaults(mode, op);  // an unknown mode reports this op's name
    if (!scales_h.is_none() || !biases_h.is_none())
      throw_error(op, "w has floating dtype ", w.dtype(), " (shape ", shape_str(w.shape()),
                  "), so it is quantized on the fly and scales and biases must be None; pass a "
                  "quantized uint32 w to use your own scales.");
    std::vector<Array> q;
    {
      nb::gil_scoped_release nogil;
      q = quantize(w, group_size, bits, mode, std::nullopt, s);
    }
    return {q[0], q[1], q.size() > 2 ? std::optional<Array>(q[2]) : std::nullopt};
  }
  if (scales_h.is_none())
    throw_error(op, "scales must be given for a quantized w (dtype ", w.dtype(), ", shape ", shape_str(w.shape()),
                "); an unquantized floating w is quantized on the fly instead.");
  return {w, to_array(scales_h), to_optional_array(biases_h)};
}

nb::tuple to_tuple(const std::vector<Array>& v) {
  nb::list l;
  for (const Array& a : v) l.append(nb::cast(a));
  return nb::tuple(l);
}

}  // namespace

void bind_ops(nb::module_& m) {
  m.def(
      "quantize",
      [](nb::handle w_h, std::optional<int> group_size, std::optional<int> bits, const std::string& mode,
         nb::handle global_scale_h, nb::handle stream_h) {
        Array w = to_array(w_h);
        std::optional<Array> gscale = to_optional_array(global_scale_h);
        StreamOrDevice s = to_stream(stream_h);
        std::vector<Array> out;
        {
          nb::gil_scoped_release nogil;
          out = quantize(w, group_size, bits, mode, gscale, s);
        }
        return to_tuple(out);
      },
      nb::arg(), "group_size"_a = nb::none(), "bits"_a = nb::none(), "mode"_a = "affine",
      "global_scale"_a = nb::none(), nb::kw_only(), "stream"_a = nb::none(),
      nb::sig("def quantize(w: array, /, group_size: int | None = None, bits: int | None = None, "
              "mode: str = 'affine', global_scale: array | None = None, *, " MMKIT_STREAM_SIG
              ") -> tuple[array, ...]"),
      "Quantizes ``w`` along its last axis in groups of ``group_size`` elements, in MLX's\n"
      "packed format (bit for bit the same codes and scales as MLX's CPU quantizer).\n\n"
      "Args:\n"
      "    w (array): float32, float16 or bfloat16 of shape ``(..., R, C)`` with ``ndim >= 2``\n"
      "      and ``C`` a multiple of ``group_size``.\n" MMKIT_MODES_DOC
      "    global_scale (array, optional): nvfp4 only: a float32 array of one element; the\n"
      "      scales are then stored relative to ``global_scale / 2688``.\n" MMKIT_STREAM_DOC
      "\nReturns:\n"
      "    tuple: ``(w_q, scales, biases)`` for affine, ``(w_q, scales)`` for the fp modes.\n"
      "    ``w_q`` is uint32 of shape ``(..., R, C * bits / 32)``; ``scales`` has shape\n"
      "    ``(..., R, C / group_size)``, dtype ``w.dtype`` for affine and uint8 for the fp modes\n"
      "    (E8M0 exponents for mxfp4/mxfp8, E4M3 for nvfp4); ``biases`` (affine) is like\n"
      "    ``scales``. Affine dequantizes as ``scale * code + bias``: ``bias`` is the group's\n"
      "    larger-magnitude endpoint and ``scale`` is often negative (MLX's rule).\n\n"
      "Raises:\n"
      "    ValueError: bad mode, dtype, shape or group size / bits for the mode.");

  m.def(
      "dequantize",
      [](nb::handle w_h, nb::handle scales_h, nb::handle biases_h, std::optional<int> group_size,
         std::optional<int> bits, const std::string& mode, nb::handle global_scale_h, nb::handle dtype_h,
         nb::handle stream_h) {
        Array w = to_array(w_h), scales = to_array(scales_h);
        std::optional<Array> biases = to_optional_array(biases_h), gscale = to_optional_array(global_scale_h);
        std::optional<Dtype> dtype = to_optional_dtype(dtype_h);
        StreamOrDevice s = to_stream(stream_h);
        nb::gil_scoped_release nogil;
        return dequantize(w, scales, biases, group_size, bits, mode, gscale, dtype, s);
      },
      nb::arg(), "scales"_a, "biases"_a = nb::none(), "group_size"_a = nb::none(), "bits"_a = nb::none(),
      "mode"_a = "affine", "global_scale"_a = nb::none(), "dtype"_a = nb::none(), nb::kw_only(),
      "stream"_a = nb::none(),
      nb::sig("def dequantize(w: array, /, scales: array, biases: array | None = None, group_size: int | None = "
              "None, bits: int | None = None, mode: str = 'affine', global_scale: array | None = None, dtype: "
              "Dtype | None = None, *, " MMKIT_STREAM_SIG ") -> array"),
      "Inverse of :func:`quantize`: unpacks ``w`` and applies the scales (and biases).\n\n"
      "Args:\n"
      "    w (array): uint32 of shape ``(..., R, C * bits / 32)``, ``ndim >= 2``.\n"
      "    scales (array): shape ``(..., R, C / group_size)`` (same ndim and leading dims as\n"
      "      ``w``); affine: float32/float16/bfloat16, fp modes: uint8.\n"
      "    biases (array, optional): affine only (required there), like ``scales``.\n" MMKIT_MODES_DOC
      "    global_scale (array, optional): nvfp4 only: the float32 scalar used in quantize.\n"
      "    dtype (Dtype, optional): output dtype (float32, float16 or bfloat16). Default:\n"
      "      affine ``promote(scales.dtype, biases.dtype)``, fp modes bfloat16.\n" MMKIT_STREAM_DOC
      "\nReturns:\n"
      "    array: shape ``(..., R, C)``.\n\n"
      "Raises:\n"
      "    ValueError: bad mode, dtypes or shapes.");

  m.def(
      "quantized_matmul",
      [](nb::handle x_h, nb::handle w_h, nb::handle scales_h, nb::handle biases_h, bool transpose,
         std::optional<int> group_size, std::optional<int> bits, const std::string& mode, nb::handle stream_h) {
        Array x = to_array(x_h);
        StreamOrDevice s = to_stream(stream_h);
        Weights q = weights_for("quantized_matmul", w_h, scales_h, biases_h, group_size, bits, mode, s);
        nb::gil_scoped_release nogil;
        return quantized_matmul(x, q.w, q.scales, q.biases, transpose, group_size, bits, mode, s);
      },
      nb::arg(), nb::arg(), "scales"_a = nb::none(), "biases"_a = nb::none(), "transpose"_a = true,
      "group_size"_a = nb::none(), "bits"_a = nb::none(), "mode"_a = "affine", nb::kw_only(),
      "stream"_a = nb::none(),
      nb::sig("def quantized_matmul(x: array, w: array, /, scales: array | None = None, biases: array | None = "
              "None, transpose: bool = True, group_size: int | None = None, bits: int | None = None, mode: str = "
              "'affine', *, " MMKIT_STREAM_SIG ") -> array"),
      "``x @ dequantize(w).T`` (``transpose=True``) or ``x @ dequantize(w)`` without\n"
      "materializing the dequantized matrix; accumulates in float32.\n\n"
      "Args:\n"
      "    x (array): shape ``(..., M, K)`` or ``(K,)``.\n"
      "    w (array): quantized uint32 weights: ``(..., N, K * bits / 32)`` when\n"
      "      ``transpose`` is True, ``(..., K, N * bits / 32)`` otherwise. Or the\n"
      "      unquantized float32/float16/bfloat16 matrix (``(..., N, K)`` resp.\n"
      "      ``(..., K, N)``): it is then quantized first with ``mode``, ``group_size`` and\n"
      "      ``bits`` (as :func:`quantize` would) and ``scales``/``biases`` must be None.\n"
      "    scales (array): required with a quantized ``w``; shape ``w.shape[:-1] +\n"
      "      (w.shape[-1] * 32 / bits / group_size,)``; affine float, fp modes uint8.\n"
      "    biases (array, optional): affine only (required there), like ``scales``.\n"
      "    transpose (bool, optional): multiply by ``w.T`` (default True) or by ``w``.\n" MMKIT_MODES_DOC
      MMKIT_STREAM_DOC
      "\nBatch dims of ``x`` and ``w`` broadcast when both have ``ndim > 2``; a 2-D ``w``\n"
      "applies to every batch of ``x``.\n\n"
      "Returns:\n"
      "    array: shape ``x.shape[:-1] + (N,)`` (batch dims broadcast). dtype: affine\n"
      "    ``promote(x, scales, biases)``, fp modes ``x.dtype``.\n\n"
      "Raises:\n"
      "    ValueError: bad mode, dtypes or shapes (e.g. a 2-D ``x`` with a batched ``w``).");

  m.def(
      "gather_qmm",
      [](nb::handle x_h, nb::handle w_h, nb::handle scales_h, nb::handle biases_h, nb::handle lhs_h,
         nb::handle rhs_h, bool transpose, std::optional<int> group_size, std::optional<int> bits,
         const std::string& mode, bool sorted_indices, nb::handle stream_h) {
        Array x = to_array(x_h);
        std::optional<Array> lhs = to_optional_array(lhs_h), rhs = to_optional_array(rhs_h);
        StreamOrDevice s = to_stream(stream_h);
        Weights q = weights_for("gather_qmm", w_h, scales_h, biases_h, group_size, bits, mode, s);
        nb::gil_scoped_release nogil;
        return gather_qmm(x, q.w, q.scales, q.biases, lhs, rhs, transpose, group_size, bits, mode, sorted_indices,
                          s);
      },
      nb::arg(), nb::arg(), "scales"_a = nb::none(), "biases"_a = nb::none(), "lhs_indices"_a = nb::none(),
      "rhs_indices"_a = nb::none(), "transpose"_a = true, "group_size"_a = nb::none(), "bits"_a = nb::none(),
      "mode"_a = "affine", nb::kw_only(), "sorted_indices"_a = false, "stream"_a = nb::none(),
      nb::sig("def gather_qmm(x: array, w: array, /, scales: array | None = None, biases: array | None = None, "
              "lhs_indices: array | None = None, rhs_indices: array | None = None, transpose: bool = True, "
              "group_size: int | None = None, bits: int | None = None, mode: str = 'affine', *, sorted_indices: "
              "bool = False, " MMKIT_STREAM_SIG ") -> array"),
      "Quantized matmul with matrix-level gather (mixture-of-experts):\n"
      "``out[i] = quantized_matmul(x_flat[lhs[i]], w_flat[rhs[i]], ...)``.\n\n"
      "Args:\n"
      "    x (array): shape ``Bx + (M, K)``.\n"
      "    w (array): quantized uint32 weights ``Bw + (N, K * bits / 32)`` (``transpose``) or\n"
      "      ``Bw + (K, N * bits / 32)``; or the unquantized float matrix ``Bw + (N, K)`` resp.\n"
      "      ``Bw + (K, N)``, quantized first with ``mode``, ``group_size`` and ``bits`` (then\n"
      "      ``scales``/``biases`` must be None).\n"
      "    scales (array): required with a quantized ``w``; batch dims ``Bw``.\n"
      "    biases (array, optional): affine only (required there), like ``scales``.\n"
      "    lhs_indices (array, optional): integer flat indices into ``Bx`` (row-major);\n"
      "      default ``arange(prod(Bx)).reshape(Bx)``.\n"
      "    rhs_indices (array, optional): integer flat indices into ``Bw``; default\n"
      "      ``arange(prod(Bw)).reshape(Bw)``. The two index arrays broadcast to the output\n"
      "      batch shape ``I``. Out-of-range indices raise ValueError.\n"
      "    transpose (bool, optional): multiply by ``w.T`` (default True) or by ``w``.\n" MMKIT_MODES_DOC
      "    sorted_indices (bool, optional): a performance hint that the given index array is\n"
      "      sorted. Default False.\n" MMKIT_STREAM_DOC
      "\nWithout indices this is :func:`quantized_matmul`.\n\n"
      "Returns:\n"
      "    array: shape ``I + (M, N)``; dtype as in :func:`quantized_matmul`.\n\n"
      "Raises:\n"
      "    ValueError: bad mode, dtypes, shapes or indices.");

  m.def(
      "gather_mm",
      [](nb::handle a_h, nb::handle b_h, nb::handle lhs_h, nb::handle rhs_h, bool sorted_indices,
         nb::handle stream_h) {
        Array a = to_array(a_h), b = to_array(b_h);
        std::optional<Array> lhs = to_optional_array(lhs_h), rhs = to_optional_array(rhs_h);
        StreamOrDevice s = to_stream(stream_h);
        nb::gil_scoped_release nogil;
        return gather_mm(a, b, lhs, rhs, sorted_indices, s);
      },
      nb::arg(), nb::arg(), "lhs_indices"_a = nb::none(), "rhs_indices"_a = nb::none(), nb::kw_only(),
      "sorted_indices"_a = false, "stream"_a = nb::none(),
      nb::sig("def gather_mm(a: array, b: array, /, lhs_indices: array | None = None, rhs_indices: array | None = "
              "None, *, sorted_indices: bool = False, " MMKIT_STREAM_SIG ") -> array"),
      "Matmul with matrix-level gather: ``out[i] = a_flat[lhs[i]] @ b_flat[rhs[i]]``.\n\n"
      "Args:\n"
      "    a (array): shape ``Ba + (M, K)`` (a 1-D ``a`` is ``(1, K)``, squeezed after).\n"
      "    b (array): shape ``Bb + (K, N)`` (a 1-D ``b`` is ``(K, 1)``, squeezed after).\n"
      "    lhs_indices (array, optional): integer flat indices into ``Ba``; default arange.\n"
      "    rhs_indices (array, optional): integer flat indices into ``Bb``; default arange.\n"
      "    sorted_indices (bool, optional): performance hint. Default False.\n" MMKIT_STREAM_DOC
      "\nWithout indices this is a broadcasting ``a @ b``.\n\n"
      "Returns:\n"
      "    array: shape ``broadcast(lhs, rhs).shape + (M, N)``, dtype ``promote(a, b)``\n"
      "    (float32, float16 or bfloat16; accumulation in float32).\n\n"
      "Raises:\n"
      "    ValueError: bad dtypes, shapes or indices.");

  m.def(
      "block_masked_mm",
      [](nb::handle a_h, nb::handle b_h, int block_size, nb::handle out_h, nb::handle lhs_h, nb::handle rhs_h,
         nb::handle stream_h) {
        Array a = to_array(a_h), b = to_array(b_h);
        std::optional<Array> mo = to_optional_array(out_h), ml = to_optional_array(lhs_h),
                             mr = to_optional_array(rhs_h);
        StreamOrDevice s = to_stream(stream_h);
        nb::gil_scoped_release nogil;
        return block_masked_mm(a, b, block_size, mo, ml, mr, s);
      },
      nb::arg(), nb::arg(), "block_size"_a = 64, "mask_out"_a = nb::none(), "mask_lhs"_a = nb::none(),
      "mask_rhs"_a = nb::none(), nb::kw_only(), "stream"_a = nb::none(),
      nb::sig("def block_masked_mm(a: array, b: array, /, block_size: int = 64, mask_out: array | None = None, "
              "mask_lhs: array | None = None, mask_rhs: array | None = None, *, " MMKIT_STREAM_SIG ") -> array"),
      "Matmul with block masks: ``E(mask_out) * ((E(mask_lhs) * a) @ (E(mask_rhs) * b))``, where\n"
      "``E`` repeats each mask entry over its ``block_size x block_size`` block.\n\n"
      "Args:\n"
      "    a (array): shape ``(..., M, K)`` (1-D allowed).\n"
      "    b (array): shape ``(..., K, N)`` (1-D allowed); batch dims broadcast.\n"
      "    block_size (int, optional): 32 or 64 (default 64); ignored without masks.\n"
      "    mask_out (array, optional): bool or float, broadcastable to ``(..., ceil(M/bs),\n"
      "      ceil(N/bs))``.\n"
      "    mask_lhs (array, optional): bool or float, broadcastable to ``(..., ceil(M/bs),\n"
      "      ceil(K/bs))``.\n"
      "    mask_rhs (array, optional): bool or float, broadcastable to ``(..., ceil(K/bs),\n"
      "      ceil(N/bs))``. Float masks multiply (NaN * 0 stays NaN); bool masks zero blocks.\n" MMKIT_STREAM_DOC
      "\nReturns:\n"
      "    array: shape ``(..., M, N)``, dtype ``promote(a, b)`` (float32/float16/bfloat16).\n\n"
      "Raises:\n"
      "    ValueError: bad block size, dtypes or shapes.");

  m.def(
      "to_fp8",
      [](nb::handle x_h, nb::handle stream_h) {
        Array x = to_array(x_h);
        StreamOrDevice s = to_stream(stream_h);
        nb::gil_scoped_release nogil;
        return to_fp8(x, s);
      },
      "x"_a, nb::kw_only(), "stream"_a = nb::none(),
      nb::sig("def to_fp8(x: array, *, " MMKIT_STREAM_SIG ") -> array"),
      "Encodes float32/float16/bfloat16 values as MLX's FP8 E4M3 bytes.\n\n"
      "Saturates at +-448 (NaN and Inf become +-448); round to nearest even.\n\n"
      "Args:\n"
      "    x (array): floating input of any shape.\n" MMKIT_STREAM_DOC
      "\nReturns:\n"
      "    array: uint8, same shape as ``x``.");

  m.def(
      "from_fp8",
      [](nb::handle x_h, nb::handle dtype_h, nb::handle stream_h) {
        Array x = to_array(x_h);
        Dtype dt = to_dtype(dtype_h);
        StreamOrDevice s = to_stream(stream_h);
        nb::gil_scoped_release nogil;
        return from_fp8(x, dt, s);
      },
      "x"_a, "dtype"_a = PyDtype{Dtype::bfloat16}, nb::kw_only(), "stream"_a = nb::none(),
      nb::sig("def from_fp8(x: array, dtype: Dtype = bfloat16, *, " MMKIT_STREAM_SIG ") -> array"),
      "Decodes MLX's FP8 E4M3 bytes (0x7F / 0xFF decode to +-480; there is no NaN).\n\n"
      "Args:\n"
      "    x (array): uint8 of any shape.\n"
      "    dtype (Dtype, optional): float32, float16 or bfloat16 (default bfloat16).\n" MMKIT_STREAM_DOC
      "\nReturns:\n"
      "    array: ``dtype``, same shape as ``x``.");
}

}  // namespace mmkit::py
