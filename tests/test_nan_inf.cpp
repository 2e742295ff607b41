// NaN and Inf behaviour of every op, as documented in docs/errors.md
// ("Non-finite values"). Non-finite inputs are never errors: the matmuls
// follow IEEE arithmetic (NaN and Inf propagate; Inf * 0 = NaN), the
// quantizers follow the float math of SPEC 1.3 / 1.4 with NaN codes defined,
// fp8 encoding saturates, and block_masked_mm multiplies float masks (NaN * 0
// stays NaN) but zeroes bool-masked blocks.
//
// Data are small integers (every sum exact in float32), so apart from the
// special values the results are compared exactly with the float64 reference.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "test_util.h"

namespace mmkit::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

Array host(const Array& a) { return a.to(Device::cpu()); }
Array dev(const Array& a) { return a.to(test_device()); }

/// batch + (rows, cols) float32 weights whose affine 4-bit quantization is
/// exact: every group along cols holds -8 and 7, so scale 1, bias -8.
Array exact_weights(Shape shape, int gs, uint64_t seed) {
  Array w = randint(shape, Dtype::float32, seed, -8, 7);
  const int64_t cols = shape.back(), n = w.size();
  for (int64_t i = 0; i < n; i += cols)
    for (int64_t g = 0; g < cols; g += gs) {
      w.data<float>()[i + g] = -8.0f;
      w.data<float>()[i + g + 1] = 7.0f;
    }
  return w;
}

/// (rows, cols) float32 array of small integers.
Array int_matrix(int64_t rows, int64_t cols, uint64_t seed, int lo = -3, int hi = 3) {
  return randint({rows, cols}, Dtype::float32, seed, lo, hi);
}

void set(Array& a, const std::vector<int64_t>& idx, float v) {
  ASSERT_TRUE(a.device().is_cpu() && a.dtype() == Dtype::float32 && a.is_contiguous());
  int64_t off = 0;
  for (size_t i = 0; i < idx.size(); ++i) off = off * a.shape()[i] + idx[i];
  a.data<float>()[off] = v;
}

uint32_t code_at(const Array& wq, int64_t row, int64_t j, int bits) {
  Array c = host(wq).contiguous();
  const uint32_t* r = c.data<uint32_t>() + row * c.shape(-1);
  uint32_t v = 0;
  for (int i = 0; i < bits; ++i) {
    const int64_t t = j * bits + i;
    v |= ((r[t / 32] >> (t % 32)) & 1u) << i;
  }
  return v;
}

// ---------------------------------------------------------------------------
// quantize / dequantize, affine (SPEC 1.3 float math)

TEST(NanInf, AffineNaNElementIsIgnoredByTheRangeAndGetsCodeZero) {
  MMKIT_REQUIRE_DEVICE();
  for (Dtype dt : {Dtype::float32, Dtype::bfloat16}) {
    // Row 0: 0..31 with element 5 NaN; row 1: the same with element 5 = 5.
    std::vector<float> v(64);
    for (int i = 0; i < 32; ++i) v[i] = v[32 + i] = static_cast<float>(i);
    v[5] = kNaN;
    Array w = dev(Array::from_vector(v, {2, 32}).astype(dt));
    auto q = quantize(w, 32, 4, "affine");
    auto s = host(q[1]).to_double_vector(), b = host(q[2]).to_double_vector();
    EXPECT_EQ(s[0], s[1]) << "NaN changed the scale";
    EXPECT_EQ(b[0], b[1]) << "NaN changed the bias";
    EXPECT_EQ(b[0], 31.0) << "bias is the larger-magnitude edge";
    for (int j = 0; j < 32; ++j)
      EXPECT_EQ(code_at(q[0], 0, j, 4), j == 5 ? 0u : code_at(q[0], 1, j, 4)) << "element " << j;
    // So the NaN element dequantizes to the bias (the edge value 31).
    auto d = host(dequantize(q[0], q[1], q[2], 32, 4, "affine", std::nullopt, Dtype::float32)).to_double_vector();
    EXPECT_EQ(d[5], 31.0);
  }
}

