// Fast, deterministic pseudo-random data for the demo and the bench.
// Counter-based (each element hashes its own index), so the values do not
// depend on the thread count and any slice can be regenerated alone.
#pragma once

#include <cstdint>
#include <vector>

#include "mmkit/array.h"

namespace mmkit::tools {

/// SplitMix64 finaliser: a good 64-bit mix of one counter value.
inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// A seed for stream `stream` derived from `seed` (e.g. one per expert).
inline uint64_t sub_seed(uint64_t seed, uint64_t stream) { return mix64(seed * 0x2545f4914f6cdd1dull + stream); }

/// Approximately N(0, sigma) values: the sum of four 16-bit uniforms
/// (Irwin-Hall), which is ~20x cheaper than Box-Muller and bounded at
/// +-3.46 sigma, which is fine for synthetic weights.
void fill_normal(float* dst, int64_t n, uint64_t seed, float sigma);
/// Uniform random 32-bit words.
void fill_u32(uint32_t* dst, int64_t n, uint64_t seed);

/// A CPU array of approximately N(0, sigma) values in `dtype` (a float type).
Array random_normal(const Shape& shape, Dtype dtype, uint64_t seed, float sigma = 1.0f);

/// T tokens x k distinct experts of E each, uniformly at random (row-major (T, k)).
std::vector<int32_t> random_routing(int64_t T, int64_t E, int64_t k, uint64_t seed);
/// Number of distinct values (experts) in a routing.
int64_t count_distinct(const std::vector<int32_t>& idx);

}  // namespace mmkit::tools
