// Shared declarations of the Python bindings: the Python-side types (Dtype,
// Stream) and the conversions between Python objects and mmkit::Array.
// The bindings only convert arguments and call the C++ API.
#pragma once

#include <nanobind/nanobind.h>

#include <optional>

#include "mmkit/mmkit.h"

namespace mmkit::py {

namespace nb = nanobind;

/// The Python `mmkit.Dtype`: a value type; module attributes hold one per dtype.
struct PyDtype {
  Dtype value = Dtype::float32;
};

/// The Python `mmkit.Stream`. Owned streams (from new_stream) are destroyed
/// with the object; default streams are not.
struct PyStream {
  Stream stream;
  bool owned = false;
  PyStream(Stream s, bool own) : stream(s), owned(own) {}
  PyStream(const PyStream&) = delete;
  PyStream& operator=(const PyStream&) = delete;
  ~PyStream();
};

/// Any array-like -> Array. mmkit arrays are shared; DLPack producers (numpy,
/// torch, cupy, jax) and buffer-protocol objects are wrapped without a copy
/// when mmkit has their dtype (the Array keeps the producer alive); float64
/// becomes float32, Python ints int32, Python floats float32 (copies).
/// `dtype`, when given, converts (a copy when it differs).
Array to_array(nb::handle obj, std::optional<Dtype> dtype = std::nullopt);
/// None -> nullopt, otherwise to_array.
std::optional<Array> to_optional_array(nb::handle obj);

/// mmkit.Dtype, a dtype name ("float16") or anything numpy.dtype() accepts;
/// None -> nullopt.
std::optional<Dtype> to_optional_dtype(nb::handle obj);
Dtype to_dtype(nb::handle obj);

/// None, an mmkit.Device, an mmkit.Stream or a device name ("cpu", "gpu", "gpu:1").
StreamOrDevice to_stream(nb::handle obj);

/// numpy view of a CPU array (GPU arrays are copied to the host first);
/// bfloat16 comes back as an ml_dtypes.bfloat16 array. Implements __array__.
nb::object to_numpy(const Array& a, nb::handle dtype, nb::handle copy);
/// A DLPack capsule that shares the array's memory (implements __dlpack__).
nb::object to_dlpack(const Array& a, nb::handle stream, nb::handle max_version, nb::handle dl_device,
                     nb::handle copy);
/// (device_type, device_id) in DLPack's numbering (1 = CPU, 2 = CUDA).
nb::tuple dlpack_device(const Array& a);

void bind_types(nb::module_& m);  // Dtype and its instances, Device, Stream, device helpers
void bind_array(nb::module_& m);  // mmkit.array
void bind_ops(nb::module_& m);    // quantize, dequantize and the matmul family

}  // namespace mmkit::py
