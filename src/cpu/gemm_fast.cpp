// Fast CPU gather_mm / matmul and block_masked_mm (entries cpu_gemm_avx512 /
// _avx2 and cpu_block_masked_avx512 / _avx2; the portable kernels stay at
// priority 0).
//
// gather_mm: pairs grouped by rhs like gather_qmm, so each b is packed once per
//   call for all rows routed to it; then the blocked GEMM of gemm_driver.h.
//   Bound: the FMA peak for large M (docs/kernels/cpu.md compares it with
//   OpenBLAS sgemm); the b read for few rows.
// block_masked_mm: a and b packed once per batch entry (operand-mask scales
//   folded into the packing when the masks are float), then one task per
//   output block: bool-masked output blocks are zero-filled without work, and
//   only the k-blocks whose operand masks are non-zero are multiplied (runs of
//   consecutive active k-blocks in one micro-kernel call), so the time scales
//   with the unmasked fraction. Float masks multiply the data (NaN * 0 stays
//   NaN), as the portable kernel does.
#include <algorithm>
#include <numeric>
#include <vector>

#include "core/registry.h"
#include "cpu/cpu_common.h"
#include "cpu/cpu_isa.h"
#include "cpu/gemm_driver.h"
#include "cpu/simd_kernels.h"
#include "mmkit/error.h"

namespace mmkit::cpu {
using detail::BlockMaskedArgs;
using detail::BlockMaskedDesc;
using detail::GemmArgs;
using detail::GemmDesc;

namespace {

int dtype_code(Dtype dt) { return dt == Dtype::float16 ? 1 : dt == Dtype::bfloat16 ? 2 : 0; }

void gemm_fast(const SimdKernels& kern, const GemmDesc& d, GemmArgs& g) {
  const int64_t M = d.M, N = d.N, K = d.K, L = d.batch;
  const int64_t* lhs = g.lhs.data<int64_t>();
  const int64_t* rhs = g.rhs.data<int64_t>();
  if (!d.indices_checked)
    for (int64_t l = 0; l < L; ++l)
      if (lhs[l] < 0 || lhs[l] >= d.a_batch || rhs[l] < 0 || rhs[l] >= d.b_batch)
        throw Error(std::string("[") + d.op + "] index pair (" + std::to_string(lhs[l]) + ", " +
                    std::to_string(rhs[l]) + ") at flat position " + std::to_string(l) + " is out of range.");
  const int dt = dtype_code(d.dtype);
  const size_t es = mmkit::itemsize(d.dtype);
  const char* A = static_cast<const char*>(g.a.raw_data());
  const char* B = static_cast<const char*>(g.b.raw_data());
  char* O = static_cast<char*>(g.out.raw_data());

  // Group pairs by rhs so each b is packed once for all its rows.
  std::vector<int64_t> order(static_cast<size_t>(L));
  std::iota(order.begin(), order.end(), 0);
  if (!d.rhs_sorted) std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return rhs[x] < rhs[y]; });
  struct Group {
    int64_t b;
    std::vector<int64_t> pairs;
    FloatBuffer ap;
    std::vector<char*> out;
  };
  std::vector<Group> groups;
  for (int64_t i = 0; i < L; ++i) {
    const int64_t l = order[static_cast<size_t>(i)];
    if (groups.empty() || groups.back().b != rhs[l]) groups.push_back({rhs[l], {}, nullptr, {}});
    groups.back().pairs.push_back(l);
  }
  std::vector<GemmJob> jobs(groups.size());
  struct PackItem {
    size_t job;
    int64_t tile;
  };
  std::vector<PackItem> pitems;
  for (size_t j = 0; j < groups.size(); ++j) {
    Group& gr = groups[j];
    GemmJob& job = jobs[j];
    job.M = static_cast<int64_t>(gr.pairs.size()) * M;
    job.N = N;
    job.K = K;
    job.mr = pick_mr(kern, job.M);
    const int64_t tiles = (job.M + job.mr - 1) / job.mr;
    gr.ap = float_buffer(static_cast<size_t>(a_packed_floats(job.M, K, job.mr)));
    for (int64_t l : gr.pairs)
      for (int64_t m = 0; m < M; ++m) gr.out.push_back(O + (l * M + m) * N * es);
    for (int64_t t = 0; t < tiles; ++t) pitems.push_back({j, t});
  }
  const int64_t np = static_cast<int64_t>(pitems.size());
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t i = 0; i < np; ++i) {
    const PackItem& p = pitems[static_cast<size_t>(i)];
    Group& gr = groups[p.job];
    const GemmJob& job = jobs[p.job];
    const void* rows[16];
    const int mv = static_cast<int>(std::min<int64_t>(job.mr, job.M - p.tile * job.mr));
    for (int r = 0; r < mv; ++r) {
      const int64_t row = p.tile * job.mr + r;
      rows[r] = A + (lhs[gr.pairs[static_cast<size_t>(row / M)]] * M + row % M) * K * es;
    }
    kern.pack_a(rows, dt, mv, job.mr, K, gr.ap.get() + p.tile * kGemmKc * job.mr, a_kblock_stride(job.M, job.mr),
                nullptr, 0, 1);
  }
  const bool kmajor = d.b_kmajor;
  for (size_t j = 0; j < groups.size(); ++j) {
    Group* gr = &groups[j];
    GemmJob& job = jobs[j];
    job.ap = gr->ap.get();
    const char* bmat = B + gr->b * K * N * es;
    const int64_t ldb = kmajor ? K : N;
    job.pack_b = [&kern, bmat, dt, kmajor, ldb](int64_t n0, int nv, int64_t k0, int64_t kc, float* bp, float*) {
      kern.pack_b(bmat, dt, kmajor, ldb, n0, nv, k0, kc, bp, nullptr, 1);
    };
    job.store = [&kern, gr, dt, es](int64_t m0, int mv, int64_t n0, int nv, const float* c, int64_t ldc) {
      for (int i = 0; i < mv; ++i) kern.from_f32(c + i * ldc, nv, dt, gr->out[static_cast<size_t>(m0 + i)] + n0 * es);
    };
  }
  run_gemm_jobs(kern, jobs, 0);
}

