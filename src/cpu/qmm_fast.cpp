// Fast CPU quantized_matmul / gather_qmm (entries cpu_qmm_avx512, cpu_qmm_avx2;
// the portable cpu_qmm_generic stays the fallback at priority 0).
//
// Plan for one call: the L (lhs, rhs) pairs are grouped by rhs (a stable sort
// when rhs_sorted is not set), so each active expert's weights are read once
// per call by one pass that serves every row routed to it (count * M rows).
// Per expert:
//   * transpose = true and at most qmv_max_rows rows (AVX-512 64, AVX2 12,
//     measured per core: docs/kernels/cpu.md): the fused qmv kernel
//     (decode + FMA, weights streamed once, columns split across threads);
//     bfloat16 x on AVX512_BF16 CPUs: its vdpbf16ps variant (exact products);
//     affine 2/4/8-bit with <= 4 rows (bfloat16 x: 2) on AVX512_VNNI CPUs: the
//     vpdpbusd kernel on the natural weight layout (x as block-exponent byte
//     pieces, qmm_avx512vnni.cpp), rows of x out of its range stay on float32;
//   * otherwise the blocked GEMM (gemm_driver.h) with panels dequantized on
//     the fly from the packed weights (pack_qt / pack_qn): x packed once,
//     weights decoded once per (n-block, m-block) item.
// Work items of all experts are scheduled together (OpenMP dynamic), so a
// decode step with 8 active experts keeps every core busy.
// Bound: weight bandwidth for few rows (4-bit g64 M = 1: >= 80% of the
// measured read bandwidth), the FMA peak for many (docs/kernels/cpu.md).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <vector>

#include "core/registry.h"
#include "cpu/cpu_common.h"
#include "cpu/cpu_isa.h"
#include "cpu/gemm_driver.h"
#include "cpu/simd_kernels.h"
#include "mmkit/error.h"

namespace mmkit::cpu {
using detail::QmmArgs;
using detail::QmmDesc;

namespace {


int dtype_code(Dtype dt) { return dt == Dtype::float16 ? 1 : dt == Dtype::bfloat16 ? 2 : 0; }

struct Expert {
  int64_t w_index;
  std::vector<int64_t> pairs;  // l indices routed to it
};

/// Groups the pairs by rhs, keeping the order of l within an expert.
std::vector<Expert> group_by_expert(const int64_t* rhs, int64_t L, bool sorted) {
  std::vector<int64_t> order(static_cast<size_t>(L));
  std::iota(order.begin(), order.end(), 0);
  if (!sorted) std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rhs[a] < rhs[b]; });
  std::vector<Expert> ex;
  for (int64_t i = 0; i < L; ++i) {
    const int64_t l = order[static_cast<size_t>(i)];
    if (ex.empty() || ex.back().w_index != rhs[l]) ex.push_back({rhs[l], {}});
    ex.back().pairs.push_back(l);
  }
  return ex;
}

void check_indices(const QmmDesc& d, const int64_t* lhs, const int64_t* rhs) {
  if (d.indices_checked) return;
  for (int64_t l = 0; l < d.batch; ++l) {
    if (lhs[l] < 0 || lhs[l] >= d.x_batch)
      throw Error(std::string("[") + d.op + "] lhs_indices value " + std::to_string(lhs[l]) + " at flat position " +
                  std::to_string(l) + " is out of range [0, " + std::to_string(d.x_batch) + ").");
    if (rhs[l] < 0 || rhs[l] >= d.w_batch)
      throw Error(std::string("[") + d.op + "] rhs_indices value " + std::to_string(rhs[l]) + " at flat position " +
                  std::to_string(l) + " is out of range [0, " + std::to_string(d.w_batch) + ").");
  }
}

