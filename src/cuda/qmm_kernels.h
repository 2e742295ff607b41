// Host-side entry points of the quantized-matmul kernels (qmv.cu,
// qmm_sm80.cu, qmm_generic.cu) and their registration order (qmm.cpp).
#pragma once

#include "cuda/runtime.h"
#include "ops/descriptors.h"

namespace mmkit::cuda {

/// Largest M the GEMV kernel takes (beyond it the tiled kernels win).
inline constexpr int kQmvMaxM = 8;
/// Largest M the tensor-core GEMV (4-bit affine) takes.
inline constexpr int kQmvMmaMaxM = 32;

/// M = 1, 4-bit affine, float16/bfloat16 (qmv1_mma.cu).
bool qmv1_mma_supports(const detail::QmmDesc& d);
bool qmv1_mma_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

/// gather_qmm whose entries share experts, 4-bit affine, float16/bfloat16: rows
/// grouped by expert on the device (gather_plan.h), then qmv_sm80 per item.
bool gather_grouped_supports(const detail::QmmDesc& d);
bool gather_grouped_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

bool qmv_mma_supports(const detail::QmmDesc& d);
bool qmv_mma_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

bool qmv_supports(const detail::QmmDesc& d);
/// false when a pointer is not aligned for the vector loads (caller falls back).
bool qmv_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

bool qmm_mma_supports(const detail::QmmDesc& d);
bool qmm_mma_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

/// Accepts every valid descriptor.
void qmm_generic_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope);

}  // namespace mmkit::cuda
