#include "mmkit/array.h"

#include <algorithm>
#include <limits>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <numeric>
#include <sstream>

#include <sys/mman.h>
#include <sys/sysinfo.h>

#include "core/gpu_hooks.h"
#include "mmkit/error.h"

namespace mmkit {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kHugeMin = size_t{4} << 20;

/// This machine's RAM and swap in bytes (0 when unknown), read once.
struct HostMemory {
  uint64_t ram = 0, swap = 0;
};
const HostMemory& host_memory() {
  static const HostMemory m = [] {
    HostMemory r;
    struct sysinfo si {};
    if (sysinfo(&si) == 0) {
      r.ram = static_cast<uint64_t>(si.totalram) * si.mem_unit;
      r.swap = static_cast<uint64_t>(si.totalswap) * si.mem_unit;
    }
    return r;
  }();
  return m;
}

/// RAM plus swap: more than this can never be backed.
uint64_t backable_host_bytes() { return host_memory().ram + host_memory().swap; }

/// Large host buffers (>= kHugeMin, sizes in 2 MiB steps) that died, kept for
/// the next allocation of the same size instead of going back to the OS: a
/// fresh buffer costs a page fault and a kernel page clear per 2 MiB on first
/// touch, which is most of the time of an op whose output is large and whose
/// work is small (block_masked_mm at low density, dequantize). Bounded by
/// MMKIT_CPU_CACHE_MB (default: 1/8 of RAM, at most 2048 MiB; 0 turns it off;
/// off by default under AddressSanitizer so freed memory stays poisoned).
class HostCache {
 public:
  static HostCache& get() {
    static HostCache* c = new HostCache();  // never destroyed: Arrays may die after main
    return *c;
  }
  void* take(size_t bytes) {
    if (limit_ == 0) return nullptr;
    std::lock_guard<std::mutex> lock(m_);
    auto it = free_.find(bytes);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    held_ -= bytes;
    return p;
  }
  void give(void* p, size_t bytes) {
    if (bytes > limit_) {
      std::free(p);
      return;
    }
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(m_);
      while (held_ + bytes > limit_ && !free_.empty()) {  // evict the largest first
        auto last = std::prev(free_.end());
        held_ -= last->first;
        drop.push_back(last->second);
        free_.erase(last);
      }
      free_.emplace(bytes, p);
      held_ += bytes;
    }
    for (void* q : drop) std::free(q);
  }

 private:
  HostCache() {
    uint64_t dflt = std::min<uint64_t>(host_memory().ram / 8, uint64_t{2048} << 20);
#if defined(__SANITIZE_ADDRESS__)
    dflt = 0;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    dflt = 0;
#endif
#endif
    limit_ = dflt;
    if (const char* e = std::getenv("MMKIT_CPU_CACHE_MB")) {
      char* end = nullptr;
      const unsigned long long mb = std::strtoull(e, &end, 10);
      if (end != e && *end == '\0') limit_ = static_cast<size_t>(std::min<unsigned long long>(mb, 1ull << 40) << 20);
    }
  }
  std::mutex m_;
  std::multimap<size_t, void*> free_;
  size_t held_ = 0;
  size_t limit_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------
// shapes

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? "," : "") << s[i];
  os << ")";
  return os.str();
}
std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << shape_str(s); }

int64_t shape_size(const Shape& s) {
  for (int64_t d : s)
    if (d == 0) return 0;
  int64_t n = 1;
  for (int64_t d : s)
    if (__builtin_mul_overflow(n, d, &n))  // a view (broadcast, reshape) may claim any shape
      throw_error("shape", "the element count of ", shape_str(s), " overflows int64.");
  return n;
}

