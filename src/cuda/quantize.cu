// quantize / dequantize / to_fp8 / from_fp8 on the GPU, bit-exact with the CPU
// backend (src/cpu/quantize_cpu.cpp, SPEC.md 1.3, 1.4, 2.4): the same float32
// operations in the same order, with explicit round-to-nearest intrinsics
// (__fdiv_rn, __fmul_rn, ...) and this file compiled with -fmad=false, so no
// contraction changes a rounding step; NaN results follow x86 rules (sign and
// payload, device/common.cuh) where they can reach an output. log2 of the mx
// scale is computed in
// float64 and rounded once (correctly rounded in practice, like glibc's).
//
// Mapping: quantize runs one thread per (row, group), which owns the group's
// packed words (groups start at word boundaries); dequantize and fp8 run one
// thread per element. Memory-bound; the bound aimed at is >= 50% of copy
// bandwidth (uncoalesced group reads for quantize are served by L1); not yet
// measured.
// Tests: tests/test_cuda_cross.cpp (CudaCross.Quantize*, Dequantize*, Fp8*),
// the conformance suite with MMKIT_TEST_DEVICE=gpu.
#include <cuda_runtime.h>

#include "cuda/device/common.cuh"
#include "cuda/runtime.h"
#include "formats/format.h"

namespace mmkit::cuda {
namespace {
using detail::DequantizeArgs;
using detail::DequantizeDesc;
using detail::Fp8Args;
using detail::Fp8Desc;
using detail::QuantizeArgs;
using detail::QuantizeDesc;
using fmt::Mode;

constexpr int kThreads = 256;

inline int grid_for(int64_t n) {
  const int64_t b = ceil_div(n, kThreads);
  return static_cast<int>(b < (1 << 20) ? (b > 0 ? b : 1) : (1 << 20));
}

/// std::min / std::max semantics (the first argument wins unless the second
/// compares strictly better), so NaN propagates exactly as on the CPU.
__device__ __forceinline__ float std_min(float a, float b) { return b < a ? b : a; }
__device__ __forceinline__ float std_max(float a, float b) { return a < b ? b : a; }

/// Nearest E2M1 code, first minimum wins; differences rounded to T.
template <typename T>
__device__ __forceinline__ uint32_t nearest_fp4(float v) {
  uint32_t best = 0;
  float bd = round_to<T>(fabsf(__fsub_rn(v, fmt::e2m1_to_float(0))));
#pragma unroll
  for (uint32_t i = 1; i < 16; ++i) {
    const float d = round_to<T>(fabsf(__fsub_rn(v, fmt::e2m1_to_float(i))));
    if (d < bd) {
      bd = d;
      best = i;
    }
  }
  return best;
}

template <typename T>
__global__ void quantize_affine_kernel(const T* __restrict__ w, int64_t groups_total, int64_t groups_per_row, int gs,
                                       int bits, uint32_t* __restrict__ q, T* __restrict__ scales,
                                       T* __restrict__ biases) {
  const float n_max = static_cast<float>((1u << bits) - 1u);
  const float eps = 1e-7f;
  const int wpg = gs * bits / 32;
  for (int64_t gi = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; gi < groups_total;
       gi += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T* v = w + gi * gs;  // groups are consecutive in a row-major (rows, cols) matrix
    float wmin = __int_as_float(0x7f800000), wmax = -__int_as_float(0x7f800000);
    for (int i = 0; i < gs; ++i) {
      const float x = to_f<T>(v[i]);
      wmin = std_min(wmin, x);
      wmax = std_max(wmax, x);
    }
    const bool flip = fabsf(wmin) > fabsf(wmax);
    float s = std_max(div_x86(sub_x86(wmax, wmin), n_max), eps);
    if (!flip) s = -s;
    const float edge = flip ? wmin : wmax;
    const float q0 = rint_x86(div_x86(edge, s));
    float bias = 0.0f;
    if (q0 != 0.0f) {
      s = div_x86(edge, q0);
      bias = edge;
    }
    uint32_t* row = q + gi * wpg;
    for (int j = 0; j < wpg; ++j) row[j] = 0u;
    for (int i = 0; i < gs; ++i) {
      float c = rint_x86(div_x86(sub_x86(to_f<T>(v[i]), bias), s));
      c = std_min(std_max(c, 0.0f), n_max);
      fmt::pack_code(row, i, bits, c == c ? static_cast<uint32_t>(c) : 0u);  // NaN -> code 0
    }
    scales[gi] = from_f<T>(s);
    biases[gi] = from_f<T>(bias);
    (void)groups_per_row;
  }
}

template <typename T>
__global__ void quantize_fp_kernel(const T* __restrict__ w, int64_t groups_total, int gs, int bits, float maxval,
                                   bool nv, const float* __restrict__ global_scale, uint32_t* __restrict__ q,
                                   uint8_t* __restrict__ scales) {
  const int wpg = gs * bits / 32;
  const float enc = global_scale ? __fdiv_rn(2688.0f, *global_scale) : 1.0f;
  for (int64_t gi = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; gi < groups_total;
       gi += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T* v = w + gi * gs;
    float amax = 0.0f;
    for (int i = 0; i < gs; ++i) amax = std_max(amax, fabsf(to_f<T>(v[i])));
    const float sc = round_to<T>(__fdiv_rn(amax, maxval));
    uint32_t* row = q + gi * wpg;
    for (int j = 0; j < wpg; ++j) row[j] = 0u;
    if (!nv) {
      float e = 0.0f;
      if (sc != 0.0f) e = rintf(round_to<T>(static_cast<float>(log2(static_cast<double>(sc)))));
      e = fminf(fmaxf(e, -127.0f), 127.0f);  // E8M0 range (NaN -> -127), as the CPU
      scales[gi] = static_cast<uint8_t>(static_cast<int>(e) + 127);
      const float inv = fmt::pow2_int(-static_cast<int>(e));
      for (int i = 0; i < gs; ++i) {
        const float x = round_to<T>(__fmul_rn(to_f<T>(v[i]), inv));
        const uint32_t c = bits == 4 ? nearest_fp4<T>(x) : fmt::float_to_e4m3(x);
        fmt::pack_code(row, i, bits, c);
      }
    } else {
      const uint8_t sb = fmt::float_to_e4m3(__fmul_rn(sc, enc));
      scales[gi] = sb;
      const float sdec = round_to<T>(fmt::e4m3_to_float(sb));
      for (int i = 0; i < gs; ++i) {
        const float x = __fmul_rn(round_to<T>(__fdiv_rn(to_f<T>(v[i]), sdec)), enc);
        fmt::pack_code(row, i, 4, nearest_fp4<float>(x));
      }
    }
  }
}

template <typename S, typename O>
__global__ void dequantize_affine_kernel(const uint32_t* __restrict__ q, const S* __restrict__ scales,
                                         const S* __restrict__ biases, O* __restrict__ out, int64_t rows, int64_t cols,
                                         int gs, int bits) {
  const int64_t n = rows * cols, words = cols * bits / 32, groups = cols / gs;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, j = i - r * cols;
    const int64_t gi = r * groups + j / gs;
    const float s = to_f<S>(scales[gi]), b = to_f<S>(biases[gi]);
    const float c = static_cast<float>(fmt::unpack_code(q + r * words, j, bits));
    out[i] = from_f<O>(round_to<S>(add_x86(round_to<S>(mul_x86(c, s)), b)));  // two roundings in S, as MLX
  }
}

template <typename O>
__global__ void dequantize_fp_kernel(const uint32_t* __restrict__ q, const uint8_t* __restrict__ scales,
                                     const float* __restrict__ global_scale, O* __restrict__ out, int64_t rows,
                                     int64_t cols, int gs, int bits, bool e8m0_scale, bool e4m3_elem) {
  const int64_t n = rows * cols, words = cols * bits / 32, groups = cols / gs;
  const float gmul = global_scale ? div_x86(*global_scale, 2688.0f) : 1.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, j = i - r * cols;
    const uint32_t sb = scales[r * groups + j / gs];
    const float s = global_scale ? mul_x86(fmt::e4m3_to_float(sb), gmul)
                                 : round_to<O>(e8m0_scale ? fmt::e8m0_to_float(sb) : fmt::e4m3_to_float(sb));
    const uint32_t c = fmt::unpack_code(q + r * words, j, bits);
    const float e = e4m3_elem ? fmt::e4m3_to_float(c) : fmt::e2m1_to_float(c);
    out[i] = from_f<O>(mul_x86(e, s));
  }
}

