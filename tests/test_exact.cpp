// Layer 1 and layer 2 tests of every op (STYLE.md "Tests").
//
// Layer 1 (exact): integer activations, integer codes, power-of-two (e8m0)
// or short-mantissa (e4m3) scales and sizes chosen so that every partial sum
// is an exactly representable float32. The only rounding left is the final
// store into the output dtype, so the result must equal the float64 reference
// rounded once to that dtype, element for element. A failure names the first
// mismatching coordinate. These catch packing, indexing, edge tiles, routing
// and mask errors deterministically.
//
// Layer 2 (tolerance): N(0,1) activations and N(0,1)/sqrt(K) weights,
// |y - ref| <= atol + rtol*|ref| against the float64 reference on the
// dequantized weights, plus the relative Frobenius error as a summary.
//
// The ops allocate their outputs, so instead of poisoning them every test
// checks shape and dtype and compares every element (NaN garbage fails).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace mmkit::test {
namespace {

// ---------------------------------------------------------------------------
// formats under test

struct Fmt {
  const char* mode;
  int bits;
  int gs;
};

std::vector<Fmt> all_formats() {
  std::vector<Fmt> f;
  for (int b : {2, 3, 4, 5, 6, 8})
    for (int g : {32, 64, 128}) f.push_back({"affine", b, g});
  f.push_back({"mxfp4", 4, 32});
  f.push_back({"mxfp8", 8, 32});
  f.push_back({"nvfp4", 4, 16});
  return f;
}

std::string fmt_name(const Fmt& f) {
  if (std::string(f.mode) == "affine") return "affine_b" + std::to_string(f.bits) + "_g" + std::to_string(f.gs);
  return f.mode;
}

bool is_affine(const Fmt& f) { return std::string(f.mode) == "affine"; }

// Element / scale decoders written from SPEC 0.3-0.5 (not the library's).
float e2m1_value(uint32_t c) {
  static const float kMag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  return (c & 8u) ? -kMag[c & 7u] : kMag[c & 7u];
}
float e4m3_value(uint32_t b) {
  const int e = static_cast<int>((b >> 3) & 15u), m = static_cast<int>(b & 7u);
  const float v = e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(1.0f + m / 8.0f, e - 7);
  return (b & 0x80u) ? -v : v;
}

const Dtype kFloatDtypes[] = {Dtype::float32, Dtype::float16, Dtype::bfloat16};

void PrintTo(const Fmt& f, std::ostream* os) { *os << f.mode << " b" << f.bits << " g" << f.gs; }

using FmtDtype = std::tuple<Fmt, Dtype>;

std::vector<FmtDtype> fmt_dtype_params() {
  std::vector<FmtDtype> p;
  for (const Fmt& f : all_formats())
    for (Dtype d : kFloatDtypes) p.emplace_back(f, d);
  return p;
}

std::string fmt_dtype_name(const ::testing::TestParamInfo<FmtDtype>& i) {
  return fmt_name(std::get<0>(i.param)) + "_" + dtype_name(std::get<1>(i.param));
}

// ---------------------------------------------------------------------------
// helpers

Shape cat(const Shape& a, const Shape& b) {
  Shape s = a;
  s.insert(s.end(), b.begin(), b.end());
  return s;
}

std::string coord(int64_t i, const Shape& s) {
  std::vector<int64_t> idx(s.size());
  for (int d = static_cast<int>(s.size()) - 1; d >= 0; --d) {
    idx[d] = s[d] ? i % s[d] : 0;
    if (s[d]) i /= s[d];
  }
  return shape_str(idx);
}

/// Packs one row of codes as SPEC 0.2's bit stream: stream bit t is bit
/// t % 32 of word t / 32, element j at bits [j*b, (j+1)*b). Written bit by bit,
/// independently of fmt::pack_code.
std::vector<uint32_t> pack_row(const std::vector<uint32_t>& codes, int bits) {
  std::vector<uint32_t> w(codes.size() * bits / 32, 0u);
  for (size_t j = 0; j < codes.size(); ++j)
    for (int i = 0; i < bits; ++i) {
      const size_t t = j * bits + i;
      w[t / 32] |= ((codes[j] >> i) & 1u) << (t % 32);
    }
  return w;
}

std::vector<uint32_t> bytes_to_words(const std::vector<uint8_t>& b) {
  std::vector<uint32_t> w(b.size() / 4);
  for (size_t i = 0; i < w.size(); ++i)
    w[i] = b[4 * i] | (b[4 * i + 1] << 8) | (b[4 * i + 2] << 16) | (static_cast<uint32_t>(b[4 * i + 3]) << 24);
  return w;
}

Array bool_array(const std::vector<uint8_t>& v, const Shape& s) { return Array::from_bytes(v.data(), s, Dtype::bool_); }

/// Exact comparison: y must equal the float64 reference rounded once to dt
/// (through float32, which the test setups keep exact). Zeros compare equal
/// regardless of sign (summation order decides it) and NaN matches NaN.
::testing::AssertionResult exact(const Array& y, const ref::Tensor& r, Dtype dt, bool zero_ok = false) {
  if (y.dtype() != dt) return ::testing::AssertionFailure() << "dtype " << y.dtype() << " != expected " << dt;
  if (y.shape() != r.shape)
    return ::testing::AssertionFailure() << "shape " << shape_str(y.shape()) << " != reference " << shape_str(r.shape);
  if (!zero_ok && !r.v.empty() && !(r.max_abs() > 0.0))
    return ::testing::AssertionFailure() << "the reference is all zero, so this case cannot fail";
  std::vector<float> f(r.v.size());
  for (size_t i = 0; i < f.size(); ++i) {
    f[i] = static_cast<float>(r.v[i]);
    if (!std::isnan(r.v[i]) && static_cast<double>(f[i]) != r.v[i])
      return ::testing::AssertionFailure() << "test setup is not exact in float32 at " << coord(i, r.shape) << ": "
                                           << r.v[i];
  }
  std::vector<double> e = Array::from_vector(f, r.shape).astype(dt).to_double_vector();
  std::vector<double> v = y.to_double_vector();
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == e[i] || (std::isnan(v[i]) && std::isnan(e[i]))) continue;
    return ::testing::AssertionFailure() << "first mismatch at " << coord(static_cast<int64_t>(i), r.shape)
                                         << ": got " << v[i] << " expected " << e[i] << " (float64 reference "
                                         << r.v[i] << ", dtype " << dt << ")";
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult all_zero(const Array& y, const Shape& shape, Dtype dt) {
  if (y.dtype() != dt) return ::testing::AssertionFailure() << "dtype " << y.dtype() << " != " << dt;
  if (y.shape() != shape) return ::testing::AssertionFailure() << "shape " << shape_str(y.shape()) << " != " << shape_str(shape);
  std::vector<double> v = y.to_double_vector();
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] != 0.0) return ::testing::AssertionFailure() << "element " << coord(i, shape) << " is " << v[i] << ", not 0";
  return ::testing::AssertionSuccess();
}

