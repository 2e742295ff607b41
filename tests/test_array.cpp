// mmkit::Array and dtypes: views share the buffer and never copy, zero-copy
// wrapping of caller memory, contiguous copies, correctly rounded dtype
// conversions (checked against an independent float64 rounding), the
// promotion table, and the errors of the array API.
#include <gtest/gtest.h>

#include <atomic>
#include <cfenv>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "test_util.h"

namespace mmkit::test {
namespace {

Array iota(const Shape& s, Dtype dt = Dtype::float32) {
  std::vector<float> v(static_cast<size_t>(shape_size(s)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  return Array::from_vector(v, s).astype(dt);
}

std::vector<float> values(const Array& a) { return a.astype(Dtype::float32).to_vector<float>(); }

bool same_buffer(const Array& a, const Array& b) { return a.buffer().get() == b.buffer().get(); }

// ---------------------------------------------------------------------------
// views

TEST(ArrayViews, SliceSharesBuffer) {
  Array a = iota({4, 6});
  Array s = a.slice(1, 1, 5, 2);  // columns 1, 3
  EXPECT_TRUE(same_buffer(a, s));
  EXPECT_EQ(s.shape(), (Shape{4, 2}));
  EXPECT_EQ(s.strides(), (Strides{6, 2}));
  EXPECT_EQ(s.offset(), 1);
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(values(s), (std::vector<float>{1, 3, 7, 9, 13, 15, 19, 21}));
  // writes through the base are visible in the view
  a.data<float>()[7] = -1.0f;
  EXPECT_EQ(values(s)[2], -1.0f);
  // negative step, negative start
  Array r = a.index(0, 0).slice(0, -1, -7, -1);
  EXPECT_TRUE(same_buffer(a, r));
  EXPECT_EQ(values(r), (std::vector<float>{5, 4, 3, 2, 1, 0}));
  Array e = a.slice(0, 3, 1);
  EXPECT_EQ(e.shape(), (Shape{0, 6}));
  EXPECT_EQ(e.size(), 0);
}

TEST(ArrayViews, TransposeAndSwapaxesShareBuffer) {
  Array a = iota({2, 3, 4});
  Array t = a.transpose();
  EXPECT_TRUE(same_buffer(a, t));
  EXPECT_EQ(t.shape(), (Shape{4, 3, 2}));
  EXPECT_EQ(t.strides(), (Strides{1, 4, 12}));
  std::vector<float> v = values(t);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 2; ++k) EXPECT_EQ(v[(i * 3 + j) * 2 + k], k * 12 + j * 4 + i);
  Array s = a.swapaxes(-1, 0);
  EXPECT_TRUE(same_buffer(a, s));
  EXPECT_EQ(s.shape(), (Shape{4, 3, 2}));
  Array p = a.transpose({1, 0, 2});
  EXPECT_EQ(p.shape(), (Shape{3, 2, 4}));
  EXPECT_EQ(values(p)[4], 12.0f);  // p[0,1,0] = a[1,0,0]
}

TEST(ArrayViews, BroadcastToUsesZeroStrides) {
  Array a = iota({3, 1});
  Array b = a.broadcast_to({2, 3, 4});
  EXPECT_TRUE(same_buffer(a, b));
  EXPECT_EQ(b.strides(), (Strides{0, 1, 0}));
  EXPECT_FALSE(b.is_contiguous());
  std::vector<float> v = values(b);
  ASSERT_EQ(v.size(), 24u);
  for (int i = 0; i < 24; ++i) EXPECT_EQ(v[i], (i / 4) % 3);
  Array s = Array::scalar(5.0).broadcast_to({2, 2});
  EXPECT_EQ(values(s), (std::vector<float>{5, 5, 5, 5}));
}

TEST(ArrayViews, ReshapeViewWhenContiguousCopyOtherwise) {
  Array a = iota({2, 6});
  Array r = a.reshape({3, 4});
  EXPECT_TRUE(same_buffer(a, r));
  EXPECT_EQ(values(r), values(a));
  Array sl = a.slice(0, 1, 2).reshape({2, 3});  // contiguous row: still a view, offset kept
  EXPECT_TRUE(same_buffer(a, sl));
  EXPECT_EQ(values(sl), (std::vector<float>{6, 7, 8, 9, 10, 11}));
  Array t = a.transpose().reshape({12});  // not contiguous: a copy in logical order
  EXPECT_FALSE(same_buffer(a, t));
  std::vector<float> v = values(t);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(v[i], (i % 2) * 6 + i / 2);
  Array z = Array::zeros({0, 3}, Dtype::float32).reshape({3, 0});
  EXPECT_EQ(z.shape(), (Shape{3, 0}));
}

TEST(ArrayViews, IndexExpandDimsSqueeze) {
  Array a = iota({3, 4});
  Array row = a.index(0, 2);
  EXPECT_TRUE(same_buffer(a, row));
  EXPECT_EQ(row.shape(), (Shape{4}));
  EXPECT_EQ(values(row), (std::vector<float>{8, 9, 10, 11}));
  Array col = a.index(1, -1);
  EXPECT_EQ(values(col), (std::vector<float>{3, 7, 11}));
  Array e = a.expand_dims(1);
  EXPECT_TRUE(same_buffer(a, e));
  EXPECT_EQ(e.shape(), (Shape{3, 1, 4}));
  EXPECT_TRUE(e.is_contiguous());
  Array e2 = a.expand_dims(-1);
  EXPECT_EQ(e2.shape(), (Shape{3, 4, 1}));
  Array sq = e.squeeze(1);
  EXPECT_TRUE(same_buffer(a, sq));
  EXPECT_EQ(sq.shape(), (Shape{3, 4}));
  EXPECT_EQ(values(sq), values(a));
  Array zero_d = a.index(0, 1).index(0, 2);
  EXPECT_EQ(zero_d.ndim(), 0);
  EXPECT_EQ(zero_d.item_double(), 6.0);
  EXPECT_EQ(zero_d.expand_dims(0).shape(), (Shape{1}));
}

TEST(ArrayViews, CopiesShareOwnership) {
  Array a = iota({4});
  Array b = a;  // copies of an Array share the buffer
  EXPECT_TRUE(same_buffer(a, b));
  b.data<float>()[0] = 42.0f;
  EXPECT_EQ(values(a)[0], 42.0f);
}

// ---------------------------------------------------------------------------
// zero-copy wrapping

TEST(ArrayWrap, RowMajorNoCopy) {
  std::vector<float> mem = {1, 2, 3, 4, 5, 6};
  Array w = Array::wrap(mem.data(), {2, 3}, Dtype::float32);
  EXPECT_EQ(w.raw_data(), mem.data());
  EXPECT_TRUE(w.is_contiguous());
  EXPECT_EQ(w.contiguous().raw_data(), mem.data());  // contiguous() does not copy
  mem[4] = 50;
  EXPECT_EQ(values(w)[4], 50.0f);
}

TEST(ArrayWrap, CallerStrides) {
  // a column-major (3, 2) matrix: strides (1, 3)
  std::vector<int32_t> mem = {1, 2, 3, 4, 5, 6};
  Array w = Array::wrap(mem.data(), {3, 2}, Dtype::int32, {1, 3});
  EXPECT_EQ(w.raw_data(), mem.data());
  EXPECT_FALSE(w.is_contiguous());
  EXPECT_EQ(w.to_vector<int32_t>(), (std::vector<int32_t>{1, 4, 2, 5, 3, 6}));
  Array c = w.contiguous();
  EXPECT_NE(c.raw_data(), static_cast<void*>(mem.data()));
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.to_vector<int32_t>(), (std::vector<int32_t>{1, 4, 2, 5, 3, 6}));
  // padded rows: every other element
  std::vector<float> pad = {0, -1, 1, -1, 2, -1, 3, -1};
  Array p = Array::wrap(pad.data(), {2, 2}, Dtype::float32, {4, 2});
  EXPECT_EQ(values(p), (std::vector<float>{0, 1, 2, 3}));
  // the ops accept wrapped strided inputs
  Array x = Array::wrap(pad.data(), {1, 4}, Dtype::float32, {8, 2});
  Array y = matmul(x, Array::full({4, 1}, 1.0, Dtype::float32));
  EXPECT_EQ(y.item_double(), 6.0);
}

TEST(ArrayWrap, OwnerKeptAliveByEveryView) {
  bool freed = false;
  float* mem = new float[4]{1, 2, 3, 4};
  Array view;
  {
    std::shared_ptr<void> owner(mem, [&freed](void* p) {
      delete[] static_cast<float*>(p);
      freed = true;
    });
    Array w = Array::wrap(mem, {4}, Dtype::float32, {}, Device::cpu(), owner);
    owner.reset();
    EXPECT_FALSE(freed);
    view = w.slice(0, 1, 3);
  }
  EXPECT_FALSE(freed);
  EXPECT_EQ(values(view), (std::vector<float>{2, 3}));
  view = Array();
  EXPECT_TRUE(freed);
}

TEST(ArrayWrap, BadStridesRejected) {
  float x = 0;
  try {
    Array::wrap(&x, {2, 2}, Dtype::float32, {1});
    FAIL() << "expected mmkit::Error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("[array]", 0), 0u) << e.what();
  }
}

// ---------------------------------------------------------------------------
// copies

TEST(ArrayCopies, ContiguousAndCopy) {
  Array a = iota({3, 4});
  EXPECT_TRUE(same_buffer(a, a.contiguous()));
  Array c = a.copy();
  EXPECT_FALSE(same_buffer(a, c));
  EXPECT_EQ(values(c), values(a));
  Array t = a.transpose();
  Array tc = t.contiguous();
  EXPECT_FALSE(same_buffer(t, tc));
  EXPECT_TRUE(tc.is_contiguous());
  EXPECT_EQ(tc.strides(), (Strides{3, 1}));
  EXPECT_EQ(values(tc), values(t));
  // astype to the same dtype of a contiguous array is the array itself
  EXPECT_TRUE(same_buffer(a, a.astype(Dtype::float32)));
  EXPECT_FALSE(same_buffer(a, a.astype(Dtype::float16)));
  // a broadcast copy materialises every element
  Array b = a.slice(0, 0, 1).broadcast_to({3, 4}).copy();
  EXPECT_EQ(values(b), (std::vector<float>{0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3}));
  // empty arrays copy to empty arrays
  Array z = Array::zeros({2, 0, 3}, Dtype::bfloat16).transpose().copy();
  EXPECT_EQ(z.shape(), (Shape{3, 0, 2}));
}

TEST(ArrayCopies, StridedCastMatchesScalarConversion) {
  Array a = randn({5, 7, 3}, Dtype::float32, 1, 1000.0);
  Array v = a.transpose({2, 0, 1}).slice(2, 6, -8, -2);  // negative strides and an offset
  std::vector<float> src = values(v);
  for (Dtype dt : {Dtype::float16, Dtype::bfloat16, Dtype::int32, Dtype::int8}) {
    std::vector<double> got = v.astype(dt).to_double_vector();
    ASSERT_EQ(got.size(), src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      double want;
      if (dt == Dtype::float16) want = float16_t(src[i]);
      else if (dt == Dtype::bfloat16) want = bfloat16_t(src[i]);
      else if (dt == Dtype::int32) want = std::trunc(src[i]);
      else want = std::clamp(std::trunc(static_cast<double>(src[i])), -128.0, 127.0);
      EXPECT_EQ(got[i], want) << "element " << i << " to " << dt;
    }
  }
}

TEST(ArrayCopies, FactoriesAndScalars) {
  for (int i = 0; i < kNumDtypes; ++i) {
    const Dtype dt = static_cast<Dtype>(i);
    Array z = Array::zeros({2, 3}, dt);
    EXPECT_EQ(z.dtype(), dt);
    EXPECT_EQ(z.nbytes(), 6 * itemsize(dt));
    for (double v : z.to_double_vector()) EXPECT_EQ(v, 0.0);
    Array f = Array::full({2, 2}, 1.0, dt);
    for (double v : f.to_double_vector()) EXPECT_EQ(v, 1.0) << dt;
    Array s = Array::scalar(1.0, dt);
    EXPECT_EQ(s.ndim(), 0);
    EXPECT_EQ(s.size(), 1);
    EXPECT_EQ(s.item_double(), 1.0);
  }
  EXPECT_EQ(Array::scalar(-3.0, Dtype::int64).item_double(), -3.0);
  EXPECT_EQ(Array::scalar(0.1, Dtype::bfloat16).item_double(), static_cast<double>(bfloat16_t(0.1f)));
  Array big = Array::from_vector(std::vector<int64_t>{(int64_t(1) << 53) + 1});
  EXPECT_EQ(big.to_vector<int64_t>()[0], (int64_t(1) << 53) + 1);
  EXPECT_TRUE(Array().is_null());
  std::ostringstream os;
  os << Array::zeros({2, 3}, Dtype::bfloat16);
  EXPECT_EQ(os.str(), "array(shape=(2,3), dtype=bfloat16, cpu)");
}

// ---------------------------------------------------------------------------
// float16 / bfloat16 conversions against an independent float64 rounding

/// Nearest float16 of f, ties to even, from frexp/nearbyint on doubles.
/// NaN encodes as sign|0x7d00 (MLX's x86 encoding).
uint16_t ref_f16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return sign | 0x7d00;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return sign | 0x7c00;  // halfway between 65504 and 2^16 rounds to inf
  if (a < std::ldexp(1.0, -14)) return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0));
  int e = std::ilogb(a);
  double q = std::nearbyint(std::ldexp(a, 10 - e));  // in [1024, 2048]
  if (q == 2048.0) {
    q = 1024.0;
    ++e;
  }
  return sign | static_cast<uint16_t>(((e + 15) << 10) | (static_cast<int>(q) - 1024));
}

