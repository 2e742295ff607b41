// Registry coverage (STYLE.md "Tests"): every CPU registry entry that
// supports some representative descriptor on this machine is actually the
// one select() picks for at least one of them, so no entry is dead code
// shadowed by a higher-priority one. Entries whose supports() depends on the
// ISA are switched through every SIMD level this CPU has (when the CPU
// backend exposes its test hook); entries this machine cannot run are only
// reported. Also checked per family: the CPU list ends in an entry that
// accepts every descriptor, select() returns the first supporting entry in
// priority order, and explain() names every entry.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/registry.h"
#include "test_util.h"

#if __has_include("cpu/cpu_isa.h")
#include "cpu/cpu_isa.h"
#define MMKIT_TEST_CPU_ISA_LEVELS 1
#endif

namespace mmkit::test {
namespace {

using namespace mmkit::detail;

struct Fmt {
  fmt::Mode mode;
  int bits, gs;
};

std::vector<QFormat> formats() {
  std::vector<QFormat> out;
  for (int b : {2, 3, 4, 5, 6, 8})
    for (int g : {32, 64, 128}) out.push_back(QFormat{fmt::Mode::affine, b, g});
  out.push_back(QFormat{fmt::Mode::mxfp4, 4, 32});
  out.push_back(QFormat{fmt::Mode::mxfp8, 8, 32});
  out.push_back(QFormat{fmt::Mode::nvfp4, 4, 16});
  return out;
}

const Dtype kFloats[] = {Dtype::float32, Dtype::float16, Dtype::bfloat16};

// ---------------------------------------------------------------------------
// representative descriptors: edge shapes and production shapes (PERF.md 7)

std::vector<QuantizeDesc> quantize_descs() {
  std::vector<QuantizeDesc> v;
  for (const QFormat& f : formats())
    for (Dtype dt : kFloats)
      for (auto [r, c] : {std::pair<int64_t, int64_t>{1, f.group_size}, {3, 2 * f.group_size}, {33, 512},
                          {4096, 4096}, {14336, 4096}})
        for (bool g : {false, true}) {
          if (g && f.mode != fmt::Mode::nvfp4) continue;
          QuantizeDesc d;
          d.rows = r;
          d.cols = c;
          d.format = f;
          d.dtype = dt;
          d.has_global_scale = g;
          v.push_back(d);
        }
  return v;
}

std::vector<DequantizeDesc> dequantize_descs() {
  std::vector<DequantizeDesc> v;
  for (const QFormat& f : formats()) {
    std::vector<Dtype> sdts = f.mode == fmt::Mode::affine ? std::vector<Dtype>{Dtype::float32, Dtype::float16,
                                                                                Dtype::bfloat16}
                                                          : std::vector<Dtype>{Dtype::uint8};
    for (Dtype s : sdts)
      for (Dtype o : kFloats)
        for (auto [r, c] : {std::pair<int64_t, int64_t>{1, f.group_size}, {33, 512}, {4096, 4096}})
          for (bool g : {false, true}) {
            if (g && f.mode != fmt::Mode::nvfp4) continue;
            DequantizeDesc d;
            d.rows = r;
            d.cols = c;
            d.format = f;
            d.scale_dtype = s;
            d.out_dtype = o;
            d.has_global_scale = g;
            v.push_back(d);
          }
  }
  return v;
}

std::vector<Fp8Desc> fp8_descs() {
  std::vector<Fp8Desc> v;
  for (int64_t n : {1, 17, 4096, 1 << 20})
    for (bool to : {true, false})
      for (Dtype dt : kFloats) {
        Fp8Desc d;
        d.size = n;
        d.to_fp8 = to;
        d.float_dtype = dt;
        v.push_back(d);
      }
  return v;
}

std::vector<QmmDesc> qmm_descs() {
  std::vector<QmmDesc> v;
  struct B {
    int64_t L, bx, bw;
    bool sorted;
    const char* op;
  };
  const B batches[] = {{1, 1, 1, false, "quantized_matmul"}, {3, 3, 3, false, "quantized_matmul"},
                       {8, 8, 4, false, "gather_qmm"},       {8, 8, 4, true, "gather_qmm"},
                       {64, 1, 128, false, "gather_qmm"},    {64, 64, 128, true, "gather_qmm"}};
  for (const QFormat& f : formats())
    for (bool t : {true, false})
      for (Dtype dt : kFloats)
        for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 4096, 4096}, {1, 3, 128}, {2, 14336, 4096},
                               {4, 256, 512}, {8, 4096, 4096}, {16, 1536, 2048}, {17, 384, 256}, {33, 33, 256},
                               {128, 4096, 4096}, {512, 4096, 4096}, {4096, 4096, 4096}})
          for (const B& b : batches) {
            QmmDesc d;
            d.format = f;
            d.transpose = t;
            d.M = M;
            d.N = N;
            d.K = K;
            d.batch = b.L;
            d.x_batch = b.bx;
            d.w_batch = b.bw;
            d.dtype = dt;
            d.rhs_sorted = b.sorted;
            d.op = b.op;
            v.push_back(d);
          }
  return v;
}