TEST(NanInf, AffineInfOrAllNaNGroupGivesNaNScaleInfBiasAndDequantizesToNaN) {
  MMKIT_REQUIRE_DEVICE();
  // Groups (gs 32) of one row: [+Inf, 1..31], [-Inf, 1..31], all NaN, finite.
  std::vector<float> v(128);
  for (int g = 0; g < 4; ++g)
    for (int i = 0; i < 32; ++i) v[g * 32 + i] = static_cast<float>(i);
  v[0] = kInf;
  v[32] = -kInf;
  for (int i = 0; i < 32; ++i) v[64 + i] = kNaN;
  Array w = dev(Array::from_vector(v, {1, 128}));
  auto q = quantize(w, 32, 4, "affine");
  auto s = host(q[1]).to_double_vector(), b = host(q[2]).to_double_vector();
  EXPECT_TRUE(std::isnan(s[0]) && b[0] == kInf) << s[0] << " " << b[0];
  EXPECT_TRUE(std::isnan(s[1]) && b[1] == -kInf) << s[1] << " " << b[1];
  EXPECT_TRUE(std::isnan(s[2]) && b[2] == -kInf) << s[2] << " " << b[2];
  EXPECT_TRUE(std::isfinite(s[3]) && b[3] == 31.0) << "a finite group next to them is unaffected";
  for (int j = 0; j < 96; ++j) EXPECT_EQ(code_at(q[0], 0, j, 4), 0u) << "element " << j;
  auto d = host(dequantize(q[0], q[1], q[2], 32, 4, "affine")).to_double_vector();
  for (int j = 0; j < 96; ++j) EXPECT_TRUE(std::isnan(d[j])) << "element " << j << " = " << d[j];
  for (int j = 96; j < 128; ++j) EXPECT_TRUE(std::isfinite(d[j]));
}

TEST(NanInf, AffineRangeOverflowGivesInfiniteScaleAndDequantizesToNaN) {
  MMKIT_REQUIRE_DEVICE();
  // wmax - wmin overflows float32: s = -Inf, q0 = rint(3e38 / -Inf) = 0, so
  // bias = 0 and every code is 0; dequantize gives -Inf * 0 = NaN.
  std::vector<float> v(32, 0.0f);
  v[0] = 3e38f;
  v[1] = -3e38f;
  auto q = quantize(dev(Array::from_vector(v, {1, 32})), 32, 8, "affine");
  EXPECT_EQ(host(q[1]).item_double(), -kInf);
  EXPECT_EQ(host(q[2]).item_double(), 0.0);
  for (double x : host(dequantize(q[0], q[1], q[2], 32, 8)).to_double_vector()) EXPECT_TRUE(std::isnan(x));
}

TEST(NanInf, AffineDequantizePropagatesNonFiniteScalesAndBiases) {
  MMKIT_REQUIRE_DEVICE();
  // codes: element j of the 32-group has code j % 16 (4 bits)
  Array wq = Array::zeros({3, 4}, Dtype::uint32);
  for (int r = 0; r < 3; ++r)
    for (int k = 0; k < 4; ++k) wq.data<uint32_t>()[r * 4 + k] = 0xFEDCBA98u;  // codes 8..15
  Array s = Array::from_vector(std::vector<float>{kNaN, kInf, 1.0f}, {3, 1});
  Array b = Array::from_vector(std::vector<float>{0.0f, 0.0f, -kInf}, {3, 1});
  auto d = host(dequantize(dev(wq), dev(s), dev(b), 32, 4, "affine")).to_double_vector();
  for (int j = 0; j < 32; ++j) {
    EXPECT_TRUE(std::isnan(d[j])) << "NaN scale, element " << j;
    EXPECT_EQ(d[32 + j], kInf) << "Inf scale times a positive code, element " << j;
    EXPECT_EQ(d[64 + j], -kInf) << "-Inf bias, element " << j;
  }
}

// ---------------------------------------------------------------------------
// quantize / dequantize, fp modes (SPEC 1.4)