double ref_f16_value(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 0) v = std::ldexp(static_cast<double>(m), -24);
  else if (e == 31) v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else v = std::ldexp(1.0 + m / 1024.0, e - 15);
  return (h & 0x8000) ? -v : v;
}

/// Nearest bfloat16 (NaN handled by the caller).
uint16_t ref_bf16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(f));
  if (std::isinf(f)) return sign | 0x7f80;
  if (a < std::ldexp(1.0, -126)) return sign | static_cast<uint16_t>(std::nearbyint(std::ldexp(a, 133)));
  int e = std::ilogb(a);
  double q = std::nearbyint(std::ldexp(a, 7 - e));  // in [128, 256]
  if (q == 256.0) {
    q = 128.0;
    ++e;
  }
  if (e > 127) return sign | 0x7f80;
  return sign | static_cast<uint16_t>(((e + 127) << 7) | (static_cast<int>(q) - 128));
}

TEST(DtypeConversion, Float16DecodeEveryPattern) {
  std::vector<uint16_t> all(65536);
  for (int h = 0; h < 65536; ++h) all[h] = static_cast<uint16_t>(h);
  std::vector<float> arr = Array::from_bytes(all.data(), {65536}, Dtype::float16).astype(Dtype::float32).to_vector<float>();
  for (int h = 0; h < 65536; ++h) {
    const double want = ref_f16_value(static_cast<uint16_t>(h));
    const float got = f16_bits_to_float(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << h;
      ASSERT_TRUE(std::isnan(arr[h])) << std::hex << h;
      EXPECT_EQ(float_to_f16_bits(got), (h & 0x8000) | 0x7d00) << "NaN re-encodes as sign|0x7d00, " << std::hex << h;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << std::hex << h;
      ASSERT_EQ(static_cast<double>(arr[h]), want) << std::hex << h;
      ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0);
      ASSERT_EQ(float_to_f16_bits(got), h) << "round trip " << std::hex << h;
    }
  }
}

