#include "tools/random.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include "mmkit/error.h"

namespace mmkit::tools {

namespace {

// Four uniforms on [0, 65535] sum to mean 131070 and variance 4 * (65536^2 - 1) / 12.
inline float normal_at(uint64_t seed, int64_t i, float scale) {
  const uint64_t r = mix64(seed ^ (static_cast<uint64_t>(i) * 0xd1b54a32d192ed03ull));
  const int64_t s = static_cast<int64_t>(r & 0xffff) + static_cast<int64_t>((r >> 16) & 0xffff) +
                    static_cast<int64_t>((r >> 32) & 0xffff) + static_cast<int64_t>(r >> 48);
  return static_cast<float>(s - 131070) * scale;
}

inline float normal_scale(float sigma) { return sigma / (65536.0f * 0.57735027f); }

}  // namespace

void fill_normal(float* dst, int64_t n, uint64_t seed, float sigma) {
  const float scale = normal_scale(sigma);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] = normal_at(seed, i, scale);
}

void fill_u32(uint32_t* dst, int64_t n, uint64_t seed) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    dst[i] = static_cast<uint32_t>(mix64(seed ^ (static_cast<uint64_t>(i) * 0xd1b54a32d192ed03ull)) >> 16);
}

Array random_normal(const Shape& shape, Dtype dtype, uint64_t seed, float sigma) {
  if (!is_floating(dtype)) throw_error("random", "random_normal needs a float dtype, got ", dtype, ".");
  Array a = Array::empty(shape, dtype);
  const int64_t n = a.size();
  const float scale = normal_scale(sigma);
  // One pass straight into the target type (the same values as fill_normal, rounded once).
  if (dtype == Dtype::float32) {
    fill_normal(a.data<float>(), n, seed, sigma);
  } else if (dtype == Dtype::bfloat16) {
    bfloat16_t* p = a.data<bfloat16_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) p[i] = bfloat16_t(normal_at(seed, i, scale));
  } else {
    float16_t* p = a.data<float16_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) p[i] = float16_t(normal_at(seed, i, scale));
  }
  return a;
}

std::vector<int32_t> random_routing(int64_t T, int64_t E, int64_t k, uint64_t seed) {
  if (k > E) throw_error("random", "cannot pick ", k, " distinct experts out of ", E, ".");
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(T * k));
  std::vector<int32_t> perm(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    std::iota(perm.begin(), perm.end(), 0);
    // Partial Fisher-Yates: the first k entries become a uniform k-subset.
    for (int64_t j = 0; j < k; ++j) {
      const uint64_t r = mix64(seed ^ (static_cast<uint64_t>(t * k + j) * 0x9e3779b97f4a7c15ull));
      const int64_t pick = j + static_cast<int64_t>(r % static_cast<uint64_t>(E - j));
      std::swap(perm[j], perm[pick]);
      out.push_back(perm[j]);
    }
  }
  return out;
}

int64_t count_distinct(const std::vector<int32_t>& idx) {
  return static_cast<int64_t>(std::set<int32_t>(idx.begin(), idx.end()).size());
}

}  // namespace mmkit::tools
