// `mmkit quantize` (tools::quantize_safetensors and the command): the output
// must be exactly what mmkit::quantize gives for each selected tensor, every
// other tensor must pass through byte for byte, and bad input must fail with
// one error line and no output file left behind.
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "test_util.h"
#include "tools/quantize_file.h"

namespace mmkit::test {
namespace {

using tools::QuantizeFileOptions;
using tools::quantize_safetensors;

struct Checkpoint {
  std::map<std::string, Array> tensors;
  std::map<std::string, std::string> metadata{{"format", "pt"}, {"note", "keep me"}};
};

// A small model: a mix of dtypes and of tensors that must or must not be quantized.
Checkpoint make_checkpoint() {
  Checkpoint c;
  c.tensors["model.embed_tokens.weight"] = randn({32, 128}, Dtype::bfloat16, 1, 0.5);
  c.tensors["model.layers.0.input_layernorm.weight"] = randn({128}, Dtype::bfloat16, 2);
  c.tensors["model.layers.0.self_attn.q_proj.weight"] = randn({64, 128}, Dtype::float16, 3, 0.1);
  c.tensors["model.layers.0.self_attn.q_proj.bias"] = randn({64}, Dtype::float16, 4);
  c.tensors["model.layers.0.mlp.switch_mlp.up_proj.weight"] = randn({4, 32, 128}, Dtype::float32, 5);
  c.tensors["model.layers.0.post_norm.weight"] = randn({4, 128}, Dtype::float32, 6);  // 2-D, but a norm
  c.tensors["model.layers.0.odd.weight"] = randn({8, 96}, Dtype::float32, 7);  // 96: only groups of 16/32 fit
  c.tensors["lm_head.weight"] = randn({48, 128}, Dtype::bfloat16, 8, 0.2);
  c.tensors["model.position_ids"] = randint({16}, Dtype::int64, 9, 0, 100);
  return c;
}

struct Mode {
  std::string mode;
  int bits, group_size;
};

class QuantizeCheckpoint : public ::testing::TestWithParam<Mode> {};

TEST_P(QuantizeCheckpoint, MatchesLibraryQuantizeBitExactly) {
  const Mode m = GetParam();
  ScratchDir dir;
  const Checkpoint ck = make_checkpoint();
  save_safetensors(dir.file("in.safetensors"), ck.tensors, ck.metadata);
  QuantizeFileOptions o;
  o.mode = m.mode;
  o.bits = m.bits;
  o.group_size = m.group_size;
  const auto rep = quantize_safetensors(dir.file("in.safetensors"), dir.file("out.safetensors"), o);

  // The expected selection, written out by hand: *.weight, >= 2-D, float, no "norm",
  // last dim a multiple of the group size (embeddings and lm_head included, as mlx-lm).
  std::vector<std::string> expect_q = {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                                       "model.layers.0.mlp.switch_mlp.up_proj.weight", "lm_head.weight"};
  if (96 % m.group_size == 0) expect_q.push_back("model.layers.0.odd.weight");
  EXPECT_EQ(rep.quantized, static_cast<int64_t>(expect_q.size()));
  EXPECT_EQ(rep.copied, static_cast<int64_t>(ck.tensors.size() - expect_q.size()));

  std::map<std::string, std::string> meta;
  const auto out = load_safetensors(dir.file("out.safetensors"), &meta);
  EXPECT_EQ(meta["format"], "pt");
  EXPECT_EQ(meta["note"], "keep me");
  const auto qj = nlohmann::json::parse(meta.at("quantization"));
  EXPECT_EQ(qj["group_size"], m.group_size);
  EXPECT_EQ(qj["bits"], m.bits);
  EXPECT_EQ(qj["mode"], m.mode);

  size_t expected_count = 0;
  for (const auto& [name, orig] : ck.tensors) {
    const bool q = std::find(expect_q.begin(), expect_q.end(), name) != expect_q.end();
    if (!q) {
      ++expected_count;
      ASSERT_TRUE(out.count(name)) << name;
      EXPECT_TRUE(bit_equal(out.at(name), orig)) << name;
      continue;
    }
    const std::string base = name.substr(0, name.size() - 7);
    const auto lib = quantize(orig, m.group_size, m.bits, m.mode);
    ASSERT_TRUE(out.count(base + ".weight") && out.count(base + ".scales")) << base;
    EXPECT_TRUE(bit_equal(out.at(base + ".weight"), lib[0])) << base;
    EXPECT_TRUE(bit_equal(out.at(base + ".scales"), lib[1])) << base;
    std::optional<Array> biases;
    if (m.mode == "affine") {
      ASSERT_TRUE(out.count(base + ".biases")) << base;
      EXPECT_TRUE(bit_equal(out.at(base + ".biases"), lib[2])) << base;
      biases = out.at(base + ".biases");
    } else {
      EXPECT_FALSE(out.count(base + ".biases")) << base;
    }
    expected_count += m.mode == "affine" ? 3 : 2;
    // Round trip: load -> dequantize equals quantize + dequantize of the original.
    const Array deq = dequantize(out.at(base + ".weight"), out.at(base + ".scales"), biases, m.group_size, m.bits,
                                 m.mode, std::nullopt, orig.dtype());
    const Array expect = dequantize(lib[0], lib[1], m.mode == "affine" ? std::optional<Array>(lib[2]) : std::nullopt,
                                    m.group_size, m.bits, m.mode, std::nullopt, orig.dtype());
    EXPECT_TRUE(bit_equal(deq, expect)) << base;
    // And it is the original up to quantization error (the data is real, not zeros).
    const ref::Tensor o64 = ref::to_tensor(orig);
    EXPECT_GT(o64.max_abs(), 0.0);
    EXPECT_TRUE(all_close(deq, o64, 0.0, 0.5 * o64.max_abs())) << base;
  }
  EXPECT_EQ(out.size(), expected_count);
  EXPECT_EQ(dir.entries().size(), 2u);  // in + out, no temporaries
}

INSTANTIATE_TEST_SUITE_P(Modes, QuantizeCheckpoint,
                         ::testing::Values(Mode{"affine", 4, 64}, Mode{"affine", 8, 32}, Mode{"affine", 3, 128},
                                           Mode{"mxfp4", 4, 32}, Mode{"nvfp4", 4, 16}, Mode{"mxfp8", 8, 32}),
                         [](const auto& info) {
                           return info.param.mode + "_b" + std::to_string(info.param.bits) + "_g" +
                                  std::to_string(info.param.group_size);
                         });

TEST(CliQuantize, FilterOverridesTheDefaultRule) {
  ScratchDir dir;
  const Checkpoint ck = make_checkpoint();
  save_safetensors(dir.file("in.safetensors"), ck.tensors, ck.metadata);
  QuantizeFileOptions o;
  // The layernorm (1-D) and q_proj.bias (not <module>.weight) match too: kept, and reported.
  o.filter = "q_proj|layernorm";
  const auto rep = quantize_safetensors(dir.file("in.safetensors"), dir.file("out.safetensors"), o);
  EXPECT_EQ(rep.quantized, 1);
  ASSERT_EQ(rep.not_quantizable.size(), 2u);
  EXPECT_EQ(rep.not_quantizable[0], "model.layers.0.input_layernorm.weight: fewer than 2 dimensions");
  EXPECT_EQ(rep.not_quantizable[1], "model.layers.0.self_attn.q_proj.bias: not named <module>.weight");
  const auto out = load_safetensors(dir.file("out.safetensors"));
  EXPECT_EQ(out.at("model.layers.0.self_attn.q_proj.weight").dtype(), Dtype::uint32);
  EXPECT_EQ(out.at("lm_head.weight").dtype(), Dtype::bfloat16);
  EXPECT_TRUE(bit_equal(out.at("lm_head.weight"), ck.tensors.at("lm_head.weight")));
}

TEST(CliQuantize, ErrorMidStreamLeavesNoFile) {
  ScratchDir dir;
  const Checkpoint ck = make_checkpoint();
  const std::string in = dir.file("in.safetensors"), out = dir.file("out.safetensors");
  save_safetensors(in, ck.tensors, ck.metadata);
  // After the first tensor is written, cut the input short: the next load fails.
  const auto size = std::filesystem::file_size(in);
  auto cut = [&](size_t i, size_t, const std::string&) {
    if (i == 1) std::filesystem::resize_file(in, size / 4);
  };
  EXPECT_THROW(quantize_safetensors(in, out, QuantizeFileOptions{}, cut), Error);
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"in.safetensors"});
}

