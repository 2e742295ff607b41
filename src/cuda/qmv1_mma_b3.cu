// qmv1_mma's 3-bit affine launches (the kernel: qmv1_mma.cuh), apart from
// the others so they build in parallel. (M <= gs / 64: group sizes 64 and 128.)
#include "cuda/qmv1_mma.cuh"

namespace mmkit::cuda::qmv1 {

template <typename T>
void launch_b3(const detail::QmmDesc& d, const Qmv1Params& p, int tl, const OpScope& scope) {
  constexpr QKind A = QKind::affine;
  if (d.format.group_size == 64) return launch_rows<T, 64, 1, A, 3>(p, tl, scope);
  if (rows_built(d.M) == 1) launch_rows<T, 128, 1, A, 3>(p, tl, scope);
  else launch_rows<T, 128, 2, A, 3>(p, tl, scope);
}

template void launch_b3<__half>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);
template void launch_b3<__nv_bfloat16>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);

}  // namespace mmkit::cuda::qmv1