TEST(NanInf, FpQuantizeNaNElementIsIgnoredByTheScaleAndGetsADefinedCode) {
  MMKIT_REQUIRE_DEVICE();
  struct Case {
    const char* mode;
    int gs, bits;
    uint32_t nan_code;  // fp4: nearest-value search keeps code 0; E4M3: saturates to 0x7E
  };
  for (const Case& c : {Case{"mxfp4", 32, 4, 0u}, Case{"mxfp8", 32, 8, 0x7Eu}, Case{"nvfp4", 16, 4, 0u}}) {
    SCOPED_TRACE(c.mode);
    // Row 0 has a NaN at element 3, row 1 has 0 there: same scale, same other codes.
    std::vector<float> v(2 * 32);
    for (int i = 0; i < 32; ++i) v[i] = v[32 + i] = static_cast<float>((i % 7) - 3) * 0.5f;
    v[3] = kNaN;
    v[32 + 3] = 0.0f;
    auto q = quantize(dev(Array::from_vector(v, {2, 32})), c.gs, c.bits, c.mode);
    auto s = host(q[1]).to_vector<uint8_t>();
    const int64_t groups = 32 / c.gs;
    for (int64_t g = 0; g < groups; ++g) EXPECT_EQ(s[g], s[groups + g]) << "group " << g;
    for (int j = 0; j < 32; ++j)
      EXPECT_EQ(code_at(q[0], 0, j, c.bits), j == 3 ? c.nan_code : code_at(q[0], 1, j, c.bits)) << "element " << j;
  }
}

TEST(NanInf, MxQuantizeOfAnInfGroupClampsTheExponentTo127) {
  MMKIT_REQUIRE_DEVICE();
  // amax = Inf: log2 gives Inf, the exponent is clamped to 127 (byte 254, as
  // MLX's Metal kernel does). Finite elements scale to ~0; Inf stays Inf,
  // which E2M1's nearest-value search maps to code 0 and E4M3 saturates to 448.
  for (const char* mode : {"mxfp4", "mxfp8"}) {
    SCOPED_TRACE(mode);
    const int bits = std::string(mode) == "mxfp4" ? 4 : 8;
    std::vector<float> v(64, 1.0f);
    v[3] = kInf;
    v[32 + 4] = -kInf;
    auto q = quantize(dev(Array::from_vector(v, {1, 64})), 32, bits, mode);
    auto s = host(q[1]).to_vector<uint8_t>();
    EXPECT_EQ(s[0], 254);
    EXPECT_EQ(s[1], 254);
    for (int j = 0; j < 64; ++j) {
      uint32_t expect = 0;
      if (bits == 8 && j == 3) expect = 0x7E;
      if (bits == 8 && j == 36) expect = 0xFE;
      EXPECT_EQ(code_at(q[0], 0, j, bits), expect) << "element " << j;
    }
  }
}

TEST(NanInf, MxQuantizeOfATinyGroupClampsTheExponentToMinus127) {
  MMKIT_REQUIRE_DEVICE();
  // amax / 6 < 2^-127.5: the unclamped exponent would not fit E8M0. With the
  // clamp the scale is 2^-127 (byte 0) and the elements keep their codes.
  std::vector<float> v(32, 0.0f);
  v[0] = std::ldexp(1.0f, -129);  // 2^-129 * 2^127 = 0.25 -> E2M1 ties to 0
  v[1] = std::ldexp(1.0f, -127);  // -> 1.0, code 2
  v[2] = -std::ldexp(3.0f, -127);  // -> -3.0, code 13
  auto q = quantize(dev(Array::from_vector(v, {1, 32})), 32, 4, "mxfp4");
  EXPECT_EQ(host(q[1]).to_vector<uint8_t>()[0], 0);
  EXPECT_EQ(code_at(q[0], 0, 0, 4), 0u);
  EXPECT_EQ(code_at(q[0], 0, 1, 4), 2u);
  EXPECT_EQ(code_at(q[0], 0, 2, 4), 13u);
  auto d = host(dequantize(q[0], q[1], std::nullopt, 32, 4, "mxfp4", std::nullopt, Dtype::float32)).to_double_vector();
  EXPECT_EQ(d[1], std::ldexp(1.0, -127));
  EXPECT_EQ(d[2], -std::ldexp(3.0, -127));
}

TEST(NanInf, NvQuantizeOfAnInfGroupSaturatesTheScaleTo448) {
  MMKIT_REQUIRE_DEVICE();
  std::vector<float> v(16, 1.0f);
  v[7] = kInf;
  auto q = quantize(dev(Array::from_vector(v, {1, 16})), 16, 4, "nvfp4");
  EXPECT_EQ(host(q[1]).to_vector<uint8_t>()[0], 0x7E);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(code_at(q[0], 0, j, 4), 0u) << "element " << j;  // 1/448 -> 0, Inf -> 0
}

