// sm_90 tensor-memory-accelerator copies and the shared-memory barriers they
// complete: a tile of a 3-D tensor map (cuTensorMapEncodeTiled, host side in
// qmm_wg.cu) into shared memory, counted as transaction bytes on an mbarrier
// that the consumers wait on by phase. The issuing calls take a predicate in
// place of a branch: ptxas serializes warpgroup MMAs across branches between
// their issue and their wait. Use only under __CUDA_ARCH__ >= 900.
#pragma once

#include <cstdint>

namespace mmkit::cuda::tma {

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
/// Makes the barriers' initialization visible to the copy engine.
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
/// Generic-proxy shared-memory accesses before the async proxy's (a copy into a
/// buffer the threads read or wrote).
__device__ __forceinline__ void proxy_fence() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

/// If pred: arrive on `bar` expecting `bytes` of copies.
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes, bool pred) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %2, 0;\n"
      "@p mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n}\n" ::"r"(bar),
      "r"(bytes), "r"(static_cast<int>(pred))
      : "memory");
}
/// Waits until phase `parity` of `bar` has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred p;\n"
      "WAIT_%=: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
/// If pred: the box at coordinates (c0, c1, c2) of the 3-D tensor map `map`
/// (a __grid_constant__ parameter) into shared memory at dst, completing on bar.
__device__ __forceinline__ void load_3d(uint32_t dst, const void* map, int c0, int c1, int c2, uint32_t bar,
                                        bool pred) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
      "@p cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n}\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar), "r"(static_cast<int>(pred))
      : "memory");
}

}  // namespace mmkit::cuda::tma