/// Relative Frobenius error (layer 3 summary).
double rel_frobenius(const Array& y, const ref::Tensor& r) {
  std::vector<double> v = y.to_double_vector();
  double num = 0, den = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    num += (v[i] - r.v[i]) * (v[i] - r.v[i]);
    den += r.v[i] * r.v[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// ---------------------------------------------------------------------------
// the ops on the device under test (MMKIT_TEST_DEVICE): inputs are moved
// there first, so the same cases run on every backend (a no-op on the CPU)

namespace dev {
Array D(const Array& a) { return a.is_null() ? a : a.to(test_device()); }
std::optional<Array> D(const std::optional<Array>& a) {
  if (!a) return a;
  return D(*a);
}
Array quantized_matmul(const Array& x, const Array& w, const Array& s, const std::optional<Array>& b = std::nullopt,
                       bool t = true, std::optional<int> gs = std::nullopt, std::optional<int> bits = std::nullopt,
                       const std::string& mode = "affine") {
  return mmkit::quantized_matmul(D(x), D(w), D(s), D(b), t, gs, bits, mode);
}
Array gather_qmm(const Array& x, const Array& w, const Array& s, const std::optional<Array>& b,
                 const std::optional<Array>& lhs, const std::optional<Array>& rhs, bool t = true,
                 std::optional<int> gs = std::nullopt, std::optional<int> bits = std::nullopt,
                 const std::string& mode = "affine", bool sorted = false) {
  return mmkit::gather_qmm(D(x), D(w), D(s), D(b), D(lhs), D(rhs), t, gs, bits, mode, sorted);
}
Array gather_mm(const Array& a, const Array& b, const std::optional<Array>& lhs = std::nullopt,
                const std::optional<Array>& rhs = std::nullopt, bool sorted = false) {
  return mmkit::gather_mm(D(a), D(b), D(lhs), D(rhs), sorted);
}
Array matmul(const Array& a, const Array& b) { return mmkit::matmul(D(a), D(b)); }
Array block_masked_mm(const Array& a, const Array& b, int bs, const std::optional<Array>& mo = std::nullopt,
                      const std::optional<Array>& ml = std::nullopt, const std::optional<Array>& mr = std::nullopt) {
  return mmkit::block_masked_mm(D(a), D(b), bs, D(mo), D(ml), D(mr));
}
std::vector<Array> quantize(const Array& w, std::optional<int> gs = std::nullopt, std::optional<int> bits = std::nullopt,
                            const std::string& mode = "affine", const std::optional<Array>& g = std::nullopt) {
  return mmkit::quantize(D(w), gs, bits, mode, D(g));
}
Array dequantize(const Array& w, const Array& s, const std::optional<Array>& b = std::nullopt,
                 std::optional<int> gs = std::nullopt, std::optional<int> bits = std::nullopt,
                 const std::string& mode = "affine", const std::optional<Array>& g = std::nullopt,
                 std::optional<Dtype> dt = std::nullopt) {
  return mmkit::dequantize(D(w), D(s), D(b), gs, bits, mode, D(g), dt);
}
Array to_fp8(const Array& x) { return mmkit::to_fp8(D(x)); }
Array from_fp8(const Array& x, Dtype dt = Dtype::bfloat16) { return mmkit::from_fp8(D(x), dt); }
}  // namespace dev

// ---------------------------------------------------------------------------
// quantized weights built directly from codes

struct QW {
  Array w, scales;
  std::optional<Array> biases;
  Fmt f;
  std::vector<uint32_t> codes;  // logical codes, row-major (batch..., rows, cols)
};

/// Random code for a format. mxfp8 codes keep the exponent field in [5, 10]
/// (values 2^-2 .. 15, four significant bits) or are +-0, so products with
/// small integers stay on a coarse grid and every sum is exact in float32.
uint32_t random_code(const Fmt& f, std::mt19937_64& g) {
  if (is_affine(f)) return static_cast<uint32_t>(g() % (1u << f.bits));
  if (f.bits == 4) return static_cast<uint32_t>(g() % 16);
  const uint32_t r = static_cast<uint32_t>(g() % 16);
  if (r == 0) return (g() & 1) ? 0x80u : 0x00u;
  const uint32_t sign = (g() & 1) << 7, e = 5 + g() % 6, m = g() % 8;
  return sign | (e << 3) | m;
}

/// Weights of logical shape batch + (rows, cols), quantized along cols.
/// affine: scale = +-2^k (k in -2..0), bias a multiple of 2^k chosen so that
/// |value| <= 255 * 2^k (exact in bfloat16 too). mxfp4: e8m0 bytes 125..129;
/// mxfp8: 126..128; nvfp4: e4m3 scales in [0.5, 3.75] (either sign). With
/// |x| <= 4 and K <= 512 every partial sum needs at most 22 significant bits.
QW make_qw(const Shape& batch, int64_t rows, int64_t cols, const Fmt& f, Dtype dt, uint64_t seed) {
  std::mt19937_64 g(seed);
  const int64_t nb = shape_size(batch), groups = cols / f.gs, words = cols * f.bits / 32;
  QW q;
  q.f = f;
  q.codes.resize(static_cast<size_t>(nb * rows * cols));
  std::vector<uint32_t> w;
  w.reserve(static_cast<size_t>(nb * rows * words));
  for (int64_t r = 0; r < nb * rows; ++r) {
    std::vector<uint32_t> row(static_cast<size_t>(cols));
    for (auto& c : row) c = random_code(f, g);
    std::copy(row.begin(), row.end(), q.codes.begin() + r * cols);
    std::vector<uint32_t> p = pack_row(row, f.bits);
    w.insert(w.end(), p.begin(), p.end());
  }
  q.w = Array::from_vector(w, cat(batch, {rows, words}));
  const Shape sshape = cat(batch, {rows, groups});
  const size_t ns = static_cast<size_t>(nb * rows * groups);
  if (is_affine(f)) {
    std::vector<float> s(ns), b(ns);
    const int n = (1 << f.bits) - 1;
    for (size_t i = 0; i < ns; ++i) {
      const float unit = std::ldexp(1.0f, -static_cast<int>(g() % 3));
      const bool pos = g() & 1;
      const int m = pos ? -static_cast<int>(g() % (n + 1)) : static_cast<int>(g() % (n + 1));
      s[i] = pos ? unit : -unit;
      b[i] = static_cast<float>(m) * unit;
    }
    q.scales = Array::from_vector(s, sshape).astype(dt);
    q.biases = Array::from_vector(b, sshape).astype(dt);
  } else {
    std::vector<uint8_t> s(ns);
    for (auto& v : s) {
      if (std::string(f.mode) == "mxfp4") v = static_cast<uint8_t>(125 + g() % 5);
      else if (std::string(f.mode) == "mxfp8") v = static_cast<uint8_t>(126 + g() % 3);
      else v = static_cast<uint8_t>(((g() & 1) << 7) | ((6 + g() % 3) << 3) | (g() % 8));
    }
    q.scales = Array::from_vector(s, sshape);
  }
  return q;
}

Array ints(const Shape& s, Dtype dt, uint64_t seed, int lo = -4, int hi = 4) { return randint(s, dt, seed, lo, hi); }

// ---------------------------------------------------------------------------
// SPEC 0.2 bit layout, hand-constructed packed words

std::vector<uint32_t> random_codes(int n, int bits, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<uint32_t> c(static_cast<size_t>(n));
  for (auto& v : c) v = static_cast<uint32_t>(g() % (1u << bits));
  return c;
}

/// 3-bit: 8 codes per 3 bytes, as SPEC 0.2 spells it out byte by byte.
std::vector<uint32_t> hand_pack3(const std::vector<uint32_t>& c) {
  std::vector<uint8_t> b;
  for (size_t i = 0; i < c.size(); i += 8) {
    const uint32_t* k = &c[i];
    b.push_back(static_cast<uint8_t>(k[0] | (k[1] << 3) | ((k[2] & 3) << 6)));
    b.push_back(static_cast<uint8_t>((k[2] >> 2) | (k[3] << 1) | (k[4] << 4) | ((k[5] & 1) << 7)));
    b.push_back(static_cast<uint8_t>((k[5] >> 1) | (k[6] << 2) | (k[7] << 5)));
  }
  return bytes_to_words(b);
}

/// 5-bit: 8 codes per 5 bytes (code1 = bits 5-7 of byte0 + bits 0-1 of byte1, ...).
std::vector<uint32_t> hand_pack5(const std::vector<uint32_t>& c) {
  std::vector<uint8_t> b;
  for (size_t i = 0; i < c.size(); i += 8) {
    const uint32_t* k = &c[i];
    b.push_back(static_cast<uint8_t>(k[0] | ((k[1] & 7) << 5)));
    b.push_back(static_cast<uint8_t>((k[1] >> 3) | (k[2] << 2) | ((k[3] & 1) << 7)));
    b.push_back(static_cast<uint8_t>((k[3] >> 1) | ((k[4] & 15) << 4)));
    b.push_back(static_cast<uint8_t>((k[4] >> 4) | (k[5] << 1) | ((k[6] & 3) << 6)));
    b.push_back(static_cast<uint8_t>((k[6] >> 2) | (k[7] << 3)));
  }
  return bytes_to_words(b);
}

/// 6-bit: 4 codes per 3 bytes.
std::vector<uint32_t> hand_pack6(const std::vector<uint32_t>& c) {
  std::vector<uint8_t> b;
  for (size_t i = 0; i < c.size(); i += 4) {
    const uint32_t* k = &c[i];
    b.push_back(static_cast<uint8_t>(k[0] | ((k[1] & 3) << 6)));
    b.push_back(static_cast<uint8_t>((k[1] >> 2) | ((k[2] & 15) << 4)));
    b.push_back(static_cast<uint8_t>((k[2] >> 4) | (k[3] << 2)));
  }
  return bytes_to_words(b);
}

/// 2/4/8-bit: code i of a word in bits b*i .. b*i+b-1.
std::vector<uint32_t> hand_pack_pow2(const std::vector<uint32_t>& c, int bits) {
  const int per = 32 / bits;
  std::vector<uint32_t> w(c.size() / per, 0u);
  for (size_t j = 0; j < c.size(); ++j) w[j / per] |= c[j] << (bits * (j % per));
  return w;
}

std::vector<uint32_t> hand_pack(const std::vector<uint32_t>& c, int bits) {
  if (bits == 3) return hand_pack3(c);
  if (bits == 5) return hand_pack5(c);
  if (bits == 6) return hand_pack6(c);
  return hand_pack_pow2(c, bits);
}

TEST(ExactPacking, HandBuiltWordsMatchTheBitStream) {
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    const auto codes = random_codes(128, bits, 100 + bits);
    EXPECT_EQ(hand_pack(codes, bits), pack_row(codes, bits)) << "bits " << bits;
  }
}

TEST(ExactPacking, ThreeBitCodesStraddleWords) {
  // Codes 10 and 21 cross word boundaries: code 10 = bits 30-31 of word 0 and
  // bit 0 of word 1; code 21 = bit 31 of word 1 and bits 0-1 of word 2.
  std::vector<uint32_t> c(32, 0);
  c[10] = 0b101;
  c[21] = 0b110;
  const auto w = hand_pack3(c);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0], 0b01u << 30);
  EXPECT_EQ(w[1], (1u << 0) | (0u << 31));
  EXPECT_EQ(w[2], 0b11u);
  c[21] = 0b111;
  EXPECT_EQ(hand_pack3(c)[1] >> 31, 1u);
}

TEST(ExactPacking, FiveAndSixBitCodesStraddleWords) {
  // 5-bit: code 6 occupies stream bits 30-34 (word 0 bits 30-31, word 1 bits 0-2).
  std::vector<uint32_t> c(32, 0);
  c[6] = 0b10111;
  auto w = hand_pack5(c);
  ASSERT_EQ(w.size(), 5u);
  EXPECT_EQ(w[0], 0b11u << 30);
  EXPECT_EQ(w[1], 0b101u);
  // 6-bit: code 5 occupies bits 30-35 (word 0 bits 30-31, word 1 bits 0-3).
  std::vector<uint32_t> d(16, 0);
  d[5] = 0b110110;
  w = hand_pack6(d);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0], 0b10u << 30);
  EXPECT_EQ(w[1], 0b1101u);
}

/// dequantize (scale 1, bias 0) and quantized_matmul against one-hot rows
/// read back hand-packed codes for every bits value, every dtype.
TEST(ExactPacking, DequantizeAndMatmulReadHandPackedCodes) {
  MMKIT_REQUIRE_DEVICE();
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (Dtype dt : kFloatDtypes) {
      SCOPED_TRACE(std::string("bits ") + std::to_string(bits) + " " + dtype_name(dt));
      const int rows = 3, cols = 64;
      std::vector<uint32_t> codes, words;
      for (int r = 0; r < rows; ++r) {
        auto c = random_codes(cols, bits, 7 * bits + r);
        c[r] = (1u << bits) - 1;  // make every row non-zero
        auto w = hand_pack(c, bits);
        codes.insert(codes.end(), c.begin(), c.end());
        words.insert(words.end(), w.begin(), w.end());
      }
      Array wq = Array::from_vector(words, {rows, cols * bits / 32});
      Array s = Array::full({rows, 2}, 1.0, dt), b = Array::zeros({rows, 2}, dt);
      Array y = dev::dequantize(wq, s, b, 32, bits, "affine");
      std::vector<double> expect(codes.begin(), codes.end());
      EXPECT_TRUE(exact(y, ref::Tensor{{rows, cols}, expect}, dt));
      // x = identity: out[m, n] = w[n, m]
      std::vector<float> eye(cols * cols, 0.0f);
      for (int i = 0; i < cols; ++i) eye[i * cols + i] = 1.0f;
      Array x = Array::from_vector(eye, {cols, cols}).astype(dt);
      Array o = dev::quantized_matmul(x, wq, s, b, true, 32, bits, "affine");
      std::vector<double> t(static_cast<size_t>(cols * rows));
      for (int m = 0; m < cols; ++m)
        for (int n = 0; n < rows; ++n) t[m * rows + n] = codes[n * cols + m];
      EXPECT_TRUE(exact(o, ref::Tensor{{cols, rows}, t}, dt));
    }
}

