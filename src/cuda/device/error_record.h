// Where kernels report a bad device-resident index (SPEC decision 3). Plain
// data shared by the host runtime and the kernels: one record per GPU, in
// mapped pinned host memory, first writer wins; the host reads it at the next
// synchronizing call and throws mmkit::Error.
#pragma once

#include <cstdint>

namespace mmkit::cuda {

enum class ErrOp : int32_t { gather_qmm = 1, gather_mm = 2, quantized_matmul = 3, matmul = 4, other = 5 };
enum class ErrWhich : int32_t { lhs = 0, rhs = 1 };

struct DeviceErrorRecord {
  int32_t flag;  // 0 = clean; set to 1 by the first kernel that finds a bad index
  int32_t op;    // ErrOp
  int32_t which; // ErrWhich
  int32_t pad;
  int64_t value;     // the offending index
  int64_t position;  // its flat position in the broadcast index array
  int64_t bound;     // the operand's batch size (valid range [0, bound))
};

/// What a kernel needs to check indices: where to report, for which op, and
/// whether checking is needed at all (host-resident indices were checked).
struct IndexGuard {
  DeviceErrorRecord* rec;
  int32_t op;
  int32_t check;
};

}  // namespace mmkit::cuda
