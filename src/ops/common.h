// Helpers shared by the op front ends.
#pragma once

#include <initializer_list>
#include <optional>
#include <string>

#include "core/registry.h"
#include "mmkit/array.h"
#include "mmkit/error.h"
#include "ops/descriptors.h"

namespace mmkit::detail {

/// The stream an op runs on: the explicit one, a device's default stream, or
/// the device of the first non-null input.
Stream resolve_stream(const StreamOrDevice& s, std::initializer_list<const Array*> inputs);

/// Registers every compiled-in backend (idempotent).
void ensure_backends_loaded();

/// Parses a mode name; "[op] Invalid quantization mode 'x'." otherwise.
fmt::Mode parse_mode(const std::string& mode, const char* op);

/// Rejects null arrays with "[op] <what> is a null array."
void require_non_null(const Array& a, const char* op, const char* what);

/// The array on `d` (moved when it lives elsewhere).
inline Array on_device(const Array& a, Device d) { return a.device() == d ? a : a.to(d); }

/// `a` (ndim >= 2) as a contiguous (n, rows, cols) array of dtype `dt`, n the
/// product of the batch dims (row-major over the logical array; no copy when
/// `a` is already contiguous with that dtype).
Array flatten_batch(const Array& a, Dtype dt);

/// Validates integer indices against [0, n) (host arrays only) and returns a
/// contiguous int64 copy on `dev` of `idx` broadcast to `shape`.
Array prepare_indices(const Array& idx, const Shape& shape, int64_t n, Device dev, const char* op,
                      const char* name, const char* operand, bool* checked);

/// arange(prod(batch)).reshape(batch) as int64 on the CPU.
Array arange_batch(const Shape& batch);

/// For numpy batch broadcasting of two batch shapes: flat index maps from
/// each position of the broadcast shape into each operand's flat batch.
void broadcast_index_maps(const Shape& a_batch, const Shape& b_batch, const Shape& out_batch,
                          std::vector<int64_t>& a_map, std::vector<int64_t>& b_map);

/// broadcast_shapes with the op's tag: "[op] Shapes (3) and (2) cannot be broadcast."
Shape broadcast_shapes_for(const Shape& a, const Shape& b, const char* op, const char* what);

inline Shape batch_of(const Array& a, int trailing = 2) {
  return Shape(a.shape().begin(), a.shape().end() - std::min<int>(trailing, a.ndim()));
}

}  // namespace mmkit::detail
