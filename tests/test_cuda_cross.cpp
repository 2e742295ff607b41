// Cross-backend tests of the CUDA backend: the same calls on the GPU and on
// the CPU. quantize / dequantize / fp8 must be bit-identical; matmuls on
// exactly representable data (integer activations, integer codes,
// power-of-two scales: every float32 partial sum exact) must be bit-identical
// too, whichever GPU kernel runs; on random data (N(0,1) weights, x / sqrt(K))
// both backends must lie within the float64 reference's tolerance. Shapes are
// drawn at random (fixed seeds) across the dispatch boundaries of the GPU
// kernels (M = 1..8 -> qmv, M > 8 half -> tensor cores, the rest generic).
// Every test skips with the reason when no GPU is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <tuple>
#include <string>
#include <vector>

#include "core/registry.h"
#include "formats/format.h"
#include "test_util.h"

#ifdef MMKIT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace mmkit::test {
namespace {

#define MMKIT_REQUIRE_GPU()                                                                   \
  do {                                                                                        \
    if (!built_with_cuda()) GTEST_SKIP() << "mmkit was built without CUDA";                   \
    if (gpu_count() == 0) GTEST_SKIP() << "no CUDA GPU is present (built with CUDA)";          \
  } while (0)

const Device kGpu = Device::gpu();

/// Sets an environment variable (a kernel's tuning knob, read per call) for
/// the scope, then unsets it.
struct ScopedEnv {
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};
Array gpu(const Array& a) { return a.to(kGpu); }

struct Fmt {
  const char* mode;
  int bits;
  int gs;
  bool affine() const { return std::string(mode) == "affine"; }
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

std::string name(const Fmt& f, Dtype dt) {
  std::string s = f.mode;
  if (f.affine()) s += " b" + std::to_string(f.bits) + " g" + std::to_string(f.gs);
  return s + " " + dtype_name(dt);
}

const Dtype kFloats[] = {Dtype::float32, Dtype::float16, Dtype::bfloat16};

/// Quantized weights (rows, cols) whose dequantized values are exact and
/// small: random codes, scales in {0.5, 1, 2} (E8M0 126..128, E4M3 0x30 /
/// 0x38 / 0x40), affine biases small integers; mxfp8 codes restricted to
/// magnitudes 1/8 .. 30 so products with small integers stay exact.
struct QW {
  Array w, scales;
  std::optional<Array> biases;
};

QW exact_quantized(const Fmt& f, int64_t rows, int64_t cols, Dtype dt, uint64_t seed) {
  std::mt19937_64 g(seed);
  const int64_t words = cols * f.bits / 32, groups = cols / f.gs;
  std::vector<uint32_t> q(static_cast<size_t>(rows * words), 0u);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      uint32_t c;
      if (std::string(f.mode) == "mxfp8") {
        const uint32_t e = 4 + g() % 8, m = g() % 8, s = g() % 2;  // 2^-3 .. 2^4 * 1.875
        c = (s << 7) | (e << 3) | m;
      } else {
        c = static_cast<uint32_t>(g() % (1u << f.bits));
      }
      fmt::pack_code(q.data() + r * words, j, f.bits, c);
    }
  QW out;
  out.w = Array::from_vector(q, {rows, words});
  if (f.affine()) {
    std::vector<float> s(static_cast<size_t>(rows * groups)), b(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
      const float p[3] = {0.5f, 1.0f, 2.0f};
      s[i] = (g() % 2 ? -1.0f : 1.0f) * p[g() % 3];
      b[i] = static_cast<float>(static_cast<int>(g() % 9) - 4);
    }
    out.scales = Array::from_vector(s, {rows, groups}).astype(dt);
    out.biases = Array::from_vector(b, {rows, groups}).astype(dt);
  } else {
    std::vector<uint8_t> s(static_cast<size_t>(rows * groups));
    const bool nv = std::string(f.mode) == "nvfp4";
    for (auto& v : s) {
      const uint8_t e8[3] = {126, 127, 128}, e4[3] = {0x30, 0x38, 0x40};
      v = nv ? e4[g() % 3] : e8[g() % 3];
    }
    out.scales = Array::from_vector(s, {rows, groups});
  }
  return out;
}

Array small_ints(const Shape& s, Dtype dt, uint64_t seed) { return randint(s, Dtype::float32, seed, -3, 3).astype(dt); }

std::optional<Array> opt_gpu(const std::optional<Array>& a) {
  if (!a) return std::nullopt;
  return gpu(*a);
}

// ---------------------------------------------------------------------------
// quantize / dequantize / fp8: bit-exact

TEST(CudaCross, QuantizeDequantizeBitExactEveryFormatAndDtype) {
  MMKIT_REQUIRE_GPU();
  std::mt19937_64 g(7);
  uint64_t seed = 100;
  for (const Fmt& f : all_formats())
    for (Dtype dt : kFloats) {
      SCOPED_TRACE(name(f, dt));
      const int64_t rows = 1 + g() % 37, cols = f.gs * (1 + g() % 5);
      Array w = randn({rows, cols}, Dtype::float32, seed++, 1.0);
      // Special groups: all zero, constant, one large outlier, tiny values.
      float* p = w.data<float>();
      for (int64_t j = 0; j < cols && rows > 3; ++j) {
        p[j] = 0.0f;
        p[cols + j] = 0.37f;
        p[2 * cols + j] = j == 5 ? 300.0f : p[2 * cols + j];
        p[3 * cols + j] *= 1e-6f;
      }
      w = w.astype(dt);
      auto qc = quantize(w, f.gs, f.bits, f.mode);
      auto qg = quantize(gpu(w), f.gs, f.bits, f.mode);
      ASSERT_EQ(qc.size(), qg.size());
      for (size_t i = 0; i < qc.size(); ++i) EXPECT_TRUE(bit_equal(qg[i], qc[i])) << "output " << i;
      std::optional<Array> bc, bg;
      if (f.affine()) {
        bc = qc[2];
        bg = gpu(qc[2]);
      }
      for (Dtype odt : kFloats) {
        Array dc = dequantize(qc[0], qc[1], bc, f.gs, f.bits, f.mode, std::nullopt, odt);
        Array dg = dequantize(gpu(qc[0]), gpu(qc[1]), bg, f.gs, f.bits, f.mode, std::nullopt, odt);
        EXPECT_TRUE(bit_equal(dg, dc)) << "dequantize to " << dtype_name(odt);
      }
    }
}

TEST(CudaCross, Nvfp4GlobalScaleBitExact) {
  MMKIT_REQUIRE_GPU();
  for (Dtype dt : kFloats) {
    Array w = randn({33, 64}, Dtype::float32, 3, 2.0).astype(dt);
    Array gs = Array::from_vector(std::vector<float>{5.5f}, Shape{});
    auto qc = quantize(w, 16, 4, "nvfp4", gs);
    auto qg = quantize(gpu(w), 16, 4, "nvfp4", gpu(gs));
    EXPECT_TRUE(bit_equal(qg[0], qc[0])) << dtype_name(dt);
    EXPECT_TRUE(bit_equal(qg[1], qc[1])) << dtype_name(dt);
    Array dc = dequantize(qc[0], qc[1], std::nullopt, 16, 4, "nvfp4", gs, dt);
    Array dg = dequantize(gpu(qc[0]), gpu(qc[1]), std::nullopt, 16, 4, "nvfp4", gpu(gs), dt);
    EXPECT_TRUE(bit_equal(dg, dc)) << dtype_name(dt);
  }
}

TEST(CudaCross, DequantizePromotedScalesBitExact) {
  MMKIT_REQUIRE_GPU();
  // float16 scales with bfloat16 biases promote to float32 (two roundings in float32).
  auto q = quantize(randn({20, 128}, Dtype::float32, 9), 64, 5, "affine");
  Array s = q[1].astype(Dtype::float16), b = q[2].astype(Dtype::bfloat16);
  Array dc = dequantize(q[0], s, b, 64, 5, "affine");
  Array dg = dequantize(gpu(q[0]), gpu(s), gpu(b), 64, 5, "affine");
  EXPECT_TRUE(bit_equal(dg, dc));
}

TEST(CudaCross, Fp8BitExact) {
  MMKIT_REQUIRE_GPU();
  std::vector<uint8_t> all(256);
  for (int i = 0; i < 256; ++i) all[i] = static_cast<uint8_t>(i);
  Array bytes = Array::from_vector(all);
  for (Dtype dt : kFloats) {
    EXPECT_TRUE(bit_equal(from_fp8(gpu(bytes), dt), from_fp8(bytes, dt))) << dtype_name(dt);
    std::vector<float> v = {0.0f, -0.0f, 1e-9f, -3e-3f, 0.0019531f, 0.015625f, 1.0f, 447.0f, 448.0f, 500.0f, -1e30f};
    Array x = Array::from_vector(v);
    Array r = randn({1000}, Dtype::float32, 11, 20.0);
    for (Array a : {x, r}) {
      a = a.astype(dt);
      EXPECT_TRUE(bit_equal(to_fp8(gpu(a)), to_fp8(a))) << dtype_name(dt);
    }
  }
}

// ---------------------------------------------------------------------------
// quantized matmuls

struct QmmCase {
  Fmt f;
  Dtype dt;
  bool transpose;
  int64_t M, N, K;
};

std::string describe(const QmmCase& c) {
  std::ostringstream os;
  os << name(c.f, c.dt) << (c.transpose ? " T" : " N") << " M=" << c.M << " N=" << c.N << " K=" << c.K;
  return os.str();
}

void check_exact_qmm(const QmmCase& c, uint64_t seed) {
  SCOPED_TRACE(describe(c));
  const int64_t rows = c.transpose ? c.N : c.K, cols = c.transpose ? c.K : c.N;
  QW q = exact_quantized(c.f, rows, cols, c.dt, seed);
  Array x = small_ints({c.M, c.K}, c.dt, seed + 1);
  Array yc = quantized_matmul(x, q.w, q.scales, q.biases, c.transpose, c.f.gs, c.f.bits, c.f.mode);
  Array yg = quantized_matmul(gpu(x), gpu(q.w), gpu(q.scales), opt_gpu(q.biases), c.transpose, c.f.gs, c.f.bits,
                              c.f.mode);
  ASSERT_TRUE(yg.device().is_gpu());
  EXPECT_TRUE(bit_equal(yg, yc));
}

TEST(CudaCross, QmmExactEveryFormatEveryPath) {
  MMKIT_REQUIRE_GPU();
  uint64_t seed = 1000;
  for (const Fmt& f : all_formats())
    for (Dtype dt : kFloats)
      for (bool t : {true, false}) {
        // M = 1 and 5 (qmv), 40 (tensor cores for half, generic for float32),
        // odd N; K two groups (+ a K that is not a multiple of 32 for nvfp4).
        const int64_t K = 2 * f.gs, N = t ? 37 : 2 * f.gs;
        for (int64_t M : {1, 5, 40}) check_exact_qmm({f, dt, t, M, N, K}, seed++);
      }
  check_exact_qmm({{"nvfp4", 4, 16}, Dtype::bfloat16, true, 3, 24, 48}, seed++);
  check_exact_qmm({{"nvfp4", 4, 16}, Dtype::float16, true, 17, 24, 48}, seed++);
}

TEST(CudaCross, QmmExactTileEdges) {
  MMKIT_REQUIRE_GPU();
  uint64_t seed = 5000;
  const Fmt f4{"affine", 4, 64};
  for (Dtype dt : {Dtype::bfloat16, Dtype::float16, Dtype::float32})
    for (int64_t M : {8, 9, 63, 64, 65, 129})
      for (int64_t N : {1, 63, 64, 65, 130}) check_exact_qmm({f4, dt, true, M, N, 192}, seed++);
  check_exact_qmm({{"affine", 3, 32}, Dtype::bfloat16, true, 300, 70, 96}, seed++);
  check_exact_qmm({{"mxfp4", 4, 32}, Dtype::float16, true, 77, 129, 512}, seed++);
}

TEST(CudaCross, QmmExactTensorCoreGemvShapes) {
  MMKIT_REQUIRE_GPU();
  // 4-bit affine, half activations, K % 128 == 0: the groups-in-columns GEMV
  // (cuda_qmv1_mma) up to M = gs / 16 rows (8 at group size 128), the
  // tensor-core GEMV up to M = 32 (1, 2 and 4 column tiles), then the tiled
  // kernel from M = 33.
  uint64_t seed = 8000;
  for (int gs : {32, 64, 128})
    for (Dtype dt : {Dtype::bfloat16, Dtype::float16})
      for (int64_t M : {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32, 33})
        check_exact_qmm({{"affine", 4, gs}, dt, true, M, M % 2 ? 41 : 16, 128 * (1 + M % 4)}, seed++);
}

TEST(CudaCross, QmmExactOneRowGemvSplitK) {
  MMKIT_REQUIRE_GPU();
  // The M = 1 tensor-core GEMV (cuda_qmv1_mma): K from one 128-code chunk to
  // several super-chunks per warp (split over the block's warps: uneven, empty
  // and partial ranges), N around its 32-row blocks, every group size, both
  // half dtypes, and every tiling variant through the registry's default.
  uint64_t seed = 8500;
  for (int gs : {32, 64, 128})
    for (Dtype dt : {Dtype::bfloat16, Dtype::float16})
      for (int64_t K : {128, 384, 1152, 8832})
        for (int64_t N : {1, 33, 96}) check_exact_qmm({{"affine", 4, gs}, dt, true, 1, N, K}, seed++);
  // Several rows per entry (the kernel built for 2, 4 or 8 rows: super-chunks
  // of 4, 2 or 1 groups; x staged or, at 4 x 8832 and 8 x 8832, read from
  // global memory).
  for (int gs : {32, 64, 128})
    for (int64_t M : {2, 3, 4, 6, 8}) {
      if (M > (gs == 128 ? 8 : gs / 16)) continue;
      for (int64_t K : {128, 1152, 8832}) check_exact_qmm({{"affine", 4, gs}, Dtype::bfloat16, true, M, 33, K}, seed++);
      check_exact_qmm({{"affine", 4, gs}, Dtype::float16, true, M, 96, 1152}, seed++);
    }
  // A long K (x is 48 KB): many super-chunks per warp.
  for (Dtype dt : {Dtype::bfloat16, Dtype::float16}) check_exact_qmm({{"affine", 4, 64}, dt, true, 1, 33, 24704}, seed++);
  // K not a multiple of 128 (a partial last chunk; an odd number of groups
  // at 192 / 64 and 2880 / 64), staged and (2 x 8768) from global memory.
  for (int gs : {32, 64})
    for (Dtype dt : {Dtype::bfloat16, Dtype::float16}) {
      for (int64_t K : {64, 192, 2880, 4000}) {
        if (K % gs) continue;
        check_exact_qmm({{"affine", 4, gs}, dt, true, 1, 33, K}, seed++);
        check_exact_qmm({{"affine", 4, gs}, dt, true, 2, 17, K}, seed++);
      }
      check_exact_qmm({{"affine", 4, gs}, dt, true, 2, 33, 8768}, seed++);
    }
  {
    const ScopedEnv env("MMKIT_QMV1_TILES", "2");
    for (int64_t K : {96, 2880}) check_exact_qmm({{"affine", 4, 32}, Dtype::bfloat16, true, 1, 130, K}, seed++);
  }
}

TEST(CudaCross, QmmExactOneRowGemvTwoTilesPerWarp) {
  MMKIT_REQUIRE_GPU();
  // cuda_qmv1_mma with two 16-row tiles per warp (chosen for large grids;
  // MMKIT_QMV1_TILES=2 forces it here on small shapes): N around the 32-row
  // warp tiles and partial last tiles (the per-row copy path), K from one
  // chunk to split ranges, M = 1 - 4 (3 and 4 at group size >= 64), every
  // group size, both half dtypes, x staged and (M >= 2, K = 8832) read from
  // global memory; a non-finite x
  // takes the element-wise path of the second tile too.
  const ScopedEnv env("MMKIT_QMV1_TILES", "2");
  uint64_t seed = 8700;
  for (int gs : {32, 64, 128})
    for (Dtype dt : {Dtype::bfloat16, Dtype::float16})
      for (int64_t K : {128, 1152, 8832})
        for (int64_t N : {1, 17, 31, 32, 33, 64, 96, 130}) {
          check_exact_qmm({{"affine", 4, gs}, dt, true, 1, N, K}, seed++);
          if (N % 2) check_exact_qmm({{"affine", 4, gs}, dt, true, 2, N, K}, seed++);
          if (N % 2 && gs >= 64) check_exact_qmm({{"affine", 4, gs}, dt, true, N % 4 == 1 ? 3 : 4, N, K}, seed++);
        }
  const float inf = std::numeric_limits<float>::infinity();
  for (Dtype dt : {Dtype::bfloat16, Dtype::float16}) {
    const Fmt f{"affine", 4, 64};
    const int64_t N = 40, K = 1024;
    QW q = exact_quantized(f, N, K, dt, seed++);
    Array xf = small_ints({1, K}, Dtype::float32, seed++);
    xf.data<float>()[700] = inf;
    Array x = xf.astype(dt);
    ref::Tensor r = ref::quantized_matmul(x, q.w, q.scales, q.biases, true, f.gs, f.bits, f.mode);
    Array y = quantized_matmul(gpu(x), gpu(q.w), gpu(q.scales), opt_gpu(q.biases), true, f.gs, f.bits, f.mode);
    EXPECT_TRUE(all_close(y, r, rtol_for(dt), 0.0));
  }
}

TEST(CudaCross, QmmExactOneRowGemvFp4) {
  MMKIT_REQUIRE_GPU();
  // cuda_qmv1_mma on FP4 codes (mxfp4: group 32, E8M0 scales, 1 - 2 rows;
  // nvfp4: group 16, E4M3 scales, one row, each lane's 32-code slice spanning
  // two groups): every code (exact_quantized draws all 16, -0 included) and
  // scale kind, K from one chunk to split ranges, N around the tiles, both half
  // dtypes, one and two tiles per warp, x staged and (K * rows > 16384) read
  // from global memory. Bit-exact against the CPU (exact sums).
  uint64_t seed = 8900;
  for (const Fmt& f : {Fmt{"mxfp4", 4, 32}, Fmt{"nvfp4", 4, 16}})
    for (Dtype dt : {Dtype::bfloat16, Dtype::float16}) {
      // (K = 32, 96, 2880, 4000: a partial last chunk; 4000 / 32 groups is odd.)
      for (int64_t K : {32, 96, 128, 384, 1152, 2880, 4000, 8832})
        for (int64_t N : {1, 33, 96}) check_exact_qmm({f, dt, true, 1, N, K}, seed++);
      check_exact_qmm({f, dt, true, 1, 33, 24704}, seed++);
      check_exact_qmm({f, dt, true, 1, 33, 24672}, seed++);  // (771 groups of 32)
      {
        const ScopedEnv env("MMKIT_QMV1_TILES", "2");
        for (int64_t N : {17, 32, 33, 130})
          for (int64_t K : {1152, 2880}) check_exact_qmm({f, dt, true, 1, N, K}, seed++);
        check_exact_qmm({f, dt, true, 1, 33, 24704}, seed++);
        if (f.gs == 32)
          for (int64_t K : {128, 1152, 2880, 8832}) check_exact_qmm({f, dt, true, 2, 33, K}, seed++);
      }
      if (f.gs == 32)
        for (int64_t K : {96, 128, 1152, 2880, 8832, 8800}) check_exact_qmm({f, dt, true, 2, 33, K}, seed++);
    }
  // A batch of entries (gather_qmm per entry, decode; gpt-oss's K = 2880):
  // indices on the device.
  for (const Fmt& f : {Fmt{"mxfp4", 4, 32}, Fmt{"nvfp4", 4, 16}}) {
    const int64_t E = 5, N = 40, K = 2880;
    QW q = exact_quantized(f, E * N, K, Dtype::bfloat16, seed++);
    Array w = q.w.reshape({E, N, K / 8}), sc = q.scales.reshape({E, N, K / f.gs});
    Array x = small_ints({3, 1, K}, Dtype::bfloat16, seed++);
    Array lhs = Array::from_vector(std::vector<int64_t>{2, 0, 1, 2}, {4});
    Array rhs = Array::from_vector(std::vector<int64_t>{4, 1, 1, 0}, {4});
    Array yc = gather_qmm(x, w, sc, std::nullopt, lhs, rhs, true, f.gs, f.bits, f.mode);
    Array yg = gather_qmm(gpu(x), gpu(w), gpu(sc), std::nullopt, gpu(lhs), gpu(rhs), true, f.gs, f.bits, f.mode);
    EXPECT_TRUE(bit_equal(yg, yc)) << f.mode;
  }
  // Extreme scales: E8M0 255 (+Inf: x * (Inf * 0) is NaN, other codes give
  // +-Inf) and 0 (2^-127, a float32 denormal); E4M3 0x7F / 0xFF (+-480); and
  // large float16 x (group sums far beyond float16's range, exact in float32).
  // Each output must match the reference rounded to T (NaN, +-Inf or value).
  for (const Fmt& f : {Fmt{"mxfp4", 4, 32}, Fmt{"nvfp4", 4, 16}})
    for (Dtype dt : {Dtype::bfloat16, Dtype::float16}) {
      SCOPED_TRACE(name(f, dt));
      const int64_t N = 40, K = 1024;
      QW q = exact_quantized(f, N, K, dt, seed++);
      uint8_t* s = q.scales.data<uint8_t>();
      if (f.gs == 32) {
        s[3] = 255;                 // row 0, group 3
        s[9 * (K / 32) + 1] = 0;    // row 9, group 1
      } else {
        s[3] = 0x7F;
        s[6 * (K / 16) + 2] = 0xFF;  // row 6, group 2
      }
      Array xf = small_ints({1, K}, Dtype::float32, seed++);
      if (dt == Dtype::float16)
        for (int k = 0; k < 64; ++k) xf.data<float>()[k] = k % 3 ? 4096.0f : -4096.0f;
      Array x = xf.astype(dt);
      const ref::Tensor r64 = ref::quantized_matmul(x, q.w, q.scales, q.biases, true, f.gs, f.bits, f.mode);
      const ref::Tensor r =
          ref::to_tensor(Array::from_vector(std::vector<float>(r64.v.begin(), r64.v.end()), r64.shape).astype(dt));
      Array yc = quantized_matmul(x, q.w, q.scales, q.biases, true, f.gs, f.bits, f.mode);
      Array y = quantized_matmul(gpu(x), gpu(q.w), gpu(q.scales), std::nullopt, true, f.gs, f.bits, f.mode);
      EXPECT_TRUE(all_close(y, r, rtol_for(dt), 0.0));
      EXPECT_TRUE(all_close(yc, r, rtol_for(dt), 0.0)) << "cpu";
    }
}

fmt::Mode mode_of(const Fmt& f) {
  const std::string m = f.mode;
  return m == "affine" ? fmt::Mode::affine
         : m == "mxfp4" ? fmt::Mode::mxfp4
         : m == "nvfp4" ? fmt::Mode::nvfp4
                        : fmt::Mode::mxfp8;
}

/// A quantized_matmul descriptor as the front end builds it (for registry selection).
detail::QmmDesc matmul_desc(const Fmt& f, Dtype dt, int64_t M, int64_t N, int64_t K) {
  detail::QmmDesc d;
  d.op = "quantized_matmul";
  d.format = {mode_of(f), f.bits, f.gs};
  d.dtype = dt;
  d.transpose = true;
  d.M = M;
  d.N = N;
  d.K = K;
  return d;
}

TEST(CudaCross, QmmExactOneRowGemv8Bit) {
  MMKIT_REQUIRE_GPU();
  // cuda_qmv1_mma on 8-bit codes (64-code chunks): affine (each byte as a low
  // and a high nibble pair; exact_quantized draws all 256 codes) and mxfp8
  // (E4M3 pairs by the hardware conversion), every group size and row count
  // the kernel is built for (M <= gs / 16, 8 at group size 128), K from one
  // chunk to split ranges and partial last chunks (K % 64 == 32 at group
  // size 32), odd group counts, N around the tiles, both half dtypes, one and
  // two tiles per warp, x staged and (M * K > 16384) read from global memory.
  // Bit-exact against the CPU (exact sums).
  auto& reg = detail::registries();
  uint64_t seed = 9100;
  for (const Fmt& f : {Fmt{"affine", 8, 32}, Fmt{"affine", 8, 64}, Fmt{"affine", 8, 128}, Fmt{"mxfp8", 8, 32}})
    for (Dtype dt : {Dtype::bfloat16, Dtype::float16}) {
      const int gs = f.gs;
      for (int64_t K : {32, 64, 96, 128, 384, 1152, 2880, 8832}) {
        if (K % gs) continue;
        for (int64_t N : {1, 33, 96}) check_exact_qmm({f, dt, true, 1, N, K}, seed++);
        for (int64_t M : {2, 3, 4, 8})
          if (M <= (gs == 128 ? 8 : gs / 16)) check_exact_qmm({f, dt, true, M, 33, K}, seed++);
      }
      check_exact_qmm({f, dt, true, 1, 33, 24704 / gs * gs}, seed++);
      if (gs == 32) check_exact_qmm({f, dt, true, 2, 33, 8800}, seed++);  // (from global memory, a partial chunk)
      {
        const ScopedEnv env("MMKIT_QMV1_TILES", "2");
        for (int64_t N : {17, 32, 33, 130})
          for (int64_t K : {128, 1152, 2880}) {
            if (K % gs) continue;
            check_exact_qmm({f, dt, true, 1, N, K}, seed++);
            if (N % 2) check_exact_qmm({f, dt, true, 2, N, K}, seed++);
          }
      }
      EXPECT_EQ(reg.qmm.select(matmul_desc(f, dt, 1, 4096, 4096), Device::Type::gpu).name, "cuda_qmv1_mma") << gs;
    }
  // A batch of one-row entries (gather_qmm per entry, decode), indices on the device.
  for (const Fmt& f : {Fmt{"affine", 8, 32}, Fmt{"affine", 8, 128}, Fmt{"mxfp8", 8, 32}}) {
    const int64_t E = 5, N = 40, K = 1152;
    QW q = exact_quantized(f, E * N, K, Dtype::bfloat16, seed++);
    Array w = q.w.reshape({E, N, K / 4}), sc = q.scales.reshape({E, N, K / f.gs});
    std::optional<Array> bi;
    if (q.biases) bi = q.biases->reshape({E, N, K / f.gs});
    Array x = small_ints({3, 1, K}, Dtype::bfloat16, seed++);
    Array lhs = Array::from_vector(std::vector<int64_t>{2, 0, 1, 2}, {4});
    Array rhs = Array::from_vector(std::vector<int64_t>{4, 1, 1, 0}, {4});
    Array yc = gather_qmm(x, w, sc, bi, lhs, rhs, true, f.gs, f.bits, f.mode);
    Array yg = gather_qmm(gpu(x), gpu(w), gpu(sc), opt_gpu(bi), gpu(lhs), gpu(rhs), true, f.gs, f.bits, f.mode);
    EXPECT_TRUE(bit_equal(yg, yc)) << name(f, Dtype::bfloat16);
  }
  // mxfp8: every E4M3 byte, subnormals, +-0 and 0x7F / 0xFF included (they
  // decode to +-480 (SPEC) where the hardware conversion gives NaN: those
  // groups take the element-wise path). Row r draws its bytes from exponents
  // r % 13 .. r % 13 + 3 (every byte is in some row), so its sums stay exact
  // in float32; bit-exact against the CPU.
  for (Dtype dt : {Dtype::bfloat16, Dtype::float16})
    for (int64_t M : {1, 2}) {
      const Fmt f{"mxfp8", 8, 32};
      const int64_t N = 52, K = 1024;
      QW q = exact_quantized(f, N, K, dt, seed++);
      std::mt19937_64 g(seed++);
      uint8_t* wb = reinterpret_cast<uint8_t*>(q.w.data<uint32_t>());
      for (int64_t r = 0; r < N; ++r)
        for (int64_t k = 0; k < K; ++k) {
          const uint32_t e = static_cast<uint32_t>(r % 13) + static_cast<uint32_t>(g() % 4);
          wb[r * K + k] = static_cast<uint8_t>(((g() % 2) << 7) | (e << 3) | (k < 16 ? k % 8 : g() % 8));
        }
      Array x = small_ints({M, K}, dt, seed++);
      Array yc = quantized_matmul(x, q.w, q.scales, std::nullopt, true, f.gs, f.bits, f.mode);
      Array y = quantized_matmul(gpu(x), gpu(q.w), gpu(q.scales), std::nullopt, true, f.gs, f.bits, f.mode);
      EXPECT_TRUE(bit_equal(y, yc)) << dtype_name(dt) << " M=" << M;
    }
}

TEST(CudaCross, QmmExactOneRowGemv2Bit) {
  MMKIT_REQUIRE_GPU();
  // cuda_qmv1_mma on 2-bit affine codes (crumb pairs, 256-code chunks, a
  // lane's slice of 64 codes spanning two groups at group size 32): every
  // group size and row count the kernel is built for (M <= gs / 32), K from
  // one slice to split ranges and partial last chunks (K % 256 != 0), odd
  // group counts, N around the tiles, both half dtypes, one and two tiles
  // per warp, x staged and (M * K > 16384) read from global memory; K % 64
  // != 0 stays on the SIMT GEMV. Bit-exact against the CPU.
  auto& reg = detail::registries();
  uint64_t seed = 9300;
  for (int gs : {32, 64, 128})
    for (Dtype dt : {Dtype::bfloat16, Dtype::float16}) {
      const Fmt f{"affine", 2, gs};
      for (int64_t K : {64, 128, 192, 256, 384, 1152, 2880, 8832}) {
        if (K % gs) continue;
        for (int64_t N : {1, 33, 96}) check_exact_qmm({f, dt, true, 1, N, K}, seed++);
        for (int64_t M : {2, 3, 4})
          if (M <= gs / 32) check_exact_qmm({f, dt, true, M, 33, K}, seed++);
      }
      check_exact_qmm({f, dt, true, 1, 33, 24704}, seed++);
      if (gs == 128) check_exact_qmm({f, dt, true, 4, 33, 8832}, seed++);  // (from global memory)
      {
        const ScopedEnv env("MMKIT_QMV1_TILES", "2");
        for (int64_t N : {17, 32, 33, 130})
          for (int64_t K : {256, 1152, 2880}) {
            if (K % gs) continue;
            check_exact_qmm({f, dt, true, 1, N, K}, seed++);
            if (N % 2 && gs >= 64) check_exact_qmm({f, dt, true, 2, N, K}, seed++);
          }
      }
      EXPECT_EQ(reg.qmm.select(matmul_desc(f, dt, 1, 4096, 4096), Device::Type::gpu).name, "cuda_qmv1_mma") << gs;
      if (gs == 32) {
        EXPECT_EQ(reg.qmm.select(matmul_desc(f, dt, 1, 4096, 96), Device::Type::gpu).name, "cuda_qmv");
        check_exact_qmm({f, dt, true, 1, 33, 96}, seed++);
      }
    }
  // A batch of one-row entries (gather_qmm per entry, decode).
  const Fmt f{"affine", 2, 64};
  const int64_t E = 5, N = 40, K = 1152;
  QW q = exact_quantized(f, E * N, K, Dtype::float16, seed++);
  Array w = q.w.reshape({E, N, K / 16}), sc = q.scales.reshape({E, N, K / f.gs}), bi = q.biases->reshape({E, N, K / f.gs});
  Array x = small_ints({3, 1, K}, Dtype::float16, seed++);
  Array lhs = Array::from_vector(std::vector<int64_t>{2, 0, 1, 2}, {4});
  Array rhs = Array::from_vector(std::vector<int64_t>{4, 1, 1, 0}, {4});
  Array yc = gather_qmm(x, w, sc, bi, lhs, rhs, true, f.gs, f.bits, f.mode);
  Array yg = gather_qmm(gpu(x), gpu(w), gpu(sc), gpu(bi), gpu(lhs), gpu(rhs), true, f.gs, f.bits, f.mode);
  EXPECT_TRUE(bit_equal(yg, yc));
}

TEST(CudaCross, QmmExactOneRowGemv3And6Bit) {
  MMKIT_REQUIRE_GPU();
  // cuda_qmv1_mma on 3- and 6-bit affine codes (tri_pair: 3-bit fields from
  // 96-bit packs by funnel shifts, chunks of 192 bytes, a lane's slice of 4
  // packs spanning two groups at 3-bit g64 and 6-bit g32, the weighted sums
  // of x): every group size and row count the kernel is built for (M <= gs /
  // 64 at 3 bits, gs / 32 at 6), K from one slice to split ranges and partial
  // last chunks (K % 512 / 256 != 0), odd group counts, N around the tiles,
  // both half dtypes, one and two tiles per warp, x staged and (M * K >
  // 16384) read from global memory; K % 128 (3-bit) or % 64 (6-bit) != 0
  // and 3-bit g32 stay on the SIMT GEMV.
  // Bit-exact against the CPU.
  auto& reg = detail::registries();
  uint64_t seed = 9600;
  for (int bits : {3, 6})
    for (int gs : {32, 64, 128})
      for (Dtype dt : {Dtype::bfloat16, Dtype::float16}) {
        SCOPED_TRACE("bits " + std::to_string(bits) + " gs " + std::to_string(gs));
        const Fmt f{"affine", bits, gs};
        const int64_t slice = bits == 3 ? 128 : 64, max_m = bits == 3 ? gs / 64 : gs / 32;
        if (max_m == 0) {
          EXPECT_EQ(reg.qmm.select(matmul_desc(f, dt, 1, 4096, 4096), Device::Type::gpu).name, "cuda_qmv");
          check_exact_qmm({f, dt, true, 1, 33, 4096}, seed++);
          continue;
        }
        for (int64_t K : {64, 128, 256, 384, 640, 1152, 2944, 8832}) {
          if (K % gs || K % slice) continue;
          for (int64_t N : {1, 17, 33, 96}) check_exact_qmm({f, dt, true, 1, N, K}, seed++);
          for (int64_t M = 2; M <= max_m; ++M) check_exact_qmm({f, dt, true, M, 33, K}, seed++);
        }
        check_exact_qmm({f, dt, true, 1, 33, 24704}, seed++);  // (a partial last chunk)
        if (max_m >= 2) check_exact_qmm({f, dt, true, max_m, 33, 8832}, seed++);  // (from global memory)
        {
          const ScopedEnv env("MMKIT_QMV1_TILES", "2");  // (two 16-row tiles per warp, one row)
          for (int64_t N : {17, 33, 130})
            for (int64_t K : {1152, 2944, 24704}) check_exact_qmm({f, dt, true, 1, N, K}, seed++);
        }
        EXPECT_EQ(reg.qmm.select(matmul_desc(f, dt, 1, 4096, 4096), Device::Type::gpu).name, "cuda_qmv1_mma");
        const int64_t odd_k = slice + slice / 2;  // (K % slice != 0: the SIMT GEMV)
        if (odd_k % gs == 0) {
          EXPECT_EQ(reg.qmm.select(matmul_desc(f, dt, 1, 4096, odd_k), Device::Type::gpu).name, "cuda_qmv");
          check_exact_qmm({f, dt, true, 1, 33, odd_k}, seed++);
        }
      }
  // Batches of one-row entries (gather_qmm per entry, decode).
  for (int bits : {3, 6}) {
    const Fmt f{"affine", bits, 64};
    const int64_t E = 5, N = 40, K = 1152;
    QW q = exact_quantized(f, E * N, K, Dtype::float16, seed++);
    Array w = q.w.reshape({E, N, K * bits / 32}), sc = q.scales.reshape({E, N, K / f.gs}),
          bi = q.biases->reshape({E, N, K / f.gs});
    Array x = small_ints({3, 1, K}, Dtype::float16, seed++);
    Array lhs = Array::from_vector(std::vector<int64_t>{2, 0, 1, 2}, {4});
    Array rhs = Array::from_vector(std::vector<int64_t>{4, 1, 1, 0}, {4});
    Array yc = gather_qmm(x, w, sc, bi, lhs, rhs, true, f.gs, f.bits, f.mode);
    Array yg = gather_qmm(gpu(x), gpu(w), gpu(sc), gpu(bi), gpu(lhs), gpu(rhs), true, f.gs, f.bits, f.mode);
    EXPECT_TRUE(bit_equal(yg, yc)) << bits;
  }
}

TEST(CudaCross, QmmNonFiniteActivationsPropagateLikeTheReference) {
  MMKIT_REQUIRE_GPU();
  // Inf / NaN in x: every GPU path must give the reference's NaN or +-Inf per
  // element (the tensor-core kernels recompute such groups element by
  // element). Exactly representable weights, some of them exactly 0, so
  // float32 and the float64 reference agree on which products are Inf * 0.
  const float inf = std::numeric_limits<float>::infinity();
  uint64_t seed = 40;
  for (const Fmt& f :
       {Fmt{"affine", 4, 64}, Fmt{"affine", 3, 32}, Fmt{"affine", 3, 64}, Fmt{"affine", 6, 32}, Fmt{"affine", 8, 64},
        Fmt{"affine", 2, 64}, Fmt{"mxfp4", 4, 32},
        Fmt{"nvfp4", 4, 16}, Fmt{"mxfp8", 8, 32}})
    for (Dtype dt : {Dtype::bfloat16, Dtype::float16, Dtype::float32})
      for (int64_t M : {1, 2, 3, 5, 20, 40}) {
        SCOPED_TRACE(name(f, dt) + " M=" + std::to_string(M));
        const int64_t N = 24, K = 256;
        QW q = exact_quantized(f, N, K, dt, seed++);
        Array xf = small_ints({M, K}, Dtype::float32, seed++);
        xf.data<float>()[0 * K + 3] = inf;
        xf.data<float>()[(M - 1) * K + 100] = -inf;
        if (M > 2) xf.data<float>()[1 * K + 7] = std::numeric_limits<float>::quiet_NaN();
        Array x = xf.astype(dt);
        ref::Tensor r = ref::quantized_matmul(x, q.w, q.scales, q.biases, true, f.gs, f.bits, f.mode);
        Array y = quantized_matmul(gpu(x), gpu(q.w), gpu(q.scales), opt_gpu(q.biases), true, f.gs, f.bits, f.mode);
        EXPECT_TRUE(all_close(y, r, rtol_for(dt), 0.0));  // exact sums, one rounding to T
      }
}

TEST(CudaCross, QmmRandomShapesWithinTolerance) {
  MMKIT_REQUIRE_GPU();
  std::mt19937_64 g(42);
  const auto fmts = all_formats();
  for (int it = 0; it < 48; ++it) {
    const Fmt f = fmts[g() % fmts.size()];
    const Dtype dt = kFloats[g() % 3];
    const bool t = g() % 4 != 0;
    const int64_t Ms[] = {1, 2, 3, 4, 6, 8, 9, 16, 33, 100, 257};
    const int64_t M = Ms[g() % 11];
    const int64_t K = t ? f.gs * (1 + g() % 12) : 1 + g() % 300;
    const int64_t N = t ? 1 + g() % 200 : f.gs * (1 + g() % 6);
    QmmCase c{f, dt, t, M, N, K};
    SCOPED_TRACE(describe(c));
    Array wf = randn(t ? Shape{N, K} : Shape{K, N}, Dtype::float32, 7000 + it, 1.0).astype(dt);
    auto q = quantize(wf, f.gs, f.bits, f.mode);
    std::optional<Array> b;
    if (f.affine()) b = q[2];
    Array x = randn({M, K}, Dtype::float32, 9000 + it, 1.0 / std::sqrt(static_cast<double>(K))).astype(dt);
    ref::Tensor r = ref::quantized_matmul(x, q[0], q[1], b, t, f.gs, f.bits, f.mode);
    ASSERT_GT(r.max_abs(), 0.0);
    Array yg = quantized_matmul(gpu(x), gpu(q[0]), gpu(q[1]), opt_gpu(b), t, f.gs, f.bits, f.mode);
    EXPECT_TRUE(all_close(yg, r, rtol_for(yg.dtype()), 2e-5 * r.max_abs())) << "gpu";
    Array yc = quantized_matmul(x, q[0], q[1], b, t, f.gs, f.bits, f.mode);
    EXPECT_TRUE(all_close(yc, r, rtol_for(yc.dtype()), 2e-5 * r.max_abs())) << "cpu";
  }
}

TEST(CudaCross, GatherQmmHostAndDeviceIndices) {
  MMKIT_REQUIRE_GPU();
  uint64_t seed = 300;
  for (const Fmt& f : {Fmt{"affine", 4, 64}, Fmt{"mxfp4", 4, 32}, Fmt{"nvfp4", 4, 16}, Fmt{"affine", 6, 32}})
    for (Dtype dt : kFloats)
      for (int64_t M : {1, 4, 20}) {
        SCOPED_TRACE(name(f, dt) + " M=" + std::to_string(M));
        const int64_t E = 5, Bx = 3, N = 40, K = 2 * f.gs * 2;
        QW q = exact_quantized(f, E * N, K, dt, seed++);
        Array w = q.w.reshape({E, N, q.w.shape(-1)});
        Array s = q.scales.reshape({E, N, q.scales.shape(-1)});
        std::optional<Array> b;
        if (q.biases) b = q.biases->reshape({E, N, q.biases->shape(-1)});
        Array x = small_ints({Bx, M, K}, dt, seed++);
        Array lhs = Array::from_vector(std::vector<int32_t>{2, 0, 1, 1, 2, 0, 0}, {7});
        Array rhs = Array::from_vector(std::vector<int32_t>{4, 4, 0, 3, 1, 2, 0}, {7});
        Array yc = gather_qmm(x, w, s, b, lhs, rhs, true, f.gs, f.bits, f.mode);
        Array yh = gather_qmm(gpu(x), gpu(w), gpu(s), opt_gpu(b), lhs, rhs, true, f.gs, f.bits, f.mode);
        Array yd = gather_qmm(gpu(x), gpu(w), gpu(s), opt_gpu(b), gpu(lhs), gpu(rhs), true, f.gs, f.bits, f.mode);
        EXPECT_TRUE(bit_equal(yh, yc)) << "host indices";
        EXPECT_TRUE(bit_equal(yd, yc)) << "device indices";
        // Sorted rhs only (the sorted_indices hint).
        Array rs = Array::from_vector(std::vector<int64_t>{0, 0, 1, 3, 3, 4}, {6});
        Array x6 = small_ints({6, M, K}, dt, seed++);
        Array zc = gather_qmm(x6, w, s, b, std::nullopt, rs, true, f.gs, f.bits, f.mode, true);
        Array zg = gather_qmm(gpu(x6), gpu(w), gpu(s), opt_gpu(b), std::nullopt, gpu(rs), true, f.gs, f.bits, f.mode,
                              true);
        EXPECT_TRUE(bit_equal(zg, zc)) << "sorted rhs";
      }
}

TEST(CudaCross, GatherQmmGroupedByExpertOnTheDevice) {
  MMKIT_REQUIRE_GPU();
  // Many entries over few experts (the MoE case): the rows are grouped by
  // expert on the device (cuda_gather_grouped) and each item reads its
  // expert's weights once. Unsorted and sorted indices, host and device
  // indices, M = 1 and 3, item sizes 8 / 16 / 32 rows (from the average rows
  // per expert; grouped from 4 rows per expert), experts
  // with no rows, several items per expert. Bit-exact with the CPU on
  // exactly representable data.
  auto& reg = detail::registries();
  uint64_t seed = 9100;
  for (Dtype dt : {Dtype::bfloat16, Dtype::float16})
    for (int gs : {32, 64, 128})
      for (auto [E, L, M] : {std::tuple<int64_t, int64_t, int64_t>{8, 40, 1}, {6, 200, 1}, {16, 24, 3}, {3, 70, 3}}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " g" + std::to_string(gs) + " E=" + std::to_string(E) +
                     " L=" + std::to_string(L) + " M=" + std::to_string(M));
        const int64_t N = 48, K = 512, Bx = 5;
        QW q = exact_quantized({"affine", 4, gs}, E * N, K, dt, seed++);
        Array w = q.w.reshape({E, N, q.w.shape(-1)});
        Array s = q.scales.reshape({E, N, q.scales.shape(-1)});
        Array b = q.biases->reshape({E, N, q.biases->shape(-1)});
        Array x = small_ints({Bx, M, K}, dt, seed++);
        std::mt19937_64 g(seed++);
        std::vector<int64_t> li(static_cast<size_t>(L)), ri(static_cast<size_t>(L));
        for (int64_t l = 0; l < L; ++l) {
          li[l] = static_cast<int64_t>(g() % Bx);
          ri[l] = static_cast<int64_t>(g() % (E - 1));  // expert E - 1 gets no rows
        }
        Array lhs = Array::from_vector(li, {L}), rhs = Array::from_vector(ri, {L});
        {
          detail::QmmDesc d;
          d.format = {fmt::Mode::affine, 4, gs};
          d.M = M;
          d.N = N;
          d.K = K;
          d.batch = L;
          d.x_batch = Bx;
          d.w_batch = E;
          d.dtype = dt;
          ASSERT_EQ(reg.qmm.select(d, Device::Type::gpu).name, "cuda_gather_grouped");
        }
        Array yc = gather_qmm(x, w, s, b, lhs, rhs, true, gs, 4, "affine");
        Array yh = gather_qmm(gpu(x), gpu(w), gpu(s), gpu(b), lhs, rhs, true, gs, 4, "affine");
        Array yd = gather_qmm(gpu(x), gpu(w), gpu(s), gpu(b), gpu(lhs), gpu(rhs), true, gs, 4, "affine");
        EXPECT_TRUE(bit_equal(yh, yc)) << "host indices";
        EXPECT_TRUE(bit_equal(yd, yc)) << "device indices";
        // Sorted rhs (the sorted_indices hint), x indexed by entry.
        std::sort(ri.begin(), ri.end());
        Array rs = Array::from_vector(ri, {L});
        Array xl = small_ints({L, M, K}, dt, seed++);
        Array zc = gather_qmm(xl, w, s, b, std::nullopt, rs, true, gs, 4, "affine", true);
        Array zg = gather_qmm(gpu(xl), gpu(w), gpu(s), gpu(b), std::nullopt, gpu(rs), true, gs, 4, "affine", true);
        EXPECT_TRUE(bit_equal(zg, zc)) << "sorted rhs";
      }
}

