// Thread safety: every op called from many std::threads at once, on shared
// inputs and on private copies, gives bit-identical results to serial calls
// (the CPU kernels use OpenMP inside each call as well). On a GPU each thread
// also gets its own stream from Stream::create. Errors thrown concurrently
// keep their messages. The ThreadSanitizer stage runs these tests too.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace mmkit::test {
namespace {

constexpr int kThreads = 8;
constexpr int kRounds = 2;

/// The inputs every job reads (on the test device).
struct Inputs {
  Array w_f32, w_bf16, x, x_bf16, q_wq, q_s, q_b, mx_wq, mx_s, nv_wq, nv_s, a, b, b_t, lhs, rhs, rhs_sorted, mo, ml,
      mr_f, fp8_bytes, gscale, bad_rhs;
};

Inputs make_inputs(Device d, uint64_t seed) {
  Inputs in;
  auto on = [&](const Array& a) { return a.to(d); };
  in.w_f32 = on(randn({4, 48, 128}, Dtype::float32, seed + 1));
  in.w_bf16 = on(randn({48, 256}, Dtype::bfloat16, seed + 2));
  in.x = on(randn({4, 5, 128}, Dtype::float32, seed + 3));
  in.x_bf16 = on(randn({7, 256}, Dtype::bfloat16, seed + 4));
  auto q = quantize(in.w_f32, 64, 4, "affine");
  in.q_wq = q[0];
  in.q_s = q[1];
  in.q_b = q[2];
  auto mx = quantize(in.w_f32, 32, 4, "mxfp4");
  in.mx_wq = mx[0];
  in.mx_s = mx[1];
  auto nv = quantize(in.w_bf16, 16, 4, "nvfp4");
  in.nv_wq = nv[0];
  in.nv_s = nv[1];
  in.a = on(randn({3, 33, 70}, Dtype::float16, seed + 5));
  in.b = on(randn({4, 70, 65}, Dtype::float32, seed + 6));
  in.b_t = on(randn({4, 65, 70}, Dtype::float32, seed + 7)).swapaxes(-1, -2);
  in.lhs = on(Array::from_vector(std::vector<int32_t>{0, 2, 1, 1, 3, 0}));
  in.rhs = on(Array::from_vector(std::vector<int64_t>{3, 0, 1, 2, 2, 0}));
  in.rhs_sorted = on(Array::from_vector(std::vector<int64_t>{0, 0, 1, 2, 3, 3}));
  in.mo = on(randint({2, 3}, Dtype::bool_, seed + 8, 0, 1));
  in.ml = on(randint({3, 2, 3}, Dtype::bool_, seed + 9, 0, 1));
  in.mr_f = on(randn({3, 3, 3}, Dtype::float32, seed + 10));
  in.fp8_bytes = on(randint({4096}, Dtype::uint8, seed + 11, 0, 255));
  in.gscale = on(Array::scalar(3.5, Dtype::float32));
  // Host indices are checked at call time on every backend.
  in.bad_rhs = Array::from_vector(std::vector<int32_t>{0, 9});
  return in;
}

using Job = std::function<std::vector<Array>(const Inputs&, const StreamOrDevice&)>;

struct NamedJob {
  const char* name;
  Job run;
};

std::vector<NamedJob> jobs() {
  std::vector<NamedJob> j;
  j.push_back({"quantize affine", [](const Inputs& i, const StreamOrDevice& s) {
                 return quantize(i.w_bf16, 32, 3, "affine", std::nullopt, s);
               }});
  j.push_back({"quantize mxfp8", [](const Inputs& i, const StreamOrDevice& s) {
                 return quantize(i.w_f32, std::nullopt, std::nullopt, "mxfp8", std::nullopt, s);
               }});
  j.push_back({"quantize nvfp4 global scale", [](const Inputs& i, const StreamOrDevice& s) {
                 return quantize(i.w_bf16, 16, 4, "nvfp4", i.gscale, s);
               }});
  j.push_back({"dequantize affine", [](const Inputs& i, const StreamOrDevice& s) {
                 return std::vector<Array>{dequantize(i.q_wq, i.q_s, i.q_b, 64, 4, "affine", std::nullopt,
                                                      Dtype::bfloat16, s)};
               }});
  j.push_back({"dequantize nvfp4", [](const Inputs& i, const StreamOrDevice& s) {
                 return std::vector<Array>{dequantize(i.nv_wq, i.nv_s, std::nullopt, 16, 4, "nvfp4", i.gscale,
                                                      Dtype::float32, s)};
               }});
  j.push_back({"to_fp8 / from_fp8", [](const Inputs& i, const StreamOrDevice& s) {
                 return std::vector<Array>{to_fp8(i.w_bf16, s), from_fp8(i.fp8_bytes, Dtype::float16, s)};
               }});
  j.push_back({"quantized_matmul", [](const Inputs& i, const StreamOrDevice& s) {
                 return std::vector<Array>{
                     quantized_matmul(i.x, i.q_wq, i.q_s, i.q_b, true, 64, 4, "affine", s),
                     quantized_matmul(i.x_bf16.slice(1, 0, 48), i.q_wq.index(0, 1), i.q_s.index(0, 1),
                                      i.q_b.index(0, 1), false, 64, 4, "affine", s)};
               }});
  j.push_back({"quantized_matmul nvfp4", [](const Inputs& i, const StreamOrDevice& s) {
                 return std::vector<Array>{
                     quantized_matmul(i.x_bf16, i.nv_wq, i.nv_s, std::nullopt, true, 16, 4, "nvfp4", s)};
               }});
  j.push_back({"gather_qmm", [](const Inputs& i, const StreamOrDevice& s) {
                 return std::vector<Array>{
                     gather_qmm(i.x, i.mx_wq, i.mx_s, std::nullopt, i.lhs, i.rhs, true, 32, 4, "mxfp4", false, s),
                     gather_qmm(i.x, i.q_wq, i.q_s, i.q_b, std::nullopt, i.rhs_sorted.reshape({6, 1}), true, 64, 4,
                                "affine", true, s)};
               }});
  j.push_back({"gather_mm", [](const Inputs& i, const StreamOrDevice& s) {
                 return std::vector<Array>{gather_mm(i.a, i.b, i.lhs.slice(0, 0, 3), i.rhs.slice(0, 0, 3), false, s),
                                           gather_mm(i.a, i.b_t, std::nullopt, i.rhs_sorted.slice(0, 0, 3), true, s),
                                           matmul(i.a, i.b.index(0, 2), s)};
               }});
  j.push_back({"block_masked_mm", [](const Inputs& i, const StreamOrDevice& s) {
                 return std::vector<Array>{
                     block_masked_mm(i.a, i.b.slice(0, 0, 3), 32, i.mo, i.ml, std::nullopt, s),
                     block_masked_mm(i.a, i.b_t.slice(0, 1, 4), 32, std::nullopt, i.ml.astype(Dtype::float32),
                                     i.mr_f, s)};
               }});
  return j;
}

/// Host copies of a job's outputs (compared bit for bit).
std::vector<Array> to_host(std::vector<Array> v) {
  for (auto& a : v) a = a.to(Device::cpu()).contiguous();
  return v;
}

std::string compare(const std::vector<Array>& got, const std::vector<Array>& expect) {
  if (got.size() != expect.size()) return "different number of outputs";
  for (size_t k = 0; k < got.size(); ++k) {
    auto r = bit_equal(got[k], expect[k]);
    if (!r) return "output " + std::to_string(k) + ": " + r.message();
  }
  return "";
}

/// Runs every job from kThreads threads at once, kRounds times each in a
/// per-thread shuffled order; `private_inputs` gives every thread its own
/// copies; `streams` gives every thread its own GPU stream.
void run_concurrently(Device d, bool private_inputs, bool streams) {
  const Inputs shared = make_inputs(d, 100);
  const std::vector<NamedJob> js = jobs();
  std::vector<std::vector<Array>> expect;
  for (const auto& j : js) expect.push_back(to_host(j.run(shared, d)));

  std::mutex mu;
  std::vector<std::string> failures;
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        const Inputs own = private_inputs ? make_inputs(d, 100) : shared;
        Stream st = streams ? Stream::create(d) : Stream(d);
        const StreamOrDevice sd = streams ? StreamOrDevice(st) : StreamOrDevice(d);
        std::vector<size_t> order(js.size());
        for (size_t k = 0; k < order.size(); ++k) order[k] = k;
        std::mt19937 g(static_cast<unsigned>(t));
        ++ready;
        while (ready.load() < kThreads) std::this_thread::yield();  // start together
        for (int r = 0; r < kRounds; ++r) {
          std::shuffle(order.begin(), order.end(), g);
          for (size_t k : order) {
            std::vector<Array> out = js[k].run(own, sd);
            if (streams) st.synchronize();
            const std::string why = compare(to_host(out), expect[k]);
            if (!why.empty()) {
              std::lock_guard<std::mutex> lock(mu);
              failures.push_back("thread " + std::to_string(t) + " " + js[k].name + ": " + why);
            }
          }
          // Concurrent errors keep their own message.
          try {
            gather_qmm(own.x, own.q_wq, own.q_s, own.q_b, std::nullopt, own.bad_rhs, true, 64, 4, "affine", false, sd);
            if (streams) st.synchronize();
            std::lock_guard<std::mutex> lock(mu);
            failures.push_back("thread " + std::to_string(t) + ": out-of-range index accepted");
          } catch (const Error& e) {
            if (std::string(e.what()).rfind("[gather_qmm]", 0) != 0) {
              std::lock_guard<std::mutex> lock(mu);
              failures.push_back(std::string("unexpected message: ") + e.what());
            }
          }
        }
        if (streams) st.destroy();
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mu);
        failures.push_back("thread " + std::to_string(t) + " threw: " + e.what());
      }
    });
  }
  for (auto& th : threads) th.join();
  for (const auto& f : failures) ADD_FAILURE() << f;
  EXPECT_TRUE(failures.empty());
}

