// The CPU backend at every SIMD level this machine has (avx512, avx2, scalar):
// each level is switched on in-process with set_cpu_isa_for_testing and runs
// quantized_matmul / gather_qmm (every mode, bit width and group size) /
// gather_mm / block_masked_mm against the float64 reference, and quantize /
// dequantize byte for byte against the scalar level. Shapes cover the edge
// tiles of the kernels: M = 1, 3, 16, 17, 33, 70 (the fused few-row kernel, its
// 8-row passes, and the blocked GEMM), N not a multiple of 8 or of a tile,
// K = the group size. Registry selection is asserted per level, and outputs
// written through the registry are poisoned first so a skipped element fails.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/registry.h"
#include "cpu/cpu_isa.h"
#include "formats/format.h"
#include "test_util.h"

namespace mmkit::test {
namespace {

using cpu::Isa;

/// Runs at `isa` for its lifetime, then restores the previous level.
class IsaScope {
 public:
  explicit IsaScope(Isa isa) : prev_(detail::set_cpu_isa_for_testing(isa)) {}
  ~IsaScope() { detail::set_cpu_isa_for_testing(prev_); }
  IsaScope(const IsaScope&) = delete;
  IsaScope& operator=(const IsaScope&) = delete;

 private:
  Isa prev_;
};

std::vector<std::string> level_names() {
  std::vector<std::string> v;
  for (Isa i : cpu::available_isas()) v.push_back(cpu::isa_name(i));
  return v;
}

Isa level_of(const std::string& name) {
  if (name == "avx512") return Isa::avx512;
  if (name == "avx2") return Isa::avx2;
  return Isa::scalar;
}

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
  return std::string(f.mode) + " b" + std::to_string(f.bits) + " g" + std::to_string(f.gs);
}

Array cpu_int64(const std::vector<int64_t>& v) { return Array::from_vector(v); }

/// N x K random 4-bit codes (0 .. 15), packed as w (N, K / 8) uint32.
Array packed_random_codes(int64_t N, int64_t K, uint64_t seed) {
  Array codes = randint({N, K}, Dtype::int64, seed, 0, 15);
  Array wq = Array::zeros({N, K / 8}, Dtype::uint32);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t j = 0; j < K; ++j)
      fmt::pack_code(wq.data<uint32_t>() + r * (K / 8), j, 4, static_cast<uint32_t>(codes.data<int64_t>()[r * K + j]));
  return wq;
}

class CpuIsaLevel : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { scope_ = std::make_unique<IsaScope>(level_of(GetParam())); }
  void TearDown() override { scope_.reset(); }
  std::unique_ptr<IsaScope> scope_;
};

/// Tolerance check of a float32-accumulated result against the float64 reference.
::testing::AssertionResult close_to_ref(const Array& y, const ref::Tensor& r) {
  if (r.max_abs() == 0.0) return ::testing::AssertionFailure() << "reference is all zero: the case tests nothing";
  const double rtol = rtol_for(y.dtype());
  const double atol = (y.dtype() == Dtype::float32 ? 1e-5 : 2e-5) * r.max_abs();
  return all_close(y, r, rtol, atol);
}

// ---------------------------------------------------------------------------
// dispatch

TEST_P(CpuIsaLevel, ReportsAndSelectsTheLevelsKernels) {
  const Isa isa = level_of(GetParam());
  EXPECT_EQ(std::string(cpu_isa()), GetParam());
  auto& reg = detail::registries();
  const std::string suffix = isa == Isa::scalar ? "" : "_" + GetParam();
  detail::QmmDesc qd;
  qd.M = 1;
  qd.N = 8;
  qd.K = 64;
  EXPECT_EQ(reg.qmm.select(qd, Device::Type::cpu).name, isa == Isa::scalar ? "cpu_qmm_generic" : "cpu_qmm" + suffix);
  detail::GemmDesc gd;
  EXPECT_EQ(reg.gemm.select(gd, Device::Type::cpu).name, isa == Isa::scalar ? "cpu_gemm_generic" : "cpu_gemm" + suffix);
  detail::BlockMaskedDesc bd;
  EXPECT_EQ(reg.block_masked.select(bd, Device::Type::cpu).name,
            isa == Isa::scalar ? "cpu_block_masked_generic" : "cpu_block_masked" + suffix);
  detail::QuantizeDesc q;
  EXPECT_EQ(reg.quantize.select(q, Device::Type::cpu).name,
            isa == Isa::scalar ? "cpu_quantize_rowwise" : "cpu_quantize" + suffix);
  detail::DequantizeDesc dq;
  EXPECT_EQ(reg.dequantize.select(dq, Device::Type::cpu).name,
            isa == Isa::scalar ? "cpu_dequantize_rowwise" : "cpu_dequantize" + suffix);
}

