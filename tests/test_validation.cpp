// One test per validation condition of the op front ends (SPEC 1.5, 2.5,
// 3.6, 4.3, 5.3, 6.3 and mmkit decisions 2, 3, 6): the call throws
// mmkit::Error (a std::invalid_argument), the message starts with "[op]" and
// names the offending value or shape.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "test_util.h"

namespace mmkit::test {
namespace {

::testing::AssertionResult throws_error(const std::function<void()>& f, const std::string& op,
                                        const std::vector<std::string>& needles) {
  try {
    f();
  } catch (const Error& e) {
    const std::string m = e.what();
    if (m.rfind("[" + op + "]", 0) != 0)
      return ::testing::AssertionFailure() << "message does not start with [" << op << "]: " << m;
    for (const auto& n : needles)
      if (m.find(n) == std::string::npos)
        return ::testing::AssertionFailure() << "message does not mention '" << n << "': " << m;
    const std::invalid_argument* base = &e;  // decision 6: ValueError in Python
    (void)base;
    return ::testing::AssertionSuccess() << m;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw something other than mmkit::Error: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

#define EXPECT_MMKIT_ERROR(stmt, op, ...) EXPECT_TRUE(throws_error([&] { (void)(stmt); }, op, {__VA_ARGS__}))

/// A valid affine problem (gs 64, 4 bits): w (4, 64) packed to (4, 8),
/// scales / biases (4, 1), x (3, 64).
struct Affine {
  Array w = randn({4, 64}, Dtype::float32, 1);
  std::vector<Array> q = quantize(w);
  Array wq = q[0], s = q[1], b = q[2];
  Array x = randn({3, 64}, Dtype::float32, 2);
};

/// A valid mxfp4 problem: wq (4, 8), scales (4, 2) uint8.
struct Mx {
  std::vector<Array> q = quantize(randn({4, 64}, Dtype::float32, 3), std::nullopt, std::nullopt, "mxfp4");
  Array wq = q[0], s = q[1];
  Array x = randn({3, 64}, Dtype::float32, 4);
};

Array i32(const std::vector<int32_t>& v, const Shape& s) { return Array::from_vector(v, s); }
Array i32(const std::vector<int32_t>& v) { return Array::from_vector(v); }
const std::nullopt_t none = std::nullopt;

// ---------------------------------------------------------------------------
// quantize (SPEC 1.5)

TEST(ValidateQuantize, InvalidMode) {
  Array w = Array::zeros({4, 64}, Dtype::float32);
  EXPECT_MMKIT_ERROR(quantize(w, none, none, "xyz"), "quantize", "Invalid quantization mode", "'xyz'");
  EXPECT_MMKIT_ERROR(quantize(w, none, none, "Affine"), "quantize", "'Affine'");  // case sensitive
  EXPECT_MMKIT_ERROR(quantize(w, none, none, ""), "quantize", "''");
}

TEST(ValidateQuantize, NonFloatingInput) {
  EXPECT_MMKIT_ERROR(quantize(Array::zeros({4, 64}, Dtype::int32)), "quantize", "int32");
  EXPECT_MMKIT_ERROR(quantize(Array::zeros({4, 64}, Dtype::int32), none, none, "mxfp4"), "quantize", "int32");
  EXPECT_MMKIT_ERROR(quantize(Array::zeros({4, 64}, Dtype::uint32)), "quantize", "uint32");
}

TEST(ValidateQuantize, FewerThanTwoDimensions) {
  EXPECT_MMKIT_ERROR(quantize(Array::zeros({64}, Dtype::float32)), "quantize", "at least 2 dimensions", "1");
  // decision 2: 0-D inputs
  EXPECT_MMKIT_ERROR(quantize(Array::scalar(1.0)), "quantize", "at least 2 dimensions", "only 0");
}

TEST(ValidateQuantize, NonPositiveGroupSize) {
  Array w = Array::zeros({4, 64}, Dtype::float32);
  EXPECT_MMKIT_ERROR(quantize(w, 0), "quantize", "group size 0");
  EXPECT_MMKIT_ERROR(quantize(w, -32), "quantize", "-32");
}

TEST(ValidateQuantize, LastDimNotDivisibleByGroupSize) {
  Array w = Array::zeros({4, 48}, Dtype::float32);
  EXPECT_MMKIT_ERROR(quantize(w), "quantize", "divisible", "64", "(4,48)");
  // divisibility is reported before the mode's group-size rule (SPEC 1.5 note)
  EXPECT_MMKIT_ERROR(quantize(w, none, none, "mxfp4"), "quantize", "divisible", "32", "(4,48)");
}

TEST(ValidateQuantize, GlobalScaleOnlyForNvfp4) {
  Array w = Array::zeros({4, 64}, Dtype::float32);
  Array g = Array::scalar(1.0);
  EXPECT_MMKIT_ERROR(quantize(w, none, none, "affine", g), "quantize", "only supported for 'nvfp4'");
  EXPECT_MMKIT_ERROR(quantize(w, none, none, "mxfp4", g), "quantize", "only supported for 'nvfp4'");
}

TEST(ValidateQuantize, GlobalScaleNotScalar) {
  Array w = Array::zeros({4, 64}, Dtype::float32);
  EXPECT_MMKIT_ERROR(quantize(w, none, none, "nvfp4", Array::zeros({2}, Dtype::float32)), "quantize", "scalar",
                     "(2)");
  // any shape with exactly one element is fine
  EXPECT_NO_THROW(quantize(w, none, none, "nvfp4", Array::full({1, 1}, 1.0, Dtype::float32)));
}

TEST(ValidateQuantize, GlobalScaleNotFloat32) {
  Array w = Array::zeros({4, 64}, Dtype::float32);
  EXPECT_MMKIT_ERROR(quantize(w, none, none, "nvfp4", Array::scalar(1.0, Dtype::float16)), "quantize", "float32",
                     "float16");
}

TEST(ValidateQuantize, AffineUnsupportedGroupSize) {
  EXPECT_MMKIT_ERROR(quantize(Array::zeros({4, 64}, Dtype::float32), 16), "quantize", "group size 16",
                     "32, 64, and 128");
  EXPECT_MMKIT_ERROR(quantize(Array::zeros({4, 256}, Dtype::float32), 256), "quantize", "256");
}

TEST(ValidateQuantize, AffineUnsupportedBits) {
  Array w = Array::zeros({4, 64}, Dtype::float32);
  EXPECT_MMKIT_ERROR(quantize(w, 64, 7), "quantize", "bits 7", "2, 3, 4, 5, 6 and 8");
  EXPECT_MMKIT_ERROR(quantize(w, 64, 1), "quantize", "bits 1");
  EXPECT_MMKIT_ERROR(quantize(w, 64, 16), "quantize", "bits 16");
  EXPECT_MMKIT_ERROR(quantize(w, 64, 0), "quantize", "bits 0");
}

TEST(ValidateQuantize, FpModeGroupSize) {
  Array w = Array::zeros({4, 64}, Dtype::float32);
  EXPECT_MMKIT_ERROR(quantize(w, 64, none, "mxfp4"), "quantize", "mxfp4", "group size 32", "64");
  EXPECT_MMKIT_ERROR(quantize(w, 16, none, "mxfp8"), "quantize", "mxfp8", "group size 32", "16");
  EXPECT_MMKIT_ERROR(quantize(w, 32, none, "nvfp4"), "quantize", "nvfp4", "group size 16", "32");
}

TEST(ValidateQuantize, FpModeBits) {
  Array w = Array::zeros({4, 64}, Dtype::float32);
  EXPECT_MMKIT_ERROR(quantize(w, none, 3, "mxfp4"), "quantize", "mxfp4", "bits to be 4", "3");
  EXPECT_MMKIT_ERROR(quantize(w, 32, 7, "mxfp8"), "quantize", "mxfp8", "bits to be 8", "7");
  EXPECT_MMKIT_ERROR(quantize(w, none, 8, "nvfp4"), "quantize", "nvfp4", "bits to be 4", "8");
}

TEST(ValidateQuantize, NullArrays) {
  EXPECT_MMKIT_ERROR(quantize(Array()), "quantize", "w is a null array");
  Array w = Array::zeros({4, 64}, Dtype::float32);
  EXPECT_MMKIT_ERROR(quantize(w, none, none, "nvfp4", Array()), "quantize", "global_scale is a null array");
}

// ---------------------------------------------------------------------------
// dequantize (SPEC 2.5)

TEST(ValidateDequantize, InvalidMode) {
  Affine a;
  EXPECT_MMKIT_ERROR(dequantize(a.wq, a.s, a.b, none, none, "xyz"), "dequantize", "'xyz'");
}

TEST(ValidateDequantize, NonFloatingOutputDtype) {
  Affine a;
  EXPECT_MMKIT_ERROR(dequantize(a.wq, a.s, a.b, none, none, "affine", none, Dtype::int32), "dequantize",
                     "output dtype", "int32");
  Mx m;
  EXPECT_MMKIT_ERROR(dequantize(m.wq, m.s, none, none, none, "mxfp4", none, Dtype::uint8), "dequantize", "uint8");
}

TEST(ValidateDequantize, AffineNeedsBiases) {
  Affine a;
  EXPECT_MMKIT_ERROR(dequantize(a.wq, a.s), "dequantize", "Biases must be provided");
}

TEST(ValidateDequantize, AffineNonFloatingScales) {
  Affine a;
  Array si = a.s.astype(Dtype::int32), bi = a.b.astype(Dtype::int32);
  EXPECT_MMKIT_ERROR(dequantize(a.wq, si, bi), "dequantize", "scales.dtype() == int32", "biases.dtype() == int32");
}

TEST(ValidateDequantize, FpScalesNotUint8) {
  Mx m;
  EXPECT_MMKIT_ERROR(dequantize(m.wq, m.s.astype(Dtype::float32), none, none, none, "mxfp4"), "dequantize",
                     "uint8", "float32");
}

TEST(ValidateDequantize, FpBiasesGiven) {
  Mx m;
  EXPECT_MMKIT_ERROR(dequantize(m.wq, m.s, m.s, none, none, "mxfp4"), "dequantize", "Biases must be null",
                     "'mxfp4'");
}

TEST(ValidateDequantize, NonPositiveBits) {
  Affine a;
  EXPECT_MMKIT_ERROR(dequantize(a.wq, a.s, a.b, 64, 0), "dequantize", "bits: 0");
  EXPECT_MMKIT_ERROR(dequantize(a.wq, a.s, a.b, 64, -4), "dequantize", "bits: -4");
}

TEST(ValidateDequantize, NonPositiveGroupSize) {
  Affine a;
  EXPECT_MMKIT_ERROR(dequantize(a.wq, a.s, a.b, 0, 4), "dequantize", "group_size: 0");
  EXPECT_MMKIT_ERROR(dequantize(a.wq, a.s, a.b, -64, 4), "dequantize", "group_size: -64");
}

TEST(ValidateDequantize, WeightNotUint32) {
  Affine a;
  EXPECT_MMKIT_ERROR(dequantize(a.wq.astype(Dtype::int32), a.s, a.b), "dequantize", "uint32", "int32");
}

TEST(ValidateDequantize, WeightFewerThanTwoDimensions) {
  Affine a;
  EXPECT_MMKIT_ERROR(dequantize(a.wq.index(0, 0), a.s.index(0, 0), a.b.index(0, 0)), "dequantize",
                     "at least 2 dimensions", "only 1");
  // decision 2: 0-D inputs
  Array w0 = Array::scalar(0, Dtype::uint32);
  EXPECT_MMKIT_ERROR(dequantize(w0, Array::scalar(1.0), Array::scalar(0.0)), "dequantize", "only 0");
}

TEST(ValidateDequantize, GlobalScaleChecks) {
  Affine a;
  Mx m;
  auto nv = quantize(randn({4, 64}, Dtype::float32, 5), none, none, "nvfp4");
  EXPECT_MMKIT_ERROR(dequantize(a.wq, a.s, a.b, none, none, "affine", Array::scalar(1.0)), "dequantize",
                     "only supported for 'nvfp4'");
  EXPECT_MMKIT_ERROR(dequantize(m.wq, m.s, none, none, none, "mxfp4", Array::scalar(1.0)), "dequantize",
                     "only supported for 'nvfp4'");
  EXPECT_MMKIT_ERROR(dequantize(nv[0], nv[1], none, none, none, "nvfp4", Array::zeros({3}, Dtype::float32)),
                     "dequantize", "scalar", "(3)");
  EXPECT_MMKIT_ERROR(dequantize(nv[0], nv[1], none, none, none, "nvfp4", Array::scalar(1.0, Dtype::bfloat16)),
                     "dequantize", "float32", "bfloat16");
}

TEST(ValidateDequantize, AffineUnsupportedBitsOrGroupSize) {
  // decision 2: the supported set only, even though the shapes would fit
  Affine a;
  EXPECT_MMKIT_ERROR(dequantize(a.wq, Array::zeros({4, 4}, Dtype::float32), Array::zeros({4, 4}, Dtype::float32),
                                16, 4),
                     "dequantize", "group size 16");
  Array w7 = Array::zeros({4, 7}, Dtype::uint32);  // 32 codes of 7 bits
  EXPECT_MMKIT_ERROR(dequantize(w7, Array::zeros({4, 1}, Dtype::float32), Array::zeros({4, 1}, Dtype::float32), 32,
                                7),
                     "dequantize", "bits 7");
}

TEST(ValidateDequantize, FpModeGroupSizeAndBits) {
  Mx m;
  EXPECT_MMKIT_ERROR(dequantize(m.wq, m.s, none, 64, none, "mxfp4"), "dequantize", "mxfp4", "group size 32", "64");
  EXPECT_MMKIT_ERROR(dequantize(m.wq, m.s, none, 32, 8, "mxfp4"), "dequantize", "bits to be 4", "8");
  EXPECT_MMKIT_ERROR(dequantize(m.wq, m.s, none, 16, 4, "mxfp8"), "dequantize", "mxfp8", "group size 32", "16");
  EXPECT_MMKIT_ERROR(dequantize(m.wq, m.s, none, 32, 4, "nvfp4"), "dequantize", "nvfp4", "group size 16", "32");
}

TEST(ValidateDequantize, ScalesNdimMismatch) {
  Affine a;
  Array s3 = a.s.expand_dims(0), b3 = a.b.expand_dims(0);
  EXPECT_MMKIT_ERROR(dequantize(a.wq, s3, b3), "dequantize", "does not match", "(4,8)", "(1,4,1)");
  Mx m;
  EXPECT_MMKIT_ERROR(dequantize(m.wq, m.s.expand_dims(0), none, none, none, "mxfp4"), "dequantize", "(1,4,2)");
}

TEST(ValidateDequantize, ScalesRowsMismatch) {
  // decision 2: scales.shape[-2] must match w
  Affine a;
  Array s = a.s.slice(0, 0, 3), b = a.b.slice(0, 0, 3);
  EXPECT_MMKIT_ERROR(dequantize(a.wq, s, b), "dequantize", "does not match", "(4,8)", "(3,1)");
}

TEST(ValidateDequantize, BiasesShapeDiffersFromScales) {
  Affine a;
  Array b = Array::zeros({4, 2}, Dtype::float32);
  EXPECT_MMKIT_ERROR(dequantize(a.wq, a.s, b), "dequantize", "biases (4,2)");
}

TEST(ValidateDequantize, ScalesSizeMismatch) {
  Affine a;
  Array s = Array::zeros({4, 2}, Dtype::float32);
  EXPECT_MMKIT_ERROR(dequantize(a.wq, s, s), "dequantize", "quantization parameters", "(4,8)", "(4,2)",
                     "group_size=64", "bits=4");
  // 3-bit codes do not tile a single word
  Array w1 = Array::zeros({4, 1}, Dtype::uint32);
  Array s1 = Array::zeros({4, 1}, Dtype::float32);
  EXPECT_MMKIT_ERROR(dequantize(w1, s1, s1, 32, 3), "dequantize", "(4,1)", "bits=3");
  Mx m;
  EXPECT_MMKIT_ERROR(dequantize(m.wq, m.s.slice(1, 0, 1), none, none, none, "mxfp4"), "dequantize", "(4,1)",
                     "group_size=32");
}

TEST(ValidateDequantize, NullArrays) {
  Affine a;
  EXPECT_MMKIT_ERROR(dequantize(Array(), a.s, a.b), "dequantize", "w is a null array");
  EXPECT_MMKIT_ERROR(dequantize(a.wq, Array(), a.b), "dequantize", "scales is a null array");
  EXPECT_MMKIT_ERROR(dequantize(a.wq, a.s, Array()), "dequantize", "biases is a null array");
}

// ---------------------------------------------------------------------------
// quantized_matmul (SPEC 3.6 and decision 2)

TEST(ValidateQuantizedMatmul, InvalidMode) {
  Affine a;
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, a.wq, a.s, a.b, true, none, none, "xyz"), "quantized_matmul", "'xyz'");
}

TEST(ValidateQuantizedMatmul, AffineNeedsBiases) {
  Affine a;
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, a.wq, a.s), "quantized_matmul", "Biases must be provided");
}

