// The seam between the host-only core and the CUDA backend: memory, copies
// and streams for Device::gpu. Null when mmkit is built without CUDA, in
// which case every GPU request fails with "built without CUDA".
#pragma once

#include <cstddef>

#include "mmkit/array.h"

namespace mmkit::detail {

struct GpuHooks {
  int (*device_count)();
  void* (*allocate)(size_t nbytes, int device);  // stream-ordered pool; throws mmkit::Error
  void (*deallocate)(void* p, int device);
  /// Copies bytes between any two devices (host or GPU), synchronously.
  void (*copy_bytes)(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n);
  /// dst (contiguous, on the GPU) = cast(src (strided, on the same GPU)).
  void (*copy_cast)(const Array& src, Array& dst);
  void (*memset_zero)(void* p, size_t n, int device);
  void* (*stream_create)(int device);
  void (*stream_destroy)(void* s);
  void (*stream_synchronize)(void* s, int device);
  void (*device_synchronize)(int device);  // also raises deferred device errors
};

/// The registered hooks, or nullptr.
const GpuHooks* gpu_hooks();
void set_gpu_hooks(const GpuHooks* h);
/// gpu_hooks() or throws "[op] mmkit was built without CUDA" / "no GPU".
const GpuHooks& require_gpu(const char* op);

/// CPU strided copy with conversion: dst (contiguous) = cast(src).
void cpu_copy_cast(const Array& src, Array& dst);

}  // namespace mmkit::detail
