// Devices and streams. A Stream is an ordered queue of work on one device;
// on the GPU it wraps a cudaStream_t (nullptr = the legacy default stream).
#pragma once

#include <optional>
#include <ostream>
#include <string>
#include <variant>

namespace mmkit {

struct Device {
  enum class Type { cpu, gpu };
  Type type = Type::cpu;
  int index = 0;

  constexpr Device() = default;
  constexpr Device(Type t, int i = 0) : type(t), index(i) {}
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  bool is_cpu() const { return type == Type::cpu; }
  bool is_gpu() const { return type == Type::gpu; }

  static constexpr Device cpu() { return Device(Type::cpu, 0); }
  static constexpr Device gpu(int i = 0) { return Device(Type::gpu, i); }
};

std::ostream& operator<<(std::ostream& os, const Device& d);
/// "cpu", "gpu", "gpu:1" -> Device; throws mmkit::Error.
Device parse_device(const std::string& s);

struct Stream {
  Device device;
  void* handle = nullptr;  // cudaStream_t for GPU streams, unused on the CPU

  Stream() = default;
  explicit Stream(Device d, void* h = nullptr) : device(d), handle(h) {}
  /// Creates a new non-blocking CUDA stream (owned by the caller; see destroy()).
  static Stream create(Device d);
  void synchronize() const;
  void destroy();
};

/// What an op's `stream` argument accepts: nothing (run where the inputs live),
/// a device, or a stream.
using StreamOrDevice = std::variant<std::monostate, Device, Stream>;

/// Number of CUDA devices visible (0 when built without CUDA or with no GPU).
int gpu_count();
/// True when mmkit was compiled with the CUDA backend.
bool built_with_cuda();
/// Blocks until all work on the device is done (and surfaces deferred device
/// errors such as out-of-range indices found on the GPU).
void synchronize(Device d = Device::gpu());

}  // namespace mmkit
