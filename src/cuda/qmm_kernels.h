// Host-side entry points of the quantized-matmul kernels (qmv.cu,
// qmm_sm80.cu, qmm_generic.cu) and their registration order (qmm.cpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "cuda/gather_plan.h"
#include "cuda/runtime.h"
#include "ops/descriptors.h"

namespace mmkit::cuda {

/// Largest M the GEMV kernel takes (beyond it the tiled kernels win).
inline constexpr int kQmvMaxM = 8;
/// Largest M the tensor-core GEMV (4-bit affine) takes.
inline constexpr int kQmvMmaMaxM = 32;

/// The rule the 4-bit affine tensor-core kernels share (qmv1_mma, qmv_sm80,
/// qmm_w4): transpose, 4-bit affine, float16/bfloat16 activations,
/// K a positive multiple of 128, N and K below 2^31, an sm_80+ device.
inline bool affine4_tensor_core_ok(const detail::QmmDesc& d) {
  if (!d.transpose || d.format.mode != fmt::Mode::affine || d.format.bits != 4) return false;
  if (d.dtype != Dtype::float16 && d.dtype != Dtype::bfloat16) return false;
  if (d.K % 128 != 0 || d.K == 0 || d.N >= (int64_t{1} << 31) || d.K >= (int64_t{1} << 31)) return false;
  return device_info(current_device()).cc_major >= 8;
}

/// The 16-byte alignment of x and the codes (and 2-byte of the scales and
/// biases) that the 4-bit many-row kernels' 16-byte copies need (qmm_w4,
/// qmm_wg); views at other offsets go to a kernel without them.
inline bool affine4_copies_aligned(const detail::QmmArgs& a) {
  return aligned(a.x.raw_data(), 16) && aligned(a.w.raw_data(), 16) && aligned(a.scales.raw_data(), 2) &&
         aligned(a.biases.raw_data(), 2);
}

/// Index of the value of environment variable `var` among `names` (read per
/// call, so a test can set it), or -1 when unset or not one of them: the
/// kernels' forced-tile switches (MMKIT_QMM_W4_TILE, MMKIT_QMM_WG_TILE).
inline int env_choice(const char* var, std::initializer_list<const char*> names) {
  const char* e = std::getenv(var);
  if (!e) return -1;
  int i = 0;
  for (const char* n : names) {
    if (std::strcmp(e, n) == 0) return i;
    ++i;
  }
  return -1;
}

/// Opts `kernel` into `bytes` of dynamic shared memory once per device
/// (`opted`: one bit per device, the caller's static for that kernel).
template <class Kernel>
void opt_in_shared_memory(Kernel kernel, int bytes, std::atomic<uint64_t>& opted, const OpScope& scope,
                          const char* name) {
  const uint64_t bit = uint64_t{1} << (scope.device() & 63);
  if (opted.load(std::memory_order_relaxed) & bit) return;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), name,
             "cudaFuncSetAttribute");
  opted.fetch_or(bit, std::memory_order_relaxed);
}

/// What the tensor-core quantized-matmul kernels read (qmv_sm80, qmm_w4,
/// qmm_sm80): the arrays, the shape, the batch entries (or, grouped, a gather
/// plan whose item l is work unit l) and the index guard.
struct QmmKernelParams {
  const void* x = nullptr;
  const uint32_t* w = nullptr;
  const void* scales = nullptr;
  const void* biases = nullptr;  // null for the fp modes
  const int64_t* lhs = nullptr;
  const int64_t* rhs = nullptr;
  void* out = nullptr;
  int M = 0, N = 0, K = 0;
  int64_t x_batch = 0, w_batch = 0, L = 0;
  IndexGuard guard{};
  GatherPlanView plan;
};
/// The params of a call (the shape must fit int: the kernels' supports check it).
QmmKernelParams qmm_kernel_params(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);
/// The common fields into a kernel's own params struct (kernels that keep a
/// layout of their own: qmv without the plan, qmv1_mma, qmm_generic).
template <class P>
void copy_common_params(P& p, const QmmKernelParams& c) {
  p.x = c.x, p.w = c.w, p.scales = c.scales, p.biases = c.biases, p.lhs = c.lhs, p.rhs = c.rhs, p.out = c.out;
  p.M = c.M, p.N = c.N, p.K = c.K, p.x_batch = c.x_batch, p.w_batch = c.w_batch, p.L = c.L, p.guard = c.guard;
}

/// M <= group size / 16 (8 at 128; 2-bit: / 32), 2/4/8-bit affine, mxfp4, nvfp4 or mxfp8,
/// float16/bfloat16 (qmv1_mma.cuh / .cu).
bool qmv1_mma_supports(const detail::QmmDesc& d);
bool qmv1_mma_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