Strides row_major_strides(const Shape& s) {
  Strides st(s.size(), 1);
  // Only an empty shape (a 0 among huge extents) can overflow here, and its
  // strides are never used to address an element: saturate.
  for (int i = static_cast<int>(s.size()) - 2; i >= 0; --i)
    if (__builtin_mul_overflow(st[i + 1], std::max<int64_t>(s[i + 1], 1), &st[i]))
      st[i] = std::numeric_limits<int64_t>::max();
  return st;
}

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da == db || db == 1) out[i] = da;
    else if (da == 1) out[i] = db;
    else throw Error("[broadcast_shapes] Shapes " + shape_str(a) + " and " + shape_str(b) + " cannot be broadcast.");
  }
  return out;
}

// ---------------------------------------------------------------------------
// buffers

Buffer::~Buffer() {
  if (deleter && ptr) deleter(ptr);
}

static constexpr size_t kAlign = 64;

static std::shared_ptr<Buffer> allocate(size_t nbytes, Device dev) {
  auto b = std::make_shared<Buffer>();
  b->nbytes = nbytes;
  b->device = dev;
  const size_t n = std::max<size_t>(nbytes, 1);
  if (dev.is_cpu()) {
    const size_t rounded = (n + kAlign - 1) / kAlign * kAlign;
    if (rounded < n) throw_error("array", "allocation of ", nbytes, " bytes overflows");
    // More than the machine's RAM and swap together can never be backed: refuse
    // it here, since with memory overcommit enabled (vm.overcommit_memory = 1)
    // malloc would succeed and the process be killed when the pages are touched.
    if (const uint64_t cap = backable_host_bytes(); cap != 0 && rounded > cap)
      throw_error("array", "out of memory allocating ", nbytes, " bytes on the cpu (the machine has ", cap,
                  " bytes of memory and swap)");
    // Large buffers: 2 MiB aligned and marked for transparent huge pages, so a
    // fresh output costs one page fault per 2 MiB instead of per 4 KiB (with
    // THP in "madvise" mode that is most of the time of a dequantize to a new
    // 200 MB array).
    const bool huge = rounded >= kHugeMin;
    const size_t align = huge ? kHugePage : kAlign;
    const size_t bytes = huge ? (rounded + kHugePage - 1) / kHugePage * kHugePage : rounded;
    if (bytes < rounded) throw_error("array", "allocation of ", nbytes, " bytes overflows");
    void* p = huge ? HostCache::get().take(bytes) : nullptr;
    if (!p) {
      p = std::aligned_alloc(align, bytes);
      if (!p) throw_error("array", "out of memory allocating ", nbytes, " bytes on the cpu");
#ifdef MADV_HUGEPAGE
      if (huge) (void)madvise(p, bytes, MADV_HUGEPAGE);  // advisory: failure only costs speed
#endif
    }
    b->ptr = p;
    if (huge) b->deleter = [bytes](void* q) { HostCache::get().give(q, bytes); };
    else b->deleter = [](void* q) { std::free(q); };
  } else {
    const auto& h = detail::require_gpu("array");
    const int idx = dev.index;
    b->ptr = h.allocate(n, idx);
    b->deleter = [idx](void* q) {
      if (auto* hk = detail::gpu_hooks()) hk->deallocate(q, idx);
    };
  }
  return b;
}

static size_t checked_nbytes(const Shape& shape, Dtype dtype) {
  size_t n = mmkit::itemsize(dtype);
  for (int64_t d : shape) {
    if (d < 0) throw_error("array", "negative dimension in shape ", shape_str(shape));
    if (d != 0 && n > SIZE_MAX / static_cast<size_t>(d))
      throw_error("array", "shape ", shape_str(shape), " is too large to allocate");
    n *= static_cast<size_t>(d);
  }
  return n;
}

struct ArrayAccess {
  static Array make(std::shared_ptr<Buffer> b, Shape shape, Strides strides, int64_t offset, Dtype dtype) {
    Array a;
    a.buf_ = std::move(b);
    a.shape_ = std::move(shape);
    a.strides_ = std::move(strides);
    a.offset_ = offset;
    a.dtype_ = dtype;
    return a;
  }
};