/// A gather_qmm descriptor as the front end builds it (for registry selection).
detail::QmmDesc gather_desc(const Fmt& f, Dtype dt, int64_t M, int64_t N, int64_t K, int64_t L, int64_t Bx, int64_t E,
                            bool transpose = true) {
  detail::QmmDesc d = matmul_desc(f, dt, M, N, K);
  d.op = "gather_qmm";
  d.transpose = transpose;
  d.batch = L;
  d.x_batch = Bx;
  d.w_batch = E;
  return d;
}

/// y (L entries of M x N) equals good except entry `bad`, which is all zero;
/// good has some non-zero value (so the comparison can fail).
void expect_only_entry_zeroed(const Array& y, const Array& good, int64_t bad, int64_t L, int64_t M, int64_t N) {
  const auto v = y.to(Device::cpu()).astype(Dtype::float32).to_double_vector();
  const auto gv = good.to(Device::cpu()).astype(Dtype::float32).to_double_vector();
  ASSERT_EQ(v.size(), static_cast<size_t>(L * M * N));
  int64_t nonzero = 0;
  for (int64_t i = 0; i < L * M * N; ++i) {
    if (i / (M * N) == bad) EXPECT_EQ(v[i], 0.0) << i;
    else EXPECT_EQ(v[i], gv[i]) << i;
    nonzero += gv[i] != 0.0;
  }
  EXPECT_GT(nonzero, 0);
}

