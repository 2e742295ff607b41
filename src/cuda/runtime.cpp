// The CUDA backend's implementation of detail::GpuHooks (memory, copies,
// streams, synchronisation) and its registration. See runtime.h for the
// ordering model.
#include "cuda/runtime.h"

#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

#include "core/gpu_hooks.h"
#include "mmkit/error.h"

namespace mmkit::cuda {

[[noreturn]] void throw_cuda(const char* op, cudaError_t e, const char* what) {
  throw_error(op, "CUDA error in ", what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
}

namespace {

constexpr int kMaxDevices = 64;

/// Makes `device` current for the lifetime of the guard.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cudaGetDevice(&prev_);
    if (prev_ != device) check_cuda(cudaSetDevice(device), "gpu", "cudaSetDevice");
  }
  ~DeviceGuard() {
    int cur = prev_;
    cudaGetDevice(&cur);
    if (cur != prev_) cudaSetDevice(prev_);
  }

 private:
  int prev_ = 0;
};

int device_count_impl() {
  static const int n = [] {
    int c = 0;
    if (cudaGetDeviceCount(&c) != cudaSuccess) {
      cudaGetLastError();  // no driver / no device: not an error for a CPU-only run
      return 0;
    }
    return c;
  }();
  return n;
}

void check_index(int device, const char* op) {
  if (device < 0 || device >= device_count_impl() || device >= kMaxDevices)
    throw_error(op, "gpu:", device, " does not exist (", device_count_impl(), " CUDA devices visible).");
}

std::mutex g_mu;
cudaMemPool_t g_pools[kMaxDevices] = {};
DeviceErrorRecord* g_records_host[kMaxDevices] = {};
DeviceErrorRecord* g_records_dev[kMaxDevices] = {};

cudaMemPool_t pool_for(int device) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_pools[device]) return g_pools[device];
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t p = nullptr;
  check_cuda(cudaMemPoolCreate(&p, &props), "array", "cudaMemPoolCreate");
  // Keep freed blocks cached in the pool instead of returning them at every sync.
  uint64_t threshold = std::numeric_limits<uint64_t>::max();
  check_cuda(cudaMemPoolSetAttribute(p, cudaMemPoolAttrReleaseThreshold, &threshold), "array",
             "cudaMemPoolSetAttribute");
  g_pools[device] = p;
  return p;
}

void* allocate(size_t nbytes, int device) {
  check_index(device, "array");
  DeviceGuard g(device);
  void* p = nullptr;
  cudaError_t e = cudaMallocFromPoolAsync(&p, nbytes, pool_for(device), cudaStreamLegacy);
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw_error("array", "out of memory allocating ", nbytes, " bytes on gpu:", device, " (", free_b,
                " bytes free of ", total_b, "; ", cudaGetErrorName(e), ").");
  }
  return p;
}

void deallocate(void* p, int device) {
  // Runs from destructors (possibly after the CUDA runtime has shut down at
  // exit): never throws, and clears the error it may leave behind.
  int prev = 0;
  if (cudaGetDevice(&prev) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  if (prev != device) cudaSetDevice(device);
  if (cudaFreeAsync(p, cudaStreamLegacy) != cudaSuccess) cudaGetLastError();
  if (prev != device) cudaSetDevice(prev);
}

bool is_pinned_host(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeHost;
}

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t n) {
  if (n == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu()) {
    std::memcpy(dst, src, n);
    return;
  }
  const int dev = dst_dev.is_gpu() ? dst_dev.index : src_dev.index;
  check_index(dev, "copy");
  DeviceGuard g(dev);
  if (dst_dev.is_gpu() && src_dev.is_cpu()) {
    // Pageable sources are staged before cudaMemcpyAsync returns, so the host
    // buffer is free to change and no device synchronisation happens; the copy
    // stays ordered on the legacy stream before every later use.
    if (is_pinned_host(src)) check_cuda(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice), "copy", "cudaMemcpy");
    else check_cuda(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, cudaStreamLegacy), "copy", "cudaMemcpyAsync");
  } else if (dst_dev.is_cpu()) {
    check_cuda(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost), "copy", "cudaMemcpy");
    raise_deferred_errors(dev);  // the data is final only if no kernel before it failed
  } else {
    check_cuda(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, cudaStreamLegacy), "copy", "cudaMemcpyAsync");
  }
}

