// Fast CPU gather_mm / matmul and block_masked_mm (entries cpu_gemm_avx512 /
// _avx2 and cpu_block_masked_avx512 / _avx2; the portable kernels stay at
// priority 0).
//
// gather_mm: pairs grouped by rhs like gather_qmm, so each b is packed once per
//   call for all rows routed to it; then the blocked GEMM of gemm_driver.h.
//   Bound: the FMA peak for large M (docs/kernels/cpu.md compares it with
//   OpenBLAS sgemm); the b read for few rows.
// block_masked_mm: per batch entry, one task per block row (split into column
//   ranges when there are few rows) packs the k-blocks of its a rows that its
//   active blocks use into a per-thread panel (L2-resident while those blocks
//   are computed), zero-fills its bool-masked output blocks with streaming
//   stores and multiplies only the k-blocks whose operand masks are non-zero
//   (runs of consecutive active k-blocks in one micro-kernel call). b is packed
//   once per entry, only the (k-block, column block) pairs some active block
//   uses, each column block by the first task that needs it. So packing,
//   zeroing and multiplying all scale with the unmasked fraction (bound: the
//   FMA peak on the active blocks; target >= 0.7 / d x the dense time). Float
//   masks multiply the data (NaN * 0 stays NaN), as the portable kernel does,
//   and never skip work.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <emmintrin.h>
#include <numeric>
#include <thread>
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

/// Zero-fills n bytes with non-temporal stores (SSE2, baseline x86-64): skipped
/// output blocks are not read for ownership nor left in the caches, which hold
/// the packed operands. The caller issues the sfence.
void zero_stream(char* p, size_t n) {
  const size_t head = std::min(n, static_cast<size_t>((16 - reinterpret_cast<uintptr_t>(p) % 16) % 16));
  std::memset(p, 0, head);
  p += head;
  n -= head;
  const __m128i z = _mm_setzero_si128();
  for (; n >= 16; n -= 16, p += 16) _mm_stream_si128(reinterpret_cast<__m128i*>(p), z);
  std::memset(p, 0, n);
}

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
  const bool bool_ops = d.has_op_masks && d.op_masks_bool;
  const bool skip_out = mo && d.out_mask_bool;  // bool false output blocks are zeros, no work
  const int nr = kern.nr;
  // Micro-tile height: AVX-512 takes 8-row tiles when they pad a block row less
  // (bs = 32 or 64, where 12-row tiles would compute 36 or 72 rows; measured
  // 9% faster at every density). AVX2's 4-row tile measured no faster than 6.
  auto padded = [bs](int h) { return (bs + h - 1) / h * h; };
  const int mr = kern.mr > 8 && padded(8) < padded(kern.mr) ? 8 : kern.mr;
  const int64_t ldb = d.b_kmajor ? K : N;
  // Each block row packs into ceil(bs / mr) micro-tiles (the last one partial),
  // so micro-tiles never straddle mask blocks; bs is a multiple of nr, so
  // neither do the packed n-tiles of b.
  const int64_t tiles_per_brow = (bs + mr - 1) / mr;
  const int64_t ntiles = (N + nr - 1) / nr;
  // Tasks: (block row, range of column blocks); a block row is split only when
  // there are too few rows to keep every thread busy (its a rows are then packed
  // once per part).
  const int64_t parts = std::min<int64_t>(tn, std::max<int64_t>(1, (4 * num_threads() + tm - 1) / tm));
  const int64_t jper = (tn + parts - 1) / parts;
  const int64_t ntasks = tm * parts;
  // b packed once per batch entry, only the (k-block, column block) pairs some
  // active output block uses: n-tile t holds K x nr floats at bp + t * K * nr.
  // An Array, so a large panel comes from the host buffer cache (huge pages, no
  // page faults on every call).
  Array bpa = Array::empty({ntiles * K * nr}, Dtype::float32);
  float* bpp = bpa.data<float>();
  std::vector<uint8_t> need_b(static_cast<size_t>(tk * tn));
  // Column block j of bp is packed by the first task that needs it (0 not
  // packed, 1 being packed, 2 ready), so packing overlaps the other threads'
  // multiplications and a block is multiplied while its panel is in cache.
  std::vector<std::atomic<int>> bstate(static_cast<size_t>(tn));
  std::vector<int64_t> work(static_cast<size_t>(ntasks)), order(static_cast<size_t>(ntasks));
  auto out_active = [&](int64_t l, int64_t i, int64_t j) { return !skip_out || mo[(l * tm + i) * tn + j] != 0.0f; };
  // k-block k contributes to output block (i, j): bool operand masks skip it.
  auto k_active = [&](int64_t l, int64_t i, int64_t k, int64_t j) {
    if (!bool_ops) return true;
    return (!ml || ml[(l * tm + i) * tk + k] != 0.0f) && (!mr_ || mr_[(l * tk + k) * tn + j] != 0.0f);
  };