TEST(CudaCross, QmmExactOneRowGemvNarrowSplit) {
  MMKIT_REQUIRE_GPU();
  // Large one-row grids split K over fewer warps (narrow_split in
  // qmv1_mma.cu; the splits below are the ones a GPU of about 132 SMs gets):
  // a dense 8192 x 4096 GEMV (a split of 8 narrowed to 4, at most one block
  // per SM: the kernel with registers for one block), N not a multiple of the
  // block's 64 rows, 14336 x 4096 (narrowed to 2: 112 blocks), and a gather of 128 one-row entries over 33 experts of
  // 256 x 2048 (fewer than 4 rows per expert, so not grouped; narrowed to one
  // warp per K range, 8 tiles per block). Gathers whose narrowed two-tile
  // grid has more than 2 blocks per SM take one tile per warp and a split
  // narrowed for that when that grid has at most 4 blocks per SM: 4 entries of 5760 x 2880 mxfp4 (gpt-oss-120b's
  // gate+up at one token; K not a multiple of the 128-code chunk) and 32 of
  // 1536 x 2048 4-bit (Qwen3-30B-A3B's at four tokens).
  // Bit-exact with the CPU on exactly representable data.
  auto& reg = detail::registries();
  uint64_t seed = 8800;
  for (Dtype dt : {Dtype::bfloat16, Dtype::float16})
    for (int64_t N : {8192, 8232, 14336}) check_exact_qmm({{"affine", 4, 64}, dt, true, 1, N, 4096}, seed++);
  auto gather = [&](const Fmt& f, Dtype dt, int64_t E, int64_t L, int64_t N, int64_t K, int64_t Bx) {
    SCOPED_TRACE(name(f, dt) + " E=" + std::to_string(E) + " L=" + std::to_string(L) + " N=" + std::to_string(N) +
                 " K=" + std::to_string(K));
    ASSERT_EQ(reg.qmm.select(gather_desc(f, dt, 1, N, K, L, Bx, E), Device::Type::gpu).name, "cuda_qmv1_mma");
    QW q = exact_quantized(f, E * N, K, dt, seed++);
    Array w = q.w.reshape({E, N, q.w.shape(-1)});
    Array s = q.scales.reshape({E, N, q.scales.shape(-1)});
    std::optional<Array> b;
    if (q.biases) b = q.biases->reshape({E, N, q.biases->shape(-1)});
    Array x = small_ints({Bx, 1, K}, dt, seed++);
    std::mt19937_64 g(seed++);
    std::vector<int64_t> li(static_cast<size_t>(L)), ri(static_cast<size_t>(L));
    for (int64_t l = 0; l < L; ++l) {
      li[l] = static_cast<int64_t>(g() % Bx);
      ri[l] = static_cast<int64_t>(g() % E);
    }
    Array lhs = Array::from_vector(li, {L}), rhs = Array::from_vector(ri, {L});
    Array yc = gather_qmm(x, w, s, b, lhs, rhs, true, f.gs, f.bits, f.mode);
    Array yg = gather_qmm(gpu(x), gpu(w), gpu(s), opt_gpu(b), gpu(lhs), gpu(rhs), true, f.gs, f.bits, f.mode);
    EXPECT_TRUE(bit_equal(yg, yc));
  };
  for (Dtype dt : {Dtype::bfloat16, Dtype::float16}) {
    gather({"affine", 4, 64}, dt, 33, 128, 256, 2048, 16);
    gather({"mxfp4", 4, 32}, dt, 4, 4, 5760, 2880, 1);
    gather({"affine", 4, 64}, dt, 12, 32, 1536, 2048, 4);
  }
}