TEST(CpuIsaLevels, ScalarIsAlwaysAvailableAndUnavailableLevelsAreRefused) {
  const auto levels = cpu::available_isas();
  ASSERT_FALSE(levels.empty());
  EXPECT_EQ(levels.back(), Isa::scalar);
  for (Isa i : {Isa::avx512, Isa::avx2}) {
    bool listed = false;
    for (Isa l : levels) listed = listed || l == i;
    if (!listed) {
      try {
        detail::set_cpu_isa_for_testing(i);
        ADD_FAILURE() << "switching to an unavailable level must throw";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("[cpu]"), std::string::npos);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// quantized_matmul / gather_qmm, every format

struct QCase {
  int64_t M, N, K_groups;  // K = K_groups * group size
};

TEST_P(CpuIsaLevel, QuantizedMatmulEveryFormat) {
  // M = 70 takes the blocked GEMM path at every level; 13 and 33 the fused kernel (AVX-512) or GEMM (AVX2).
  const std::vector<QCase> cases = {{1, 40, 1}, {3, 13, 2}, {16, 37, 3}, {17, 24, 2}, {33, 19, 4}, {70, 21, 2}};
  uint64_t seed = 100;
  for (const Fmt& f : all_formats()) {
    for (bool transpose : {true, false}) {
      for (const QCase& c : cases) {
        const int64_t K = c.K_groups * f.gs;
        // transpose = false quantizes along N: N must be a multiple of the group size there.
        const int64_t N = transpose ? c.N : f.gs * ((c.N + f.gs - 1) / f.gs);
        SCOPED_TRACE(fmt_name(f) + (transpose ? " T" : " N") + " M=" + std::to_string(c.M) +
                     " N=" + std::to_string(N) + " K=" + std::to_string(K));
        Array wf = transpose ? randn({N, K}, Dtype::float32, seed++, 1.0 / std::sqrt(double(K)))
                             : randn({K, N}, Dtype::float32, seed++, 1.0 / std::sqrt(double(K)));
        auto q = quantize(wf, f.gs, f.bits, f.mode);
        std::optional<Array> b;
        if (q.size() == 3) b = q[2];
        Array x = randn({c.M, K}, Dtype::float32, seed++);
        Array y = quantized_matmul(x, q[0], q[1], b, transpose, f.gs, f.bits, f.mode);
        ASSERT_TRUE(close_to_ref(y, ref::quantized_matmul(x, q[0], q[1], b, transpose, f.gs, f.bits, f.mode)));
      }
    }
  }
}

TEST_P(CpuIsaLevel, QuantizedMatmulHalfPrecision) {
  for (Dtype dt : {Dtype::float16, Dtype::bfloat16}) {
    // bfloat16 x with 2/4-bit affine, mxfp4, nvfp4 takes the vdpbf16ps kernel on AVX512_BF16 CPUs
    for (const Fmt& f : {Fmt{"affine", 4, 64}, Fmt{"affine", 4, 128}, Fmt{"affine", 2, 32}, Fmt{"affine", 3, 32},
                         Fmt{"mxfp4", 4, 32}, Fmt{"nvfp4", 4, 16}}) {
      for (int64_t M : {1, 5, 9, 33}) {
        SCOPED_TRACE(fmt_name(f) + " " + dtype_name(dt) + " M=" + std::to_string(M));
        const int64_t N = 45, K = 4 * f.gs;
        auto q = quantize(randn({N, K}, dt, 7 + M, 0.1), f.gs, f.bits, f.mode);
        std::optional<Array> b;
        if (q.size() == 3) b = q[2];
        Array x = randn({M, K}, dt, 9 + M);
        Array y = quantized_matmul(x, q[0], q[1], b, true, f.gs, f.bits, f.mode);
        ASSERT_EQ(y.dtype(), dt);
        ASSERT_TRUE(close_to_ref(y, ref::quantized_matmul(x, q[0], q[1], b, true, f.gs, f.bits, f.mode)));
      }
    }
  }
}

// Integer codes, power-of-two scales and integer activations: every partial
// sum is exact in float32, so the result must equal the reference exactly.
TEST_P(CpuIsaLevel, QuantizedMatmulExactSums) {
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (bool transpose : {true, false}) {
      SCOPED_TRACE("bits " + std::to_string(bits) + (transpose ? " T" : " N"));
      const int gs = 32;
      const int64_t M = 3, N = transpose ? 21 : 64, K = transpose ? 96 : 64;
      const int64_t rows = transpose ? N : K, cols = transpose ? K : N;
      // hand-packed codes, scale 0.5, bias -1: w = code / 2 - 1 is a small dyadic number
      Array codes = randint({rows, cols}, Dtype::int64, 40 + bits, 0, (1 << bits) - 1);
      Array wq = Array::zeros({rows, cols * bits / 32}, Dtype::uint32);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j)
          fmt::pack_code(wq.data<uint32_t>() + r * (cols * bits / 32), j, bits,
                         static_cast<uint32_t>(codes.data<int64_t>()[r * cols + j]));
      std::vector<Array> q = {wq, Array::full({rows, cols / gs}, 0.5, Dtype::float32),
                              Array::full({rows, cols / gs}, -1.0, Dtype::float32)};
      Array x = randint({M, K}, Dtype::float32, 50 + bits, -4, 4);
      Array y = quantized_matmul(x, q[0], q[1], q[2], transpose, gs, bits);
      EXPECT_TRUE(all_close(y, ref::quantized_matmul(x, q[0], q[1], q[2], transpose, gs, bits, "affine"), 0.0, 0.0));
    }
  }
}

TEST_P(CpuIsaLevel, GatherQmmGroupsRowsByExpert) {
  const int64_t E = 5, N = 50, K = 128, Bx = 6;
  for (const Fmt& f : {Fmt{"affine", 4, 64}, Fmt{"affine", 6, 32}, Fmt{"mxfp4", 4, 32}, Fmt{"nvfp4", 4, 16}}) {
    auto q = quantize(randn({E, N, K}, Dtype::float32, 77, 0.1), f.gs, f.bits, f.mode);
    std::optional<Array> b;
    if (q.size() == 3) b = q[2];
    // transpose = false weights (E, K, N'): groups along N'
    auto qn = quantize(randn({E, K, 2 * f.gs}, Dtype::float32, 76, 0.1), f.gs, f.bits, f.mode);
    std::optional<Array> bn;
    if (qn.size() == 3) bn = qn[2];
    for (int64_t M : {1, 3, 30}) {  // 30 rows x 3 pairs of one expert = 90 rows: the GEMM path
      Array x = randn({Bx, M, K}, Dtype::float32, 78 + M);
      for (bool sorted : {false, true}) {
        SCOPED_TRACE(fmt_name(f) + " M=" + std::to_string(M) + (sorted ? " sorted" : " unsorted"));
        std::vector<int64_t> lhs = {0, 5, 2, 2, 4, 1, 3, 0};
        std::vector<int64_t> rhs = sorted ? std::vector<int64_t>{0, 0, 1, 3, 3, 3, 4, 4}
                                          : std::vector<int64_t>{3, 0, 4, 3, 1, 3, 0, 4};
        Array li = cpu_int64(lhs), ri = cpu_int64(rhs);
        Array y = gather_qmm(x, q[0], q[1], b, li, ri, true, f.gs, f.bits, f.mode, sorted);
        ASSERT_TRUE(close_to_ref(y, ref::gather_qmm(x, q[0], q[1], b, li, ri, true, f.gs, f.bits, f.mode)));
        Array yn = gather_qmm(x, qn[0], qn[1], bn, li, ri, false, f.gs, f.bits, f.mode, sorted);
        ASSERT_TRUE(close_to_ref(yn, ref::gather_qmm(x, qn[0], qn[1], bn, li, ri, false, f.gs, f.bits, f.mode)));
      }
    }
  }
}

TEST_P(CpuIsaLevel, GatherQmmNotTransposedMatchesReference) {
  const int64_t E = 3, K = 96, N = 64;
  auto q = quantize(randn({E, K, N}, Dtype::float32, 90, 0.1), 32, 5, "affine");
  Array x = randn({4, 2, K}, Dtype::float32, 91);
  Array li = cpu_int64({3, 0, 1, 2, 2}), ri = cpu_int64({2, 2, 0, 1, 2});
  Array y = gather_qmm(x, q[0], q[1], q[2], li, ri, false, 32, 5, "affine");
  EXPECT_TRUE(close_to_ref(y, ref::gather_qmm(x, q[0], q[1], q[2], li, ri, false, 32, 5, "affine")));
}

// The AVX-512 VNNI kernel (affine 2/4/8-bit, K a multiple of 64 bytes of codes,
// <= 4 rows per expert) holds x per group in block floating point (22 bits,
// 8-bit codes 21, below the group's largest |x|). These cases stress that representation at every level: a
// large dynamic range inside a group, all-zero groups, subnormals (groups
// whose maximum is subnormal take the float32 kernel), maxima at and beyond
// the exponent limit (2^100), Inf and NaN (the GEMM fallback), exact sums; and,
// where the CPU has VNNI, that the kernel did run (its rounding differs from
// the float32 kernel's somewhere) and that both agree with the reference.
TEST_P(CpuIsaLevel, VnniQmvBlockExponentStress) {
  const int64_t N = 37, K0 = 512;  // whole 64-byte chunks at every bit width
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::mt19937 rng(61);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-30, 30);
  for (int bits : {2, 4, 8}) {
  for (int gs : {32, 64, 128}) {
    for (Dtype sdt : {Dtype::float32, Dtype::bfloat16}) {
      // and a partial last chunk: 576 = 4.5 chunks of 4-bit codes, 2.25 of 2-bit; 640 = 2.5 of 2-bit
      const int64_t K = sdt == Dtype::float32 ? K0 : gs == 128 ? 640 : 576;
      auto q = quantize(randn({N, K}, sdt, 60 + gs, 0.5), gs, bits, "affine");
      for (int64_t M : {1, 2, 4, 5}) {
        for (int variant = 0; variant < 8; ++variant) {
          char trace[96];
          std::snprintf(trace, sizeof trace, "b%d g%d %s M=%lld variant %d", bits, gs, dtype_name(sdt),
                        static_cast<long long>(M), variant);
          SCOPED_TRACE(trace);
          Array x = Array::empty({M, K}, Dtype::float32);
          float* p = x.data<float>();
          for (int64_t i = 0; i < M * K; ++i) {
            switch (variant) {
              case 0: p[i] = u(rng); break;                                  // plain
              case 1: p[i] = std::ldexp(u(rng), ex(rng)); break;             // 2^-30 .. 2^30 in every group
              case 2: p[i] = (i / gs) % 3 == 1 ? 0.0f : u(rng); break;       // all-zero groups
              case 3: p[i] = (i / gs) % 2 ? u(rng) * 1e-39f : u(rng); break;  // subnormal groups
              case 4: p[i] = std::ldexp(u(rng), (i / gs) % 2 ? 100 : -99); break;  // the exponent limits
              case 5: p[i] = std::ldexp(u(rng), (i / gs) % 2 ? 102 : -110); break;  // beyond them
              case 6: p[i] = std::ldexp(u(rng), -110); break;                     // all below the limit
              default: p[i] = float(static_cast<int>(u(rng) * 8.0f)); break;  // integers
            }
          }
          if (variant == 1) p[3] = 1e-39f;  // a subnormal below a normal group maximum
          if (variant == 6) p[K / 2] = std::ldexp(1.0f, -100);  // one group just inside the limit
          if (variant == 3) p[gs + 1] = 3e-39f;
          const ref::Tensor want = ref::quantized_matmul(x, q[0], q[1], q[2], true, gs, bits, "affine");
          Array y = quantized_matmul(x, q[0], q[1], q[2], true, gs, bits, "affine");
          ASSERT_TRUE(close_to_ref(y, want));
          if (GetParam() == "avx512" && cpu::has_avx512_vnni() && variant == 0 && M <= 4) {
            const bool prev = detail::set_cpu_vnni_qmv_for_testing(false);
            Array yf = quantized_matmul(x, q[0], q[1], q[2], true, gs, bits, "affine");
            detail::set_cpu_vnni_qmv_for_testing(prev);
            ASSERT_TRUE(close_to_ref(yf, want));
            EXPECT_FALSE(bit_equal(y, yf)) << "the VNNI kernel did not run";
          }
        }
      }
    }
  }
  }
  // exact: integer x, integer codes, power-of-two scales and biases (every partial sum exact)
  const int64_t K = K0;
  Array wq = packed_random_codes(N, K, 63);
  Array sc = Array::full({N, K / 64}, 0.25, Dtype::float32), bi = Array::full({N, K / 64}, -2.0, Dtype::float32);
  for (int64_t M : {1, 3}) {
    Array x = randint({M, K}, Dtype::float32, 64 + M, -100, 100);
    x.data<float>()[7] = 4096.0f;  // a wide group: 2^12 next to small integers
    EXPECT_TRUE(all_close(quantized_matmul(x, wq, sc, bi, true, 64, 4),
                          ref::quantized_matmul(x, wq, sc, bi, true, 64, 4, "affine"), 0.0, 0.0))
        << "M=" << M;
    // Inf and NaN propagate like the reference: w = code / 4 - 2 is exactly 0 for
    // code 8 (Inf * 0 = NaN) and never rounds to 0 otherwise
    x.data<float>()[5] = inf;
    x.data<float>()[(M - 1) * K + 130] = nan;
    EXPECT_TRUE(all_close(quantized_matmul(x, wq, sc, bi, true, 64, 4),
                          ref::quantized_matmul(x, wq, sc, bi, true, 64, 4, "affine"), 0.0, 0.0))
        << "M=" << M << " with Inf and NaN";
  }
  // gather_qmm: several experts, some with <= 4 rows (VNNI), one with more
  const int64_t E = 3;
  auto qe = quantize(randn({E, N, K}, Dtype::float32, 65, 0.5), 64, 4, "affine");
  Array xe = randn({6, 1, K}, Dtype::float32, 66);
  Array li = cpu_int64({0, 1, 2, 3, 4, 5, 0}), ri = cpu_int64({2, 0, 2, 2, 2, 2, 1});
  Array ye = gather_qmm(xe, qe[0], qe[1], qe[2], li, ri, true, 64, 4, "affine");
  EXPECT_TRUE(close_to_ref(ye, ref::gather_qmm(xe, qe[0], qe[1], qe[2], li, ri, true, 64, 4, "affine")));
}

