#include "cpu/gemm_driver.h"

#include <algorithm>

#include "cpu/cpu_common.h"

namespace mmkit::cpu {
namespace {

constexpr int64_t kNc = 128;  // columns per item (a multiple of nr)
constexpr int64_t kMc = 720;  // rows per item (a multiple of every mr)

struct Item {
  int job;
  int64_t n0, n1, m0, m1;
};

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

}  // namespace

int pick_mr(const SimdKernels& k, int64_t M) {
  if (M >= k.mr) {
    // 8-row tiles when they pad noticeably fewer rows (M = 16: 16 rows instead of 24).
    const int64_t pad_big = round_up(M, k.mr), pad8 = round_up(M, 8);
    return k.mr > 8 && pad8 * 10 < pad_big * 9 ? 8 : k.mr;
  }
  if (M <= 1) return 1;
  if (M <= 2) return 2;
  if (M <= 4) return 4;
  return k.mr > 8 && M <= 8 ? 8 : k.mr;
}

void run_gemm_jobs(const SimdKernels& k, const std::vector<GemmJob>& jobs, int64_t pack_scratch_floats) {
  const int threads = num_threads();
  const int64_t nr = k.nr;
  // Shrink the blocks until there are a few items per thread.
  int64_t nc = kNc, mc_cap = kMc;
  std::vector<Item> items;
  for (int attempt = 0; attempt < 8; ++attempt) {
    items.clear();
    for (int j = 0; j < static_cast<int>(jobs.size()); ++j) {
      const GemmJob& g = jobs[j];
      if (g.M == 0 || g.N == 0) continue;
      const int64_t mc = std::min(round_up(g.M, g.mr), round_up(mc_cap, g.mr));
      for (int64_t n0 = 0; n0 < g.N; n0 += nc)
        for (int64_t m0 = 0; m0 < g.M; m0 += mc) items.push_back({j, n0, std::min(g.N, n0 + nc), m0, std::min(g.M, m0 + mc)});
    }
    if (static_cast<int>(items.size()) >= 4 * threads) break;
    if (nc > nr) nc /= 2;
    else if (mc_cap > 24) mc_cap /= 2;
    else break;
  }
  if (items.empty()) return;
  const int64_t nitems = static_cast<int64_t>(items.size());
#pragma omp parallel
  {
    std::vector<float> bpanel(static_cast<size_t>(kGemmKc * kNc));
    std::vector<float> cbuf(static_cast<size_t>(round_up(kMc, 24) * kNc));
    std::vector<float> scratch(static_cast<size_t>(std::max<int64_t>(pack_scratch_floats, 64)));
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < nitems; ++it) {
      const Item& t = items[it];
      const GemmJob& g = jobs[t.job];
      const int64_t ncols = t.n1 - t.n0, mrows = t.m1 - t.m0;
      const int64_t ntiles = (ncols + nr - 1) / nr;
      const int64_t ldc = ntiles * nr;
      if (static_cast<int64_t>(cbuf.size()) < round_up(mrows, g.mr) * ldc)
        cbuf.resize(static_cast<size_t>(round_up(mrows, g.mr) * ldc));
      if (g.K == 0) std::fill(cbuf.begin(), cbuf.end(), 0.0f);
      for (int64_t k0 = 0; k0 < g.K; k0 += kGemmKc) {
        const int64_t kc = std::min(kGemmKc, g.K - k0);
        for (int64_t tn = 0; tn < ntiles; ++tn) {
          const int nv = static_cast<int>(std::min(nr, ncols - tn * nr));
          g.pack_b(t.n0 + tn * nr, nv, k0, kc, bpanel.data() + tn * kGemmKc * nr, scratch.data());
        }
        for (int64_t tn = 0; tn < ntiles; ++tn) {
          const int nv = static_cast<int>(std::min(nr, ncols - tn * nr));
          const float* bp = bpanel.data() + tn * kGemmKc * nr;
          for (int64_t m = 0; m < mrows; m += g.mr) {
            const int mv = static_cast<int>(std::min<int64_t>(g.mr, mrows - m));
            const float* ap = g.ap + (k0 / kGemmKc) * a_kblock_stride(g.M, g.mr) + ((t.m0 + m) / g.mr) * kGemmKc * g.mr;
            k.gemm_tile(g.mr, kc, ap, bp, cbuf.data() + m * ldc + tn * nr, ldc, mv, nv, k0 > 0);
          }
        }
      }
      g.store(t.m0, static_cast<int>(mrows), t.n0, static_cast<int>(ncols), cbuf.data(), ldc);
    }
  }
}

}  // namespace mmkit::cpu