/// Rows per expert up to which the VNNI qmv runs (it loops over x in blocks of 4).
constexpr int64_t kVnniMaxRows = 4;
void qmm_fast(const SimdKernels& kern, const QmmDesc& d, QmmArgs& a) {
  const int64_t M = d.M, N = d.N, K = d.K, L = d.batch;
  const int64_t* lhs = a.lhs.data<int64_t>();
  const int64_t* rhs = a.rhs.data<int64_t>();
  check_indices(d, lhs, rhs);
  const int xdt = dtype_code(d.dtype);
  const size_t xes = mmkit::itemsize(d.dtype);
  const char* X = static_cast<const char*>(a.x.raw_data());
  char* O = static_cast<char*>(a.out.raw_data());
  const bool affine = d.format.mode == fmt::Mode::affine;

  QWeights base;
  base.rows = d.w_rows();
  base.cols = d.w_cols();
  base.words = d.words_per_row();
  base.groups = d.groups_per_row();
  base.bits = d.format.bits;
  base.group_size = d.format.group_size;
  base.mode = static_cast<int>(d.format.mode);
  base.sdt = affine ? dtype_code(a.scales.dtype()) : 0;
  const size_t ses = mmkit::itemsize(a.scales.dtype());
  auto weights_of = [&](int64_t wi) {
    QWeights q = base;
    q.w = a.w.data<uint32_t>() + wi * base.rows * base.words;
    q.scales = static_cast<const char*>(a.scales.raw_data()) + wi * base.rows * base.groups * ses;
    if (affine) q.biases = static_cast<const char*>(a.biases.raw_data()) + wi * base.rows * base.groups * ses;
    return q;
  };

  if (K == 0) {  // empty sums
    const std::vector<float> zeros(static_cast<size_t>(N), 0.0f);
    for (int64_t r = 0; r < L * M; ++r) kern.from_f32(zeros.data(), N, xdt, O + r * N * xes);
    return;
  }

  std::vector<Expert> experts = group_by_expert(rhs, L, d.rhs_sorted);
  const int64_t G = base.groups;

  // ---- few rows per expert: the fused kernel --------------------------------
  std::vector<int> small, large;
  for (int e = 0; e < static_cast<int>(experts.size()); ++e) {
    const int64_t rows = static_cast<int64_t>(experts[e].pairs.size()) * M;
    (d.transpose && rows <= kern.qmv_max_rows ? small : large).push_back(e);
  }

  // float32 copies of the x rows the small experts use, and (affine) their group sums
  std::vector<int64_t> xrow_of(static_cast<size_t>(d.x_batch), -1);
  int64_t nx = 0;
  for (int e : small)
    for (int64_t l : experts[e].pairs)
      if (xrow_of[static_cast<size_t>(lhs[l])] < 0) xrow_of[static_cast<size_t>(lhs[l])] = nx++;
  FloatBuffer xf = float_buffer(static_cast<size_t>(nx * M * K));
  std::vector<float> xs(affine ? static_cast<size_t>(nx * M * G) : 0);
  std::vector<char> finite(static_cast<size_t>(nx), 1);
  for (int64_t b = 0; b < d.x_batch; ++b) {
    const int64_t slot = xrow_of[static_cast<size_t>(b)];
    if (slot < 0) continue;
    float* dst = xf.get() + slot * M * K;
    kern.to_f32(X + b * M * K * xes, xdt, M * K, dst);
    if (affine)
      for (int64_t r = 0; r < M; ++r)
        for (int64_t g = 0; g < G; ++g) {
          const float* p = dst + r * K + g * base.group_size;
          float s = 0.0f;
          for (int i = 0; i < base.group_size; ++i) s += p[i];
          xs[static_cast<size_t>((slot * M + r) * G + g)] = s;
          if (!std::isfinite(s)) finite[static_cast<size_t>(slot)] = 0;
        }
  }
  if (affine) {
    // The fused kernel factors the bias out (bias * sum(x)), which turns an
    // infinite x times a zero code into NaN; experts seeing a non-finite x
    // take the GEMM path, which multiplies x by the dequantized weight.
    std::vector<int> keep;
    for (int e : small) {
      bool ok = true;
      for (int64_t l : experts[e].pairs) ok = ok && finite[static_cast<size_t>(xrow_of[static_cast<size_t>(lhs[l])])];
      (ok ? keep : large).push_back(e);
    }
    small.swap(keep);
  }

  // bfloat16 activations on AVX512_BF16 CPUs: the vdpbf16ps kernel (exact
  // products, half the operations). Its operand is x as bf16 pairs matching
  // the code pairs of a packed word; rows with subnormal x (which vdpbf16ps
  // flushes to zero) stay on the float32 kernel.
  const bool bf16_kernel = &kern == simd_kernels_avx512() && d.dtype == Dtype::bfloat16 && has_avx512_bf16() &&
                           (base.mode == 1 || base.mode == 3 || (base.mode == 0 && (base.bits == 2 || base.bits == 4)));
  std::vector<uint32_t> xpairs(bf16_kernel ? static_cast<size_t>(nx * M * K / 2) : 0);
  std::vector<char> pairs_ok(static_cast<size_t>(nx), bf16_kernel ? 1 : 0);
  if (bf16_kernel) {
    const int half = 16 / base.bits;  // codes per 16-bit half word
    for (int64_t b = 0; b < d.x_batch; ++b) {
      const int64_t slot = xrow_of[static_cast<size_t>(b)];
      if (slot < 0) continue;
      const uint16_t* xb = reinterpret_cast<const uint16_t*>(X) + b * M * K;
      uint32_t* dst = xpairs.data() + slot * M * K / 2;
      for (int64_t i = 0; i < M * K; ++i)
        if ((xb[i] & 0x7f80u) == 0 && (xb[i] & 0x7fu) != 0) pairs_ok[static_cast<size_t>(slot)] = 0;
      for (int64_t r = 0; r < M; ++r)
        for (int64_t w = 0; w < K / (2 * half); ++w)
          for (int j = 0; j < half; ++j) {
            const int64_t k = r * K + w * 2 * half + j;
            dst[r * (K / 2) + w * half + j] = static_cast<uint32_t>(xb[k]) | static_cast<uint32_t>(xb[k + half]) << 16;
          }
    }
  }

  // AVX-512 VNNI (affine 2/4/8-bit): x as block-exponent byte pieces, once per
  // call; rows whose x does not fit take the float32 kernel.
  const int64_t vch = base.bits == 2 || base.bits == 4 || base.bits == 8 ? 64 * (8 / base.bits) : 1;
  const bool vnni_kernel = &kern == simd_kernels_avx512() && vnni_qmv_enabled() && affine &&
                           (base.bits == 2 || base.bits == 4 || base.bits == 8) && d.transpose;
  const int64_t vrow = 3 * ((K + vch - 1) / vch * vch);  // piece bytes per row of x (whole chunks)
  struct AlignedFree {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<int8_t, AlignedFree> vpieces;
  std::vector<float> vgexp(vnni_kernel ? static_cast<size_t>(nx * M * G) : 0);
  std::vector<char> vnni_ok(static_cast<size_t>(nx), 0);
  if (vnni_kernel && nx > 0) {
    vpieces.reset(static_cast<int8_t*>(std::aligned_alloc(64, static_cast<size_t>(nx * M * vrow))));
    if (!vpieces) throw Error("[quantized_matmul] out of memory preparing x");
    std::vector<float> gfac(static_cast<size_t>(G));
    for (int64_t slot = 0; slot < nx; ++slot) {
      bool ok = finite[static_cast<size_t>(slot)] != 0;
      for (int64_t m = 0; m < M && ok; ++m)
        ok = vnni_prep_x_avx512(xf.get() + (slot * M + m) * K, K, base.group_size, base.bits,
                                vpieces.get() + (slot * M + m) * vrow, vgexp.data() + (slot * M + m) * G, gfac.data());
      vnni_ok[static_cast<size_t>(slot)] = ok;
    }
  }
  // bfloat16 x: the vdpbf16ps kernel measured as fast as VNNI at 4 rows, so VNNI up to 2
  const int64_t vnni_rows = d.dtype == Dtype::bfloat16 && bf16_kernel ? 2 : kVnniMaxRows;

  if (!small.empty()) {
    struct Job {
      QWeights q;
      std::vector<const float*> x;
      std::vector<const uint32_t*> xp;  // bf16 pairs (bf16 kernel)
      std::vector<void*> out;
      std::vector<float> xsum;
      std::vector<VnniX> vx;  // VNNI kernel
      bool bf16 = false, vnni = false;
    };
    std::vector<Job> jobs(small.size());
    int64_t tiles = 0;
    for (size_t j = 0; j < small.size(); ++j) {
      const Expert& ex = experts[static_cast<size_t>(small[j])];
      Job& jb = jobs[j];
      jb.q = weights_of(ex.w_index);
      jb.bf16 = bf16_kernel;
      jb.vnni = vnni_kernel && static_cast<int64_t>(ex.pairs.size()) * M <= vnni_rows;
      for (int64_t l : ex.pairs) {
        const int64_t slot = xrow_of[static_cast<size_t>(lhs[l])];
        jb.bf16 = jb.bf16 && pairs_ok[static_cast<size_t>(slot)];
        jb.vnni = jb.vnni && vnni_ok[static_cast<size_t>(slot)];
        for (int64_t m = 0; m < M; ++m) {
          jb.x.push_back(xf.get() + (slot * M + m) * K);
          if (bf16_kernel) jb.xp.push_back(xpairs.data() + (slot * M + m) * (K / 2));
          jb.out.push_back(O + (l * M + m) * N * xes);
          if (affine) jb.xsum.insert(jb.xsum.end(), xs.begin() + (slot * M + m) * G, xs.begin() + (slot * M + m + 1) * G);
          if (vnni_kernel && vnni_ok[static_cast<size_t>(slot)])
            jb.vx.push_back({vpieces.get() + (slot * M + m) * vrow, vgexp.data() + (slot * M + m) * G,
                             xs.data() + (slot * M + m) * G});
        }
      }
      tiles += (N + kern.lanes - 1) / kern.lanes;
    }
    // Items: contiguous column ranges, a few per thread so dynamic scheduling can balance.
    const int threads = num_threads();
    const int64_t per = std::max<int64_t>(1, tiles / (8 * threads));
    struct Item {
      int job;
      int64_t n0, n1;
    };
    std::vector<Item> items;
    for (int j = 0; j < static_cast<int>(jobs.size()); ++j)
      for (int64_t n0 = 0; n0 < N; n0 += per * kern.lanes) items.push_back({j, n0, std::min(N, n0 + per * kern.lanes)});
    const int64_t scratch = std::max(kern.qmv_scratch_floats(base), qmv_vnni_scratch_floats(base));
    const int64_t nitems = static_cast<int64_t>(items.size());
#pragma omp parallel
    {
      std::vector<float> buf(static_cast<size_t>(scratch + 16));
      float* sp = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t(63));
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < nitems; ++i) {
        const Item& it = items[static_cast<size_t>(i)];
        const Job& jb = jobs[static_cast<size_t>(it.job)];
        QmvArgs qa;
        qa.q = &jb.q;
        qa.n0 = it.n0;
        qa.n1 = it.n1;
        qa.mrows = static_cast<int>(jb.x.size());
        qa.x = jb.x.data();
        qa.xsum = affine ? jb.xsum.data() : nullptr;
        qa.out = jb.out.data();
        qa.odt = xdt;
        qa.scratch = sp;
        if (jb.vnni) {
          QmvVnniArgs va;
          va.q = &jb.q;
          va.n0 = it.n0;
          va.n1 = it.n1;
          va.mrows = qa.mrows;
          va.x = jb.vx.data();
          va.out = jb.out.data();
          va.odt = xdt;
          va.scratch = sp;
          qmv_vnni_avx512(va);
        } else if (jb.bf16) {
          qa.xpairs = jb.xp.data();
          qmv_bf16_avx512(qa);
        } else {
          kern.qmv(qa);
        }
      }
    }
    // The fused kernel applies a group's scale to its dot product, so an
    // infinite scale (an E8M0 byte 255, an Inf affine scale or bias) times a
    // group whose codes are zero gives +-Inf where the dequantize-first
    // reference gives NaN (Inf * 0 per element). Any such case leaves a
    // non-finite output; experts with one are recomputed by the GEMM path
    // below, which multiplies by the dequantized weights.
    auto finite_out = [&](const void* row) {
      if (d.dtype == Dtype::float32) {
        const float* v = static_cast<const float*>(row);
        for (int64_t n = 0; n < N; ++n)
          if (!std::isfinite(v[n])) return false;
        return true;
      }
      const uint16_t exp_mask = d.dtype == Dtype::float16 ? 0x7C00u : 0x7F80u;
      const uint16_t* v = static_cast<const uint16_t*>(row);
      for (int64_t n = 0; n < N; ++n)
        if ((v[n] & exp_mask) == exp_mask) return false;
      return true;
    };
    for (size_t j = 0; j < jobs.size(); ++j) {
      bool ok = true;
      for (const void* row : jobs[j].out) ok = ok && finite_out(row);
      if (!ok) large.push_back(small[j]);
    }
  }

  // ---- many rows per expert (or transpose = false): blocked GEMM -------------------
  if (large.empty()) return;
  struct Big {
    QWeights q;
    FloatBuffer ap;
    std::vector<char*> out;
  };
  std::vector<Big> bigs(large.size());
  std::vector<GemmJob> gjobs(large.size());
  for (size_t j = 0; j < large.size(); ++j) {
    const Expert& ex = experts[static_cast<size_t>(large[j])];
    Big& b = bigs[j];
    b.q = weights_of(ex.w_index);
    std::vector<const void*> rows;
    for (int64_t l : ex.pairs)
      for (int64_t m = 0; m < M; ++m) {
        rows.push_back(X + (lhs[l] * M + m) * K * xes);
        b.out.push_back(O + (l * M + m) * N * xes);
      }
    GemmJob& g = gjobs[j];
    g.M = static_cast<int64_t>(rows.size());
    g.N = N;
    g.K = K;
    g.mr = pick_mr(kern, g.M);
    b.ap = float_buffer(static_cast<size_t>(a_packed_floats(g.M, K, g.mr)));
  }
  // Pack x for every large expert (parallel over row tiles).
  {
    struct PackItem {
      size_t job;
      int64_t tile;
    };
    std::vector<PackItem> pitems;
    for (size_t j = 0; j < large.size(); ++j)
      for (int64_t t = 0; t < (gjobs[j].M + gjobs[j].mr - 1) / gjobs[j].mr; ++t) pitems.push_back({j, t});
    const int64_t np = static_cast<int64_t>(pitems.size());
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t i = 0; i < np; ++i) {
      const PackItem& p = pitems[static_cast<size_t>(i)];
      const Expert& ex = experts[static_cast<size_t>(large[p.job])];
      GemmJob& g = gjobs[p.job];
      const void* rows[16];
      const int mv = static_cast<int>(std::min<int64_t>(g.mr, g.M - p.tile * g.mr));
      for (int r = 0; r < mv; ++r) {
        const int64_t row = p.tile * g.mr + r;
        const int64_t l = ex.pairs[static_cast<size_t>(row / M)];
        rows[r] = X + (lhs[l] * M + row % M) * K * xes;
      }
      kern.pack_a(rows, xdt, mv, g.mr, K, bigs[p.job].ap.get() + p.tile * kGemmKc * g.mr, a_kblock_stride(g.M, g.mr),
                  nullptr, 0, 1);
    }
  }
  for (size_t j = 0; j < large.size(); ++j) {
    GemmJob& g = gjobs[j];
    Big* b = &bigs[j];
    g.ap = b->ap.get();
    if (d.transpose) {
      g.pack_b = [&kern, b](int64_t n0, int nv, int64_t k0, int64_t kc, float* bp, float* scratch) {
        kern.pack_qt(b->q, n0, nv, k0, kc, bp, scratch);
      };
    } else {
      g.pack_b = [&kern, b](int64_t n0, int nv, int64_t k0, int64_t kc, float* bp, float*) {
        kern.pack_qn(b->q, n0, nv, k0, kc, bp);
      };
    }
    g.store = [&kern, b, xdt, xes](int64_t m0, int mv, int64_t n0, int nv, const float* c, int64_t ldc) {
      for (int i = 0; i < mv; ++i) kern.from_f32(c + i * ldc, nv, xdt, b->out[static_cast<size_t>(m0 + i)] + n0 * xes);
    };
  }
  // pack_qt scratch: transposed scales/biases of one k-block (<= 16 groups) and its words (<= 64, + one transpose)
  const int64_t scratch = 2 * 16 * kern.lanes + (kGemmKc * 8 / 32 + kern.lanes) * kern.lanes + 64;
  run_gemm_jobs(kern, gjobs, scratch);
}

bool active_is(Isa isa) { return active_isa() == isa; }

}  // namespace

void register_qmm_fast_kernels(detail::Registries& r) {
  r.qmm.add({"cpu_qmm_avx512", Device::Type::cpu, [](const QmmDesc&) { return active_is(Isa::avx512); },
             [](const QmmDesc& d, QmmArgs& a, const Stream&) { qmm_fast(*simd_kernels_avx512(), d, a); }, 20});
  r.qmm.add({"cpu_qmm_avx2", Device::Type::cpu, [](const QmmDesc&) { return active_is(Isa::avx2); },
             [](const QmmDesc& d, QmmArgs& a, const Stream&) { qmm_fast(*simd_kernels_avx2(), d, a); }, 10});
}

}  // namespace mmkit::cpu
