// Decoding of packed quantized weights inside kernels. A "pack" is 32
// consecutive codes of one row: BITS uint32 words, always word aligned
// (SPEC.md 0.2: every group starts at a word boundary and gs >= 16). Codes are
// extracted with compile-time shifts (funnel shifts where a code straddles
// two words) and turned into floats without I2F:
//   affine  q      : float(2^23 | q) - 2^23 (exact)
//   E2M1  (s,e,m)  : bits ((c&7) << 22 | sign << 31) is v * 2^-126; * 2^126 (exact, denormals kept)
//   E4M3  (s,e,m)  : bits ((c&127) << 20 | sign << 31) is v * 2^-120; * 2^120 (exact)
// so each code costs a shift, a LOP3 and one float op.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

#include "cuda/device/common.cuh"
#include "formats/format.h"

namespace mmkit::cuda {

enum class QKind : int { affine = 0, e2m1 = 1, e4m3 = 2 };

/// Code i (0..31) of a pack of BITS words; i must be a compile-time constant
/// after unrolling for the shifts to fold.
template <int BITS>
__device__ __forceinline__ uint32_t pack_code(const uint32_t (&pk)[BITS], int i) {
  const int t = i * BITS;
  const int w = t >> 5;
  const int s = t & 31;
  uint32_t v;
  if (s + BITS > 32) v = __funnelshift_r(pk[w], pk[w + 1], s);
  else v = pk[w] >> s;
  return v & ((1u << BITS) - 1u);
}

/// The value of a raw code (no scale): the integer for affine, the element
/// value for E2M1 / E4M3.
template <QKind KIND>
__device__ __forceinline__ float code_value(uint32_t c) {
  if constexpr (KIND == QKind::affine) {
    return __fsub_rn(__uint_as_float(0x4B000000u | c), 8388608.0f);
  } else if constexpr (KIND == QKind::e2m1) {
    return __fmul_rn(__uint_as_float(((c & 7u) << 22) | ((c & 8u) << 28)), 0x1p126f);
  } else {
    return __fmul_rn(__uint_as_float(((c & 127u) << 20) | ((c & 128u) << 24)), 0x1p120f);
  }
}

/// Scale of an fp-mode group from its byte.
template <QKind KIND, int GS>
__device__ __forceinline__ float fp_scale(uint32_t b) {
  // nvfp4 (gs 16) has E4M3 scales; mxfp4 / mxfp8 (gs 32) E8M0.
  if constexpr (GS == 16) return fmt::e4m3_to_float(b);
  else return fmt::e8m0_to_float(b);
}

/// Streaming (evict-first, no L1 allocation) vector loads for weights that are
/// read exactly once.
__device__ __forceinline__ uint4 ld_stream_v4(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}
__device__ __forceinline__ uint2 ld_stream_v2(const void* p) {
  uint2 r;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
  return r;
}
__device__ __forceinline__ uint32_t ld_stream_v1(const void* p) {
  uint32_t r;
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(p));
  return r;
}

/// Loads one pack (BITS words at `p`, aligned to the vector width used:
/// 16 bytes for 4/8 bits, 8 for 2/6 bits, 4 for 3/5 bits).
template <int BITS>
__device__ __forceinline__ void load_pack(uint32_t (&pk)[BITS], const uint32_t* p) {
  if constexpr (BITS % 4 == 0) {
#pragma unroll
    for (int v = 0; v < BITS / 4; ++v) {
      const uint4 r = ld_stream_v4(p + 4 * v);
      pk[4 * v] = r.x;
      pk[4 * v + 1] = r.y;
      pk[4 * v + 2] = r.z;
      pk[4 * v + 3] = r.w;
    }
  } else if constexpr (BITS % 2 == 0) {
#pragma unroll
    for (int v = 0; v < BITS / 2; ++v) {
      const uint2 r = ld_stream_v2(p + 2 * v);
      pk[2 * v] = r.x;
      pk[2 * v + 1] = r.y;
    }
  } else {
#pragma unroll
    for (int v = 0; v < BITS; ++v) pk[v] = ld_stream_v1(p + v);
  }
}

/// load_pack through the read-only cache (for tiles that two threads read).
template <int BITS>
__device__ __forceinline__ void load_pack_cached(uint32_t (&pk)[BITS], const uint32_t* p) {
  if constexpr (BITS % 4 == 0) {
#pragma unroll
    for (int v = 0; v < BITS / 4; ++v) {
      const uint4 r = __ldg(reinterpret_cast<const uint4*>(p) + v);
      pk[4 * v] = r.x;
      pk[4 * v + 1] = r.y;
      pk[4 * v + 2] = r.z;
      pk[4 * v + 3] = r.w;
    }
  } else if constexpr (BITS % 2 == 0) {
#pragma unroll
    for (int v = 0; v < BITS / 2; ++v) {
      const uint2 r = __ldg(reinterpret_cast<const uint2*>(p) + v);
      pk[2 * v] = r.x;
      pk[2 * v + 1] = r.y;
    }
  } else {
#pragma unroll
    for (int v = 0; v < BITS; ++v) pk[v] = __ldg(p + v);
  }
}

