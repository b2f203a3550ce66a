// fastlstm's CUDA kernels. Each __global__ function only computes its 64-bit flat index and calls the
// per-element function of lstm_kernels.cuh, which the CPU harness runs too. Framework-free: CUDA headers
// and our own only (nvcc compiles this without torch).
#include "lstm_kernels.cuh"

namespace fastlstm {
namespace gpu {
namespace {

__device__ __forceinline__ int64_t flat_index() {
  return int64_t(blockIdx.x) * int64_t(blockDim.x) + int64_t(threadIdx.x);
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    forward_pointwise_kernel(int64_t n, int64_t H, scalar_t* __restrict__ gates,
                             const acc_t<scalar_t>* __restrict__ c_prev, acc_t<scalar_t>* __restrict__ c_out,
                             scalar_t* __restrict__ h_out) {
  const int64_t idx = flat_index();
  if (idx < n) forward_pointwise_element<scalar_t, VEC>(idx, H, gates, c_prev, c_out, h_out);
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    backward_pointwise_kernel(int64_t n, int64_t H, const scalar_t* __restrict__ gates,
                              const acc_t<scalar_t>* __restrict__ c, const acc_t<scalar_t>* __restrict__ c_prev,
                              const scalar_t* __restrict__ dh, const acc_t<scalar_t>* __restrict__ dc_next,
                              scalar_t* __restrict__ dgates, acc_t<scalar_t>* __restrict__ dc_prev) {
  const int64_t idx = flat_index();
  if (idx < n) backward_pointwise_element<scalar_t, VEC>(idx, H, gates, c, c_prev, dh, dc_next, dgates, dc_prev);
}

// gridDim.x is limited to 2^31 - 1 blocks.
inline bool grid_fits(const PointwisePlan& p) { return p.blocks <= int64_t(0x7fffffff); }

}  // namespace

template <typename scalar_t>
cudaError_t launch_forward_pointwise(scalar_t* gates, const acc_t<scalar_t>* c_prev, acc_t<scalar_t>* c_out,
                                     scalar_t* h_out, int64_t B, int64_t H, cudaStream_t stream) {
  if (B <= 0 || H <= 0) return cudaSuccess;
  const PointwisePlan p =
      plan_pointwise<scalar_t>(B, H, max_vec<scalar_t>(), kMinBlocks, {gates, h_out}, {c_prev, c_out});
  if (!grid_fits(p)) return cudaErrorInvalidConfiguration;
  dispatch_vec<scalar_t>(p.vec, [&](auto vec) {
    forward_pointwise_kernel<scalar_t, decltype(vec)::value>
        <<<unsigned(p.blocks), kThreads, 0, stream>>>(p.n, H, gates, c_prev, c_out, h_out);
  });
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_backward_pointwise(const scalar_t* gates, const acc_t<scalar_t>* c, const acc_t<scalar_t>* c_prev,
                                      const scalar_t* dh, const acc_t<scalar_t>* dc_next, scalar_t* dgates,
                                      acc_t<scalar_t>* dc_prev, int64_t B, int64_t H, cudaStream_t stream) {
  if (B <= 0 || H <= 0) return cudaSuccess;
  const PointwisePlan p = plan_pointwise<scalar_t>(B, H, max_vec<scalar_t>(), kMinBlocks, {gates, dh, dgates},
                                                   {c, c_prev, dc_next, dc_prev});
  if (!grid_fits(p)) return cudaErrorInvalidConfiguration;
  dispatch_vec<scalar_t>(p.vec, [&](auto vec) {
    backward_pointwise_kernel<scalar_t, decltype(vec)::value>
        <<<unsigned(p.blocks), kThreads, 0, stream>>>(p.n, H, gates, c, c_prev, dh, dc_next, dgates, dc_prev);
  });
  return cudaGetLastError();
}

#define FASTLSTM_INSTANTIATE_LAUNCHERS(T)                                                                      \
  template cudaError_t launch_forward_pointwise<T>(T*, const acc_t<T>*, acc_t<T>*, T*, int64_t, int64_t,      \
                                                   cudaStream_t);                                             \
  template cudaError_t launch_backward_pointwise<T>(const T*, const acc_t<T>*, const acc_t<T>*, const T*,      \
                                                    const acc_t<T>*, T*, acc_t<T>*, int64_t, int64_t,          \
                                                    cudaStream_t);
FASTLSTM_INSTANTIATE_LAUNCHERS(float)
FASTLSTM_INSTANTIATE_LAUNCHERS(double)
FASTLSTM_INSTANTIATE_LAUNCHERS(__half)
FASTLSTM_INSTANTIATE_LAUNCHERS(__nv_bfloat16)
#undef FASTLSTM_INSTANTIATE_LAUNCHERS

}  // namespace gpu
}  // namespace fastlstm