Array Array::empty(const Shape& shape, Dtype dtype, Device device) {
  const size_t nb = checked_nbytes(shape, dtype);
  return ArrayAccess::make(allocate(nb, device), shape, row_major_strides(shape), 0, dtype);
}

Array Array::zeros(const Shape& shape, Dtype dtype, Device device) {
  Array a = empty(shape, dtype, device);
  if (device.is_cpu()) std::memset(a.raw_data(), 0, a.nbytes());
  else detail::require_gpu("zeros").memset_zero(a.raw_data(), a.nbytes(), device.index);
  return a;
}

Array Array::full(const Shape& shape, double value, Dtype dtype, Device device) {
  Array s = scalar(value, dtype);
  Array a = s.broadcast_to(shape).copy();
  return device.is_cpu() ? a : a.to(device);
}

Array Array::from_bytes(const void* data, const Shape& shape, Dtype dtype) {
  Array a = empty(shape, dtype);
  if (a.nbytes()) std::memcpy(a.raw_data(), data, a.nbytes());
  return a;
}

template <typename T>
static void store_scalar(void* p, double v) {
  if constexpr (std::is_same_v<T, float16_t> || std::is_same_v<T, bfloat16_t>) {
    *static_cast<T*>(p) = T(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, bool>) {
    *static_cast<bool*>(p) = v != 0.0;
  } else {
    *static_cast<T*>(p) = static_cast<T>(v);
  }
}

Array Array::scalar(double value, Dtype dtype) {
  Array a = empty({}, dtype);
  void* p = a.raw_data();
  switch (dtype) {
    case Dtype::float32: store_scalar<float>(p, value); break;
    case Dtype::float16: store_scalar<float16_t>(p, value); break;
    case Dtype::bfloat16: store_scalar<bfloat16_t>(p, value); break;
    case Dtype::uint32: store_scalar<uint32_t>(p, value); break;
    case Dtype::uint8: store_scalar<uint8_t>(p, value); break;
    case Dtype::int8: store_scalar<int8_t>(p, value); break;
    case Dtype::int16: store_scalar<int16_t>(p, value); break;
    case Dtype::int32: store_scalar<int32_t>(p, value); break;
    case Dtype::int64: store_scalar<int64_t>(p, value); break;
    case Dtype::bool_: store_scalar<bool>(p, value); break;
  }
  return a;
}

Array Array::wrap(void* data, const Shape& shape, Dtype dtype, const Strides& strides, Device device,
                  std::shared_ptr<void> owner) {
  checked_nbytes(shape, dtype);
  if (!strides.empty() && strides.size() != shape.size())
    throw_error("array", "strides ", shape_str(strides), " do not match shape ", shape_str(shape));
  if (device.is_gpu()) detail::require_gpu("array");
  auto b = std::make_shared<Buffer>();
  b->ptr = data;
  b->device = device;
  b->owner = std::move(owner);
  // nbytes: the extent reachable from data (informational)
  int64_t hi = 0;
  Strides st = strides.empty() ? row_major_strides(shape) : strides;
  bool empty_arr = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0) empty_arr = true;
    if (st[i] > 0) hi += (shape[i] - 1) * st[i];
  }
  b->nbytes = empty_arr ? 0 : static_cast<size_t>(hi + 1) * mmkit::itemsize(dtype);
  return ArrayAccess::make(std::move(b), shape, std::move(st), 0, dtype);
}

// ---------------------------------------------------------------------------
// properties

static int norm_axis(int axis, int ndim, const char* what) {
  int a = axis < 0 ? axis + ndim : axis;
  if (a < 0 || a >= ndim) throw_error("array", what, ": axis ", axis, " is out of range for ", ndim, " dimensions");
  return a;
}

int64_t Array::shape(int axis) const { return shape_[norm_axis(axis, ndim(), "shape")]; }

Device Array::device() const { return buf_ ? buf_->device : Device::cpu(); }

