// docs/errors.md is executable: every row of its tables names an example
// call defined here; the call must throw mmkit::Error whose message starts
// with the documented prefix. And every throw_error(...) site in
// src/ops/*.cpp must be produced by the documented rows: the string literals
// of a site (those not inside a ?: choice) must all appear, in order, in the
// message of some row, and a literal signature that occurs at n sites must be
// matched by at least n rows. So the catalogue cannot drift from the code.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace mmkit::test {
namespace {

namespace fs = std::filesystem;

fs::path source_root() {
  if (const char* d = std::getenv("MMKIT_SOURCE_DIR")) return d;
  return fs::path(__FILE__).parent_path().parent_path();
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

/// A temporary file for the safetensors examples ("<file>" in the doc).
std::string temp_file() {
  static const std::string p =
      (fs::temp_directory_path() / ("mmkit_errors_doc_" + std::to_string(::getpid()) + ".safetensors")).string();
  return p;
}

void write_bytes(const std::string& bytes) {
  std::ofstream f(temp_file(), std::ios::binary | std::ios::trunc);
  f << bytes;
}

/// 8-byte little-endian header length + header + data.
std::string safetensors_bytes(const std::string& header, size_t data_bytes, uint64_t claimed_len = 0) {
  uint64_t n = claimed_len ? claimed_len : header.size();
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s + header + std::string(data_bytes, '\0');
}

// Arrays for the examples (CPU; validation is device-independent).
Array F(const Shape& s, Dtype d = Dtype::float32) { return Array::zeros(s, d); }
Array U(const Shape& s) { return Array::zeros(s, Dtype::uint32); }
Array U8(const Shape& s) { return Array::zeros(s, Dtype::uint8); }
Array I32(const std::vector<int32_t>& v) { return Array::from_vector(v); }

using Example = std::function<void()>;

const std::map<std::string, Example>& examples() {
  static const std::map<std::string, Example> m = [] {
    std::map<std::string, Example> e;
    const std::optional<Array> none;
    // quantize
    e["quantize_bad_mode"] = [] { quantize(F({4, 64}), std::nullopt, std::nullopt, "xyz"); };
    e["quantize_null_w"] = [] { quantize(Array()); };
    e["quantize_int_w"] = [] { quantize(F({4, 64}, Dtype::int32)); };
    e["quantize_1d"] = [] { quantize(F({64})); };
    e["quantize_gs0"] = [] { quantize(F({4, 64}), 0); };
    e["quantize_indivisible"] = [] { quantize(F({4, 48}), 64); };
    e["quantize_gscale_null"] = [] { quantize(F({4, 64}), 16, 4, "nvfp4", Array()); };
    e["quantize_gscale_mode"] = [] { quantize(F({4, 64}), 32, 4, "mxfp4", Array::scalar(1.0)); };
    e["quantize_gscale_shape"] = [] { quantize(F({4, 64}), 16, 4, "nvfp4", F({2})); };
    e["quantize_gscale_dtype"] = [] { quantize(F({4, 64}), 16, 4, "nvfp4", Array::scalar(1.0, Dtype::bfloat16)); };
    e["quantize_affine_gs"] = [] { quantize(F({4, 64}), 16, 4); };
    e["quantize_affine_bits"] = [] { quantize(F({4, 64}), 64, 7); };
    e["quantize_fp_gs"] = [] { quantize(F({4, 64}), 64, 4, "mxfp4"); };
    e["quantize_fp_bits"] = [] { quantize(F({4, 64}), 16, 8, "nvfp4"); };
    // dequantize
    e["dequantize_bad_mode"] = [] { dequantize(U({4, 8}), F({4, 1}), F({4, 1}), 64, 4, "int4"); };
    e["dequantize_null_scales"] = [] { dequantize(U({4, 8}), Array(), F({4, 1})); };
    e["dequantize_out_dtype"] = [] {
      dequantize(U({4, 8}), F({4, 1}), F({4, 1}), 64, 4, "affine", std::nullopt, Dtype::int32);
    };
    e["dequantize_no_biases"] = [] { dequantize(U({4, 8}), F({4, 1})); };
    e["dequantize_int_scales"] = [] { dequantize(U({4, 8}), F({4, 1}, Dtype::int32), F({4, 1}, Dtype::int32)); };
    e["dequantize_fp_scales_dtype"] = [] { dequantize(U({4, 4}), F({4, 1}), std::nullopt, 32, 4, "mxfp4"); };
    e["dequantize_fp_biases"] = [] { dequantize(U({4, 4}), U8({4, 1}), U8({4, 1}), 32, 4, "mxfp4"); };
    e["dequantize_bits0"] = [] { dequantize(U({4, 8}), F({4, 1}), F({4, 1}), 64, 0); };
    e["dequantize_gs_negative"] = [] { dequantize(U({4, 8}), F({4, 1}), F({4, 1}), -32, 4); };
    e["dequantize_w_dtype"] = [] { dequantize(F({4, 8}, Dtype::int32), F({4, 1}), F({4, 1})); };
    e["dequantize_1d"] = [] { dequantize(U({8}), F({1}), F({1})); };
    e["dequantize_gscale_mode"] = [] {
      dequantize(U({4, 4}), U8({4, 1}), std::nullopt, 32, 4, "mxfp4", Array::scalar(1.0));
    };
    e["dequantize_affine_bits"] = [] { dequantize(U({4, 7}), F({4, 1}), F({4, 1}), 32, 7); };
    e["dequantize_fp_bits"] = [] { dequantize(U({4, 4}), U8({4, 1}), std::nullopt, 32, 4, "mxfp8"); };
    e["dequantize_scales_rows"] = [] { dequantize(U({4, 8}), F({2, 1}), F({2, 1})); };
    e["dequantize_scales_cols"] = [] { dequantize(U({4, 4}), U8({4, 2}), std::nullopt, 32, 4, "mxfp4"); };
    // fp8
    e["to_fp8_null"] = [] { to_fp8(Array()); };
    e["to_fp8_int"] = [] { to_fp8(U8({4})); };
    e["from_fp8_float"] = [] { from_fp8(F({4})); };
    e["from_fp8_out_dtype"] = [] { from_fp8(U8({4}), Dtype::int8); };
    // quantized_matmul: w (32, 8) words = (32, 64) 4-bit, scales (32, 1) for gs 64
    e["qmm_bad_mode"] = [] { quantized_matmul(F({4, 64}), U({32, 8}), F({32, 1}), F({32, 1}), true, 64, 4, "xyz"); };
    e["qmm_null_x"] = [] { quantized_matmul(Array(), U({32, 8}), F({32, 1}), F({32, 1})); };
    e["qmm_no_biases"] = [] { quantized_matmul(F({4, 64}), U({32, 8}), F({32, 1})); };
    e["qmm_int_scales"] = [] {
      quantized_matmul(F({4, 64}), U({32, 8}), F({32, 1}, Dtype::int32), F({32, 1}, Dtype::int32));
    };
    e["qmm_fp_scales_dtype"] = [] {
      quantized_matmul(F({4, 32}), U({32, 4}), F({32, 1}, Dtype::float16), std::nullopt, true, 32, 4, "mxfp4");
    };
    e["qmm_fp_biases"] = [] {
      quantized_matmul(F({4, 32}), U({32, 4}), U8({32, 2}), U8({32, 2}), true, 16, 4, "nvfp4");
    };
    e["qmm_w_dtype"] = [] { quantized_matmul(F({4, 64}), F({32, 8}), F({32, 1}), F({32, 1})); };
    e["qmm_biases_shape"] = [] { quantized_matmul(F({4, 64}), U({32, 8}), F({32, 2}), F({32, 1})); };
    e["qmm_x_0d"] = [] { quantized_matmul(Array::scalar(1.0), U({32, 8}), F({32, 1}), F({32, 1})); };
    e["qmm_w_1d"] = [] { quantized_matmul(F({4, 64}), U({8}), F({1}), F({1})); };
    e["qmm_scales_ndim"] = [] { quantized_matmul(F({4, 64}), U({32, 8}), F({1, 32, 2}), F({1, 32, 2})); };
    e["qmm_scales_rows"] = [] { quantized_matmul(F({4, 64}), U({32, 8}), F({16, 1}), F({16, 1})); };
    e["qmm_affine_gs"] = [] { quantized_matmul(F({4, 256}), U({32, 32}), F({32, 1}), F({32, 1}), true, 256, 4); };
    e["qmm_fp_gs"] = [] {
      quantized_matmul(F({4, 32}), U({32, 8}), U8({32, 2}), std::nullopt, true, 16, 8, "mxfp8");
    };
    e["qmm_scales_cols"] = [] { quantized_matmul(F({4, 64}), U({32, 8}), F({32, 2}), F({32, 2})); };
    e["qmm_inner_dim"] = [] { quantized_matmul(F({4, 32}), U({32, 8}), F({32, 1}), F({32, 1})); };
    e["qmm_int_x"] = [] {
      quantized_matmul(F({4, 32}, Dtype::int32), U({32, 4}), U8({32, 1}), std::nullopt, true, 32, 4, "mxfp4");
    };
    e["qmm_2d_x_batched_w"] = [] { quantized_matmul(F({4, 64}), U({2, 32, 8}), F({2, 32, 1}), F({2, 32, 1})); };
    e["qmm_batch_broadcast"] = [] {
      quantized_matmul(F({3, 4, 64}), U({2, 32, 8}), F({2, 32, 1}), F({2, 32, 1}));
    };
    // gather_qmm
    e["gather_qmm_no_indices"] = [] { gather_qmm(F({4, 32}), U({32, 8}), F({32, 1}), F({32, 1})); };
    e["gather_qmm_bad_mode"] = [] {
      gather_qmm(F({3, 4, 64}), U({2, 32, 8}), F({2, 32, 1}), F({2, 32, 1}), std::nullopt, I32({0}), true, 64, 4,
                 "xyz");
    };
    e["gather_qmm_x_1d"] = [] { gather_qmm(F({64}), U({2, 32, 8}), F({2, 32, 1}), F({2, 32, 1}), std::nullopt, I32({0})); };
    e["gather_qmm_null_indices"] = [] {
      gather_qmm(F({3, 4, 64}), U({2, 32, 8}), F({2, 32, 1}), F({2, 32, 1}), std::nullopt, Array());
    };
    e["gather_qmm_float_indices"] = [] {
      gather_qmm(F({3, 4, 64}), U({2, 32, 8}), F({2, 32, 1}), F({2, 32, 1}), std::nullopt, F({2}));
    };
    e["gather_qmm_indices_broadcast"] = [] {
      gather_qmm(F({3, 4, 64}), U({2, 32, 8}), F({2, 32, 1}), F({2, 32, 1}), I32({0, 1}), I32({0, 1, 1}));
    };
    e["gather_qmm_rhs_out_of_range"] = [] {
      gather_qmm(F({2, 4, 64}), U({2, 32, 8}), F({2, 32, 1}), F({2, 32, 1}), std::nullopt, I32({1, 5}));
    };
    e["gather_qmm_lhs_negative"] = [] {
      gather_qmm(F({3, 4, 64}), U({2, 32, 8}), F({2, 32, 1}), F({2, 32, 1}), I32({-1, 0}), I32({1, 1}));
    };
    // gather_mm / matmul
    e["gather_mm_no_indices_batch"] = [] { gather_mm(F({2, 4, 8}), F({3, 8, 5})); };
    e["gather_mm_null_a"] = [] { gather_mm(Array(), F({3, 8, 5}), I32({0}), I32({0})); };
    e["gather_mm_0d"] = [] { gather_mm(Array::scalar(1.0), F({3, 8, 5}), std::nullopt, I32({0})); };
    e["gather_mm_inner_dim"] = [] { gather_mm(F({2, 4, 8}), F({3, 9, 5}), I32({0}), I32({0})); };
    e["gather_mm_int"] = [] {
      gather_mm(F({2, 4, 8}, Dtype::int32), F({3, 8, 5}, Dtype::int32), I32({0}), I32({0}));
    };
    e["gather_mm_bool_indices"] = [] {
      gather_mm(F({2, 4, 8}), F({3, 8, 5}), std::nullopt, F({1}, Dtype::bool_));
    };
    e["gather_mm_rhs_out_of_range"] = [] { gather_mm(F({2, 4, 8}), F({3, 8, 5}), I32({0}), I32({3})); };
    e["matmul_0d"] = [] { matmul(F({4, 8}), Array::scalar(2.0)); };
    e["matmul_inner_dim"] = [] { matmul(F({4, 8}), F({7, 2})); };
    // block_masked_mm
    const Array m22 = Array::full({2, 2}, 1.0, Dtype::bool_);
    e["bmm_block_size"] = [m22] { block_masked_mm(F({64, 64}), F({64, 64}), 16, m22); };
    e["bmm_0d"] = [m22] { block_masked_mm(Array::scalar(1.0), F({64, 64}), 32, m22); };
    e["bmm_inner_dim"] = [m22] { block_masked_mm(F({64, 64}), F({32, 64}), 32, m22); };
    e["bmm_int"] = [m22] { block_masked_mm(F({64, 64}, Dtype::int8), F({64, 64}, Dtype::bool_), 32, m22); };
    e["bmm_batch_broadcast"] = [m22] { block_masked_mm(F({2, 64, 64}), F({3, 64, 64}), 32, m22); };
    e["bmm_null_mask"] = [] { block_masked_mm(F({64, 64}), F({64, 64}), 32, std::nullopt, Array()); };
    e["bmm_mask_shape"] = [] { block_masked_mm(F({64, 64}), F({64, 64}), 32, F({3, 3}, Dtype::bool_)); };
    e["bmm_no_mask_inner_dim"] = [] { block_masked_mm(F({4, 8}), F({7, 2}), 64); };
    // outside the front ends
    const int64_t big = int64_t{1} << 40;
    e["array_shape_overflow"] = [big] { Array::empty({big, big}, Dtype::float32); };
    e["array_negative_dim"] = [] { Array::empty({4, -1}, Dtype::float32); };
    e["array_broadcast_overflow"] = [big] { Array::scalar(1.0).broadcast_to({big, big}); };
    e["array_broadcast_bad"] = [] { F({3}).broadcast_to({2}); };
    e["array_reshape_bad"] = [] { F({2, 3}).reshape({4, 2}); };
    e["safetensors_missing"] = [] { SafetensorsReader("/nonexistent/x.safetensors"); };
    e["safetensors_short"] = [] {
      write_bytes("abcd");
      SafetensorsReader r(temp_file());
    };
    e["safetensors_header_len"] = [] {
      write_bytes(safetensors_bytes("{}", 0, 1000));
      SafetensorsReader r(temp_file());
    };
    e["safetensors_bad_json"] = [] {
      write_bytes(safetensors_bytes("{\"a\": [1,", 0));
      SafetensorsReader r(temp_file());
    };
    e["safetensors_bad_offsets"] = [] {
      write_bytes(safetensors_bytes(R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 16));
      SafetensorsReader r(temp_file());
    };
    e["safetensors_truncated"] = [] {
      write_bytes(safetensors_bytes(R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})", 8));
      SafetensorsReader r(temp_file());
    };
    e["safetensors_overlap"] = [] {
      write_bytes(safetensors_bytes(
          R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
          8));
      SafetensorsReader r(temp_file());
    };
    (void)none;
    return e;
  }();
  return m;
}

struct Row {
  std::string op, condition, id, prefix;
  int line;
};

/// The rows of every 4-column table in docs/errors.md whose third column is
/// a `call id`.
std::vector<Row> doc_rows() {
  std::vector<Row> rows;
  std::istringstream in(read_file(source_root() / "docs" / "errors.md"));
  std::string line;
  int n = 0;
  const std::regex row_re(R"(^\|\s*([^|]+?)\s*\|\s*(.+?)\s*\|\s*`([a-z0-9_]+)`\s*\|\s*`(.*)`\s*\|\s*$)");
  while (std::getline(in, line)) {
    ++n;
    std::smatch m;
    if (std::regex_match(line, m, row_re)) rows.push_back({m[1], m[2], m[3], m[4], n});
  }
  return rows;
}

std::string substitute(std::string prefix) {
  const std::string key = "<file>";
  for (size_t p; (p = prefix.find(key)) != std::string::npos;) prefix.replace(p, key.size(), temp_file());
  return prefix;
}

/// Runs an example; returns its mmkit::Error message or a description of
/// what happened instead.
std::string message_of(const Example& f, bool* threw) {
  *threw = false;
  try {
    f();
  } catch (const Error& e) {
    *threw = true;
    return e.what();
  } catch (const std::exception& e) {
    return std::string("(not an mmkit::Error: ") + e.what() + ")";
  }
  return "(no exception)";
}

TEST(ErrorsDoc, EveryRowThrowsItsDocumentedMessage) {
  const std::vector<Row> rows = doc_rows();
  ASSERT_GT(rows.size(), 50u) << "docs/errors.md not found or not parsed under " << source_root();
  std::map<std::string, int> seen;
  for (const Row& r : rows) {
    SCOPED_TRACE("docs/errors.md:" + std::to_string(r.line) + " (" + r.id + ")");
    EXPECT_EQ(seen[r.id]++, 0) << "example id used twice";
    auto it = examples().find(r.id);
    ASSERT_NE(it, examples().end()) << "no example call named " << r.id << " in tests/test_errors_doc.cpp";
    bool threw = false;
    const std::string msg = message_of(it->second, &threw);
    EXPECT_TRUE(threw) << msg;
    const std::string prefix = substitute(r.prefix);
    EXPECT_EQ(msg.compare(0, prefix.size(), prefix), 0) << "message: " << msg << "\nprefix:  " << prefix;
  }
  for (const auto& [id, f] : examples()) EXPECT_EQ(seen.count(id), 1u) << "example " << id << " is not documented";
}

// ---------------------------------------------------------------------------
// throw sites of src/ops/*.cpp

struct Site {
  std::string where;                  // file:line
  std::vector<std::string> literals;  // in order, those not inside ?:
};

/// Reads a C++ string literal starting at s[i] == '"'; returns its value and
/// leaves i after the closing quote.
std::string read_literal(const std::string& s, size_t& i) {
  std::string v;
  for (++i; i < s.size() && s[i] != '"'; ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      ++i;
      v += s[i] == 'n' ? '\n' : s[i];
    } else {
      v += s[i];
    }
  }
  ++i;
  return v;
}

std::vector<Site> throw_sites() {
  std::vector<Site> sites;
  for (const auto& entry : fs::directory_iterator(source_root() / "src" / "ops")) {
    if (entry.path().extension() != ".cpp") continue;
    const std::string src = read_file(entry.path());
    const std::string key = "throw_error(";
    for (size_t p = src.find(key); p != std::string::npos; p = src.find(key, p + 1)) {
      if (p > 0 && (std::isalnum(static_cast<unsigned char>(src[p - 1])) || src[p - 1] == '_')) continue;
      Site site;
      site.where = entry.path().filename().string() + ":" +
                   std::to_string(std::count(src.begin(), src.begin() + static_cast<long>(p), '\n') + 1);
      int depth = 0;
      size_t i = p + key.size() - 1;  // at '('
      char prev = '(';                // last non-space character outside literals
      for (; i < src.size(); ) {
        const char c = src[i];
        if (c == '"') {
          const size_t start = i;
          std::string lit = read_literal(src, i);
          size_t j = i;
          while (j < src.size() && std::isspace(static_cast<unsigned char>(src[j]))) ++j;
          const bool in_choice = prev == '?' || prev == ':' || (j < src.size() && src[j] == ':' &&
                                                                 (j + 1 >= src.size() || src[j + 1] != ':'));
          // The op tag ("op" variable) is not a literal; a literal first
          // argument would be the tag itself, which the message shows as [tag].
          if (!in_choice && !lit.empty()) site.literals.push_back(lit);
          (void)start;
          prev = '"';
          continue;
        }
        if (c == '(') ++depth;
        if (c == ')' && --depth == 0) break;
        if (!std::isspace(static_cast<unsigned char>(c))) prev = c;
        ++i;
      }
      sites.push_back(site);
    }
  }
  return sites;
}

bool contains_in_order(const std::string& msg, const std::vector<std::string>& lits) {
  size_t pos = 0;
  for (const auto& l : lits) {
    const size_t f = msg.find(l, pos);
    if (f == std::string::npos) return false;
    pos = f + l.size();
  }
  return true;
}

TEST(ErrorsDoc, EveryThrowSiteInTheFrontEndsIsDocumented) {
  const std::vector<Site> sites = throw_sites();
  ASSERT_GT(sites.size(), 40u) << "no throw_error sites found under " << source_root() / "src" / "ops";
  std::vector<std::string> messages;
  for (const Row& r : doc_rows()) {
    auto it = examples().find(r.id);
    if (it == examples().end()) continue;  // reported by the other test
    bool threw = false;
    messages.push_back(message_of(it->second, &threw));
  }
  // Group sites by literal signature: n sites with the same literals need n rows.
  std::map<std::vector<std::string>, std::vector<std::string>> by_sig;
  for (const Site& s : sites) by_sig[s.literals].push_back(s.where);
  for (const auto& [sig, where] : by_sig) {
    size_t matched = 0;
    for (const auto& m : messages) matched += contains_in_order(m, sig);
    std::string lits;
    for (const auto& l : sig) lits += " \"" + l + "\"";
    std::string at;
    for (const auto& w : where) at += " src/ops/" + w;
    EXPECT_GE(matched, where.size()) << "throw site(s)" << at << " with literals" << lits << " are produced by "
                                     << matched << " documented row(s); add a row to docs/errors.md and its "
                                     << "example call to tests/test_errors_doc.cpp";
  }
}

}  // namespace
}  // namespace mmkit::test
