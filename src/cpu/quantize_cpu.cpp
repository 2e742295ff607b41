// CPU quantize / dequantize / fp8 kernels. quantize reproduces MLX's CPU
// quantizer bit for bit (SPEC.md 1.3, 1.4); dequantize reproduces its
// rounding steps (2.4). Each row is independent, so rows run in parallel.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/registry.h"
#include "cpu/cpu_common.h"
#include "formats/format.h"

namespace mmkit::cpu {
using detail::DequantizeArgs;
using detail::DequantizeDesc;
using detail::QuantizeArgs;
using detail::QuantizeDesc;
using fmt::Mode;

namespace {

constexpr float kFp4Table[16] = {0.0f, 0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                 -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/// Nearest E2M1 code, first minimum wins (ties to the smaller magnitude, +0 for
/// small negatives, NaN -> 0); differences are rounded to `dt` as MLX's op
/// graph computes them in the input dtype.
inline uint32_t nearest_fp4(float v, Dtype dt) {
  uint32_t best = 0;
  float bd = round_to(dt, std::fabs(v - kFp4Table[0]));
  for (uint32_t i = 1; i < 16; ++i) {
    float d = round_to(dt, std::fabs(v - kFp4Table[i]));
    if (d < bd) {
      bd = d;
      best = i;
    }
  }
  return best;
}

void quantize_affine_row(const float* w, int64_t cols, int bits, int gs, uint32_t* q, void* scales, void* biases,
                         Dtype dt) {
  const float n_max = static_cast<float>((1u << bits) - 1u);
  const float eps = 1e-7f;
  std::fill(q, q + cols * bits / 32, 0u);
  for (int64_t g = 0; g < cols / gs; ++g) {
    const float* v = w + g * gs;
    float wmin = std::numeric_limits<float>::infinity();
    float wmax = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < gs; ++i) {
      wmin = std::min(wmin, v[i]);
      wmax = std::max(wmax, v[i]);
    }
    const bool flip = std::fabs(wmin) > std::fabs(wmax);
    float s = std::max((wmax - wmin) / n_max, eps);
    if (!flip) s = -s;
    const float edge = flip ? wmin : wmax;
    const float q0 = std::rint(edge / s);
    float bias = 0.0f;
    if (q0 != 0.0f) {
      s = edge / q0;
      bias = edge;
    }
    uint32_t* row = q + g * (gs * bits / 32);
    for (int i = 0; i < gs; ++i) {
      float c = std::rint((v[i] - bias) / s);
      c = std::min(std::max(c, 0.0f), n_max);
      fmt::pack_code(row, i, bits, c == c ? static_cast<uint32_t>(c) : 0u);  // NaN -> code 0
    }
    store_f(scales, dt, g, s);
    store_f(biases, dt, g, bias);
  }
}

void quantize_fp_row(const float* w, int64_t cols, const detail::QFormat& f, Dtype dt, float enc, bool nv,
                     uint32_t* q, uint8_t* scales) {
  const int gs = f.group_size;
  const float maxval = f.traits().elem_max;
  std::fill(q, q + cols * f.bits / 32, 0u);
  for (int64_t g = 0; g < cols / gs; ++g) {
    const float* v = w + g * gs;
    float amax = 0.0f;
    for (int i = 0; i < gs; ++i) amax = std::max(amax, std::fabs(v[i]));
    const float sc = round_to(dt, amax / maxval);
    uint32_t* row = q + g * (gs * f.bits / 32);
    if (!nv) {
      float e = 0.0f;
      if (sc != 0.0f) e = std::rint(round_to(dt, std::log2(sc)));
      // E8M0 holds 2^-127..2^127: clamp as MLX's Metal kernel does (an Inf or
      // tiny group would otherwise overflow the int / uint8 conversions).
      e = std::fmin(std::fmax(e, -127.0f), 127.0f);
      scales[g] = static_cast<uint8_t>(static_cast<int>(e) + 127);
      const float inv = std::ldexp(1.0f, -static_cast<int>(e));
      for (int i = 0; i < gs; ++i) {
        const float x = round_to(dt, v[i] * inv);
        const uint32_t c = f.bits == 4 ? nearest_fp4(x, dt) : fmt::float_to_e4m3(x);
        fmt::pack_code(row, i, f.bits, c);
      }
    } else {
      const uint8_t sb = fmt::float_to_e4m3(sc * enc);
      scales[g] = sb;
      const float sdec = round_to(dt, fmt::e4m3_to_float(sb));
      for (int i = 0; i < gs; ++i) {
        const float x = round_to(dt, v[i] / sdec) * enc;  // division in dt, then float32
        fmt::pack_code(row, i, 4, nearest_fp4(x, Dtype::float32));
      }
    }
  }
}

void quantize_cpu(const QuantizeDesc& d, QuantizeArgs& a, const Stream&) {
  const int64_t rows = d.rows, cols = d.cols;
  const int64_t words = cols * d.format.bits / 32, groups = cols / d.format.group_size;
  const bool affine = d.format.mode == Mode::affine;
  float enc = 1.0f;
  if (d.has_global_scale) enc = 2688.0f / *a.global_scale.data<float>();
  const void* w = a.w.raw_data();
  uint32_t* q = a.w_q.data<uint32_t>();
  const size_t ss = mmkit::itemsize(a.scales.dtype());
#pragma omp parallel
  {
    std::vector<float> buf(static_cast<size_t>(cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      to_float(static_cast<const char*>(w) + r * cols * mmkit::itemsize(d.dtype), d.dtype, cols, buf.data());
      if (affine) {
        quantize_affine_row(buf.data(), cols, d.format.bits, d.format.group_size, q + r * words,
                            static_cast<char*>(a.scales.raw_data()) + r * groups * ss,
                            static_cast<char*>(a.biases.raw_data()) + r * groups * ss, d.dtype);
      } else {
        quantize_fp_row(buf.data(), cols, d.format, d.dtype, enc, d.format.mode == Mode::nvfp4, q + r * words,
                        a.scales.data<uint8_t>() + r * groups);
      }
    }
  }
}

void dequantize_cpu(const DequantizeDesc& d, DequantizeArgs& a, const Stream&) {
  const int64_t rows = d.rows, cols = d.cols;
  const int bits = d.format.bits, gs = d.format.group_size;
  const int64_t words = cols * bits / 32, groups = cols / gs;
  const Dtype sdt = d.scale_dtype, odt = d.out_dtype;
  const auto& tr = d.format.traits();
  float gmul = 1.0f;
  if (d.has_global_scale) gmul = *a.global_scale.data<float>() / 2688.0f;
  const uint32_t* q = a.w_q.data<uint32_t>();
  const void* sc = a.scales.raw_data();
  const void* bi = a.biases.is_null() ? nullptr : a.biases.raw_data();
  void* out = a.out.raw_data();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t* row = q + r * words;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t gi = r * groups + g;
      if (tr.mode == Mode::affine) {
        const float s = load_f(sc, sdt, gi), b = load_f(bi, sdt, gi);
        for (int i = 0; i < gs; ++i) {
          const int64_t j = g * gs + i;
          const float c = static_cast<float>(fmt::unpack_code(row, j, bits));
          const float v = round_to(sdt, round_to(sdt, c * s) + b);  // two roundings in T, as MLX
          store_f(out, odt, r * cols + j, v);
        }
      } else {
        const uint8_t sb = static_cast<const uint8_t*>(sc)[gi];
        // With a global scale MLX promotes to float32 and scales the decoded
        // scale first: value * (scale * (global / 2688)).
        const float s = d.has_global_scale
                            ? fmt::e4m3_to_float(sb) * gmul
                            : round_to(odt, tr.scale == fmt::ScaleKind::e8m0 ? fmt::e8m0_to_float(sb)
                                                                             : fmt::e4m3_to_float(sb));
        for (int i = 0; i < gs; ++i) {
          const int64_t j = g * gs + i;
          const uint32_t c = fmt::unpack_code(row, j, bits);
          const float e = tr.elem == fmt::ElemKind::e4m3 ? fmt::e4m3_to_float(c) : fmt::e2m1_to_float(c);
          store_f(out, odt, r * cols + j, e * s);
        }
      }
    }
  }
}

void fp8_cpu(const detail::Fp8Desc& d, detail::Fp8Args& a, const Stream&) {
  const int64_t n = d.size;
  if (d.to_fp8) {
    uint8_t* o = a.out.data<uint8_t>();
    const void* in = a.in.raw_data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) o[i] = fmt::float_to_e4m3(load_f(in, d.float_dtype, i));
  } else {
    const uint8_t* in = a.in.data<uint8_t>();
    void* o = a.out.raw_data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) store_f(o, d.float_dtype, i, fmt::e4m3_to_float(in[i]));
  }
}

}  // namespace

void register_quantize_kernels(detail::Registries& r) {
  auto all = [](const auto&) { return true; };
  r.quantize.add({"cpu_quantize_rowwise", Device::Type::cpu, all, quantize_cpu, 0});
  r.dequantize.add({"cpu_dequantize_rowwise", Device::Type::cpu, all, dequantize_cpu, 0});
  r.fp8.add({"cpu_fp8_convert", Device::Type::cpu, all, fp8_cpu, 0});
}

}  // namespace mmkit::cpu
