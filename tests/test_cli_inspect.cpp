// `mmkit inspect` and `mmkit info`: quantization detected from shapes and
// metadata, and the registered kernels listed.
#include "cli_helpers.h"
#include "test_util.h"
#include "tools/inspect.h"
#include "tools/quantize_file.h"

namespace mmkit::test {
namespace {

TensorInfo ti(const std::string& name, Dtype dt, Shape s) { return TensorInfo{name, dt, std::move(s), 0, 0}; }

TEST(CliInspect, DetectsEveryModeFromShapes) {
  // (R, C) = (64, 1024): words = C * bits / 32, groups = C / gs.
  struct Case {
    std::string mode;
    int bits, gs;
  };
  for (const Case& c : {Case{"affine", 4, 64}, Case{"affine", 4, 32}, Case{"affine", 4, 128}, Case{"affine", 3, 64},
                        Case{"mxfp4", 4, 32}, Case{"nvfp4", 4, 16}, Case{"mxfp8", 8, 32}}) {
    SCOPED_TRACE(c.mode + " " + std::to_string(c.bits) + " " + std::to_string(c.gs));
    const bool affine = c.mode == "affine";
    const Dtype sdt = affine ? Dtype::bfloat16 : Dtype::uint8;
    const TensorInfo w = ti("m.weight", Dtype::uint32, {64, 1024 * c.bits / 32});
    const TensorInfo s = ti("m.scales", sdt, {64, 1024 / c.gs}), b = ti("m.biases", sdt, {64, 1024 / c.gs});
    const auto d = tools::detect_quantization(w, &s, affine ? &b : nullptr, std::nullopt);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->spec.mode, c.mode);
    EXPECT_EQ(d->spec.bits, c.bits);
    EXPECT_EQ(d->spec.group_size, c.gs);
    EXPECT_FALSE(d->from_metadata);
  }
}

TEST(CliInspect, MetadataDecidesAmbiguousShapes) {
  // 4-bit g64 and 8-bit g32 (and 2-bit g128) have the same shapes.
  const TensorInfo w = ti("m.weight", Dtype::uint32, {8, 32}), s = ti("m.scales", Dtype::float16, {8, 4}),
                   b = ti("m.biases", Dtype::float16, {8, 4});
  auto d = tools::detect_quantization(w, &s, &b, std::nullopt);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->spec.str(), "affine 4-bit g64");
  EXPECT_EQ(d->alternatives.size(), 2u);
  d = tools::detect_quantization(w, &s, &b, tools::parse_quantization_metadata(R"({"group_size": 32, "bits": 8})"));
  ASSERT_TRUE(d);
  EXPECT_EQ(d->spec.str(), "affine 8-bit g32");
  EXPECT_TRUE(d->from_metadata);
  EXPECT_TRUE(d->alternatives.empty());
}

TEST(CliInspect, RejectsInconsistentLayouts) {
  const TensorInfo w = ti("m.weight", Dtype::uint32, {8, 32});
  const TensorInfo s_rows = ti("m.scales", Dtype::float16, {9, 4});       // rows differ
  const TensorInfo s_odd = ti("m.scales", Dtype::float16, {8, 5});        // 32*32/5 not integral
  const TensorInfo s_u8 = ti("m.scales", Dtype::uint8, {8, 3});           // no fp mode has g*b = 341
  const TensorInfo s_f = ti("m.scales", Dtype::float16, {8, 4});          // float scales, no biases
  const TensorInfo b_bad = ti("m.biases", Dtype::float32, {8, 4});        // bias dtype differs
  EXPECT_FALSE(tools::detect_quantization(w, &s_rows, nullptr, std::nullopt));
  EXPECT_FALSE(tools::detect_quantization(w, &s_odd, &s_odd, std::nullopt));
  EXPECT_FALSE(tools::detect_quantization(w, &s_u8, nullptr, std::nullopt));
  EXPECT_FALSE(tools::detect_quantization(w, &s_f, nullptr, std::nullopt));
  EXPECT_FALSE(tools::detect_quantization(w, &s_f, &b_bad, std::nullopt));
  EXPECT_FALSE(tools::detect_quantization(w, nullptr, nullptr, std::nullopt));
}

TEST(CliInspect, FileAfterQuantize) {
  ScratchDir dir;
  std::map<std::string, Array> t;
  t["a.weight"] = randn({16, 256}, Dtype::bfloat16, 1);
  t["b.weight"] = randn({4, 16, 128}, Dtype::float16, 2);
  t["a.norm.weight"] = randn({256}, Dtype::float32, 3);
  save_safetensors(dir.file("in.safetensors"), t);
  tools::QuantizeFileOptions o;
  o.bits = 8;
  o.group_size = 32;
  tools::quantize_safetensors(dir.file("in.safetensors"), dir.file("q.safetensors"), o);
  const auto r = tools::inspect_safetensors(dir.file("q.safetensors"));
  EXPECT_EQ(r.tensors.size(), 7u);
  ASSERT_EQ(r.quantized_modules.size(), 1u);
  EXPECT_EQ(r.quantized_modules.at("affine 8-bit g32"), 2);  // shapes alone would say 4-bit g64
  EXPECT_EQ(r.quant_source, "file metadata");
  const std::string text = tools::format_inspect(r);
  for (const char* s : {"a.weight", "uint32", "(16,64)", "scales of a", "biases of b", "affine 8-bit g32 (file metadata)",
                        "a.norm.weight", "2 x affine 8-bit g32"})
    EXPECT_NE(text.find(s), std::string::npos) << s << "\n" << text;

  const CliRun cmd = run_cli(dir, "inspect '" + dir.file("q.safetensors") + "'");
  ASSERT_EQ(cmd.rc, 0) << cmd.err;
  EXPECT_EQ(cmd.out, text);
  const CliRun missing = run_cli(dir, "inspect '" + dir.file("none.safetensors") + "'");
  EXPECT_EQ(missing.rc, 1);
  ASSERT_EQ(missing.err_lines().size(), 1u);
  EXPECT_EQ(missing.err_lines()[0].rfind("mmkit: error: [safetensors] cannot open", 0), 0u) << missing.err;
}

TEST(CliInfo, ListsVersionAndKernels) {
  const auto kernels = registered_kernels();
  ASSERT_FALSE(kernels.empty());
  for (const char* family : {"quantize: ", "dequantize: ", "qmm: ", "gather_mm: ", "block_masked_mm: "})
    EXPECT_TRUE(std::any_of(kernels.begin(), kernels.end(),
                            [&](const std::string& k) { return k.rfind(family, 0) == 0 && k.find(" (cpu)") != std::string::npos; }))
        << family;
  ScratchDir dir;
  const CliRun r = run_cli(dir, "info");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out.rfind(std::string("mmkit ") + version(), 0), 0u) << r.out;
  for (const auto& k : kernels) EXPECT_NE(r.out.find(k), std::string::npos) << k;
  EXPECT_NE(r.out.find("gpus: " + std::to_string(gpu_count())), std::string::npos) << r.out;
}

}  // namespace
}  // namespace mmkit::test
