// Host-side runtime of the CUDA backend (internal; never included by the
// public headers): error checks, device properties, the deferred
// index-error record, and OpScope, which orders an op's launches against the
// stream-ordered allocator.
//
// Ordering model. Memory comes from a per-device CUDA memory pool, allocated
// and freed in order on the legacy default stream, where copies and casts
// also run. An op on a user stream S (non-blocking) is bracketed by two
// event joins: S waits for the legacy stream before the first launch (inputs
// are ready) and the legacy stream waits for S after the last (frees of the
// op's temporaries cannot overtake its kernels). Neither join blocks the host.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "core/registry.h"
#include "cuda/device/error_record.h"
#include "mmkit/device.h"

namespace mmkit::cuda {

[[noreturn]] void throw_cuda(const char* op, cudaError_t e, const char* what);
/// Whether p is aligned for vector loads of `bytes` (fast paths hand
/// misaligned views to the generic kernels).
inline bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

inline void check_cuda(cudaError_t e, const char* op, const char* what) {
  if (e != cudaSuccess) throw_cuda(op, e, what);
}

struct DeviceInfo {
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  size_t smem_optin = 0;  // largest dynamic shared memory a block may opt into
  int l2_bytes = 0;
};
/// Properties of `device`, queried once.
const DeviceInfo& device_info(int device);
/// The current device (cudaGetDevice).
int current_device();

/// The device-visible error record of `device` (mapped pinned host memory).
DeviceErrorRecord* error_record(int device);
/// Throws the deferred index error of `device`, if any, and clears it.
void raise_deferred_errors(int device);
/// A guard for kernels that read lhs/rhs indices of `op` ("gather_qmm", ...).
IndexGuard index_guard(int device, const char* op, bool indices_checked);

class OpScope {
 public:
  OpScope(const Stream& s, const char* op);
  ~OpScope();
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }
  const char* op() const { return op_; }
  /// Throws "[op] CUDA kernel <kernel> failed to launch: ..." after a bad launch.
  void check_launch(const char* kernel) const;

 private:
  cudaStream_t stream_;
  int device_;
  int prev_device_;
  const char* op_;
  bool joined_ = false;
};

/// Stream-ordered scratch memory from the device pool on stream s (capturable
/// as graph memory nodes); for kernels' temporaries (the gather plan).
cudaError_t stream_alloc(void** p, size_t nbytes, int device, cudaStream_t s);
/// Frees it on s, ordered after the launches that use it; never throws.
void stream_free(void* p, int device, cudaStream_t s);

/// `bytes` of stream_alloc scratch on scope's stream for an op's kernels,
/// freed on that stream (after the launches that use it) when it goes out of
/// scope; throws "[op] ... allocating <what>" when the pool is out of memory.
class StreamScratch {
 public:
  StreamScratch(const OpScope& scope, size_t bytes, const char* what)
      : stream_(scope.stream()), device_(scope.device()) {
    check_cuda(stream_alloc(&mem_, bytes, device_, stream_), scope.op(), what);
  }
  ~StreamScratch() { stream_free(mem_, device_, stream_); }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  void* get() const { return mem_; }

 private:
  void* mem_ = nullptr;
  cudaStream_t stream_;
  int device_;
};

/// Strided-to-contiguous copy with dtype conversion on the GPU (copy_cast.cu).
void gpu_copy_cast(const Array& src, Array& dst);

// Kernel families (each .cu registers its entries).
void register_quantize_kernels(detail::Registries& r);
void register_qmm_kernels(detail::Registries& r);
void register_gemm_kernels(detail::Registries& r);

}  // namespace mmkit::cuda