TEST(DtypeConversion, Float16EncodeRandomPatterns) {
  std::mt19937 g(12345);
  std::vector<float> v;
  for (int i = 0; i < (1 << 20); ++i) v.push_back(bits_f32(g()));
  // bias towards the half range: exponents around [-30, 17]
  for (int i = 0; i < (1 << 18); ++i) v.push_back(bits_f32((g() & 0x807fffffu) | ((97u + g() % 48) << 23)));
  std::vector<uint16_t> arr(v.size());
  Array h = Array::from_vector(v).astype(Dtype::float16);
  std::memcpy(arr.data(), h.raw_data(), arr.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t want = ref_f16(v[i]);
    ASSERT_EQ(float_to_f16_bits(v[i]), want) << "value " << v[i] << " bits " << std::hex << f32_bits(v[i]);
    ASSERT_EQ(arr[i], want) << "astype, value " << v[i];
  }
}

TEST(DtypeConversion, Float16TiesSubnormalsOverflowNan) {
  struct C {
    float f;
    uint16_t h;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (C c : {C{1.0f + std::ldexp(1.0f, -11), 0x3c00},      // tie -> even (1.0)
              C{1.0f + 3 * std::ldexp(1.0f, -11), 0x3c02},  // tie -> even (1 + 2^-9)
              C{2049.0f, 0x6800},                           // tie 2048 / 2050 -> 2048
              C{2051.0f, 0x6802},                           // tie 2050 / 2052 -> 2052
              C{std::ldexp(1.0f, -24), 0x0001},             // smallest subnormal
              C{std::ldexp(1.0f, -25), 0x0000},             // tie 0 / 2^-24 -> 0
              C{3 * std::ldexp(1.0f, -25), 0x0002},         // tie 1 / 2 ulp -> 2
              C{std::ldexp(1.0f, -25) * 1.0001f, 0x0001},   // just above the tie
              C{1023.5f * std::ldexp(1.0f, -24), 0x0400},   // rounds up into the smallest normal
              C{std::ldexp(1.0f, -14), 0x0400},
              C{65504.0f, 0x7bff},
              C{65519.99f, 0x7bff},
              C{65520.0f, 0x7c00},  // halfway to 2^16 -> inf
              C{1e6f, 0x7c00},
              C{-65520.0f, 0xfc00},
              C{inf, 0x7c00},
              C{-inf, 0xfc00},
              C{nan, 0x7d00},
              C{-nan, 0xfd00},
              C{bits_f32(0x7f800001u), 0x7d00},  // signalling NaN stays NaN
              C{-0.0f, 0x8000},
              C{std::numeric_limits<float>::denorm_min(), 0x0000},
              C{-std::numeric_limits<float>::denorm_min(), 0x8000}}) {
    EXPECT_EQ(float_to_f16_bits(c.f), c.h) << "value " << c.f;
    EXPECT_EQ(float16_t(c.f).bits, c.h) << "float16_t(" << c.f << ")";
    Array a = Array::from_vector(std::vector<float>{c.f}).astype(Dtype::float16);
    EXPECT_EQ(*static_cast<const uint16_t*>(a.raw_data()), c.h) << "astype " << c.f;
  }
}

TEST(DtypeConversion, Bfloat16EncodeRandomPatterns) {
  std::mt19937 g(777);
  std::vector<float> v;
  for (int i = 0; i < (1 << 20); ++i) v.push_back(bits_f32(g()));
  std::vector<uint16_t> arr(v.size());
  Array h = Array::from_vector(v).astype(Dtype::bfloat16);
  std::memcpy(arr.data(), h.raw_data(), arr.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t got = float_to_bf16_bits(v[i]);
    ASSERT_EQ(arr[i], got) << "astype vs scalar, value " << v[i];
    if (std::isnan(v[i])) {
      ASSERT_TRUE(std::isnan(bf16_bits_to_float(got))) << "NaN must stay NaN, bits " << std::hex << f32_bits(v[i]);
      ASSERT_EQ(std::signbit(bf16_bits_to_float(got)), std::signbit(v[i]));
      continue;
    }
    ASSERT_EQ(got, ref_bf16(v[i])) << "value " << v[i] << " bits " << std::hex << f32_bits(v[i]);
  }
}

TEST(DtypeConversion, Bfloat16TiesOverflowNan) {
  EXPECT_EQ(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // tie -> even
  EXPECT_EQ(float_to_bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // tie -> even
  EXPECT_EQ(float_to_bf16_bits(std::numeric_limits<float>::max()), 0x7f80);  // rounds to inf
  EXPECT_EQ(float_to_bf16_bits(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(float_to_bf16_bits(-0.0f), 0x8000);
  for (uint32_t nan : {0x7f800001u, 0x7fc00000u, 0xffffffffu, 0x7f80ffffu}) {
    const float b = bf16_bits_to_float(float_to_bf16_bits(bits_f32(nan)));
    EXPECT_TRUE(std::isnan(b)) << std::hex << nan;
  }
  // every bfloat16 pattern decodes exactly and round-trips
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_bits_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_bf16_bits(f), h) << std::hex << h;
    ASSERT_EQ(f32_bits(f), h << 16);
  }
  // float16 <-> bfloat16 through float32 (one rounding)
  Array h = Array::from_vector(std::vector<float>{1.0f + std::ldexp(1.0f, -10), 65504.0f, std::ldexp(1.0f, -24)})
                .astype(Dtype::float16);
  std::vector<double> bf = h.astype(Dtype::bfloat16).to_double_vector();
  EXPECT_EQ(bf[0], 1.0);  // 1 + 2^-10 is below bfloat16's half ulp
  EXPECT_EQ(bf[1], 65536.0);
  EXPECT_EQ(bf[2], std::ldexp(1.0, -24));
}

TEST(DtypeConversion, RoundToHelper) {
  EXPECT_EQ(round_to(Dtype::float16, 1.0f + std::ldexp(1.0f, -11)), 1.0f);
  EXPECT_EQ(round_to(Dtype::bfloat16, 1.0f + std::ldexp(1.0f, -7)), 1.0f + std::ldexp(1.0f, -7));
  EXPECT_EQ(round_to(Dtype::float32, 0.1f), 0.1f);
}

TEST(DtypeConversion, IntegerAndBoolConversions) {
  // float -> integer truncates toward zero, saturates, NaN -> 0
  Array f = Array::from_vector(std::vector<float>{-1.7f, 2.9f, 300.0f, -5.0f, 1e20f, -1e20f,
                                                  std::numeric_limits<float>::quiet_NaN()});
  EXPECT_EQ(f.astype(Dtype::int32).to_vector<int32_t>(),
            (std::vector<int32_t>{-1, 2, 300, -5, std::numeric_limits<int32_t>::max(),
                                  std::numeric_limits<int32_t>::min(), 0}));
  EXPECT_EQ(f.astype(Dtype::uint8).to_vector<uint8_t>(), (std::vector<uint8_t>{0, 2, 255, 0, 255, 0, 0}));
  EXPECT_EQ(f.astype(Dtype::int8).to_vector<int8_t>(), (std::vector<int8_t>{-1, 2, 127, -5, 127, -128, 0}));
  // integers -> float round to nearest even
  Array i = Array::from_vector(std::vector<int32_t>{16777217, 16777219, -3, 2049});
  EXPECT_EQ(values(i), (std::vector<float>{16777216.0f, 16777220.0f, -3.0f, 2049.0f}));
  EXPECT_EQ(i.astype(Dtype::float16).to_double_vector()[3], 2048.0);
  Array u = Array::from_vector(std::vector<uint32_t>{4294967295u});
  EXPECT_EQ(u.to_double_vector()[0], 4294967295.0);
  EXPECT_EQ(values(u)[0], 4294967296.0f);
  // bool: non-zero is true, -0 is false
  Array b = Array::from_vector(std::vector<float>{0.0f, -0.0f, 0.5f, -2.0f}).astype(Dtype::bool_);
  EXPECT_EQ(b.to_double_vector(), (std::vector<double>{0, 0, 1, 1}));
  EXPECT_EQ(b.astype(Dtype::int32).to_vector<int32_t>(), (std::vector<int32_t>{0, 0, 1, 1}));
}

// ---------------------------------------------------------------------------
// dtype properties and promotion

TEST(Dtypes, Properties) {
  struct P {
    Dtype d;
    size_t size;
    const char* name;
    bool floating;
  };
  for (P p : {P{Dtype::float32, 4, "float32", true}, P{Dtype::float16, 2, "float16", true},
              P{Dtype::bfloat16, 2, "bfloat16", true}, P{Dtype::uint32, 4, "uint32", false},
              P{Dtype::uint8, 1, "uint8", false}, P{Dtype::int8, 1, "int8", false},
              P{Dtype::int16, 2, "int16", false}, P{Dtype::int32, 4, "int32", false},
              P{Dtype::int64, 8, "int64", false}, P{Dtype::bool_, 1, "bool", false}}) {
    EXPECT_EQ(itemsize(p.d), p.size) << p.name;
    EXPECT_STREQ(dtype_name(p.d), p.name);
    EXPECT_EQ(is_floating(p.d), p.floating) << p.name;
    EXPECT_EQ(is_integral(p.d), !p.floating) << p.name;
    EXPECT_EQ(dtype_from_name(p.name), p.d);
    std::ostringstream os;
    os << p.d;
    EXPECT_EQ(os.str(), p.name);
  }
  EXPECT_EQ(dtype_from_name("bool_"), Dtype::bool_);
  EXPECT_EQ(dtype_of<float16_t>, Dtype::float16);
  EXPECT_EQ(dtype_of<bfloat16_t>, Dtype::bfloat16);
}

TEST(Dtypes, PromotionTable) {
  // MLX / JAX table (mlx/dtype.cpp) restricted to mmkit's dtypes.
  using D = Dtype;
  const D order[] = {D::float32, D::float16, D::bfloat16, D::uint32, D::uint8,
                     D::int8,    D::int16,   D::int32,    D::int64,  D::bool_};
  const D f32 = D::float32, f16 = D::float16, b16 = D::bfloat16, u32 = D::uint32, u8 = D::uint8, i8 = D::int8,
          i16 = D::int16, i32 = D::int32, i64 = D::int64, bl = D::bool_;
  const D table[10][10] = {
      /* f32  */ {f32, f32, f32, f32, f32, f32, f32, f32, f32, f32},
      /* f16  */ {f32, f16, f32, f16, f16, f16, f16, f16, f16, f16},
      /* bf16 */ {f32, f32, b16, b16, b16, b16, b16, b16, b16, b16},
      /* u32  */ {f32, f16, b16, u32, u32, i64, i64, i64, i64, u32},
      /* u8   */ {f32, f16, b16, u32, u8, i16, i16, i32, i64, u8},
      /* i8   */ {f32, f16, b16, i64, i16, i8, i16, i32, i64, i8},
      /* i16  */ {f32, f16, b16, i64, i16, i16, i16, i32, i64, i16},
      /* i32  */ {f32, f16, b16, i64, i32, i32, i32, i32, i64, i32},
      /* i64  */ {f32, f16, b16, i64, i64, i64, i64, i64, i64, i64},
      /* bool */ {f32, f16, b16, u32, u8, i8, i16, i32, i64, bl},
  };
  for (int i = 0; i < 10; ++i)
    for (int j = 0; j < 10; ++j)
      EXPECT_EQ(promote_types(order[i], order[j]), table[i][j]) << order[i] << " + " << order[j];
}

// ---------------------------------------------------------------------------
// shapes and errors of the array API

::testing::AssertionResult throws_tagged(const std::function<void()>& f, const std::string& tag) {
  try {
    f();
  } catch (const Error& e) {
    if (std::string(e.what()).rfind("[" + tag + "]", 0) == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "message does not start with [" << tag << "]: " << e.what();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "not an mmkit::Error: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

TEST(ArrayShapes, BroadcastShapes) {
  EXPECT_EQ(broadcast_shapes({2, 1, 4}, {3, 1}), (Shape{2, 3, 4}));
  EXPECT_EQ(broadcast_shapes({}, {5}), (Shape{5}));
  EXPECT_EQ(broadcast_shapes({0}, {1}), (Shape{0}));
  EXPECT_EQ(shape_size({}), 1);
  EXPECT_EQ(shape_size({3, 0}), 0);
  EXPECT_EQ(row_major_strides({2, 3, 4}), (Strides{12, 4, 1}));
  EXPECT_EQ(shape_str({2, 3}), "(2,3)");
  EXPECT_TRUE(throws_tagged([] { broadcast_shapes({2}, {3}); }, "broadcast_shapes"));
}

TEST(ArrayShapes, Errors) {
  Array a = iota({2, 3});
  EXPECT_TRUE(throws_tagged([&] { a.reshape({4, 2}); }, "reshape"));
  EXPECT_TRUE(throws_tagged([&] { a.broadcast_to({3, 3}); }, "broadcast_to"));
  EXPECT_TRUE(throws_tagged([&] { a.broadcast_to({3}); }, "broadcast_to"));
  EXPECT_TRUE(throws_tagged([&] { a.index(0, 2); }, "index"));
  EXPECT_TRUE(throws_tagged([&] { a.index(1, -4); }, "index"));
  EXPECT_TRUE(throws_tagged([&] { a.squeeze(1); }, "squeeze"));
  EXPECT_TRUE(throws_tagged([&] { a.expand_dims(4); }, "expand_dims"));
  EXPECT_TRUE(throws_tagged([&] { a.transpose({0, 0}); }, "transpose"));
  EXPECT_TRUE(throws_tagged([&] { a.transpose({0}); }, "transpose"));
  EXPECT_TRUE(throws_tagged([&] { a.slice(0, 0, 1, 0); }, "slice"));
  EXPECT_TRUE(throws_tagged([&] { a.slice(2, 0, 1); }, "array"));
  EXPECT_TRUE(throws_tagged([&] { a.shape(5); }, "array"));
  EXPECT_TRUE(throws_tagged([&] { a.item_double(); }, "item"));
  EXPECT_TRUE(throws_tagged([] { Array::empty({2, -1}, Dtype::float32); }, "array"));
  EXPECT_TRUE(throws_tagged([] { Array::empty({int64_t(1) << 40, int64_t(1) << 40}, Dtype::float32); }, "array"));
  EXPECT_TRUE(throws_tagged([] { Array().copy(); }, "array"));
  EXPECT_TRUE(throws_tagged([] { dtype_from_name("float64"); }, "dtype"));
  EXPECT_TRUE(throws_tagged([] { parse_device("tpu"); }, "device"));
  EXPECT_EQ(parse_device("gpu:1"), Device::gpu(1));
  EXPECT_EQ(parse_device("cpu"), Device::cpu());
}

TEST(ArrayDevices, GpuWithoutCudaIsAnError) {
  if (built_with_cuda() && gpu_count() > 0) GTEST_SKIP() << "a GPU is present";
  Array a = iota({2});
  EXPECT_TRUE(throws_tagged([&] { a.to(Device::gpu()); }, "array"));
  EXPECT_TRUE(throws_tagged([&] { quantize(Array::zeros({2, 64}, Dtype::float32), std::nullopt, std::nullopt,
                                           "affine", std::nullopt, Device::gpu()); },
                            "stream"));
  EXPECT_TRUE(same_buffer(a, a.to(Device::cpu())));
}

TEST(ArrayHostCache, ReusedLargeBuffersKeepTheirContractsAcrossThreads) {
  // Large host buffers (>= 4 MiB) go back to a cache when their Array dies and
  // are handed to the next Array of the same size: zeros() must still be zero,
  // empty() of another size must not alias a live array, and arrays made and
  // dropped on many threads at once must never share memory.
  const int64_t n = int64_t{3} << 20;  // 12 MiB of float32
  {
    Array a = Array::full({n}, 7.0, Dtype::float32);
    ASSERT_EQ(a.data<float>()[n - 1], 7.0f);
  }
  Array z = Array::zeros({n}, Dtype::float32);
  int64_t nonzero = 0;
  for (int64_t i = 0; i < n; ++i) nonzero += z.data<float>()[i] != 0.0f;
  EXPECT_EQ(nonzero, 0);
  Array other = Array::empty({n + 1}, Dtype::float32);
  EXPECT_NE(other.raw_data(), z.raw_data());

  std::vector<std::thread> ts;
  std::atomic<int> bad{0};
  for (int t = 0; t < 8; ++t)
    ts.emplace_back([&, t] {
      for (int it = 0; it < 20; ++it) {
        Array a = Array::full({int64_t{1} << 21}, static_cast<double>(t * 100 + it), Dtype::float32);  // 8 MiB
        Array b = Array::full({int64_t{1} << 21}, -1.0, Dtype::float32);
        const float* p = a.data<float>();
        for (int64_t i = 0; i < (int64_t{1} << 21); i += 4099)
          if (p[i] != static_cast<float>(t * 100 + it)) ++bad;
        if (a.raw_data() == b.raw_data()) ++bad;
      }
    });
  for (auto& th : ts) th.join();
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace mmkit::test
