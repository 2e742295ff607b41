#include <atomic>
#include <cstdlib>
#include <string>

#include "core/gpu_hooks.h"
#include "mmkit/device.h"
#include "mmkit/error.h"

namespace mmkit {

std::ostream& operator<<(std::ostream& os, const Device& d) {
  if (d.is_cpu()) return os << "cpu";
  os << "gpu";
  if (d.index) os << ":" << d.index;
  return os;
}

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "gpu" || s == "cuda") return Device::gpu(0);
  for (const char* p : {"gpu:", "cuda:"}) {
    const std::string pre(p);
    if (s.rfind(pre, 0) == 0) {
      try {
        size_t used = 0;
        int i = std::stoi(s.substr(pre.size()), &used);
        if (used == s.size() - pre.size() && i >= 0) return Device::gpu(i);
      } catch (...) {
      }
    }
  }
  throw_error("device", "Unknown device '", s, "'; expected 'cpu', 'gpu' or 'gpu:N'.");
}

namespace detail {
static std::atomic<const GpuHooks*> g_hooks{nullptr};
const GpuHooks* gpu_hooks() { return g_hooks.load(); }
void set_gpu_hooks(const GpuHooks* h) { g_hooks.store(h); }
const GpuHooks& require_gpu(const char* op) {
  const GpuHooks* h = gpu_hooks();
  if (!h) throw_error(op, "mmkit was built without CUDA; the gpu device is not available.");
  if (h->device_count() <= 0) throw_error(op, "no CUDA GPU is available on this machine.");
  return *h;
}
void ensure_backends_loaded();  // registry.cpp
}  // namespace detail

bool built_with_cuda() {
#ifdef MMKIT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int gpu_count() {
  detail::ensure_backends_loaded();
  const auto* h = detail::gpu_hooks();
  return h ? h->device_count() : 0;
}

Stream Stream::create(Device d) {
  if (d.is_cpu()) return Stream(d);
  detail::ensure_backends_loaded();
  const auto& h = detail::require_gpu("stream");
  return Stream(d, h.stream_create(d.index));
}

void Stream::synchronize() const {
  if (device.is_cpu()) return;
  detail::require_gpu("stream").stream_synchronize(handle, device.index);
}

void Stream::destroy() {
  if (device.is_gpu() && handle) detail::require_gpu("stream").stream_destroy(handle);
  handle = nullptr;
}

void synchronize(Device d) {
  if (d.is_cpu()) return;
  detail::ensure_backends_loaded();
  detail::require_gpu("synchronize").device_synchronize(d.index);
}

}  // namespace mmkit