// The accuracy the VNNI kernel documents (docs/kernels/cpu.md, "Accuracy"),
// pinned on an adversarial input. x is rounded per group to X = rint(x *
// 2^(XB - E_g)) (XB = 21; 8-bit codes 20): at most half a step, 2^(E_g - XB -
// 1), per element. The codes multiply the rounded x while the bias multiplies
// the group sum of the float32 x, so
//   |y - ref| <= rep + float32 rounding,
//   rep = sum over groups g of 2^(E_g - XB - 1) * |scale_g| * sum_{k in g} code_k
// (scale * code, not the dequantized weight: a weight of exactly 0 still
// carries its x's rounding). Every output of the input below is adversarial:
// per group the largest |x| (E_g in -12 .. 12) meets code 1 with bias -scale
// (a dequantized weight of exactly 0) and every other x is 2^-23 .. 2^-10 of
// it, on codes from the upper half of the range, placed so that every x
// rounds down by nearly half a step (the errors add up to 69% of rep or more).
// The float32 bound, f32 = 2 * 2^-24 * (K * sum |x w| (the scalar level's
// sequential sum of dequantized products) + (gs + 2 G + K / 64 + 8) *
// sum (|scale * code| + |bias|) |x| (the fused kernels: group sums, the
// factored bias, lane reductions)). Every level meets rep + f32 with the
// kernel it picks, and f32 with the VNNI kernel off. With VNNI the error is
// also at least rep / 2 for every output and (4/8-bit) beyond f32: the test
// fails if the kernel keeps a bit more of x than documented, or (4/8-bit) a
// bit less, and shows that the difference from the float32 kernel is the
// representation's. First, 8-bit codes at the int32 limit of the lane sums.
TEST_P(CpuIsaLevel, VnniQmvBlockExponentErrorBound) {
  const int64_t N = 37, K = 256;
  const bool vnni = GetParam() == "avx512" && cpu::has_avx512_vnni();
  std::mt19937 rng(81);
  std::uniform_int_distribution<int> coin(0, 1), scale_exp(-2, 2), group_exp(-12, 12);
  std::uniform_real_distribution<double> below(-23.0, -10.0);
  {
    // 8-bit headroom: every code 255 and every x rounding to the largest |X|,
    // 2^(XB + 1), one sign per row: a chunk lane's int32 sum(code * X) is
    // 4 * 255 * 2^21 = 2^31 - 2^23 (one bit more of x would wrap it)
    const int64_t K8 = 256;
    Array wq = Array::zeros({N, K8 / 4}, Dtype::uint32);
    for (int64_t i = 0; i < N * K8 / 4; ++i) wq.data<uint32_t>()[i] = 0xffffffffu;
    Array sc = Array::full({N, K8 / 64}, 1.0, Dtype::float32), bi = Array::zeros({N, K8 / 64}, Dtype::float32);
    Array x = Array::empty({2, K8}, Dtype::float32);
    const float top = std::nextafter(2.0f, 0.0f);  // (2 - 2^-23) * 2^e: X = 2^21 - 1/8 rounds to 2^21
    for (int64_t i = 0; i < 2 * K8; ++i) x.data<float>()[i] = std::ldexp(i < K8 ? top : -top, int(i / 64 % 4) - 2);
    ASSERT_TRUE(close_to_ref(quantized_matmul(x, wq, sc, bi, true, 64, 8),
                             ref::quantized_matmul(x, wq, sc, bi, true, 64, 8, "affine")))
        << "8-bit codes at the int32 limit";
  }
  for (int bits : {2, 4, 8}) {
    const int xb = bits == 8 ? 20 : 21;  // docs/kernels/cpu.md: X keeps XB + 1 bits below the group maximum
    std::uniform_int_distribution<int> upper(1 << (bits - 1), (1 << bits) - 1);
    std::uniform_int_distribution<int> lead(0, (1 << xb) - 2);
    for (int gs : {32, 64, 128}) {
      const int64_t G = K / gs;
      std::vector<int> pos(static_cast<size_t>(G));  // the position of each group's largest |x|
      for (int& p : pos) p = static_cast<int>(rng() % static_cast<unsigned>(gs));
      std::vector<int> code(static_cast<size_t>(N * K));
      Array wq = Array::zeros({N, K * bits / 32}, Dtype::uint32);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const int c = k % gs == pos[static_cast<size_t>(k / gs)] ? 1 : upper(rng);
          code[static_cast<size_t>(n * K + k)] = c;
          fmt::pack_code(wq.data<uint32_t>() + n * (K * bits / 32), k, bits, static_cast<uint32_t>(c));
        }
      std::vector<float> sv(static_cast<size_t>(N * G)), bv(sv.size());
      for (size_t i = 0; i < sv.size(); ++i) {
        sv[i] = std::ldexp(1.0f, scale_exp(rng));  // exact in bfloat16 too
        bv[i] = -sv[i];
      }
      for (Dtype sdt : {Dtype::float32, Dtype::bfloat16}) {
        Array sc = Array::from_vector(sv, {N, G}).astype(sdt), bi = Array::from_vector(bv, {N, G}).astype(sdt);
        for (int64_t M = 1; M <= 4; ++M) {
          char trace[96];
          std::snprintf(trace, sizeof trace, "b%d g%d %s M=%lld", bits, gs, dtype_name(sdt), static_cast<long long>(M));
          SCOPED_TRACE(trace);
          Array x = Array::empty({M, K}, Dtype::float32);
          float* p = x.data<float>();
          std::vector<int> ge(static_cast<size_t>(M * G));
          for (int64_t m = 0; m < M; ++m)
            for (int64_t g = 0; g < G; ++g) {
              const int e = group_exp(rng);
              ge[static_cast<size_t>(m * G + g)] = e;
              const double unit = std::ldexp(1.0, e - xb);  // one step of X
              for (int i = 0; i < gs; ++i) {
                bool neg = coin(rng) != 0;
                double mag;
                if (i == pos[static_cast<size_t>(g)]) {  // in [2^e, 2^(e+1)): rounds down by a quarter step
                  mag = (std::ldexp(1.0, xb) + lead(rng) + (neg ? 0.75 : 0.25)) * unit;
                } else {
                  const double t = std::ldexp(std::exp2(below(rng)), e);
                  // below half a step: positive, rounds to 0; otherwise 7/16 of a step above
                  // one (9/16 below one when negative): rounds down by 7/16
                  if (t < unit / 2) neg = false;
                  mag = t < unit / 2 ? t : (std::floor(t / unit) + (neg ? 0.5625 : 0.4375)) * unit;
                }
                p[m * K + g * gs + i] = static_cast<float>(neg ? -mag : mag);
              }
            }
          // the bounds per output, from the inputs
          std::vector<double> rep(static_cast<size_t>(M * N)), f32(rep.size());
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              double r = 0.0, a = 0.0, xw = 0.0;
              for (int64_t g = 0; g < G; ++g) {
                const double s = sv[static_cast<size_t>(n * G + g)], b = bv[static_cast<size_t>(n * G + g)];
                double codes = 0.0;
                for (int64_t k = g * gs; k < (g + 1) * gs; ++k) {
                  const double c = code[static_cast<size_t>(n * K + k)], xv = p[m * K + k];
                  codes += c;
                  a += (std::fabs(s * c) + std::fabs(b)) * std::fabs(xv);
                  xw += std::fabs((s * c + b) * xv);
                }
                r += std::ldexp(1.0, ge[static_cast<size_t>(m * G + g)] - xb - 1) * std::fabs(s) * codes;
              }
              rep[static_cast<size_t>(m * N + n)] = r;
              f32[static_cast<size_t>(m * N + n)] =
                  2.0 * std::ldexp(double(K) * xw + double(gs + 2 * G + K / 64 + 8) * a, -24);
            }
          const ref::Tensor want = ref::quantized_matmul(x, wq, sc, bi, true, gs, bits, "affine");
          Array y = quantized_matmul(x, wq, sc, bi, true, gs, bits);
          const bool prev = detail::set_cpu_vnni_qmv_for_testing(false);
          Array yf = quantized_matmul(x, wq, sc, bi, true, gs, bits);
          detail::set_cpu_vnni_qmv_for_testing(prev);
          for (int64_t i = 0; i < M * N; ++i) {
            const size_t u = static_cast<size_t>(i);
            const double err = std::fabs(y.data<float>()[i] - want.v[u]);
            const double errf = std::fabs(yf.data<float>()[i] - want.v[u]);
            ASSERT_LE(err, rep[u] + f32[u]) << "output " << i << ": more error than the block representation allows";
            ASSERT_LE(errf, f32[u]) << "output " << i << ": the float32 kernel";
            if (vnni) {
              ASSERT_GE(err, rep[u] / 2) << "output " << i << ": less error than the documented representation makes";
              // (2-bit codes are too small for the worst-case float32 bound to sit clearly below rep)
              if (bits >= 4) {
                ASSERT_GT(err, f32[u]) << "output " << i << ": within float32 rounding";
              }
            }
          }
          if (vnni) {
            EXPECT_FALSE(bit_equal(y, yf)) << "the VNNI kernel did not run";
          }
        }
      }
    }
  }
}

