// Timing helpers shared by the CUDA tools (cuda_gemv_bench, cuda_read_probe).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                                        \
  do {                                                                                               \
    cudaError_t e_ = (x);                                                                            \
    if (e_ != cudaSuccess) {                                                                         \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                                  \
    }                                                                                                \
  } while (0)

namespace mmkit::tools {

/// Median device time of one call: events around each call, recorded back to
/// back with no host synchronisation in between, so the GPU runs the calls
/// one after another and a delta is the call's time on the device (launch
/// gaps included only when the host cannot keep up).
template <typename F>
double median_us(int warmup, int iters, F&& body) {
  for (int i = 0; i < warmup; ++i) body(i);
  CK(cudaDeviceSynchronize());
  std::vector<cudaEvent_t> ev(2 * static_cast<size_t>(iters));
  for (auto& e : ev) CK(cudaEventCreate(&e));
  for (int i = 0; i < iters; ++i) {
    CK(cudaEventRecord(ev[2 * i], cudaStreamLegacy));
    body(warmup + i);
    CK(cudaEventRecord(ev[2 * i + 1], cudaStreamLegacy));
  }
  CK(cudaDeviceSynchronize());
  CK(cudaGetLastError());
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]));
    t.push_back(ms * 1e3);
  }
  for (auto& e : ev) CK(cudaEventDestroy(e));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

/// Read-only streaming of n 16-byte vectors (U per thread in flight,
/// grid-stride, XOR-reduced so the loads are used): the floor of any kernel
/// that reads those bytes once.
template <int U>
__global__ void __launch_bounds__(256) stream_read(const uint4* __restrict__ p, size_t n, uint32_t* out) {
  uint32_t acc = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x * U;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x * U + threadIdx.x; i < n; i += stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const size_t j = i + static_cast<size_t>(u) * blockDim.x;
      v[u] = j < n ? __ldcs(p + j) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (acc == 0x9e3779b9u) *out = acc;  // practically never; keeps the loads
}

}  // namespace mmkit::tools
