// copy_cast: dst (contiguous) = cast(src (strided)) on the GPU, for every
// pair of the ten dtypes, with exactly the conversions of the CPU path
// (src/core/copy_cast.cpp): half types through float32 with round-to-nearest-
// even, float -> integer truncating and saturating (NaN -> 0), -> bool as != 0.
// Preconditions: src and dst on the same GPU, equal shapes. Memory-bound:
// one element per thread per step, grid-stride; contiguous same-dtype copies
// go to cudaMemcpyAsync. Runs on the legacy default stream (runtime.h).
// Tests: tests/test_cuda_runtime.cpp (CudaCopyCast.*).
#include <cuda_runtime.h>

#include <limits>
#include <type_traits>

#include "cuda/device/common.cuh"
#include "cuda/runtime.h"
#include "mmkit/error.h"

namespace mmkit::cuda {
namespace {

struct F16 {
  uint16_t bits;
};
struct BF16 {
  uint16_t bits;
};

template <typename T>
__device__ __forceinline__ float half_to_f(T v) {
  if constexpr (std::is_same_v<T, F16>) return f16_bits_to_f(v.bits);
  else return bf16_bits_to_f(v.bits);
}

template <typename T>
constexpr bool is_half_v = std::is_same_v<T, F16> || std::is_same_v<T, BF16>;

template <typename D, typename S>
__device__ __forceinline__ D convert(S v) {
  if constexpr (std::is_same_v<D, S>) {
    return v;
  } else if constexpr (is_half_v<S>) {
    return convert<D>(half_to_f(v));
  } else if constexpr (std::is_same_v<D, F16>) {
    return F16{f_to_f16_bits(static_cast<float>(v))};
  } else if constexpr (std::is_same_v<D, BF16>) {
    return BF16{f_to_bf16_bits(static_cast<float>(v))};
  } else if constexpr (std::is_same_v<D, bool>) {
    return v != S(0);
  } else if constexpr (std::is_floating_point_v<S> && std::is_integral_v<D>) {
    if (!(v == v)) return D(0);
    const double d = static_cast<double>(v);
    if (d <= static_cast<double>(std::numeric_limits<D>::min())) return std::numeric_limits<D>::min();
    if (d >= static_cast<double>(std::numeric_limits<D>::max())) return std::numeric_limits<D>::max();
    return static_cast<D>(v);
  } else {
    return static_cast<D>(v);
  }
}

constexpr int kMaxDims = 12;
struct Layout {
  int ndim;
  int64_t shape[kMaxDims];
  int64_t stride[kMaxDims];
};

template <typename D, typename S>
__global__ void copy_cast_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n, Layout l) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t rem = i, off = 0;
    for (int d = l.ndim - 1; d >= 0; --d) {
      const int64_t q = rem / l.shape[d];
      off += (rem - q * l.shape[d]) * l.stride[d];
      rem = q;
    }
    dst[i] = convert<D>(src[off]);
  }
}

/// Drops size-1 dims and merges dims that are contiguous with each other.
Layout collapse(const Array& a) {
  Layout l{};
  int64_t sh[64], st[64];
  int n = 0;
  for (int d = 0; d < a.ndim(); ++d) {
    if (a.shape()[d] == 1) continue;
    if (n > 0 && st[n - 1] == a.strides()[d] * a.shape()[d]) {
      sh[n - 1] *= a.shape()[d];
      st[n - 1] = a.strides()[d];
    } else {
      sh[n] = a.shape()[d];
      st[n] = a.strides()[d];
      ++n;
    }
  }
  if (n == 0) {
    sh[0] = 1;
    st[0] = 1;
    n = 1;
  }
  if (n > kMaxDims)
    throw_error("copy", "a strided GPU array with ", n, " non-mergeable dimensions is not supported (at most ",
                kMaxDims, ").");
  l.ndim = n;
  for (int d = 0; d < n; ++d) {
    l.shape[d] = sh[d];
    l.stride[d] = st[d];
  }
  return l;
}

template <typename D, typename S>
void launch(const Array& src, Array& dst) {
  const int64_t n = src.size();
  const Layout l = collapse(src);
  const int threads = 256;
  const int64_t want = ceil_div(n, threads);
  const int blocks = static_cast<int>(want < 65536 ? want : 65536);
  copy_cast_kernel<D, S><<<blocks, threads, 0, cudaStreamLegacy>>>(static_cast<const S*>(src.raw_data()),
                                                                   static_cast<D*>(dst.raw_data()), n, l);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw_cuda("copy", e, "copy_cast_kernel launch");
}

template <typename S>
void dispatch_dst(const Array& src, Array& dst) {
  switch (dst.dtype()) {
    case Dtype::float32: return launch<float, S>(src, dst);
    case Dtype::float16: return launch<F16, S>(src, dst);
    case Dtype::bfloat16: return launch<BF16, S>(src, dst);
    case Dtype::uint32: return launch<uint32_t, S>(src, dst);
    case Dtype::uint8: return launch<uint8_t, S>(src, dst);
    case Dtype::int8: return launch<int8_t, S>(src, dst);
    case Dtype::int16: return launch<int16_t, S>(src, dst);
    case Dtype::int32: return launch<int32_t, S>(src, dst);
    case Dtype::int64: return launch<int64_t, S>(src, dst);
    case Dtype::bool_: return launch<bool, S>(src, dst);
  }
}

}  // namespace

void gpu_copy_cast(const Array& src, Array& dst) {
  if (src.shape() != dst.shape())
    throw_error("copy", "shape mismatch ", shape_str(src.shape()), " vs ", shape_str(dst.shape()));
  if (!src.device().is_gpu() || dst.device() != src.device())
    throw_error("copy", "copy_cast needs both arrays on the same GPU (got ", src.device(), " and ", dst.device(), ").");
  if (src.size() == 0) return;
  if (src.dtype() == dst.dtype() && src.is_contiguous()) {
    check_cuda(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), src.nbytes(), cudaMemcpyDeviceToDevice, cudaStreamLegacy),
               "copy", "cudaMemcpyAsync");
    return;
  }
  switch (src.dtype()) {
    case Dtype::float32: return dispatch_dst<float>(src, dst);
    case Dtype::float16: return dispatch_dst<F16>(src, dst);
    case Dtype::bfloat16: return dispatch_dst<BF16>(src, dst);
    case Dtype::uint32: return dispatch_dst<uint32_t>(src, dst);
    case Dtype::uint8: return dispatch_dst<uint8_t>(src, dst);
    case Dtype::int8: return dispatch_dst<int8_t>(src, dst);
    case Dtype::int16: return dispatch_dst<int16_t>(src, dst);
    case Dtype::int32: return dispatch_dst<int32_t>(src, dst);
    case Dtype::int64: return dispatch_dst<int64_t>(src, dst);
    case Dtype::bool_: return dispatch_dst<bool>(src, dst);
  }
}

}  // namespace mmkit::cuda
