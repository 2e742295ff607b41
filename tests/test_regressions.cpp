// One test per bug found (by the fuzzers in fuzz/ or the large-shape tests),
// named after the bug, so it cannot come back. docs/fuzzing.md lists them.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "test_util.h"

namespace mmkit::test {
namespace {

Array host(const Array& a) { return a.to(Device::cpu()); }
Array dev(const Array& a) { return a.to(test_device()); }

// fuzz_quantize, UBSan "inf is outside the range of representable values of
// type 'int'": the mx exponent rint(log2(amax / maxval)) was converted to int
// and uint8 unclamped. Inf groups were undefined behaviour; groups below
// 6 * 2^-127.5 wrapped to scale byte 255 (= Inf) and dequantized to Inf/NaN.
TEST(Regression, MxQuantizeExponentIsClampedToTheE8M0Range) {
  MMKIT_REQUIRE_DEVICE();
  for (const char* mode : {"mxfp4", "mxfp8"}) {
    SCOPED_TRACE(mode);
    std::vector<float> v(3 * 32, 0.5f);
    v[7] = std::numeric_limits<float>::infinity();      // group 0: exponent +Inf
    for (int i = 32; i < 64; ++i) v[i] = std::ldexp(3.0f, -128);  // group 1: exponent -129 unclamped
    v[64] = -std::numeric_limits<float>::infinity();     // group 2: exponent +Inf
    auto q = quantize(dev(Array::from_vector(v, {1, 96})), 32, std::nullopt, mode);
    const auto s = host(q[1]).to_vector<uint8_t>();
    EXPECT_EQ(s[0], 254);
    EXPECT_EQ(s[1], 0) << "a tiny group must get 2^-127, not a wrapped byte";
    EXPECT_EQ(s[2], 254);
    const auto d =
        host(dequantize(q[0], q[1], std::nullopt, 32, std::nullopt, mode, std::nullopt, Dtype::float32)).to_double_vector();
    // 1.5 * 2^-127 is exact in both element formats with the clamped scale.
    for (int i = 32; i < 64; ++i) EXPECT_EQ(d[i], std::ldexp(3.0, -128)) << "element " << i;
  }
}

// Portable affine quantizer: a NaN element reached static_cast<uint32_t>(NaN)
// (undefined); it must get code 0 like the SIMD kernels give.
TEST(Regression, AffineQuantizeOfNaNGivesCodeZero) {
  MMKIT_REQUIRE_DEVICE();
  std::vector<float> v(64);
  for (int i = 0; i < 64; ++i) v[i] = static_cast<float>(i % 32) - 16.0f;
  v[3] = std::numeric_limits<float>::quiet_NaN();
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    auto q = quantize(dev(Array::from_vector(v, {2, 32})), 32, bits, "affine");
    const Array w = host(q[0]).contiguous();
    uint32_t c = 0;
    for (int i = 0; i < bits; ++i) {
      const int64_t t = 3 * bits + i;
      c |= ((w.data<uint32_t>()[t / 32] >> (t % 32)) & 1u) << i;
    }
    EXPECT_EQ(c, 0u) << "bits " << bits;
  }
}

// Array::broadcast_to / reshape accepted shapes whose element count overflows
// int64 (signed overflow in shape_size, then garbage sizes inside the ops).
TEST(Regression, ShapeElementCountOverflowIsAnError) {
  const int64_t big = int64_t{1} << 40;
  const Array one = Array::scalar(1.0);
  EXPECT_THROW(one.broadcast_to({big, big}), Error);
  EXPECT_THROW(Array::zeros({0}, Dtype::float32).reshape({big, big, 0}).reshape({big, big}), Error);
  EXPECT_THROW(shape_size({big, big, big}), Error);
  EXPECT_THROW(quantize(Array::scalar(1.0).broadcast_to({big, big, 64}), 64, 4), Error);
  // An empty shape with huge dims is fine (0 elements), in any order.
  EXPECT_EQ(shape_size({big, big, 0}), 0);
  EXPECT_EQ(Array::zeros({0}, Dtype::float32).reshape({big, big, 0}).size(), 0);
}

// fuzz_safetensors, UBSan "signed integer overflow: 4294967296 * 4294967296":
// the row-major strides of an empty shape with huge extents (a tensor header
// {0, 2^32, 2^32, ...}) overflowed int64 although the array has no element.
TEST(Regression, StridesOfAnEmptyShapeWithHugeExtentsDoNotOverflow) {
  const int64_t big = int64_t{1} << 32;
  const Array a = Array::zeros({0, big, big, 2}, Dtype::float32);
  EXPECT_EQ(a.size(), 0);
  EXPECT_EQ(a.shape(), (Shape{0, big, big, 2}));
  EXPECT_EQ(a.reshape({big, 0, big}).size(), 0);
}

// fuzz_gather_mm / fuzz_quantized_matmul with MMKIT_CPU_ISA=scalar, UBSan
// "null pointer passed as argument 1" in to_float: with K = 0 the portable
// kernels converted 0 elements into an empty vector's null data() through
// memcpy. K = 0 must give zeros (SPEC decision 9) on every path.
TEST(Regression, ContractionLengthZeroGivesZeros) {
  MMKIT_REQUIRE_DEVICE();
  for (Dtype dt : {Dtype::float32, Dtype::bfloat16}) {
    const Array a = dev(Array::zeros({2, 3, 0}, dt)), b = dev(Array::zeros({2, 0, 5}, dt));
    for (const Array& y : {gather_mm(a, b), gather_mm(a, b, std::nullopt, dev(Array::from_vector(std::vector<int64_t>{1, 0}))),
                           block_masked_mm(a, b, 32, dev(Array::full({2, 1, 1}, 1.0, Dtype::bool_)))}) {
      ASSERT_EQ(y.shape(), (Shape{2, 3, 5}));
      for (double v : host(y).to_double_vector()) EXPECT_EQ(v, 0.0);
    }
    // transpose=false: K is w's row count, so it can be 0.
    const Array wq = dev(Array::zeros({0, 4}, Dtype::uint32));
    const Array s = dev(Array::zeros({0, 1}, dt));
    const Array y = quantized_matmul(dev(Array::zeros({3, 0}, dt)), wq, s, s, false, 32, 4);
    ASSERT_EQ(y.shape(), (Shape{3, 32}));
    for (double v : host(y).to_double_vector()) EXPECT_EQ(v, 0.0);
  }
}

// fuzz_block_masked_mm (UBSan: "applying non-zero offset to null pointer" in
// ref::block_masked_mm): the library broadcasts 0-D and 1-D masks right-aligned
// (a (tn,) out mask applies to every block row), but the float64 reference
// indexed such a mask's shape at [size - 2]. The reference now treats them as
// (1, 1) / (1, n) grids; both must agree.
TEST(Regression, LowRankBlockMasksBroadcastInTheReference) {
  const Array a = Array::from_vector(std::vector<float>(64 * 96, 1.0f), {64, 96});
  Array b = Array::from_vector(std::vector<float>(96 * 64, 0.0f), {96, 64});
  for (int64_t i = 0; i < 96 * 64; ++i) b.data<float>()[i] = static_cast<float>(i % 7) - 3.0f;
  const Array row = Array::from_vector(std::vector<uint8_t>{1, 0}, {2}).astype(Dtype::bool_);
  const Array k3 = Array::from_vector(std::vector<float>{1.0f, 0.0f, 2.0f}, {3});
  const Array yes = Array::full({}, 1.0, Dtype::bool_);
  struct Case {
    const char* what;
    std::optional<Array> mo, ml, mr;
  };
  for (const Case& c : {Case{"1-D out mask", row, std::nullopt, std::nullopt},
                        Case{"0-D out mask", yes, std::nullopt, std::nullopt},
                        Case{"1-D float lhs mask", std::nullopt, k3, std::nullopt},
                        Case{"1-D bool rhs mask", std::nullopt, std::nullopt, row}}) {
    SCOPED_TRACE(c.what);
    const Array y = block_masked_mm(a, b, 32, c.mo, c.ml, c.mr);
    EXPECT_TRUE(all_close(y, ref::block_masked_mm(a, b, 32, c.mo, c.ml, c.mr), 1e-6, 0.0));
  }
}

// fuzz_gather_qmm (WRONG RESULT "NaN not propagated", AVX-512 level): the fused
// few-row kernel multiplies a group's dot product by its scale, so an E8M0
// scale byte 255 (+Inf) over a group of zero codes gave +-Inf where the
// dequantize-first semantics give Inf * 0 = NaN. Experts with a non-finite
// output are now recomputed by the GEMM path.
TEST(Regression, InfiniteScaleTimesZeroCodesIsNaN) {
  MMKIT_REQUIRE_DEVICE();
  const int64_t N = 3, K = 64;
  std::vector<uint32_t> w(static_cast<size_t>(N * K / 8), 0x22222222u);  // E2M1 code 2 = 1.0
  for (int64_t i = 0; i < K / 8; ++i) w[static_cast<size_t>(i)] = 0u;    // row 0: all codes +0
  w[static_cast<size_t>(2 * K / 8)] = 0u;  // row 2: the first 8 codes of group 0 are +0, the rest 1.0
  std::vector<uint8_t> sc = {255, 255, 127, 127, 255, 127};  // row 0: both groups Inf; row 2: group 0 Inf
  const Array wq = Array::from_vector(w, {N, K / 8});
  const Array scales = Array::from_vector(sc, {N, 2});
  for (Dtype dt : {Dtype::float32, Dtype::bfloat16}) {
    SCOPED_TRACE(dtype_name(dt));
    const Array x = Array::full({1, K}, -8.0, dt);
    const std::vector<double> y =
        host(quantized_matmul(dev(x), dev(wq), dev(scales), std::nullopt, true, 32, 4, "mxfp4")).to_double_vector();
    EXPECT_TRUE(std::isnan(y[0])) << y[0];  // Inf * 0 in every product
    EXPECT_EQ(y[1], -8.0 * K);             // finite row untouched
    EXPECT_TRUE(std::isnan(y[2])) << y[2];  // Inf * 0 for 8 products, -Inf for the rest
  }
}

// fuzz_block_masked_mm (WRONG RESULT "element 27 of (2,2,3,3) is -nan,
// reference 0"): with a float operand mask, both operand masks are float
// (SPEC pitfall 13) and multiply the data (decision 8) in float32, the
// computation dtype. Here a bfloat16 b times the rhs mask -(2^51 - 2^27)
// overflows float32 to -Inf and the bool false lhs mask (now 0.0) gives
// 0 * -Inf = NaN on every backend; the float64 reference did not overflow and
// gave 0. The reference now rounds each masked operand element to float32.
TEST(Regression, FloatMaskedOperandOverflowsFloat32ToInfTimesZeroIsNaN) {
  MMKIT_REQUIRE_DEVICE();
  // a (2, 2, 3, 3) float32 (small integers), b (2, 2, 3, 3) bfloat16 (bit
  // patterns, the entry (1, 1) holds 1.7e25, 2.8e23 and 1.8e31), block size 64.
  const std::vector<float> av = {-8, -8, -8, -8, -8, -8, -8, -8, -8, -7, -7, -7, -7, -7, -7, 2,  -7, -7,
                                 -7, -7, -7, -7, -7, -7, -7, -7, -7, -7, -7, -7, -7, -7, -7, -7, -7, -8};
  const std::vector<uint16_t> bbits = {0x2073, 0x75fb, 0x4e4f, 0x4e41, 0x44fe, 0x8e8f, 0x8efb, 0x8e8f, 0x8e8f,
                                       0x8e8f, 0x8e8f, 0x8e8f, 0x8e8f, 0x8e8f, 0x8e8f, 0x8e8f, 0x8e8f, 0x8e8f,
                                       0x7881, 0x7878, 0x7878, 0x7878, 0x4c4c, 0x4c4c, 0xad4c, 0x4c4c, 0x4c4c,
                                       0x4c4c, 0x4c4c, 0x4c4c, 0x4c4c, 0x5823, 0x6966, 0x6669, 0x2074, 0x7369};
  std::vector<float> bv;
  for (uint16_t h : bbits) bv.push_back(bf16_bits_to_float(h));
  const Array a = Array::from_vector(av, {2, 2, 3, 3});
  const Array b = Array::from_vector(bv, {2, 2, 3, 3}).astype(Dtype::bfloat16);
  const Array mo = Array::full({1, 1}, 1.0, Dtype::bool_);
  const Array ml = Array::full({1, 1}, 0.0, Dtype::bool_);
  // (1, 2, 1, 1): a subnormal 4.6e-41 for batch column 0, -(2^51 - 2^27) for column 1.
  const Array mr = Array::from_vector(std::vector<float>{bits_f32(0x0000807eu), bits_f32(0xd8ffffffu)}, {1, 2, 1, 1});
  const Array y = host(block_masked_mm(dev(a), dev(b), 64, dev(mo), dev(ml), dev(mr)));
  ASSERT_EQ(y.dtype(), Dtype::float32);
  const ref::Tensor r = ref::block_masked_mm(a, b, 64, mo, ml, mr);
  EXPECT_TRUE(all_close(y, r, 0.0, 0.0));
  // Entry (1, 1): columns 0 and 2 meet an overflowed b element (k = 2 and
  // k = 1, 2), column 1 does not; every other entry is 0 * finite = 0.
  const std::vector<double> v = y.to_double_vector();
  for (int64_t i = 0; i < 36; ++i) {
    const bool nan = i >= 27 && i % 3 != 1;
    EXPECT_EQ(std::isnan(r.v[static_cast<size_t>(i)]), nan) << "reference, element " << i;
    EXPECT_EQ(std::isnan(v[static_cast<size_t>(i)]), nan) << "element " << i;
    if (!nan) {
      EXPECT_EQ(v[static_cast<size_t>(i)], 0.0) << "element " << i;
    }
  }
}

}  // namespace
}  // namespace mmkit::test