// ---- the command -------------------------------------------------------------------------

void expect_one_error_line(const CliRun& r, const std::string& needle) {
  EXPECT_NE(r.rc, 0);
  const auto lines = r.err_lines();
  ASSERT_EQ(lines.size(), 1u) << r.err;
  EXPECT_EQ(lines[0].rfind("mmkit: error: ", 0), 0u) << lines[0];
  EXPECT_NE(lines[0].find(needle), std::string::npos) << lines[0];
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string with_header(const std::string& json, size_t data_bytes) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((json.size() >> (8 * i)) & 0xff);
  return s + json + std::string(data_bytes, '\x01');
}

TEST(CliQuantize, CommandWritesOutputAndRefusesToOverwrite) {
  ScratchDir dir;
  const Checkpoint ck = make_checkpoint();
  save_safetensors(dir.file("in.safetensors"), ck.tensors, ck.metadata);
  const std::string args = "quantize '" + dir.file("in.safetensors") + "' '" + dir.file("out.safetensors") + "'";
  CliRun r = run_cli(dir, args);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("quantized 4 tensors to affine 4-bit g64"), std::string::npos) << r.out;
  const std::string first = read_text(dir.file("out.safetensors"));

  r = run_cli(dir, args + " --bits 8");
  expect_one_error_line(r, "already exists; pass --force");
  EXPECT_EQ(read_text(dir.file("out.safetensors")), first);  // untouched

  r = run_cli(dir, args + " --bits 8 --force");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(read_text(dir.file("out.safetensors")), first);
  const auto out = load_safetensors(dir.file("out.safetensors"));
  const auto lib = quantize(ck.tensors.at("lm_head.weight"), 64, 8, "affine");
  EXPECT_TRUE(bit_equal(out.at("lm_head.weight"), lib[0]));
  EXPECT_EQ(dir.entries().size(), 2u);
}