// bfloat16 x on the few-row path (VNNI kernel up to 2 rows, the vdpbf16ps kernel
// above): realistic and wide-range x (2^-30 .. 2^30 inside every group) meet the
// bfloat16 tolerance for affine 2/4/8-bit, whole and partial last chunks, and
// exact sums give the float32 kernel's bits. A two-piece variant of the VNNI x
// (15 bits below the group maximum) failed the wide-range case here (3% of
// max|out| on a cancelling output), which is why bfloat16 x keeps three pieces.
TEST_P(CpuIsaLevel, VnniQmvBf16Activations) {
  const int64_t N = 29;
  std::mt19937 rng(71);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-30, 30);
  for (int bits : {2, 4, 8}) {
    for (int gs : {32, 64, 128}) {
      for (int64_t K : {int64_t{512}, int64_t{gs == 128 ? 640 : 576}}) {  // whole chunks, then a partial last one
        auto q = quantize(randn({N, K}, Dtype::bfloat16, 70 + gs, 0.5), gs, bits, "affine");
        for (int64_t M : {1, 2, 3, 4}) {
          for (int variant = 0; variant < 2; ++variant) {
            char trace[96];
            std::snprintf(trace, sizeof trace, "b%d g%d K=%lld M=%lld variant %d", bits, gs, static_cast<long long>(K),
                          static_cast<long long>(M), variant);
            SCOPED_TRACE(trace);
            Array xf = Array::empty({M, K}, Dtype::float32);
            for (int64_t i = 0; i < M * K; ++i)
              xf.data<float>()[i] = variant == 0 ? u(rng) : std::ldexp(u(rng), ex(rng));  // plain; 2^-30 .. 2^30
            Array x = xf.astype(Dtype::bfloat16);
            Array y = quantized_matmul(x, q[0], q[1], q[2], true, gs, bits, "affine");
            ASSERT_TRUE(close_to_ref(y, ref::quantized_matmul(x, q[0], q[1], q[2], true, gs, bits, "affine")));
          }
        }
      }
    }
  }
  // exact sums: integer x (exact in bfloat16), integer codes, power-of-two scales and biases
  const int64_t K = 512;
  Array wq = packed_random_codes(N, K, 73);
  Array sc = Array::full({N, K / 64}, 0.25, Dtype::bfloat16), bi = Array::full({N, K / 64}, -2.0, Dtype::bfloat16);
  for (int64_t M : {1, 2, 3}) {
    Array x = randint({M, K}, Dtype::float32, 74 + M, -100, 100).astype(Dtype::bfloat16);
    Array y = quantized_matmul(x, wq, sc, bi, true, 64, 4);
    const bool prev = detail::set_cpu_vnni_qmv_for_testing(false);
    Array yf = quantized_matmul(x, wq, sc, bi, true, 64, 4);
    detail::set_cpu_vnni_qmv_for_testing(prev);
    EXPECT_TRUE(bit_equal(y, yf)) << "M=" << M;
  }
}