TEST(ValidateQuantizedMatmul, NonFloatingScalesAndBiases) {
  // SPEC 9.4: int32 scales and biases with int32 x
  Affine a;
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x.astype(Dtype::int32), a.wq, a.s.astype(Dtype::int32),
                                      a.b.astype(Dtype::int32)),
                     "quantized_matmul", "int32");
}

TEST(ValidateQuantizedMatmul, FpScalesNotUint8) {
  Mx m;
  EXPECT_MMKIT_ERROR(quantized_matmul(m.x, m.wq, m.s.astype(Dtype::float32), none, true, none, none, "mxfp4"),
                     "quantized_matmul", "uint8", "float32");
}

TEST(ValidateQuantizedMatmul, FpBiasesGiven) {
  Mx m;
  EXPECT_MMKIT_ERROR(quantized_matmul(m.x, m.wq, m.s, m.s, true, none, none, "mxfp4"), "quantized_matmul",
                     "Biases must be null", "'mxfp4'");
}

TEST(ValidateQuantizedMatmul, WeightNotUint32) {
  Affine a;
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, a.wq.astype(Dtype::int32), a.s, a.b), "quantized_matmul", "uint32",
                     "int32");
}

TEST(ValidateQuantizedMatmul, ScalesBiasesShapeMismatch) {
  Affine a;
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, a.wq, a.s, Array::zeros({4, 2}, Dtype::float32)), "quantized_matmul",
                     "same shape", "(4,1)", "(4,2)");
}

