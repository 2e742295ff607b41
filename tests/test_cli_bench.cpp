// `mmkit bench`: the JSON schema of a --quick run, the roofline PNG (decoded
// here independently of the writer) and case selection.
#include <nlohmann/json.hpp>
#include <set>

#include "cli_helpers.h"
#include "test_util.h"
#include "tools/bench.h"
#include "tools/png.h"

namespace mmkit::test {
namespace {

uint32_t be32(const std::string& s, size_t at) {
  return (static_cast<uint32_t>(static_cast<uint8_t>(s[at])) << 24) |
         (static_cast<uint32_t>(static_cast<uint8_t>(s[at + 1])) << 16) |
         (static_cast<uint32_t>(static_cast<uint8_t>(s[at + 2])) << 8) | static_cast<uint8_t>(s[at + 3]);
}

const uint8_t* bytes(const std::string& s, size_t at = 0) { return reinterpret_cast<const uint8_t*>(s.data() + at); }

TEST(CliPng, ChecksumsMatchKnownValues) {
  const std::string check = "123456789";
  EXPECT_EQ(tools::crc32(bytes(check), check.size()), 0xcbf43926u);  // the CRC-32 check value
  const std::string wiki = "Wikipedia";
  EXPECT_EQ(tools::adler32(bytes(wiki), wiki.size()), 0x11e60398u);
}

/// Decodes a palette PNG made of stored deflate blocks back into pixels.
std::vector<uint8_t> decode_stored_png(const std::string& png, int* w, int* h) {
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  std::string idat;
  size_t at = 8;
  bool saw_end = false;
  while (at + 12 <= png.size()) {
    const uint32_t len = be32(png, at);
    const std::string type = png.substr(at + 4, 4);
    EXPECT_EQ(tools::crc32(bytes(png, at + 4), len + 4), be32(png, at + 8 + len)) << type;
    if (type == "IHDR") {
      *w = static_cast<int>(be32(png, at + 8));
      *h = static_cast<int>(be32(png, at + 12));
      EXPECT_EQ(png[at + 16], 8);  // bit depth
      EXPECT_EQ(png[at + 17], 3);  // palette colour
    }
    if (type == "IDAT") idat += png.substr(at + 8, len);
    if (type == "IEND") saw_end = true;
    at += 12 + len;
  }
  EXPECT_TRUE(saw_end);
  EXPECT_EQ(at, png.size());
  // zlib: CMF/FLG, then stored blocks (BTYPE 00), then Adler-32.
  EXPECT_EQ((static_cast<uint8_t>(idat[0]) * 256 + static_cast<uint8_t>(idat[1])) % 31, 0);
  std::string raw;
  size_t p = 2;
  for (bool last = false; !last;) {
    const uint8_t hdr = static_cast<uint8_t>(idat[p]);
    last = hdr & 1;
    EXPECT_EQ(hdr >> 1, 0);
    const size_t len = static_cast<uint8_t>(idat[p + 1]) | (static_cast<uint8_t>(idat[p + 2]) << 8);
    const size_t nlen = static_cast<uint8_t>(idat[p + 3]) | (static_cast<uint8_t>(idat[p + 4]) << 8);
    EXPECT_EQ(len ^ 0xffff, nlen);
    raw += idat.substr(p + 5, len);
    p += 5 + len;
  }
  EXPECT_EQ(be32(idat, p), tools::adler32(bytes(raw), raw.size()));
  EXPECT_EQ(raw.size(), static_cast<size_t>(*h) * (*w + 1));
  std::vector<uint8_t> px;
  for (int y = 0; y < *h; ++y) {
    EXPECT_EQ(raw[y * (*w + 1)], 0) << "filter byte of row " << y;
    px.insert(px.end(), bytes(raw, y * (*w + 1) + 1), bytes(raw, (y + 1) * (*w + 1)));
  }
  return px;
}

TEST(CliPng, RoundTripsPixels) {
  tools::Canvas cv(300, 260, 0);  // > 65535 bytes: several stored blocks
  cv.line(0, 0, 299, 259, 1);
  cv.disc(150, 130, 10, 2);
  cv.text(5, 5, "Roofline 12.5 GB/s", 3, 2);
  ScratchDir dir;
  tools::write_png(dir.file("a.png"), cv, {{255, 255, 255}, {0, 0, 0}, {255, 0, 0}, {0, 0, 255}});
  int w = 0, h = 0;
  const auto px = decode_stored_png(read_text(dir.file("a.png")), &w, &h);
  ASSERT_EQ(w, 300);
  ASSERT_EQ(h, 260);
  EXPECT_EQ(px, cv.pixels());
  EXPECT_EQ(cv.at(0, 0), 1);
  EXPECT_EQ(cv.at(299, 259), 1);
  EXPECT_EQ(cv.at(150, 130), 2);
  EXPECT_EQ(std::count(px.begin(), px.end(), 3) > 100, true);  // the text left ink
}

TEST(CliBench, QuickCasesAreUniqueAndCoverEveryOp) {
  const auto cases = tools::bench_cases(true, Device::cpu());
  std::set<std::string> names, ops;
  for (const auto& c : cases) {
    EXPECT_TRUE(names.insert(c.name).second) << c.name;
    ops.insert(c.op);
  }
  EXPECT_EQ(ops, (std::set<std::string>{"quantized_matmul", "gather_qmm", "dequantize"}));
  // The full suite covers PERF.md's shapes and every MoE preset.
  std::set<std::string> presets;
  for (const auto& c : tools::bench_cases(false, Device::cpu())) presets.insert(c.preset);
  for (const char* p : {"qwen3-30b-a3b", "gpt-oss-120b", "mixtral-8x7b", "deepseek-v3"}) EXPECT_TRUE(presets.count(p)) << p;
}

TEST(CliBench, FilterSelectsCases) {
  tools::BenchOptions o;
  o.quick = true;
  o.device = "cpu";
  o.filter = "^dequantize";
  o.budget_s = 0;
  o.min_reps = 1;
  const auto r = tools::run_bench(o);
  ASSERT_EQ(r.records.size(), 1u);
  EXPECT_EQ(r.records[0].c.op, "dequantize");
  EXPECT_TRUE(r.records[0].ok()) << r.records[0].status;
  o.filter = "no such case";
  EXPECT_THROW(tools::run_bench(o), Error);
}

TEST(CliBench, CommandWritesJsonAndPlot) {
  ScratchDir dir;
  const CliRun r = run_cli(dir, "bench --quick --device cpu --budget 0.01 --json '" + dir.file("b.json") + "' --plot '" +
                                    dir.file("b.png") + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("% roofline"), std::string::npos) << r.out;
  const auto j = nlohmann::json::parse(read_text(dir.file("b.json")));
  for (const char* k : {"mmkit_version", "commit", "date", "machine", "device", "roofline", "cases"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["mmkit_version"], version());
  EXPECT_FALSE(j["commit"].get<std::string>().empty());
  for (const char* k : {"cpu_model", "threads", "isa", "cpu_features", "cuda_built", "gpu_count"})
    EXPECT_TRUE(j["machine"].contains(k)) << k;
  EXPECT_GE(j["machine"]["threads"].get<int>(), 1);
  EXPECT_GT(j["roofline"]["bandwidth_gbps"].get<double>(), 0.0);
  ASSERT_TRUE(j["cases"].is_array());
  ASSERT_EQ(j["cases"].size(), tools::bench_cases(true, Device::cpu()).size());
  std::set<std::string> ops;
  for (const auto& c : j["cases"]) {
    for (const char* k : {"op", "name", "shape", "dtype", "mode", "bits", "group_size", "status", "us_median", "us_min",
                          "gbps", "pct_roofline", "bytes", "flops"})
      EXPECT_TRUE(c.contains(k)) << k << " in " << c.dump();
    ops.insert(c["op"].get<std::string>());
    EXPECT_EQ(c["dtype"], "bfloat16");
    ASSERT_EQ(c["status"], "ok") << c.dump();
    EXPECT_GT(c["us_min"].get<double>(), 0.0);
    EXPECT_LE(c["us_min"].get<double>(), c["us_median"].get<double>());
    EXPECT_GT(c["gbps"].get<double>(), 0.0);
    EXPECT_GT(c["pct_roofline"].get<double>(), 0.0);
    EXPECT_TRUE(c["shape"].contains("N") && c["shape"].contains("K")) << c.dump();
  }
  EXPECT_EQ(ops, (std::set<std::string>{"quantized_matmul", "gather_qmm", "dequantize"}));
  int w = 0, h = 0;
  const auto px = decode_stored_png(read_text(dir.file("b.png")), &w, &h);
  EXPECT_GT(w, 100);
  EXPECT_GT(h, 100);
  EXPECT_GT(std::count(px.begin(), px.end(), 0), w * h / 2);  // mostly background
}

TEST(CliBench, BadOptionsAreOneErrorLine) {
  ScratchDir dir;
  CliRun r = run_cli(dir, "bench --quick --device cpu --filter '['");
  EXPECT_EQ(r.rc, 1);
  ASSERT_EQ(r.err_lines().size(), 1u) << r.err;
  EXPECT_NE(r.err.find("mmkit: error: [bench] invalid --filter"), std::string::npos) << r.err;
  r = run_cli(dir, "bench --quick --device tpu");
  EXPECT_EQ(r.rc, 1);
  ASSERT_EQ(r.err_lines().size(), 1u) << r.err;
  EXPECT_NE(r.err.find("Unknown device 'tpu'"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace mmkit::test