// Regression: the fused kernel factors the bias out of the sum, so an infinite
// activation times a zero code became NaN instead of +-Inf (NanInf suite).
TEST_P(CpuIsaLevel, InfiniteActivationsKeepIeeeResultsOnTheFewRowPath) {
  const int64_t N = 20, K = 64;
  auto q = quantize(randn({N, K}, Dtype::float32, 5, 1.0), 32, 4, "affine");
  Array x = randint({2, K}, Dtype::float32, 6, -2, 2);
  x.data<float>()[3] = std::numeric_limits<float>::infinity();
  Array y = quantized_matmul(x, q[0], q[1], q[2], true, 32, 4);
  EXPECT_TRUE(all_close(y, ref::quantized_matmul(x, q[0], q[1], q[2], true, 32, 4, "affine"), 1e-5, 1e-3));
}

// bfloat16 activations with subnormals (vdpbf16ps would flush them) and
// infinities stay exact: such rows leave the bf16 kernel.
TEST_P(CpuIsaLevel, Bf16ActivationsWithSubnormalsAndInfinities) {
  const int64_t N = 24, K = 128;
  for (const char* mode : {"affine", "mxfp4"}) {
    const int gs = std::string(mode) == "affine" ? 64 : 32;
    auto q = quantize(randn({N, K}, Dtype::bfloat16, 31, 0.5), gs, 4, mode);
    std::optional<Array> b;
    if (q.size() == 3) b = q[2];
    Array xf = randint({2, K}, Dtype::float32, 32, -3, 3);
    xf.data<float>()[5] = 1e-39f;         // a bfloat16 subnormal
    xf.data<float>()[K + 7] = 3e-39f;
    Array x = xf.astype(Dtype::bfloat16);
    Array y = quantized_matmul(x, q[0], q[1], b, true, gs, 4, mode);
    ASSERT_TRUE(close_to_ref(y, ref::quantized_matmul(x, q[0], q[1], b, true, gs, 4, mode))) << mode;
    Array xi = xf.copy();
    xi.data<float>()[3] = std::numeric_limits<float>::infinity();
    Array xib = xi.astype(Dtype::bfloat16);
    Array yi = quantized_matmul(xib, q[0], q[1], b, true, gs, 4, mode);
    EXPECT_TRUE(all_close(yi, ref::quantized_matmul(xib, q[0], q[1], b, true, gs, 4, mode), rtol_for(Dtype::bfloat16),
                          1e-3))
        << mode << " with Inf";
  }
}