// ---------------------------------------------------------------------------
// quantized_matmul, exact

struct QmmCase {
  Shape x;       // x shape (last dim K)
  Shape wbatch;  // batch dims of w
  int64_t rows;  // w's logical rows (N if transpose, K otherwise)
  int64_t cols;  // w's logical columns (K if transpose, N otherwise)
};

/// Shapes exercised for one format: edge shapes (M = 0, K = 0, N = 0, N = 3,
/// 33 rows), 1-D x, batched and broadcast batch dims.
std::vector<QmmCase> qmm_cases(const Fmt& f, bool transpose) {
  const int64_t g = f.gs;
  if (transpose) {
    return {
        {{1, g}, {}, 3, g},
        {{33, 2 * g}, {}, 33, 2 * g},
        {{3, g}, {}, 5, g},
        {{17, 4 * g}, {}, 40, 4 * g},       // multi-row passes plus a remainder row, long K
        {{128, 2 * g}, {}, 24, 2 * g},      // blocked GEMM path
        {{16, g}, {}, 67, g},
        {{g}, {}, 4, g},                    // 1-D x -> (N,)
        {{2, 3, 5, g}, {}, 3, g},           // batched x, one w
        {{2, 1, 3, g}, {3}, 4, g},          // broadcast (2,1) x (3) -> (2,3)
        {{1, 3, g}, {2}, 5, g},             // x broadcast over w's batch
        {{3, 2, 2 * g}, {3}, 3, 2 * g},     // equal batch
        {{2, 2, 1, g}, {2, 1}, 6, g},       // w broadcast over x's batch
        {{0, g}, {}, 3, g},                 // M = 0
        {{2, 0, g}, {2}, 3, g},             // batched M = 0
        {{3, 0}, {}, 4, 0},                 // K = 0: zeros
        {{3, g}, {}, 0, g},                 // N = 0
    };
  }
  return {
      {{1, 3}, {}, 3, g},
      {{33, 67}, {}, 67, 2 * g},
      {{5, 33}, {}, 33, g},
      {{17, 300}, {}, 300, 4 * g},          // long K, wide N
      {{128, 40}, {}, 40, 2 * g},           // blocked GEMM path
      {{16, 256}, {}, 256, g},
      {{67}, {}, 67, g},                    // 1-D x
      {{2, 3, 5}, {}, 5, g},
      {{2, 1, 3, 5}, {3}, 5, g},
      {{1, 2, 7}, {2}, 7, 2 * g},
      {{2, 2, 1, 4}, {2, 1}, 4, g},
      {{0, 5}, {}, 5, g},                   // M = 0
      {{3, 0}, {}, 0, g},                   // K = 0: zeros
      {{3, 5}, {}, 5, 0},                   // N = 0
  };
}

class QmmExact : public ::testing::TestWithParam<FmtDtype> {};

void run_qmm_exact(const Fmt& f, Dtype dt, bool transpose) {
  uint64_t seed = 1000;
  for (const QmmCase& c : qmm_cases(f, transpose)) {
    SCOPED_TRACE("x " + shape_str(c.x) + " w batch " + shape_str(c.wbatch) + " rows " + std::to_string(c.rows) +
                 " cols " + std::to_string(c.cols) + (transpose ? " T" : " N"));
    QW q = make_qw(c.wbatch, c.rows, c.cols, f, dt, ++seed);
    Array x = ints(c.x, dt, ++seed).to(test_device());
    Array w = q.w.to(test_device()), s = q.scales.to(test_device());
    std::optional<Array> b;
    if (q.biases) b = q.biases->to(test_device());
    Array y = dev::quantized_matmul(x, w, s, b, transpose, f.gs, f.bits, f.mode);
    ref::Tensor r = ref::quantized_matmul(x, w, s, b, transpose, f.gs, f.bits, f.mode);
    const int64_t K = transpose ? c.cols : c.rows;
    const bool empty = shape_size(r.shape) == 0;
    EXPECT_TRUE(exact(y, r, dt, K == 0 || empty));
    if (K == 0) {
      EXPECT_TRUE(all_zero(y, r.shape, dt));
    }
  }
}

TEST_P(QmmExact, Transposed) {
  MMKIT_REQUIRE_DEVICE();
  run_qmm_exact(std::get<0>(GetParam()), std::get<1>(GetParam()), true);
}

TEST_P(QmmExact, NotTransposed) {
  MMKIT_REQUIRE_DEVICE();
  run_qmm_exact(std::get<0>(GetParam()), std::get<1>(GetParam()), false);
}

/// Without indices gather_qmm is quantized_matmul (SPEC 4.2).
TEST_P(QmmExact, GatherWithoutIndicesIsQuantizedMatmul) {
  MMKIT_REQUIRE_DEVICE();
  const auto [f, dt] = GetParam();
  QW q = make_qw({3}, 5, 2 * f.gs, f, dt, 77);
  Array x = ints({2, 1, 4, 2 * f.gs}, dt, 78);
  Array y = dev::gather_qmm(x, q.w, q.scales, q.biases, std::nullopt, std::nullopt, true, f.gs, f.bits, f.mode);
  EXPECT_TRUE(exact(y, ref::quantized_matmul(x, q.w, q.scales, q.biases, true, f.gs, f.bits, f.mode), dt));
  Array x1 = ints({2 * f.gs}, dt, 79);  // 1-D x is allowed without indices
  QW q2 = make_qw({}, 5, 2 * f.gs, f, dt, 80);
  Array y1 = dev::gather_qmm(x1, q2.w, q2.scales, q2.biases, std::nullopt, std::nullopt, true, f.gs, f.bits, f.mode);
  EXPECT_TRUE(exact(y1, ref::quantized_matmul(x1, q2.w, q2.scales, q2.biases, true, f.gs, f.bits, f.mode), dt));
}

/// Non-contiguous x and scales (views) give the same result as their copies.
TEST_P(QmmExact, StridedInputs) {
  MMKIT_REQUIRE_DEVICE();
  const auto [f, dt] = GetParam();
  QW q = make_qw({}, 6, 2 * f.gs, f, dt, 90);
  Array x = ints({2 * f.gs, 7}, dt, 91).transpose();  // (7, K) with strides (1, 7)
  ASSERT_FALSE(x.is_contiguous());
  // scales as every other column of a wider array
  const int64_t groups = q.scales.shape(1);
  Array wide = Array::zeros({6, 2 * groups}, q.scales.dtype());
  const size_t es = q.scales.itemsize();
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t c = 0; c < groups; ++c)
      std::memcpy(static_cast<char*>(wide.raw_data()) + (r * 2 * groups + 2 * c) * es,
                  static_cast<const char*>(q.scales.raw_data()) + (r * groups + c) * es, es);
  Array s = wide.slice(1, 0, 2 * groups, 2);
  ASSERT_EQ(s.shape(), q.scales.shape());
  ASSERT_FALSE(s.is_contiguous());
  Array y = dev::quantized_matmul(x, q.w, s, q.biases, true, f.gs, f.bits, f.mode);
  EXPECT_TRUE(exact(y, ref::quantized_matmul(x.copy(), q.w, q.scales, q.biases, true, f.gs, f.bits, f.mode), dt));
  // a broadcast (stride-0) scales array, as MLX's test_quantize_strided
  Array s0 = q.scales.slice(1, 0, 1).broadcast_to(q.scales.shape());
  Array y0 = dev::quantized_matmul(x, q.w, s0, q.biases, true, f.gs, f.bits, f.mode);
  EXPECT_TRUE(exact(y0, ref::quantized_matmul(x, q.w, s0.copy(), q.biases, true, f.gs, f.bits, f.mode), dt));
}

INSTANTIATE_TEST_SUITE_P(Formats, QmmExact, ::testing::ValuesIn(fmt_dtype_params()), fmt_dtype_name);

// ---------------------------------------------------------------------------
// gather_qmm, exact

Array idx(const std::vector<int64_t>& v, const Shape& s, Dtype dt) { return Array::from_vector(v, s).astype(dt); }

struct GatherCase {
  std::string name;
  Shape x;
  Shape wbatch;
  std::optional<Array> lhs, rhs;
  bool sorted = false;
};

std::vector<GatherCase> gather_cases(int64_t K, int64_t M) {
  std::vector<GatherCase> c;
  // broadcast (2,1) x (3,) -> (2,3)
  c.push_back({"broadcast", {2, M, K}, {3}, idx({1, 0}, {2, 1}, Dtype::int32), idx({2, 0, 1}, {3}, Dtype::uint32)});
  // 0-d rhs with a 2-D x: default lhs has shape ()
  c.push_back({"scalar_rhs", {M, K}, {4}, std::nullopt, Array::scalar(3, Dtype::int64)});
  // default lhs = arange(4).reshape(4,1), broadcast against rhs (4,2)
  c.push_back({"default_lhs", {4, 1, M, K}, {3}, std::nullopt, idx({0, 2, 1, 1, 2, 0, 0, 0}, {4, 2}, Dtype::int64)});
  // sorted rhs, one token per row (MoE decode)
  c.push_back({"sorted_rhs_m1", {6, 1, K}, {3}, std::nullopt, idx({0, 0, 1, 2, 2, 2}, {6}, Dtype::int32), true});
  c.push_back({"sorted_rhs", {6, M, K}, {4}, std::nullopt, idx({0, 1, 1, 1, 3, 3}, {6}, Dtype::int16), true});
  // sorted lhs only (left_sorted)
  c.push_back({"sorted_lhs", {3, M, K}, {3}, idx({0, 0, 2}, {3}, Dtype::uint8), std::nullopt, true});
  // both given: sorted_indices has no effect
  c.push_back({"both_sorted_flag", {3, M, K}, {3}, idx({1, 1, 0}, {3}, Dtype::int64), idx({2, 2, 2}, {3}, Dtype::int64), true});
  // lhs only with a 2-D w: default rhs has shape ()
  c.push_back({"lhs_only_2d_w", {2, M, K}, {}, idx({1, 0, 1}, {3}, Dtype::int32), std::nullopt});
  // no rows selected at all
  c.push_back({"empty_indices", {M, K}, {2}, std::nullopt, idx({}, {0}, Dtype::int32)});
  // 2-D batch dims: flat index 5 = (1, 2)
  c.push_back({"flat_2d_batch", {2, 3, M, K}, {2}, idx({5, 0, 3}, {3}, Dtype::int64), idx({1, 1, 0}, {3}, Dtype::int64)});
  // unsorted rhs with repeats and a (3,2) index shape
  c.push_back({"unsorted_2d", {3, 2, M, K}, {4}, std::nullopt, idx({3, 0, 2, 2, 1, 3}, {3, 2}, Dtype::int32)});
  return c;
}

