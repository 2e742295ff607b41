// qmv1_mma's 6-bit affine launches (the kernel: qmv1_mma.cuh), apart from
// the others so they build in parallel. (M <= gs / 32.)
#include "cuda/qmv1_mma.cuh"

namespace mmkit::cuda::qmv1 {

template <typename T>
void launch_b6(const detail::QmmDesc& d, const Qmv1Params& p, int tl, const OpScope& scope) {
  const int mr = rows_built(d.M);
  constexpr QKind A = QKind::affine;
  switch (d.format.group_size) {
    case 32:
      launch_rows<T, 32, 1, A, 6>(p, tl, scope);
      break;
    case 64:
      if (mr == 1) launch_rows<T, 64, 1, A, 6>(p, tl, scope);
      else launch_rows<T, 64, 2, A, 6>(p, tl, scope);
      break;
    default:
      if (mr == 1) launch_rows<T, 128, 1, A, 6>(p, tl, scope);
      else if (mr == 2) launch_rows<T, 128, 2, A, 6>(p, tl, scope);
      else launch_rows<T, 128, 4, A, 6>(p, tl, scope);
      break;
  }
}

template void launch_b6<__half>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);
template void launch_b6<__nv_bfloat16>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);

}  // namespace mmkit::cuda::qmv1