/// One gather_qmm whose entries share experts against the CPU, bit-exact on
/// exactly representable data: E experts with expert 1 unused, L entries of M
/// rows from Bx = 5 x matrices, unsorted rhs, host and device indices.
/// The quantized dimension (K, or N when !transpose) is 3 groups (6 for
/// nvfp4: a multiple of 32); the other one is 37, not a multiple of 8.
/// It runs grouped by expert (cuda_gather_grouped) from 4 rows per expert;
/// one-row entries below that run per entry on the tensor-core GEMV
/// (cuda_qmv1_mma).
void check_grouped_gather_qmm(const Fmt& f, Dtype dt, int64_t E, int64_t L, int64_t M, uint64_t& seed,
                              bool transpose = true) {
  auto& reg = detail::registries();
  const int64_t Q = f.gs * (f.gs == 16 ? 6 : 3), N = transpose ? 37 : Q, K = transpose ? Q : 37, Bx = 5;
  const int64_t R = transpose ? N : K;  // rows of one expert's packed weights
  SCOPED_TRACE(name(f, dt) + " E=" + std::to_string(E) + " L=" + std::to_string(L) + " M=" + std::to_string(M) +
               " N=" + std::to_string(N) + " K=" + std::to_string(K) + (transpose ? "" : " transpose=false"));
  // 4-bit affine entries below 4 rows per expert, and solo entries below
  // 12 (mxfp4, nvfp4, 2-bit affine), 9 (mxfp8), 7 (3-bit affine) or 5 (8-
  // and 6-bit affine) rows per expert, of up to gs / 16 rows (2- and 6-bit:
  // gs / 32, 3-bit: gs / 64; K % 64 == 0 at 2 and 6 bits, K % 128 == 0 at 3),
  // run per entry on the tensor-core GEMV (solo ones from there: grouped, on
  // the tiled kernel).
  const bool aff = std::string(f.mode) == "affine";
  const bool solo = !aff || f.bits != 4;
  const int64_t solo_from = aff && (f.bits == 8 || f.bits == 6) ? 5
                            : aff && f.bits == 3               ? 7
                            : std::string(f.mode) == "mxfp8"   ? 9
                                                               : 12;
  const int64_t rows_per_expert = (L * M + std::min(E, L) - 1) / std::min(E, L);
  const bool affine4 = aff && f.bits == 4;
  const int64_t k_multiple = f.bits == 2 || f.bits == 6 ? 64 : f.bits == 3 ? 128 : 32;
  const int64_t max_m = f.bits == 2 || f.bits == 6 ? f.gs / 32 : f.bits == 3 ? f.gs / 64 : f.gs == 128 ? 8 : f.gs / 16;
  const bool gemv = transpose && dt != Dtype::float32 && K % k_multiple == 0 && M <= max_m && f.bits != 5 &&
                    ((affine4 && L * M < 4 * E) || (solo && rows_per_expert < solo_from));
  ASSERT_EQ(reg.qmm.select(gather_desc(f, dt, M, N, K, L, Bx, E, transpose), Device::Type::gpu).name,
            gemv ? "cuda_qmv1_mma" : "cuda_gather_grouped");
  QW q = exact_quantized(f, E * R, Q, dt, seed++);
  Array w = q.w.reshape({E, R, q.w.shape(-1)});
  Array s = q.scales.reshape({E, R, q.scales.shape(-1)});
  std::optional<Array> b;
  if (q.biases) b = q.biases->reshape({E, R, q.biases->shape(-1)});
  Array x = small_ints({Bx, M, K}, dt, seed++);
  std::mt19937_64 g(seed++);
  std::vector<int64_t> li(static_cast<size_t>(L)), ri(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    li[l] = static_cast<int64_t>(g() % Bx);
    const int64_t e = static_cast<int64_t>(g() % (E - 1));
    ri[l] = e == 0 ? 0 : e + 1;  // expert 1 gets no rows
  }
  Array lhs = Array::from_vector(li, {L}), rhs = Array::from_vector(ri, {L});
  Array yc = gather_qmm(x, w, s, b, lhs, rhs, transpose, f.gs, f.bits, f.mode);
  const auto v = yc.astype(Dtype::float32).to_double_vector();
  ASSERT_TRUE(std::any_of(v.begin(), v.end(), [](double e) { return e != 0.0; }));
  Array yh = gather_qmm(gpu(x), gpu(w), gpu(s), opt_gpu(b), lhs, rhs, transpose, f.gs, f.bits, f.mode);
  Array yd =
      gather_qmm(gpu(x), gpu(w), gpu(s), opt_gpu(b), gpu(lhs), gpu(rhs), transpose, f.gs, f.bits, f.mode);
  EXPECT_TRUE(bit_equal(yh, yc)) << "host indices";
  EXPECT_TRUE(bit_equal(yd, yc)) << "device indices";
}