// ---------------------------------------------------------------------------
// gather_mm / block_masked_mm

TEST_P(CpuIsaLevel, GatherMmEveryDtypeAndLayout) {
  struct C {
    int64_t M, N, K;
  };
  for (Dtype dt : {Dtype::float32, Dtype::float16, Dtype::bfloat16}) {
    for (const C& c : std::vector<C>{{1, 13, 7}, {3, 40, 70}, {33, 45, 129}, {130, 33, 200}}) {
      for (bool kmajor : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) +
                     " K=" + std::to_string(c.K) + (kmajor ? " K-major b" : ""));
        Array a = randn({3, c.M, c.K}, dt, 200 + c.M);
        Array b = kmajor ? randn({4, c.N, c.K}, dt, 300 + c.N).swapaxes(-1, -2)
                         : randn({4, c.K, c.N}, dt, 300 + c.N);
        Array li = cpu_int64({2, 0, 1, 1, 0}), ri = cpu_int64({3, 3, 0, 2, 1});
        Array y = gather_mm(a, b, li, ri);
        ASSERT_TRUE(close_to_ref(y, ref::gather_mm(a, b, li, ri)));
        Array y2 = matmul(a, b.slice(0, 0, 1));  // one b: rows of all batches stacked
        ASSERT_TRUE(close_to_ref(y2, ref::matmul(ref::to_tensor(a), ref::to_tensor(b.slice(0, 0, 1)))));
      }
    }
  }
}

TEST_P(CpuIsaLevel, BlockMaskedMmBoolAndFloatMasks) {
  for (Dtype dt : {Dtype::float32, Dtype::bfloat16}) {
    for (int bs : {32, 64}) {
      const int64_t M = bs + 5, N = bs + 13, K = bs + 9;  // partial last block on every axis
      const int64_t tm = (M + bs - 1) / bs, tn = (N + bs - 1) / bs, tk = (K + bs - 1) / bs;
      for (bool kmajor : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " bs=" + std::to_string(bs) + (kmajor ? " K-major b" : ""));
        Array a = randn({2, M, K}, dt, 400 + bs);
        Array b = kmajor ? randn({2, N, K}, dt, 401 + bs).swapaxes(-1, -2) : randn({2, K, N}, dt, 401 + bs);
        Array mo = randint({2, tm, tn}, Dtype::bool_, 402, 0, 1);
        Array ml = randint({2, tm, tk}, Dtype::bool_, 403, 0, 1);
        Array mr = randint({2, tk, tn}, Dtype::bool_, 404, 0, 1);
        mo.data<bool>()[0] = true;  // at least one computed block
        ml.data<bool>()[0] = true;
        mr.data<bool>()[0] = true;
        Array y = block_masked_mm(a, b, bs, mo, ml, mr);
        ASSERT_TRUE(close_to_ref(y, ref::block_masked_mm(a, b, bs, mo, ml, mr)));
        Array fo = randn({2, tm, tn}, Dtype::float32, 405), fl = randn({2, tm, tk}, Dtype::float32, 406);
        Array fr = randn({2, tk, tn}, Dtype::float32, 407);
        Array yf = block_masked_mm(a, b, bs, fo, fl, fr);
        ASSERT_TRUE(close_to_ref(yf, ref::block_masked_mm(a, b, bs, fo, fl, fr)));
        Array yo = block_masked_mm(a, b, bs, mo, std::nullopt, std::nullopt);
        ASSERT_TRUE(close_to_ref(yo, ref::block_masked_mm(a, b, bs, mo, std::nullopt, std::nullopt)));
      }
    }
  }
}