class GatherQmmExact : public ::testing::TestWithParam<FmtDtype> {};

void run_gather_qmm_exact(const Fmt& f, Dtype dt, bool transpose) {
  uint64_t seed = 5000;
  const int64_t g = f.gs;
  for (int64_t M : {1, 3, 17}) {
    // K and N: transpose -> w rows N = 5, cols K = g; else w rows K = 7, cols N = g
    const int64_t rows = transpose ? 5 : 7, cols = g, K = transpose ? cols : rows;
    for (const GatherCase& c : gather_cases(K, M)) {
      SCOPED_TRACE(c.name + " M=" + std::to_string(M) + (transpose ? " T" : " N"));
      QW q = make_qw(c.wbatch, rows, cols, f, dt, ++seed);
      Array x = ints(c.x, dt, ++seed);
      Array y = dev::gather_qmm(x, q.w, q.scales, q.biases, c.lhs, c.rhs, transpose, f.gs, f.bits, f.mode, c.sorted);
      ref::Tensor r = ref::gather_qmm(x, q.w, q.scales, q.biases, c.lhs, c.rhs, transpose, f.gs, f.bits, f.mode);
      EXPECT_TRUE(exact(y, r, dt, shape_size(r.shape) == 0));
    }
  }
}

TEST_P(GatherQmmExact, Transposed) {
  MMKIT_REQUIRE_DEVICE();
  run_gather_qmm_exact(std::get<0>(GetParam()), std::get<1>(GetParam()), true);
}

TEST_P(GatherQmmExact, NotTransposed) {
  MMKIT_REQUIRE_DEVICE();
  run_gather_qmm_exact(std::get<0>(GetParam()), std::get<1>(GetParam()), false);
}

/// Indices address the logical (broadcast) arrays: w, scales and biases are
/// stride-0 views over the batch, x too.
TEST_P(GatherQmmExact, BroadcastViewOperands) {
  MMKIT_REQUIRE_DEVICE();
  const auto [f, dt] = GetParam();
  QW q = make_qw({1}, 5, 2 * f.gs, f, dt, 321);
  auto bc = [](const Array& a, int64_t n) {
    Shape s = a.shape();
    s[0] = n;
    return a.broadcast_to(s);
  };
  Array w = bc(q.w, 3), s = bc(q.scales, 3);
  std::optional<Array> b;
  if (q.biases) b = bc(*q.biases, 3);
  Array x = bc(ints({1, 4, 2 * f.gs}, dt, 322), 2);
  Array lhs = idx({1, 0, 1}, {3}, Dtype::int32), rhs = idx({2, 1, 0}, {3}, Dtype::int32);
  Array y = dev::gather_qmm(x, w, s, b, lhs, rhs, true, f.gs, f.bits, f.mode);
  EXPECT_TRUE(exact(y, ref::gather_qmm(x, w, s, b, lhs, rhs, true, f.gs, f.bits, f.mode), dt));
}

/// Output M = 0 and K = 0 through the gather path.
TEST_P(GatherQmmExact, EmptyShapes) {
  MMKIT_REQUIRE_DEVICE();
  const auto [f, dt] = GetParam();
  Array rhs = idx({1, 0}, {2}, Dtype::int32);
  QW q = make_qw({2}, 5, f.gs, f, dt, 400);
  Array y = dev::gather_qmm(ints({2, 0, f.gs}, dt, 401), q.w, q.scales, q.biases, std::nullopt, rhs, true, f.gs, f.bits,
                       f.mode);
  EXPECT_EQ(y.shape(), (Shape{2, 0, 5}));
  EXPECT_EQ(y.dtype(), dt);
  QW q0 = make_qw({2}, 5, 0, f, dt, 402);  // K = 0
  Array y0 = dev::gather_qmm(ints({2, 3, 0}, dt, 403), q0.w, q0.scales, q0.biases, std::nullopt, rhs, true, f.gs, f.bits,
                        f.mode);
  EXPECT_TRUE(all_zero(y0, {2, 3, 5}, dt));
}

INSTANTIATE_TEST_SUITE_P(Formats, GatherQmmExact, ::testing::ValuesIn(fmt_dtype_params()), fmt_dtype_name);

// ---------------------------------------------------------------------------
// dtype promotion of the quantized matmuls (SPEC 3.3)

TEST(QmmPromotion, AffineOutputDtype) {
  MMKIT_REQUIRE_DEVICE();
  const Fmt f{"affine", 4, 32};
  struct P {
    Dtype x, s, out;
  };
  for (P p : {P{Dtype::bfloat16, Dtype::float16, Dtype::float32}, P{Dtype::float16, Dtype::float32, Dtype::float32},
              P{Dtype::bfloat16, Dtype::bfloat16, Dtype::bfloat16}, P{Dtype::int32, Dtype::float16, Dtype::float16},
              P{Dtype::int8, Dtype::float32, Dtype::float32}}) {
    SCOPED_TRACE(std::string(dtype_name(p.x)) + " x " + dtype_name(p.s));
    QW q = make_qw({}, 5, 64, f, p.s, 11);
    Array x = ints({3, 64}, p.x, 12);
    Array y = dev::quantized_matmul(x, q.w, q.scales, q.biases, true, 32, 4, "affine");
    EXPECT_TRUE(exact(y, ref::quantized_matmul(x, q.w, q.scales, q.biases, true, 32, 4, "affine"), p.out));
    Array yg = dev::gather_qmm(x, q.w.expand_dims(0), q.scales.expand_dims(0), q.biases->expand_dims(0), std::nullopt,
                          Array::scalar(0, Dtype::int32), true, 32, 4, "affine");
    EXPECT_TRUE(exact(yg, ref::quantized_matmul(x, q.w, q.scales, q.biases, true, 32, 4, "affine"), p.out));
  }
  // scales and biases of different dtypes promote together
  QW q = make_qw({}, 5, 64, f, Dtype::float16, 13);
  Array x = ints({3, 64}, Dtype::float16, 14);
  Array bb = q.biases->astype(Dtype::bfloat16);
  Array y = dev::quantized_matmul(x, q.w, q.scales, bb, true, 32, 4, "affine");
  EXPECT_TRUE(exact(y, ref::quantized_matmul(x, q.w, q.scales, bb, true, 32, 4, "affine"), Dtype::float32));
}

TEST(QmmPromotion, FpModesReturnXDtype) {
  MMKIT_REQUIRE_DEVICE();
  for (const Fmt& f : {Fmt{"mxfp4", 4, 32}, Fmt{"mxfp8", 8, 32}, Fmt{"nvfp4", 4, 16}})
    for (Dtype dt : kFloatDtypes) {
      QW q = make_qw({}, 4, 64, f, dt, 15);
      Array x = ints({2, 64}, dt, 16);
      Array y = dev::quantized_matmul(x, q.w, q.scales, std::nullopt, true, f.gs, f.bits, f.mode);
      EXPECT_EQ(y.dtype(), dt) << f.mode;
    }
}

// ---------------------------------------------------------------------------
// gather_mm (and matmul), exact

class GatherMmExact : public ::testing::TestWithParam<Dtype> {};

std::string dtype_param_name(const ::testing::TestParamInfo<Dtype>& i) { return dtype_name(i.param); }

struct MmCase {
  std::string name;
  Array a, b;
  std::optional<Array> lhs, rhs;
  bool sorted = false;
};

std::vector<MmCase> gather_mm_cases(Dtype dt) {
  uint64_t s = 9000;
  auto A = [&](const Shape& sh) { return ints(sh, dt, ++s); };
  std::vector<MmCase> c;
  // ---- no indices: matmul semantics
  c.push_back({"mm_2d_edge_tiles", A({33, 70}), A({70, 65}), std::nullopt, std::nullopt});
  c.push_back({"mm_wide_n", A({5, 130}), A({130, 300}), std::nullopt, std::nullopt});
  c.push_back({"mm_batch_broadcast", A({2, 1, 5, 9}), A({3, 9, 7}), std::nullopt, std::nullopt});
  c.push_back({"mm_one_b", A({3, 5, 9}), A({9, 7}), std::nullopt, std::nullopt});
  c.push_back({"mm_a_2d_b_batched", A({4, 9}), A({3, 9, 7}), std::nullopt, std::nullopt});
  c.push_back({"mm_1d_a", A({9}), A({9, 7}), std::nullopt, std::nullopt});
  c.push_back({"mm_1d_b", A({5, 9}), A({9}), std::nullopt, std::nullopt});
  c.push_back({"mm_1d_both", A({9}), A({9}), std::nullopt, std::nullopt});
  c.push_back({"mm_b_transposed_view", A({5, 70}), A({65, 70}).transpose(), std::nullopt, std::nullopt});
  c.push_back({"mm_b_batched_transposed_view", A({3, 5, 9}), A({3, 7, 9}).swapaxes(-1, -2), std::nullopt, std::nullopt});
  c.push_back({"mm_a_transposed_view", A({9, 5}).transpose(), A({9, 7}), std::nullopt, std::nullopt});
  // ---- indices: MLX's six configurations (SPEC 9.3)
  c.push_back({"mlx_A1_lhs_B3_rhs", A({1, 6, 9}), A({3, 9, 7}), idx({0}, {1}, Dtype::uint32), idx({2, 1}, {2}, Dtype::uint32)});
  c.push_back({"mlx_A1_none_B3_rhs", A({1, 6, 9}), A({3, 9, 7}), std::nullopt, idx({2, 1}, {2}, Dtype::uint32)});
  c.push_back({"mlx_A2_none_B3_rhs", A({2, 6, 9}), A({3, 9, 7}), std::nullopt, idx({2, 1}, {2}, Dtype::uint32)});
  c.push_back({"mlx_A3_lhs_B1_rhs", A({3, 6, 9}), A({1, 9, 7}), idx({0, 2}, {2}, Dtype::int32), idx({0}, {1}, Dtype::int32)});
  c.push_back({"mlx_A5_lhs_B3_rhs", A({5, 6, 9}), A({3, 9, 7}), idx({0, 2}, {2}, Dtype::int32), idx({2, 1}, {2}, Dtype::int32)});
  c.push_back({"mlx_A42_B41", A({4, 2, 6, 9}), A({4, 1, 9, 7}), idx({7, 6, 5, 4, 1, 2}, {3, 2}, Dtype::int64),
               idx({2, 0, 1}, {3, 1}, Dtype::int64)});
  // indices address the logical array of broadcast views (index 13 of a
  // (5,4) batch is (3,1))
  c.push_back({"broadcast_views", A({5, 1, 6, 9}).broadcast_to({5, 4, 6, 9}),
               A({1, 3, 9, 7}).broadcast_to({2, 3, 9, 7}).swapaxes(1, 0), idx({0, 13, 12}, {3}, Dtype::int32),
               idx({0, 3, 5}, {3}, Dtype::int32)});
  c.push_back({"gemv", A({5, 1, 9}), A({3, 7, 9}).swapaxes(-1, -2), idx({3, 1}, {2}, Dtype::int32),
               idx({0, 2}, {2}, Dtype::int32)});
  c.push_back({"indices_1d_a", A({9}), A({3, 9, 7}), std::nullopt, idx({2, 0}, {2}, Dtype::int32)});
  c.push_back({"indices_1d_b", A({2, 5, 9}), A({9}), idx({1, 1, 0}, {3}, Dtype::int32), std::nullopt});
  c.push_back({"scalar_rhs", A({5, 9}), A({4, 9, 7}), std::nullopt, Array::scalar(3, Dtype::int64)});
  c.push_back({"sorted_rhs", A({6, 1, 70}), A({3, 70, 65}), std::nullopt, idx({0, 0, 1, 1, 2, 2}, {6}, Dtype::int32), true});
  c.push_back({"unsorted_rhs_edge_tiles", A({4, 33, 70}), A({3, 70, 65}), std::nullopt,
               idx({2, 0, 2, 1}, {4}, Dtype::int16)});
  c.push_back({"broadcast_indices", A({2, 5, 9}), A({3, 9, 7}), idx({1, 0}, {2, 1}, Dtype::int32),
               idx({2, 0, 1}, {1, 3}, Dtype::int32)});
  c.push_back({"empty_indices", A({5, 9}), A({3, 9, 7}), std::nullopt, idx({}, {0}, Dtype::int32)});
  return c;
}

