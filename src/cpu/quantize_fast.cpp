// Fast CPU quantize / dequantize (entries cpu_quantize_avx512 / _avx2 and
// cpu_dequantize_avx512 / _avx2): rows split across threads, each row through
// the vectorised kernels of quantize_simd.inc, which keep every rounding step
// of the portable kernels, so the bytes are identical (tests/test_cpu_isa.cpp).
// Bound: memory bandwidth (read the input once, write the output once).
#include <algorithm>
#include <vector>

#include "core/registry.h"
#include "cpu/cpu_common.h"
#include "cpu/cpu_isa.h"
#include "cpu/simd_kernels.h"

namespace mmkit::cpu {
using detail::DequantizeArgs;
using detail::DequantizeDesc;
using detail::QuantizeArgs;
using detail::QuantizeDesc;

namespace {

int dtype_code(Dtype dt) { return dt == Dtype::float16 ? 1 : dt == Dtype::bfloat16 ? 2 : 0; }

void dequantize_fast(const SimdKernels& kern, const DequantizeDesc& d, DequantizeArgs& a) {
  QWeights q;
  q.w = a.w_q.data<uint32_t>();
  q.scales = a.scales.raw_data();
  q.biases = a.biases.is_null() ? nullptr : a.biases.raw_data();
  q.rows = d.rows;
  q.cols = d.cols;
  q.words = d.cols * d.format.bits / 32;
  q.groups = d.cols / d.format.group_size;
  q.bits = d.format.bits;
  q.group_size = d.format.group_size;
  q.mode = static_cast<int>(d.format.mode);
  q.sdt = d.format.mode == fmt::Mode::affine ? dtype_code(d.scale_dtype) : 0;
  const float gmul = d.has_global_scale ? *a.global_scale.data<float>() / 2688.0f : 1.0f;
  const int odt = dtype_code(d.out_dtype);
  void* out = a.out.raw_data();
  const int64_t chunk = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, d.cols));
  const int64_t nchunks = (d.rows + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < nchunks; ++c)
    kern.dequantize(q, c * chunk, std::min(d.rows, (c + 1) * chunk), out, odt, d.has_global_scale, gmul);
}

void quantize_fast(const SimdKernels& kern, const QuantizeDesc& d, QuantizeArgs& a) {
  const int64_t rows = d.rows, cols = d.cols;
  const int64_t words = cols * d.format.bits / 32, groups = cols / d.format.group_size;
  const bool affine = d.format.mode == fmt::Mode::affine;
  const float enc = d.has_global_scale ? 2688.0f / *a.global_scale.data<float>() : 1.0f;
  const int dt = dtype_code(d.dtype);
  const size_t es = mmkit::itemsize(d.dtype);
  const size_t ss = mmkit::itemsize(a.scales.dtype());
  const char* w = static_cast<const char*>(a.w.raw_data());
  uint32_t* q = a.w_q.data<uint32_t>();
  char* sc = static_cast<char*>(a.scales.raw_data());
  char* bi = affine ? static_cast<char*>(a.biases.raw_data()) : nullptr;
#pragma omp parallel
  {
    std::vector<float> buf(static_cast<size_t>(cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      kern.to_f32(w + r * cols * es, dt, cols, buf.data());
      kern.quantize_row(buf.data(), cols, static_cast<int>(d.format.mode), d.format.bits, d.format.group_size, dt, enc,
                        d.has_global_scale, q + r * words, sc + r * groups * ss, bi ? bi + r * groups * ss : nullptr);
    }
  }
}

bool active_is(Isa isa) { return active_isa() == isa; }

}  // namespace

void register_quantize_fast_kernels(detail::Registries& r) {
  r.quantize.add({"cpu_quantize_avx512", Device::Type::cpu, [](const QuantizeDesc&) { return active_is(Isa::avx512); },
                  [](const QuantizeDesc& d, QuantizeArgs& a, const Stream&) { quantize_fast(*simd_kernels_avx512(), d, a); },
                  20});
  r.quantize.add({"cpu_quantize_avx2", Device::Type::cpu, [](const QuantizeDesc&) { return active_is(Isa::avx2); },
                  [](const QuantizeDesc& d, QuantizeArgs& a, const Stream&) { quantize_fast(*simd_kernels_avx2(), d, a); },
                  10});
  r.dequantize.add({"cpu_dequantize_avx512", Device::Type::cpu,
                    [](const DequantizeDesc&) { return active_is(Isa::avx512); },
                    [](const DequantizeDesc& d, DequantizeArgs& a, const Stream&) {
                      dequantize_fast(*simd_kernels_avx512(), d, a);
                    },
                    20});
  r.dequantize.add({"cpu_dequantize_avx2", Device::Type::cpu,
                    [](const DequantizeDesc&) { return active_is(Isa::avx2); },
                    [](const DequantizeDesc& d, DequantizeArgs& a, const Stream&) {
                      dequantize_fast(*simd_kernels_avx2(), d, a);
                    },
                    10});
}

}  // namespace mmkit::cpu
