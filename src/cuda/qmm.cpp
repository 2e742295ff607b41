// Registration of the GPU quantized-matmul family, in dispatch order:
//   cuda_gather_grouped gather_qmm with shared experts (>= 4 rows per expert on average; solo entries of
//                     cuda_qmv1_mma (all but 4-bit affine) from 5 - 12, on qmm_sm80.cu): rows grouped by
//                     expert on the device (gather_plan.cu), then 4-bit affine float16/bfloat16 with
//                     K % 128 == 0 on qmm_w4.cu from 64 rows per expert, else with M <= 32 on
//                     qmv_sm80.cu, else (M <= 8, transpose, K % 32 == 0, every format and dtype) on qmv.cu, else (M > 8, float16/bfloat16, transpose,
//                     K % 32 == 0, every format) on qmm_sm80.cu, else (float32 beyond 8 rows,
//                     transpose=false, odd K; any alignment) on qmm_generic.cu
//   cuda_qmv1_mma     M <= group size / 16 (8 at 128; 2-, 6-bit: / 32, 3-bit: / 64), 2/3/4/6/8-bit affine,
//                     mxfp4, nvfp4, mxfp8, float16/bfloat16, K % 32 == 0 (2-, 6-bit: % 64, 3-bit: % 128)
//                     (qmv1_mma.cu)
//   cuda_qmv_sm80_mma 2 <= M <= 32, 4-bit affine, float16/bfloat16, K % 128 == 0 (qmv_sm80.cu)
//   cuda_qmv          M <= 8, transpose=true, K % 32 == 0  (qmv.cu)
//   cuda_qmm_w4_mma   M > 32, 4-bit affine, float16/bfloat16, K % 128 == 0, group size 32/64/128: on an
//                     sm_90 device the warpgroup-MMA kernel (qmm_wg.cu; MMKIT_QMM_WG=0 turns it off,
//                     =mlx picks its MLX-numerics variant), else mma.sync (qmm_w4.cu); the grouped
//                     gather tries them first in the same order
//   cuda_qmm_sm80_mma M > 8 (> 32 for 4-bit affine), float16/bfloat16, transpose=true, K % 32 == 0 (qmm_sm80.cu)
//   cuda_qmm_generic  everything else (qmm_generic.cu)
// A fast path whose pointers are not aligned for its vector loads (views
// with odd offsets) hands the call to the generic kernel.
#include <algorithm>
#include <cstdlib>

#include "cuda/qmm_kernels.h"