// 4-bit codes as tensor-core A operands (qmv1_mma.cu, qmv_sm80.cu): a nibble
// pair becomes a T pair with one LOP3, the offset is taken out per group.
/// (v & MASK) | magic in one LOP3 (the compiler splits it in two when both
/// are immediates).
template <uint32_t MASK>
__device__ __forceinline__ uint32_t and_or(uint32_t v, uint32_t magic) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(r) : "r"(v), "n"(MASK), "r"(magic));
  return r;
}

/// Nibbles (i, i + 4) of a word as a T pair with one LOP3 (and a shift for
/// i > 0 in bfloat16, i != 1 in float16), exact, as kPairScale * (kPairOff + q):
///   bfloat16: the nibbles at mantissa bits 0-3 of 128.0:  128 + q;
///   float16:  at mantissa bits 4-7 of 1.0: 1 + q / 64 = (64 + q) / 64.
/// (The offset is taken out per group in the fold. Float16 does not use
/// 1024 + q at bits 0-3: its offset is 16 times larger relative to q, and
/// the cancellation in the fold then costs float16 results about 7 bits.)
/// HI: the pair at 16 times the weight, 16 * kPairScale * (kPairOff + q)
/// (the exponent 4 higher: 2048 + 16 q in bfloat16, 16 + q / 4 in float16),
/// for the high nibbles of 8-bit codes: a byte's two nibbles then sum to
/// kPairScale * (17 * kPairOff + code), code_off<T, 8> + code.
template <typename T, bool HI = false>
__device__ __forceinline__ uint32_t nib_pair(uint32_t w, int i) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return and_or<0x000F000Fu>(w >> (4 * i), HI ? 0x45004500u : 0x43004300u);
  } else {
    return and_or<0x00F000F0u>(i == 0 ? w << 4 : w >> (4 * i - 4), HI ? 0x4C004C00u : 0x3C003C00u);
  }
}
template <typename T>
inline constexpr float kPairOff = std::is_same_v<T, __nv_bfloat16> ? 128.0f : 64.0f;
template <typename T>
inline constexpr float kPairScale = std::is_same_v<T, __nv_bfloat16> ? 1.0f : 1.0f / 64.0f;
/// 2-bit codes (i, i + 8) of a word (16 codes) as a T pair with one LOP3 (and
/// a shift), exact: the code at the top two mantissa bits of 1.0 (bits 5-6
/// in bfloat16, 8-9 in float16), 1 + q / 4 = (4 + q) / 4, so the fold's
/// offset stays small against the codes.
template <typename T>
__device__ __forceinline__ uint32_t crumb_pair(uint32_t w, int i) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return and_or<0x00600060u>(i <= 2 ? w << (5 - 2 * i) : w >> (2 * i - 5), 0x3F803F80u);
  } else {
    return and_or<0x03000300u>(i <= 4 ? w << (8 - 2 * i) : w >> (2 * i - 8), 0x3C003C00u);
  }
}
/// BITS-bit affine codes in pairs are code_scale * (code_off + q): nib_pair's
/// kPairScale * (kPairOff + q) at 4 bits, a low and a high nibble pair
/// summing to kPairScale * (17 kPairOff + q) at 8, crumb_pair's (4 + q) / 4 at 2.
template <typename T, int BITS>
inline constexpr float code_off = BITS == 2 ? 4.0f : BITS == 8 ? 17.0f * kPairOff<T> : kPairOff<T>;
template <typename T, int BITS>
inline constexpr float code_scale = BITS == 2 ? 0.25f : kPairScale<T>;

/// prmt.b32 in its default mode: byte n of the result is byte (c >> 4n) & 7
/// of {b, a} (a = bytes 0-3), or, when bit 3 of that selector nibble is set,
/// the sign (bit 7) of that byte replicated over all 8 bits. (Inline PTX:
/// __byte_perm documents only the 3-bit byte selector, and fp4_pairs needs
/// the sign-replicate mode.)
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  return r;
}