TEST(CudaCross, GatherQmmGroupedEveryFormat) {
  MMKIT_REQUIRE_GPU();
  // Every format and dtype through the grouped gather (cuda_gather_grouped):
  // 4-bit affine float16/bfloat16 with K % 128 == 0 run the tensor-core GEMV
  // per item, everything else the SIMT GEMV (qmv.cu) per item; items of 8 rows
  // (E = 3) and of 4 rows (E = 4, M = 1). (Solo float16/bfloat16 entries of
  // few rows run per entry instead: check_grouped_gather_qmm.)
  uint64_t seed = 9500;
  for (const Fmt& f : all_formats())
    for (Dtype dt : kFloats)
      for (auto [E, L, M] : {std::tuple<int64_t, int64_t, int64_t>{3, 16, 1}, {3, 16, 3}, {4, 16, 1}})
        check_grouped_gather_qmm(f, dt, E, L, M, seed);
}

TEST(CudaCross, FewRowGemvEveryTiling) {
  MMKIT_REQUIRE_GPU();
  // The few-row tensor-core GEMV (cuda_qmv_sm80_mma, and the grouped gather's
  // items) under each of its block tilings, forced with MMKIT_QMV_SM80_TILING
  // (defaults: 1x4 for quantized_matmul, 8x1 or 1x4 for grouped items by the
  // size of their x): M = 5 - 32 with N around the 16- and 128-row blocks,
  // grouped items of 8 / 16 / 32 rows with fewer than 128 rows per expert;
  // bit-exact with the CPU on exactly representable data.
  uint64_t seed = 9950;
  for (const char* t : {"1x4", "8x1", "2x4", "4x2"}) {
    SCOPED_TRACE(std::string("tiling ") + t);
    const ScopedEnv env("MMKIT_QMV_SM80_TILING", t);
    for (int64_t M : {5, 16, 32}) check_exact_qmm({{"affine", 4, 64}, Dtype::bfloat16, true, M, 200, 1152}, seed++);
    check_exact_qmm({{"affine", 4, 128}, Dtype::float16, true, 12, 130, 2048}, seed++);
    check_exact_qmm({{"affine", 4, 32}, Dtype::bfloat16, true, 9, 16, 128}, seed++);
    for (auto [E, L, M] : {std::tuple<int64_t, int64_t, int64_t>{4, 16, 1}, {3, 16, 3}, {3, 40, 3}})
      check_grouped_gather_qmm({"affine", 4, 128}, Dtype::bfloat16, E, L, M, seed);
  }
}