bool Array::is_contiguous() const {
  for (int64_t d : shape_)
    if (d == 0) return true;  // empty (its extents may be huge: no product below)
  int64_t expected = 1;
  for (int i = ndim() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

void* Array::raw_data() const {
  if (!buf_) return nullptr;
  return static_cast<char*>(buf_->ptr) + offset_ * static_cast<int64_t>(itemsize());
}

// ---------------------------------------------------------------------------
// views

Array Array::transpose(const std::vector<int>& axes) const {
  if (static_cast<int>(axes.size()) != ndim())
    throw_error("transpose", "expected ", ndim(), " axes but got ", axes.size());
  Shape s(ndim());
  Strides st(ndim());
  std::vector<bool> seen(ndim(), false);
  for (int i = 0; i < ndim(); ++i) {
    int a = norm_axis(axes[i], ndim(), "transpose");
    if (seen[a]) throw_error("transpose", "repeated axis ", axes[i]);
    seen[a] = true;
    s[i] = shape_[a];
    st[i] = strides_[a];
  }
  return ArrayAccess::make(buf_, s, st, offset_, dtype_);
}

Array Array::transpose() const {
  std::vector<int> ax(ndim());
  for (int i = 0; i < ndim(); ++i) ax[i] = ndim() - 1 - i;
  return transpose(ax);
}

Array Array::swapaxes(int a, int b) const {
  std::vector<int> ax(ndim());
  std::iota(ax.begin(), ax.end(), 0);
  std::swap(ax[norm_axis(a, ndim(), "swapaxes")], ax[norm_axis(b, ndim(), "swapaxes")]);
  return transpose(ax);
}

Array Array::reshape(const Shape& new_shape) const {
  if (shape_size(new_shape) != size())
    throw_error("reshape", "cannot reshape array of shape ", shape_str(shape_), " into shape ", shape_str(new_shape));
  if (is_contiguous()) return ArrayAccess::make(buf_, new_shape, row_major_strides(new_shape), offset_, dtype_);
  return contiguous().reshape(new_shape);
}

Array Array::broadcast_to(const Shape& target) const {
  (void)shape_size(target);  // refuse views whose element count overflows
  if (target.size() < shape_.size())
    throw_error("broadcast_to", "Cannot broadcast array of shape ", shape_str(shape_), " into shape ", shape_str(target), ".");
  const size_t lead = target.size() - shape_.size();
  Strides st(target.size(), 0);
  for (size_t i = 0; i < target.size(); ++i) {
    if (i < lead) continue;
    int64_t d = shape_[i - lead];
    if (d == target[i]) st[i] = strides_[i - lead];
    else if (d == 1) st[i] = 0;
    else throw_error("broadcast_to", "Cannot broadcast array of shape ", shape_str(shape_), " into shape ", shape_str(target), ".");
  }
  return ArrayAccess::make(buf_, target, st, offset_, dtype_);
}

Array Array::slice(int axis, int64_t start, int64_t stop, int64_t step) const {
  int a = norm_axis(axis, ndim(), "slice");
  if (step == 0) throw_error("slice", "step cannot be zero");
  const int64_t n = shape_[a];
  auto clampi = [&](int64_t v, bool is_start) {
    if (v < 0) v += n;
    if (step > 0) return std::clamp<int64_t>(v, 0, n);
    (void)is_start;
    return std::clamp<int64_t>(v, -1, n - 1);
  };
  int64_t s0 = clampi(start, true), s1 = clampi(stop, false);
  int64_t len = step > 0 ? std::max<int64_t>(0, (s1 - s0 + step - 1) / step)
                         : std::max<int64_t>(0, (s0 - s1 + (-step) - 1) / (-step));
  Shape s = shape_;
  Strides st = strides_;
  s[a] = len;
  st[a] = strides_[a] * step;
  int64_t off = offset_ + (len > 0 ? s0 * strides_[a] : 0);
  return ArrayAccess::make(buf_, s, st, off, dtype_);
}

Array Array::index(int axis, int64_t i) const {
  int a = norm_axis(axis, ndim(), "index");
  int64_t j = i < 0 ? i + shape_[a] : i;
  if (j < 0 || j >= shape_[a]) throw_error("index", "index ", i, " is out of bounds for axis ", a, " with size ", shape_[a]);
  Shape s = shape_;
  Strides st = strides_;
  int64_t off = offset_ + j * strides_[a];
  s.erase(s.begin() + a);
  st.erase(st.begin() + a);
  return ArrayAccess::make(buf_, s, st, off, dtype_);
}

Array Array::expand_dims(int axis) const {
  int a = axis < 0 ? axis + ndim() + 1 : axis;
  if (a < 0 || a > ndim()) throw_error("expand_dims", "axis ", axis, " is out of range for ", ndim(), " dimensions");
  Shape s = shape_;
  Strides st = strides_;
  s.insert(s.begin() + a, 1);
  st.insert(st.begin() + a, a < ndim() ? strides_[a] * shape_[a] : 1);
  return ArrayAccess::make(buf_, s, st, offset_, dtype_);
}

Array Array::squeeze(int axis) const {
  int a = norm_axis(axis, ndim(), "squeeze");
  if (shape_[a] != 1) throw_error("squeeze", "cannot squeeze axis ", axis, " of size ", shape_[a]);
  Shape s = shape_;
  Strides st = strides_;
  s.erase(s.begin() + a);
  st.erase(st.begin() + a);
  return ArrayAccess::make(buf_, s, st, offset_, dtype_);
}

// ---------------------------------------------------------------------------
// copies

Array Array::copy() const {
  if (is_null()) throw_error("array", "copy of a null array");
  Array out = empty(shape_, dtype_, device());
  if (device().is_cpu()) detail::cpu_copy_cast(*this, out);
  else detail::require_gpu("copy").copy_cast(*this, out);
  return out;
}

Array Array::contiguous() const {
  if (is_null()) throw_error("array", "contiguous() of a null array");
  return is_contiguous() ? *this : copy();
}

Array Array::astype(Dtype dtype) const {
  if (is_null()) throw_error("array", "astype() of a null array");
  if (dtype == dtype_) return contiguous();
  Array out = empty(shape_, dtype, device());
  if (device().is_cpu()) detail::cpu_copy_cast(*this, out);
  else detail::require_gpu("astype").copy_cast(*this, out);
  return out;
}

Array Array::to(Device dev) const {
  if (is_null()) throw_error("array", "to() of a null array");
  if (dev == device()) return *this;
  Array src = contiguous();
  Array out = empty(shape_, dtype_, dev);
  if (out.nbytes())
    detail::require_gpu("to").copy_bytes(out.raw_data(), dev, src.raw_data(), src.device(), out.nbytes());
  return out;
}

double Array::item_double() const {
  if (size() != 1) throw_error("item", "item() needs an array of size 1 but got shape ", shape_str(shape_));
  return to_double_vector()[0];
}

std::vector<double> Array::to_double_vector() const {
  Array c = to(Device::cpu());
  std::vector<double> out(static_cast<size_t>(size()));
  Array f = Array::empty(shape_, Dtype::float32);
  // int64 values may not fit float32 exactly: convert integers through int64.
  if (is_floating(dtype_)) {
    detail::cpu_copy_cast(c, f);
    const float* p = f.data<float>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
  } else {
    Array g = Array::empty(shape_, Dtype::int64);
    detail::cpu_copy_cast(c, g);
    const int64_t* p = g.data<int64_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(p[i]);
  }
  return out;
}

std::ostream& operator<<(std::ostream& os, const Array& a) {
  if (a.is_null()) return os << "array(null)";
  return os << "array(shape=" << shape_str(a.shape()) << ", dtype=" << a.dtype() << ", " << a.device() << ")";
}

}  // namespace mmkit