TEST(Concurrency, SharedInputsManyThreadsMatchSerialBitForBit) {
  MMKIT_REQUIRE_DEVICE();
  run_concurrently(test_device(), false, false);
}

TEST(Concurrency, PrivateInputsManyThreadsMatchSerialBitForBit) {
  MMKIT_REQUIRE_DEVICE();
  run_concurrently(test_device(), true, false);
}

TEST(Concurrency, OneStreamPerThreadMatchesSerialBitForBit) {
  MMKIT_REQUIRE_DEVICE();
  if (!test_device().is_gpu()) {
    // CPU streams are plain tags; still run so the Stream overloads are covered.
    run_concurrently(Device::cpu(), false, true);
    return;
  }
  run_concurrently(test_device(), false, true);
}

TEST(Concurrency, FirstUseFromManyThreadsAtOnce) {
  // The registries are built on first use; many first calls at once must
  // all see a complete registry. (In this process earlier tests may already
  // have built it; the test still checks concurrent dispatch of new
  // descriptor keys, which MMKIT_LOG_DISPATCH records under a lock.)
  MMKIT_REQUIRE_DEVICE();
  const Device d = test_device();
  std::vector<std::thread> th;
  std::atomic<int> bad{0};
  for (int t = 0; t < kThreads; ++t)
    th.emplace_back([&, t] {
      try {
        Array w = randn({8 + t, 64}, Dtype::float32, 500 + t).to(d);
        auto q = quantize(w, 32, 2 + t % 3, "affine");
        Array y = dequantize(q[0], q[1], q[2], 32, 2 + t % 3);
        if (y.shape() != w.shape()) ++bad;
      } catch (...) {
        ++bad;
      }
    });
  for (auto& x : th) x.join();
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace mmkit::test