TEST(ValidateQuantizedMatmul, ZeroDimX) {
  // decision 2: 0-D inputs
  Affine a;
  EXPECT_MMKIT_ERROR(quantized_matmul(Array::scalar(1.0), a.wq, a.s, a.b), "quantized_matmul", "0-d");
}

TEST(ValidateQuantizedMatmul, WeightFewerThanTwoDimensions) {
  Affine a;
  Array w1 = a.wq.index(0, 0), s1 = a.s.index(0, 0), b1 = a.b.index(0, 0);
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, w1, s1, b1), "quantized_matmul", "at least 2 dimensions", "(8)");
}

TEST(ValidateQuantizedMatmul, ScalesNdimMismatch) {
  // decision 2
  Affine a;
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, a.wq, a.s.expand_dims(0), a.b.expand_dims(0)), "quantized_matmul",
                     "number of dimensions", "(4,8)", "(1,4,1)");
}

TEST(ValidateQuantizedMatmul, ScalesRowsMismatch) {
  // decision 2: scales.shape[-2] != w.shape[-2] (MLX reads out of bounds)
  Affine a;
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, a.wq, a.s.slice(0, 0, 3), a.b.slice(0, 0, 3)), "quantized_matmul",
                     "(4,8)", "(3,1)");
}

TEST(ValidateQuantizedMatmul, ScalesBatchMismatch) {
  Affine a;
  Array w = a.wq.expand_dims(0).broadcast_to({2, 4, 8});
  Array s = a.s.expand_dims(0).broadcast_to({3, 4, 1}), b = a.b.expand_dims(0).broadcast_to({3, 4, 1});
  Array x = a.x.expand_dims(0).broadcast_to({2, 3, 64});
  EXPECT_MMKIT_ERROR(quantized_matmul(x, w, s, b), "quantized_matmul", "batch shape", "(2,4,8)", "(3,4,1)");
}