#pragma omp parallel
  {
    // Per thread: the packed a of one block row (L2-resident while its blocks
    // are computed), the half-precision output staging block, the k-runs.
    FloatBuffer ap = float_buffer(static_cast<size_t>(tiles_per_brow * K * mr));
    std::vector<float> c(static_cast<size_t>(d.dtype == Dtype::float32 ? 1 : bs * bs));
    std::vector<float> col(static_cast<size_t>(tk));
    std::vector<uint8_t> need_a(static_cast<size_t>(tk));
    std::vector<int64_t> runs, run_start, pending;
    // Packs column block j of b (its needed k-blocks, scaled by the float rhs mask).
    auto pack_b_block = [&](int64_t l, const char* b, int64_t j) {
      const float* ks = nullptr;
      if (float_ops && mr_) {
        for (int64_t k = 0; k < tk; ++k) col[static_cast<size_t>(k)] = mr_[(l * tk + k) * tn + j];
        ks = col.data();
      }
      const int64_t n_end = std::min(N, (j + 1) * bs);
      for (int64_t kb = 0; kb < tk;) {
        if (!need_b[static_cast<size_t>(kb * tn + j)]) {
          ++kb;
          continue;
        }
        int64_t ke = kb;
        while (ke < tk && need_b[static_cast<size_t>(ke * tn + j)]) ++ke;
        const int64_t k0 = kb * bs, k1 = std::min(K, ke * bs);
        for (int64_t n0 = j * bs; n0 < n_end; n0 += nr) {
          const int nv = static_cast<int>(std::min<int64_t>(nr, n_end - n0));
          kern.pack_b(b, dt, d.b_kmajor, ldb, n0, nv, k0, k1 - k0, bpp + ((n0 / nr) * K + k0) * nr, ks, bs);
        }
        kb = ke;
      }
    };
    for (int64_t l = 0; l < d.batch; ++l) {
      const char* a = A + ai[l] * M * K * es;
      const char* b = B + bi[l] * K * N * es;
      char* o = O + l * M * N * es;
#pragma omp single
      {
        std::fill(need_b.begin(), need_b.end(), uint8_t{0});
        std::fill(work.begin(), work.end(), int64_t{0});
        for (int64_t i = 0; i < tm; ++i)
          for (int64_t j = 0; j < tn; ++j)
            if (out_active(l, i, j))
              for (int64_t k = 0; k < tk; ++k) {
                const bool on = k_active(l, i, k, j);
                need_b[static_cast<size_t>(k * tn + j)] |= on;
                work[static_cast<size_t>(i * parts + j / jper)] += on;
              }
        for (auto& st : bstate) st.store(0, std::memory_order_relaxed);
        // the largest tasks first, so the dynamic schedule ends balanced
        std::iota(order.begin(), order.end(), int64_t{0});
        std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
          return work[static_cast<size_t>(x)] > work[static_cast<size_t>(y)];
        });
      }  // implicit barrier
