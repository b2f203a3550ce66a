// fastlstm's CUDA kernels: one __global__ template (a block runs a pass on a row or a row slice through
// row_kernel.cuh's executor), instantiated for every pass of every cell and every storage type.
// Framework-free: nvcc compiles this without torch.
#include "row_kernel.cuh"

namespace fastlstm {
namespace gpu {
namespace {

template <class Pass, typename S, int VEC>
__global__ void __launch_bounds__(kRowThreads)
    row_kernel(const typename Pass::template Args<S> a, int64_t H, int64_t slice) {
  __shared__ math::acc_of<S> red[kRowThreads / 32];
  run_block<Pass, S, VEC>(a, H, slice, int64_t(blockIdx.x), int64_t(blockIdx.y), int(blockDim.x), red);
}

}  // namespace

template <class Pass, typename S>
cudaError_t launch(const typename Pass::template Args<S>& a, int64_t rows, int64_t H, cudaStream_t stream) {
  if (rows <= 0 || H <= 0) return cudaSuccess;
  const RowPlan p = plan_rows<Pass, S>(a, rows, H, max_vec<S>(), kMinBlocks);
  // gridDim.x may hold 2^31 - 1 blocks, gridDim.y 65535.
  if (rows > int64_t(0x7fffffff) || p.slices > 65535) return cudaErrorInvalidConfiguration;
  dispatch_vec<S>(p.vec, [&](auto v) {
    row_kernel<Pass, S, decltype(v)::value>
        <<<dim3(unsigned(rows), unsigned(p.slices)), unsigned(p.threads), 0, stream>>>(a, H, p.slice);
  });
  return cudaGetLastError();
}

#define FASTLSTM_INSTANTIATE_LAUNCH(PASS)                                                                        \
  template cudaError_t launch<cells::PASS, float>(const cells::PASS::Args<float>&, int64_t, int64_t,            \
                                                  cudaStream_t);                                                \
  template cudaError_t launch<cells::PASS, double>(const cells::PASS::Args<double>&, int64_t, int64_t,          \
                                                   cudaStream_t);                                               \
  template cudaError_t launch<cells::PASS, __half>(const cells::PASS::Args<__half>&, int64_t, int64_t,          \
                                                   cudaStream_t);                                               \
  template cudaError_t launch<cells::PASS, __nv_bfloat16>(const cells::PASS::Args<__nv_bfloat16>&, int64_t,     \
                                                          int64_t, cudaStream_t);
FASTLSTM_PASSES(FASTLSTM_INSTANTIATE_LAUNCH)
#undef FASTLSTM_INSTANTIATE_LAUNCH

}  // namespace gpu
}  // namespace fastlstm