/// Whether grouping a gather's rows by expert (gather_plan.h) pays: at least 4
/// rows per expert on average (measured for the tensor-core path on an H200,
/// Qwen3-30B-A3B shapes: at 1.6 rows per expert the per-entry GEMV is 1.6x
/// faster, at 4 the plan is 1.5x faster; docs/kernels/cuda.md; the SIMT path
/// uses the same rule), 2 ..= kGatherPlanMaxExperts experts, at most max_m
/// rows per entry.
inline bool gather_grouping_pays(const detail::QmmDesc& d, int64_t max_m) {
  if (d.batch < 2 || d.w_batch < 2 || d.w_batch > kGatherPlanMaxExperts || d.M > max_m) return false;
  return d.batch * d.M >= 4 * d.w_batch && d.batch * d.M < (int64_t{1} << 31);
}

/// Average rows per distinct expert of a gather (at most min(experts, entries)
/// experts are used).
inline int64_t gather_rows_per_expert(const detail::QmmDesc& d) {
  const int64_t e = std::max<int64_t>(1, std::min(d.w_batch, d.batch));
  return (d.batch * d.M + e - 1) / e;
}

/// Gather entries that the one-row tensor-core GEMV takes (qmv1_mma_supports)
/// in a format without a grouped tensor-core GEMV (all but 4-bit affine:
/// mxfp4, nvfp4, 8- and 2-bit affine, mxfp8): they run per entry below
/// solo_group_from() rows per expert on average (FP4 12, mxfp8 9, 8-bit
/// affine 5, 2-bit 12: where the two cross), and from there grouped
/// by expert on the tiled tensor-core kernel (qmm_sm80, items of 64 rows),
/// never on the grouped SIMT GEMV (slower than per entry at every size
/// measured; docs/kernels/cuda.md).
bool solo_gemv_entries(const detail::QmmDesc& d);
/// The threshold above: MMKIT_SOLO_GROUP_FROM (a tuning knob, read per call;
/// docs/kernels/cuda.md) or the measured default.
int64_t solo_group_from(const detail::QmmDesc& d);

/// The grouping rule of the 4-bit many-row kernels (qmm_w4, qmm_wg), whose
/// items hold 64 rows (128 in qmm_w4's forced large tile): grouping pays, and
/// 64 rows per expert on average.
inline bool affine4_many_rows_grouped(const detail::QmmDesc& d) {
  return gather_grouping_pays(d, int64_t{1} << 31) && d.batch * d.M >= 64 * std::min(d.w_batch, d.batch);
}

/// gather_qmm whose entries share experts, 4-bit affine, float16/bfloat16: rows
/// grouped by expert on the device (gather_plan.h), then qmv_sm80 per item.
bool gather_grouped_supports(const detail::QmmDesc& d);
bool gather_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

/// The same grouping for every format qmv takes (M <= kQmvMaxM), then the
/// SIMT GEMV (qmv.cu) per item; false when a pointer is not aligned.
bool qmv_grouped_supports(const detail::QmmDesc& d);
bool qmv_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

bool qmv_mma_supports(const detail::QmmDesc& d);
bool qmv_mma_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

bool qmv_supports(const detail::QmmDesc& d);
/// false when a pointer is not aligned for the vector loads (caller falls back).
bool qmv_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

/// qmm_w4.cu: tensor-core quantized matmul for 4-bit affine weights and
/// M > kQmvMmaMaxM rows, float16 / bfloat16, transpose, K % 128 == 0, group
/// size 32 / 64 / 128; grouped: gather_qmm with >= 64 rows per expert on average.
bool qmm_w4_supports(const detail::QmmDesc& d);
bool qmm_w4_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);
bool qmm_w4_grouped_supports(const detail::QmmDesc& d);
bool qmm_w4_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

/// qmm_wg.cu: the same calls on the sm_90a warpgroup MMA (an sm_90 device);
/// exact by default (no weight rounded), or MLX's GPU numerics (each weight
/// rounded to T once, SPEC 2.4).
bool qmm_wg_supports(const detail::QmmDesc& d);
bool qmm_wg_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);
bool qmm_wg_grouped_supports(const detail::QmmDesc& d);
bool qmm_wg_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);
/// MMKIT_QMM_WG (read per call): unset or 1 exact, 0 off (qmm_w4 instead),
/// mlx the MLX-numerics variant.
enum class QmmWgMode { off, exact, mlx };
QmmWgMode qmm_wg_mode();

bool qmm_mma_supports(const detail::QmmDesc& d);
bool qmm_mma_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

/// The same grouping for the tiled tensor-core kernel (qmm_sm80.cu): M > kQmvMaxM
/// rows per entry (any M), every format, float16/bfloat16, transpose, K % 32
/// == 0; items of one 64-row tile; false when a pointer is not aligned.
bool qmm_mma_grouped_supports(const detail::QmmDesc& d);
bool qmm_mma_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

/// Accepts every valid descriptor.
void qmm_generic_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

/// The grouping for everything the fast grouped kernels leave (float32 beyond
/// kQmvMaxM rows, transpose=false, odd K): the generic kernel per item of
/// one 64-row tile; any alignment.
bool qmm_generic_grouped_supports(const detail::QmmDesc& d);
void qmm_generic_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

}  // namespace mmkit::cuda