std::vector<GemmDesc> gemm_descs() {
  std::vector<GemmDesc> v;
  for (Dtype dt : kFloats)
    for (bool km : {false, true})
      for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 4096, 4096}, {1, 7, 9}, {4, 1536, 2048},
                             {33, 65, 70}, {128, 4096, 4096}, {1024, 1024, 1024}, {4096, 4096, 4096}})
        for (auto [L, ba, bb, sorted] : {std::tuple<int64_t, int64_t, int64_t, bool>{1, 1, 1, false},
                                         {8, 8, 4, false}, {8, 8, 4, true}, {64, 64, 128, true}})
          for (const char* op : {"matmul", "gather_mm", "block_masked_mm"}) {
            GemmDesc d;
            d.M = M;
            d.N = N;
            d.K = K;
            d.batch = L;
            d.a_batch = ba;
            d.b_batch = bb;
            d.dtype = dt;
            d.b_kmajor = km;
            d.rhs_sorted = sorted;
            d.op = op;
            v.push_back(d);
          }
  return v;
}

std::vector<BlockMaskedDesc> block_masked_descs() {
  std::vector<BlockMaskedDesc> v;
  for (Dtype dt : kFloats)
    for (int bs : {32, 64})
      for (bool km : {false, true})
        for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 128, 128}, {33, 65, 70}, {100, 1, 96},
                               {1024, 1024, 1024}, {4096, 4096, 4096}})
          for (int out = 0; out < 3; ++out)     // none, bool, float
            for (int ops = 0; ops < 3; ++ops) {  // none, bool, float
              if (out == 0 && ops == 0) continue;
              BlockMaskedDesc d;
              d.M = M;
              d.N = N;
              d.K = K;
              d.batch = 2;
              d.a_batch = 2;
              d.b_batch = 1;
              d.block_size = bs;
              d.dtype = dt;
              d.b_kmajor = km;
              d.has_out_mask = out != 0;
              d.out_mask_bool = out == 1;
              d.has_op_masks = ops != 0;
              d.op_masks_bool = ops == 1;
              v.push_back(d);
            }
  return v;
}

// ---------------------------------------------------------------------------
// coverage

struct Coverage {
  bool supported = false;  // supports() accepted some descriptor at some level
  bool selected = false;   // select() picked it for some descriptor
  std::string example;     // a descriptor it supports
};

template <typename Desc>
std::string str(const Desc& d) {
  std::ostringstream os;
  os << d;
  return os.str();
}

