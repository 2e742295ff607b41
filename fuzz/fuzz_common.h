// Shared pieces of the libFuzzer targets: turning fuzz bytes into shapes,
// dtypes, values and strided views, the "mmkit::Error or a correct result"
// rule, and float64 cross-checks with rounding-error bounds.
//
// Every target caps its sizes so one input runs in milliseconds; anything
// else than a return or an mmkit::Error (another exception, a sanitizer
// report, a failed check) is a finding.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "mmkit/mmkit.h"
#include "ref/ref.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace mmkit::fuzz {

using Fdp = FuzzedDataProvider;

/// Reports a wrong result and aborts (libFuzzer saves the input).
[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "\n[mmkit fuzz] WRONG RESULT: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}
#define FUZZ_CHECK(cond, msg)                                                             \
  do {                                                                                    \
    if (!(cond)) ::mmkit::fuzz::fail(std::string(#cond " -- ") + (msg));                  \
  } while (0)

/// Counts of accepted and rejected inputs, printed at exit when
/// MMKIT_FUZZ_STATS is set (to see how deep a corpus gets past validation).
struct Stats {
  long ok = 0, rejected = 0;
  ~Stats() {
    if (std::getenv("MMKIT_FUZZ_STATS"))
      std::fprintf(stderr, "[mmkit fuzz] %ld inputs computed and checked, %ld rejected with mmkit::Error\n", ok,
                   rejected);
  }
};
inline Stats& stats() {
  static Stats s;
  return s;
}

/// Runs `f`; mmkit::Error is an allowed outcome, whose message must name an op.
template <typename F>
void guarded(F&& f) {
  try {
    f();
    ++stats().ok;
  } catch (const mmkit::Error& e) {
    ++stats().rejected;
    if (const char* v = std::getenv("MMKIT_FUZZ_STATS"); v && v[0] == '2') std::fprintf(stderr, "[mmkit fuzz] rejected: %s\n", e.what());
    const char* m = e.what();
    FUZZ_CHECK(m[0] == '[' && std::strchr(m, ']') != nullptr, std::string("error without [op] tag: ") + m);
  }
}

/// OpenMP thread count from the input (1-3): chunking depends on it.
inline void pick_threads(Fdp& p) {
#ifdef _OPENMP
  omp_set_num_threads(p.ConsumeIntegralInRange<int>(1, 3));
#else
  (void)p;
#endif
}

inline const Dtype kAllDtypes[] = {Dtype::float32, Dtype::float16, Dtype::bfloat16, Dtype::uint32, Dtype::uint8,
                                   Dtype::int8,    Dtype::int16,   Dtype::int32,    Dtype::int64,  Dtype::bool_};

/// Mostly the float types, sometimes anything (to hit the dtype checks).
inline Dtype pick_float_dtype(Fdp& p) {
  const uint8_t r = p.ConsumeIntegral<uint8_t>();
  if (r < 224) return kAllDtypes[r % 3];
  return kAllDtypes[r % kNumDtypes];
}
inline Dtype pick_any_dtype(Fdp& p) { return kAllDtypes[p.ConsumeIntegralInRange<int>(0, kNumDtypes - 1)]; }

// FuzzedDataProvider returns the minimum of a range once the input is used
// up, so every choice below maps 0 to the common valid case: short inputs
// still reach the kernels.

/// A dimension in [0, max]: 3 (or max) when the input is used up.
inline int64_t pick_dim(Fdp& p, int64_t max) {
  return (p.ConsumeIntegralInRange<int64_t>(0, max) + std::min<int64_t>(3, max)) % (max + 1);
}

/// An optional int parameter (group size, bits): absent, usual, or odd.
inline std::optional<int> pick_param(Fdp& p, std::initializer_list<int> usual) {
  const uint8_t r = p.ConsumeIntegral<uint8_t>();
  if (r < 64) return std::nullopt;
  if (r < 232) {
    std::vector<int> u(usual);
    return u[r % u.size()];
  }
  static const int kOdd[] = {0, -1, 1, 7, 9, 12, 16, 33, 48, 256, 1 << 20, std::numeric_limits<int>::max(),
                             std::numeric_limits<int>::min()};
  return kOdd[r % (sizeof(kOdd) / sizeof(kOdd[0]))];
}

inline std::string pick_mode(Fdp& p) {
  static const char* kModes[] = {"affine", "mxfp4", "mxfp8", "nvfp4", "affine", "affine", "", "AFFINE", "fp4", "mxfp4 "};
  return kModes[p.ConsumeIntegralInRange<int>(0, 9)];
}

/// One float value: small integers (exact arithmetic), moderate values, or
/// raw bit patterns (NaN, Inf, denormals, huge).
inline float pick_value(Fdp& p, int style) {
  switch (style) {
    case 0: return static_cast<float>(p.ConsumeIntegralInRange<int>(-8, 8));
    case 1: return static_cast<float>(p.ConsumeIntegral<int16_t>()) / 4096.0f;
    default: {
      const uint8_t k = p.ConsumeIntegral<uint8_t>();
      if (k < 16) {
        static const float kSpecial[] = {std::numeric_limits<float>::quiet_NaN(),
                                         -std::numeric_limits<float>::quiet_NaN(),
                                         std::numeric_limits<float>::infinity(),
                                         -std::numeric_limits<float>::infinity(),
                                         0.0f, -0.0f, 448.0f, 480.0f, 6.0f, 65504.0f, 3.0e38f, -3.0e38f,
                                         1e-40f, 1e-7f, 5e-8f, 2688.0f};
        return kSpecial[k];
      }
      return bits_f32(p.ConsumeIntegral<uint32_t>());
    }
  }
}

/// Fills a contiguous array of any dtype from the input.
inline void fill(Fdp& p, Array& a, int style) {
  const int64_t n = a.size();
  switch (a.dtype()) {
    case Dtype::float32:
    case Dtype::float16:
    case Dtype::bfloat16: {
      std::vector<float> v(static_cast<size_t>(n));
      for (auto& x : v) x = pick_value(p, style);
      Array f = Array::from_vector(v, a.shape()).astype(a.dtype());
      std::memcpy(a.raw_data(), f.raw_data(), a.nbytes());
      return;
    }
    default: {
      // Integers: raw bytes, mostly small.
      auto* b = static_cast<uint8_t*>(a.raw_data());
      const size_t is = a.itemsize();
      for (int64_t i = 0; i < n; ++i) {
        uint64_t v = style == 2 ? p.ConsumeIntegral<uint64_t>() : p.ConsumeIntegralInRange<uint64_t>(0, 8);
        if (a.dtype() == Dtype::bool_) v &= 1;
        std::memcpy(b + i * is, &v, is);  // little-endian host
      }
    }
  }
}

/// Copies the contiguous array `src` into the (possibly strided) view `dst`.
inline void copy_into_view(const Array& src, const Array& dst) {
  const int nd = dst.ndim();
  const size_t is = dst.itemsize();
  const auto* sp = static_cast<const uint8_t*>(src.raw_data());
  auto* dp = static_cast<uint8_t*>(dst.raw_data());
  std::vector<int64_t> idx(static_cast<size_t>(nd), 0);
  for (int64_t i = 0; i < src.size(); ++i) {
    int64_t off = 0;
    for (int d = 0; d < nd; ++d) off += idx[d] * dst.strides()[d];
    std::memcpy(dp + off * static_cast<int64_t>(is), sp + i * static_cast<int64_t>(is), is);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < dst.shape()[d]) break;
      idx[d] = 0;
    }
  }
}

/// The same values as `a` in other storage: contiguous, transposed, a slice
/// with a step, an offset slice, reversed along the last axis, or with two
/// axes swapped in memory.
inline Array restride(Fdp& p, const Array& a) {
  const int nd = a.ndim();
  const int layout = nd == 0 ? 0 : p.ConsumeIntegralInRange<int>(0, 5);
  const Shape& shape = a.shape();
  Array view;
  if (layout == 1 && nd >= 2) {
    view = Array::empty(Shape(shape.rbegin(), shape.rend()), a.dtype()).transpose();
  } else if (layout == 2 || layout == 3) {
    const int ax = p.ConsumeIntegralInRange<int>(0, nd - 1);
    const int64_t step = layout == 2 ? p.ConsumeIntegralInRange<int64_t>(2, 3) : 1;
    const int64_t start = p.ConsumeIntegralInRange<int64_t>(0, 2);
    Shape big = shape;
    big[ax] = start + shape[ax] * step;
    view = Array::empty(big, a.dtype()).slice(ax, start, start + shape[ax] * step, step);
  } else if (layout == 4) {
    view = Array::empty(shape, a.dtype());
    if (shape[nd - 1] > 0) view = view.slice(nd - 1, -1, -shape[nd - 1] - 1, -1);
  } else if (layout == 5 && nd >= 2) {
    const int ax0 = p.ConsumeIntegralInRange<int>(0, nd - 2);
    Shape st = shape;
    std::swap(st[ax0], st[nd - 1]);
    view = Array::empty(st, a.dtype()).swapaxes(ax0, nd - 1);
  } else {
    return a;
  }
  copy_into_view(a.contiguous(), view);
  return view;
}

/// An array with logical `shape` and dtype `dt`, filled from the input, in
/// any storage layout (restride) or broadcast from fewer stored elements.
inline Array make_array(Fdp& p, const Shape& shape, Dtype dt, int style) {
  if (!shape.empty() && p.ConsumeIntegralInRange<int>(0, 5) == 5) {
    Shape st = shape;
    for (auto& d : st)
      if (p.ConsumeBool()) d = std::min<int64_t>(d, 1);
    Array s = Array::empty(st, dt);
    fill(p, s, style);
    return s.broadcast_to(shape);
  }
  Array s = Array::empty(shape, dt);
  fill(p, s, style);
  return restride(p, s);
}

/// A shape of rank 0..max_nd (rank min(2, max_nd) when the input is used up).
inline Shape pick_shape(Fdp& p, int max_nd, int64_t max_dim) {
  const int nd = (p.ConsumeIntegralInRange<int>(0, max_nd) + std::min(2, max_nd)) % (max_nd + 1);
  Shape s(static_cast<size_t>(nd));
  for (auto& d : s) d = pick_dim(p, max_dim);
  return s;
}

/// Unit roundoff of a float dtype.
inline double unit_roundoff(Dtype d) {
  switch (d) {
    case Dtype::float16: return std::ldexp(1.0, -11);
    case Dtype::bfloat16: return std::ldexp(1.0, -8);
    default: return std::ldexp(1.0, -24);
  }
}
inline double max_finite(Dtype d) {
  switch (d) {
    case Dtype::float16: return 65504.0;
    default: return 3.0e38;
  }
}
/// Half the smallest subnormal step (absolute error of rounding tiny values).
inline double tiny(Dtype d) {
  switch (d) {
    case Dtype::float16: return std::ldexp(1.0, -25);
    case Dtype::bfloat16: return std::ldexp(1.0, -134);
    default: return std::ldexp(1.0, -150);
  }
}

/// Checks y against the float64 reference r where `bound_fn()` gives
/// sum_k |x_k| |w_k| for each output: |y - r| <= (K + 8) u32 bound + u_T |r|.
/// Elements whose bound is not finite or large enough to overflow float32 are
/// only checked for NaN propagation. The bound (a second reference run) is
/// only computed when some element is not the correctly rounded reference.
template <typename BoundFn>
inline void check_matmul_result(const Array& y, const ref::Tensor& r, BoundFn&& bound_fn, int64_t K, const char* op) {
  FUZZ_CHECK(y.shape() == r.shape, std::string(op) + ": shape " + shape_str(y.shape()) + " vs reference " +
                                       shape_str(r.shape));
  const std::vector<double> v = y.to_double_vector();
  const double u32 = std::ldexp(1.0, -24), uT = unit_roundoff(y.dtype()), big = max_finite(y.dtype());
  bool all_rounded = true;
  for (size_t i = 0; i < v.size() && all_rounded; ++i)
    all_rounded = v[i] == r.v[i] || std::fabs(v[i] - r.v[i]) <= uT * std::fabs(r.v[i]) + tiny(y.dtype()) ||
                  (std::isnan(v[i]) && std::isnan(r.v[i]));
  if (all_rounded) return;
  const ref::Tensor bound = bound_fn();
  for (size_t i = 0; i < v.size(); ++i) {
    if (std::isnan(r.v[i])) {
      FUZZ_CHECK(std::isnan(v[i]), std::string(op) + ": reference is NaN at flat " + std::to_string(i) +
                                       " but got " + std::to_string(v[i]));
      continue;
    }
    const double b = bound.v[i];
    if (!std::isfinite(b) || b > 1e36 || std::fabs(r.v[i]) + b * 1e-3 > big) continue;
    const double tol = static_cast<double>(K + 8) * u32 * b + uT * std::fabs(r.v[i]) + tiny(y.dtype()) +
                       static_cast<double>(K + 1) * std::ldexp(1.0, -149);
    const double err = std::fabs(v[i] - r.v[i]);
    if (!(err <= tol))
      fail(std::string(op) + ": element " + std::to_string(i) + " of " + shape_str(y.shape()) + " is " +
           std::to_string(v[i]) + ", reference " + std::to_string(r.v[i]) + " (tolerance " + std::to_string(tol) +
           ", bound " + std::to_string(b) + ")");
  }
}

/// |a| elementwise for float arrays (the sign bit cleared, NaN stays NaN);
/// other dtypes are returned as a contiguous copy (callers cast to a float
/// dtype first).
inline Array abs_array(const Array& a) {
  Array c = a.contiguous().copy();
  if (c.dtype() == Dtype::float32) {
    auto* p = c.data<uint32_t>();
    for (int64_t i = 0; i < c.size(); ++i) p[i] &= 0x7fffffffu;
  } else if (c.dtype() == Dtype::float16 || c.dtype() == Dtype::bfloat16) {
    auto* p = c.data<uint16_t>();
    for (int64_t i = 0; i < c.size(); ++i) p[i] &= 0x7fffu;
  } else if (is_integral(c.dtype()) && c.dtype() != Dtype::bool_ && c.dtype() != Dtype::uint8 &&
             c.dtype() != Dtype::uint32) {
    return abs_array(c.astype(Dtype::float32)).astype(c.dtype());  // small mask values only
  }
  return c;
}

/// Quantized weights whose dequantized values are |w_hat| or larger: affine
/// takes |scale| and |bias| (codes are non-negative); fp modes clear the sign
/// bit of every element code and of E4M3 scales.
struct AbsQuantized {
  Array w, scales;
  std::optional<Array> biases;
};
inline AbsQuantized abs_quantized(const Array& w, const Array& scales, const std::optional<Array>& biases,
                                  const std::string& mode) {
  AbsQuantized q;
  if (mode == "affine") {
    q.w = w;
    q.scales = abs_array(scales);
    q.biases = abs_array(*biases);
    return q;
  }
  q.w = w.contiguous().copy();
  const uint32_t mask = mode == "mxfp8" ? 0x7f7f7f7fu : 0x77777777u;
  auto* p = q.w.data<uint32_t>();
  for (int64_t i = 0; i < q.w.size(); ++i) p[i] &= mask;
  q.scales = scales.contiguous().copy();
  if (mode == "nvfp4") {
    auto* s = q.scales.data<uint8_t>();
    for (int64_t i = 0; i < q.scales.size(); ++i) s[i] &= 0x7f;
  }
  return q;
}

/// An index array: integer dtype (sometimes not), values mostly in [0, n),
/// sometimes negative, just out of range or huge.
inline Array make_indices(Fdp& p, const Shape& shape, int64_t n) {
  const uint8_t r = p.ConsumeIntegral<uint8_t>();
  Dtype dt = Dtype::int32;
  if (r < 96) dt = Dtype::int64;
  else if (r < 140) dt = Dtype::uint32;
  else if (r < 160) dt = Dtype::uint8;
  else if (r < 176) dt = Dtype::int16;
  else if (r < 186) dt = Dtype::int8;
  else if (r < 194) dt = Dtype::float32;
  else if (r < 200) dt = Dtype::bool_;
  std::vector<int64_t> v(static_cast<size_t>(shape_size(shape)));
  for (auto& x : v) {
    const uint8_t k = p.ConsumeIntegral<uint8_t>();
    if (k < 240 || n == 0) x = n > 0 ? static_cast<int64_t>(k) % n : 0;
    else if (k < 244) x = -1;
    else if (k < 248) x = n;
    else if (k < 250) x = std::numeric_limits<int32_t>::max();
    else if (k < 252) x = std::numeric_limits<int64_t>::min();
    else if (k < 254) x = std::numeric_limits<int64_t>::max();
    else x = (int64_t{1} << 32) + (n > 0 ? 0 : 1);
  }
  Array a = Array::from_vector(v, shape);
  if (dt != Dtype::int64) a = a.astype(dt);
  return restride(p, a);
}

/// Whether every index of `idx` lies in [0, n) (as the op should demand).
inline bool indices_in_range(const Array& idx, int64_t n) {
  if (!is_integral(idx.dtype()) || idx.dtype() == Dtype::bool_) return false;
  Array c = idx.astype(Dtype::int64);
  const int64_t* p = c.data<int64_t>();
  for (int64_t i = 0; i < c.size(); ++i)
    if (p[i] < 0 || p[i] >= n) return false;
  return true;
}

}  // namespace mmkit::fuzz