void block_masked_fast(const SimdKernels& kern, const BlockMaskedDesc& d, BlockMaskedArgs& g) {
  const int64_t M = d.M, N = d.N, K = d.K, bs = d.block_size;
  const int64_t tm = d.tm(), tn = d.tn(), tk = d.tk();
  const int dt = dtype_code(d.dtype);
  const size_t es = mmkit::itemsize(d.dtype);
  const int64_t* ai = g.a_idx.data<int64_t>();
  const int64_t* bi = g.b_idx.data<int64_t>();
  const char* A = static_cast<const char*>(g.a.raw_data());
  const char* B = static_cast<const char*>(g.b.raw_data());
  char* O = static_cast<char*>(g.out.raw_data());
  const float* mo = g.mask_out.is_null() ? nullptr : g.mask_out.data<float>();
  const float* ml = g.mask_lhs.is_null() ? nullptr : g.mask_lhs.data<float>();
  const float* mr_ = g.mask_rhs.is_null() ? nullptr : g.mask_rhs.data<float>();
  const bool float_ops = d.has_op_masks && !d.op_masks_bool;
  const int mr = kern.mr, nr = kern.nr;
  // Each block row packs into ceil(bs / mr) micro-tiles (the last one partial),
  // so micro-tiles never straddle mask blocks.
  const int64_t tiles_per_brow = (bs + mr - 1) / mr;
  const int64_t ntiles = (N + nr - 1) / nr;
  FloatBuffer ap = float_buffer(static_cast<size_t>(tm * tiles_per_brow * K * mr));
  FloatBuffer bp = float_buffer(static_cast<size_t>(ntiles * K * nr));
  for (int64_t l = 0; l < d.batch; ++l) {
    const char* a = A + ai[l] * M * K * es;
    const char* b = B + bi[l] * K * N * es;
    const int64_t ldb = d.b_kmajor ? K : N;
    // pack a: (block row, micro-tile) -> K x mr, scaled by the float lhs mask
#pragma omp parallel for schedule(dynamic, 2)
    for (int64_t t = 0; t < tm * tiles_per_brow; ++t) {
      const int64_t i = t / tiles_per_brow, sub = t % tiles_per_brow;
      const int64_t r0 = i * bs + sub * mr;
      const int64_t rend = std::min(M, (i + 1) * bs);
      const int mv = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(mr, rend - r0)));
      const void* rows[16];
      for (int r = 0; r < mv; ++r) rows[r] = a + (r0 + r) * K * es;
      const float* ks = float_ops && ml ? ml + (l * tm + i) * tk : nullptr;
      kern.pack_a(rows, dt, mv, mr, K, ap.get() + t * K * mr, kGemmKc * mr, ks, 0, bs);
    }
    // pack b: n-tile -> K x nr, scaled by the float rhs mask of its column block.
    // k-chunk-major order: neighbouring tasks read the same rows of b (few TLB pages).
    const int64_t nkc = (K + kGemmKc - 1) / kGemmKc;
#pragma omp parallel
    {
      std::vector<float> col(static_cast<size_t>(tk));
#pragma omp for schedule(static)
      for (int64_t it = 0; it < nkc * ntiles; ++it) {
        const int64_t k0 = (it / ntiles) * kGemmKc, t = it % ntiles;
        const int64_t n0 = t * nr, jb = n0 / bs;
        const int nv = static_cast<int>(std::min<int64_t>(nr, N - n0));
        const float* ks = nullptr;
        if (float_ops && mr_) {
          for (int64_t k = 0; k < tk; ++k) col[static_cast<size_t>(k)] = mr_[(l * tk + k) * tn + jb];
          ks = col.data();
        }
        kern.pack_b(b, dt, d.b_kmajor, ldb, n0, nv, k0, std::min(kGemmKc, K - k0), bp.get() + (t * K + k0) * nr, ks,
                    bs);
      }
    }
    // one task per output block
    char* o = O + l * M * N * es;