TEST_P(GatherMmExact, Cases) {
  MMKIT_REQUIRE_DEVICE();
  const Dtype dt = GetParam();
  for (const MmCase& c : gather_mm_cases(dt)) {
    SCOPED_TRACE(c.name);
    Array y = dev::gather_mm(c.a, c.b, c.lhs, c.rhs, c.sorted);
    ref::Tensor r = ref::gather_mm(c.a, c.b, c.lhs, c.rhs);
    EXPECT_TRUE(exact(y, r, dt, shape_size(r.shape) == 0));
    if (!c.lhs && !c.rhs) {
      EXPECT_TRUE(exact(dev::matmul(c.a, c.b), r, dt));
    }
  }
}

TEST_P(GatherMmExact, EmptyShapes) {
  MMKIT_REQUIRE_DEVICE();
  const Dtype dt = GetParam();
  // K = 0 gives zeros, M = 0 / N = 0 give empty outputs, with and without indices
  EXPECT_TRUE(all_zero(dev::gather_mm(ints({4, 0}, dt, 1), ints({0, 3}, dt, 2)), {4, 3}, dt));
  Array rhs = idx({1, 0}, {2}, Dtype::int32);
  EXPECT_TRUE(all_zero(dev::gather_mm(ints({2, 4, 0}, dt, 3), ints({2, 0, 3}, dt, 4), std::nullopt, rhs), {2, 4, 3}, dt));
  Array e = dev::gather_mm(ints({2, 0, 5}, dt, 5), ints({2, 5, 3}, dt, 6), std::nullopt, rhs);
  EXPECT_EQ(e.shape(), (Shape{2, 0, 3}));
  EXPECT_EQ(e.dtype(), dt);
  Array n0 = dev::gather_mm(ints({4, 5}, dt, 7), ints({5, 0}, dt, 8));
  EXPECT_EQ(n0.shape(), (Shape{4, 0}));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GatherMmExact, ::testing::ValuesIn(kFloatDtypes), dtype_param_name);

TEST(GatherMmPromotion, MixedDtypes) {
  MMKIT_REQUIRE_DEVICE();
  struct P {
    Dtype a, b, out;
  };
  for (P p : {P{Dtype::float16, Dtype::bfloat16, Dtype::float32}, P{Dtype::bfloat16, Dtype::float32, Dtype::float32},
              P{Dtype::int32, Dtype::float16, Dtype::float16}}) {
    Array a = ints({3, 5, 9}, p.a, 1), b = ints({2, 9, 4}, p.b, 2);
    Array rhs = idx({1, 0, 1}, {3}, Dtype::int32);
    EXPECT_TRUE(exact(dev::gather_mm(a, b, std::nullopt, rhs), ref::gather_mm(a, b, std::nullopt, rhs), p.out));
    Array a2 = ints({5, 9}, p.a, 3);
    EXPECT_TRUE(exact(dev::gather_mm(a2, b.index(0, 0)), ref::gather_mm(a2, b.index(0, 0), std::nullopt, std::nullopt), p.out));
  }
}

// ---------------------------------------------------------------------------
// block_masked_mm, exact

/// Random mask of shape s: bool (true with probability ~0.6) or float values
/// from {0, 0.5, 1, 2} (exact in every dtype).
Array rand_mask(const Shape& s, bool as_bool, uint64_t seed) {
  std::mt19937_64 g(seed);
  const size_t n = static_cast<size_t>(shape_size(s));
  if (as_bool) {
    std::vector<uint8_t> v(n);
    for (auto& x : v) x = (g() % 5) < 3;
    if (n) v[0] = 1;  // keep the reference non-zero
    return bool_array(v, s);
  }
  static const float kVals[] = {0.0f, 0.5f, 1.0f, 2.0f};
  std::vector<float> v(n);
  for (auto& x : v) x = kVals[g() % 4];
  if (n) v[0] = 1.0f;
  return Array::from_vector(v, s);
}

struct BmmCase {
  std::string name;
  Array a, b;
  int bs;
  std::optional<Array> mo, ml, mr;
  bool zero_ok = false;
};

int64_t tiles(int64_t n, int bs) { return (n + bs - 1) / bs; }

/// Case names through a stream (GCC 12 warns falsely on "lit" + std::string).
template <typename... Args>
std::string tag(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

std::vector<BmmCase> block_masked_cases(Dtype dt) {
  uint64_t s = 20000;
  auto A = [&](const Shape& sh) { return ints(sh, dt, ++s); };
  auto Mk = [&](const Shape& sh, bool bl) { return rand_mask(sh, bl, ++s); };
  std::vector<BmmCase> c;
  for (int bs : {32, 64}) {
    const std::string t = tag("_bs", bs);
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{33, 65, 70}, {64, 64, 64}, {1, 128, 128},
                           {100, 1, 96}}) {
      const std::string sh = tag("_", M, "x", N, "x", K);
      const int64_t tm = tiles(M, bs), tn = tiles(N, bs), tk = tiles(K, bs);
      c.push_back({"all_bool" + t + sh, A({M, K}), A({K, N}), bs, Mk({tm, tn}, true), Mk({tm, tk}, true),
                   Mk({tk, tn}, true)});
      c.push_back({"all_float" + t + sh, A({M, K}), A({K, N}), bs, Mk({tm, tn}, false), Mk({tm, tk}, false),
                   Mk({tk, tn}, false)});
      c.push_back({"out_bool" + t + sh, A({M, K}), A({K, N}), bs, Mk({tm, tn}, true), std::nullopt, std::nullopt});
      c.push_back({"out_float" + t + sh, A({M, K}), A({K, N}), bs, Mk({tm, tn}, false), std::nullopt, std::nullopt});
      c.push_back({"lhs_rhs_bool" + t + sh, A({M, K}), A({K, N}), bs, std::nullopt, Mk({tm, tk}, true),
                   Mk({tk, tn}, true)});
    }
    const int64_t M = 33, N = 65, K = 70, tm = tiles(M, bs), tn = tiles(N, bs), tk = tiles(K, bs);
    c.push_back({"lhs_only_float" + t, A({M, K}), A({K, N}), bs, std::nullopt, Mk({tm, tk}, false), std::nullopt});
    c.push_back({"rhs_only_bool" + t, A({M, K}), A({K, N}), bs, std::nullopt, std::nullopt, Mk({tk, tn}, true)});
    // one bool and one float operand mask: both act as float
    c.push_back({"lhs_bool_rhs_float" + t, A({M, K}), A({K, N}), bs, Mk({tm, tn}, true), Mk({tm, tk}, true),
                 Mk({tk, tn}, false)});
    // masks broadcast into batch + tiles
    c.push_back({"mask_1x1" + t, A({M, K}), A({K, N}), bs, Mk({1, 1}, false), Mk({1, tk}, true), Mk({tk, 1}, true)});
    c.push_back({"batch_broadcast" + t, A({2, 1, M, K}), A({3, K, N}), bs, Mk({3, tm, tn}, true),
                 Mk({2, 1, tm, tk}, false), Mk({tk, tn}, false)});
    // SPEC decision 10(b): a shared (broadcast) operand keeps per-batch bool masks
    c.push_back({"decision10b_shared_operand_bool_masks" + t, A({1, M, K}), A({3, K, N}), bs, std::nullopt,
                 Mk({3, tm, tk}, true), Mk({3, tk, tn}, true)});
    c.push_back({"decision10b_shared_b" + t, A({3, M, K}), A({K, N}), bs, Mk({3, tm, tn}, true),
                 Mk({3, tm, tk}, true), Mk({3, tk, tn}, true)});
    // 1-D operands: masks without the squeezed axis
    c.push_back({"a_1d" + t, A({K}), A({K, N}), bs, Mk({tn}, true), Mk({tk}, false), Mk({tk, tn}, true)});
    c.push_back({"b_1d" + t, A({M, K}), A({K}), bs, Mk({tm}, false), Mk({tm, tk}, true), Mk({tk}, true)});
    c.push_back({"b_transposed_view" + t, A({M, K}), A({N, K}).transpose(), bs, Mk({tm, tn}, true),
                 Mk({tm, tk}, false), Mk({tk, tn}, true)});
    // everything masked out: exact zeros
    std::vector<uint8_t> none(static_cast<size_t>(tm * tn), 0);
    c.push_back({"all_masked" + t, A({M, K}), A({K, N}), bs, bool_array(none, {tm, tn}), std::nullopt, std::nullopt,
                 true});
    c.push_back({"k0" + t, A({M, 0}), A({0, N}), bs, Mk({tm, tn}, false), std::nullopt, std::nullopt, true});
    c.push_back({"m0" + t, A({0, K}), A({K, N}), bs, Mk({1, tn}, true), Mk({1, tk}, true), std::nullopt, true});
  }
  // no mask: plain matmul, block size not even checked
  c.push_back({"no_mask_bs16", A({5, 9}), A({9, 7}), 16, std::nullopt, std::nullopt, std::nullopt});
  return c;
}

