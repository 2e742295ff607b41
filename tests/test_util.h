// Shared test helpers: the device under test, random data, comparisons
// against the float64 reference.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "mmkit/mmkit.h"
#include "ref/ref.h"

namespace mmkit::test {

/// The device the suite runs on: MMKIT_TEST_DEVICE=cpu (default) or gpu.
Device test_device();
/// Skips the current test with a reason when the test device is unavailable.
bool device_unavailable(std::string* why);
void print_environment();

#define MMKIT_REQUIRE_DEVICE()                                          \
  do {                                                                  \
    std::string why_;                                                   \
    if (::mmkit::test::device_unavailable(&why_)) GTEST_SKIP() << why_; \
  } while (0)

/// Array of N(0, sigma) values in dtype (on the CPU).
Array randn(const Shape& shape, Dtype dt, uint64_t seed, double sigma = 1.0);
/// Array of random integers in [lo, hi] in dtype.
Array randint(const Shape& shape, Dtype dt, uint64_t seed, int lo, int hi);

/// Element-wise |y - ref| <= atol + rtol*|ref|; reports the first mismatch.
::testing::AssertionResult all_close(const Array& y, const ref::Tensor& r, double rtol, double atol);
/// Bit-identical arrays (same shape, dtype, bytes); reports the first mismatch.
::testing::AssertionResult bit_equal(const Array& y, const Array& expect);

/// Tolerances for a float64 comparison of an fp32-accumulated result in dt.
double rtol_for(Dtype dt);

}  // namespace mmkit::test
