// Small output helpers shared by the mmkit command's tools: number
// formatting, aligned text tables and a progress bar on stderr.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace mmkit::tools {

/// Seconds on a monotonic clock.
inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Median (mean of the two middle values for an even count); 0 when empty.
double median(std::vector<double> v);

/// "1.50 GB", "33.0 MB", "512 B" (powers of 1000, as bandwidths are quoted).
std::string fmt_bytes(double bytes);
/// printf("%.*f").
std::string fmt_fixed(double v, int digits);
/// Microseconds with a unit that keeps 3-4 significant digits: "8.41 us", "227 ms".
std::string fmt_time_us(double us);
/// "1.2e-03"-style for errors.
std::string fmt_sci(double v, int digits = 1);

/// Columns padded to their widest cell; right_align[i] right-aligns column i.
std::string format_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows,
                         const std::vector<bool>& right_align = {});

bool stderr_is_tty();

/// A one-line progress bar redrawn on stderr. Draws only when stderr is a
/// terminal, and only once `delay_s` has passed (quick steps stay silent).
class Progress {
 public:
  Progress(std::string label, int64_t total, double delay_s = 0.0);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  void update(int64_t done, const std::string& what = "");
  void set_total(int64_t total) { total_ = total > 0 ? total : 1; }
  /// Erases the bar (if one was drawn).
  void finish();
  bool drew() const { return drew_; }
  double elapsed_s() const { return now_s() - start_; }

 private:
  std::string label_;
  int64_t total_;
  double delay_s_;
  double start_;
  double last_draw_ = 0.0;
  bool enabled_;
  bool drew_ = false;
};

}  // namespace mmkit::tools
