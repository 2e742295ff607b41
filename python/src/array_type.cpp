// mmkit.array: the Python face of mmkit::Array (shape/dtype queries, basic
// indexing as views, numpy / DLPack interchange without copies).
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <sstream>
#include <vector>

#include "mmkit_py.h"

namespace mmkit::py {

using namespace nb::literals;

namespace {

// Nested lists in row-major order from a flat host vector.
template <typename T, typename Make>
nb::object nest(const std::vector<T>& flat, const Shape& shape, size_t dim, size_t& pos, Make make) {
  if (dim == shape.size()) return make(flat[pos++]);
  nb::list l;
  for (int64_t i = 0; i < shape[dim]; ++i) l.append(nest(flat, shape, dim + 1, pos, make));
  return l;
}

nb::object tolist(const Array& a) {
  size_t pos = 0;
  if (is_floating(a.dtype())) {
    return nest(a.to_double_vector(), a.shape(), 0, pos, [](double v) { return nb::object(nb::float_(v)); });
  }
  // Integers go through int64 so that large int64 values stay exact.
  std::vector<int64_t> v = a.to_vector<int64_t>();
  if (a.dtype() == Dtype::bool_)
    return nest(v, a.shape(), 0, pos, [](int64_t x) { return nb::object(nb::bool_(x != 0)); });
  return nest(v, a.shape(), 0, pos, [](int64_t x) { return nb::object(nb::int_(x)); });
}

nb::object item(const Array& a) {
  if (a.size() != 1)
    throw nb::value_error(("item() needs an array with one element, got shape " + shape_str(a.shape())).c_str());
  if (is_floating(a.dtype())) return nb::float_(a.item_double());
  return nb::cast(tolist(a.reshape({})));
}

bool is_int_index(nb::handle h) {
  return !PyBool_Check(h.ptr()) && PyIndex_Check(h.ptr()) && !nb::isinstance<Array>(h);
}

// Basic indexing: ints, slices, None and one Ellipsis; the result is a view.
Array getitem(const Array& a, nb::handle key) {
  std::vector<nb::handle> items;
  if (nb::isinstance<nb::tuple>(key)) {
    for (nb::handle h : nb::borrow<nb::tuple>(key)) items.push_back(h);
  } else {
    items.push_back(key);
  }
  int consumed = 0;
  bool ellipsis = false;
  for (nb::handle h : items) {
    if (h.is(nb::ellipsis())) {
      if (ellipsis) throw nb::index_error("an index can only have a single ellipsis ('...')");
      ellipsis = true;
    } else if (is_int_index(h) || nb::isinstance<nb::slice>(h)) {
      ++consumed;
    } else if (!h.is_none()) {
      throw nb::index_error(("mmkit arrays support basic indexing only (integers, slices, None and '...'); got "
                             "an index of type '" +
                             nb::cast<std::string>(nb::str(h.type().attr("__name__"))) + "'")
                                .c_str());
    }
  }
  if (consumed > a.ndim())
    throw nb::index_error(("too many indices: array has " + std::to_string(a.ndim()) + " dimensions but " +
                           std::to_string(consumed) + " were indexed")
                              .c_str());
  Array r = a;
  int axis = 0;
  for (nb::handle h : items) {
    if (h.is(nb::ellipsis())) {
      axis += a.ndim() - consumed;
    } else if (h.is_none()) {
      r = r.expand_dims(axis++);
    } else if (is_int_index(h)) {
      const int64_t n = r.shape()[axis];
      const int64_t i = nb::cast<int64_t>(nb::int_(h));
      if (i < -n || i >= n)
        throw nb::index_error(("index " + std::to_string(i) + " is out of bounds for axis " + std::to_string(axis) +
                               " with size " + std::to_string(n))
                                  .c_str());
      r = r.index(axis, i);
    } else {
      const int64_t n = r.shape()[axis];
      auto [start, stop, step, len] = nb::borrow<nb::slice>(h).compute(static_cast<size_t>(n));
      (void)stop;
      if (len == 0) {
        r = r.slice(axis, 0, 0, 1);
      } else {
        // Array::slice wraps negative bounds like Python, so a stop just before
        // element 0 of a reversed slice is spelled -1 - n.
        const int64_t last = start + step * static_cast<int64_t>(len - 1);
        const int64_t end = step > 0 ? last + 1 : (last - 1 < 0 ? -1 - n : last - 1);
        r = r.slice(axis, start, end, step);
      }
      ++axis;
    }
  }
  return r;
}

std::string array_repr(const Array& a) {
  // numpy formats the values; bfloat16 prints through float32 (exact).
  Array h = a.dtype() == Dtype::bfloat16 ? a.astype(Dtype::float32) : a;
  nb::object np = nb::module_::import_("numpy");
  nb::object arr = to_numpy(h, nb::none(), nb::none());
  std::string body =
      nb::cast<std::string>(np.attr("array2string")(arr, "separator"_a = ", ", "prefix"_a = "array("));
  std::ostringstream os;
  os << "array(" << body << ", dtype=" << (a.dtype() == Dtype::bool_ ? "bool_" : dtype_name(a.dtype()));
  if (a.device().is_gpu()) os << ", device=" << a.device();
  os << ")";
  return os.str();
}

}  // namespace

void bind_array(nb::module_& m) {
  nb::class_<Array>(m, "array",
                    "An n-dimensional array on a device (mmkit.cpu or a CUDA GPU).\n\n"
                    "array(val, dtype=None) accepts numpy arrays, any DLPack producer (torch, cupy,\n"
                    "jax; CUDA tensors become GPU arrays), mmkit arrays, nested lists and scalars.\n"
                    "Arrays whose dtype mmkit has are wrapped without a copy (they share memory with\n"
                    "`val`, like numpy.asarray); float64 becomes float32, Python ints int32, Python\n"
                    "floats float32. bfloat16 numpy arrays come from ml_dtypes. Op inputs are\n"
                    "converted the same way, so ops take any of these directly.\n\n"
                    "np.asarray(a) and torch.from_dlpack(a) share the array's memory.")
      .def(
          "__init__",
          [](Array* self, nb::handle val, nb::handle dtype) { new (self) Array(to_array(val, to_optional_dtype(dtype))); },
          "val"_a, "dtype"_a = nb::none(),
          nb::sig("def __init__(self, val: object, dtype: Dtype | None = None) -> None"))
      .def_prop_ro(
          "shape", [](const Array& a) { return nb::tuple(nb::cast(a.shape())); },
          nb::for_getter(nb::sig("def shape(self) -> tuple[int, ...]")), "The shape, a tuple of ints.")
      .def_prop_ro("dtype", [](const Array& a) { return PyDtype{a.dtype()}; }, "The element type (mmkit.Dtype).")
      .def_prop_ro("ndim", &Array::ndim, "Number of dimensions.")
      .def_prop_ro("size", [](const Array& a) { return a.size(); }, "Number of elements.")
      .def_prop_ro("itemsize", &Array::itemsize, "Bytes per element.")
      .def_prop_ro("nbytes", &Array::nbytes, "Bytes of the elements (size * itemsize).")
      .def_prop_ro("device", &Array::device, "The device holding the memory (mmkit.Device).")
      .def(
          "astype", [](const Array& a, nb::handle dtype) { return a.astype(to_dtype(dtype)); }, "dtype"_a,
          nb::sig("def astype(self, dtype: Dtype) -> array"),
          "A contiguous copy converted to `dtype` (correctly rounded); no copy when the array is\n"
          "already contiguous with that dtype.")
      .def("item", &item, "The value of a one-element array as a Python float, int or bool.")
      .def("tolist", &tolist, "The values as nested Python lists (a scalar for a 0-d array).")
      .def("__getitem__", &getitem, nb::arg("key").none(), nb::sig("def __getitem__(self, key: object) -> array"),
           "Basic indexing (ints, slices, None, ...). The result is a view sharing memory.")
      .def("__len__",
           [](const Array& a) {
             if (a.ndim() == 0) throw nb::type_error("len() of a 0-d array");
             return a.shape()[0];
           })
      .def("__array__", &to_numpy, "dtype"_a = nb::none(), "copy"_a = nb::none(),
           nb::sig("def __array__(self, dtype: object | None = None, copy: bool | None = None) -> object"),
           "numpy view of the array (GPU arrays are copied to the host). bfloat16 arrays come\n"
           "back with dtype ml_dtypes.bfloat16.")
      .def("__dlpack__", &to_dlpack, nb::kw_only(), "stream"_a = nb::none(), "max_version"_a = nb::none(),
           "dl_device"_a = nb::none(), "copy"_a = nb::none(),
           nb::sig("def __dlpack__(self, *, stream: object | None = None, max_version: tuple[int, "
                   "int] | None = None, dl_device: tuple[int, int] | None = None, copy: bool | None = None) -> "
                   "object"),
           "DLPack capsule sharing the array's memory (GPU work on it is finished first).")
      .def("__dlpack_device__", &dlpack_device, nb::sig("def __dlpack_device__(self) -> tuple[int, int]"),
           "(device_type, device_id) in DLPack's numbering: (1, 0) for the cpu, (2, index) for a GPU.")
      .def("__repr__", &array_repr)
      .def(
          "_data_ptr", [](const Array& a) { return reinterpret_cast<uintptr_t>(a.raw_data()); },
          "Address of element [0, ..., 0] (for checking that memory is shared).");
}

}  // namespace mmkit::py
