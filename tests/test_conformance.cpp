// Runs every case of ../shared/conformance/mlx/manifest.json through the
// public API (nothing hard-coded per case). quantize/dequantize must be
// bit-identical to MLX; float32 matmuls within 1e-5 of max|out|; half
// precision matmuls against the float64 reference; every error case must be
// rejected with mmkit::Error naming the op, except the half-precision calls
// MLX's CPU cannot evaluate, which mmkit computes (SPEC decision 4).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace mmkit::test {
namespace {

using json = nlohmann::json;

std::string conformance_dir() {
  if (const char* d = std::getenv("MMKIT_CONFORMANCE_DIR")) return d;
  return MMKIT_CONFORMANCE_DIR;
}

const json& manifest() {
  static json m = [] {
    std::ifstream f(conformance_dir() + "/manifest.json");
    if (!f) return json::object();
    return json::parse(f);
  }();
  return m;
}

std::vector<std::string> case_names() {
  std::vector<std::string> names;
  if (manifest().contains("cases"))
    for (const auto& c : manifest()["cases"]) names.push_back(c["name"].get<std::string>());
  if (names.empty()) names.push_back("manifest_missing");
  return names;
}

const json& find_case(const std::string& name) {
  for (const auto& c : manifest()["cases"])
    if (c["name"] == name) return c;
  throw std::runtime_error("no case " + name);
}

template <typename T>
T param(const json& c, const char* key, T dflt) {
  const auto& p = c["params"];
  if (p.contains(key) && !p[key].is_null()) return p[key].get<T>();
  return dflt;
}

std::optional<int> opt_int(const json& c, const char* key) {
  const auto& p = c["params"];
  if (p.contains(key) && p[key].is_number_integer()) return p[key].get<int>();
  return std::nullopt;
}

struct Inputs {
  std::map<std::string, Array> a;
  std::optional<Array> get(const std::string& k) const {
    auto it = a.find(k);
    if (it == a.end()) return std::nullopt;
    return it->second;
  }
  const Array& at(const std::string& k) const { return a.at(k); }
};

/// Tolerance check of a matmul output: float32 against MLX (1e-5 of max|out|),
/// half precision against the float64 reference from the case's own inputs.
void check_matmul(const Array& y, const Array& mlx_out, const ref::Tensor& r) {
  ASSERT_EQ(y.dtype(), mlx_out.dtype()) << "output dtype differs from MLX";
  ASSERT_EQ(y.shape(), mlx_out.shape());
  if (r.max_abs() == 0.0) {
    // Everything masked out: the output must be exactly zero.
    for (double v : y.to_double_vector()) ASSERT_EQ(v, 0.0);
    return;
  }
  if (y.dtype() == Dtype::float32) {
    ref::Tensor m = ref::to_tensor(mlx_out);
    EXPECT_TRUE(all_close(y, m, 0.0, 1e-5 * m.max_abs())) << "vs MLX";
    EXPECT_TRUE(all_close(y, r, 1e-5, 1e-5 * r.max_abs())) << "vs float64 reference";
  } else {
    EXPECT_TRUE(all_close(y, r, rtol_for(y.dtype()), 2e-5 * r.max_abs())) << "vs float64 reference";
  }
}

std::optional<Dtype> dequantize_dtype(const json& c, const Array& w) {
  const std::string call = c["call"].get<std::string>();
  if (call.find("dtype=dequantize_dtype") != std::string::npos) {
    const auto& p = c["params"]["dequantize_dtype"];
    if (p.is_null()) return std::nullopt;  // the case exercises the default dtype
    return dtype_from_name(p.get<std::string>());
  }
  if (call.find("dtype=w.dtype") != std::string::npos) return w.dtype();
  if (call.find("dtype=float32") != std::string::npos) return Dtype::float32;
  return std::nullopt;
}

void run_value_case(const json& c) {
  const std::string op = c["op"].get<std::string>();
  const Device dev = test_device();
  std::map<std::string, std::string> meta;
  auto all = load_safetensors(conformance_dir() + "/" + c["file"].get<std::string>(), &meta);
  Inputs in;
  for (const auto& n : c["inputs"]) {
    const std::string k = n.get<std::string>();
    if (all.count(k)) in.a[k] = all.at(k).to(dev);
  }
  auto out = [&](const char* k) { return all.at(k); };
  const std::string mode = param<std::string>(c, "mode", "affine");
  const auto gs = opt_int(c, "group_size");
  const auto bits = opt_int(c, "bits");
  const bool transpose = param<bool>(c, "transpose", true);
  const bool sorted = param<bool>(c, "sorted_indices", false);

  if (op == "quantize_dequantize") {
    const Array& w = in.at("w");
    auto gscale = in.get("global_scale");
    auto q = quantize(w, gs, bits, mode, gscale);
    EXPECT_TRUE(bit_equal(q[0], out("w_q"))) << "w_q";
    EXPECT_TRUE(bit_equal(q[1], out("scales"))) << "scales";
    if (mode == "affine") {
      EXPECT_TRUE(bit_equal(q[2], out("biases"))) << "biases";
    }
    std::optional<Array> fb;
    if (mode == "affine") fb = out("biases").to(dev);
    const Array fq = out("w_q").to(dev), fs = out("scales").to(dev);
    auto dt = dequantize_dtype(c, w);
    Array w_hat = dequantize(fq, fs, fb, gs, bits, mode, gscale, dt);
    Array expect = out("w_hat");
    if (gscale && expect.dtype() != w_hat.dtype()) expect = expect.astype(w_hat.dtype());  // decision 11
    EXPECT_TRUE(bit_equal(w_hat, expect)) << "w_hat";
    if (all.count("w_hat_default_dtype")) {
      Array d0 = dequantize(fq, fs, fb, gs, bits, mode, gscale);
      Array e0 = out("w_hat_default_dtype");
      if (gscale && e0.dtype() != d0.dtype()) e0 = e0.astype(d0.dtype());
      EXPECT_TRUE(bit_equal(d0, e0)) << "w_hat_default_dtype";
    }
  } else if (op == "dequantize") {
    auto dt = dequantize_dtype(c, in.at("w_q"));
    auto gscale = in.get("global_scale");
    Array y = dequantize(in.at("w_q"), in.at("scales"), in.get("biases"), gs, bits, mode, gscale, dt);
    Array expect = out("w_hat");
    if (gscale && expect.dtype() != y.dtype()) expect = expect.astype(y.dtype());
    EXPECT_TRUE(bit_equal(y, expect));
  } else if (op == "quantized_matmul") {
    Array y = quantized_matmul(in.at("x"), in.at("w_q"), in.at("scales"), in.get("biases"), transpose, gs, bits, mode);
    auto r = ref::quantized_matmul(in.at("x"), in.at("w_q"), in.at("scales"), in.get("biases"), transpose,
                                   gs.value(), bits.value(), mode);
    check_matmul(y, out("out"), r);
  } else if (op == "gather_qmm") {
    Array y = gather_qmm(in.at("x"), in.at("w_q"), in.at("scales"), in.get("biases"), in.get("lhs_indices"),
                         in.get("rhs_indices"), transpose, gs, bits, mode, sorted);
    auto r = ref::gather_qmm(in.at("x"), in.at("w_q"), in.at("scales"), in.get("biases"), in.get("lhs_indices"),
                             in.get("rhs_indices"), transpose, gs.value(), bits.value(), mode);
    check_matmul(y, out("out"), r);
  } else if (op == "gather_mm") {
    Array y = gather_mm(in.at("a"), in.at("b"), in.get("lhs_indices"), in.get("rhs_indices"), sorted);
    auto r = ref::gather_mm(in.at("a"), in.at("b"), in.get("lhs_indices"), in.get("rhs_indices"));
    check_matmul(y, out("out"), r);
  } else if (op == "block_masked_mm") {
    const int bs = param<int>(c, "block_size", 64);
    Array y = block_masked_mm(in.at("a"), in.at("b"), bs, in.get("mask_out"), in.get("mask_lhs"), in.get("mask_rhs"));
    auto r = ref::block_masked_mm(in.at("a"), in.at("b"), bs, in.get("mask_out"), in.get("mask_lhs"),
                                  in.get("mask_rhs"));
    check_matmul(y, out("out"), r);
  } else {
    FAIL() << "unknown op " << op;
  }
}

/// Builds the inputs of an error case from its declared shapes and dtypes.
Inputs make_error_inputs(const json& c) {
  Inputs in;
  uint64_t seed = 1;
  for (auto it = c["input_arrays"].begin(); it != c["input_arrays"].end(); ++it) {
    Shape s = it.value()["shape"].get<Shape>();
    Dtype dt = dtype_from_name(it.value()["dtype"].get<std::string>());
    Array a;
    if (it.key().find("indices") != std::string::npos) a = Array::zeros(s, dt);
    else if (dt == Dtype::bool_) a = randint(s, Dtype::bool_, seed++, 0, 1);
    else if (is_floating(dt)) a = randn(s, dt, seed++);
    else a = randint(s, dt, seed++, 0, 7);
    in.a[it.key()] = a.to(test_device());
  }
  return in;
}

void run_error_case(const json& c) {
  const std::string op = c["op"].get<std::string>();
  const std::string phase = c["error"]["phase"].get<std::string>();
  Inputs in = make_error_inputs(c);
  const std::string mode = param<std::string>(c, "mode", "affine");
  const auto gs = opt_int(c, "group_size");
  const auto bits = opt_int(c, "bits");
  const bool transpose = param<bool>(c, "transpose", true);
  const int bs = param<int>(c, "block_size", 64);
  auto call = [&]() -> Array {
    if (op == "quantize") return quantize(in.at("w"), gs, bits, mode, in.get("global_scale"))[0];
    if (op == "dequantize") {
      std::optional<Dtype> dt;
      if (c["params"].contains("dtype")) dt = dtype_from_name(c["params"]["dtype"].get<std::string>());
      return dequantize(in.at("w_q"), in.at("scales"), in.get("biases"), gs, bits, mode, in.get("global_scale"), dt);
    }
    if (op == "quantized_matmul")
      return quantized_matmul(in.at("x"), in.at("w_q"), in.at("scales"), in.get("biases"), transpose, gs, bits, mode);
    if (op == "gather_qmm")
      return gather_qmm(in.at("x"), in.at("w_q"), in.at("scales"), in.get("biases"), in.get("lhs_indices"),
                        in.get("rhs_indices"), transpose, gs, bits, mode);
    if (op == "gather_mm") return gather_mm(in.at("a"), in.at("b"), in.get("lhs_indices"), in.get("rhs_indices"));
    if (op == "block_masked_mm")
      return block_masked_mm(in.at("a"), in.at("b"), bs, in.get("mask_out"), in.get("mask_lhs"), in.get("mask_rhs"));
    throw std::runtime_error("unknown op " + op);
  };
  if (phase == "eval") {
    // MLX's CPU cannot evaluate these (half-precision gather_mm / block_masked_mm);
    // mmkit computes them and is checked against the float64 reference.
    Array y = call();
    ref::Tensor r = op == "gather_mm"
                        ? ref::gather_mm(in.at("a"), in.at("b"), in.get("lhs_indices"), in.get("rhs_indices"))
                        : ref::block_masked_mm(in.at("a"), in.at("b"), bs, in.get("mask_out"), in.get("mask_lhs"),
                                               in.get("mask_rhs"));
    ASSERT_GT(r.max_abs(), 0.0);
    EXPECT_TRUE(all_close(y, r, rtol_for(y.dtype()), 2e-5 * r.max_abs()));
    return;
  }
  try {
    call();
    FAIL() << "expected mmkit::Error (MLX: " << c["error"]["message"].get<std::string>() << ")";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("[" + op + "]", 0), 0u) << "message does not start with [" << op << "]: " << msg;
  }
}

class Conformance : public ::testing::TestWithParam<std::string> {};

TEST_P(Conformance, MatchesMlx) {
  MMKIT_REQUIRE_DEVICE();
  if (GetParam() == "manifest_missing")
    GTEST_FAIL() << "conformance manifest not found under " << conformance_dir()
                 << " (set MMKIT_CONFORMANCE_DIR)";
  const json& c = find_case(GetParam());
  if (c["kind"] == "value") run_value_case(c);
  else run_error_case(c);
}

INSTANTIATE_TEST_SUITE_P(Mlx, Conformance, ::testing::ValuesIn(case_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

TEST(ConformanceManifest, Has806Cases) {
  ASSERT_TRUE(manifest().contains("cases")) << "manifest missing under " << conformance_dir();
  EXPECT_EQ(manifest()["cases"].size(), 806u);
}

}  // namespace
}  // namespace mmkit::test
