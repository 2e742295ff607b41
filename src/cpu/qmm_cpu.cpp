// Portable CPU quantized matmul / gather_qmm: per output matrix, dequantize
// one weight row (or row chunk) at a time into float32 and accumulate every
// activation row against it, so each weight byte is decoded once per call
// for all M rows. float32 accumulation throughout (SPEC decision 5).
#include <algorithm>
#include <vector>

#include "core/registry.h"
#include "cpu/cpu_common.h"
#include "formats/format.h"

namespace mmkit::cpu {
using detail::QmmArgs;
using detail::QmmDesc;

namespace {

/// Decodes `len` weights of packed row `row` starting at column c0 (a
/// multiple of the group size) into dst.
void decode_span(const QmmDesc& d, const uint32_t* row, const void* scales, const void* biases, int64_t c0,
                 int64_t len, float* dst) {
  const auto& f = d.format;
  const auto& tr = f.traits();
  const int gs = f.group_size;
  for (int64_t j = 0; j < len; j += gs) {
    const int64_t g = (c0 + j) / gs;
    if (tr.mode == fmt::Mode::affine) {
      const float s = load_f(scales, d.dtype, g), b = load_f(biases, d.dtype, g);
      for (int i = 0; i < gs; ++i)
        dst[j + i] = s * static_cast<float>(fmt::unpack_code(row, c0 + j + i, f.bits)) + b;
    } else {
      const uint8_t sb = static_cast<const uint8_t*>(scales)[g];
      const float s = tr.scale == fmt::ScaleKind::e8m0 ? fmt::e8m0_to_float(sb) : fmt::e4m3_to_float(sb);
      for (int i = 0; i < gs; ++i) {
        const uint32_t c = fmt::unpack_code(row, c0 + j + i, f.bits);
        dst[j + i] = s * (tr.elem == fmt::ElemKind::e4m3 ? fmt::e4m3_to_float(c) : fmt::e2m1_to_float(c));
      }
    }
  }
}

void qmm_cpu(const QmmDesc& d, QmmArgs& a, const Stream&) {
  const int64_t M = d.M, N = d.N, K = d.K, L = d.batch;
  const int64_t rows = d.w_rows(), words = d.words_per_row(), groups = d.groups_per_row();
  const size_t sbytes = mmkit::itemsize(a.scales.dtype());
  const int64_t* lhs = a.lhs.data<int64_t>();
  const int64_t* rhs = a.rhs.data<int64_t>();
  const uint32_t* W = a.w.data<uint32_t>();
  const char* S = static_cast<const char*>(a.scales.raw_data());
  const char* B = a.biases.is_null() ? nullptr : static_cast<const char*>(a.biases.raw_data());
  const size_t xbytes = mmkit::itemsize(d.dtype);
  const char* X = static_cast<const char*>(a.x.raw_data());
  char* O = static_cast<char*>(a.out.raw_data());

  for (int64_t l = 0; l < L; ++l) {
    const int64_t xi = lhs[l], wi = rhs[l];
    std::vector<float> x(static_cast<size_t>(M * K));
    to_float(X + xi * M * K * xbytes, d.dtype, M * K, x.data());
    const uint32_t* w = W + wi * rows * words;
    const char* s = S + wi * rows * groups * sbytes;
    const char* b = B ? B + wi * rows * groups * sbytes : nullptr;
    char* o = O + l * M * N * xbytes;
    if (d.transpose) {
      // w is (N, K): one decoded row gives one output column for all M rows.
#pragma omp parallel
      {
        std::vector<float> wrow(static_cast<size_t>(K));
        std::vector<float> col(static_cast<size_t>(M));
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
          decode_span(d, w + n * words, s + n * groups * sbytes, b ? b + n * groups * sbytes : nullptr, 0, K,
                      wrow.data());
          for (int64_t m = 0; m < M; ++m) {
            const float* xr = x.data() + m * K;
            float acc = 0.0f;
            for (int64_t k = 0; k < K; ++k) acc += xr[k] * wrow[k];
            store_f(o, d.dtype, m * N + n, acc);
          }
        }
      }
    } else {
      // w is (K, N) with groups along N: each thread owns a column chunk
      // (a multiple of the group size) and streams the K rows through it.
      const int64_t gs = d.format.group_size;
      const int64_t chunk = std::max<int64_t>(gs, (N / gs + num_threads() - 1) / num_threads() * gs);
      const int64_t nchunks = (N + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
      for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t c0 = c * chunk, len = std::min(chunk, N - c0);
        std::vector<float> acc(static_cast<size_t>(M * len), 0.0f);
        std::vector<float> wrow(static_cast<size_t>(len));
        for (int64_t k = 0; k < K; ++k) {
          decode_span(d, w + k * words, s + k * groups * sbytes, b ? b + k * groups * sbytes : nullptr, c0, len,
                      wrow.data());
          for (int64_t m = 0; m < M; ++m) {
            const float xv = x[m * K + k];
            float* ar = acc.data() + m * len;
            for (int64_t j = 0; j < len; ++j) ar[j] += xv * wrow[j];
          }
        }
        for (int64_t m = 0; m < M; ++m)
          for (int64_t j = 0; j < len; ++j) store_f(o, d.dtype, m * N + c0 + j, acc[m * len + j]);
      }
    }
  }
}

}  // namespace

void register_qmm_kernels(detail::Registries& r) {
  r.qmm.add({"cpu_qmm_generic", Device::Type::cpu, [](const QmmDesc&) { return true; }, qmm_cpu, 0});
}

}  // namespace mmkit::cpu
