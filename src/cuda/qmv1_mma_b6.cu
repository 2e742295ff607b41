// qmv1_mma's 6-bit affine launches (the kernel: qmv1_mma.cuh), apart from
// the others so they build in parallel. (M <= gs / 32.)
#include "cuda/qmv1_mma.cuh"

namespace mmkit::cuda::qmv1 {

template <typename T>
void launch_b6(const detail::QmmDesc& d, const Qmv1Params& p, int tl, const OpScope& scope) {
  launch_rows_gs32<T, 6>(d, p, tl, scope);
}

template void launch_b6<__half>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);
template void launch_b6<__nv_bfloat16>(const detail::QmmDesc&, const Qmv1Params&, int, const OpScope&);

}  // namespace mmkit::cuda::qmv1
