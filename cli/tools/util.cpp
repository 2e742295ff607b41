#include "tools/util.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>

namespace mmkit::tools {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string fmt_fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string fmt_bytes(double b) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  int u = 0;
  while (std::fabs(b) >= 1000.0 && u < 4) {
    b /= 1000.0;
    ++u;
  }
  if (u == 0) return fmt_fixed(b, 0) + " B";
  return fmt_fixed(b, b < 10 ? 2 : (b < 100 ? 1 : 0)) + " " + units[u];
}

std::string fmt_time_us(double us) {
  if (!(us >= 0)) return "n/a";
  auto sig = [](double v) { return fmt_fixed(v, v < 10 ? 2 : (v < 100 ? 1 : 0)); };
  if (us < 1000.0) return sig(us) + " us";
  if (us < 1e6) return sig(us / 1e3) + " ms";
  return sig(us / 1e6) + " s";
}

std::string fmt_sci(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*e", digits, v);
  return buf;
}

std::string format_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows,
                         const std::vector<bool>& right_align) {
  std::vector<size_t> w(header.size(), 0);
  for (size_t i = 0; i < header.size(); ++i) w[i] = header[i].size();
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  auto line = [&](const std::vector<std::string>& r) {
    std::string s;
    for (size_t i = 0; i < w.size(); ++i) {
      const std::string cell = i < r.size() ? r[i] : "";
      const std::string pad(w[i] - cell.size(), ' ');
      const bool right = i < right_align.size() && right_align[i];
      s += right ? pad + cell : cell + (i + 1 < w.size() ? pad : "");
      if (i + 1 < w.size()) s += "  ";
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s + "\n";
  };
  std::string out = line(header);
  size_t total = 0;
  for (size_t i = 0; i < w.size(); ++i) total += w[i] + (i + 1 < w.size() ? 2 : 0);
  out += std::string(total, '-') + "\n";
  for (const auto& r : rows) out += line(r);
  return out;
}

bool stderr_is_tty() { return ::isatty(STDERR_FILENO) == 1; }

Progress::Progress(std::string label, int64_t total, double delay_s)
    : label_(std::move(label)), total_(std::max<int64_t>(total, 1)), delay_s_(delay_s), start_(now_s()),
      enabled_(stderr_is_tty()) {}

Progress::~Progress() { finish(); }

void Progress::update(int64_t done, const std::string& what) {
  if (!enabled_) return;
  const double t = now_s();
  if (t - start_ < delay_s_) return;
  // Redraw at most ~20 times a second: a terminal is slower than a fast loop.
  if (drew_ && t - last_draw_ < 0.05 && done < total_) return;
  last_draw_ = t;
  constexpr int kWidth = 30;
  const double frac = std::clamp(static_cast<double>(done) / static_cast<double>(total_), 0.0, 1.0);
  const int fill = static_cast<int>(frac * kWidth + 0.5);
  std::string item = what;
  if (item.size() > 40) item = "..." + item.substr(item.size() - 37);
  std::fprintf(stderr, "\r\033[K%s [%s%s] %lld/%lld %s", label_.c_str(), std::string(fill, '#').c_str(),
               std::string(kWidth - fill, ' ').c_str(), static_cast<long long>(done),
               static_cast<long long>(total_), item.c_str());
  std::fflush(stderr);
  drew_ = true;
}

void Progress::finish() {
  if (drew_) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    drew_ = false;
  }
}

}  // namespace mmkit::tools
