// The CUDA backend's runtime: arrays on Device::gpu, host <-> device copies,
// strided copies with dtype conversion, streams, deferred reporting of
// out-of-range device-resident indices, and CUDA graph capture of the kernels.
// Every test skips with the reason when no GPU is present.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/registry.h"
#include "test_util.h"

#ifdef MMKIT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace mmkit::test {
namespace {

#define MMKIT_REQUIRE_GPU()                                                          \
  do {                                                                               \
    if (!built_with_cuda()) GTEST_SKIP() << "mmkit was built without CUDA";          \
    if (gpu_count() == 0) GTEST_SKIP() << "no CUDA GPU is present (built with CUDA)"; \
  } while (0)

const Device kGpu = Device::gpu();
Array gpu(const Array& a) { return a.to(kGpu); }
Array cpu(const Array& a) { return a.to(Device::cpu()); }

const Dtype kAll[] = {Dtype::float32, Dtype::float16, Dtype::bfloat16, Dtype::uint32, Dtype::uint8,
                      Dtype::int8,    Dtype::int16,   Dtype::int32,    Dtype::int64,  Dtype::bool_};

TEST(CudaRuntime, BuiltWithoutGpuSaysWhy) {
  if (gpu_count() > 0) GTEST_SKIP() << "a GPU is present; this checks the no-GPU error";
  try {
    (void)Array::zeros({4}, Dtype::float32, kGpu);
    FAIL() << "expected mmkit::Error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_TRUE(m.find("without CUDA") != std::string::npos || m.find("no CUDA GPU") != std::string::npos) << m;
  }
}

TEST(CudaRuntime, RoundTripEveryDtype) {
  MMKIT_REQUIRE_GPU();
  for (Dtype dt : kAll) {
    Array h = randint({3, 17, 5}, dt, 1, -100, 100);
    Array d = gpu(h);
    EXPECT_TRUE(d.device().is_gpu());
    EXPECT_EQ(d.dtype(), dt);
    EXPECT_TRUE(bit_equal(cpu(d), h)) << dtype_name(dt);
    EXPECT_TRUE(bit_equal(cpu(d.copy()), h)) << "device copy " << dtype_name(dt);
  }
  Array z = Array::zeros({1000}, Dtype::float32, kGpu);
  for (double v : z.to_double_vector()) ASSERT_EQ(v, 0.0);
  Array f = Array::full({7, 3}, 2.5, Dtype::bfloat16, kGpu);
  for (double v : f.to_double_vector()) ASSERT_EQ(v, 2.5);
  Array e = Array::empty({0, 4}, Dtype::float32, kGpu);
  EXPECT_EQ(cpu(e).size(), 0);
}

/// Source values that exercise every conversion rule: fractions, negatives,
/// large magnitudes (saturation), NaN and Inf (float sources only).
Array special_source(Dtype dt) {
  std::vector<float> v = {0.0f, -0.0f, 0.5f, -1.5f, 2.7f, 127.0f, 128.0f, 255.0f, 256.0f, -129.0f, 40000.0f,
                          -70000.0f, 3e9f, -3e9f, 1e20f, 65519.0f, 65520.0f, 1e-8f, 1.00390625f};
  if (is_floating(dt)) {
    v.push_back(std::numeric_limits<float>::quiet_NaN());
    v.push_back(std::numeric_limits<float>::infinity());
    v.push_back(-std::numeric_limits<float>::infinity());
  }
  while (v.size() % 6) v.push_back(static_cast<float>(v.size()));
  Array a = Array::from_vector(v, {static_cast<int64_t>(v.size() / 6), 6});
  return a.astype(dt);
}

TEST(CudaRuntime, CopyCastEveryPairMatchesTheCpu) {
  MMKIT_REQUIRE_GPU();
  for (Dtype s : kAll) {
    Array h = special_source(s);
    Array d = gpu(h);
    for (Dtype t : kAll) {
      SCOPED_TRACE(std::string(dtype_name(s)) + " -> " + dtype_name(t));
      EXPECT_TRUE(bit_equal(d.astype(t), h.astype(t))) << "contiguous";
      EXPECT_TRUE(bit_equal(d.transpose().astype(t), h.transpose().astype(t))) << "transposed";
      EXPECT_TRUE(bit_equal(d.slice(1, 5, 0, -2).astype(t), h.slice(1, 5, 0, -2).astype(t))) << "negative step";
    }
  }
}

TEST(CudaRuntime, StridedViewsBecomeContiguous) {
  MMKIT_REQUIRE_GPU();
  Array h = randn({4, 6, 8, 10}, Dtype::float32, 3);
  Array d = gpu(h);
  auto same = [](const Array& g, const Array& c) { return bit_equal(g.contiguous(), c.contiguous()); };
  EXPECT_TRUE(same(d.transpose({2, 0, 3, 1}), h.transpose({2, 0, 3, 1})));
  EXPECT_TRUE(same(d.slice(3, 1, 9, 3).slice(1, 5, 0, -1), h.slice(3, 1, 9, 3).slice(1, 5, 0, -1)));
  EXPECT_TRUE(same(d.index(0, 2).broadcast_to({5, 6, 8, 10}), h.index(0, 2).broadcast_to({5, 6, 8, 10})));
  EXPECT_TRUE(same(d.reshape({24, 80}).swapaxes(0, 1).astype(Dtype::bfloat16),
                   h.reshape({24, 80}).swapaxes(0, 1).astype(Dtype::bfloat16)));
}

TEST(CudaRuntime, OpsOnAUserStreamMatchTheDefaultStream) {
  MMKIT_REQUIRE_GPU();
  Stream s = Stream::create(kGpu);
  ASSERT_NE(s.handle, nullptr);
  Array w = randn({256, 512}, Dtype::bfloat16, 4);
  auto q = quantize(gpu(w), 64, 4, "affine", std::nullopt, s);
  Array x = gpu(randn({3, 512}, Dtype::bfloat16, 5, 0.05));
  std::vector<Array> ys;
  for (int i = 0; i < 20; ++i) ys.push_back(quantized_matmul(x, q[0], q[1], q[2], true, 64, 4, "affine", s));
  Array big = gpu(randn({70, 512}, Dtype::bfloat16, 6, 0.05));
  Array yb = quantized_matmul(big, q[0], q[1], q[2], true, 64, 4, "affine", s);
  s.synchronize();
  Array ref1 = quantized_matmul(x, q[0], q[1], q[2], true, 64, 4);
  Array refb = quantized_matmul(big, q[0], q[1], q[2], true, 64, 4);
  for (const Array& y : ys) EXPECT_TRUE(bit_equal(y, ref1));
  EXPECT_TRUE(bit_equal(yb, refb));
  s.destroy();
  EXPECT_EQ(s.handle, nullptr);
}

TEST(CudaRuntime, OutOfRangeDeviceIndexIsReportedAtTheNextSynchronize) {
  MMKIT_REQUIRE_GPU();
  synchronize(kGpu);  // nothing pending
  auto q = quantize(gpu(randn({4 * 16, 64}, Dtype::float32, 8)), 32, 4);
  Array w = q[0].reshape({4, 16, 8}), s = q[1].reshape({4, 16, 2}), b = q[2].reshape({4, 16, 2});
  Array x = gpu(randn({2, 3, 64}, Dtype::float32, 9));
  Array rhs = gpu(Array::from_vector(std::vector<int32_t>{1, 3, 7, 0}, {4}));
  Array lhs = gpu(Array::from_vector(std::vector<int32_t>{0, 1, 1, 0}, {4}));
  Array y = gather_qmm(x, w, s, b, lhs, rhs, true, 32, 4);  // queues; does not throw
  try {
    synchronize(kGpu);
    FAIL() << "expected the deferred index error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("[gather_qmm] rhs_indices value 7 at flat position 2", 0), 0u) << m;
    EXPECT_NE(m.find("w has 4 batch entries"), std::string::npos) << m;
  }
  // The error is reported once; the bad entry's output is zero, the others are right.
  synchronize(kGpu);
  auto v = cpu(y).to_double_vector();
  for (int64_t i = 2 * 3 * 16; i < 3 * 3 * 16; ++i) EXPECT_EQ(v[i], 0.0) << i;
  Array good = gather_qmm(x, w, s, b, lhs.slice(0, 0, 2), rhs.slice(0, 0, 2), true, 32, 4);
  auto g = cpu(good).to_double_vector();
  for (int64_t i = 0; i < 2 * 3 * 16; ++i) EXPECT_EQ(v[i], g[i]) << i;

  // gather_mm with a negative lhs index, surfaced by a stream's synchronize.
  Stream st = Stream::create(kGpu);
  Array a = gpu(randn({3, 4, 8}, Dtype::float16, 10)), bb = gpu(randn({2, 8, 16}, Dtype::float16, 11));
  Array li = gpu(Array::from_vector(std::vector<int64_t>{0, -1}, {2}));
  (void)gather_mm(a, bb, li, std::nullopt, false, st);
  try {
    st.synchronize();
    FAIL() << "expected the deferred index error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("[gather_mm] lhs_indices value -1 at flat position 1", 0), 0u) << e.what();
  }
  st.destroy();
  // Reading a result back is a synchronizing call too.
  Array bad = gpu(Array::from_vector(std::vector<int64_t>{2}, {1}));
  Array y2 = gather_mm(a, bb, std::nullopt, bad);
  EXPECT_THROW((void)cpu(y2), Error);
  synchronize(kGpu);
}

TEST(CudaRuntime, GroupedGatherReportsABadDeviceIndexAndZerosOnlyItsEntry) {
  MMKIT_REQUIRE_GPU();
  // The grouped gather (rows sorted by expert on the device) checks the
  // indices in its plan kernel: same deferred error, same zeros.
  synchronize(kGpu);
  auto q = quantize(gpu(randn({4 * 16, 128}, Dtype::bfloat16, 18)), 64, 4);
  Array w = q[0].reshape({4, 16, 16}), s = q[1].reshape({4, 16, 2}), b = q[2].reshape({4, 16, 2});
  Array x = gpu(randn({2, 1, 128}, Dtype::bfloat16, 19));
  std::vector<int64_t> ri = {1, 3, 0, 2, 1, 1, 3, 0, 9, 2, 0, 1, 2, 2, 3, 0},
                       li = {0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0};
  Array rhs = gpu(Array::from_vector(ri, {16})), lhs = gpu(Array::from_vector(li, {16}));
  Array y = gather_qmm(x, w, s, b, lhs, rhs, true, 64, 4);
  try {
    synchronize(kGpu);
    FAIL() << "expected the deferred index error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("[gather_qmm] rhs_indices value 9 at flat position 8", 0), 0u) << m;
  }
  synchronize(kGpu);
  auto v = cpu(y).to_double_vector();
  ri[8] = 0;
  Array good = gather_qmm(x, w, s, b, gpu(Array::from_vector(li, {16})), gpu(Array::from_vector(ri, {16})), true, 64, 4);
  auto gv = cpu(good).to_double_vector();
  for (int64_t i = 0; i < 16 * 16; ++i) {
    if (i / 16 == 8) EXPECT_EQ(v[i], 0.0) << i;
    else EXPECT_EQ(v[i], gv[i]) << i;
  }
}

#ifdef MMKIT_WITH_CUDA
/// Runs a registry entry with prepared device arguments (bfloat16 output of
/// out_shape) directly, then under CUDA graph capture (global mode: any
/// synchronisation or allocation inside the op would fail the capture),
/// replays the graph and expects the same bits.
void expect_capture_matches_direct(const detail::KernelEntry<detail::QmmDesc, detail::QmmArgs>& entry,
                                   const detail::QmmDesc& d, detail::QmmArgs a, const Stream& st, const Shape& out_shape) {
  auto cs = static_cast<cudaStream_t>(st.handle);
  Array direct = Array::empty(out_shape, Dtype::bfloat16, kGpu);
  a.out = direct;
  entry.run(d, a, st);
  st.synchronize();
  Array captured = Array::zeros(out_shape, Dtype::bfloat16, kGpu);
  a.out = captured;
  synchronize(kGpu);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(cs, cudaStreamCaptureModeGlobal), cudaSuccess);
  entry.run(d, a, st);
  ASSERT_EQ(cudaStreamEndCapture(cs, &graph), cudaSuccess) << entry.name;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, cs), cudaSuccess);
  st.synchronize();
  EXPECT_TRUE(bit_equal(captured, direct)) << entry.name;
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST(CudaRuntime, KernelsAreGraphCapturable) {
  MMKIT_REQUIRE_GPU();
  auto& reg = detail::registries();
  Stream st = Stream::create(kGpu);
  auto q = quantize(gpu(randn({96, 256}, Dtype::bfloat16, 12)), 64, 4);
  for (int64_t M : {2, 40}) {
    for (bool transpose : {true, false}) {
      SCOPED_TRACE("M=" + std::to_string(M) + (transpose ? " T" : " N"));
      detail::QmmDesc d;
      d.format = {fmt::Mode::affine, 4, 64};
      d.transpose = transpose;
      d.M = M;
      d.N = transpose ? 96 : 256;
      d.K = transpose ? 256 : 96;
      d.dtype = Dtype::bfloat16;
      d.indices_checked = false;  // the device-side check must be capturable too
      detail::QmmArgs a;
      a.x = gpu(randn({1, M, d.K}, Dtype::bfloat16, 13, 0.1));
      a.w = q[0].reshape({1, 96, 32});
      a.scales = q[1].reshape({1, 96, 4});
      a.biases = q[2].reshape({1, 96, 4});
      a.lhs = gpu(Array::from_vector(std::vector<int64_t>{0}, {1}));
      a.rhs = a.lhs;
      expect_capture_matches_direct(reg.qmm.select(d, Device::Type::gpu), d, a, st, {1, M, d.N});
    }
  }
  // The grouped gather allocates its plan on the captured stream (a memory node).
  {
    detail::QmmDesc d;
    d.format = {fmt::Mode::affine, 4, 64};
    d.M = 1;
    d.N = 96;
    d.K = 256;
    d.batch = 16;
    d.x_batch = 4;
    d.w_batch = 2;
    d.dtype = Dtype::bfloat16;
    d.indices_checked = false;
    d.op = "gather_qmm";
    detail::QmmArgs a;
    a.x = gpu(randn({4, 1, 256}, Dtype::bfloat16, 14, 0.1));
    // 2 experts, 16 entries.
    auto q2 = quantize(gpu(randn({2 * 96, 256}, Dtype::bfloat16, 15)), 64, 4);
    a.w = q2[0].reshape({2, 96, 32});
    a.scales = q2[1].reshape({2, 96, 4});
    a.biases = q2[2].reshape({2, 96, 4});
    std::vector<int64_t> li(16), ri(16);
    for (int i = 0; i < 16; ++i) {
      li[i] = i % 4;
      ri[i] = (i * 7) % 2;
    }
    a.lhs = gpu(Array::from_vector(li, {16}));
    a.rhs = gpu(Array::from_vector(ri, {16}));
    const auto& entry = reg.qmm.select(d, Device::Type::gpu);
    ASSERT_EQ(entry.name, "cuda_gather_grouped");
    expect_capture_matches_direct(entry, d, a, st, {16, 1, 96});
  }
  st.destroy();
}
#endif

}  // namespace
}  // namespace mmkit::test