TEST(ValidateQuantizedMatmul, SpecTestThrowCases) {
  // SPEC 3.6 test_throw: x (10, 512), w (32, 512) quantized with defaults
  auto q = quantize(randn({32, 512}, Dtype::float32, 6));
  Array x = randn({10, 512}, Dtype::float32, 7);
  const char* op = "quantized_matmul";
  EXPECT_MMKIT_ERROR(quantized_matmul(x, q[0].transpose(), q[1], q[2]), op, "(64,32)");
  EXPECT_MMKIT_ERROR(quantized_matmul(x, q[0].transpose(), q[1].transpose(), q[2].transpose()), op, "(64,32)");
  EXPECT_MMKIT_ERROR(quantized_matmul(x, q[0], q[1], q[2], false), op, "512", "transpose=false");
  EXPECT_MMKIT_ERROR(quantized_matmul(x, q[0], q[1].transpose(), q[2].transpose()), op, "(8,32)");
}

TEST(ValidateQuantizedMatmul, AffineUnsupportedGroupSizeOrBits) {
  // decision 2: checked at call time
  Affine a;
  Array s4 = Array::zeros({4, 4}, Dtype::float32);
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, a.wq, s4, s4, true, 16, 4), "quantized_matmul", "group size 16");
  Array w7 = Array::zeros({4, 14}, Dtype::uint32);
  Array s2 = Array::zeros({4, 2}, Dtype::float32);
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, w7, s2, s2, true, 32, 7), "quantized_matmul", "bits 7");
}