TEST(NanInf, FpDequantizeOfE8M0Byte255IsInfiniteTimesTheCode) {
  MMKIT_REQUIRE_DEVICE();
  // mxfp4 codes 0..7 then 8..15 (8 per word): byte 255 decodes to +Inf, so
  // +-0 codes give NaN and the others +-Inf.
  Array wq = Array::zeros({1, 4}, Dtype::uint32);
  for (int k = 0; k < 4; ++k) wq.data<uint32_t>()[k] = k % 2 ? 0xFEDCBA98u : 0x76543210u;
  Array s = Array::full({1, 1}, 255, Dtype::uint8);
  for (Dtype dt : {Dtype::float32, Dtype::bfloat16, Dtype::float16}) {
    auto d = host(dequantize(dev(wq), dev(s), std::nullopt, 32, 4, "mxfp4", std::nullopt, dt)).to_double_vector();
    for (int j = 0; j < 32; ++j) {
      const int c = j % 16;
      if (c % 8 == 0) {
        EXPECT_TRUE(std::isnan(d[j])) << dtype_name(dt) << " element " << j;
      } else {
        EXPECT_EQ(d[j], c < 8 ? kInf : -kInf) << dtype_name(dt) << " element " << j;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// to_fp8 / from_fp8 (SPEC 0.4)

TEST(NanInf, ToFp8SaturatesNaNAndInfTo448WithTheirSign) {
  MMKIT_REQUIRE_DEVICE();
  const std::vector<float> v = {kNaN, -kNaN, kInf, -kInf, 448.0f, 1e30f, -500.0f, 0.0f, -0.0f};
  const std::vector<uint8_t> expect = {0x7E, 0xFE, 0x7E, 0xFE, 0x7E, 0x7E, 0xFE, 0x00, 0x80};
  for (Dtype dt : {Dtype::float32, Dtype::float16, Dtype::bfloat16}) {
    auto y = host(to_fp8(dev(Array::from_vector(v).astype(dt)))).to_vector<uint8_t>();
    for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(y[i], expect[i]) << dtype_name(dt) << " value " << v[i];
  }
  // No byte decodes to NaN or Inf: 0x7F / 0xFF are +-480.
  std::vector<uint8_t> all(256);
  for (int i = 0; i < 256; ++i) all[i] = static_cast<uint8_t>(i);
  auto d = host(from_fp8(dev(Array::from_vector(all)), Dtype::float32)).to_double_vector();
  for (int i = 0; i < 256; ++i) EXPECT_TRUE(std::isfinite(d[i])) << i;
  EXPECT_EQ(d[0x7F], 480.0);
  EXPECT_EQ(d[0xFF], -480.0);
}

// ---------------------------------------------------------------------------
// matmuls: IEEE propagation

/// y must equal the float64 reference exactly, NaN where it is NaN, the
/// same infinity where it is infinite.
void expect_matches(const Array& y, const ref::Tensor& r) { EXPECT_TRUE(all_close(host(y), r, 0.0, 0.0)); }

TEST(NanInf, QuantizedMatmulPropagatesNaNAndInfFromX) {
  MMKIT_REQUIRE_DEVICE();
  for (bool transpose : {true, false}) {
    SCOPED_TRACE(transpose ? "transpose" : "no transpose");
    const int64_t M = 4, N = 32, K = 64;
    Array wf = transpose ? exact_weights({N, K}, 32, 11) : exact_weights({K, N}, 32, 11);
    auto q = quantize(wf, 32, 4, "affine");
    Array x = int_matrix(M, K, 12);
    set(x, {1, 5}, kNaN);
    set(x, {2, 7}, kInf);
    Array y = host(quantized_matmul(dev(x), dev(q[0]), dev(q[1]), dev(q[2]), transpose, 32, 4));
    expect_matches(y, ref::quantized_matmul(x, q[0], q[1], q[2], transpose, 32, 4, "affine"));
    auto v = y.to_double_vector();
    const ref::Tensor wd = ref::dequantize(q[0], q[1], q[2], 32, 4, "affine");
    for (int64_t n = 0; n < N; ++n) {
      EXPECT_TRUE(std::isnan(v[1 * N + n])) << "row with a NaN, column " << n;
      const double w7 = transpose ? wd.v[n * K + 7] : wd.v[7 * N + n];
      if (w7 == 0.0) {
        EXPECT_TRUE(std::isnan(v[2 * N + n])) << "Inf * 0, column " << n;
      } else {
        EXPECT_EQ(v[2 * N + n], w7 > 0 ? kInf : -kInf) << "column " << n;
      }
      EXPECT_TRUE(std::isfinite(v[n]) && std::isfinite(v[3 * N + n])) << "clean rows stay finite";
    }
  }
}

TEST(NanInf, QuantizedMatmulPropagatesNaNScalesToTheirOutputColumn) {
  MMKIT_REQUIRE_DEVICE();
  const int64_t M = 3, N = 8, K = 64;
  auto q = quantize(exact_weights({N, K}, 32, 21), 32, 4, "affine");
  Array s = q[1].copy();
  s.data<float>()[2 * 2 + 1] = kNaN;  // row n = 2, group 1
  Array x = int_matrix(M, K, 22);
  Array y = host(quantized_matmul(dev(x), dev(q[0]), dev(s), dev(q[2]), true, 32, 4));
  expect_matches(y, ref::quantized_matmul(x, q[0], s, q[2], true, 32, 4, "affine"));
  auto v = y.to_double_vector();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) EXPECT_EQ(std::isnan(v[m * N + n]), n == 2) << m << "," << n;
}

TEST(NanInf, GatherQmmNaNOnlyReachesTheOutputsThatGatherIt) {
  MMKIT_REQUIRE_DEVICE();
  // x (3, 2, 64) with a NaN in batch 1; lhs [0, 1, 2, 1], rhs [0, 0, 1, 1].
  const int64_t K = 64, N = 16;
  Array wf = exact_weights({2, N, K}, 64, 31);
  auto q = quantize(wf, 64, 4, "affine");
  Array x = randint({3, 2, K}, Dtype::float32, 32, -2, 2);
  set(x, {1, 0, 9}, kNaN);
  Array lhs = Array::from_vector(std::vector<int32_t>{0, 1, 2, 1});
  Array rhs = Array::from_vector(std::vector<int32_t>{0, 0, 1, 1});
  Array y = host(gather_qmm(dev(x), dev(q[0]), dev(q[1]), dev(q[2]), dev(lhs), dev(rhs), true, 64, 4));
  expect_matches(y, ref::gather_qmm(x, q[0], q[1], q[2], lhs, rhs, true, 64, 4, "affine"));
  auto v = y.to_double_vector();  // (4, 2, N)
  for (int64_t l = 0; l < 4; ++l)
    for (int64_t m = 0; m < 2; ++m)
      for (int64_t n = 0; n < N; ++n)
        EXPECT_EQ(std::isnan(v[(l * 2 + m) * N + n]), (l == 1 || l == 3) && m == 0) << l << "," << m << "," << n;
}

TEST(NanInf, GatherMmPropagatesNaNAndInf) {
  MMKIT_REQUIRE_DEVICE();
  for (Dtype dt : {Dtype::float32, Dtype::float16, Dtype::bfloat16}) {
    SCOPED_TRACE(dtype_name(dt));
    Array a = randint({2, 3, 40}, Dtype::float32, 41, -2, 2);
    Array b = randint({3, 40, 5}, Dtype::float32, 42, -2, 2);
    set(a, {0, 2, 1}, kNaN);
    set(b, {2, 7, 4}, kInf);
    b.data<float>()[(2 * 40 + 7) * 5 + 3] = 0.0f;  // (2, 7, 3) = 0 next to the Inf
    Array lhs = Array::from_vector(std::vector<int64_t>{0, 1, 1});
    Array rhs = Array::from_vector(std::vector<int64_t>{2, 2, 0});
    Array y = host(gather_mm(dev(a.astype(dt)), dev(b.astype(dt)), lhs, rhs));
    expect_matches(y, ref::gather_mm(a.astype(dt), b.astype(dt), lhs, rhs));
    auto v = y.to_double_vector();  // (3, 3, 5)
    for (int n = 0; n < 5; ++n) EXPECT_TRUE(std::isnan(v[(0 * 3 + 2) * 5 + n])) << "lhs 0 row 2 has the NaN";
    for (int m = 0; m < 3; ++m) {
      // batch 1 of a against b[2]: column 4 meets the Inf, column 3 meets it nowhere
      const double a17 = a.data<float>()[(1 * 3 + m) * 40 + 7];
      if (a17 == 0.0) {
        EXPECT_TRUE(std::isnan(v[(1 * 3 + m) * 5 + 4]));
      } else {
        EXPECT_EQ(v[(1 * 3 + m) * 5 + 4], a17 > 0 ? kInf : -kInf);
      }
      for (int n = 0; n < 5; ++n) EXPECT_TRUE(std::isfinite(v[(2 * 3 + m) * 5 + n])) << "entry 2 is clean";
    }
  }
}

// ---------------------------------------------------------------------------
// block_masked_mm (SPEC decision 8)

TEST(NanInf, BlockMaskedFloatMasksMultiplySoNaNTimesZeroStaysNaN) {
  MMKIT_REQUIRE_DEVICE();
  // a (64, 64) with a NaN in block (0, 0); bs 32: 2x2 output blocks, 2 k-blocks.
  Array a = int_matrix(64, 64, 51);
  Array b = int_matrix(64, 64, 52);
  set(a, {3, 4}, kNaN);
  // Float out mask 0 on block (0, 0): 0 * NaN = NaN, the block stays NaN.
  Array mo = Array::from_vector(std::vector<float>{0, 1, 1, 1}, {2, 2});
  Array y = host(block_masked_mm(dev(a), dev(b), 32, dev(mo)));
  expect_matches(y, ref::block_masked_mm(a, b, 32, mo, std::nullopt, std::nullopt));
  auto v = y.to_double_vector();
  for (int n = 0; n < 64; ++n) EXPECT_EQ(std::isnan(v[3 * 64 + n]), true) << "row 3 (NaN) col " << n;
  // Float lhs mask 0 on block (i=0, k=0): (0 * NaN) * b is still NaN.
  Array ml = Array::from_vector(std::vector<float>{0, 1, 1, 1}, {2, 2});
  Array y2 = host(block_masked_mm(dev(a), dev(b), 32, std::nullopt, dev(ml)));
  expect_matches(y2, ref::block_masked_mm(a, b, 32, std::nullopt, ml, std::nullopt));
  auto v2 = y2.to_double_vector();
  for (int n = 0; n < 64; ++n) EXPECT_TRUE(std::isnan(v2[3 * 64 + n])) << "col " << n;
}

TEST(NanInf, BlockMaskedBoolMasksZeroTheBlockEvenWithNaNData) {
  MMKIT_REQUIRE_DEVICE();
  Array a = int_matrix(64, 64, 53);
  Array b = int_matrix(64, 64, 54);
  set(a, {3, 4}, kNaN);
  set(b, {40, 50}, kInf);
  // Bool out mask false on block (0, *): rows 0..31 are exactly 0.
  Array mo = Array::from_vector(std::vector<uint8_t>{0, 0, 1, 1}, {2, 2}).astype(Dtype::bool_);
  Array y = host(block_masked_mm(dev(a), dev(b), 32, dev(mo)));
  expect_matches(y, ref::block_masked_mm(a, b, 32, mo, std::nullopt, std::nullopt));
  auto v = y.to_double_vector();
  for (int m = 0; m < 32; ++m)
    for (int n = 0; n < 64; ++n) ASSERT_EQ(v[m * 64 + n], 0.0) << m << "," << n;
  // Bool lhs mask false on (i=0, k=0) and rhs false on (k=1, j=1): the NaN
  // and the Inf are never read; everything is finite.
  Array ml = Array::from_vector(std::vector<uint8_t>{0, 1, 1, 1}, {2, 2}).astype(Dtype::bool_);
  Array mr = Array::from_vector(std::vector<uint8_t>{1, 1, 1, 0}, {2, 2}).astype(Dtype::bool_);
  Array y2 = host(block_masked_mm(dev(a), dev(b), 32, std::nullopt, dev(ml), dev(mr)));
  expect_matches(y2, ref::block_masked_mm(a, b, 32, std::nullopt, ml, mr));
  for (double x : y2.to_double_vector()) ASSERT_TRUE(std::isfinite(x));
}

}  // namespace
}  // namespace mmkit::test
