// The matmul family: quantized_matmul, gather_qmm, gather_mm, block_masked_mm
// (SPEC.md sections 3-6). Every op accumulates in float32.
#pragma once

#include <optional>
#include <string>

#include "mmkit/array.h"
#include "mmkit/device.h"

namespace mmkit {

/// x @ dequantize(w).T (transpose=true) or x @ dequantize(w) (transpose=false).
Array quantized_matmul(const Array& x, const Array& w, const Array& scales,
                       const std::optional<Array>& biases = std::nullopt, bool transpose = true,
                       std::optional<int> group_size = std::nullopt,
                       std::optional<int> bits = std::nullopt,
                       const std::string& mode = "affine", StreamOrDevice s = {});

/// out[i] = quantized_matmul(x_flat[lhs[i]], w_flat[rhs[i]], ...) over the
/// broadcast index shape. Without indices it is quantized_matmul.
Array gather_qmm(const Array& x, const Array& w, const Array& scales,
                 const std::optional<Array>& biases = std::nullopt,
                 const std::optional<Array>& lhs_indices = std::nullopt,
                 const std::optional<Array>& rhs_indices = std::nullopt, bool transpose = true,
                 std::optional<int> group_size = std::nullopt,
                 std::optional<int> bits = std::nullopt, const std::string& mode = "affine",
                 bool sorted_indices = false, StreamOrDevice s = {});

/// out[i] = a_flat[lhs[i]] @ b_flat[rhs[i]]; without indices it is matmul(a, b).
Array gather_mm(const Array& a, const Array& b,
                const std::optional<Array>& lhs_indices = std::nullopt,
                const std::optional<Array>& rhs_indices = std::nullopt,
                bool sorted_indices = false, StreamOrDevice s = {});

/// E(mask_out) * ((E(mask_lhs) * a) @ (E(mask_rhs) * b)) with block_size 32 or 64.
Array block_masked_mm(const Array& a, const Array& b, int block_size = 64,
                      const std::optional<Array>& mask_out = std::nullopt,
                      const std::optional<Array>& mask_lhs = std::nullopt,
                      const std::optional<Array>& mask_rhs = std::nullopt,
                      StreamOrDevice s = {});

/// Plain matmul with numpy broadcasting (what the ops above fall back to).
Array matmul(const Array& a, const Array& b, StreamOrDevice s = {});

}  // namespace mmkit