namespace mmkit::cuda {
namespace {
using detail::QmmArgs;
using detail::QmmDesc;

void run_qmv(const QmmDesc& d, QmmArgs& a, const Stream& s) {
  OpScope scope(s, d.op);
  if (!qmv_run(d, a, scope)) qmm_generic_run(d, a, scope);
}
void run_qmv1_mma(const QmmDesc& d, QmmArgs& a, const Stream& s) {
  OpScope scope(s, d.op);
  if (!qmv1_mma_run(d, a, scope) && !(qmv_supports(d) && qmv_run(d, a, scope))) qmm_generic_run(d, a, scope);
}
void run_qmv_mma(const QmmDesc& d, QmmArgs& a, const Stream& s) {
  OpScope scope(s, d.op);
  if (!qmv_mma_run(d, a, scope) && !(qmv_supports(d) && qmv_run(d, a, scope))) qmm_generic_run(d, a, scope);
}
void run_w4(const QmmDesc& d, QmmArgs& a, const Stream& s) {
  OpScope scope(s, d.op);
  if (qmm_wg_mode() != QmmWgMode::off && qmm_wg_supports(d) && qmm_wg_run(d, a, scope)) return;
  if (!qmm_w4_run(d, a, scope) && !qmm_mma_run(d, a, scope)) qmm_generic_run(d, a, scope);
}
void run_mma(const QmmDesc& d, QmmArgs& a, const Stream& s) {
  OpScope scope(s, d.op);
  if (!qmm_mma_run(d, a, scope)) qmm_generic_run(d, a, scope);
}
bool grouped_supports(const QmmDesc& d) {
  // Solo entries (formats the one-row tensor-core GEMV takes, without a
  // grouped tensor-core GEMV: all but 4-bit affine) run per entry below
  // solo_group_from(d) rows per expert, grouped on the tiled kernel from there
  // (run_grouped; never on the grouped SIMT GEMV, slower than per entry at
  // every size measured; docs/kernels/cuda.md, sessions 12 - 13).
  if (solo_gemv_entries(d) && gather_rows_per_expert(d) < solo_group_from(d)) return false;
  // (The widest of the grouped kernels' rules: from 4 rows per expert.) One-row
  // entries are grouped from there too: with the grouped kernel's x loads ahead
  // of its decode, Qwen3-30B-A3B at 4 rows per expert (T = 64, unsorted) runs
  // grouped at 170 / 147 us against 300 / 158 us per entry on the tensor-core
  // GEMV for gate+up / down (H100, docs/kernels/cuda.md).
  return qmm_generic_grouped_supports(d);
}
void run_grouped(const QmmDesc& d, QmmArgs& a, const Stream& s) {
  OpScope scope(s, d.op);
  if (solo_gemv_entries(d) && qmm_mma_grouped_supports(d) && qmm_mma_grouped_run(d, a, scope)) return;
  if (qmm_wg_mode() != QmmWgMode::off && qmm_wg_grouped_supports(d) && qmm_wg_grouped_run(d, a, scope)) return;
  if (qmm_w4_grouped_supports(d) && qmm_w4_grouped_run(d, a, scope)) return;
  if (gather_grouped_supports(d) && gather_grouped_run(d, a, scope)) return;
  if (qmv_grouped_supports(d) && qmv_grouped_run(d, a, scope)) return;
  if (qmm_mma_grouped_supports(d) && qmm_mma_grouped_run(d, a, scope)) return;
  qmm_generic_grouped_run(d, a, scope);
}
void run_generic(const QmmDesc& d, QmmArgs& a, const Stream& s) {
  OpScope scope(s, d.op);
  qmm_generic_run(d, a, scope);
}

}  // namespace

// Rows per expert from which solo gather entries are grouped (on the tiled
// tensor-core kernel) instead of run per entry on the GEMV. On Qwen3-30B-A3B
// (H200) the tiled time is flat up to 16 rows per expert and the per-entry
// time linear in the rows; they cross (gate+up / down) near:
//   mxfp4 / nvfp4: 11 / 9.5 rows (run 98: at 4 rows per entry 284 / 173 us
//     against tiled 798 / 408; at 16 rows tiled 805 / 422 against 1124 / 662);
//   mxfp8: 8.5 / 8.6 (run 105: at 8 rows per entry 774 / 383 us against
//     tiled 824 / 414);
//   8-bit affine: 5.3 / 4.3 (run 104: at 4 rows per entry 431 / 264 us
//     against tiled 577 / 278; run 105: at 8 rows 858 / 515 against 572 / 291);
//   2-bit affine: 14.1 / 9.1 (run 106: at 16 rows per entry 645 / 511 us
//     against tiled 569 / 290; at 4 rows 171 / 133 against 561 / 276);
//   3-bit affine (H100): 8.0 / 5.5 (run 110: at 4 rows per entry 282 / 199
//     us against tiled 565 / 275; at 16 rows 1098 / 777 against 572 / 289);
//   6-bit affine (H100): 5.4 / 4.8 (run 110: at 4 rows 423 / 233 against
//     tiled 567 / 278).
int64_t solo_group_default(const QmmDesc& d) {
  if (d.format.mode == fmt::Mode::affine)
    return d.format.bits == 8 || d.format.bits == 6 ? 5 : d.format.bits == 3 ? 7 : 12;
  if (d.format.mode == fmt::Mode::mxfp8) return 9;
  return 12;
}

bool solo_gemv_entries(const QmmDesc& d) {
  return !(d.format.mode == fmt::Mode::affine && d.format.bits == 4) && qmv1_mma_supports(d);
}

int64_t solo_group_from(const QmmDesc& d) {
  if (const char* e = std::getenv("MMKIT_SOLO_GROUP_FROM")) return std::max<int64_t>(1, std::atoll(e));
  return solo_group_default(d);
}

QmmKernelParams qmm_kernel_params(const QmmDesc& d, QmmArgs& a, const OpScope& scope) {
  QmmKernelParams p;
  p.x = a.x.raw_data();
  p.w = a.w.data<uint32_t>();
  p.scales = a.scales.raw_data();
  p.biases = a.biases.is_null() ? nullptr : a.biases.raw_data();
  p.lhs = a.lhs.data<int64_t>();
  p.rhs = a.rhs.data<int64_t>();
  p.out = a.out.raw_data();
  p.M = static_cast<int>(d.M);  // (qmm_generic overwrites them with 64-bit values)
  p.N = static_cast<int>(d.N);
  p.K = static_cast<int>(d.K);
  p.x_batch = d.x_batch;
  p.w_batch = d.w_batch;
  p.L = d.batch;
  p.guard = index_guard(scope.device(), d.op, d.indices_checked);
  return p;
}

void register_qmm_kernels(detail::Registries& r) {
  r.qmm.add({"cuda_gather_grouped", Device::Type::gpu, grouped_supports, run_grouped, 50});
  r.qmm.add({"cuda_qmv1_mma", Device::Type::gpu, qmv1_mma_supports, run_qmv1_mma, 40});
  r.qmm.add({"cuda_qmv_sm80_mma", Device::Type::gpu, qmv_mma_supports, run_qmv_mma, 30});
  r.qmm.add({"cuda_qmv", Device::Type::gpu, qmv_supports, run_qmv, 20});
  r.qmm.add({"cuda_qmm_w4_mma", Device::Type::gpu, qmm_w4_supports, run_w4, 15});
  r.qmm.add({"cuda_qmm_sm80_mma", Device::Type::gpu, qmm_mma_supports, run_mma, 10});
  r.qmm.add({"cuda_qmm_generic", Device::Type::gpu, [](const QmmDesc&) { return true; }, run_generic, 0});
}

}  // namespace mmkit::cuda