TEST(ValidateQuantizedMatmul, FpModeGroupSizeOrBitsMismatch) {
  // decision 2: MLX picks the decoder from bits and group size alone
  Mx m;
  const char* op = "quantized_matmul";
  Array s16 = Array::zeros({4, 4}, Dtype::uint8);
  EXPECT_MMKIT_ERROR(quantized_matmul(m.x, m.wq, s16, none, true, 16, 4, "mxfp4"), op, "mxfp4", "group size 32",
                     "16");
  EXPECT_MMKIT_ERROR(quantized_matmul(m.x, m.wq, m.s, none, true, 32, 4, "nvfp4"), op, "nvfp4", "group size 16",
                     "32");
  Array w8 = Array::zeros({4, 16}, Dtype::uint32);
  EXPECT_MMKIT_ERROR(quantized_matmul(m.x, w8, m.s, none, true, 32, 8, "mxfp4"), op, "bits to be 4", "8");
  EXPECT_MMKIT_ERROR(quantized_matmul(m.x, m.wq, m.s, none, true, 32, 4, "mxfp8"), op, "bits to be 8", "4");
}

TEST(ValidateQuantizedMatmul, WeightScalesIncompatible) {
  Affine a;
  Array s2 = Array::zeros({4, 2}, Dtype::float32);
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, a.wq, s2, s2), "quantized_matmul", "incompatible", "(4,8)", "(4,2)",
                     "group_size=64", "bits=4");
}

TEST(ValidateQuantizedMatmul, InnerDimensionMismatch) {
  Affine a;
  Array x = randn({3, 32}, Dtype::float32, 8);
  EXPECT_MMKIT_ERROR(quantized_matmul(x, a.wq, a.s, a.b), "quantized_matmul", "(..., 32)", "(64, 4)",
                     "transpose=true");
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, a.wq, a.s, a.b, false), "quantized_matmul", "(..., 64)", "(4, 64)",
                     "transpose=false");
}

TEST(ValidateQuantizedMatmul, OutputNotFloating) {
  Mx m;
  EXPECT_MMKIT_ERROR(quantized_matmul(m.x.astype(Dtype::int32), m.wq, m.s, none, true, none, none, "mxfp4"),
                     "quantized_matmul", "x.dtype() == int32");
}

TEST(ValidateQuantizedMatmul, TwoDimXWithBatchedWeight) {
  // decision 2: MLX silently uses w[0]
  Affine a;
  Array w = a.wq.expand_dims(0).broadcast_to({2, 4, 8});
  Array s = a.s.expand_dims(0).broadcast_to({2, 4, 1}), b = a.b.expand_dims(0).broadcast_to({2, 4, 1});
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, w, s, b), "quantized_matmul", "(2,4,8)", "(3,64)");
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x.index(0, 0), w, s, b), "quantized_matmul", "(2,4,8)", "(64)");
}

TEST(ValidateQuantizedMatmul, BatchBroadcastFailure) {
  Affine a;
  Array w = a.wq.expand_dims(0).broadcast_to({3, 4, 8});
  Array s = a.s.expand_dims(0).broadcast_to({3, 4, 1}), b = a.b.expand_dims(0).broadcast_to({3, 4, 1});
  Array x = a.x.expand_dims(0).broadcast_to({2, 3, 64});
  EXPECT_MMKIT_ERROR(quantized_matmul(x, w, s, b), "quantized_matmul", "(2)", "(3)", "cannot be broadcast");
}

TEST(ValidateQuantizedMatmul, NullArrays) {
  Affine a;
  EXPECT_MMKIT_ERROR(quantized_matmul(Array(), a.wq, a.s, a.b), "quantized_matmul", "x is a null array");
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, Array(), a.s, a.b), "quantized_matmul", "w is a null array");
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, a.wq, Array(), a.b), "quantized_matmul", "scales is a null array");
  EXPECT_MMKIT_ERROR(quantized_matmul(a.x, a.wq, a.s, Array()), "quantized_matmul", "biases is a null array");
}

// ---------------------------------------------------------------------------
// gather_qmm (SPEC 4.3 and decision 3)

struct AffineBatched {
  Array w = randn({3, 4, 64}, Dtype::float32, 9);
  std::vector<Array> q = quantize(w);
  Array wq = q[0], s = q[1], b = q[2];
  Array x = randn({2, 5, 64}, Dtype::float32, 10);
};

TEST(ValidateGatherQmm, WithoutIndicesErrorsAreQuantizedMatmuls) {
  Affine a;
  EXPECT_MMKIT_ERROR(gather_qmm(a.x, a.wq, a.s, a.b, none, none, true, none, none, "xyz"), "quantized_matmul",
                     "'xyz'");
  EXPECT_MMKIT_ERROR(gather_qmm(randn({3, 32}, Dtype::float32, 1), a.wq, a.s, a.b), "quantized_matmul", "32");
}

TEST(ValidateGatherQmm, InvalidMode) {
  // SPEC 9.4: gather_qmm(x, ..., rhs_indices=array(0), mode="xyz")
  AffineBatched g;
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, none, Array::scalar(0, Dtype::int32), true, none, none, "xyz"),
                     "gather_qmm", "'xyz'");
}