void copy_cast(const Array& src, Array& dst) {
  DeviceGuard g(dst.device().index);
  gpu_copy_cast(src, dst);
}

void memset_zero(void* p, size_t n, int device) {
  if (n == 0) return;
  DeviceGuard g(device);
  check_cuda(cudaMemsetAsync(p, 0, n, cudaStreamLegacy), "zeros", "cudaMemsetAsync");
}

void* stream_create(int device) {
  check_index(device, "stream");
  DeviceGuard g(device);
  cudaStream_t s = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream", "cudaStreamCreateWithFlags");
  return s;
}

void stream_destroy(void* s) {
  if (s && cudaStreamDestroy(static_cast<cudaStream_t>(s)) != cudaSuccess) cudaGetLastError();
}

void stream_synchronize(void* s, int device) {
  DeviceGuard g(device);
  cudaStream_t st = s ? static_cast<cudaStream_t>(s) : cudaStreamLegacy;
  check_cuda(cudaStreamSynchronize(st), "synchronize", "cudaStreamSynchronize");
  raise_deferred_errors(device);
}

void device_synchronize(int device) {
  check_index(device, "synchronize");
  DeviceGuard g(device);
  check_cuda(cudaDeviceSynchronize(), "synchronize", "cudaDeviceSynchronize");
  raise_deferred_errors(device);
}

const detail::GpuHooks kHooks = {
    device_count_impl, allocate, deallocate, copy_bytes, copy_cast, memset_zero,
    stream_create, stream_destroy, stream_synchronize, device_synchronize,
};

// Installed at load time as well as from register_cuda_kernels(), so arrays
// can live on the GPU before the first op touches the registries.
[[maybe_unused]] const bool kInstalled = [] {
  detail::set_gpu_hooks(&kHooks);
  return true;
}();

const char* operand_name(ErrOp op, ErrWhich which) {
  const bool lhs = which == ErrWhich::lhs;
  switch (op) {
    case ErrOp::gather_qmm:
    case ErrOp::quantized_matmul: return lhs ? "x" : "w";
    default: return lhs ? "a" : "b";
  }
}

const char* op_name(ErrOp op) {
  switch (op) {
    case ErrOp::gather_qmm: return "gather_qmm";
    case ErrOp::gather_mm: return "gather_mm";
    case ErrOp::quantized_matmul: return "quantized_matmul";
    case ErrOp::matmul: return "matmul";
    default: return "gpu";
  }
}

ErrOp op_code(const char* op) {
  if (!op) return ErrOp::other;
  if (!std::strcmp(op, "gather_qmm")) return ErrOp::gather_qmm;
  if (!std::strcmp(op, "gather_mm")) return ErrOp::gather_mm;
  if (!std::strcmp(op, "quantized_matmul")) return ErrOp::quantized_matmul;
  if (!std::strcmp(op, "matmul")) return ErrOp::matmul;
  return ErrOp::other;
}

cudaEvent_t join_event(int device, int which) {
  // One pair of events per thread and device: a wait captures the event's
  // latest record, so reusing them across ops is safe.
  thread_local std::vector<cudaEvent_t> events;
  if (events.empty()) events.assign(2 * kMaxDevices, nullptr);
  cudaEvent_t& e = events[2 * device + which];
  if (!e) check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "gpu", "cudaEventCreateWithFlags");
  return e;
}

}  // namespace

cudaError_t stream_alloc(void** p, size_t nbytes, int device, cudaStream_t s) {
  DeviceGuard g(device);
  const cudaError_t e = cudaMallocFromPoolAsync(p, nbytes, pool_for(device), s);
  if (e != cudaSuccess) cudaGetLastError();
  return e;
}

void stream_free(void* p, int device, cudaStream_t s) {
  if (p == nullptr) return;
  DeviceGuard g(device);
  if (cudaFreeAsync(p, s) != cudaSuccess) cudaGetLastError();
}

int current_device() {
  int d = 0;
  check_cuda(cudaGetDevice(&d), "gpu", "cudaGetDevice");
  return d;
}

