// A minimal raster canvas and PNG writer for `mmkit bench --plot`.
//
// The PNG is 8-bit palette colour, compressed with deflate "stored" blocks
// (no compression). That keeps the writer ~100 lines with no dependency
// beyond the C++ library; a 900x600 plot is ~540 kB, which is fine for a
// benchmark artifact and readable by every PNG decoder.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace mmkit::tools {

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc = 0);
uint32_t adler32(const uint8_t* data, size_t n, uint32_t adler = 1);

using Rgb = std::array<uint8_t, 3>;

/// Pixels are palette indices; (0, 0) is the top-left corner.
class Canvas {
 public:
  Canvas(int width, int height, uint8_t background);
  int width() const { return w_; }
  int height() const { return h_; }
  uint8_t at(int x, int y) const { return px_[static_cast<size_t>(y) * w_ + x]; }
  void set(int x, int y, uint8_t c);
  void fill_rect(int x0, int y0, int x1, int y1, uint8_t c);  // inclusive corners
  /// A line `thickness` pixels wide; dash > 0 draws dash-pixel segments with equal gaps.
  void line(int x0, int y0, int x1, int y1, uint8_t c, int thickness = 1, int dash = 0);
  void disc(int cx, int cy, int r, uint8_t c);
  /// 5x7 pixel glyphs scaled by `scale`; lower case prints as upper case.
  void text(int x, int y, const std::string& s, uint8_t c, int scale = 1);
  static int text_width(const std::string& s, int scale = 1) { return static_cast<int>(s.size()) * 6 * scale; }
  static int text_height(int scale = 1) { return 7 * scale; }
  const std::vector<uint8_t>& pixels() const { return px_; }

 private:
  int w_, h_;
  std::vector<uint8_t> px_;
};

/// The PNG file bytes for `canvas` with `palette` (at most 256 colours).
std::vector<uint8_t> encode_png(const Canvas& canvas, const std::vector<Rgb>& palette);
/// Writes encode_png(...) to `path`; throws mmkit::Error on I/O failure.
void write_png(const std::string& path, const Canvas& canvas, const std::vector<Rgb>& palette);

}  // namespace mmkit::tools
