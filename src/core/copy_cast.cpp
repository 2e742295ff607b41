// Strided CPU copy with dtype conversion (the engine behind contiguous(),
// astype() and broadcast materialisation).
#include <cstring>
#include <limits>
#include <vector>
#include <type_traits>

#include "core/gpu_hooks.h"
#include "mmkit/error.h"

namespace mmkit::detail {
namespace {

template <typename D, typename S>
inline D convert(S v) {
  if constexpr (std::is_same_v<D, S>) {
    return v;
  } else if constexpr (std::is_same_v<S, float16_t> || std::is_same_v<S, bfloat16_t>) {
    return convert<D>(static_cast<float>(v));
  } else if constexpr (std::is_same_v<D, float16_t> || std::is_same_v<D, bfloat16_t>) {
    return D(static_cast<float>(v));
  } else if constexpr (std::is_same_v<D, bool>) {
    return v != S(0);
  } else if constexpr (std::is_floating_point_v<S> && std::is_integral_v<D>) {
    // float -> integer: truncation toward zero (NaN -> 0), saturating at the limits
    if (!(v == v)) return D(0);
    const double d = static_cast<double>(v);
    if (d <= static_cast<double>(std::numeric_limits<D>::min())) return std::numeric_limits<D>::min();
    if (d >= static_cast<double>(std::numeric_limits<D>::max())) return std::numeric_limits<D>::max();
    return static_cast<D>(v);
  } else {
    return static_cast<D>(v);
  }
}

template <typename D, typename S>
void copy_typed(const Array& src, Array& dst) {
  const int64_t n = src.size();
  if (n == 0) return;
  D* out = dst.data<D>();
  const S* in = src.data<S>();
  const int nd = src.ndim();
  if (src.is_contiguous()) {
    if constexpr (std::is_same_v<D, S>) {
      std::memcpy(out, in, static_cast<size_t>(n) * sizeof(S));
    } else {
      for (int64_t i = 0; i < n; ++i) out[i] = convert<D>(in[i]);
    }
    return;
  }
  // Walk the logical index with the innermost axis as a tight loop.
  const Shape& shape = src.shape();
  const Strides& st = src.strides();
  const int64_t inner = shape[nd - 1];
  const int64_t inner_st = st[nd - 1];
  std::vector<int64_t> idx(nd, 0);
  int64_t off = 0;
  for (int64_t o = 0; o < n; o += inner) {
    const S* p = in + off;
    D* q = out + o;
    for (int64_t i = 0; i < inner; ++i) q[i] = convert<D>(p[i * inner_st]);
    for (int ax = nd - 2; ax >= 0; --ax) {
      if (++idx[ax] < shape[ax]) {
        off += st[ax];
        break;
      }
      off -= st[ax] * (shape[ax] - 1);
      idx[ax] = 0;
    }
  }
}

template <typename S>
void dispatch_dst(const Array& src, Array& dst) {
  switch (dst.dtype()) {
    case Dtype::float32: return copy_typed<float, S>(src, dst);
    case Dtype::float16: return copy_typed<float16_t, S>(src, dst);
    case Dtype::bfloat16: return copy_typed<bfloat16_t, S>(src, dst);
    case Dtype::uint32: return copy_typed<uint32_t, S>(src, dst);
    case Dtype::uint8: return copy_typed<uint8_t, S>(src, dst);
    case Dtype::int8: return copy_typed<int8_t, S>(src, dst);
    case Dtype::int16: return copy_typed<int16_t, S>(src, dst);
    case Dtype::int32: return copy_typed<int32_t, S>(src, dst);
    case Dtype::int64: return copy_typed<int64_t, S>(src, dst);
    case Dtype::bool_: return copy_typed<bool, S>(src, dst);
  }
}

}  // namespace

void cpu_copy_cast(const Array& src, Array& dst) {
  if (src.shape() != dst.shape()) throw_error("copy", "shape mismatch ", shape_str(src.shape()), " vs ", shape_str(dst.shape()));
  if (src.ndim() == 0) {
    // a 0-d array is contiguous; reuse the contiguous path
  }
  switch (src.dtype()) {
    case Dtype::float32: return dispatch_dst<float>(src, dst);
    case Dtype::float16: return dispatch_dst<float16_t>(src, dst);
    case Dtype::bfloat16: return dispatch_dst<bfloat16_t>(src, dst);
    case Dtype::uint32: return dispatch_dst<uint32_t>(src, dst);
    case Dtype::uint8: return dispatch_dst<uint8_t>(src, dst);
    case Dtype::int8: return dispatch_dst<int8_t>(src, dst);
    case Dtype::int16: return dispatch_dst<int16_t>(src, dst);
    case Dtype::int32: return dispatch_dst<int32_t>(src, dst);
    case Dtype::int64: return dispatch_dst<int64_t>(src, dst);
    case Dtype::bool_: return dispatch_dst<bool>(src, dst);
  }
}

}  // namespace mmkit::detail