const DeviceInfo& device_info(int device) {
  static DeviceInfo infos[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  check_index(device, "gpu");
  std::call_once(once[device], [device] {
    cudaDeviceProp p{};
    check_cuda(cudaGetDeviceProperties(&p, device), "gpu", "cudaGetDeviceProperties");
    infos[device].sm_count = p.multiProcessorCount;
    infos[device].cc_major = p.major;
    infos[device].cc_minor = p.minor;
    infos[device].smem_optin = p.sharedMemPerBlockOptin;
    infos[device].l2_bytes = p.l2CacheSize;
  });
  return infos[device];
}

DeviceErrorRecord* error_record(int device) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_records_dev[device]) {
    DeviceGuard g(device);
    void* h = nullptr;
    check_cuda(cudaHostAlloc(&h, sizeof(DeviceErrorRecord), cudaHostAllocMapped | cudaHostAllocPortable), "gpu",
               "cudaHostAlloc");
    std::memset(h, 0, sizeof(DeviceErrorRecord));
    void* d = nullptr;
    check_cuda(cudaHostGetDevicePointer(&d, h, 0), "gpu", "cudaHostGetDevicePointer");
    g_records_host[device] = static_cast<DeviceErrorRecord*>(h);
    g_records_dev[device] = static_cast<DeviceErrorRecord*>(d);
  }
  return g_records_dev[device];
}

void raise_deferred_errors(int device) {
  DeviceErrorRecord* h = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    h = g_records_host[device];
  }
  if (!h) return;
  volatile DeviceErrorRecord* v = h;
  if (v->flag == 0) return;
  const ErrOp op = static_cast<ErrOp>(v->op);
  const ErrWhich which = static_cast<ErrWhich>(v->which);
  const int64_t value = v->value, pos = v->position, bound = v->bound;
  std::memset(h, 0, sizeof(DeviceErrorRecord));
  const char* name = which == ErrWhich::lhs ? "lhs_indices" : "rhs_indices";
  throw_error(op_name(op), name, " value ", value, " at flat position ", pos, " is out of range: ",
              operand_name(op, which), " has ", bound, " batch entries, so indices must lie in [0, ", bound,
              "). (Found on gpu:", device,
              " by a kernel that ran before this synchronizing call; its output entries for that position are zero.)");
}

IndexGuard index_guard(int device, const char* op, bool indices_checked) {
  IndexGuard g{};
  g.rec = indices_checked ? nullptr : error_record(device);
  g.op = static_cast<int32_t>(op_code(op));
  g.check = indices_checked ? 0 : 1;
  return g;
}

OpScope::OpScope(const Stream& s, const char* op) : op_(op) {
  device_ = s.device.index;
  check_index(device_, op);
  check_cuda(cudaGetDevice(&prev_device_), op, "cudaGetDevice");
  if (prev_device_ != device_) check_cuda(cudaSetDevice(device_), op, "cudaSetDevice");
  stream_ = s.handle ? static_cast<cudaStream_t>(s.handle) : cudaStreamLegacy;
  if (s.handle) {
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    check_cuda(cudaStreamIsCapturing(stream_, &cap), op, "cudaStreamIsCapturing");
    if (cap == cudaStreamCaptureStatusNone) {
      cudaEvent_t e = join_event(device_, 0);
      check_cuda(cudaEventRecord(e, cudaStreamLegacy), op, "cudaEventRecord");
      check_cuda(cudaStreamWaitEvent(stream_, e, 0), op, "cudaStreamWaitEvent");
      joined_ = true;
    }
  }
}

OpScope::~OpScope() {
  if (joined_) {
    cudaEvent_t e = join_event(device_, 1);
    if (cudaEventRecord(e, stream_) != cudaSuccess || cudaStreamWaitEvent(cudaStreamLegacy, e, 0) != cudaSuccess)
      cudaGetLastError();
  }
  if (prev_device_ != device_) cudaSetDevice(prev_device_);
}

void OpScope::check_launch(const char* kernel) const {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw_error(op_, "CUDA kernel ", kernel, " failed to launch: ", cudaGetErrorName(e), " (", cudaGetErrorString(e),
                ")");
}

}  // namespace mmkit::cuda

namespace mmkit::detail {
void register_cuda_kernels(Registries& r) {
  set_gpu_hooks(&cuda::kHooks);
  cuda::register_quantize_kernels(r);
  cuda::register_qmm_kernels(r);
  cuda::register_gemm_kernels(r);
}
}  // namespace mmkit::detail