class BlockMaskedExact : public ::testing::TestWithParam<Dtype> {};

TEST_P(BlockMaskedExact, Cases) {
  MMKIT_REQUIRE_DEVICE();
  const Dtype dt = GetParam();
  for (const BmmCase& c : block_masked_cases(dt)) {
    SCOPED_TRACE(c.name);
    Array y = dev::block_masked_mm(c.a, c.b, c.bs, c.mo, c.ml, c.mr);
    ref::Tensor r = ref::block_masked_mm(c.a, c.b, c.bs, c.mo, c.ml, c.mr);
    EXPECT_TRUE(exact(y, r, dt, c.zero_ok));
    if (c.zero_ok && shape_size(r.shape) > 0 && c.name.rfind("all_masked", 0) == 0) {
      EXPECT_TRUE(all_zero(y, r.shape, dt));
    }
  }
}

/// SPEC decision 8: bool masks zero the data (NaN in a masked operand block
/// disappears); float masks multiply (NaN * 0 stays NaN).
TEST_P(BlockMaskedExact, NanUnderMasks) {
  MMKIT_REQUIRE_DEVICE();
  const Dtype dt = GetParam();
  const int bs = 32;
  std::vector<float> av(64 * 64, 1.0f), bv(64 * 64, 1.0f);
  av[0] = std::numeric_limits<float>::quiet_NaN();  // in lhs block (0, 0)
  Array a = Array::from_vector(av, {64, 64}).astype(dt), b = Array::from_vector(bv, {64, 64}).astype(dt);
  // lhs block (0,0) masked off
  Array lb = bool_array({0, 1, 1, 1}, {2, 2});
  Array y = dev::block_masked_mm(a, b, bs, std::nullopt, lb, std::nullopt);
  std::vector<double> v = y.to_double_vector();
  for (size_t i = 0; i < v.size(); ++i) ASSERT_FALSE(std::isnan(v[i])) << "bool mask must drop NaN, at " << i;
  EXPECT_EQ(v[0], 32.0);   // row 0: only k-block 1 contributes
  EXPECT_EQ(v[64 * 40], 64.0);  // row 40 is in row block 1: both k-blocks
  Array lf = Array::from_vector(std::vector<float>{0, 1, 1, 1}, {2, 2});
  Array z = dev::block_masked_mm(a, b, bs, std::nullopt, lf, std::nullopt);
  std::vector<double> w = z.to_double_vector();
  for (int n = 0; n < 64; ++n) EXPECT_TRUE(std::isnan(w[n])) << "float mask multiplies: NaN * 0 is NaN, col " << n;
  EXPECT_EQ(w[64], 32.0);  // row 1 has no NaN
  // a bool out mask writes 0 over a NaN block, a float 0 out mask keeps NaN
  Array ob = bool_array({0, 1, 1, 1}, {2, 2});
  EXPECT_EQ(dev::block_masked_mm(a, b, bs, ob).to_double_vector()[0], 0.0);
  Array of = Array::from_vector(std::vector<float>{0, 1, 1, 1}, {2, 2});
  EXPECT_TRUE(std::isnan(dev::block_masked_mm(a, b, bs, of).to_double_vector()[0]));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, BlockMaskedExact, ::testing::ValuesIn(kFloatDtypes), dtype_param_name);

// ---------------------------------------------------------------------------
// quantize / dequantize, exact

/// Affine groups built as v = d*(m + c) with c in [0, n] hitting both ends:
/// a non-negative group gives scale -d, bias = max, codes n - c; a group with
/// max <= 0 gives scale d, bias = min, codes c (SPEC 1.3 steps 2-7).
struct AffineExpect {
  Array w, w_q, scales, biases;
};

AffineExpect affine_groups(int64_t rows, int64_t cols, int bits, int gs, Dtype dt, uint64_t seed) {
  std::mt19937_64 g(seed);
  const int n = (1 << bits) - 1;
  const int64_t groups = cols / gs;
  std::vector<float> w(static_cast<size_t>(rows * cols)), sc(static_cast<size_t>(rows * groups)),
      bi(static_cast<size_t>(rows * groups));
  std::vector<uint32_t> packed;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<uint32_t> codes(static_cast<size_t>(cols));
    for (int64_t gi = 0; gi < groups; ++gi) {
      const float d = std::ldexp(1.0f, -static_cast<int>(g() % 3));
      const bool positive = g() & 1;
      // |m + c| <= 255 keeps every value exact in bfloat16
      const int m = positive ? static_cast<int>(g() % (256 - n)) : -n - static_cast<int>(g() % (256 - n));
      std::vector<int> c(static_cast<size_t>(gs));
      for (auto& x : c) x = static_cast<int>(g() % (n + 1));
      // both ends of the code range present, at two distinct positions
      const int p0 = static_cast<int>(g() % gs), p1 = (p0 + 1 + static_cast<int>(g() % (gs - 1))) % gs;
      c[p0] = 0;
      c[p1] = n;
      for (int i = 0; i < gs; ++i) {
        w[r * cols + gi * gs + i] = d * static_cast<float>(m + c[i]);
        codes[gi * gs + i] = positive ? static_cast<uint32_t>(n - c[i]) : static_cast<uint32_t>(c[i]);
      }
      sc[r * groups + gi] = positive ? -d : d;
      bi[r * groups + gi] = positive ? d * static_cast<float>(m + n) : d * static_cast<float>(m);
    }
    auto p = pack_row(codes, bits);
    packed.insert(packed.end(), p.begin(), p.end());
  }
  return {Array::from_vector(w, {rows, cols}).astype(dt), Array::from_vector(packed, {rows, cols * bits / 32}),
          Array::from_vector(sc, {rows, groups}).astype(dt), Array::from_vector(bi, {rows, groups}).astype(dt)};
}

class QuantizeExact : public ::testing::TestWithParam<FmtDtype> {};

TEST_P(QuantizeExact, KnownCodesScalesAndRoundTrip) {
  MMKIT_REQUIRE_DEVICE();
  const auto [f, dt] = GetParam();
  const int64_t rows = 5, cols = 2 * std::max(f.gs, 32);
  Array w, eq, es;
  std::optional<Array> eb;
  if (is_affine(f)) {
    AffineExpect e = affine_groups(rows, cols, f.bits, f.gs, dt, 31 + f.bits * f.gs);
    w = e.w;
    eq = e.w_q;
    es = e.scales;
    eb = e.biases;
  } else {
    // Groups of format values times a scale, with the format's largest
    // magnitude present so that quantize recovers exactly that scale.
    std::mt19937_64 g(44);
    const int64_t groups = cols / f.gs;
    std::vector<float> wv(static_cast<size_t>(rows * cols));
    std::vector<uint8_t> sv(static_cast<size_t>(rows * groups));
    std::vector<uint32_t> packed;
    const bool fp8 = f.bits == 8, nv = std::string(f.mode) == "nvfp4";
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<uint32_t> codes(static_cast<size_t>(cols));
      for (int64_t gi = 0; gi < groups; ++gi) {
        float scale;
        if (nv) {
          const uint8_t sb = static_cast<uint8_t>(((4 + g() % 7) << 3) | (g() % 8));  // normal e4m3, positive
          sv[r * groups + gi] = sb;
          scale = e4m3_value(sb);
        } else {
          const int e = static_cast<int>(g() % 7) - 3;
          sv[r * groups + gi] = static_cast<uint8_t>(127 + e);
          scale = std::ldexp(1.0f, e);
        }
        for (int i = 0; i < f.gs; ++i) {
          uint32_t c;
          if (fp8) {
            do c = static_cast<uint32_t>(g() % 256);
            while ((c & 0x7f) == 0x7f || (c & 0x7f) == 0x7e || c == 0x80);  // 448/480 and -0 re-encode differently
          } else {
            do c = static_cast<uint32_t>(g() % 16);
            while (c == 8);  // -0 quantizes to +0 (code 0)
          }
          codes[gi * f.gs + i] = c;
        }
        // the group maximum: 6 (code 7) or 448 (0x7e), either sign
        const uint32_t top = fp8 ? 0x7eu : 7u;
        codes[gi * f.gs + g() % f.gs] = top | ((g() & 1) ? (fp8 ? 0x80u : 8u) : 0u);
        for (int i = 0; i < f.gs; ++i) {
          const uint32_t c = codes[gi * f.gs + i];
          const float v = fp8 ? e4m3_value(c) : e2m1_value(c);
          wv[r * cols + gi * f.gs + i] = v * scale;
        }
      }
      auto p = pack_row(codes, f.bits);
      packed.insert(packed.end(), p.begin(), p.end());
    }
    w = Array::from_vector(wv, {rows, cols}).astype(dt);
    ASSERT_EQ(w.astype(Dtype::float32).to_vector<float>(), wv) << "test values must be exact in " << dt;
    eq = Array::from_vector(packed, {rows, cols * f.bits / 32});
    es = Array::from_vector(sv, {rows, groups});
  }
  auto q = dev::quantize(w.to(test_device()), f.gs, f.bits, f.mode);
  ASSERT_EQ(q.size(), is_affine(f) ? 3u : 2u);
  EXPECT_TRUE(bit_equal(q[0], eq)) << "w_q";
  EXPECT_TRUE(bit_equal(q[1], es)) << "scales";
  if (eb) {
    EXPECT_TRUE(bit_equal(q[2], *eb)) << "biases";
  }
  std::optional<Array> qb;
  if (is_affine(f)) qb = q[2];
  Array back = dev::dequantize(q[0], q[1], qb, f.gs, f.bits, f.mode, std::nullopt, dt);
  EXPECT_TRUE(bit_equal(back, w)) << "dev::dequantize(dev::quantize(w)) == w";
  // batched weights quantize row by row
  Array w3 = w.reshape({1, rows, cols}).broadcast_to({2, rows, cols});
  auto q3 = dev::quantize(w3, f.gs, f.bits, f.mode);
  EXPECT_EQ(q3[0].shape(), (Shape{2, rows, cols * f.bits / 32}));
  EXPECT_TRUE(bit_equal(q3[0].index(0, 1), eq));
  EXPECT_TRUE(bit_equal(q3[1].index(0, 1), es));
}

