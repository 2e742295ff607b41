// Large shapes: offsets past 32 bits work, impossible sizes are refused with
// mmkit::Error (never a crash, a wrap-around or an abort).
//
// The big case is a quantized_matmul whose packed weight holds 2^32 + 2^22
// 4-bit codes in 2.15 GB, so element, word and byte offsets all pass 2^31
// (and element offsets 2^32). Every weight row has its own byte pattern, so
// reading a wrong row (a truncated offset) changes the result. It needs about
// 2.4 GB of free memory and skips with the reason when that is not available
// (and under ThreadSanitizer, whose shadow memory would need four times more).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <limits>
#include <string>

#include "test_util.h"

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MMKIT_TEST_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define MMKIT_TEST_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define MMKIT_TEST_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#define MMKIT_TEST_ASAN 1
#endif

// Under a sanitizer an impossible allocation must come back as nullptr (and
// so as mmkit::Error), as it does without one, instead of aborting the run.
#ifdef MMKIT_TEST_ASAN
extern "C" const char* __asan_default_options() { return "allocator_may_return_null=1"; }
#endif
#ifdef MMKIT_TEST_TSAN
extern "C" const char* __tsan_default_options() { return "allocator_may_return_null=1"; }
#endif

namespace mmkit::test {
namespace {

/// Bytes the process may still allocate: MemAvailable, capped by a cgroup limit.
uint64_t available_memory() {
  uint64_t avail = 0;
  std::ifstream mi("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (mi >> key >> kb >> unit)
    if (key == "MemAvailable:") avail = kb * 1024;
  std::ifstream maxf("/sys/fs/cgroup/memory.max"), curf("/sys/fs/cgroup/memory.current");
  std::string maxs;
  uint64_t cur = 0;
  if (maxf >> maxs && maxs != "max" && curf >> cur) {
    const uint64_t lim = std::stoull(maxs);
    avail = std::min<uint64_t>(avail, lim > cur ? lim - cur : 0);
  }
  return avail;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Large, ShapeOverflowIsAnError) {
  const int64_t big = int64_t{1} << 40;
  EXPECT_EQ(error_of([&] { Array::empty({big, big}, Dtype::float32); }).rfind("[array]", 0), 0u);
  EXPECT_EQ(error_of([&] { Array::zeros({big, big, big}, Dtype::uint8); }).rfind("[array]", 0), 0u);
  EXPECT_EQ(error_of([&] { Array::empty({4, -1}, Dtype::float32); }).rfind("[array]", 0), 0u);
  // A view whose element count does not fit in int64 is refused when made.
  const Array one = Array::scalar(1.0);
  EXPECT_EQ(error_of([&] { one.broadcast_to({big, big}); }).rfind("[shape]", 0), 0u);
  EXPECT_EQ(error_of([&] { Array::zeros({0}, Dtype::float32).reshape({big, big, 0}).reshape({big, big}); }).rfind("[shape]", 0), 0u);
}

TEST(Large, ImpossibleAllocationIsAnError) {
  // 2^50 bytes (1 PiB): fits size_t, no machine has it.
  const std::string m = error_of([] { Array::empty({int64_t{1} << 50}, Dtype::uint8); });
  EXPECT_EQ(m.rfind("[array] out of memory", 0), 0u) << m;
  // An op whose output cannot be allocated refuses the same way: quantize of
  // a broadcast view whose contiguous copy would be 2^42 bytes.
  const Array huge = Array::scalar(1.0, Dtype::float32).broadcast_to({int64_t{1} << 20, int64_t{1} << 20});
  const std::string q = error_of([&] { quantize(huge, 64, 4); });
  EXPECT_EQ(q.rfind("[array] out of memory", 0), 0u) << q;
}

TEST(Large, QuantizedMatmulWithOffsetsPast32Bits) {
  MMKIT_REQUIRE_DEVICE();
#ifdef MMKIT_TEST_TSAN
  GTEST_SKIP() << "skipped under ThreadSanitizer: 2.2 GB of data would need ~9 GB of shadow memory";
#endif
  // N x K = 65600 x 65536 4-bit codes = 2^32 + 2^22 codes, 2^31 + 2^21 bytes.
  const int64_t N = 65600, K = 65536, gs = 128, words = K / 8;
  const uint64_t need = static_cast<uint64_t>(N) * K / 2 + static_cast<uint64_t>(N) * (K / gs) * 4 +
                        (test_device().is_gpu() ? 0 : 0) + (uint64_t{256} << 20);
  const uint64_t avail = available_memory();
  if (avail < need + (need / 8))
    GTEST_SKIP() << "needs about " << (need >> 20) << " MiB of free memory, " << (avail >> 20) << " MiB available";

  Array wq = Array::empty({N, words}, Dtype::uint32);
  // Row n: every byte is p(n) = (n * 37 + 11) % 251 + 1, i.e. codes lo(p), hi(p).
  auto pattern = [](int64_t n) { return static_cast<uint8_t>((n * 37 + 11) % 251 + 1); };
  uint8_t* bytes = static_cast<uint8_t*>(wq.raw_data());
  for (int64_t n = 0; n < N; ++n) std::memset(bytes + n * (K / 2), pattern(n), static_cast<size_t>(K / 2));
  Array scales = Array::full({N, K / gs}, 1.0, Dtype::float16);
  Array biases = Array::zeros({N, K / gs}, Dtype::float16);
  Array x = Array::full({1, K}, 1.0, Dtype::float32);

  const Device d = test_device();
  Array y = quantized_matmul(x.to(d), wq.to(d), scales.to(d), biases.to(d), true, gs, 4, "affine").to(Device::cpu());
  ASSERT_EQ(y.shape(), (Shape{1, N}));
  ASSERT_EQ(y.dtype(), Dtype::float32);
  // Sum of row n's codes: K/2 * (lo + hi), an exact integer below 2^24.
  const float* v = y.data<float>();
  int64_t bad = 0, first = -1;
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t p = pattern(n);
    const float expect = static_cast<float>((K / 2) * ((p & 15) + (p >> 4)));
    if (v[n] != expect && bad++ == 0) first = n;
  }
  EXPECT_EQ(bad, 0) << "first wrong output column " << first << ": " << v[first] << " (row byte offset "
                    << first * (K / 2) << ")";

  // A view whose offset is past 2^31 bytes: the last four rows.
  Array tail = wq.to(d).slice(0, N - 4, N);
  Array dq = dequantize(tail, scales.to(d).slice(0, N - 4, N), biases.to(d).slice(0, N - 4, N), gs, 4, "affine",
                        std::nullopt, Dtype::float32)
                 .to(Device::cpu());
  ASSERT_EQ(dq.shape(), (Shape{4, K}));
  const float* dv = dq.data<float>();
  for (int64_t r = 0; r < 4; ++r) {
    const uint8_t p = pattern(N - 4 + r);
    for (int64_t k : {int64_t{0}, int64_t{1}, K - 2, K - 1})
      EXPECT_EQ(dv[r * K + k], static_cast<float>(k % 2 ? p >> 4 : p & 15)) << "row " << N - 4 + r << " col " << k;
  }
}

}  // namespace
}  // namespace mmkit::test
