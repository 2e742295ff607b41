// Read-skeleton probe: how fast can one kernel read B bytes once (cold, from
// rotating copies), timed exactly like cuda_gemv_bench (events back to back,
// median), for several kernel skeletons. It answers "what is the floor of a
// GEMV of this size, and which skeleton gets closest to it".
//
//   mmkit_cuda_read_probe [MB (default: the 4-bit g64 8192 x 8192 bytes)]
//   (PROBE_ITERS=n: n timed calls per skeleton, for profilers)
//
// Skeletons:
//   ld<U>/<blocks per SM>: grid-stride 16-byte __ldcs loads, U in flight per thread
//     (tools::stream_read, the bench's floor kernel);
//   tma<S>x<KB>/<blocks per SM>: persistent blocks, S stages of KB-sized bulk
//     copies (cp.async.bulk, mbarrier completion) issued by one thread, the
//     block reads each stage from shared memory;
//   rows<...>: the GEMV's pattern, tiles of 16 rows x row bytes, each stage
//     16 bulk copies of (bytes per row per stage), one tile per block.
//   empty: an empty kernel (launch + event overhead).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "timing.cuh"

using mmkit::tools::median_us;
using mmkit::tools::stream_read;

__global__ void empty_kernel(uint32_t* out) {
  if (threadIdx.x == 1023) *out = 1;
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra W;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void bulk_g2s(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}

/// Persistent: block b reads pieces b, b + grid, ... of `piece` bytes through S stages.
__global__ void tma_read(const unsigned char* __restrict__ p, size_t bytes, int S, uint32_t piece, uint32_t* out) {
  extern __shared__ __align__(128) unsigned char sm[];
  __shared__ __align__(8) uint64_t bars[16];
  const size_t npieces = (bytes + piece - 1) / piece;
  if (threadIdx.x < S) mbar_init(smem_u32(&bars[threadIdx.x]), 1);
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  __syncthreads();
  auto issue = [&](size_t it, int s) {
    const size_t pc = blockIdx.x + it * gridDim.x;
    if (pc < npieces) {
      const uint32_t nb = static_cast<uint32_t>(bytes - pc * piece < piece ? bytes - pc * piece : piece);
      mbar_expect_tx(smem_u32(&bars[s]), nb);
      bulk_g2s(smem_u32(sm + static_cast<size_t>(s) * piece), p + pc * piece, nb, smem_u32(&bars[s]));
    }
  };
  if (threadIdx.x == 0)
    for (int s = 0; s < S; ++s) issue(s, s);
  uint32_t acc = 0;
  const size_t iters = (npieces - blockIdx.x + gridDim.x - 1) / gridDim.x;
  for (size_t it = 0; it < iters; ++it) {
    const int s = static_cast<int>(it % S);
    mbar_wait(smem_u32(&bars[s]), static_cast<uint32_t>((it / S) & 1));
    const uint4* v = reinterpret_cast<const uint4*>(sm + static_cast<size_t>(s) * piece);
    for (uint32_t i = threadIdx.x; i < piece / 16; i += blockDim.x) {
      const uint4 x = v[i];
      acc ^= x.x ^ x.y ^ x.z ^ x.w;
    }
    __syncthreads();
    if (threadIdx.x == 0) issue(it + S, s);
  }
  if (acc == 0x9e3779b9u) *out = acc;
}

/// The GEMV pattern: one tile of 16 rows x rowb bytes per block (rows of the
/// matrix are rowb bytes), read in stages of 16 rows x sb bytes (16 bulk
/// copies), S stages; blocks per SM decided by smem.
__global__ void rows_read(const unsigned char* __restrict__ p, int nrows, int rowb, int S, int sb, uint32_t* out) {
  extern __shared__ __align__(128) unsigned char sm[];
  __shared__ __align__(8) uint64_t bars[16];
  if (threadIdx.x < S) mbar_init(smem_u32(&bars[threadIdx.x]), 1);
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  __syncthreads();
  const int tiles = (nrows + 15) / 16;
  const int stages = rowb / sb;
  const int stage_bytes = 16 * sb;
  // Items j = (this block's tile iteration, stage) in order; slot j % S.
  const int my_tiles = (tiles - static_cast<int>(blockIdx.x) + static_cast<int>(gridDim.x) - 1) / static_cast<int>(gridDim.x);
  const int total = my_tiles * stages;
  auto issue = [&](int j) {
    if (j < total) {
      const int tile = blockIdx.x + (j / stages) * gridDim.x, st = j % stages, s = j % S;
      const unsigned char* t0 = p + static_cast<size_t>(tile) * 16 * rowb;
      mbar_expect_tx(smem_u32(&bars[s]), stage_bytes);
      for (int r = 0; r < 16; ++r)
        bulk_g2s(smem_u32(sm + s * stage_bytes + r * sb), t0 + static_cast<size_t>(r) * rowb + st * sb, sb,
                 smem_u32(&bars[s]));
    }
  };
  if (threadIdx.x == 0)
    for (int j = 0; j < S; ++j) issue(j);
  uint32_t acc = 0;
  for (int j = 0; j < total; ++j) {
    const int s = j % S;
    mbar_wait(smem_u32(&bars[s]), static_cast<uint32_t>((j / S) & 1));
    const uint4* v = reinterpret_cast<const uint4*>(sm + s * stage_bytes);
    for (int i = threadIdx.x; i < stage_bytes / 16; i += blockDim.x) {
      const uint4 x = v[i];
      acc ^= x.x ^ x.y ^ x.z ^ x.w;
    }
    __syncthreads();
    if (threadIdx.x == 0) issue(j + S);
  }
  if (acc == 0x9e3779b9u) *out = acc;
}

int main(int argc, char** argv) {
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  size_t bytes = size_t{8192} * 8192 / 2 + size_t{8192} * (8192 / 64) * 4;
  if (argc > 1) bytes = static_cast<size_t>(std::atof(argv[1]) * 1e6) / 4096 * 4096;
  std::printf("device: %s, %d SMs, L2 %d MB; %.2f MB per call\n", prop.name, sms, prop.l2CacheSize >> 20, bytes / 1e6);
  // copy ceiling, as in cuda_gemv_bench
  {
    const size_t cb = size_t{512} << 20;
    void *c0, *c1;
    CK(cudaMalloc(&c0, cb));
    CK(cudaMalloc(&c1, cb));
    CK(cudaMemset(c0, 1, cb));
    const double us = median_us(3, 20, [&](int) { CK(cudaMemcpyAsync(c1, c0, cb, cudaMemcpyDeviceToDevice, cudaStreamLegacy)); });
    std::printf("copy: %.1f GB/s\n", 2.0 * cb / (us * 1e-6) / 1e9);
    CK(cudaFree(c0));
    CK(cudaFree(c1));
  }
  const int copies = std::max<int>(4, static_cast<int>((size_t{300} << 20) / bytes) + 1);
  unsigned char* buf;
  uint32_t* out;
  CK(cudaMalloc(&buf, bytes * copies));
  CK(cudaMalloc(&out, 4));
  CK(cudaMemset(buf, 3, bytes * copies));
  const int iters = std::getenv("PROBE_ITERS") ? std::atoi(std::getenv("PROBE_ITERS")) : 100;
  const int warm = iters >= 10 ? 10 : 0;
  auto report = [&](const char* name, double us) {
    std::printf("%-28s %8.2f us  %7.1f GB/s\n", name, us, bytes / (us * 1e-6) / 1e9);
    std::fflush(stdout);
  };
  char name[64];
  report("empty 1056x256", median_us(warm, iters, [&](int) { empty_kernel<<<1056, 256>>>(out); }));
  report("empty 132x256", median_us(warm, iters, [&](int) { empty_kernel<<<132, 256>>>(out); }));
  const size_t n16 = bytes / 16;
  for (int bps : {2, 4, 8}) {
    std::snprintf(name, sizeof name, "ld4/%d", bps);
    report(name, median_us(warm, iters, [&](int i) {
             stream_read<4><<<sms * bps, 256>>>(reinterpret_cast<const uint4*>(buf + (i % copies) * bytes), n16, out);
           }));
    std::snprintf(name, sizeof name, "ld8/%d", bps);
    report(name, median_us(warm, iters, [&](int i) {
             stream_read<8><<<sms * bps, 256>>>(reinterpret_cast<const uint4*>(buf + (i % copies) * bytes), n16, out);
           }));
    std::snprintf(name, sizeof name, "ld16/%d", bps);
    report(name, median_us(warm, iters, [&](int i) {
             stream_read<16><<<sms * bps, 256>>>(reinterpret_cast<const uint4*>(buf + (i % copies) * bytes), n16, out);
           }));
  }
  CK(cudaFuncSetAttribute(tma_read, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
  struct T { int S, kb, bps, threads; };
  for (T t : {T{4, 16, 1, 256}, T{8, 16, 1, 256}, T{6, 32, 1, 256}, T{4, 32, 1, 512}, T{4, 16, 2, 256},
              T{3, 32, 2, 256}, T{8, 8, 2, 256}, T{12, 16, 1, 256}, T{4, 8, 4, 256}, T{2, 16, 4, 128}}) {
    std::snprintf(name, sizeof name, "tma%dx%dK/%d t%d", t.S, t.kb, t.bps, t.threads);
    report(name, median_us(warm, iters, [&](int i) {
             tma_read<<<sms * t.bps, t.threads, t.S * t.kb * 1024>>>(buf + (i % copies) * bytes, bytes, t.S,
                                                                      t.kb * 1024, out);
           }));
  }
  // GEMV-like rows: the weights of 8192 x 8192 (4096 B rows); bytes of scales ignored here.
  CK(cudaFuncSetAttribute(rows_read, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
  struct R { int S, sb, grid_per_sm, threads; };
  const int nrows = static_cast<int>(bytes / 4096);
  for (R r : {R{4, 512, 0, 256}, R{4, 1024, 0, 256}, R{2, 2048, 0, 256}, R{4, 1024, 1, 256}, R{6, 1024, 1, 256},
              R{3, 2048, 1, 256}, R{4, 512, 2, 256}, R{4, 1024, 2, 256}, R{8, 512, 2, 256}}) {
    const int grid = r.grid_per_sm ? sms * r.grid_per_sm : (nrows + 15) / 16;
    std::snprintf(name, sizeof name, "rows%dx16x%d g%d", r.S, r.sb, grid);
    report(name, median_us(warm, iters, [&](int i) {
             rows_read<<<grid, r.threads, r.S * 16 * r.sb>>>(buf + (i % copies) * bytes, nrows, 4096, r.S, r.sb, out);
           }));
  }
  CK(cudaFree(buf));
  CK(cudaFree(out));
  return 0;
}
