// Portable CPU gather_mm / matmul and block_masked_mm: float32 panels,
// i-k-j loops over 64-wide tiles (cache-blocked), float32 accumulation.
// block_masked_mm skips bool-masked output blocks and bool-masked operand
// block pairs, so its work scales with the unmasked fraction.
#include <algorithm>
#include <vector>

#include "core/registry.h"
#include "cpu/cpu_common.h"

namespace mmkit::cpu {
using detail::BlockMaskedArgs;
using detail::BlockMaskedDesc;
using detail::GemmArgs;
using detail::GemmDesc;

namespace {

/// b as a float32 (K, N) row-major panel.
void load_b(const void* b, Dtype dt, bool kmajor, int64_t K, int64_t N, float* dst) {
  if (!kmajor) {
    to_float(b, dt, K * N, dst);
    return;
  }
  std::vector<float> t(static_cast<size_t>(K * N));
  to_float(b, dt, K * N, t.data());  // (N, K)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) dst[k * N + n] = t[n * K + k];
}

/// C[m0:m1, n0:n1] += scale * A[m0:m1, k0:k1] @ B[k0:k1, n0:n1] (row-major panels).
inline void tile_mac(const float* A, const float* B, float* C, int64_t K, int64_t N, int64_t m0, int64_t m1,
                     int64_t n0, int64_t n1, int64_t k0, int64_t k1, float scale) {
  for (int64_t m = m0; m < m1; ++m) {
    float* c = C + m * N;
    for (int64_t k = k0; k < k1; ++k) {
      const float av = A[m * K + k] * scale;
      const float* b = B + k * N;
      for (int64_t n = n0; n < n1; ++n) c[n] += av * b[n];
    }
  }
}

void gemm_cpu(const GemmDesc& d, GemmArgs& g, const Stream&) {
  const int64_t M = d.M, N = d.N, K = d.K;
  const size_t es = mmkit::itemsize(d.dtype);
  const int64_t* lhs = g.lhs.data<int64_t>();
  const int64_t* rhs = g.rhs.data<int64_t>();
  const char* A = static_cast<const char*>(g.a.raw_data());
  const char* B = static_cast<const char*>(g.b.raw_data());
  char* O = static_cast<char*>(g.out.raw_data());
  std::vector<float> a(static_cast<size_t>(M * K)), b(static_cast<size_t>(K * N));
  constexpr int64_t kTile = 64;
  for (int64_t l = 0; l < d.batch; ++l) {
    to_float(A + lhs[l] * M * K * es, d.dtype, M * K, a.data());
    load_b(B + rhs[l] * K * N * es, d.dtype, d.b_kmajor, K, N, b.data());
    const int64_t mt = (M + kTile - 1) / kTile;
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < mt; ++i) {
      const int64_t m0 = i * kTile, m1 = std::min(M, m0 + kTile);
      std::vector<float> c(static_cast<size_t>((m1 - m0) * N), 0.0f);
      for (int64_t k0 = 0; k0 < K; k0 += kTile)
        for (int64_t n0 = 0; n0 < N; n0 += 256)
          tile_mac(a.data() + m0 * K, b.data(), c.data(), K, N, 0, m1 - m0, n0, std::min(N, n0 + 256), k0,
                   std::min(K, k0 + kTile), 1.0f);
      from_float(c.data(), (m1 - m0) * N, d.dtype, O + (l * M * N + m0 * N) * es);
    }
  }
}

void block_masked_cpu(const BlockMaskedDesc& d, BlockMaskedArgs& g, const Stream&) {
  const int64_t M = d.M, N = d.N, K = d.K, bs = d.block_size;
  const int64_t tm = d.tm(), tn = d.tn(), tk = d.tk();
  const size_t es = mmkit::itemsize(d.dtype);
  const int64_t* ai = g.a_idx.data<int64_t>();
  const int64_t* bi = g.b_idx.data<int64_t>();
  const char* A = static_cast<const char*>(g.a.raw_data());
  const char* B = static_cast<const char*>(g.b.raw_data());
  char* O = static_cast<char*>(g.out.raw_data());
  const float* mo = g.mask_out.is_null() ? nullptr : g.mask_out.data<float>();
  const float* ml = g.mask_lhs.is_null() ? nullptr : g.mask_lhs.data<float>();
  const float* mr = g.mask_rhs.is_null() ? nullptr : g.mask_rhs.data<float>();
  std::vector<float> a(static_cast<size_t>(M * K)), b(static_cast<size_t>(K * N)), c(static_cast<size_t>(M * N));
  for (int64_t l = 0; l < d.batch; ++l) {
    to_float(A + ai[l] * M * K * es, d.dtype, M * K, a.data());
    load_b(B + bi[l] * K * N * es, d.dtype, d.b_kmajor, K, N, b.data());
    std::fill(c.begin(), c.end(), 0.0f);
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int64_t i = 0; i < tm; ++i) {
      for (int64_t j = 0; j < tn; ++j) {
        const int64_t m0 = i * bs, m1 = std::min(M, m0 + bs), n0 = j * bs, n1 = std::min(N, n0 + bs);
        const float om = mo ? mo[(l * tm + i) * tn + j] : 1.0f;
        if (mo && d.out_mask_bool && om == 0.0f) continue;  // block stays 0
        for (int64_t k = 0; k < tk; ++k) {
          const float lw = ml ? ml[(l * tm + i) * tk + k] : 1.0f;
          const float rw = mr ? mr[(l * tk + k) * tn + j] : 1.0f;
          if (d.op_masks_bool && (lw == 0.0f || rw == 0.0f)) continue;  // zeroed operand block
          const int64_t k0 = k * bs, k1 = std::min(K, k0 + bs);
          if (lw == 1.0f && rw == 1.0f) {
            tile_mac(a.data(), b.data(), c.data(), K, N, m0, m1, n0, n1, k0, k1, 1.0f);
          } else {
            // Float operand masks multiply the data: (lw * a) * (rw * b), so NaN * 0 stays NaN.
            for (int64_t m = m0; m < m1; ++m)
              for (int64_t kk = k0; kk < k1; ++kk) {
                const float av = lw * a[m * K + kk];
                for (int64_t n = n0; n < n1; ++n) c[m * N + n] += av * (rw * b[kk * N + n]);
              }
          }
        }
        if (mo && !d.out_mask_bool)
          for (int64_t m = m0; m < m1; ++m)
            for (int64_t n = n0; n < n1; ++n) c[m * N + n] *= om;
      }
    }
    from_float(c.data(), M * N, d.dtype, O + l * M * N * es);
  }
}

}  // namespace

void register_gemm_kernels(detail::Registries& r) {
  r.gemm.add({"cpu_gemm_generic", Device::Type::cpu, [](const GemmDesc&) { return true; }, gemm_cpu, 0});
  r.block_masked.add({"cpu_block_masked_generic", Device::Type::cpu, [](const BlockMaskedDesc&) { return true; },
                      block_masked_cpu, 0});
}

}  // namespace mmkit::cpu
