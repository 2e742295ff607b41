// Quantizes a random stack of expert weights, runs quantized_matmul (one
// expert) and gather_qmm (one expert per token), and compares both with
// dequantize followed by an ordinary matmul / gather_mm. Exits with status 1
// when a result is further from that reference than float32 accumulation
// allows, 2 on an mmkit::Error.
#include <mmkit/mmkit.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace {

mmkit::Array random_normal(const mmkit::Shape& shape, double sigma, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, static_cast<float>(sigma));
  std::vector<float> v(static_cast<size_t>(mmkit::shape_size(shape)));
  for (float& x : v) x = dist(gen);
  return mmkit::Array::from_vector(v, shape);
}

/// max |a - b| and max |b| over all elements.
std::pair<double, double> max_error(const mmkit::Array& a, const mmkit::Array& b) {
  const std::vector<double> va = a.to_double_vector(), vb = b.to_double_vector();
  double err = 0, mag = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    err = std::max(err, std::fabs(va[i] - vb[i]));
    mag = std::max(mag, std::fabs(vb[i]));
  }
  return {err, mag};
}

/// ||a - b|| / ||b|| (Frobenius).
double relative_error(const mmkit::Array& a, const mmkit::Array& b) {
  const std::vector<double> va = a.to_double_vector(), vb = b.to_double_vector();
  double num = 0, den = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    num += (va[i] - vb[i]) * (va[i] - vb[i]);
    den += vb[i] * vb[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

int main() {
  using mmkit::Array;
  using mmkit::Dtype;
  const int64_t experts = 4, tokens = 8, n = 256, k = 512;
  try {
    std::printf("mmkit %s, cuda built: %s\n", mmkit::version(), mmkit::built_with_cuda() ? "yes" : "no");
    // weights (experts, n, k) and activations (tokens, k) with unit-variance outputs
    const Array w = random_normal({experts, n, k}, 1.0 / std::sqrt(static_cast<double>(k)), 1);
    const Array x = random_normal({tokens, k}, 1.0, 2);
    std::vector<int32_t> route(tokens);
    for (int64_t t = 0; t < tokens; ++t) route[t] = static_cast<int32_t>((t * 3) % experts);
    const Array rhs = Array::from_vector(route);
    const Array x_tokens = x.reshape({tokens, 1, k});

    bool ok = true;
    for (const std::string mode : {"affine", "mxfp4", "mxfp8", "nvfp4"}) {
      const std::vector<Array> q = mmkit::quantize(w, std::nullopt, std::nullopt, mode);
      std::optional<Array> biases;
      if (mode == "affine") biases = q[2];
      const Array w_hat = mmkit::dequantize(q[0], q[1], biases, std::nullopt, std::nullopt, mode, std::nullopt,
                                            Dtype::float32);
      // quantization error of the weights themselves (mxfp8 saturates group
      // maxima by MLX's scale rule, so it is not always below mxfp4's)
      const double w_err = relative_error(w_hat, w);

      // one expert: x @ w[1].T
      std::optional<Array> b1;
      if (biases) b1 = biases->index(0, 1);
      const Array y = mmkit::quantized_matmul(x, q[0].index(0, 1), q[1].index(0, 1), b1, true, std::nullopt,
                                              std::nullopt, mode);
      const Array y_ref = mmkit::matmul(x, w_hat.index(0, 1).transpose());
      const auto [q_err, q_mag] = max_error(y, y_ref);

      // mixture of experts: token t uses expert route[t]
      const Array g = mmkit::gather_qmm(x_tokens, q[0], q[1], biases, std::nullopt, rhs, true, std::nullopt,
                                        std::nullopt, mode);
      const Array g_ref = mmkit::gather_mm(x_tokens, w_hat.swapaxes(-1, -2), std::nullopt, rhs);
      const auto [g_err, g_mag] = max_error(g, g_ref);

      // float32 accumulation over k terms: a few ulps of the output scale
      const bool good = q_err <= 1e-5 * q_mag && g_err <= 1e-5 * g_mag && q_mag > 0 && g_mag > 0;
      ok = ok && good;
      std::printf("%-6s  weights |w - w_hat|/|w| = %.3g   quantized_matmul (%lld, %lld) max err %.3g   "
                  "gather_qmm (%lld, 1, %lld) max err %.3g   vs dequantize+matmul (max|y| %.3g)  %s\n",
                  mode.c_str(), w_err, static_cast<long long>(y.shape(0)), static_cast<long long>(y.shape(1)),
                  q_err, static_cast<long long>(g.shape(0)), static_cast<long long>(g.shape(2)), g_err, q_mag,
                  good ? "ok" : "MISMATCH");
    }
    return ok ? 0 : 1;
  } catch (const mmkit::Error& e) {
    std::fprintf(stderr, "mmkit error: %s\n", e.what());
    return 2;
  }
}
