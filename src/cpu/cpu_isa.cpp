#include "cpu/cpu_isa.h"

#include <cpuid.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "mmkit/cpu.h"
#include "mmkit/error.h"

namespace mmkit::cpu {
namespace {

// CPUID leaf 1, ECX bit 29 (clang 14 does not know "f16c" in __builtin_cpu_supports).
bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
}

bool cpu_has_avx512() {
  // F + BW + VL + DQ: what the avx512 kernel files are compiled for.
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("fma") && cpu_has_f16c();
}

bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
}

Isa detect() {
  __builtin_cpu_init();
  if (cpu_has_avx512()) return Isa::avx512;
  if (cpu_has_avx2()) return Isa::avx2;
  return Isa::scalar;
}

std::string available_list() {
  std::string s;
  for (Isa i : available_isas()) s += std::string(s.empty() ? "" : ", ") + isa_name(i);
  return s;
}

Isa from_env() {
  const char* v = std::getenv("MMKIT_CPU_ISA");
  if (!v || !*v) return detect();
  const std::string s(v);
  Isa want;
  if (s == "avx512") want = Isa::avx512;
  else if (s == "avx2") want = Isa::avx2;
  else if (s == "scalar") want = Isa::scalar;
  else throw Error("[cpu] MMKIT_CPU_ISA='" + s + "' is not a level; use avx512, avx2 or scalar.");
  if (!isa_available(want))
    throw Error("[cpu] MMKIT_CPU_ISA=" + s + " but this CPU supports only: " + available_list() + ".");
  return want;
}

// -1: not chosen yet. Set once from the environment, or by the test hook.
std::atomic<int> g_isa{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

std::vector<Isa> available_isas() {
  static const std::vector<Isa> levels = [] {
    std::vector<Isa> v;
    const Isa best = detect();
    if (best >= Isa::avx512) v.push_back(Isa::avx512);
    if (best >= Isa::avx2) v.push_back(Isa::avx2);
    v.push_back(Isa::scalar);
    return v;
  }();
  return levels;
}

bool isa_available(Isa isa) { return isa <= detect(); }

bool has_avx512_vnni() {
  __builtin_cpu_init();
  return cpu_has_avx512() && __builtin_cpu_supports("avx512vnni");
}

namespace {
std::atomic<bool> g_vnni_qmv{true};
}

bool vnni_qmv_enabled() {
  static const bool has = has_avx512_vnni();
  return has && g_vnni_qmv.load(std::memory_order_acquire);
}

bool has_avx512_bf16() {
  __builtin_cpu_init();
  return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
}

Isa active_isa() {
  int v = g_isa.load(std::memory_order_acquire);
  if (v < 0) {
    const int chosen = static_cast<int>(from_env());  // throws on a bad MMKIT_CPU_ISA (never cached)
    int expected = -1;
    g_isa.compare_exchange_strong(expected, chosen, std::memory_order_acq_rel);
    v = g_isa.load(std::memory_order_acquire);
  }
  return static_cast<Isa>(v);
}

}  // namespace mmkit::cpu

namespace mmkit::detail {
bool set_cpu_vnni_qmv_for_testing(bool on) { return cpu::g_vnni_qmv.exchange(on, std::memory_order_acq_rel); }

cpu::Isa set_cpu_isa_for_testing(cpu::Isa isa) {
  if (!cpu::isa_available(isa))
    throw Error(std::string("[cpu] set_cpu_isa_for_testing: ") + cpu::isa_name(isa) + " is not available on this CPU.");
  const cpu::Isa prev = cpu::active_isa();
  cpu::g_isa.store(static_cast<int>(isa), std::memory_order_release);
  return prev;
}
}  // namespace mmkit::detail

namespace mmkit {
const char* cpu_isa() { return cpu::isa_name(cpu::active_isa()); }
}  // namespace mmkit