TEST(CliQuantize, BadInputGivesOneErrorLineAndNoOutput) {
  ScratchDir dir;
  const Checkpoint ck = make_checkpoint();
  save_safetensors(dir.file("good.safetensors"), ck.tensors, ck.metadata);
  const std::string good = read_text(dir.file("good.safetensors"));
  write_bytes(dir.file("truncated.safetensors"), good.substr(0, good.size() - 100));
  write_bytes(dir.file("short.safetensors"), "abc");
  write_bytes(dir.file("garbage.safetensors"), with_header("{not json", 16));
  write_bytes(dir.file("f64.safetensors"),
              with_header(R"({"a.weight":{"dtype":"F64","shape":[2,64],"data_offsets":[0,1024]}})", 1024));
  write_bytes(dir.file("offsets.safetensors"),
              with_header(R"({"a.weight":{"dtype":"F32","shape":[2,64],"data_offsets":[0,100]}})", 512));
  struct Case {
    std::string input, needle;
  };
  const std::vector<Case> cases = {
      {"missing.safetensors", "cannot open"},
      {"truncated.safetensors", "truncated"},
      {"short.safetensors", "too short"},
      {"garbage.safetensors", "not valid JSON"},
      {"f64.safetensors", "unsupported dtype 'F64'"},
      {"offsets.safetensors", "do not match its dtype"},
  };
  const auto before = dir.entries().size();
  for (const auto& c : cases) {
    SCOPED_TRACE(c.input);
    const CliRun r = run_cli(dir, "quantize '" + dir.file(c.input) + "' '" + dir.file("out.safetensors") + "'");
    expect_one_error_line(r, c.needle);
    EXPECT_EQ(r.rc, 1);
    EXPECT_FALSE(std::filesystem::exists(dir.file("out.safetensors")));
    EXPECT_EQ(dir.entries().size(), before);  // no temporaries either
  }
  // Bad options: the library's own messages; usage errors exit with 2.
  const std::string io = " '" + dir.file("good.safetensors") + "' '" + dir.file("out.safetensors") + "'";
  expect_one_error_line(run_cli(dir, "quantize" + io + " --bits 7"), "bits 7 is not supported");
  expect_one_error_line(run_cli(dir, "quantize" + io + " --mode int4"), "Invalid quantization mode 'int4'");
  expect_one_error_line(run_cli(dir, "quantize" + io + " --filter '('"), "invalid --filter");
  expect_one_error_line(run_cli(dir, "quantize" + io + " --filter nothing_matches"), "no tensor to quantize");
  const CliRun usage = run_cli(dir, "quantize '" + dir.file("good.safetensors") + "'");
  expect_one_error_line(usage, "OUT");
  EXPECT_EQ(usage.rc, 2);
  EXPECT_FALSE(std::filesystem::exists(dir.file("out.safetensors")));
  EXPECT_EQ(dir.entries().size(), before);
}

TEST(CliQuantize, RefusesAnAlreadyQuantizedCheckpoint) {
  ScratchDir dir;
  const Checkpoint ck = make_checkpoint();
  save_safetensors(dir.file("in.safetensors"), ck.tensors, ck.metadata);
  quantize_safetensors(dir.file("in.safetensors"), dir.file("q.safetensors"), {});
  QuantizeFileOptions o;
  o.filter = "post_norm";  // still float in q.safetensors, so only the metadata can tell
  EXPECT_THROW(quantize_safetensors(dir.file("q.safetensors"), dir.file("qq.safetensors"), o), Error);
  EXPECT_FALSE(std::filesystem::exists(dir.file("qq.safetensors")));
}

}  // namespace
}  // namespace mmkit::test
