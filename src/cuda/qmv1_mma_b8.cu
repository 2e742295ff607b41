// qmv1_mma's 8-bit launches (affine, mxfp8) (the kernel: qmv1_mma.cuh), apart from the
// 4-bit ones so the two build in parallel.
#include "cuda/qmv1_mma.cuh"

namespace mmkit::cuda::qmv1 {

template <typename T>
void launch_b8(const detail::QmmDesc& d, const Qmv1Params& p, int tl, const OpScope& scope) {
  const int mr = rows_built(d.M);
  constexpr QKind A = QKind::affine;
  if (d.format.mode == fmt::Mode::mxfp8) {
    if (mr == 1) launch_rows<T, 32, 1, QKind::e4m3, 8>(p, tl, scope);
    else launch_rows<T, 32, 2, QKind::e4m3, 8>(p, tl, scope);
    return;
  }
  switch (d.format.group_size) {
    case 32:
      if (mr == 1) launch_rows<T, 32, 1, A, 8>(p, tl, scope);
      else launch_rows<T, 32, 2, A, 8>(p, tl, scope);
      break;
    case 64:
      if (mr == 1) launch_rows<T, 64, 1, A, 8>(p, tl, scope);
      else if (mr == 2) launch_rows<T, 64, 2, A, 8>(p, tl, scope);
      else launch_rows<T, 64, 4, A, 8>(p, tl, scope);
      break;
    default:
      if (mr == 1) launch_rows<T, 128, 1, A, 8>(p, tl, scope);
      else if (mr == 2) launch_rows<T, 128, 2, A, 8>(p, tl, scope);
      else if (mr == 4) launch_rows<T, 128, 4, A, 8>(p, tl, scope);
      else launch_rows<T, 128, 8, A, 8>(p, tl, scope);
      break;
  }
}

template void launch_b8<__half>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);
template void launch_b8<__nv_bfloat16>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);

}  // namespace mmkit::cuda::qmv1