/// The eight FP4 E2M1 codes of a word (nibble i = code i) as exact T values,
/// in natural pairs: out[i] = (code 2i, code 2i + 1) (x then needs no
/// permutation). Byte-table lookups, no offset to take out:
///   m = w & 0x77777777: the magnitude indices {0, .5, 1, 1.5, 2, 3, 4, 6};
///   one PRMT per 4 codes looks up the high byte of each magnitude's T bits
///   (bfloat16 also its low byte: the exponent's last bit and the mantissa);
///   one PRMT in sign-replicate mode spreads the 4 sign bits to byte masks
///   (odd codes' signs are the msbs of w's bytes, even codes' of w << 4's),
///   ORed into the high bytes; two PRMTs interleave the bytes into T pairs.
/// 15 instructions per word for bfloat16, 13 for float16 (whose low bytes
/// are all zero).
template <typename T>
__device__ __forceinline__ void fp4_pairs(uint32_t w, uint32_t (&out)[4]) {
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  // High bytes of 0, .5, 1, 1.5 | 2, 3, 4, 6 (bfloat16 0x0000 3F00 3F80 3FC0
  // 4000 4040 4080 40C0; float16 0x0000 3800 3C00 3E00 4000 4200 4400 4600).
  constexpr uint32_t kH0 = kBf16 ? 0x3F3F3F00u : 0x3E3C3800u, kH1 = kBf16 ? 0x40404040u : 0x46444240u;
  constexpr uint32_t kL0 = 0xC0800000u, kL1 = 0xC0804000u;  // bfloat16's low bytes
  const uint32_t m = w & 0x77777777u;
  const uint32_t mh = m >> 16;
  const uint32_t w4 = w << 4;
  // Codes 0-3 / 4-7: high bytes with their signs.
  const uint32_t h0 = prmt(kH0, kH1, m) | (prmt(w4, w, 0xD9C8u) & 0x80808080u);
  const uint32_t h1 = prmt(kH0, kH1, mh) | (prmt(w4, w, 0xFBEAu) & 0x80808080u);
  if constexpr (kBf16) {
    const uint32_t l0 = prmt(kL0, kL1, m), l1 = prmt(kL0, kL1, mh);
    out[0] = prmt(l0, h0, 0x5140u);
    out[1] = prmt(l0, h0, 0x7362u);
    out[2] = prmt(l1, h1, 0x5140u);
    out[3] = prmt(l1, h1, 0x7362u);
  } else {
    out[0] = prmt(h0, 0u, 0x1404u);
    out[1] = prmt(h0, 0u, 0x3424u);
    out[2] = prmt(h1, 0u, 0x1404u);
    out[3] = prmt(h1, 0u, 0x3424u);
  }
}

/// The four FP8 E4M3 codes of a word (byte i = code i) as exact T values in
/// natural pairs: out[0] = (code 0, code 1), out[1] = (code 2, code 3). The
/// hardware converts a byte pair to a float16 pair (sm_89+; cuda_fp8.h
/// decodes in software below that), exact: every E4M3 value is a normal
/// float16; bfloat16 takes them through float32 (exact: 4 significant bits).
template <typename T>
__device__ __forceinline__ void e4m3_pairs(uint32_t w, uint32_t (&out)[2]) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w >> (16 * i)), __NV_E4M3);
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      const __half2 hh = *reinterpret_cast<const __half2*>(&h);
      const __nv_bfloat162 b = __floats2bfloat162_rn(__low2float(hh), __high2float(hh));
      out[i] = *reinterpret_cast<const uint32_t*>(&b);
    } else {
      out[i] = static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
    }
  }
}

/// E8M0 scale byte as float32: 2^(s - 127) (0 -> 2^-127, a float32 denormal;
/// 255 -> +Inf), as fmt::e8m0_to_float.
__device__ __forceinline__ float e8m0_f(uint32_t s) {
  return s ? __uint_as_float(s << 23) : __uint_as_float(0x00400000u);
}

/// Byte alignment load_pack needs.
__host__ __device__ constexpr int pack_align(int bits) { return bits % 4 == 0 ? 16 : (bits % 2 == 0 ? 8 : 4); }

/// One out element of a 4-bit affine matmul over all of K, x * (s * q + b)
/// in float32 group by group (the tensor-core kernels take it for outputs
/// whose fast sum is not finite: qmm_w4, qmm_wg).
template <typename T, int GS>
__device__ __noinline__ float w4_exact(const T* xm, const uint32_t* wr, const T* srow, const T* brow, int K) {
  float e = 0.0f;
  for (int grp = 0; grp < K / GS; ++grp) {
    const float s = to_f<T>(srow[grp]), b = to_f<T>(brow[grp]);
    float ge = 0.0f;
    for (int k = 0; k < GS; ++k) {
      const int kk = grp * GS + k;
      const float q = static_cast<float>((wr[kk / 8] >> (4 * (kk % 8))) & 15u);
      ge = fmaf(to_f<T>(xm[kk]), fmaf(s, q, b), ge);
    }
    e += ge;
  }
  return e;
}

}  // namespace mmkit::cuda
