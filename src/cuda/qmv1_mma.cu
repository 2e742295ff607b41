// qmv1_mma: the few-row tensor-core GEMV (the kernel and its design:
// qmv1_mma.cuh): its host side, which formats and shapes it takes, its
// tiling choices, and the 4-bit launches (8-, 2-, 3- and 6-bit ones:
// qmv1_mma_b8.cu, _b2.cu, _b3.cu, _b6.cu).
#include "cuda/qmv1_mma.cuh"

namespace mmkit::cuda {
namespace qmv1 {
namespace {

template <typename T>
void launch(const detail::QmmDesc& d, const Qmv1Params& p, int tl, const OpScope& scope) {
  const int mr = rows_built(d.M);
  if (d.format.bits == 8) return launch_b8<T>(d, p, tl, scope);
  if (d.format.bits == 2) return launch_b2<T>(d, p, tl, scope);
  if (d.format.bits == 3) return launch_b3<T>(d, p, tl, scope);
  if (d.format.bits == 6) return launch_b6<T>(d, p, tl, scope);
  if (d.format.mode == fmt::Mode::nvfp4) return launch_rows<T, 16, 1, QKind::e2m1>(p, tl, scope);
  if (d.format.mode == fmt::Mode::mxfp4) {
    if (mr == 1) launch_rows<T, 32, 1, QKind::e2m1>(p, tl, scope);
    else launch_rows<T, 32, 2, QKind::e2m1>(p, tl, scope);
    return;
  }
  switch (d.format.group_size) {
    case 32:
      if (mr == 1) launch_rows<T, 32, 1>(p, tl, scope);
      else launch_rows<T, 32, 2>(p, tl, scope);
      break;
    case 64:
      if (mr == 1) launch_rows<T, 64, 1>(p, tl, scope);
      else if (mr == 2) launch_rows<T, 64, 2>(p, tl, scope);
      else launch_rows<T, 64, 4>(p, tl, scope);
      break;
    default:
      if (mr == 1) launch_rows<T, 128, 1>(p, tl, scope);
      else if (mr == 2) launch_rows<T, 128, 2>(p, tl, scope);
      else if (mr == 4) launch_rows<T, 128, 4>(p, tl, scope);
      else launch_rows<T, 128, 8>(p, tl, scope);
      break;
  }
}

/// Blocks of a launch with 2^ks_log2 warps per K split and tl tiles per warp.
int64_t grid_blocks(const detail::QmmDesc& d, int ks_log2, int tl) {
  return ceil_div(d.N, int64_t{kRows} * tl * (kWarps >> ks_log2)) * std::min<int64_t>(d.batch, 65535);
}

/// 16-row tiles per warp: 2 (M <= 4) when the grid still gives every SM at
/// least 1.5 blocks (then 2 blocks of 16 warps fit per SM), else 1. (Measured
/// on an H200: 1 block per SM or fewer, e.g. MoE decode at 128 - 192 blocks,
/// is faster with one tile per warp; docs/kernels/cuda.md.)
/// MMKIT_QMV1_TILES=1|2 forces it (tests and tuning; docs/kernels/cuda.md).
int tiles_per_warp(const detail::QmmDesc& d, int ks_log2, int sm_count) {
  const bool u3 = chunk_units(d.format.bits) == 3;  // (3- and 6-bit codes: two tiles only for one row)
  if (rows_built(d.M) > (u3 ? 1 : 4)) return 1;
  if (const char* e = std::getenv("MMKIT_QMV1_TILES")) return std::atoi(e) == 2 ? 2 : 1;
  if (u3) return 1;
  return 2 * grid_blocks(d, ks_log2, 2) >= 3 * int64_t{sm_count} ? 2 : 1;
}

/// Fewer warps per K split on large one-row two-tile grids (and one-tile ones
/// of 3- and 6-bit codes, tl = 1). Every warp pays a fixed
/// setup (indices, addresses, staging its part of x, the ring's first fill,
/// the reduction), about what streaming 2.3 KB of weights costs its SM
/// (fitted to same-session H200 runs, docs/kernels/cuda.md); halving the
/// split doubles each warp's weights and halves the warps. The busiest SM's
/// load, ceil(blocks / SMs) x (bytes + 2.3 KB x warps) of a block, decides,
/// among grids that still give at least 0.8 blocks per SM (so most SMs
/// stream 8 warps x 8 KB in flight). Measured on 8192 x 8192 (M = 1,
/// 4-bit g64, H200): a split of 4 instead of 8, 15.4 against 16.4 us; MoE
/// decode with 16 - 64 tokens 15 - 25% faster. (With 2 or 4 rows it was
/// slower, 21.3 / 28.5 against 20.5 / 25.5 us, so it applies to one row.)
/// On 14336 x 4096 (H100) a split of 2 (112 blocks, 0.85 per SM) took
/// 18.3 - 18.4 us against 19.4 - 19.7 us at 4 (224 blocks): hence 0.8, not 0.9.
int narrow_split(const detail::QmmDesc& d, int ks_log2, int sm_count, int tl) {
  const double scale_bytes = d.format.mode == fmt::Mode::affine ? 4.0 : 1.0;  // per group: scale (+ bias)
  const double row_bytes = static_cast<double>(d.K) * (d.format.bits / 8.0 + scale_bytes / d.format.group_size);
  auto load = [&](int k) {
    const int64_t blocks = grid_blocks(d, k, tl);
    const double block_rows = std::min<double>(static_cast<double>(d.N), kRows * double(tl) * (kWarps >> k));
    return static_cast<double>(ceil_div(blocks, int64_t{sm_count})) * (block_rows * row_bytes + 2300.0 * kWarps);
  };
  int best = ks_log2;
  for (int k = ks_log2 - 1; k >= 0; --k) {
    if (5 * grid_blocks(d, k, tl) < 4 * int64_t{sm_count}) break;
    if (load(k) < load(best)) best = k;
  }
  return best;
}

}  // namespace
}  // namespace qmv1

using namespace qmv1;

bool qmv1_mma_supports(const detail::QmmDesc& d) {
  const fmt::Mode m = d.format.mode;
  const bool four = d.format.bits == 4 && (m == fmt::Mode::affine || m == fmt::Mode::mxfp4 || m == fmt::Mode::nvfp4);
  const bool eight = d.format.bits == 8 && (m == fmt::Mode::affine || m == fmt::Mode::mxfp8);
  // (2-bit: a lane's slice is 64 codes, so K % 64 == 0 keeps every slice inside K.)
  const bool two = d.format.bits == 2 && m == fmt::Mode::affine && d.K % 64 == 0;
  // (3- and 6-bit: a lane's slice is 128 or 64 codes, 4 packs of 3 words.)
  const bool three = d.format.bits == 3 && m == fmt::Mode::affine && d.K % 128 == 0;
  const bool six = d.format.bits == 6 && m == fmt::Mode::affine && d.K % 64 == 0;
  if (!d.transpose || !(four || eight || two || three || six)) return false;
  if (d.dtype != Dtype::float16 && d.dtype != Dtype::bfloat16) return false;
  // K a multiple of 32 (and of the group size): a partial last chunk (128 codes at 4 bits, 64 at 8) is fine.
  if (d.K % 32 != 0 || d.K % d.format.group_size != 0 || d.K <= 0 || d.K > kMaxK || d.N >= (int64_t{1} << 31))
    return false;
  return d.M >= 1 && d.M <= max_rows(d.format.group_size, d.format.bits) &&
         device_info(current_device()).cc_major >= 8;
}

bool qmv1_mma_run(const detail::QmmDesc& d, detail::QmmArgs& a, const OpScope& scope) {
  const bool affine = d.format.mode == fmt::Mode::affine;
  if (!aligned(a.x.raw_data(), 16) || !aligned(a.w.raw_data(), 16) || !aligned(a.scales.raw_data(), affine ? 4 : 2) ||
      (affine && !aligned(a.biases.raw_data(), 4)))
    return false;
  Qmv1Params p{};
  copy_common_params(p, qmm_kernel_params(d, a, scope));
  if (d.batch == 1 && !std::strcmp(d.op, "quantized_matmul")) p.lhs = p.rhs = nullptr;  // no indices to read
  // Split K over as many warps as leave each at least one super-chunk (8 / MR groups).
  const int mr = rows_built(d.M);
  const int64_t cc = chunk_codes(d.format.bits);
  const int64_t supers = ceil_div(ceil_div(d.K, cc), (8 / mr) * d.format.group_size / cc);
  p.ks_log2 = 3;
  while (p.ks_log2 > 0 && supers < (int64_t{1} << p.ks_log2)) --p.ks_log2;
  const char* ks_env = std::getenv("MMKIT_QMV1_KS_LOG2");
  if (ks_env)  // tuning knob (docs/kernels/cuda.md): at most the longest split, and no narrowing
    p.ks_log2 = std::min(p.ks_log2, std::max(0, std::atoi(ks_env)));
  const DeviceInfo& dev = device_info(scope.device());
  int tl = tiles_per_warp(d, p.ks_log2, dev.sm_count);
  const bool xs = mr * d.K <= max_staged_k();
  const int bits = d.format.bits;
  if (tl == 2 && smem_bytes(d.K, d.format.group_size, mr, xs, ring_depth(bits), kWarps, 2, bits) > dev.smem_optin)
    tl = 1;
  // (3- and 6-bit codes, one tile per warp: the same model, run 110: 8192 x
  // 8192 at M = 1 on the H100, 3-bit g64 17.8 us with a split of 2 against
  // 24.4 at 8, 6-bit g64 26.9 against 29.4.)
  if ((tl == 2 || chunk_units(bits) == 3) && mr == 1 && !ks_env) {
    const int ks_full = p.ks_log2;
    p.ks_log2 = narrow_split(d, ks_full, dev.sm_count, tl);
    // Two tiles per warp run up to 2 blocks per SM (with registers for 1 when
    // the grid has at most one block per SM). A narrowed two-tile grid of
    // more than 2 blocks per SM ends in a partial wave; where one tile per
    // warp (up to 4 blocks per SM) with its own narrowed split fits in one
    // wave instead, that is faster: MoE decode of short experts, run
    // 115 (H200), gpt-oss-120b mxfp4 T = 1 gate+up / down 23.9 / 15.9 against
    // 26.1 / 18.3 us, Qwen3-30B-A3B T = 4 gate+up 4-bit 20.5 against 23.7 us,
    // mxfp8 T = 1 13.1 against 15.6 us (docs/kernels/cuda.md, session 15).
    if (tl == 2 && !std::getenv("MMKIT_QMV1_TILES") && grid_blocks(d, p.ks_log2, 2) > 2 * int64_t{dev.sm_count}) {
      const int k1 = narrow_split(d, ks_full, dev.sm_count, 1);
      if (grid_blocks(d, k1, 1) <= 4 * int64_t{dev.sm_count}) {
        tl = 1;
        p.ks_log2 = k1;
      }
    }
  }
  if (smem_bytes(d.K, d.format.group_size, mr, xs, ring_depth(bits), kWarps, tl, bits) > dev.smem_optin) return false;
  if (d.dtype == Dtype::float16) launch<__half>(d, p, tl, scope);
  else launch<__nv_bfloat16>(d, p, tl, scope);
  scope.check_launch("qmv1_mma");
  return true;
}

}  // namespace mmkit::cuda