#pragma omp parallel
    {
      std::vector<float> c(static_cast<size_t>(bs * bs));
      std::vector<int64_t> runs;
#pragma omp for collapse(2) schedule(dynamic, 1)
      for (int64_t i = 0; i < tm; ++i) {
        for (int64_t j = 0; j < tn; ++j) {
          const int64_t m0 = i * bs, m1 = std::min(M, m0 + bs), n0 = j * bs, n1 = std::min(N, n0 + bs);
          const int64_t bw = n1 - n0;
          const float om = mo ? mo[(l * tm + i) * tn + j] : 1.0f;
          // float32 results accumulate straight into the output block; half types via c.
          const bool direct = dt == 0;
          float* cb = direct ? reinterpret_cast<float*>(o) + m0 * N + n0 : c.data();
          const int64_t ldc = direct ? N : bw;
          const bool skip = mo && d.out_mask_bool && om == 0.0f;
          // runs of consecutive active k-blocks: [k_begin, k_end)
          runs.clear();
          for (int64_t k = 0; k < tk && !skip; ++k) {
            bool active = true;
            if (d.has_op_masks && d.op_masks_bool) {
              const float lw = ml ? ml[(l * tm + i) * tk + k] : 1.0f;
              const float rw = mr_ ? mr_[(l * tk + k) * tn + j] : 1.0f;
              active = lw != 0.0f && rw != 0.0f;
            }
            if (!active) continue;
            if (!runs.empty() && runs.back() == k * bs) runs.back() = std::min(K, (k + 1) * bs);
            else {
              runs.push_back(k * bs);
              runs.push_back(std::min(K, (k + 1) * bs));
            }
          }
          if (runs.empty()) {  // masked or nothing to add: zeros
            for (int64_t m = 0; m < m1 - m0; ++m) std::fill(cb + m * ldc, cb + m * ldc + bw, 0.0f);
          } else {
            for (int64_t sub = 0; sub * mr < m1 - m0; ++sub) {
              const int mv = static_cast<int>(std::min<int64_t>(mr, m1 - m0 - sub * mr));
              const float* apt = ap.get() + (i * tiles_per_brow + sub) * K * mr;
              for (int64_t nn = n0; nn < n1; nn += nr) {
                const int nv = static_cast<int>(std::min<int64_t>(nr, n1 - nn));
                const float* bpt = bp.get() + (nn / nr) * K * nr;
                float* cc = cb + sub * mr * ldc + (nn - n0);
                for (size_t r = 0; r < runs.size(); r += 2)
                  kern.gemm_tile(mr, runs[r + 1] - runs[r], apt + runs[r] * mr, bpt + runs[r] * nr, cc, ldc, mv, nv,
                                 r > 0);
              }
            }
          }
          if (mo && !d.out_mask_bool)  // float output mask scales the block (0 * Inf stays NaN)
            for (int64_t m = 0; m < m1 - m0; ++m)
              for (int64_t e = 0; e < bw; ++e) cb[m * ldc + e] *= om;
          if (!direct)
            for (int64_t m = m0; m < m1; ++m) kern.from_f32(c.data() + (m - m0) * bw, bw, dt, o + (m * N + n0) * es);
        }
      }
    }
  }
}

bool active_is(Isa isa) { return active_isa() == isa; }

}  // namespace

void register_gemm_fast_kernels(detail::Registries& r) {
  r.gemm.add({"cpu_gemm_avx512", Device::Type::cpu, [](const GemmDesc&) { return active_is(Isa::avx512); },
              [](const GemmDesc& d, GemmArgs& a, const Stream&) { gemm_fast(*simd_kernels_avx512(), d, a); }, 20});
  r.gemm.add({"cpu_gemm_avx2", Device::Type::cpu, [](const GemmDesc&) { return active_is(Isa::avx2); },
              [](const GemmDesc& d, GemmArgs& a, const Stream&) { gemm_fast(*simd_kernels_avx2(), d, a); }, 10});
  r.block_masked.add({"cpu_block_masked_avx512", Device::Type::cpu,
                      [](const BlockMaskedDesc&) { return active_is(Isa::avx512); },
                      [](const BlockMaskedDesc& d, BlockMaskedArgs& a, const Stream&) {
                        block_masked_fast(*simd_kernels_avx512(), d, a);
                      },
                      20});
  r.block_masked.add({"cpu_block_masked_avx2", Device::Type::cpu,
                      [](const BlockMaskedDesc&) { return active_is(Isa::avx2); },
                      [](const BlockMaskedDesc& d, BlockMaskedArgs& a, const Stream&) {
                        block_masked_fast(*simd_kernels_avx2(), d, a);
                      },
                      10});
}

}  // namespace mmkit::cpu