TEST(ValidateGatherQmm, QuantizedChecksCarryTheGatherTag) {
  AffineBatched g;
  Array r = i32({0, 1});
  const char* op = "gather_qmm";
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, none, none, r), op, "Biases must be provided");
  EXPECT_MMKIT_ERROR(gather_qmm(g.x.astype(Dtype::int32), g.wq, g.s.astype(Dtype::int32), g.b.astype(Dtype::int32),
                                none, r),
                     op, "int32");
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq.astype(Dtype::float32), g.s, g.b, none, r), op, "uint32");
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, Array::zeros({3, 4, 2}, Dtype::float32), none, r), op, "same shape");
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s.slice(1, 0, 3), g.b.slice(1, 0, 3), none, r), op, "(3,3,1)");
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s.index(0, 0), g.b.index(0, 0), none, r), op, "number of dimensions");
  Array s2 = Array::zeros({3, 4, 2}, Dtype::float32);
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, s2, s2, none, r), op, "incompatible");
  EXPECT_MMKIT_ERROR(gather_qmm(randn({2, 5, 32}, Dtype::float32, 1), g.wq, g.s, g.b, none, r), op, "(..., 32)");
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, s2, s2, none, r, true, 32, 7), op, "bits 7");
}

TEST(ValidateGatherQmm, FpModeChecks) {
  auto q = quantize(randn({3, 4, 64}, Dtype::float32, 11), none, none, "mxfp4");
  Array x = randn({2, 5, 64}, Dtype::float32, 12), r = i32({0, 2});
  const char* op = "gather_qmm";
  EXPECT_MMKIT_ERROR(gather_qmm(x, q[0], q[1].astype(Dtype::float32), none, none, r, true, none, none, "mxfp4"), op,
                     "uint8");
  EXPECT_MMKIT_ERROR(gather_qmm(x, q[0], q[1], q[1], none, r, true, none, none, "mxfp4"), op, "Biases must be null");
  EXPECT_MMKIT_ERROR(gather_qmm(x, q[0], q[1], none, none, r, true, 32, 4, "nvfp4"), op, "group size 16");
  EXPECT_MMKIT_ERROR(gather_qmm(x.astype(Dtype::int32), q[0], q[1], none, none, r, true, none, none, "mxfp4"), op,
                     "x.dtype() == int32");
}

TEST(ValidateGatherQmm, XFewerThanTwoDimensions) {
  Affine a;
  Array w = a.wq.expand_dims(0), s = a.s.expand_dims(0), b = a.b.expand_dims(0);
  EXPECT_MMKIT_ERROR(gather_qmm(a.x.index(0, 0), w, s, b, none, i32({0})), "gather_qmm", "at least two dimensions",
                     "(64)");
  EXPECT_MMKIT_ERROR(gather_qmm(a.x.index(0, 0), w, s, b, i32({0}), none), "gather_qmm", "(64)");
}

TEST(ValidateGatherQmm, ZeroDimX) {
  AffineBatched g;
  EXPECT_MMKIT_ERROR(gather_qmm(Array::scalar(1.0), g.wq, g.s, g.b, none, i32({0})), "gather_qmm", "0-d");
}

TEST(ValidateGatherQmm, NonIntegerIndices) {
  AffineBatched g;
  Array f = Array::from_vector(std::vector<float>{0, 1});
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, none, f), "gather_qmm", "invalid dtype float32", "integral");
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, f, none), "gather_qmm", "float32");
  Array bl = Array::zeros({2}, Dtype::bool_);
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, none, bl), "gather_qmm", "bool");
}

TEST(ValidateGatherQmm, IndicesDoNotBroadcast) {
  AffineBatched g;
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, i32({0, 1}), i32({0, 1, 2})), "gather_qmm", "(2)", "(3)",
                     "cannot be broadcast");
  // a missing index defaults to arange over the operand's batch, which must broadcast too
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, none, i32({0, 1, 2})), "gather_qmm", "(2)", "(3)");
}

TEST(ValidateGatherQmm, RhsIndexOutOfRange) {
  // decision 3: value and position in the message
  AffineBatched g;
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, none, i32({0, 3})), "gather_qmm", "rhs_indices", "value 3",
                     "position 1", "[0, 3)");
  Array big = Array::from_vector(std::vector<int64_t>{int64_t(1) << 40, 0});
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, none, big), "gather_qmm", "1099511627776", "position 0");
  Array u = Array::from_vector(std::vector<uint32_t>{1, 4000000000u});
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, none, u), "gather_qmm", "4000000000", "position 1");
}

TEST(ValidateGatherQmm, NegativeIndex) {
  AffineBatched g;
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, none, i32({-1, 0})), "gather_qmm", "rhs_indices", "value -1",
                     "position 0");
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, i32({1, -2}), i32({0, 0})), "gather_qmm", "lhs_indices",
                     "value -2", "position 1");
}

TEST(ValidateGatherQmm, LhsIndexOutOfRange) {
  AffineBatched g;
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, i32({0, 1, 2}), i32({0, 0, 0})), "gather_qmm", "lhs_indices",
                     "value 2", "position 2", "[0, 2)");
}

TEST(ValidateGatherQmm, IndexPositionIsInTheGivenArray) {
  // Regression (index error position): the position names the element of
  // the array the caller passed, not of the broadcast index shape.
  AffineBatched g;
  Array lhs = i32({0, 1}, {2, 1});       // broadcast against (1, 3) -> (2, 3)
  Array rhs = i32({0, 1, 7}, {1, 3});
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, lhs, rhs), "gather_qmm", "rhs_indices", "value 7",
                     "position 2");
  Array lhs2 = i32({0, 5}, {2, 1});
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, lhs2, i32({0, 1, 2}, {1, 3})), "gather_qmm", "lhs_indices",
                     "value 5", "position 1");
}

