// One ordered registry per op family (STYLE.md rule 3): entries are tried in
// order and the first whose supports() accepts the descriptor runs. Each
// device's list ends in an entry that accepts every valid descriptor, so
// capability and dispatch cannot drift apart; explain() says why each entry
// was skipped.
#pragma once

#include <functional>
#include <iostream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "mmkit/device.h"
#include "mmkit/error.h"
#include "ops/descriptors.h"

namespace mmkit::detail {

template <typename Desc, typename Args>
struct KernelEntry {
  std::string name;
  Device::Type device;
  std::function<bool(const Desc&)> supports;
  std::function<void(const Desc&, Args&, const Stream&)> run;
  int priority = 0;  // higher is tried first
};

bool log_dispatch_enabled();

template <typename Desc, typename Args>
class Registry {
 public:
  using Entry = KernelEntry<Desc, Args>;
  explicit Registry(const char* family) : family_(family) {}

  void add(Entry e) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.begin();
    while (it != entries_.end() && it->priority >= e.priority) ++it;
    entries_.insert(it, std::move(e));
  }

  const Entry& select(const Desc& d, Device::Type dev) const {
    for (const Entry& e : entries_) {
      if (e.device == dev && e.supports(d)) {
        if (log_dispatch_enabled()) log_once(d, e);
        return e;
      }
    }
    std::ostringstream os;
    os << "no " << (dev == Device::Type::gpu ? "gpu" : "cpu") << " kernel for " << d << ":\n"
       << explain(d, dev);
    throw Error("[" + std::string(family_) + "] " + os.str());
  }

  void run(const Desc& d, Args& a, const Stream& s) const { select(d, s.device.type).run(d, a, s); }

  std::string explain(const Desc& d, Device::Type dev) const {
    std::ostringstream os;
    for (const Entry& e : entries_) {
      if (e.device != dev) continue;
      os << "  " << e.name << ": " << (e.supports(d) ? "supported" : "skipped (supports() is false)")
         << "\n";
    }
    return os.str();
  }

  std::vector<std::string> names(Device::Type dev) const {
    std::vector<std::string> out;
    for (const Entry& e : entries_)
      if (e.device == dev) out.push_back(e.name);
    return out;
  }
  const std::vector<Entry>& entries() const { return entries_; }
  const char* family() const { return family_; }

 private:
  void log_once(const Desc& d, const Entry& e) const {
    std::ostringstream os;
    os << d;
    std::lock_guard<std::mutex> lock(log_mu_);
    if (logged_.insert(os.str()).second)
      std::cerr << "[mmkit dispatch] " << family_ << ": " << os.str() << " -> " << e.name << "\n";
  }
  const char* family_;
  std::vector<Entry> entries_;
  mutable std::mutex mu_;
  mutable std::mutex log_mu_;
  mutable std::set<std::string> logged_;
};

using QuantizeRegistry = Registry<QuantizeDesc, QuantizeArgs>;
using DequantizeRegistry = Registry<DequantizeDesc, DequantizeArgs>;
using Fp8Registry = Registry<Fp8Desc, Fp8Args>;
using QmmRegistry = Registry<QmmDesc, QmmArgs>;
using GemmRegistry = Registry<GemmDesc, GemmArgs>;
using BlockMaskedRegistry = Registry<BlockMaskedDesc, BlockMaskedArgs>;

struct Registries {
  QuantizeRegistry quantize{"quantize"};
  DequantizeRegistry dequantize{"dequantize"};
  Fp8Registry fp8{"fp8"};
  QmmRegistry qmm{"qmm"};
  GemmRegistry gemm{"gather_mm"};
  BlockMaskedRegistry block_masked{"block_masked_mm"};
};

/// The registries, with every compiled-in backend registered on first use.
Registries& registries();

// Backends register themselves here (called once from registries()).
void register_cpu_kernels(Registries& r);
#ifdef MMKIT_WITH_CUDA
void register_cuda_kernels(Registries& r);
#endif

}  // namespace mmkit::detail
