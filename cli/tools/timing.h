// The one timing loop of the demo and the bench. On the CPU every call is
// timed alone (calls are synchronous). On a GPU calls run back to back in
// groups of about 2 ms with one synchronize per group, so each sample is
// launch-inclusive but the host-device round trip of a synchronize (tens of
// microseconds in a VM) is not charged to every call.
#pragma once

#include <algorithm>
#include <vector>

#include "mmkit/array.h"
#include "tools/machine.h"
#include "tools/util.h"

namespace mmkit::tools {

struct TimingPolicy {
  double budget_s = 0.3;  // timed seconds to aim for, after the warm-up
  int min_samples = 5;    // 3 when a single call exceeds the budget
  int max_samples = 100;
};

/// Per call: seconds and bytes moved (a group's mean on a GPU).
struct TimedSample {
  double seconds = 0;
  double bytes = 0;
};

/// Runs call(0) as a warm-up, then call(1), call(2), ... until the policy is
/// met. `call(i)` returns the op's output Array; `bytes_of(i)` the bytes call i moves.
template <typename Call, typename Bytes>
std::vector<TimedSample> time_calls(Device d, const TimingPolicy& p, const Call& call, const Bytes& bytes_of) {
  int next = 0;
  double t0 = now_s();
  { Array out = call(next++); }
  sync_device(d);
  double single = now_s() - t0;
  int group = 1;
  if (d.is_gpu()) {
    t0 = now_s();  // a second, warm call sizes the groups
    { Array out = call(next++); }
    sync_device(d);
    single = now_s() - t0;
    group = std::clamp(static_cast<int>(2e-3 / std::max(single, 1e-7)), 1, 64);
  }
  const bool slow = single > p.budget_s;
  const int min_samples = slow ? std::min(p.min_samples, 3) : p.min_samples;
  std::vector<TimedSample> out;
  double spent = 0;
  while (static_cast<int>(out.size()) < p.max_samples &&
         (static_cast<int>(out.size()) < min_samples || (!slow && spent < p.budget_s))) {
    double bytes = 0;
    t0 = now_s();
    for (int g = 0; g < group; ++g) {
      bytes += bytes_of(next);
      Array o = call(next++);
    }
    sync_device(d);
    const double t = now_s() - t0;
    spent += t;
    out.push_back({t / group, bytes / group});
  }
  return out;
}

/// Summary of samples against a roofline: median/min microseconds, median
/// GB/s and median percent of the roofline (0 when the roofline is unknown).
struct TimingSummary {
  int samples = 0;
  double us_median = 0, us_min = 0, gbps = 0, pct_roofline = 0, bytes = 0;
};

inline TimingSummary summarize(const std::vector<TimedSample>& s, double flops, const Roofline& roof) {
  TimingSummary r;
  r.samples = static_cast<int>(s.size());
  if (s.empty()) return r;
  std::vector<double> t, gbps, pct, bytes;
  for (const auto& x : s) {
    t.push_back(x.seconds);
    bytes.push_back(x.bytes);
    gbps.push_back(x.bytes / x.seconds / 1e9);
    const double tmin = roof.t_min_s(x.bytes, flops);
    pct.push_back(tmin > 0 ? 100.0 * tmin / x.seconds : 0.0);
  }
  r.us_median = median(t) * 1e6;
  r.us_min = *std::min_element(t.begin(), t.end()) * 1e6;
  r.gbps = median(gbps);
  r.pct_roofline = median(pct);
  r.bytes = median(bytes);
  return r;
}

}  // namespace mmkit::tools
