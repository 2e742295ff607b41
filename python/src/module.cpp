// mmkit._core: the extension module. Dtypes, devices and streams live here;
// the array type and the ops are bound in array_type.cpp and ops.cpp.
#include <nanobind/stl/string.h>

#include <sstream>

#include "mmkit_py.h"

namespace mmkit::py {

using namespace nb::literals;

PyStream::~PyStream() {
  if (owned && stream.handle) {
    try {
      stream.destroy();
    } catch (...) {
      // A failing destroy at teardown must not throw out of a destructor.
    }
  }
}

namespace {

// Python attribute names: bool is spelled bool_ (as in numpy and MLX).
const char* attr_name(Dtype d) { return d == Dtype::bool_ ? "bool_" : dtype_name(d); }

constexpr Dtype kAllDtypes[] = {Dtype::float32, Dtype::float16, Dtype::bfloat16, Dtype::uint32, Dtype::uint8,
                                Dtype::int8,    Dtype::int16,   Dtype::int32,    Dtype::int64,  Dtype::bool_};

Device device_from(nb::handle h) {
  if (nb::isinstance<Device>(h)) return nb::cast<Device>(h);
  if (nb::isinstance<nb::str>(h)) return parse_device(nb::cast<std::string>(h));
  if (nb::isinstance<PyStream>(h)) return nb::cast<const PyStream&>(h).stream.device;
  throw nb::type_error("expected an mmkit.Device, an mmkit.Stream or a device name ('cpu', 'gpu', 'gpu:N')");
}

std::string device_repr(const Device& d) {
  return std::string("Device(") + (d.is_cpu() ? "cpu" : "gpu") + ", " + std::to_string(d.index) + ")";
}

}  // namespace

void bind_types(nb::module_& m) {
  nb::class_<PyDtype>(m, "Dtype",
                      "An element type. The instances are module attributes: mmkit.float32, float16, bfloat16,\n"
                      "uint32, uint8, int8, int16, int32, int64, bool_.")
      .def_prop_ro("size", [](const PyDtype& d) { return itemsize(d.value); }, "Size of one element in bytes.")
      .def_prop_ro("name", [](const PyDtype& d) { return std::string(dtype_name(d.value)); },
                   "The dtype's name, e.g. 'float16' (bool is 'bool').")
      .def("__repr__", [](const PyDtype& d) { return std::string("mmkit.") + attr_name(d.value); })
      .def("__eq__", [](const PyDtype& a, nb::handle b) {
        return nb::isinstance<PyDtype>(b) && nb::cast<const PyDtype&>(b).value == a.value;
      })
      .def("__ne__", [](const PyDtype& a, nb::handle b) {
        return !(nb::isinstance<PyDtype>(b) && nb::cast<const PyDtype&>(b).value == a.value);
      })
      .def("__hash__", [](const PyDtype& d) { return static_cast<int>(d.value); });
  for (Dtype d : kAllDtypes) m.attr(attr_name(d)) = PyDtype{d};

  nb::class_<Device>(m, "Device",
                     "A device: Device('cpu') or Device('gpu', index). mmkit.cpu and mmkit.gpu are the\n"
                     "CPU and the first CUDA GPU. Wherever an op takes `stream`, a Device means that\n"
                     "device's default stream.")
      .def(
          "__init__",
          [](Device* self, const std::string& type, int index) {
            Device d = parse_device(type);
            if (index != 0) {
              if (d.is_cpu()) throw_error("device", "the cpu device has index 0, got ", index, ".");
              d.index = index;
            }
            new (self) Device(d);
          },
          "type"_a, "index"_a = 0)
      .def_prop_ro("type", [](const Device& d) { return std::string(d.is_cpu() ? "cpu" : "gpu"); },
                   "'cpu' or 'gpu'.")
      .def_ro("index", &Device::index, "Device index (0 for the cpu).")
      .def("__repr__", &device_repr)
      .def("__str__", [](const Device& d) {
        std::ostringstream os;
        os << d;
        return os.str();
      })
      .def("__eq__", [](const Device& a, nb::handle b) { return nb::isinstance<Device>(b) && nb::cast<Device>(b) == a; })
      .def("__ne__", [](const Device& a, nb::handle b) { return !(nb::isinstance<Device>(b) && nb::cast<Device>(b) == a); })
      .def("__hash__", [](const Device& d) { return d.is_cpu() ? -1 : d.index; });
  m.attr("cpu") = Device::cpu();
  m.attr("gpu") = Device::gpu(0);

  nb::class_<PyStream>(m, "Stream",
                       "An ordered queue of work on one device (a CUDA stream on the GPU). Create one with\n"
                       "mmkit.new_stream(device); mmkit.default_stream(device) is the device's default stream.\n"
                       "A stream made by new_stream is destroyed with this object: synchronize() first.")
      .def_prop_ro("device", [](const PyStream& s) { return s.stream.device; }, "The stream's device.")
      .def(
          "synchronize",
          [](const PyStream& s) {
            nb::gil_scoped_release nogil;
            s.stream.synchronize();
          },
          "Blocks until all work queued on this stream is done.")
      .def("__repr__",
           [](const PyStream& s) {
             std::ostringstream os;
             os << "Stream(" << device_repr(s.stream.device) << ", " << s.stream.handle << ")";
             return os.str();
           })
      .def("__eq__", [](const PyStream& a, nb::handle b) {
        if (!nb::isinstance<PyStream>(b)) return false;
        const auto& o = nb::cast<const PyStream&>(b).stream;
        return o.device == a.stream.device && o.handle == a.stream.handle;
      });

  m.def(
      "new_stream",
      [](nb::handle device) { return new PyStream(Stream::create(device_from(device)), true); },
      "device"_a, nb::rv_policy::take_ownership,
      nb::sig("def new_stream(device: Device | str) -> Stream"),
      "Creates a new stream on `device` (on the GPU a non-blocking CUDA stream).");
  m.def(
      "default_stream", [](nb::handle device) { return new PyStream(Stream(device_from(device)), false); },
      "device"_a, nb::rv_policy::take_ownership,
      nb::sig("def default_stream(device: Device | str) -> Stream"),
      "The default stream of `device` (the legacy default CUDA stream on the GPU).");
  m.def(
      "synchronize",
      [](nb::handle device) {
        Device d = device.is_none() ? Device::gpu() : device_from(device);
        if (d.is_gpu() && gpu_count() == 0) return;  // nothing can be in flight
        nb::gil_scoped_release nogil;
        synchronize(d);
      },
      "device"_a = nb::none(), nb::sig("def synchronize(device: Device | Stream | str | None = None) -> None"),
      "Blocks until all work on `device` is done (default: the first GPU; a no-op without one).\n"
      "Out-of-range gather indices found on the GPU are reported here at the latest.");
  m.def("gpu_count", &gpu_count, "Number of CUDA GPUs mmkit can use (0 when built without CUDA).");
  m.def("built_with_cuda", &built_with_cuda, "True when this build of mmkit contains the CUDA backend.");
}

}  // namespace mmkit::py

NB_MODULE(_core, m) {
  namespace nb = nanobind;
  m.doc() =
      "mmkit: MLX-compatible quantize / dequantize and quantized, gathered and block-masked\n"
      "matrix multiplications on x86 CPUs and NVIDIA GPUs.";
  m.attr("__version__") = mmkit::version();
  mmkit::py::bind_types(m);
  mmkit::py::bind_array(m);
  mmkit::py::bind_ops(m);
}