/// One pass over the descriptors at the current ISA level.
template <typename Reg, typename Desc>
void scan(const Reg& reg, const std::vector<Desc>& descs, std::map<std::string, Coverage>& cov,
          const std::string& level) {
  const Device::Type cpu = Device::Type::cpu;
  std::vector<const typename Reg::Entry*> cpu_entries;
  int prev_priority = std::numeric_limits<int>::max();
  for (const auto& e : reg.entries()) {
    EXPECT_LE(e.priority, prev_priority) << reg.family() << ": entries must be ordered by priority";
    prev_priority = e.priority;
    if (e.device == cpu) cpu_entries.push_back(&e);
  }
  ASSERT_FALSE(cpu_entries.empty()) << reg.family() << " has no cpu entry";
  std::set<std::string> names;
  for (const auto* e : cpu_entries) EXPECT_TRUE(names.insert(e->name).second) << "duplicate entry " << e->name;

  for (const Desc& d : descs) {
    // the last cpu entry accepts every valid descriptor (STYLE.md rule 3)
    EXPECT_TRUE(cpu_entries.back()->supports(d))
        << reg.family() << ": the catch-all " << cpu_entries.back()->name << " rejects " << str(d) << " at " << level;
    const typename Reg::Entry* first = nullptr;
    for (const auto* e : cpu_entries) {
      if (e->supports(d)) {
        Coverage& c = cov[e->name];
        if (!c.supported) c.example = str(d) + " at " + level;
        c.supported = true;
        if (!first) first = e;
      } else {
        cov[e->name];  // known, maybe unsupported here
      }
    }
    const auto* sel = &reg.select(d, cpu);
    EXPECT_EQ(sel, first) << reg.family() << ": select() must return the first supporting entry for " << str(d);
    cov[sel->name].selected = true;
  }
  const std::string ex = reg.explain(descs.front(), cpu);
  for (const auto* e : cpu_entries) EXPECT_NE(ex.find(e->name), std::string::npos) << "explain() omits " << e->name;
}

template <typename Reg, typename Desc>
void check_family(const Reg& reg, const std::vector<Desc>& descs) {
  ASSERT_FALSE(descs.empty());
  std::map<std::string, Coverage> cov;
#ifdef MMKIT_TEST_CPU_ISA_LEVELS
  // Every SIMD level this CPU can run (entries gated on the active level
  // become selectable one level at a time).
  const cpu::Isa start = cpu::active_isa();
  for (cpu::Isa isa : cpu::available_isas()) {
    detail::set_cpu_isa_for_testing(isa);
    scan(reg, descs, cov, std::string("isa ") + cpu::isa_name(isa));
  }
  detail::set_cpu_isa_for_testing(start);
#else
  scan(reg, descs, cov, "default level");
#endif
  for (const auto& [name, c] : cov) {
    if (!c.supported) {
      std::cout << "[registry] " << reg.family() << ": " << name
                << " supports none of the representative descriptors on this machine (not checked)\n";
      continue;
    }
    EXPECT_TRUE(c.selected) << reg.family() << ": entry " << name << " supports e.g. " << c.example
                            << " but select() never picks it (shadowed by a higher-priority entry)";
  }
}

TEST(RegistryCoverage, Quantize) { check_family(registries().quantize, quantize_descs()); }
TEST(RegistryCoverage, Dequantize) { check_family(registries().dequantize, dequantize_descs()); }
TEST(RegistryCoverage, Fp8) { check_family(registries().fp8, fp8_descs()); }
TEST(RegistryCoverage, QuantizedMatmul) { check_family(registries().qmm, qmm_descs()); }
TEST(RegistryCoverage, Gemm) { check_family(registries().gemm, gemm_descs()); }
TEST(RegistryCoverage, BlockMasked) { check_family(registries().block_masked, block_masked_descs()); }

/// Registries run only what select() picked: a dispatch through the public
/// API lands on a CPU entry, and with no GPU backend a GPU descriptor is an
/// mmkit::Error naming the family, not a crash.
TEST(RegistryCoverage, NoGpuEntryIsAnError) {
  if (built_with_cuda()) GTEST_SKIP() << "built with CUDA";
  QmmDesc d = qmm_descs().front();
  try {
    registries().qmm.select(d, Device::Type::gpu);
    FAIL() << "expected mmkit::Error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("[qmm]", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace mmkit::test