template <typename T>
__global__ void to_fp8_kernel(const T* __restrict__ in, uint8_t* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = fmt::float_to_e4m3(to_f<T>(in[i]));
}

template <typename T>
__global__ void from_fp8_kernel(const uint8_t* __restrict__ in, T* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_f<T>(fmt::e4m3_to_float(in[i]));
}

/// Calls f(T{}) with the storage type of a float dtype.
template <typename F>
void with_float_type(Dtype dt, F&& f) {
  switch (dt) {
    case Dtype::float16: f(__half{}); break;
    case Dtype::bfloat16: f(__nv_bfloat16{}); break;
    default: f(float{}); break;
  }
}

void quantize_gpu(const QuantizeDesc& d, QuantizeArgs& a, const Stream& st) {
  OpScope scope(st, "quantize");
  const int64_t groups = d.rows * (d.cols / d.format.group_size);
  const int gs = d.format.group_size, bits = d.format.bits;
  with_float_type(d.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (d.format.mode == Mode::affine) {
      quantize_affine_kernel<T><<<grid_for(groups), kThreads, 0, scope.stream()>>>(
          static_cast<const T*>(a.w.raw_data()), groups, d.cols / gs, gs, bits, a.w_q.data<uint32_t>(),
          static_cast<T*>(a.scales.raw_data()), static_cast<T*>(a.biases.raw_data()));
    } else {
      const float* gsc = d.has_global_scale ? a.global_scale.data<float>() : nullptr;
      quantize_fp_kernel<T><<<grid_for(groups), kThreads, 0, scope.stream()>>>(
          static_cast<const T*>(a.w.raw_data()), groups, gs, bits, d.format.mode == Mode::mxfp8 ? 448.0f : 6.0f,
          d.format.mode == Mode::nvfp4, gsc, a.w_q.data<uint32_t>(), a.scales.data<uint8_t>());
    }
  });
  scope.check_launch("quantize");
}