/// The many-row 4-bit kernels' cases (cuda_qmm_w4_mma, and the grouped
/// gather from 64 rows per expert) under whatever tile the environment forces:
/// M and N around the 64 / 128 / 256-row tiles, K of 1 - 9 k-tiles of 128,
/// every group size, both half types, batch entries sharing weights, codes at
/// 4 / 8-byte offsets, Inf / NaN in x, and grouped gathers with unsorted
/// device indices; bit-exact with the CPU on exactly representable data (the
/// non-finite case: the reference's NaN / Inf pattern).
void check_many_row_qmm(uint64_t& seed) {
  auto& reg = detail::registries();
  for (int gs : {32, 64, 128})
    for (Dtype dt : {Dtype::bfloat16, Dtype::float16})
      for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{33, 16, 128}, {64, 130, 384}, {100, 64, 1152},
                             {129, 200, 256}, {300, 72, 512}}) {
        ASSERT_EQ(reg.qmm.select(gather_desc({"affine", 4, gs}, dt, M, N, K, 1, 1, 1), Device::Type::gpu).name,
                  "cuda_qmm_w4_mma");
        check_exact_qmm({{"affine", 4, gs}, dt, true, M, N, K}, seed++);
      }
  // Batch entries: x (3, 70, K) against w (2, 1, N, K) broadcast to (2, 3, ...).
  {
    const int64_t M = 70, N = 96, K = 256;
    QW q = exact_quantized({"affine", 4, 64}, 2 * N, K, Dtype::bfloat16, seed++);
    Array w = q.w.reshape({2, 1, N, q.w.shape(-1)}), s = q.scales.reshape({2, 1, N, K / 64});
    Array b = q.biases->reshape({2, 1, N, K / 64});
    Array x = small_ints({3, M, K}, Dtype::bfloat16, seed++);
    Array yc = quantized_matmul(x, w, s, b, true, 64, 4, "affine");
    Array yg = quantized_matmul(gpu(x), gpu(w), gpu(s), gpu(b), true, 64, 4, "affine");
    EXPECT_TRUE(bit_equal(yg, yc)) << "batched";
  }
  // Packed weights viewed at a 4-byte and an 8-byte offset (not 16-byte
  // aligned: the call goes to a kernel without 16-byte code copies).
  for (int64_t off : {1, 2}) {
    const int64_t M = 40, N = 24, K = 256, words = K / 8;
    QW q = exact_quantized({"affine", 4, 64}, N, K, Dtype::bfloat16, seed++);
    Array flat = Array::zeros({N * words + off}, Dtype::uint32);
    std::memcpy(flat.data<uint32_t>() + off, q.w.data<uint32_t>(), static_cast<size_t>(N * words) * 4);
    Array wv = gpu(flat).slice(0, off, N * words + off).reshape({N, words});
    Array x = small_ints({M, K}, Dtype::bfloat16, seed++);
    Array yc = quantized_matmul(x, q.w, q.scales, q.biases, true, 64, 4, "affine");
    Array yg = quantized_matmul(gpu(x), wv, gpu(q.scales), opt_gpu(q.biases), true, 64, 4, "affine");
    EXPECT_TRUE(bit_equal(yg, yc)) << "weights at a " << 4 * off << "-byte offset";
  }
  // Non-finite x.
  {
    const float inf = std::numeric_limits<float>::infinity();
    const int64_t M = 90, N = 40, K = 384;
    QW q = exact_quantized({"affine", 4, 128}, N, K, Dtype::float16, seed++);
    Array xf = small_ints({M, K}, Dtype::float32, seed++);
    xf.data<float>()[5 * K + 3] = inf;
    xf.data<float>()[77 * K + 300] = -inf;
    xf.data<float>()[40 * K + 129] = std::numeric_limits<float>::quiet_NaN();
    Array x = xf.astype(Dtype::float16);
    ref::Tensor r = ref::quantized_matmul(x, q.w, q.scales, q.biases, true, 128, 4, "affine");
    Array y = quantized_matmul(gpu(x), gpu(q.w), gpu(q.scales), opt_gpu(q.biases), true, 128, 4, "affine");
    EXPECT_TRUE(all_close(y, r, rtol_for(Dtype::float16), 0.0)) << "non-finite x";
  }
  // Grouped gathers: 3 experts (one without rows) at >= 64 rows per expert.
  for (int gs : {32, 64, 128})
    for (auto [L, M] : {std::tuple<int64_t, int64_t>{200, 1}, {9, 40}, {4, 150}}) {
      SCOPED_TRACE("grouped g" + std::to_string(gs) + " L=" + std::to_string(L) + " M=" + std::to_string(M));
      const int64_t E = 3, N = 136, K = 256, Bx = 4;
      const Dtype dt = gs == 64 ? Dtype::float16 : Dtype::bfloat16;
      QW q = exact_quantized({"affine", 4, gs}, E * N, K, dt, seed++);
      Array w = q.w.reshape({E, N, q.w.shape(-1)});
      Array s = q.scales.reshape({E, N, K / gs});
      Array b = q.biases->reshape({E, N, K / gs});
      Array x = small_ints({Bx, M, K}, dt, seed++);
      std::mt19937_64 g(seed++);
      std::vector<int64_t> li(static_cast<size_t>(L)), ri(static_cast<size_t>(L));
      for (int64_t l = 0; l < L; ++l) {
        li[l] = static_cast<int64_t>(g() % Bx);
        ri[l] = g() % 2 ? 2 : 0;  // expert 1 gets no rows
      }
      Array lhs = Array::from_vector(li, {L}), rhs = Array::from_vector(ri, {L});
      ASSERT_EQ(reg.qmm.select(gather_desc({"affine", 4, gs}, dt, M, N, K, L, Bx, E), Device::Type::gpu).name,
                "cuda_gather_grouped");  // (from 64 rows per expert: L * M / 3 >= 66 here)
      Array yc = gather_qmm(x, w, s, b, lhs, rhs, true, gs, 4, "affine");
      Array yd = gather_qmm(gpu(x), gpu(w), gpu(s), gpu(b), gpu(lhs), gpu(rhs), true, gs, 4, "affine");
      EXPECT_TRUE(bit_equal(yd, yc));
    }
}

#ifdef MMKIT_WITH_CUDA
/// Whether the current device is sm_90 (where cuda_qmm_w4_mma runs the
/// warpgroup-MMA kernel, qmm_wg.cu, unless MMKIT_QMM_WG=0).
bool device_is_sm90() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major == 9 && minor == 0;
}
#else
bool device_is_sm90() { return false; }
#endif

TEST(CudaCross, ManyRowQmmEveryTile) {
  MMKIT_REQUIRE_GPU();
  // The mma.sync kernel (qmm_w4.cu; on sm_90 only with MMKIT_QMM_WG=0) under
  // each of its block tiles, forced with MMKIT_QMM_W4_TILE (defaults: the
  // largest of large / mid / small that makes about one wave of blocks;
  // large2 for grouped items).
  const ScopedEnv off("MMKIT_QMM_WG", "0");
  uint64_t seed = 9970;
  for (const char* t : {"large", "large2", "mid", "small"}) {
    SCOPED_TRACE(std::string("tile ") + t);
    const ScopedEnv env("MMKIT_QMM_W4_TILE", t);
    check_many_row_qmm(seed);
  }
}

TEST(CudaCross, ManyRowQmmWarpgroupEveryTile) {
  MMKIT_REQUIRE_GPU();
  if (!device_is_sm90()) GTEST_SKIP() << "the warpgroup-MMA kernel (qmm_wg.cu) runs on sm_90 devices only";
  // The warpgroup-MMA kernel (the default on sm_90) under each of its tiles,
  // forced with MMKIT_QMM_WG_TILE (dense: big 128 x 256, mid 128 x 128,
  // small 64 x 128, tiny 64 x 64; grouped items: tiny, or g128 128 x 64), in
  // both variants: exact (MMKIT_QMM_WG unset or 1) and MLX's numerics (mlx).
  uint64_t seed = 19970;
  for (const char* mode : {"1", "mlx"}) {
    const ScopedEnv on("MMKIT_QMM_WG", mode);
    for (const char* t : {"big", "mid", "small", "tiny", "g128"}) {
      SCOPED_TRACE(std::string("MMKIT_QMM_WG=") + mode + ", tile " + t);
      const ScopedEnv env("MMKIT_QMM_WG_TILE", t);
      check_many_row_qmm(seed);
    }
  }
  // Data that is not exactly representable, against the float64 reference.
  // Exact: within the tolerance every path meets (no weight is rounded). MLX
  // variant: the weights are dequantized to T (one rounding, like MLX's GPU
  // kernels): within that rounding over K terms, and (which shows that this
  // variant ran) outside the exact tolerance somewhere.
  // (Tiles big and small: the exact variant's split and fold forms.)
  for (const char* mode : {"1", "mlx"})
    for (const char* tile : {"big", "small"})
      for (Dtype dt : {Dtype::bfloat16, Dtype::float16})
        for (int gs : {32, 64, 128}) {
          const ScopedEnv on("MMKIT_QMM_WG", mode), env("MMKIT_QMM_WG_TILE", tile);
          SCOPED_TRACE(std::string("MMKIT_QMM_WG=") + mode + ", tile " + tile + ", random data, g" +
                       std::to_string(gs));
          const int64_t M = 300, N = 264, K = 1024;
          const std::vector<Array> q = quantize(randn({N, K}, dt, seed++), gs, 4, "affine");
          Array x = randn({M, K}, dt, seed++);
          ref::Tensor r = ref::quantized_matmul(x, q[0], q[1], q[2], true, gs, 4, "affine");
          Array y = quantized_matmul(gpu(x), gpu(q[0]), gpu(q[1]), gpu(q[2]), true, gs, 4, "affine");
          const bool exact_ok = static_cast<bool>(all_close(y, r, rtol_for(dt), 2e-5 * r.max_abs()));
          if (std::string(mode) == "1") {
            EXPECT_TRUE(all_close(y, r, rtol_for(dt), 2e-5 * r.max_abs()));
          } else {
            // (Absolute tolerance: the weights' rounding over K terms of unit
            // size, about 7 standard deviations.)
            EXPECT_TRUE(all_close(y, r, rtol_for(dt), rtol_for(dt) * std::sqrt(static_cast<double>(K))));
            EXPECT_FALSE(exact_ok) << "the MLX variant's weight rounding should show";
          }
        }
  // Exact variant, inputs that overflow its float16 intermediates while the
  // results stay finite: (a) scales near 65504 / 8, so s * q overflows but
  // s * q + b does not; (b) group sums of x beyond 65504. The sums that end
  // up not finite are recomputed element by element.
  for (const char* tile : {"big", "tiny"})
    for (int part : {0, 1}) {
      const ScopedEnv env("MMKIT_QMM_WG_TILE", tile);
      SCOPED_TRACE(std::string(part == 0 ? "s * q overflows float16" : "sum(x) overflows float16") + ", tile " + tile);
      const int64_t M = 70, N = 64, K = 256;
      Array wf = part == 0 ? Array::zeros({N, K}, Dtype::float32) : randn({N, K}, Dtype::float32, seed++, 1e-3);
      Array xf = Array::zeros({M, K}, Dtype::float32);
      for (int64_t i = 0; i < N * K && part == 0; ++i)
        wf.data<float>()[i] = (i % 7 == 0) ? 60000.0f : -60000.0f + 1000.0f * static_cast<float>(i % 5);
      for (int64_t i = 0; i < M * K; ++i)
        xf.data<float>()[i] = part == 0 ? ((i % 3 == 0) ? 1.0f / 1024 : -1.0f / 512) : ((i % 2 == 0) ? 4096.0f : 1.0f);
      const std::vector<Array> q = quantize(wf.astype(Dtype::float16), 64, 4, "affine");
      Array x = xf.astype(Dtype::float16);
      ref::Tensor r = ref::quantized_matmul(x, q[0], q[1], q[2], true, 64, 4, "affine");
      Array y = quantized_matmul(gpu(x), gpu(q[0]), gpu(q[1]), gpu(q[2]), true, 64, 4, "affine");
      EXPECT_TRUE(all_close(y, r, rtol_for(Dtype::float16), 2e-5 * r.max_abs()));
    }
}

TEST(CudaCross, GatherQmmGroupedGenericTile) {
  MMKIT_REQUIRE_GPU();
  // What the fast grouped kernels leave: float32 beyond 8 rows per entry and
  // transpose=false (w (K, N)), on the generic kernel per 64-row item.
  uint64_t seed = 9650;
  for (const Fmt& f : all_formats()) {
    check_grouped_gather_qmm(f, Dtype::float32, 3, 4, 70, seed);
    check_grouped_gather_qmm(f, Dtype::bfloat16, 3, 16, 1, seed, false);
    check_grouped_gather_qmm(f, Dtype::float16, 3, 8, 12, seed, false);
  }
}

TEST(CudaCross, GatherQmmGroupedTiledEveryFormat) {
  MMKIT_REQUIRE_GPU();
  // More than 8 rows per entry, float16/bfloat16: the tiled tensor-core kernel
  // (qmm_sm80.cu) per item of one 64-row tile (4-bit affine up to 32 rows:
  // the tensor-core GEMV); M = 12 (items mixing entries) and M = 70 (an
  // entry's rows over two items).
  // Solo one-row entries (mxfp4, nvfp4, 8-, 6-, 3- and 2-bit affine, mxfp8)
  // from 12 / 12 / 5 / 5 / 7 / 12 / 9 rows per expert take it too (E = 3, L = 100).
  uint64_t seed = 9600;
  for (const Fmt& f : all_formats())
    for (Dtype dt : {Dtype::float16, Dtype::bfloat16}) {
      for (auto [E, L, M] : {std::tuple<int64_t, int64_t, int64_t>{3, 8, 12}, {3, 4, 70}})
        check_grouped_gather_qmm(f, dt, E, L, M, seed);
      if (!f.affine() || (f.bits != 4 && f.bits != 5)) check_grouped_gather_qmm(f, dt, 3, 100, 1, seed);
    }
}