TEST(ValidateGatherQmm, NullIndices) {
  AffineBatched g;
  EXPECT_MMKIT_ERROR(gather_qmm(g.x, g.wq, g.s, g.b, none, Array()), "gather_qmm", "indices is a null array");
}

// ---------------------------------------------------------------------------
// gather_mm (SPEC 5.3 and decision 3)

TEST(ValidateGatherMm, ZeroDimInputs) {
  Array a = randn({3, 4}, Dtype::float32, 1), b = randn({4, 5}, Dtype::float32, 2);
  EXPECT_MMKIT_ERROR(gather_mm(Array::scalar(1.0), b), "gather_mm", "0 dimension");
  EXPECT_MMKIT_ERROR(gather_mm(a, Array::scalar(1.0)), "gather_mm", "0 dimension");
  EXPECT_MMKIT_ERROR(gather_mm(Array::scalar(1.0), b.expand_dims(0), none, i32({0})), "gather_mm", "0 dimension");
  EXPECT_MMKIT_ERROR(gather_mm(a.expand_dims(0), Array::scalar(1.0), i32({0}), none), "gather_mm", "0 dimension");
}

TEST(ValidateGatherMm, InnerDimensionMismatch) {
  Array a = randn({3, 4}, Dtype::float32, 1), b = randn({5, 6}, Dtype::float32, 2);
  EXPECT_MMKIT_ERROR(gather_mm(a, b), "gather_mm", "(3,4)", "(5,6)");
  EXPECT_MMKIT_ERROR(gather_mm(a.expand_dims(0), b.expand_dims(0), none, i32({0})), "gather_mm", "(1,3,4)",
                     "(1,5,6)");
}

TEST(ValidateGatherMm, NonFloatingTypes) {
  Array a = Array::zeros({2, 3, 4}, Dtype::int32), b = Array::zeros({2, 4, 5}, Dtype::int32);
  EXPECT_MMKIT_ERROR(gather_mm(a, b), "gather_mm", "int32 and int32", "not a real floating point type");
  EXPECT_MMKIT_ERROR(gather_mm(a, b, none, i32({1})), "gather_mm", "int32");
  EXPECT_MMKIT_ERROR(gather_mm(a.astype(Dtype::uint8), b.astype(Dtype::int8), none, i32({1})), "gather_mm", "uint8",
                     "int8");
}

TEST(ValidateGatherMm, NonIntegerIndices) {
  Array a = randn({2, 3, 4}, Dtype::float32, 1), b = randn({2, 4, 5}, Dtype::float32, 2);
  EXPECT_MMKIT_ERROR(gather_mm(a, b, none, Array::from_vector(std::vector<float>{1})), "gather_mm", "float32",
                     "integral");
  EXPECT_MMKIT_ERROR(gather_mm(a, b, Array::zeros({1}, Dtype::bfloat16), none), "gather_mm", "bfloat16");
}

TEST(ValidateGatherMm, IndicesDoNotBroadcast) {
  Array a = randn({2, 3, 4}, Dtype::float32, 1), b = randn({3, 4, 5}, Dtype::float32, 2);
  EXPECT_MMKIT_ERROR(gather_mm(a, b, i32({0, 1}), i32({0, 1, 2})), "gather_mm", "(2)", "(3)", "cannot be broadcast");
  EXPECT_MMKIT_ERROR(gather_mm(a, b, none, i32({0, 1, 2})), "gather_mm", "(2)", "(3)");
}

TEST(ValidateGatherMm, IndexOutOfRange) {
  Array a = randn({2, 3, 4}, Dtype::float32, 1), b = randn({3, 4, 5}, Dtype::float32, 2);
  EXPECT_MMKIT_ERROR(gather_mm(a, b, i32({0, 2}), i32({0, 0})), "gather_mm", "lhs_indices", "value 2", "position 1",
                     "[0, 2)");
  EXPECT_MMKIT_ERROR(gather_mm(a, b, none, i32({0, 3})), "gather_mm", "rhs_indices", "value 3", "position 1");
  EXPECT_MMKIT_ERROR(gather_mm(a, b, none, i32({-3, 0})), "gather_mm", "value -3", "position 0");
  // a 2-D operand has one batch entry: its only valid index is 0
  EXPECT_MMKIT_ERROR(gather_mm(a.index(0, 0), b, i32({1}), i32({0})), "gather_mm", "lhs_indices", "value 1",
                     "[0, 1)");
}

TEST(ValidateGatherMm, BatchBroadcastFailureWithoutIndices) {
  Array a = randn({2, 3, 4}, Dtype::float32, 1), b = randn({3, 4, 5}, Dtype::float32, 2);
  EXPECT_MMKIT_ERROR(gather_mm(a, b), "gather_mm", "(2)", "(3)", "cannot be broadcast");
  EXPECT_MMKIT_ERROR(matmul(a, b), "matmul", "(2)", "(3)");
}

TEST(ValidateGatherMm, NullArrays) {
  Array a = randn({3, 4}, Dtype::float32, 1);
  EXPECT_MMKIT_ERROR(gather_mm(Array(), a), "gather_mm", "a is a null array");
  EXPECT_MMKIT_ERROR(gather_mm(a, Array()), "gather_mm", "b is a null array");
  EXPECT_MMKIT_ERROR(gather_mm(a, a.transpose(), none, Array()), "gather_mm", "indices is a null array");
}

