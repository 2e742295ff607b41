// mmkit::Array: an owning, reference-counted, strided n-d array on a device.
//
// Copies of an Array share the buffer (like a shared_ptr). Views (slice,
// transpose, broadcast_to, reshape of contiguous data) share it too and only
// change shape/strides/offset. Strides and offsets are counted in elements.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <vector>

#include "mmkit/device.h"
#include "mmkit/dtype.h"

namespace mmkit {

using Shape = std::vector<int64_t>;
using Strides = std::vector<int64_t>;

std::ostream& operator<<(std::ostream& os, const Shape& s);  // "(2,3,4)"
std::string shape_str(const Shape& s);
int64_t shape_size(const Shape& s);
Strides row_major_strides(const Shape& s);

/// A block of memory on one device. `deleter` frees it (may be empty for
/// borrowed memory kept alive by `owner`).
struct Buffer {
  void* ptr = nullptr;
  size_t nbytes = 0;
  Device device;
  std::function<void(void*)> deleter;
  std::shared_ptr<void> owner;  // keeps borrowed memory alive (zero-copy wrapping)
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();
};

class Array {
 public:
  Array() = default;  // a null array (is_null() == true)

  // ---- construction -----------------------------------------------------
  /// Uninitialised contiguous array. Throws mmkit::Error on allocation failure.
  static Array empty(const Shape& shape, Dtype dtype, Device device = Device::cpu());
  static Array zeros(const Shape& shape, Dtype dtype, Device device = Device::cpu());
  static Array full(const Shape& shape, double value, Dtype dtype, Device device = Device::cpu());
  /// Copies `nbytes(shape, dtype)` bytes from host memory.
  static Array from_bytes(const void* data, const Shape& shape, Dtype dtype);
  template <typename T>
  static Array from_vector(const std::vector<T>& v, const Shape& shape) {
    return from_bytes(v.data(), shape, dtype_of<T>);
  }
  template <typename T>
  static Array from_vector(const std::vector<T>& v) {
    return from_bytes(v.data(), Shape{static_cast<int64_t>(v.size())}, dtype_of<T>);
  }
  /// A 0-d array holding `value` converted to `dtype`.
  static Array scalar(double value, Dtype dtype = Dtype::float32);
  /// Zero-copy view of caller memory. `strides` in elements (empty = row-major).
  /// `owner` is kept alive as long as any Array refers to the memory.
  static Array wrap(void* data, const Shape& shape, Dtype dtype, const Strides& strides = {},
                    Device device = Device::cpu(), std::shared_ptr<void> owner = nullptr);

  // ---- properties -------------------------------------------------------
  bool is_null() const { return buf_ == nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t shape(int axis) const;  // negative axes count from the end
  const Strides& strides() const { return strides_; }
  int64_t offset() const { return offset_; }
  Dtype dtype() const { return dtype_; }
  Device device() const;
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t size() const { return shape_size(shape_); }
  size_t itemsize() const { return mmkit::itemsize(dtype_); }
  size_t nbytes() const { return static_cast<size_t>(size()) * itemsize(); }
  /// Row-major contiguous (size-1 dims may have any stride).
  bool is_contiguous() const;
  const std::shared_ptr<Buffer>& buffer() const { return buf_; }

  /// Pointer to element [0,...,0] (the offset applied).
  void* raw_data() const;
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw_data());
  }

  // ---- views (never copy) -------------------------------------------------
  Array transpose(const std::vector<int>& axes) const;
  Array transpose() const;  // reverses all axes
  Array swapaxes(int a, int b) const;
  /// Same data, new shape; a view when the layout allows, otherwise a copy.
  Array reshape(const Shape& shape) const;
  Array broadcast_to(const Shape& shape) const;  // throws on incompatible shapes
  Array slice(int axis, int64_t start, int64_t stop, int64_t step = 1) const;
  Array index(int axis, int64_t i) const;  // drops `axis`
  Array expand_dims(int axis) const;
  Array squeeze(int axis) const;

  // ---- copies ---------------------------------------------------------------
  /// This array if already row-major contiguous, otherwise a contiguous copy.
  Array contiguous() const;
  Array copy() const;  // always a new contiguous buffer
  /// Converted copy (correct rounding); returns *this when dtype matches and
  /// the array is contiguous.
  Array astype(Dtype dtype) const;
  /// This array on `device` (a copy when it lives elsewhere).
  Array to(Device device) const;

  // ---- host access (CPU arrays; GPU arrays are copied first) ----------------
  double item_double() const;  // requires size() == 1
  std::vector<double> to_double_vector() const;  // row-major logical order
  template <typename T>
  std::vector<T> to_vector() const {
    Array c = to(Device::cpu()).astype(dtype_of<T>).contiguous();
    const T* p = c.data<T>();
    return std::vector<T>(p, p + c.size());
  }

 private:
  friend struct ArrayAccess;
  std::shared_ptr<Buffer> buf_;
  Shape shape_;
  Strides strides_;
  int64_t offset_ = 0;
  Dtype dtype_ = Dtype::float32;
};

std::ostream& operator<<(std::ostream& os, const Array& a);  // "array(shape=(2,3), dtype=float32, cpu)"

/// numpy broadcasting of two shapes; throws "[broadcast_shapes] Shapes (a) and (b) cannot be broadcast."
Shape broadcast_shapes(const Shape& a, const Shape& b);

}  // namespace mmkit
