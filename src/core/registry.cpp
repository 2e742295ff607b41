#include "core/registry.h"

#include "mmkit/kernels.h"

#include <cstdlib>
#include <sstream>

namespace mmkit::detail {

bool log_dispatch_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("MMKIT_LOG_DISPATCH");
    return v && *v && std::string(v) != "0";
  }();
  return on;
}

Registries& registries() {
  static Registries* r = [] {
    auto* reg = new Registries();
    register_cpu_kernels(*reg);
#ifdef MMKIT_WITH_CUDA
    register_cuda_kernels(*reg);
#endif
    return reg;
  }();
  return *r;
}

void ensure_backends_loaded() { (void)registries(); }

template <typename R>
static void list_entries(const R& reg, std::vector<std::string>& out) {
  for (const auto& e : reg.entries())
    out.push_back(std::string(reg.family()) + ": " + e.name + (e.device == Device::Type::gpu ? " (gpu)" : " (cpu)"));
}

// ---- descriptor printing (STYLE.md rule 2) ----------------------------------------

std::ostream& operator<<(std::ostream& os, const QFormat& f) {
  os << f.traits().name;
  if (f.mode == fmt::Mode::affine) os << " b" << f.bits << " g" << f.group_size;
  return os;
}

template <typename D>
static std::string to_key(const D& d) {
  std::ostringstream os;
  os << d;
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const QuantizeDesc& d) {
  return os << "QuantizeDesc{" << d.rows << "x" << d.cols << ", " << d.format << ", " << d.dtype
            << (d.has_global_scale ? ", global_scale" : "") << "}";
}
std::string QuantizeDesc::key() const { return to_key(*this); }

std::ostream& operator<<(std::ostream& os, const DequantizeDesc& d) {
  return os << "DequantizeDesc{" << d.rows << "x" << d.cols << ", " << d.format << ", scales " << d.scale_dtype
            << " -> " << d.out_dtype << (d.has_global_scale ? ", global_scale" : "") << "}";
}
std::string DequantizeDesc::key() const { return to_key(*this); }

std::ostream& operator<<(std::ostream& os, const Fp8Desc& d) {
  return os << "Fp8Desc{" << d.size << (d.to_fp8 ? ", to_fp8 from " : ", from_fp8 to ") << d.float_dtype << "}";
}
std::string Fp8Desc::key() const { return to_key(*this); }

std::ostream& operator<<(std::ostream& os, const QmmDesc& d) {
  return os << "QmmDesc{" << d.op << ", L=" << d.batch << " M=" << d.M << " N=" << d.N << " K=" << d.K << ", "
            << d.format << ", " << (d.transpose ? "T" : "N") << ", " << d.dtype << ", Bx=" << d.x_batch
            << " Bw=" << d.w_batch << (d.rhs_sorted ? ", rhs sorted" : "") << "}";
}
std::string QmmDesc::key() const { return to_key(*this); }

std::ostream& operator<<(std::ostream& os, const GemmDesc& d) {
  return os << "GemmDesc{" << d.op << ", L=" << d.batch << " M=" << d.M << " N=" << d.N << " K=" << d.K << ", "
            << d.dtype << ", b " << (d.b_kmajor ? "K-major" : "N-major") << ", Ba=" << d.a_batch
            << " Bb=" << d.b_batch << (d.rhs_sorted ? ", rhs sorted" : "") << "}";
}
std::string GemmDesc::key() const { return to_key(*this); }

std::ostream& operator<<(std::ostream& os, const BlockMaskedDesc& d) {
  os << "BlockMaskedDesc{L=" << d.batch << " M=" << d.M << " N=" << d.N << " K=" << d.K << ", bs=" << d.block_size
     << ", " << d.dtype << ", b " << (d.b_kmajor ? "K-major" : "N-major");
  if (d.has_out_mask) os << ", out mask " << (d.out_mask_bool ? "bool" : "float");
  if (d.has_op_masks) os << ", operand masks " << (d.op_masks_bool ? "bool" : "float");
  return os << "}";
}
std::string BlockMaskedDesc::key() const { return to_key(*this); }

}  // namespace mmkit::detail

namespace mmkit {

std::vector<std::string> registered_kernels() {
  auto& r = detail::registries();
  std::vector<std::string> out;
  detail::list_entries(r.quantize, out);
  detail::list_entries(r.dequantize, out);
  detail::list_entries(r.fp8, out);
  detail::list_entries(r.qmm, out);
  detail::list_entries(r.gemm, out);
  detail::list_entries(r.block_masked, out);
  return out;
}

}  // namespace mmkit
