// Problem descriptors: what the front end (src/ops) hands to a backend after
// every user-facing check. Backends assert invariants only (STYLE.md rule 1).
//
// Canonical layouts (mode names of STYLE.md rule 4):
//   x / a : (Bx, M, K) row-major, dtype T
//   w     : (Bw, rows, rows_words) uint32, quantized along its last axis;
//           transpose=true: rows = N (K-major, groups along K);
//           transpose=false: rows = K (groups along N).
//   scales/biases : (Bw, rows, cols/gs), dtype T (affine) or uint8 (fp modes)
//   b (gather_mm / block_masked_mm): (Bb, K, N) row-major, or (Bb, N, K) when
//           b_kmajor (a transposed view is taken without a copy)
//   lhs / rhs : int64 of length L, flat batch indices into x/a and w/b
//   out   : (L, M, N) row-major, dtype T
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "formats/format.h"
#include "mmkit/array.h"

namespace mmkit::detail {

struct QFormat {
  fmt::Mode mode = fmt::Mode::affine;
  int bits = 4;
  int group_size = 64;
  const fmt::FormatTraits& traits() const { return fmt::traits(mode); }
};
std::ostream& operator<<(std::ostream& os, const QFormat& f);

// ---- quantize -----------------------------------------------------------------
struct QuantizeDesc {
  int64_t rows = 0, cols = 0;
  QFormat format;
  Dtype dtype = Dtype::float32;  // w's dtype (float32/float16/bfloat16)
  bool has_global_scale = false;
  std::string key() const;
};
std::ostream& operator<<(std::ostream& os, const QuantizeDesc& d);
struct QuantizeArgs {
  Array w;             // (rows, cols) contiguous
  Array global_scale;  // float32 scalar or null
  Array w_q;           // (rows, cols*bits/32) uint32, written
  Array scales;        // (rows, cols/gs)
  Array biases;        // affine only
};

// ---- dequantize ---------------------------------------------------------------
struct DequantizeDesc {
  int64_t rows = 0, cols = 0;
  QFormat format;
  Dtype scale_dtype = Dtype::float32;  // affine: promote(scales, biases); fp: uint8
  Dtype out_dtype = Dtype::float32;
  bool has_global_scale = false;
  std::string key() const;
};
std::ostream& operator<<(std::ostream& os, const DequantizeDesc& d);
struct DequantizeArgs {
  Array w_q;     // (rows, cols*bits/32) contiguous uint32
  Array scales;  // (rows, cols/gs) contiguous
  Array biases;
  Array global_scale;
  Array out;     // (rows, cols)
};

// ---- fp8 conversion -----------------------------------------------------------
struct Fp8Desc {
  int64_t size = 0;
  bool to_fp8 = true;   // float -> uint8, else uint8 -> float
  Dtype float_dtype = Dtype::float32;
  std::string key() const;
};
std::ostream& operator<<(std::ostream& os, const Fp8Desc& d);
struct Fp8Args {
  Array in;   // contiguous
  Array out;  // contiguous
};

// ---- quantized matmul / gather_qmm --------------------------------------------
struct QmmDesc {
  QFormat format;
  bool transpose = true;
  int64_t M = 0, N = 0, K = 0;
  int64_t batch = 1;    // L = number of output matrices
  int64_t x_batch = 1;  // Bx
  int64_t w_batch = 1;  // Bw
  Dtype dtype = Dtype::float32;  // T
  bool rhs_sorted = false;       // hint: rhs non-decreasing (sorted_indices)
  bool indices_checked = true;   // false: the backend must bounds-check lhs/rhs
  const char* op = "quantized_matmul";
  int64_t w_rows() const { return transpose ? N : K; }
  int64_t w_cols() const { return transpose ? K : N; }
  int64_t groups_per_row() const { return w_cols() / format.group_size; }
  int64_t words_per_row() const { return w_cols() * format.bits / 32; }
  double flops() const { return 2.0 * batch * M * N * K; }
  std::string key() const;
};
std::ostream& operator<<(std::ostream& os, const QmmDesc& d);
struct QmmArgs {
  Array x;       // (Bx, M, K)
  Array w;       // (Bw, rows, words)
  Array scales;  // (Bw, rows, groups)
  Array biases;  // affine only
  Array lhs;     // (L) int64
  Array rhs;     // (L) int64
  Array out;     // (L, M, N)
};

// ---- gather_mm / matmul -------------------------------------------------------
struct GemmDesc {
  int64_t M = 0, N = 0, K = 0;
  int64_t batch = 1, a_batch = 1, b_batch = 1;
  Dtype dtype = Dtype::float32;
  bool b_kmajor = false;  // b stored as (Bb, N, K)
  bool rhs_sorted = false;
  bool indices_checked = true;
  const char* op = "gather_mm";
  double flops() const { return 2.0 * batch * M * N * K; }
  std::string key() const;
};
std::ostream& operator<<(std::ostream& os, const GemmDesc& d);
struct GemmArgs {
  Array a, b, lhs, rhs, out;
};

// ---- block_masked_mm ------------------------------------------------------------
struct BlockMaskedDesc {
  int64_t M = 0, N = 0, K = 0;
  int64_t batch = 1, a_batch = 1, b_batch = 1;
  int block_size = 64;
  Dtype dtype = Dtype::float32;
  bool b_kmajor = false;
  bool has_out_mask = false, out_mask_bool = false;
  bool has_op_masks = false, op_masks_bool = false;
  int64_t tm() const { return (M + block_size - 1) / block_size; }
  int64_t tn() const { return (N + block_size - 1) / block_size; }
  int64_t tk() const { return (K + block_size - 1) / block_size; }
  double flops() const { return 2.0 * batch * M * N * K; }
  std::string key() const;
};
std::ostream& operator<<(std::ostream& os, const BlockMaskedDesc& d);
struct BlockMaskedArgs {
  Array a, b;        // as GemmArgs
  Array a_idx, b_idx;  // (L) int64 broadcast maps
  Array mask_out;    // (L, tm, tn) float32 (bool masks as 0/1), or null
  Array mask_lhs;    // (L, tm, tk) float32 or null (then all ones)
  Array mask_rhs;    // (L, tk, tn) float32 or null
  Array out;         // (L, M, N)
};

}  // namespace mmkit::detail