void dequantize_gpu(const DequantizeDesc& d, DequantizeArgs& a, const Stream& st) {
  OpScope scope(st, "dequantize");
  const int64_t n = d.rows * d.cols;
  const int gs = d.format.group_size, bits = d.format.bits;
  // (fmt::traits() reads a host table: decide from the mode here.)
  const Mode mode = d.format.mode;
  with_float_type(d.out_dtype, [&](auto otag) {
    using O = decltype(otag);
    O* out = static_cast<O*>(a.out.raw_data());
    if (mode == Mode::affine) {
      with_float_type(d.scale_dtype, [&](auto stag) {
        using S = decltype(stag);
        dequantize_affine_kernel<S, O><<<grid_for(n), kThreads, 0, scope.stream()>>>(
            a.w_q.data<uint32_t>(), static_cast<const S*>(a.scales.raw_data()),
            static_cast<const S*>(a.biases.raw_data()), out, d.rows, d.cols, gs, bits);
      });
    } else {
      const float* gsc = d.has_global_scale ? a.global_scale.data<float>() : nullptr;
      dequantize_fp_kernel<O><<<grid_for(n), kThreads, 0, scope.stream()>>>(
          a.w_q.data<uint32_t>(), a.scales.data<uint8_t>(), gsc, out, d.rows, d.cols, gs, bits,
          mode != Mode::nvfp4, mode == Mode::mxfp8);
    }
  });
  scope.check_launch("dequantize");
}

void fp8_gpu(const Fp8Desc& d, Fp8Args& a, const Stream& st) {
  OpScope scope(st, d.to_fp8 ? "to_fp8" : "from_fp8");
  with_float_type(d.float_dtype, [&](auto tag) {
    using T = decltype(tag);
    if (d.to_fp8)
      to_fp8_kernel<T><<<grid_for(d.size), kThreads, 0, scope.stream()>>>(static_cast<const T*>(a.in.raw_data()),
                                                                          a.out.data<uint8_t>(), d.size);
    else
      from_fp8_kernel<T><<<grid_for(d.size), kThreads, 0, scope.stream()>>>(a.in.data<uint8_t>(),
                                                                            static_cast<T*>(a.out.raw_data()), d.size);
  });
  scope.check_launch("fp8");
}

}  // namespace

void register_quantize_kernels(detail::Registries& r) {
  auto all = [](const auto&) { return true; };
  r.quantize.add({"cuda_quantize_groupwise", Device::Type::gpu, all, quantize_gpu, 0});
  r.dequantize.add({"cuda_dequantize_elementwise", Device::Type::gpu, all, dequantize_gpu, 0});
  r.fp8.add({"cuda_fp8_convert", Device::Type::gpu, all, fp8_gpu, 0});
}

}  // namespace mmkit::cuda
