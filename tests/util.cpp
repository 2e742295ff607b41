#include "test_util.h"

#include <cstdlib>
#include <cstring>
#include <iostream>

namespace mmkit::test {

Device test_device() {
  const char* v = std::getenv("MMKIT_TEST_DEVICE");
  if (v && std::string(v) == "gpu") return Device::gpu();
  return Device::cpu();
}

bool device_unavailable(std::string* why) {
  Device d = test_device();
  if (d.is_cpu()) return false;
  if (!built_with_cuda()) {
    *why = "MMKIT_TEST_DEVICE=gpu but mmkit was built without CUDA";
    return true;
  }
  if (gpu_count() == 0) {
    *why = "MMKIT_TEST_DEVICE=gpu but no CUDA GPU is present";
    return true;
  }
  return false;
}

void print_environment() {
  std::cout << "[mmkit tests] device=" << test_device() << " cuda_built=" << built_with_cuda()
            << " gpus=" << gpu_count() << std::endl;
}

Array randn(const Shape& shape, Dtype dt, uint64_t seed, double sigma) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> n(0.0f, static_cast<float>(sigma));
  std::vector<float> v(static_cast<size_t>(shape_size(shape)));
  for (auto& x : v) x = n(g);
  return Array::from_vector(v, shape).astype(dt);
}

Array randint(const Shape& shape, Dtype dt, uint64_t seed, int lo, int hi) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int> u(lo, hi);
  std::vector<int64_t> v(static_cast<size_t>(shape_size(shape)));
  for (auto& x : v) x = u(g);
  return Array::from_vector(v, shape).astype(dt);
}

static std::string coord(int64_t i, const Shape& s) {
  std::vector<int64_t> idx(s.size());
  for (int d = static_cast<int>(s.size()) - 1; d >= 0; --d) {
    idx[d] = s[d] ? i % s[d] : 0;
    if (s[d]) i /= s[d];
  }
  return shape_str(idx);
}

::testing::AssertionResult all_close(const Array& y, const ref::Tensor& r, double rtol, double atol) {
  if (y.shape() != r.shape)
    return ::testing::AssertionFailure() << "shape " << shape_str(y.shape()) << " != reference " << shape_str(r.shape);
  std::vector<double> v = y.to_double_vector();
  int64_t bad = 0, first = -1;
  double worst = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const double e = std::fabs(v[i] - r.v[i]);
    const bool ok = e <= atol + rtol * std::fabs(r.v[i]) || (std::isnan(v[i]) && std::isnan(r.v[i])) ||
                    (std::isinf(r.v[i]) && v[i] == r.v[i]);
    if (!ok) {
      if (first < 0) first = static_cast<int64_t>(i);
      ++bad;
      worst = std::max(worst, e);
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << v.size() << " elements differ; first at "
                                       << coord(first, r.shape) << ": got " << v[first] << " expected "
                                       << r.v[first] << " (rtol " << rtol << ", atol " << atol << ", worst abs err "
                                       << worst << ")";
}

::testing::AssertionResult bit_equal(const Array& y0, const Array& e0) {
  if (y0.shape() != e0.shape())
    return ::testing::AssertionFailure() << "shape " << shape_str(y0.shape()) << " != " << shape_str(e0.shape());
  if (y0.dtype() != e0.dtype())
    return ::testing::AssertionFailure() << "dtype " << y0.dtype() << " != " << e0.dtype();
  Array y = y0.to(Device::cpu()).contiguous(), e = e0.to(Device::cpu()).contiguous();
  const size_t es = y.itemsize();
  const char* a = static_cast<const char*>(y.raw_data());
  const char* b = static_cast<const char*>(e.raw_data());
  for (int64_t i = 0; i < y.size(); ++i) {
    if (std::memcmp(a + i * es, b + i * es, es) != 0) {
      std::vector<double> va = y.reshape({y.size()}).slice(0, i, i + 1).to_double_vector();
      std::vector<double> vb = e.reshape({e.size()}).slice(0, i, i + 1).to_double_vector();
      return ::testing::AssertionFailure() << "first mismatch at " << coord(i, y.shape()) << ": got " << va[0]
                                           << " expected " << vb[0];
    }
  }
  return ::testing::AssertionSuccess();
}

double rtol_for(Dtype dt) {
  switch (dt) {
    case Dtype::bfloat16: return 1.0 / 128;  // 2 ulp of the final rounding
    case Dtype::float16: return 1.0 / 1024;
    default: return 1e-5;
  }
}

}  // namespace mmkit::test