#pragma omp for schedule(dynamic, 1)
      for (int64_t ti = 0; ti < ntasks; ++ti) {
        const int64_t task = order[static_cast<size_t>(ti)];
        const int64_t i = task / parts, j0 = (task % parts) * jper, j1 = std::min(tn, j0 + jper);
        if (j0 >= j1) continue;
        const int64_t m0 = i * bs, m1 = std::min(M, m0 + bs), rows_i = m1 - m0;
        // k-runs [begin, end) of every active block of the task, and the k-blocks of a they use
        runs.clear();
        run_start.assign(static_cast<size_t>(j1 - j0 + 1), 0);
        std::fill(need_a.begin(), need_a.end(), uint8_t{0});
        for (int64_t j = j0; j < j1; ++j) {
          run_start[static_cast<size_t>(j - j0)] = static_cast<int64_t>(runs.size());
          if (!out_active(l, i, j)) continue;
          for (int64_t k = 0; k < tk; ++k) {
            if (!k_active(l, i, k, j)) continue;
            need_a[static_cast<size_t>(k)] = 1;
            if (static_cast<int64_t>(runs.size()) > run_start[static_cast<size_t>(j - j0)] && runs.back() == k * bs)
              runs.back() = std::min(K, (k + 1) * bs);
            else {
              runs.push_back(k * bs);
              runs.push_back(std::min(K, (k + 1) * bs));
            }
          }
        }
        run_start[static_cast<size_t>(j1 - j0)] = static_cast<int64_t>(runs.size());
        // zeros for the skipped output blocks, consecutive ones in one fill per row
        for (int64_t j = j0; j < j1;) {
          if (out_active(l, i, j)) {
            ++j;
            continue;
          }
          int64_t je = j;
          while (je < j1 && !out_active(l, i, je)) ++je;
          const int64_t n0 = j * bs, n1 = std::min(N, je * bs);
          for (int64_t m = m0; m < m1; ++m) zero_stream(o + (m * N + n0) * es, static_cast<size_t>(n1 - n0) * es);
          j = je;
        }
        // pack the used k-blocks of a's block row, scaled by the float lhs mask
        const float* ks = float_ops && ml ? ml + (l * tm + i) * tk : nullptr;
        for (int64_t sub = 0; sub * mr < rows_i; ++sub) {
          const int mv = static_cast<int>(std::min<int64_t>(mr, rows_i - sub * mr));
          for (int64_t kb = 0; kb < tk;) {
            if (!need_a[static_cast<size_t>(kb)]) {
              ++kb;
              continue;
            }
            int64_t ke = kb;
            while (ke < tk && need_a[static_cast<size_t>(ke)]) ++ke;
            const int64_t k0 = kb * bs, k1 = std::min(K, ke * bs);
            const void* rows[16];
            for (int r = 0; r < mv; ++r) rows[r] = a + ((m0 + sub * mr + r) * K + k0) * es;
            kern.pack_a(rows, dt, mv, mr, k1 - k0, ap.get() + (sub * K + k0) * mr, kGemmKc * mr,
                        ks ? ks + kb : nullptr, 0, bs);
            kb = ke;
          }
        }
        // the active blocks: those whose b panel is ready or can be claimed
        // first, then those another thread is still packing
        auto block = [&](int64_t j) {
          const int64_t n0 = j * bs, n1 = std::min(N, n0 + bs), bw = n1 - n0;
          const float om = mo ? mo[(l * tm + i) * tn + j] : 1.0f;
          // float32 results accumulate straight into the output block; half types via c.
          const bool direct = dt == 0;
          float* cb = direct ? reinterpret_cast<float*>(o) + m0 * N + n0 : c.data();
          const int64_t ldc = direct ? N : bw;
          const int64_t r0 = run_start[static_cast<size_t>(j - j0)], r1 = run_start[static_cast<size_t>(j - j0 + 1)];
          if (r0 == r1) {  // nothing to add: zeros
            for (int64_t m = 0; m < rows_i; ++m) std::fill(cb + m * ldc, cb + m * ldc + bw, 0.0f);
          } else {
            for (int64_t sub = 0; sub * mr < rows_i; ++sub) {
              const int mv = static_cast<int>(std::min<int64_t>(mr, rows_i - sub * mr));
              const float* apt = ap.get() + sub * K * mr;
              for (int64_t nn = n0; nn < n1; nn += nr) {
                const int nv = static_cast<int>(std::min<int64_t>(nr, n1 - nn));
                const float* bpt = bpp + (nn / nr) * K * nr;
                float* cc = cb + sub * mr * ldc + (nn - n0);
                for (int64_t r = r0; r < r1; r += 2)
                  kern.gemm_tile(mr, runs[static_cast<size_t>(r + 1)] - runs[static_cast<size_t>(r)],
                                 apt + runs[static_cast<size_t>(r)] * mr, bpt + runs[static_cast<size_t>(r)] * nr, cc,
                                 ldc, mv, nv, r > r0);
              }
            }
          }
          if (mo && !d.out_mask_bool)  // float output mask scales the block (0 * Inf stays NaN)
            for (int64_t m = 0; m < rows_i; ++m)
              for (int64_t e = 0; e < bw; ++e) cb[m * ldc + e] *= om;
          if (!direct)
            for (int64_t m = m0; m < m1; ++m) kern.from_f32(c.data() + (m - m0) * bw, bw, dt, o + (m * N + n0) * es);
        };
        pending.clear();
        for (int64_t j = j0; j < j1; ++j) {
          if (!out_active(l, i, j)) continue;
          std::atomic<int>& st = bstate[static_cast<size_t>(j)];
          int expect = 0;
          if (st.load(std::memory_order_acquire) == 2) {
            block(j);
          } else if (st.compare_exchange_strong(expect, 1, std::memory_order_acq_rel)) {
            pack_b_block(l, b, j);
            st.store(2, std::memory_order_release);
            block(j);
          } else {
            pending.push_back(j);
          }
        }
        for (int64_t j : pending) {
          for (int spin = 0; bstate[static_cast<size_t>(j)].load(std::memory_order_acquire) != 2; ++spin) {
            if (spin < 1024) _mm_pause();
            else std::this_thread::yield();
          }
          block(j);
        }
        _mm_sfence();  // order the streamed zeros before the barrier
      }  // implicit barrier before the next batch entry reuses bp and need_b
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