TEST(CudaCross, GatherQmmGroupedSimtReportsABadDeviceIndexAndZerosOnlyItsEntry) {
  MMKIT_REQUIRE_GPU();
  // The grouped gather on the SIMT GEMV (not 4-bit affine, M = 3) and on the
  // tiled tensor-core kernel (M = 12, half dtypes): an out-of-range device rhs
  // index is reported by the plan kernel at the next synchronizing call, and
  // only that entry's rows are zero.
  auto& reg = detail::registries();
  uint64_t seed = 9900;
  for (const Fmt& f : {Fmt{"affine", 3, 32}, Fmt{"mxfp8", 8, 32}})
    for (Dtype dt : kFloats)
      for (int64_t M : {3, 12}) {
        if (M > 8 && dt == Dtype::float32) continue;  // (float32 beyond 8 rows is not grouped)
        SCOPED_TRACE(name(f, dt) + " M=" + std::to_string(M));
        const int64_t E = 4, L = 16, N = 24, K = 128, Bx = 2;
        ASSERT_EQ(reg.qmm.select(gather_desc(f, dt, M, N, K, L, Bx, E), Device::Type::gpu).name, "cuda_gather_grouped");
        QW q = exact_quantized(f, E * N, K, dt, seed++);
        Array w = gpu(q.w.reshape({E, N, q.w.shape(-1)}));
        Array s = gpu(q.scales.reshape({E, N, q.scales.shape(-1)}));
        std::optional<Array> b;
        if (q.biases) b = gpu(q.biases->reshape({E, N, q.biases->shape(-1)}));
        Array x = gpu(small_ints({Bx, M, K}, dt, seed++));
        std::vector<int64_t> ri = {1, 3, 0, 2, 1, 1, 3, 0, 9, 2, 0, 1, 2, 2, 3, 0},
                             li = {0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0};
        synchronize(kGpu);
        Array y = gather_qmm(x, w, s, b, gpu(Array::from_vector(li, {L})), gpu(Array::from_vector(ri, {L})), true, f.gs,
                             f.bits, f.mode);
        try {
          synchronize(kGpu);
          ADD_FAILURE() << "expected the deferred index error";
        } catch (const Error& e) {
          const std::string m = e.what();
          EXPECT_EQ(m.rfind("[gather_qmm] rhs_indices value 9 at flat position 8", 0), 0u) << m;
        }
        synchronize(kGpu);
        ri[8] = 0;
        Array good = gather_qmm(x, w, s, b, gpu(Array::from_vector(li, {L})), gpu(Array::from_vector(ri, {L})), true,
                                f.gs, f.bits, f.mode);
        expect_only_entry_zeroed(y, good, 8, L, M, N);
      }
}

TEST(CudaCross, QmmBatchedBroadcastAndEmpty) {
  MMKIT_REQUIRE_GPU();
  const Fmt f{"affine", 4, 32};
  QW q = exact_quantized(f, 2 * 24, 64, Dtype::float32, 77);
  Array w = q.w.reshape({2, 1, 24, q.w.shape(-1)}), s = q.scales.reshape({2, 1, 24, 2}), b = q.biases->reshape({2, 1, 24, 2});
  Array x = small_ints({3, 5, 64}, Dtype::float32, 78);
  Array yc = quantized_matmul(x, w, s, b, true, 32, 4);
  Array yg = quantized_matmul(gpu(x), gpu(w), gpu(s), gpu(b), true, 32, 4);
  EXPECT_TRUE(bit_equal(yg, yc));
  // M = 0 and K = 0.
  Array x0 = Array::zeros({0, 64}, Dtype::float32);
  EXPECT_EQ(quantized_matmul(gpu(x0), gpu(q.w), gpu(q.scales), gpu(*q.biases), true, 32, 4).shape(), (Shape{0, 48}));
}

// ---------------------------------------------------------------------------
// gather_mm / matmul

TEST(CudaCross, GatherMmExactBothLayoutsEveryDtype) {
  MMKIT_REQUIRE_GPU();
  uint64_t seed = 500;
  for (Dtype dt : kFloats)
    for (bool kmajor : {false, true})
      for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 8, 16}, {5, 33, 40}, {64, 64, 64},
                             {70, 130, 96}, {3, 7, 5}, {129, 24, 200}}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + (kmajor ? " K-major" : " N-major") + " M=" + std::to_string(M) +
                     " N=" + std::to_string(N) + " K=" + std::to_string(K));
        Array a = small_ints({3, M, K}, dt, seed++);
        // K-major b: a transposed view of a contiguous (E, N, K) array.
        Array b = kmajor ? small_ints({4, N, K}, dt, seed++).swapaxes(-1, -2) : small_ints({4, K, N}, dt, seed++);
        Array lhs = Array::from_vector(std::vector<int64_t>{0, 2, 1, 2, 0}, {5});
        Array rhs = Array::from_vector(std::vector<int64_t>{3, 3, 0, 1, 2}, {5});
        Array yc = gather_mm(a, b, lhs, rhs);
        Array bg = kmajor ? gpu(b.swapaxes(-1, -2).contiguous()).swapaxes(-1, -2) : gpu(b);
        Array yg = gather_mm(gpu(a), bg, gpu(lhs), gpu(rhs));
        EXPECT_TRUE(bit_equal(yg, yc));
        Array mc = matmul(a, b.index(0, 1));
        Array mg = matmul(gpu(a), bg.index(0, 1));
        EXPECT_TRUE(bit_equal(mg, mc)) << "matmul";
      }
}

TEST(CudaCross, GatherMmRandomWithinTolerance) {
  MMKIT_REQUIRE_GPU();
  std::mt19937_64 g(5);
  for (int it = 0; it < 12; ++it) {
    const Dtype dt = kFloats[it % 3];
    const int64_t M = 1 + g() % 150, N = 1 + g() % 150, K = 8 * (1 + g() % 40);
    Array a = randn({2, M, K}, Dtype::float32, 50 + it, 1.0 / std::sqrt(static_cast<double>(K))).astype(dt);
    Array b = randn({3, K, N}, Dtype::float32, 80 + it).astype(dt);
    Array lhs = Array::from_vector(std::vector<int64_t>{1, 0, 1}, {3});
    Array rhs = Array::from_vector(std::vector<int64_t>{2, 0, 1}, {3});
    ref::Tensor r = ref::gather_mm(a, b, lhs, rhs);
    Array y = gather_mm(gpu(a), gpu(b), lhs, rhs);
    EXPECT_TRUE(all_close(y, r, rtol_for(dt), 2e-5 * r.max_abs())) << dtype_name(dt) << " " << M << "x" << N << "x" << K;
  }
}

/// A gather_mm descriptor as the front end builds it (for registry selection).
detail::GemmDesc gemm_gather_desc(Dtype dt, int64_t M, int64_t N, int64_t K, int64_t L, int64_t Ba, int64_t E,
                                  bool kmajor) {
  detail::GemmDesc d;
  d.M = M;
  d.N = N;
  d.K = K;
  d.batch = L;
  d.a_batch = Ba;
  d.b_batch = E;
  d.dtype = dt;
  d.b_kmajor = kmajor;
  return d;
}

TEST(CudaCross, GatherMmGroupedByExpertOnTheDevice) {
  MMKIT_REQUIRE_GPU();
  // gather_mm whose entries share experts (cuda_gemm_grouped): rows grouped by
  // expert on the device, one plan item of <= 64 rows per tile row. E = 3 with
  // expert 1 unused, unsorted rhs; at M = 5 expert 2 has 65 rows (items of 64
  // and 1), at M = 70 an entry's rows span two items. N spans two column
  // tiles with a partial one, K is not a multiple of the 32-wide k tile
  // (K = 36: not of 8 either, the SIMT tile; float32 always takes it). Host
  // and device indices; bit-exact with the CPU on small integers.
  auto& reg = detail::registries();
  uint64_t seed = 9700;
  const int64_t E = 3, L = 16, N = 72, Ba = 5;
  const std::vector<int64_t> ri = {2, 0, 2, 2, 2, 2, 0, 2, 2, 2, 2, 2, 0, 2, 2, 2};
  for (Dtype dt : {Dtype::float16, Dtype::bfloat16, Dtype::float32})
    for (bool kmajor : {false, true})
      for (int64_t M : {1, 5, 70})
        for (int64_t K : {40, 36}) {
          SCOPED_TRACE(std::string(dtype_name(dt)) + (kmajor ? " K-major" : " N-major") + " M=" + std::to_string(M) +
                       " K=" + std::to_string(K));
          ASSERT_EQ(reg.gemm.select(gemm_gather_desc(dt, M, N, K, L, Ba, E, kmajor), Device::Type::gpu).name,
                    "cuda_gemm_grouped");
          Array a = small_ints({Ba, M, K}, dt, seed++);
          Array b = kmajor ? small_ints({E, N, K}, dt, seed++).swapaxes(-1, -2) : small_ints({E, K, N}, dt, seed++);
          std::mt19937_64 g(seed++);
          std::vector<int64_t> li(static_cast<size_t>(L));
          for (int64_t l = 0; l < L; ++l) li[l] = static_cast<int64_t>(g() % Ba);
          Array lhs = Array::from_vector(li, {L}), rhs = Array::from_vector(ri, {L});
          Array yc = gather_mm(a, b, lhs, rhs);
          const auto v = yc.astype(Dtype::float32).to_double_vector();
          ASSERT_TRUE(std::any_of(v.begin(), v.end(), [](double e) { return e != 0.0; }));
          Array bg = kmajor ? gpu(b.swapaxes(-1, -2).contiguous()).swapaxes(-1, -2) : gpu(b);
          Array yh = gather_mm(gpu(a), bg, lhs, rhs);
          Array yd = gather_mm(gpu(a), bg, gpu(lhs), gpu(rhs));
          EXPECT_TRUE(bit_equal(yh, yc)) << "host indices";
          EXPECT_TRUE(bit_equal(yd, yc)) << "device indices";
        }
}

TEST(CudaCross, GatherMmGroupedReportsABadDeviceIndexAndZerosOnlyItsEntry) {
  MMKIT_REQUIRE_GPU();
  // The grouped gather_mm (tensor-core and, for float32, SIMT tiles): an
  // out-of-range device rhs index is reported by the plan kernel at the next
  // synchronizing call, and only that entry's rows are zero.
  auto& reg = detail::registries();
  uint64_t seed = 9800;
  const int64_t E = 3, L = 16, M = 5, N = 24, K = 32, Ba = 2;
  for (Dtype dt : {Dtype::float16, Dtype::bfloat16, Dtype::float32})
    for (bool kmajor : {false, true}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + (kmajor ? " K-major" : " N-major"));
      ASSERT_EQ(reg.gemm.select(gemm_gather_desc(dt, M, N, K, L, Ba, E, kmajor), Device::Type::gpu).name,
                "cuda_gemm_grouped");
      Array a = gpu(small_ints({Ba, M, K}, dt, seed++));
      Array b = kmajor ? gpu(small_ints({E, N, K}, dt, seed++)).swapaxes(-1, -2)
                       : gpu(small_ints({E, K, N}, dt, seed++));
      std::vector<int64_t> ri = {1, 2, 0, 2, 1, 1, 2, 0, 9, 2, 0, 1, 2, 2, 0, 0},
                           li = {0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0};
      synchronize(kGpu);
      Array y = gather_mm(a, b, gpu(Array::from_vector(li, {L})), gpu(Array::from_vector(ri, {L})));
      try {
        synchronize(kGpu);
        ADD_FAILURE() << "expected the deferred index error";
      } catch (const Error& e) {
        const std::string m = e.what();
        EXPECT_EQ(m.rfind("[gather_mm] rhs_indices value 9 at flat position 8", 0), 0u) << m;
      }
      synchronize(kGpu);
      ri[8] = 0;
      Array good = gather_mm(a, b, gpu(Array::from_vector(li, {L})), gpu(Array::from_vector(ri, {L})));
      expect_only_entry_zeroed(y, good, 8, L, M, N);
    }
}

// ---------------------------------------------------------------------------
// block_masked_mm

