// `mmkit demo` (tools::run_demo and the command) on the small `tiny` preset:
// the three rows are there, and the kernels' outputs agree with the float64
// reference the demo computes.
#include "cli_helpers.h"
#include "test_util.h"
#include "tools/demo.h"

namespace mmkit::test {
namespace {

tools::DemoOptions tiny_options() {
  tools::DemoOptions o;
  o.model = "tiny";
  o.tokens = 4;
  o.device = test_device().is_gpu() ? "gpu" : "cpu";
  o.check_tokens = 0;  // all tokens
  o.time_budget_s = 0;
  o.min_reps = 1;
  o.measure_roofline = false;  // the command test below measures it
  return o;
}

struct DemoMode {
  std::string mode;
  int bits, group_size;
};

class CliDemo : public ::testing::TestWithParam<DemoMode> {};

TEST_P(CliDemo, RowsAndErrorsAgainstFloat64) {
  MMKIT_REQUIRE_DEVICE();
  tools::DemoOptions o = tiny_options();
  o.mode = GetParam().mode;
  o.bits = GetParam().bits;
  o.group_size = GetParam().group_size;
  const tools::DemoResult r = tools::run_demo(o);
  EXPECT_EQ(r.tokens, 4);
  EXPECT_EQ(r.checked_tokens, 4);
  EXPECT_GE(r.distinct_experts, 2);
  EXPECT_LE(r.distinct_experts, 8);
  ASSERT_EQ(r.rows.size(), 3u);
  EXPECT_EQ(r.rows[0].op, "gather_qmm gate+up");
  EXPECT_EQ(r.rows[1].op, "gather_qmm down");
  EXPECT_EQ(r.rows[2].op, "moe layer");
  for (const auto& row : r.rows) {
    SCOPED_TRACE(row.op);
    // A non-trivial reference, so a small error means something.
    EXPECT_GT(row.ref_max_abs, 0.05);
    EXPECT_GE(row.reps, 1);
    EXPECT_GT(row.us_median, 0.0);
    EXPECT_LT(row.weight_bytes, row.bf16_bytes);
  }
  // Each projection against float64 on the same (dequantized) weights and
  // inputs: only the bfloat16 output rounding (2^-8 relative) and float32
  // accumulation remain.
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(r.rows[i].op);
    EXPECT_LE(r.rows[i].max_abs_err, r.rows[i].ref_max_abs * (1.0 / 128));
    EXPECT_LT(r.rows[i].rel_err, 4e-3);
  }
  // The whole layer against an all-float64 chain (bfloat16 intermediates).
  EXPECT_LT(r.rows[2].rel_err, 2e-2);
  // Memory against bfloat16: exactly PERF.md's bytes per weight.
  const double bpw = o.bits.value() / 8.0 + (o.mode == "affine" ? 4.0 : 1.0) / o.group_size.value();
  EXPECT_NEAR(r.rows[2].weight_bytes / r.rows[2].bf16_bytes, bpw / 2.0, 1e-12);

  const std::string text = tools::format_demo(r);
  for (const char* s : {"gather_qmm gate+up", "gather_qmm down", "moe layer", "max abs err", "% roofline"})
    EXPECT_NE(text.find(s), std::string::npos) << s;
}

INSTANTIATE_TEST_SUITE_P(Modes, CliDemo,
                         ::testing::Values(DemoMode{"affine", 4, 64}, DemoMode{"affine", 8, 32},
                                           DemoMode{"mxfp4", 4, 32}, DemoMode{"nvfp4", 4, 16}),
                         [](const auto& info) {
                           return info.param.mode + "_b" + std::to_string(info.param.bits) + "_g" +
                                  std::to_string(info.param.group_size);
                         });

TEST(CliDemo, SameSeedSameRouting) {
  tools::DemoOptions o = tiny_options();
  o.device = "cpu";
  const auto a = tools::run_demo(o), b = tools::run_demo(o);
  EXPECT_EQ(a.distinct_experts, b.distinct_experts);
  EXPECT_EQ(a.rows[2].max_abs_err, b.rows[2].max_abs_err);
}

TEST(CliDemo, BadOptionsAreErrors) {
  tools::DemoOptions o = tiny_options();
  o.device = "cpu";
  o.model = "nope";
  EXPECT_THROW(tools::run_demo(o), Error);
  o = tiny_options();
  o.device = "cpu";
  o.tokens = 0;
  EXPECT_THROW(tools::run_demo(o), Error);
  o.tokens = 4;
  o.group_size = 48;  // not an affine group size
  EXPECT_THROW(tools::run_demo(o), Error);
}

TEST(CliDemo, CommandPrintsTheTable) {
  ScratchDir dir;
  CliRun r = run_cli(dir, "demo --model tiny --tokens 4 --device cpu");
  ASSERT_EQ(r.rc, 0) << r.err;
  for (const char* s : {"tiny (test shapes) MoE layer", "gather_qmm gate+up", "gather_qmm down", "moe layer",
                        "memory saved vs bf16", "71.9% (3.56x)"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;

  r = run_cli(dir, "demo --model nope");
  EXPECT_EQ(r.rc, 1);
  ASSERT_EQ(r.err_lines().size(), 1u) << r.err;
  EXPECT_EQ(r.err_lines()[0],
            "mmkit: error: [demo] unknown model 'nope' (known: qwen3-30b-a3b, gpt-oss-120b, mixtral-8x7b, "
            "deepseek-v3, tiny).");
  // Checked before any weight is generated: gpt-oss's 2880 is not a multiple of 128.
  r = run_cli(dir, "demo --model gpt-oss-120b --group-size 128 --device cpu");
  EXPECT_EQ(r.rc, 1);
  ASSERT_EQ(r.err_lines().size(), 1u) << r.err;
  EXPECT_NE(r.err.find("group size 128 does not divide"), std::string::npos) << r.err;
  if (gpu_count() == 0) {
    r = run_cli(dir, "demo --model tiny --device gpu");
    EXPECT_EQ(r.rc, 1);
    ASSERT_EQ(r.err_lines().size(), 1u) << r.err;
    EXPECT_NE(r.err.find("mmkit: error: [demo] device 'gpu' requested"), std::string::npos) << r.err;
  }
  r = run_cli(dir, "demo --tokens many");
  EXPECT_EQ(r.rc, 2);
  EXPECT_EQ(r.err_lines().size(), 1u) << r.err;
}

}  // namespace
}  // namespace mmkit::test