TEST_P(QuantizeExact, EmptyWeights) {
  MMKIT_REQUIRE_DEVICE();
  const auto [f, dt] = GetParam();
  auto q = dev::quantize(Array::zeros({0, f.gs}, dt), f.gs, f.bits, f.mode);
  EXPECT_EQ(q[0].shape(), (Shape{0, f.bits * f.gs / 32}));
  EXPECT_EQ(q[1].shape(), (Shape{0, 1}));
  EXPECT_EQ(q[1].dtype(), is_affine(f) ? dt : Dtype::uint8);
  auto z = dev::quantize(Array::zeros({3, 0}, dt), f.gs, f.bits, f.mode);
  EXPECT_EQ(z[0].shape(), (Shape{3, 0}));
  EXPECT_EQ(z[1].shape(), (Shape{3, 0}));
}

/// dequantize of directly built weights, every code, in every output dtype.
TEST_P(QuantizeExact, DequantizeBuiltWeights) {
  MMKIT_REQUIRE_DEVICE();
  const auto [f, dt] = GetParam();
  QW q = make_qw({2}, 3, 2 * f.gs, f, dt, 606);
  std::optional<Dtype> out_dt;
  if (!is_affine(f)) out_dt = dt;  // fp modes default to bfloat16
  Array y = dev::dequantize(q.w, q.scales, q.biases, f.gs, f.bits, f.mode, std::nullopt, out_dt);
  EXPECT_TRUE(exact(y, ref::dequantize(q.w, q.scales, q.biases, f.gs, f.bits, f.mode), dt));
  if (!is_affine(f)) {
    Array d = dev::dequantize(q.w, q.scales, std::nullopt, f.gs, f.bits, f.mode);
    EXPECT_TRUE(exact(d, ref::dequantize(q.w, q.scales, q.biases, f.gs, f.bits, f.mode), Dtype::bfloat16));
  } else {
    Array d = dev::dequantize(q.w, q.scales, q.biases, f.gs, f.bits, f.mode, std::nullopt, Dtype::float32);
    EXPECT_TRUE(exact(d, ref::dequantize(q.w, q.scales, q.biases, f.gs, f.bits, f.mode), Dtype::float32));
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantizeExact, ::testing::ValuesIn(fmt_dtype_params()), fmt_dtype_name);

TEST(QuantizeExactNvfp4, GlobalScaleRoundTrip) {
  MMKIT_REQUIRE_DEVICE();
  // global_scale = 2 * 2688: stored scales are halved, dequantize doubles them back
  std::vector<float> v(32);
  for (int i = 0; i < 32; ++i) v[i] = e2m1_value(static_cast<uint32_t>(i % 16 == 8 ? 1 : i % 16)) * 1.5f;
  v[3] = 6 * 1.5f;
  v[20] = -6 * 1.5f;
  Array w = Array::from_vector(v, {1, 32});
  Array gsc = Array::scalar(5376.0, Dtype::float32);
  auto q = dev::quantize(w, std::nullopt, std::nullopt, "nvfp4", gsc);
  std::vector<uint8_t> s = q[1].to_vector<uint8_t>();
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(int(s[0]), 0x34) << "e4m3(0.75)";  // 1.5 * 2^-1: e = 6, m = 4
  EXPECT_EQ(int(s[1]), 0x34);
  Array back = dev::dequantize(q[0], q[1], std::nullopt, std::nullopt, std::nullopt, "nvfp4", gsc, Dtype::float32);
  EXPECT_TRUE(bit_equal(back, w));
  // without the global scale the stored codes give half the values
  ref::Tensor half = ref::dequantize(q[0], q[1], std::nullopt, 16, 4, "nvfp4");
  for (int i = 0; i < 32; ++i) EXPECT_EQ(half.v[i], v[i] / 2.0) << i;
}

/// E8M0 and E4M3 corner decodes (SPEC 0.4, 0.5): 0x7F = 480, subnormals,
/// e8m0 0 = 2^-127, 255 = inf, float16 overflow of large scales.
TEST(DequantizeExactSpecial, ScaleAndElementCorners) {
  MMKIT_REQUIRE_DEVICE();
  // mxfp8: every element byte once, scale 2^0
  std::vector<uint32_t> codes(256);
  for (uint32_t i = 0; i < 256; ++i) codes[i] = i;
  Array w = Array::from_vector(pack_row(codes, 8), {8, 8});
  Array s = Array::full({8, 1}, 127, Dtype::uint8);
  for (Dtype dt : kFloatDtypes) {
    Array y = dev::dequantize(w, s, std::nullopt, 32, 8, "mxfp8", std::nullopt, dt);
    ref::Tensor r = ref::dequantize(w, s, std::nullopt, 32, 8, "mxfp8");
    EXPECT_TRUE(exact(y, r, dt)) << dt;
    std::vector<double> v = y.to_double_vector();
    EXPECT_EQ(v[0x7f], 480.0);
    EXPECT_EQ(v[0xff], -480.0);
    EXPECT_EQ(v[0x01], std::ldexp(1.0, -9));
    EXPECT_TRUE(std::signbit(v[0x80]));
  }
  // mxfp4 with e8m0 extremes in float32 / bfloat16: 2^-127 and 2^127
  std::vector<uint32_t> c4(32);
  for (int i = 0; i < 32; ++i) c4[i] = static_cast<uint32_t>(i % 16);
  Array w4 = Array::from_vector(pack_row(c4, 4), {1, 4});
  for (uint8_t sb : {uint8_t(0), uint8_t(1), uint8_t(200)})
    for (Dtype dt : {Dtype::float32, Dtype::bfloat16}) {
      Array s4 = Array::full({1, 1}, sb, Dtype::uint8);
      Array y = dev::dequantize(w4, s4, std::nullopt, 32, 4, "mxfp4", std::nullopt, dt);
      EXPECT_TRUE(exact(y, ref::dequantize(w4, s4, std::nullopt, 32, 4, "mxfp4"), dt)) << int(sb) << " " << dt;
    }
  // e8m0 255 = +inf: non-zero codes give +-inf, zero codes NaN
  Array s255 = Array::full({1, 1}, 255, Dtype::uint8);
  std::vector<double> inf = dev::dequantize(w4, s255, std::nullopt, 32, 4, "mxfp4", std::nullopt, Dtype::float32)
                                .to_double_vector();
  EXPECT_TRUE(std::isnan(inf[0]));
  EXPECT_EQ(inf[1], std::numeric_limits<double>::infinity());
  EXPECT_EQ(inf[9], -std::numeric_limits<double>::infinity());
  // float16 output computes the scale in float16 (SPEC 2.4): 2^16 overflows
  Array s143 = Array::full({1, 1}, 143, Dtype::uint8);
  std::vector<double> h = dev::dequantize(w4, s143, std::nullopt, 32, 4, "mxfp4", std::nullopt, Dtype::float16)
                              .to_double_vector();
  EXPECT_EQ(h[1], std::numeric_limits<double>::infinity()) << "0.5 * 2^16 with the scale rounded to float16";
  // ... and small scales flush to zero in float16
  Array s100 = Array::full({1, 1}, 100, Dtype::uint8);
  std::vector<double> z = dev::dequantize(w4, s100, std::nullopt, 32, 4, "mxfp4", std::nullopt, Dtype::float16)
                              .to_double_vector();
  EXPECT_EQ(z[7], 0.0);
}

/// Affine dequantize rounds twice in the scale dtype (SPEC 2.4), even when a
/// wider output dtype is requested.
TEST(DequantizeExactSpecial, AffineRoundsInScaleDtype) {
  MMKIT_REQUIRE_DEVICE();
  std::vector<uint32_t> codes(32, 0);
  codes[0] = 1;
  codes[1] = 15;
  Array w = Array::from_vector(pack_row(codes, 4), {1, 4});
  // scale 1 + 2^-10 (float16), code 15: 15 + 15*2^-10 needs 14 bits -> rounds in float16
  Array s = Array::full({1, 1}, 1.0 + std::ldexp(1.0, -10), Dtype::float16);
  Array b = Array::full({1, 1}, 1024.0, Dtype::float16);
  std::vector<double> y = dev::dequantize(w, s, b, 32, 4, "affine", std::nullopt, Dtype::float32).to_double_vector();
  const float p = round_to(Dtype::float16, 15.0f * (1.0f + std::ldexp(1.0f, -10)));
  EXPECT_EQ(y[1], static_cast<double>(round_to(Dtype::float16, p + 1024.0f)));
  EXPECT_EQ(y[2], 1024.0);
}

// ---------------------------------------------------------------------------
// to_fp8 / from_fp8, exact (SPEC 0.4)

TEST(Fp8Exact, DecodeEveryByte) {
  MMKIT_REQUIRE_DEVICE();
  std::vector<uint8_t> all(256);
  for (int i = 0; i < 256; ++i) all[i] = static_cast<uint8_t>(i);
  Array b = Array::from_vector(all, {16, 16});
  for (Dtype dt : kFloatDtypes) {
    Array y = dev::from_fp8(b, dt);
    ASSERT_EQ(y.shape(), (Shape{16, 16}));
    std::vector<double> v = y.to_double_vector();
    for (int i = 0; i < 256; ++i) {
      const int e = (i >> 3) & 15, m = i & 7;
      double ref = e == 0 ? m * std::ldexp(1.0, -9) : (1 + m / 8.0) * std::ldexp(1.0, e - 7);
      if (i & 0x80) ref = -ref;
      EXPECT_EQ(v[i], ref) << "byte " << i << " " << dt;
    }
  }
  EXPECT_EQ(dev::from_fp8(b).dtype(), Dtype::bfloat16);
}

TEST(Fp8Exact, EncodeRoundsToNearestEvenAndSaturates) {
  MMKIT_REQUIRE_DEVICE();
  std::vector<float> v;
  std::vector<uint8_t> expect;
  for (int i = 0; i < 256; ++i) {
    if ((i & 0x7f) == 0x7f) continue;  // 480 is never produced
    const int e = (i >> 3) & 15, m = i & 7;
    float x = e == 0 ? m * std::ldexp(1.0f, -9) : (1 + m / 8.0f) * std::ldexp(1.0f, e - 7);
    v.push_back((i & 0x80) ? -x : x);
    expect.push_back(static_cast<uint8_t>(i));
  }
  auto add = [&](float x, uint8_t b) {
    v.push_back(x);
    expect.push_back(b);
  };
  const float inf = std::numeric_limits<float>::infinity();
  add(448.0f, 0x7e);
  add(460.0f, 0x7e);
  add(1e9f, 0x7e);
  add(inf, 0x7e);
  add(-inf, 0xfe);
  add(std::numeric_limits<float>::quiet_NaN(), 0x7e);
  add(-std::numeric_limits<float>::quiet_NaN(), 0xfe);
  add(std::ldexp(1.0f, -10), 0x00);      // tie 0 / 2^-9 -> even 0
  add(3 * std::ldexp(1.0f, -10), 0x02);  // tie 1 / 2 -> even 2
  add(5 * std::ldexp(1.0f, -10), 0x02);  // tie 2 / 3 -> even 2
  add(1.0f + 1.0f / 16, 0x38);           // tie 1 / 1.125 -> even 1
  add(1.0f + 3.0f / 16, 0x3a);           // tie 1.125 / 1.25 -> even 1.25
  add(15.5f * std::ldexp(1.0f, -10), 0x08);  // rounds up into the smallest normal
  add(-0.0f, 0x80);
  add(std::ldexp(1.0f, -20), 0x00);
  for (Dtype dt : kFloatDtypes) {
    Array x = Array::from_vector(v, {static_cast<int64_t>(v.size())}).astype(dt);
    std::vector<uint8_t> got = dev::to_fp8(x).to_vector<uint8_t>();
    std::vector<float> xv = x.astype(Dtype::float32).to_vector<float>();
    for (size_t i = 0; i < v.size(); ++i) {
      if (xv[i] != v[i] && !std::isnan(v[i])) continue;  // not representable in dt
      EXPECT_EQ(int(got[i]), int(expect[i])) << "value " << v[i] << " in " << dt;
    }
  }
  EXPECT_EQ(dev::to_fp8(Array::zeros({0, 3}, Dtype::float32)).shape(), (Shape{0, 3}));
}

// ---------------------------------------------------------------------------
// Layer 2: tolerance tests on N(0,1) data

class QmmTolerance : public ::testing::TestWithParam<FmtDtype> {};

::testing::AssertionResult close_to_ref(const Array& y, const ref::Tensor& r, Dtype dt) {
  if (y.dtype() != dt) return ::testing::AssertionFailure() << "dtype " << y.dtype() << " != " << dt;
  if (!(r.max_abs() > 0.0)) return ::testing::AssertionFailure() << "the reference is all zero";
  auto res = all_close(y, r, rtol_for(dt), 2e-5 * r.max_abs());
  if (!res) return res;
  const double fro = rel_frobenius(y, r);
  const double bound = dt == Dtype::float32 ? 1e-5 : dt == Dtype::float16 ? 2e-3 : 1e-2;
  if (!(fro <= bound))
    return ::testing::AssertionFailure() << "relative Frobenius error " << fro << " > " << bound;
  return ::testing::AssertionSuccess();
}

TEST_P(QmmTolerance, QuantizedMatmulAndGather) {
  MMKIT_REQUIRE_DEVICE();
  const auto [f, dt] = GetParam();
  const int64_t K = 256, N = 96, M = 33;
  const double inv = 1.0 / std::sqrt(static_cast<double>(K));
  for (bool transpose : {true, false}) {
    SCOPED_TRACE(transpose ? "transpose" : "no transpose");
    const Shape wshape = transpose ? Shape{3, N, K} : Shape{3, K, 256};
    Array w = randn(wshape, dt, 71 + transpose, inv);
    auto q = dev::quantize(w, f.gs, f.bits, f.mode);
    std::optional<Array> b;
    if (is_affine(f)) b = q[2];
    const int64_t Nout = transpose ? N : 256;
    Array x = randn({M, K}, dt, 72);
    Array w0 = q[0].index(0, 1), s0 = q[1].index(0, 1);
    std::optional<Array> b0;
    if (b) b0 = b->index(0, 1);
    Array y = dev::quantized_matmul(x, w0, s0, b0, transpose, f.gs, f.bits, f.mode);
    ASSERT_EQ(y.shape(), (Shape{M, Nout}));
    EXPECT_TRUE(close_to_ref(y, ref::quantized_matmul(x, w0, s0, b0, transpose, f.gs, f.bits, f.mode), dt));
    // batched
    Array xb = randn({2, 1, 5, K}, dt, 73);
    Array yb = dev::quantized_matmul(xb, q[0], q[1], b, transpose, f.gs, f.bits, f.mode);
    EXPECT_TRUE(close_to_ref(yb, ref::quantized_matmul(xb, q[0], q[1], b, transpose, f.gs, f.bits, f.mode), dt));
    // gather, unsorted and sorted
    Array xg = randn({8, 1, K}, dt, 74);
    Array rhs = idx({2, 0, 1, 1, 0, 2, 2, 1}, {8}, Dtype::int32);
    Array yg = dev::gather_qmm(xg, q[0], q[1], b, std::nullopt, rhs, transpose, f.gs, f.bits, f.mode);
    EXPECT_TRUE(close_to_ref(yg, ref::gather_qmm(xg, q[0], q[1], b, std::nullopt, rhs, transpose, f.gs, f.bits, f.mode), dt));
    Array rs = idx({0, 0, 0, 1, 1, 2, 2, 2}, {8}, Dtype::int32);
    Array ys = dev::gather_qmm(xg, q[0], q[1], b, std::nullopt, rs, transpose, f.gs, f.bits, f.mode, true);
    EXPECT_TRUE(close_to_ref(ys, ref::gather_qmm(xg, q[0], q[1], b, std::nullopt, rs, transpose, f.gs, f.bits, f.mode), dt));
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, QmmTolerance, ::testing::ValuesIn(fmt_dtype_params()), fmt_dtype_name);

class MmTolerance : public ::testing::TestWithParam<Dtype> {};

TEST_P(MmTolerance, GatherMmAndBlockMasked) {
  MMKIT_REQUIRE_DEVICE();
  const Dtype dt = GetParam();
  const int64_t M = 70, N = 130, K = 200;
  const double inv = 1.0 / std::sqrt(static_cast<double>(K));
  Array a = randn({4, M, K}, dt, 81), b = randn({3, K, N}, dt, 82, inv);
  Array lhs = idx({3, 1, 0, 2, 2}, {5}, Dtype::int32), rhs = idx({0, 2, 2, 1, 0}, {5}, Dtype::int32);
  EXPECT_TRUE(close_to_ref(dev::gather_mm(a, b, lhs, rhs), ref::gather_mm(a, b, lhs, rhs), dt));
  EXPECT_TRUE(close_to_ref(dev::gather_mm(a.index(0, 0), b), ref::gather_mm(a.index(0, 0), b, std::nullopt, std::nullopt), dt));
  for (int bs : {32, 64}) {
    const int64_t tm = tiles(M, bs), tn = tiles(N, bs), tk = tiles(K, bs);
    Array mo = rand_mask({tm, tn}, true, 83), ml = rand_mask({tm, tk}, false, 84), mr = rand_mask({tk, tn}, false, 85);
    Array a0 = a.index(0, 0), b0 = b.index(0, 0);
    EXPECT_TRUE(close_to_ref(dev::block_masked_mm(a0, b0, bs, mo, ml, mr), ref::block_masked_mm(a0, b0, bs, mo, ml, mr), dt));
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, MmTolerance, ::testing::ValuesIn(kFloatDtypes), dtype_param_name);

/// quantize of N(0,1) data: every element within half a grid step of its
/// group (one step for affine, MLX's test_quantize_dequantize bound) plus the
/// saturation that MLX's scale rule allows, for every format and dtype.
class QuantizeTolerance : public ::testing::TestWithParam<FmtDtype> {};

TEST_P(QuantizeTolerance, ErrorWithinOneStep) {
  MMKIT_REQUIRE_DEVICE();
  const auto [f, dt] = GetParam();
  Array w = randn({16, 256}, dt, 91);
  auto q = dev::quantize(w, f.gs, f.bits, f.mode);
  std::optional<Array> b;
  if (is_affine(f)) b = q[2];
  ref::Tensor r = ref::dequantize(q[0], q[1], b, f.gs, f.bits, f.mode);
  ASSERT_GT(r.max_abs(), 0.0);
  std::vector<double> wv = w.to_double_vector();
  ref::Tensor sc = ref::to_tensor(q[1]);
  ref::Tensor bi;
  if (b) bi = ref::to_tensor(*b);
  // scale and bias are stored rounded to dt while codes use the float32 values
  const double u = dt == Dtype::bfloat16 ? std::ldexp(1.0, -8) : dt == Dtype::float16 ? std::ldexp(1.0, -11) : 0.0;
  for (size_t i = 0; i < wv.size(); ++i) {
    const size_t gi = i / f.gs;
    const double a = std::fabs(wv[i]);
    double tol;
    if (is_affine(f)) {
      tol = std::fabs(sc.v[gi]) * (1.0 + (1 << f.bits) * u) + std::fabs(bi.v[gi]) * u + 1e-6;
    } else if (std::string(f.mode) == "nvfp4") {
      const double s = std::fabs(e4m3_value(static_cast<uint32_t>(sc.v[gi])));
      tol = s * 1.0 + std::max(0.0, a - 6.0 * s);  // half of the widest E2M1 gap (4 -> 6), or saturation
    } else {
      const double s = std::ldexp(1.0, static_cast<int>(sc.v[gi]) - 127);
      if (f.bits == 4) tol = s * 1.0 + std::max(0.0, a - 6.0 * s);
      else tol = std::max(a * std::ldexp(1.0, -4), s * std::ldexp(1.0, -10)) + std::max(0.0, a - 448.0 * s);
    }
    ASSERT_LE(std::fabs(wv[i] - r.v[i]), tol * 1.01 + 1e-30) << "element " << i << " w " << wv[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantizeTolerance, ::testing::ValuesIn(fmt_dtype_params()), fmt_dtype_name);

}  // namespace
}  // namespace mmkit::test