TEST(CudaCross, BlockMaskedExactBoolAndFloatMasks) {
  MMKIT_REQUIRE_GPU();
  uint64_t seed = 900;
  for (int bs : {32, 64})
    for (Dtype dt : kFloats)
      for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{64, 64, 64}, {100, 70, 130}, {1, 128, 96}}) {
        SCOPED_TRACE("bs=" + std::to_string(bs) + " " + dtype_name(dt) + " M=" + std::to_string(M));
        const int64_t tm = (M + bs - 1) / bs, tn = (N + bs - 1) / bs, tk = (K + bs - 1) / bs;
        Array a = small_ints({2, M, K}, dt, seed++), b = small_ints({2, K, N}, dt, seed++);
        Array mo = randint({2, tm, tn}, Dtype::bool_, seed++, 0, 1);
        Array ml = randint({2, tm, tk}, Dtype::bool_, seed++, 0, 1);
        Array mr = randint({2, tk, tn}, Dtype::bool_, seed++, 0, 1);
        Array fo = randint({2, tm, tn}, Dtype::float32, seed++, -2, 2).astype(dt);
        Array fl = randint({2, tm, tk}, Dtype::float32, seed++, 0, 2).astype(dt);
        Array fr = randint({2, tk, tn}, Dtype::float32, seed++, -1, 1).astype(dt);
        auto both = [&](const std::optional<Array>& o, const std::optional<Array>& l, const std::optional<Array>& r,
                        const char* what) {
          Array yc = block_masked_mm(a, b, bs, o, l, r);
          Array yg = block_masked_mm(gpu(a), gpu(b), bs, opt_gpu(o), opt_gpu(l), opt_gpu(r));
          EXPECT_TRUE(bit_equal(yg, yc)) << what;
        };
        both(mo, ml, mr, "bool out + operands");
        both(mo, std::nullopt, std::nullopt, "bool out");
        both(std::nullopt, ml, mr, "bool operands");
        both(fo, fl, fr, "float out + operands");
        both(std::nullopt, fl, fr, "float operands");
        both(fo, std::nullopt, std::nullopt, "float out");
        // K-major b.
        Array bt = small_ints({2, N, K}, dt, seed++);
        Array yc = block_masked_mm(a, bt.swapaxes(-1, -2), bs, mo, ml, mr);
        Array yg = block_masked_mm(gpu(a), gpu(bt).swapaxes(-1, -2), bs, gpu(mo), gpu(ml), gpu(mr));
        EXPECT_TRUE(bit_equal(yg, yc)) << "K-major b";
      }
}

// ---------------------------------------------------------------------------
// one small call of every GPU kernel: the subset scripts/gpu-check runs under
// compute-sanitizer (memcheck, racecheck)

TEST(CudaSmoke, EveryKernelOnceOnExactData) {
  MMKIT_REQUIRE_GPU();
  // quantize / dequantize / fp8
  for (const Fmt& f : {Fmt{"affine", 3, 64}, Fmt{"mxfp4", 4, 32}, Fmt{"nvfp4", 4, 16}, Fmt{"mxfp8", 8, 32}}) {
    Array w = randn({9, 128}, Dtype::bfloat16, 1);
    auto qc = quantize(w, f.gs, f.bits, f.mode);
    auto qg = quantize(gpu(w), f.gs, f.bits, f.mode);
    for (size_t i = 0; i < qc.size(); ++i) EXPECT_TRUE(bit_equal(qg[i], qc[i])) << f.mode << " output " << i;
    std::optional<Array> b;
    if (f.affine()) b = qc[2];
    EXPECT_TRUE(bit_equal(dequantize(gpu(qc[0]), gpu(qc[1]), opt_gpu(b), f.gs, f.bits, f.mode),
                          dequantize(qc[0], qc[1], b, f.gs, f.bits, f.mode)))
        << f.mode;
  }
  Array r = randn({300}, Dtype::float16, 2, 50.0);
  EXPECT_TRUE(bit_equal(to_fp8(gpu(r)), to_fp8(r)));
  EXPECT_TRUE(bit_equal(from_fp8(gpu(to_fp8(r)), Dtype::bfloat16), from_fp8(to_fp8(r), Dtype::bfloat16)));
  // qmv, tensor-core qmm, generic qmm
  check_exact_qmm({{"affine", 3, 32}, Dtype::bfloat16, true, 3, 37, 128}, 1);
  check_exact_qmm({{"nvfp4", 4, 16}, Dtype::float16, true, 1, 20, 48}, 2);
  check_exact_qmm({{"affine", 4, 64}, Dtype::float16, true, 70, 65, 128}, 3);
  check_exact_qmm({{"mxfp8", 8, 32}, Dtype::bfloat16, true, 20, 8, 64}, 4);
  check_exact_qmm({{"affine", 5, 32}, Dtype::float32, false, 5, 64, 33}, 5);
  // gather_qmm with device indices, one of them out of range (clamped, reported)
  {
    const Fmt f{"affine", 4, 32};
    QW q = exact_quantized(f, 3 * 16, 64, Dtype::bfloat16, 6);
    Array w = q.w.reshape({3, 16, 8}), s = q.scales.reshape({3, 16, 2}), b = q.biases->reshape({3, 16, 2});
    Array x = small_ints({2, 4, 64}, Dtype::bfloat16, 7);
    Array lhs = Array::from_vector(std::vector<int64_t>{1, 0, 1}, {3});
    Array rhs = Array::from_vector(std::vector<int64_t>{2, 5, 0}, {3});
    (void)gather_qmm(gpu(x), gpu(w), gpu(s), gpu(b), gpu(lhs), gpu(rhs), true, 32, 4);
    EXPECT_THROW(synchronize(kGpu), Error);
  }
  // gather_mm: tensor cores (both layouts) and SIMT
  for (Dtype dt : {Dtype::bfloat16, Dtype::float32})
    for (bool kmajor : {false, true}) {
      Array a = small_ints({2, 20, 40}, dt, 8);
      Array bt = small_ints({2, 24, 40}, dt, 9);
      Array b = kmajor ? bt.swapaxes(-1, -2) : bt.swapaxes(-1, -2).contiguous();
      Array bg = kmajor ? gpu(bt).swapaxes(-1, -2) : gpu(b);
      EXPECT_TRUE(bit_equal(matmul(gpu(a), bg), matmul(a, b))) << dtype_name(dt) << kmajor;
    }
  // block_masked_mm, both block sizes, bool and float masks
  for (int bs : {32, 64}) {
    Array a = small_ints({70, 100}, Dtype::float16, 10), b = small_ints({100, 40}, Dtype::float16, 11);
    const int64_t tm = (70 + bs - 1) / bs, tn = (40 + bs - 1) / bs, tk = (100 + bs - 1) / bs;
    Array mo = randint({tm, tn}, Dtype::bool_, 12, 0, 1), ml = randint({tm, tk}, Dtype::bool_, 13, 0, 1);
    Array fr = randint({tk, tn}, Dtype::float32, 14, -1, 2);
    Array mr = randint({tk, tn}, Dtype::bool_, 16, 0, 1);
    EXPECT_TRUE(bit_equal(block_masked_mm(gpu(a), gpu(b), bs, gpu(mo), gpu(ml), gpu(mr)),
                          block_masked_mm(a, b, bs, mo, ml, mr)))
        << bs;
    EXPECT_TRUE(bit_equal(block_masked_mm(gpu(a), gpu(b), bs, std::nullopt, std::nullopt, gpu(fr)),
                          block_masked_mm(a, b, bs, std::nullopt, std::nullopt, fr)))
        << bs;
  }
  // strided copy with conversion
  Array h = randn({6, 10, 4}, Dtype::float32, 15);
  EXPECT_TRUE(bit_equal(gpu(h).transpose({2, 0, 1}).astype(Dtype::bfloat16), h.transpose({2, 0, 1}).astype(Dtype::bfloat16)));
}

// ---------------------------------------------------------------------------
// every GPU registry entry is reachable

TEST(CudaCross, EveryGpuKernelIsSelectedBySomeCase) {
  MMKIT_REQUIRE_GPU();
  auto& r = detail::registries();
  std::set<std::string> seen;
  detail::QmmDesc q;
  q.format = {fmt::Mode::affine, 4, 64};
  q.K = 4096;
  q.N = 4096;
  q.dtype = Dtype::bfloat16;
  for (int64_t M : {1, 8, 9, 33, 512}) {
    q.M = M;
    seen.insert(r.qmm.select(q, Device::Type::gpu).name);
  }
  q.format = {fmt::Mode::mxfp4, 4, 32};  // many rows, not 4-bit affine: the generic-format tensor-core kernel
  seen.insert(r.qmm.select(q, Device::Type::gpu).name);
  q.format = {fmt::Mode::affine, 4, 64};
  q.M = 1;
  q.batch = 64;  // a gather whose entries share experts
  q.w_batch = 8;
  seen.insert(r.qmm.select(q, Device::Type::gpu).name);
  q.batch = q.w_batch = 1;
  // FP4 codes at M = 1 (also gpt-oss's K = 2880, not a multiple of 128): the
  // tensor-core GEMV, and so are mxfp8, 3- and 6-bit codes; 5-bit codes and
  // 3-bit ones at group size 32: the SIMT GEMV.
  q.format = {fmt::Mode::mxfp4, 4, 32};
  EXPECT_EQ(r.qmm.select(q, Device::Type::gpu).name, "cuda_qmv1_mma");
  q.format = {fmt::Mode::nvfp4, 4, 16};
  EXPECT_EQ(r.qmm.select(q, Device::Type::gpu).name, "cuda_qmv1_mma");
  q.format = {fmt::Mode::mxfp4, 4, 32};
  q.K = 2880;
  EXPECT_EQ(r.qmm.select(q, Device::Type::gpu).name, "cuda_qmv1_mma");
  q.K = 4096;
  q.format = {fmt::Mode::mxfp8, 8, 32};
  EXPECT_EQ(r.qmm.select(q, Device::Type::gpu).name, "cuda_qmv1_mma");
  q.format = {fmt::Mode::affine, 3, 64};
  EXPECT_EQ(r.qmm.select(q, Device::Type::gpu).name, "cuda_qmv1_mma");
  q.format = {fmt::Mode::affine, 6, 64};
  EXPECT_EQ(r.qmm.select(q, Device::Type::gpu).name, "cuda_qmv1_mma");
  q.format = {fmt::Mode::affine, 3, 32};
  EXPECT_EQ(r.qmm.select(q, Device::Type::gpu).name, "cuda_qmv");
  q.format = {fmt::Mode::affine, 5, 64};
  seen.insert(r.qmm.select(q, Device::Type::gpu).name);
  q.format = {fmt::Mode::affine, 4, 64};
  q.transpose = false;
  seen.insert(r.qmm.select(q, Device::Type::gpu).name);
  detail::GemmDesc gd;
  gd.M = gd.N = gd.K = 256;
  for (Dtype dt : {Dtype::float32, Dtype::bfloat16}) {
    gd.dtype = dt;
    seen.insert(r.gemm.select(gd, Device::Type::gpu).name);
  }
  gd.M = 1;
  gd.batch = 64;  // a gather whose entries share experts
  gd.b_batch = 8;
  seen.insert(r.gemm.select(gd, Device::Type::gpu).name);
  seen.insert(r.block_masked.select(detail::BlockMaskedDesc{}, Device::Type::gpu).name);
  seen.insert(r.quantize.select(detail::QuantizeDesc{}, Device::Type::gpu).name);
  seen.insert(r.dequantize.select(detail::DequantizeDesc{}, Device::Type::gpu).name);
  seen.insert(r.fp8.select(detail::Fp8Desc{}, Device::Type::gpu).name);
  auto check_family = [&](const auto& reg) {
    for (const auto& e : reg.entries())
      if (e.device == Device::Type::gpu) {
        EXPECT_TRUE(seen.count(e.name)) << e.name << " is never selected";
      }
  };
  check_family(r.qmm);
  check_family(r.gemm);
  check_family(r.block_masked);
  check_family(r.quantize);
  check_family(r.dequantize);
  check_family(r.fp8);
  EXPECT_TRUE(seen.count("cuda_gather_grouped") && seen.count("cuda_qmv1_mma") && seen.count("cuda_qmv_sm80_mma") && seen.count("cuda_qmv") && seen.count("cuda_qmm_sm80_mma") && seen.count("cuda_qmm_w4_mma") &&
              seen.count("cuda_qmm_generic"));
  EXPECT_TRUE(seen.count("cuda_gemm_grouped") && seen.count("cuda_gemm_sm80_mma") && seen.count("cuda_gemm_simt"));
}

}  // namespace
}  // namespace mmkit::test
