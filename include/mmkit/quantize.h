// quantize / dequantize / to_fp8 / from_fp8 with MLX's exact semantics
// (SPEC.md sections 0-2).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "mmkit/array.h"
#include "mmkit/device.h"

namespace mmkit {

/// Quantizes `w` (..., R, C) along its last axis. Returns {w_q, scales, biases}
/// for mode "affine" and {w_q, scales} for "mxfp4", "mxfp8", "nvfp4".
/// Defaults: affine gs 64 / bits 4; mxfp4 32/4; mxfp8 32/8; nvfp4 16/4.
std::vector<Array> quantize(const Array& w, std::optional<int> group_size = std::nullopt,
                            std::optional<int> bits = std::nullopt,
                            const std::string& mode = "affine",
                            const std::optional<Array>& global_scale = std::nullopt,
                            StreamOrDevice s = {});

/// Inverse of quantize: (..., R, C*bits/32) uint32 -> (..., R, C).
/// Output dtype: `dtype` if given, else result_type(scales, biases) for affine
/// and bfloat16 for the fp modes.
Array dequantize(const Array& w, const Array& scales,
                 const std::optional<Array>& biases = std::nullopt,
                 std::optional<int> group_size = std::nullopt,
                 std::optional<int> bits = std::nullopt, const std::string& mode = "affine",
                 const std::optional<Array>& global_scale = std::nullopt,
                 std::optional<Dtype> dtype = std::nullopt, StreamOrDevice s = {});

/// Float -> MLX's E4M3 bytes (uint8), saturating at 448, NaN -> 448.
Array to_fp8(const Array& x, StreamOrDevice s = {});
/// MLX's E4M3 bytes (uint8) -> `dtype` (0x7F decodes to 480, no NaN).
Array from_fp8(const Array& x, Dtype dtype = Dtype::bfloat16, StreamOrDevice s = {});

/// Resolves the default (group_size, bits) for a mode; validates the mode name.
std::pair<int, int> quantization_defaults(const std::string& mode, const char* op = "quantize");

}  // namespace mmkit