// The fast kernel packs only the a k-blocks and b (k-block, column block)
// pairs that active output blocks use, per batch entry. Whole inactive block
// rows / columns / k-blocks hold NaN: a kernel that reads them, or that skips
// packing a block it then uses, or reuses the previous batch entry's packing
// (b is shared by both entries, with different masks), gives a wrong or NaN
// result. Integer data: float32 results are compared exactly.
TEST_P(CpuIsaLevel, BlockMaskedMmPacksOnlyTheBlocksItUses) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (Dtype dt : {Dtype::float32, Dtype::bfloat16}) {
    for (int bs : {32, 64}) {
      const int64_t M = 2 * bs + 7, N = 3 * bs + 5, K = 2 * bs + 11;  // partial last block on every axis
      const int64_t tm = 3, tn = 4, tk = 3;
      for (bool kmajor : {false, true}) {
        if (kmajor && dt != Dtype::float32) continue;  // (the float64 reference is slow)
        SCOPED_TRACE(std::string(dtype_name(dt)) + " bs=" + std::to_string(bs) + (kmajor ? " K-major b" : ""));
        Array a32 = randint({2, M, K}, Dtype::float32, 410 + bs, -3, 3);
        Array b32 = randint({K, N}, Dtype::float32, 411 + bs, -3, 3);  // one b for both entries
        // masks: entry 0 many blocks, entry 1 only the partial corner block
        Array mo = Array::full({2, tm, tn}, 1.0, Dtype::bool_), ml = Array::full({2, tm, tk}, 1.0, Dtype::bool_);
        Array mr = Array::full({2, tk, tn}, 1.0, Dtype::bool_);
        bool* o = mo.data<bool>();
        bool* l = ml.data<bool>();
        bool* r = mr.data<bool>();
        for (int64_t j = 0; j < tn; ++j) o[1 * tn + j] = false;  // entry 0: block row 1 off
        for (int64_t i = 0; i < tm; ++i) o[i * tn + 2] = false;  // entry 0: block column 2 off
        o[0] = false;
        for (int64_t i = 0; i < tm; ++i) l[i * tk + 1] = false;  // entry 0: k-block 1 of a off everywhere
        l[0 * tk + 2] = false;
        r[0 * tn + 3] = false;
        r[2 * tn + 0] = false;  // the partial k-block, column 0
        for (int64_t e = 0; e < tm * tn; ++e) o[tm * tn + e] = e == tm * tn - 1;
        for (int64_t e = 0; e < tk * tn; ++e) r[tk * tn + e] = e / tn != 2;  // entry 1: k-block 2 of b off
        // NaN where entry 0 never reads: a's block row 1 and k-block 1, b's column block 2
        float* pa = a32.data<float>();
        float* pb = b32.data<float>();
        for (int64_t m = 0; m < M; ++m)
          for (int64_t k = 0; k < K; ++k)
            if (m / bs == 1 || k / bs == 1) pa[m * K + k] = nan;
        for (int64_t k = 0; k < K; ++k)
          for (int64_t n = 2 * bs; n < 3 * bs; ++n) pb[k * N + n] = nan;
        Array a = a32.astype(dt), b = kmajor ? b32.astype(dt).swapaxes(-1, -2).contiguous().swapaxes(-1, -2)
                                             : b32.astype(dt);
        auto check = [&](const Array& y, const ref::Tensor& want) {
          if (dt == Dtype::float32) return all_close(y, want, 0.0, 0.0);
          return all_close(y, want, rtol_for(dt), 0.0);
        };
        const ref::Tensor want = ref::block_masked_mm(a, b, bs, mo, ml, mr);
        ASSERT_GT(want.max_abs(), 0.0);
        for (double v : want.v) ASSERT_FALSE(std::isnan(v)) << "the reference reads no poisoned block";
        EXPECT_TRUE(check(block_masked_mm(a, b, bs, mo, ml, mr), want));
        // float masks multiply: a zero float mask over NaN data still gives NaN
        Array a0 = a.slice(0, 0, 1);
        Array fl = ml.astype(Dtype::float32).slice(0, 0, 1), fr = mr.astype(Dtype::float32).slice(0, 0, 1);
        const ref::Tensor want_f = ref::block_masked_mm(a0, b, bs, std::nullopt, fl, fr);
        bool any_nan = false;
        for (double v : want_f.v) any_nan = any_nan || std::isnan(v);
        ASSERT_TRUE(any_nan) << "float masks must not skip the poisoned blocks";
        EXPECT_TRUE(check(block_masked_mm(a0, b, bs, std::nullopt, fl, fr), want_f));
        // only the output mask: NaN left only in a's block row 1 (and b's column block 2)
        Array a1 = Array::empty({1, M, K}, Dtype::float32);
        for (int64_t e = 0; e < M * K; ++e)
          a1.data<float>()[e] = (e / K) / bs != 1 && std::isnan(pa[e]) ? 2.0f : pa[e];
        a1 = a1.astype(dt);
        Array mob = Array::full({tm, tn}, 1.0, Dtype::bool_);
        for (int64_t j = 0; j < tn; ++j) mob.data<bool>()[1 * tn + j] = false;
        for (int64_t i = 0; i < tm; ++i) mob.data<bool>()[i * tn + 2] = false;
        const ref::Tensor want_o = ref::block_masked_mm(a1, b, bs, mob, std::nullopt, std::nullopt);
        ASSERT_GT(want_o.max_abs(), 0.0);
        for (double v : want_o.v) ASSERT_FALSE(std::isnan(v));
        EXPECT_TRUE(check(block_masked_mm(a1, b, bs, mob, std::nullopt, std::nullopt), want_o));
        // every output block off: zeros, nothing read
        Array off = Array::full({tm, tn}, 0.0, Dtype::bool_);
        for (double v : block_masked_mm(a1, b, bs, off, std::nullopt, std::nullopt).to_double_vector())
          ASSERT_EQ(v, 0.0);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// quantize / dequantize: bytes identical to the scalar level

/// Random values with the corner cases the rounding steps care about.
Array awkward_values(const Shape& s, Dtype dt, uint64_t seed) {
  Array w = randn(s, Dtype::float32, seed, 1.0);
  float* p = w.data<float>();
  const int64_t n = w.size();
  const float specials[] = {0.0f, -0.0f, 1e-30f, -3e-39f, 6.0f, -6.0f, 0.25f, 448.0f, 1e6f, 2.5f, -0.75f, 65504.0f};
  for (int64_t i = 0; i < n; i += 7) p[i] = specials[(i / 7) % 12] * (i % 3 == 0 ? 1.0f : 0.37f);
  if (n > 40) {
    p[5] = std::numeric_limits<float>::quiet_NaN();
    p[33] = std::numeric_limits<float>::infinity();
  }
  return w.astype(dt);
}

TEST_P(CpuIsaLevel, QuantizeAndDequantizeAreBitIdenticalToScalar) {
  const Isa isa = level_of(GetParam());
  for (const Fmt& f : all_formats()) {
    for (Dtype dt : {Dtype::float32, Dtype::float16, Dtype::bfloat16}) {
      SCOPED_TRACE(fmt_name(f) + " " + dtype_name(dt));
      const Shape shape = {7, 3 * 128};
      // Finite data: quantize; the dequantize half also sees specials through the codes and scales.
      Array w = awkward_values(shape, dt, 500 + f.bits);
      std::vector<Array> got, want;
      got = quantize(w, f.gs, f.bits, f.mode);
      {
        IsaScope s(Isa::scalar);
        want = quantize(w, f.gs, f.bits, f.mode);
      }
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i) ASSERT_TRUE(bit_equal(got[i], want[i])) << "output " << i;
      std::optional<Array> b;
      if (want.size() == 3) b = want[2];
      for (std::optional<Dtype> odt : {std::optional<Dtype>(), std::optional<Dtype>(Dtype::float32),
                                       std::optional<Dtype>(Dtype::float16), std::optional<Dtype>(Dtype::bfloat16)}) {
        Array d1 = dequantize(want[0], want[1], b, f.gs, f.bits, f.mode, std::nullopt, odt);
        Array d0;
        {
          IsaScope s(Isa::scalar);
          d0 = dequantize(want[0], want[1], b, f.gs, f.bits, f.mode, std::nullopt, odt);
        }
        ASSERT_TRUE(bit_equal(d1, d0)) << "dequantize to " << (odt ? dtype_name(*odt) : "default");
      }
      (void)isa;
    }
  }
}

TEST_P(CpuIsaLevel, DequantizeOfArbitraryBitsMatchesScalar) {
  // Raw random words and scales cover every code, NaN/Inf/subnormal scales included.
  for (const Fmt& f : all_formats()) {
    const int64_t rows = 5, cols = 2 * f.gs * (f.bits == 3 ? 1 : 2);
    Array wq = randint({rows, cols * f.bits / 32}, Dtype::int64, 600 + f.bits, 0, 1 << 30)
                   .astype(Dtype::uint32);
    for (int64_t i = 0; i < wq.size(); ++i) wq.data<uint32_t>()[i] = wq.data<uint32_t>()[i] * 2654435761u;
    std::vector<Array> sv;
    std::optional<Array> bias;
    if (std::string(f.mode) == "affine") {
      for (Dtype sdt : {Dtype::float32, Dtype::float16, Dtype::bfloat16}) {
        Array s = randn({rows, cols / f.gs}, Dtype::float32, 601, 10.0);
        s.data<float>()[1] = std::numeric_limits<float>::quiet_NaN();
        s.data<float>()[2] = -std::numeric_limits<float>::infinity();
        s.data<float>()[3] = 1e-42f;
        Array sb = randn({rows, cols / f.gs}, Dtype::float32, 602, 1e4);
        Array s1 = s.astype(sdt), b1 = sb.astype(sdt);
        Array d1 = dequantize(wq, s1, b1, f.gs, f.bits, f.mode);
        Array d0;
        {
          IsaScope sc(Isa::scalar);
          d0 = dequantize(wq, s1, b1, f.gs, f.bits, f.mode);
        }
        ASSERT_TRUE(bit_equal(d1, d0)) << fmt_name(f) << " scales " << dtype_name(sdt);
      }
    } else {
      Array s = randint({rows, cols / f.gs}, Dtype::int64, 603, 0, 255).astype(Dtype::uint8);
      s.data<uint8_t>()[0] = 0;
      s.data<uint8_t>()[1] = 255;
      for (Dtype odt : {Dtype::float32, Dtype::float16, Dtype::bfloat16}) {
        for (bool gscale : {false, true}) {
          if (gscale && std::string(f.mode) != "nvfp4") continue;
          std::optional<Array> g;
          if (gscale) g = Array::scalar(3.5, Dtype::float32);
          Array d1 = dequantize(wq, s, std::nullopt, f.gs, f.bits, f.mode, g, odt);
          Array d0;
          {
            IsaScope sc(Isa::scalar);
            d0 = dequantize(wq, s, std::nullopt, f.gs, f.bits, f.mode, g, odt);
          }
          ASSERT_TRUE(bit_equal(d1, d0)) << fmt_name(f) << " to " << dtype_name(odt) << (gscale ? " global" : "");
        }
      }
    }
  }
}

TEST_P(CpuIsaLevel, Nvfp4GlobalScaleQuantizeMatchesScalar) {
  for (Dtype dt : {Dtype::float32, Dtype::bfloat16}) {
    Array w = awkward_values({6, 64}, dt, 700);
    Array g = Array::scalar(1234.5, Dtype::float32);
    auto got = quantize(w, 16, 4, "nvfp4", g);
    std::vector<Array> want;
    {
      IsaScope s(Isa::scalar);
      want = quantize(w, 16, 4, "nvfp4", g);
    }
    for (size_t i = 0; i < got.size(); ++i) ASSERT_TRUE(bit_equal(got[i], want[i])) << dtype_name(dt) << " " << i;
  }
}

// ---------------------------------------------------------------------------
// every output element written: run the selected kernel on a poisoned output

TEST_P(CpuIsaLevel, KernelsWriteEveryOutputElement) {
  auto& reg = detail::registries();
  const float poison = std::numeric_limits<float>::quiet_NaN();
  for (int64_t M : {1, 3, 17}) {
    const int64_t N = 37, K = 128;
    auto q = quantize(randn({N, K}, Dtype::float32, 800, 0.1), 64, 4, "affine");
    detail::QmmDesc d;
    d.M = M;
    d.N = N;
    d.K = K;
    detail::QmmArgs a;
    a.x = randn({1, M, K}, Dtype::float32, 801);
    a.w = q[0].reshape({1, N, K / 8});
    a.scales = q[1].reshape({1, N, K / 64});
    a.biases = q[2].reshape({1, N, K / 64});
    a.lhs = cpu_int64({0});
    a.rhs = cpu_int64({0});
    a.out = Array::full({1, M, N}, poison, Dtype::float32);
    reg.qmm.run(d, a, Stream(Device::cpu()));
    EXPECT_TRUE(close_to_ref(a.out.reshape({M, N}),
                             ref::quantized_matmul(a.x.reshape({M, K}), q[0], q[1], q[2], true, 64, 4, "affine")))
        << "M=" << M;
  }
  {
    detail::GemmDesc d;
    d.M = 19;
    d.N = 35;
    d.K = 40;
    detail::GemmArgs g;
    g.a = randn({1, d.M, d.K}, Dtype::float32, 802);
    g.b = randn({1, d.K, d.N}, Dtype::float32, 803);
    g.lhs = cpu_int64({0});
    g.rhs = cpu_int64({0});
    g.out = Array::full({1, d.M, d.N}, poison, Dtype::float32);
    reg.gemm.run(d, g, Stream(Device::cpu()));
    EXPECT_TRUE(close_to_ref(g.out, ref::matmul(ref::to_tensor(g.a), ref::to_tensor(g.b))));
  }
  for (int bs : {32, 64}) {  // block_masked_mm: skipped blocks are written (zeros) too
    detail::BlockMaskedDesc d;
    d.M = 2 * bs + 3;
    d.N = 3 * bs + 1;
    d.K = bs + 5;
    d.block_size = bs;
    d.has_out_mask = d.out_mask_bool = true;
    d.has_op_masks = d.op_masks_bool = true;
    const int64_t tm = d.tm(), tn = d.tn(), tk = d.tk();
    detail::BlockMaskedArgs g;
    g.a = randint({1, d.M, d.K}, Dtype::float32, 804, -3, 3);
    g.b = randint({1, d.K, d.N}, Dtype::float32, 805, -3, 3);
    g.a_idx = cpu_int64({0});
    g.b_idx = cpu_int64({0});
    g.mask_out = Array::full({1, tm, tn}, 1.0, Dtype::float32);
    g.mask_lhs = Array::full({1, tm, tk}, 1.0, Dtype::float32);
    g.mask_rhs = Array::full({1, tk, tn}, 1.0, Dtype::float32);
    g.mask_out.data<float>()[1] = 0.0f;                // output block (0, 1) off
    g.mask_lhs.data<float>()[1 * tk + 0] = 0.0f;       // block row 1 uses only k-block 1
    g.mask_rhs.data<float>()[1 * tn + tn - 1] = 0.0f;  // last column block uses only k-block 0
    g.out = Array::full({1, d.M, d.N}, poison, Dtype::float32);
    reg.block_masked.run(d, g, Stream(Device::cpu()));
    Array mo = g.mask_out.astype(Dtype::bool_), ml = g.mask_lhs.astype(Dtype::bool_);
    Array mr = g.mask_rhs.astype(Dtype::bool_);
    EXPECT_TRUE(all_close(g.out, ref::block_masked_mm(g.a, g.b, bs, mo, ml, mr), 0.0, 0.0)) << "bs=" << bs;
  }
}

INSTANTIATE_TEST_SUITE_P(CpuIsa, CpuIsaLevel, ::testing::ValuesIn(level_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace mmkit::test