// ---------------------------------------------------------------------------
// block_masked_mm (SPEC 6.3)

struct Bmm {
  Array a = randn({64, 64}, Dtype::float32, 1), b = randn({64, 64}, Dtype::float32, 2);
  Array m22 = Array::full({2, 2}, 1.0, Dtype::bool_);
};

TEST(ValidateBlockMasked, UnsupportedBlockSize) {
  Bmm t;
  EXPECT_MMKIT_ERROR(block_masked_mm(t.a, t.b, 16, t.m22), "block_masked_mm", "32 and 64", "block size 16");
  EXPECT_MMKIT_ERROR(block_masked_mm(t.a, t.b, 128, none, t.m22), "block_masked_mm", "block size 128");
  // without masks the block size is not checked (plain matmul)
  EXPECT_NO_THROW(block_masked_mm(t.a, t.b, 16));
}

TEST(ValidateBlockMasked, ZeroDimInputs) {
  Bmm t;
  EXPECT_MMKIT_ERROR(block_masked_mm(Array::scalar(1.0), t.b, 32, t.m22), "block_masked_mm", "0 dimension");
  EXPECT_MMKIT_ERROR(block_masked_mm(t.a, Array::scalar(1.0), 32, t.m22), "block_masked_mm", "0 dimension");
}

TEST(ValidateBlockMasked, InnerDimensionMismatch) {
  Bmm t;
  Array b = randn({32, 64}, Dtype::float32, 3);
  EXPECT_MMKIT_ERROR(block_masked_mm(t.a, b, 32, t.m22), "block_masked_mm", "(64,64)", "(32,64)");
  EXPECT_MMKIT_ERROR(block_masked_mm(t.a, b, 32), "block_masked_mm", "(32,64)");  // no-mask path keeps the tag
}

TEST(ValidateBlockMasked, NonFloatingTypes) {
  Array a = Array::zeros({64, 64}, Dtype::int32);
  EXPECT_MMKIT_ERROR(block_masked_mm(a, a, 32, Array::full({2, 2}, 1.0, Dtype::bool_)), "block_masked_mm",
                     "int32 and int32");
}

TEST(ValidateBlockMasked, BatchBroadcastFailure) {
  Array a = randn({2, 64, 64}, Dtype::float32, 1), b = randn({3, 64, 64}, Dtype::float32, 2);
  EXPECT_MMKIT_ERROR(block_masked_mm(a, b, 32, Array::full({2, 2}, 1.0, Dtype::bool_)), "block_masked_mm", "(2)",
                     "(3)");
}

TEST(ValidateBlockMasked, MaskOutDoesNotBroadcast) {
  Bmm t;
  EXPECT_MMKIT_ERROR(block_masked_mm(t.a, t.b, 32, Array::full({3, 2}, 1.0, Dtype::bool_)), "block_masked_mm",
                     "mask_out", "(3,2)", "(2,2)");
  // masks cannot add batch entries either
  EXPECT_MMKIT_ERROR(block_masked_mm(t.a, t.b, 32, Array::full({2, 2, 2}, 1.0, Dtype::bool_)), "block_masked_mm",
                     "mask_out", "(2,2,2)");
}

TEST(ValidateBlockMasked, MaskLhsDoesNotBroadcast) {
  Bmm t;
  EXPECT_MMKIT_ERROR(block_masked_mm(t.a, t.b, 64, none, Array::full({2, 2}, 1.0, Dtype::float32)),
                     "block_masked_mm", "mask_lhs", "(2,2)", "(1,1)");
}

TEST(ValidateBlockMasked, MaskRhsDoesNotBroadcast) {
  Bmm t;
  EXPECT_MMKIT_ERROR(block_masked_mm(t.a, t.b, 32, none, none, Array::full({3, 1}, 1.0, Dtype::bool_)),
                     "block_masked_mm", "mask_rhs", "(3,1)");
}

TEST(ValidateBlockMasked, NullMask) {
  Bmm t;
  EXPECT_MMKIT_ERROR(block_masked_mm(t.a, t.b, 32, Array()), "block_masked_mm", "mask_out is a null array");
  EXPECT_MMKIT_ERROR(block_masked_mm(Array(), t.b, 32, t.m22), "block_masked_mm", "a is a null array");
}

// ---------------------------------------------------------------------------
// to_fp8 / from_fp8

TEST(ValidateFp8, ToFp8NeedsFloats) {
  EXPECT_MMKIT_ERROR(to_fp8(Array::zeros({4}, Dtype::int32)), "to_fp8", "int32");
  EXPECT_MMKIT_ERROR(to_fp8(Array()), "to_fp8", "null");
}

TEST(ValidateFp8, FromFp8NeedsUint8) {
  EXPECT_MMKIT_ERROR(from_fp8(Array::zeros({4}, Dtype::float32)), "from_fp8", "uint8", "float32");
}

TEST(ValidateFp8, FromFp8OutputDtype) {
  EXPECT_MMKIT_ERROR(from_fp8(Array::zeros({4}, Dtype::uint8), Dtype::int32), "from_fp8", "int32");
}

// ---------------------------------------------------------------------------
// errors are std::invalid_argument (decision 6)

TEST(ValidateErrorType, IsInvalidArgument) {
  try {
    quantize(Array::zeros({4, 64}, Dtype::float32), none, none, "xyz");
    FAIL() << "did not throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(dynamic_cast<const Error*>(&e), nullptr);
  }
}

}  // namespace
}  // namespace mmkit::test
