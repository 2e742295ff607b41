// Python object <-> mmkit::Array conversions: DLPack / buffer import without
// copies, numpy and DLPack export without copies, dtype and stream arguments.
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <string>
#include <vector>

#include "mmkit_py.h"

namespace mmkit::py {

using namespace nb::literals;
namespace dl = nb::dlpack;

namespace {

// DLPack device types (dlpack.h) that mmkit can address.
constexpr int kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13;

std::optional<Dtype> from_dl_dtype(dl::dtype t) {
  if (t.lanes != 1) return std::nullopt;
  switch (static_cast<dl::dtype_code>(t.code)) {
    case dl::dtype_code::Float:
      if (t.bits == 32) return Dtype::float32;
      if (t.bits == 16) return Dtype::float16;
      break;
    case dl::dtype_code::Bfloat:
      if (t.bits == 16) return Dtype::bfloat16;
      break;
    case dl::dtype_code::Int:
      if (t.bits == 8) return Dtype::int8;
      if (t.bits == 16) return Dtype::int16;
      if (t.bits == 32) return Dtype::int32;
      if (t.bits == 64) return Dtype::int64;
      break;
    case dl::dtype_code::UInt:
      if (t.bits == 8) return Dtype::uint8;
      if (t.bits == 32) return Dtype::uint32;
      break;
    case dl::dtype_code::Bool:
      if (t.bits == 8) return Dtype::bool_;
      break;
    default:
      break;
  }
  return std::nullopt;
}

dl::dtype to_dl_dtype(Dtype d) {
  auto mk = [](dl::dtype_code c, int bits) {
    dl::dtype t;
    t.code = static_cast<uint8_t>(c);
    t.bits = static_cast<uint8_t>(bits);
    t.lanes = 1;
    return t;
  };
  switch (d) {
    case Dtype::float32: return mk(dl::dtype_code::Float, 32);
    case Dtype::float16: return mk(dl::dtype_code::Float, 16);
    case Dtype::bfloat16: return mk(dl::dtype_code::Bfloat, 16);
    case Dtype::uint32: return mk(dl::dtype_code::UInt, 32);
    case Dtype::uint8: return mk(dl::dtype_code::UInt, 8);
    case Dtype::int8: return mk(dl::dtype_code::Int, 8);
    case Dtype::int16: return mk(dl::dtype_code::Int, 16);
    case Dtype::int32: return mk(dl::dtype_code::Int, 32);
    case Dtype::int64: return mk(dl::dtype_code::Int, 64);
    case Dtype::bool_: return mk(dl::dtype_code::Bool, 8);
  }
  return mk(dl::dtype_code::Float, 32);
}

std::string dl_dtype_str(dl::dtype t) {
  static const char* names[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
  std::string s = t.code < 7 ? names[t.code] : "code" + std::to_string(t.code);
  s += std::to_string(t.bits);
  if (t.lanes != 1) s += "x" + std::to_string(t.lanes);
  return s;
}

using Imported = nb::ndarray<nb::ro>;

// Keeps an imported DLPack tensor (and with it the producer) alive. Released
// under the GIL: the last reference to an Array may drop on a thread without it.
std::shared_ptr<void> make_owner(const Imported& nd) {
  return std::shared_ptr<void>(new Imported(nd), [](void* p) {
    auto* o = static_cast<Imported*>(p);
    if (!Py_IsInitialized()) return;  // interpreter gone: nothing left to release
    nb::gil_scoped_acquire gil;
    delete o;
  });
}

// Wraps an imported tensor. `as` re-tags the element type (bfloat16 numpy
// arrays arrive as their uint16 view).
std::optional<Array> wrap_imported(const Imported& nd, std::optional<Dtype> as = std::nullopt) {
  std::optional<Dtype> dt = as ? as : from_dl_dtype(nd.dtype());
  if (!dt) return std::nullopt;
  Device dev;
  switch (nd.device_type()) {
    case kDLCPU:
    case kDLCUDAHost:
      dev = Device::cpu();
      break;
    case kDLCUDA:
    case kDLCUDAManaged:
      dev = Device::gpu(nd.device_id());
      break;
    default:
      throw_error("array", "cannot use memory of DLPack device type ", nd.device_type(),
                  " (mmkit addresses CPU and CUDA memory).");
  }
  const size_t n = nd.ndim();
  Shape shape(n);
  Strides strides(n);
  for (size_t i = 0; i < n; ++i) {
    shape[i] = static_cast<int64_t>(nd.shape(i));
    strides[i] = nd.stride(i);  // elements, as DLPack counts them
  }
  void* data = const_cast<void*>(static_cast<const void*>(nd.data()));
  return Array::wrap(data, shape, *dt, strides, dev, make_owner(nd));
}

bool try_import(nb::handle obj, Imported& out) {
  try {
    return nb::try_cast(obj, out, /*convert=*/false);
  } catch (const nb::python_error&) {
    return false;
  }
}

nb::module_ numpy() { return nb::module_::import_("numpy"); }

bool is_numpy_array(nb::handle obj) {
  // Avoids importing numpy for objects that cannot be numpy arrays.
  nb::handle tp = obj.type();
  return nb::hasattr(tp, "__module__") && nb::cast<std::string>(tp.attr("__module__")) == "numpy" &&
         nb::cast<std::string>(tp.attr("__name__")) == "ndarray";
}

// What numpy makes of the object, with mmkit's (MLX's) defaults: Python ints
// become int32 and floats float32; float64 becomes float32.
nb::object numpy_fallback(nb::handle obj) {
  nb::module_ np = numpy();
  if (PyBool_Check(obj.ptr())) return np.attr("asarray")(obj, "dtype"_a = "bool");
  if (PyLong_Check(obj.ptr())) return np.attr("asarray")(obj, "dtype"_a = "int32");
  if (PyFloat_Check(obj.ptr())) return np.attr("asarray")(obj, "dtype"_a = "float32");
  const bool from_python = nb::isinstance<nb::list>(obj) || nb::isinstance<nb::tuple>(obj);
  nb::object arr = np.attr("asarray")(obj);
  nb::object dt = arr.attr("dtype");
  const std::string kind = nb::cast<std::string>(dt.attr("kind"));
  const int size = nb::cast<int>(dt.attr("itemsize"));
  if (kind == "O" || kind == "U" || kind == "S" || kind == "V")
    throw nb::type_error(("mmkit.array: cannot convert an object of type '" +
                          nb::cast<std::string>(nb::str(obj.type().attr("__name__"))) + "' (numpy dtype " +
                          nb::cast<std::string>(nb::str(dt)) + ")")
                             .c_str());
  if (kind == "f" && size == 8) return arr.attr("astype")("float32");
  if (from_python && kind == "i" && size == 8) return arr.attr("astype")("int32");
  if (!nb::cast<bool>(dt.attr("isnative"))) return arr.attr("astype")(dt.attr("newbyteorder")("="));
  return arr;
}

}  // namespace

// ---------------------------------------------------------------------------
// Python -> Array

Array to_array(nb::handle obj, std::optional<Dtype> dtype) {
  auto finish = [&](Array a) { return dtype && *dtype != a.dtype() ? a.astype(*dtype) : a; };
  if (obj.is_none()) throw nb::type_error("expected an array, got None");
  if (nb::isinstance<Array>(obj)) return finish(nb::cast<const Array&>(obj));

  // ml_dtypes' bfloat16 has no DLPack code in numpy: import its uint16 view.
  if (is_numpy_array(obj) && nb::cast<std::string>(obj.attr("dtype").attr("name")) == "bfloat16") {
    Imported nd;
    if (try_import(obj.attr("view")("uint16"), nd)) return finish(*wrap_imported(nd, Dtype::bfloat16));
  }

  Imported nd;
  if (try_import(obj, nd)) {
    if (auto a = wrap_imported(nd)) return finish(*a);
    // A dtype mmkit lacks. float64 (and numpy quirks) convert on the host.
    const bool host = nd.device_type() == kDLCPU || nd.device_type() == kDLCUDAHost;
    const dl::dtype t = nd.dtype();
    const bool is_f64 = t.code == static_cast<uint8_t>(dl::dtype_code::Float) && t.bits == 64;
    if (!(host && is_f64))
      throw_error("array", "dtype ", dl_dtype_str(t),
                  " is not supported; mmkit has float32, float16, bfloat16, uint32, uint8, int8, int16, "
                  "int32, int64 and bool.");
  }

  nb::object arr = numpy_fallback(obj);
  Imported nd2;
  if (!try_import(arr, nd2))
    throw nb::type_error(("mmkit.array: cannot convert an object of type '" +
                          nb::cast<std::string>(nb::str(obj.type().attr("__name__"))) + "'")
                             .c_str());
  if (auto a = wrap_imported(nd2)) return finish(*a);
  throw_error("array", "numpy dtype ", nb::cast<std::string>(nb::str(arr.attr("dtype"))),
              " is not supported; mmkit has float32, float16, bfloat16, uint32, uint8, int8, int16, "
              "int32, int64 and bool.");
}

std::optional<Array> to_optional_array(nb::handle obj) {
  if (obj.is_none()) return std::nullopt;
  return to_array(obj);
}

std::optional<Dtype> to_optional_dtype(nb::handle obj) {
  if (obj.is_none()) return std::nullopt;
  return to_dtype(obj);
}

Dtype to_dtype(nb::handle obj) {
  if (nb::isinstance<PyDtype>(obj)) return nb::cast<const PyDtype&>(obj).value;
  std::string name;
  if (nb::isinstance<nb::str>(obj)) {
    name = nb::cast<std::string>(obj);
  } else {
    try {
      name = nb::cast<std::string>(numpy().attr("dtype")(obj).attr("name"));
    } catch (const nb::python_error&) {
      throw nb::type_error("dtype must be an mmkit.Dtype (e.g. mmkit.float16), a dtype name or a numpy dtype");
    }
  }
  if (name == "bool_") name = "bool";
  return dtype_from_name(name);
}

StreamOrDevice to_stream(nb::handle obj) {
  if (obj.is_none()) return std::monostate{};
  if (nb::isinstance<Device>(obj)) return nb::cast<Device>(obj);
  if (nb::isinstance<PyStream>(obj)) return nb::cast<const PyStream&>(obj).stream;
  if (nb::isinstance<nb::str>(obj)) return parse_device(nb::cast<std::string>(obj));
  throw nb::type_error("stream must be None, an mmkit.Device (mmkit.cpu, mmkit.gpu), an mmkit.Stream, "
                       "or 'cpu' / 'gpu' / 'gpu:N'");
}

// ---------------------------------------------------------------------------
// Array -> Python

namespace {

// A capsule owning a copy of `a` (shares its buffer), for ndarray owners.
nb::capsule array_capsule(const Array& a) {
  return nb::capsule(new Array(a), [](void* p) noexcept { delete static_cast<Array*>(p); });
}

template <typename Framework>
nb::object make_ndarray(const Array& a, dl::dtype dt, int device_type, int device_id) {
  const size_t n = static_cast<size_t>(a.ndim());
  std::vector<size_t> shape(n);
  for (size_t i = 0; i < n; ++i) shape[i] = static_cast<size_t>(a.shape()[i]);
  nb::ndarray<Framework> nd(a.raw_data(), n, shape.data(), array_capsule(a), a.strides().data(), dt,
                            device_type, device_id);
  return nb::cast(nd);  // the capsule owner keeps the buffer alive: a view, no copy
}

}  // namespace

nb::object to_numpy(const Array& a, nb::handle dtype, nb::handle copy) {
  const bool on_host = a.device().is_cpu();
  if (!copy.is_none() && !nb::cast<bool>(copy) && !on_host)
    throw nb::value_error("a gpu array cannot be viewed by numpy without a copy (copy=False)");
  Array h = on_host ? a : a.to(Device::cpu());
  nb::object out;
  if (h.dtype() == Dtype::bfloat16) {
    // numpy has no bfloat16: hand out the bits and view them as ml_dtypes.bfloat16.
    dl::dtype u16;
    u16.code = static_cast<uint8_t>(dl::dtype_code::UInt);
    u16.bits = 16;
    u16.lanes = 1;
    nb::object bits = make_ndarray<nb::numpy>(h, u16, kDLCPU, 0);
    nb::object bf16;
    try {
      bf16 = nb::module_::import_("ml_dtypes").attr("bfloat16");
    } catch (const nb::python_error&) {
      throw nb::import_error("bfloat16 arrays need the ml_dtypes package for numpy (pip install ml_dtypes)");
    }
    out = bits.attr("view")(bf16);
  } else {
    out = make_ndarray<nb::numpy>(h, to_dl_dtype(h.dtype()), kDLCPU, 0);
  }
  // A host array is still shared at this point; copy=True asks for a private one.
  const bool want_copy = !copy.is_none() && nb::cast<bool>(copy) && on_host;
  if (!dtype.is_none()) out = out.attr("astype")(dtype, "copy"_a = want_copy);
  else if (want_copy) out = out.attr("copy")();
  return out;
}

nb::object to_dlpack(const Array& a, nb::handle stream, nb::handle max_version, nb::handle dl_device,
                     nb::handle copy) {
  // Work on our streams may still be running: finish it before another
  // framework reads the memory on a stream we do not know about.
  if (a.device().is_gpu()) synchronize(a.device());
  const int dev_type = a.device().is_gpu() ? kDLCUDA : kDLCPU;
  nb::object nd = make_ndarray<nb::array_api>(a, to_dl_dtype(a.dtype()), dev_type, a.device().index);
  nb::dict kw;
  if (!stream.is_none()) kw["stream"] = stream;
  if (!max_version.is_none()) kw["max_version"] = max_version;
  if (!dl_device.is_none()) kw["dl_device"] = dl_device;
  if (!copy.is_none()) kw["copy"] = copy;
  return nd.attr("__dlpack__")(**kw);
}

nb::tuple dlpack_device(const Array& a) {
  if (a.device().is_gpu()) return nb::make_tuple(kDLCUDA, a.device().index);
  return nb::make_tuple(kDLCPU, 0);
}

}  // namespace mmkit::py
