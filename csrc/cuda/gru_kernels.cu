// fastlstm's GRU CUDA kernels. Each __global__ function only computes its 64-bit flat index and calls the
// per-element function of gru_kernels.cuh. Framework-free: CUDA headers and our own only.
#include "gru_kernels.cuh"

namespace fastlstm {
namespace gpu {
namespace {

__device__ __forceinline__ int64_t gru_flat_index() {
  return int64_t(blockIdx.x) * int64_t(blockDim.x) + int64_t(threadIdx.x);
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    gru_forward_pointwise_kernel(int64_t n, int64_t H, scalar_t* __restrict__ gates,
                                 const scalar_t* __restrict__ gh, const scalar_t* __restrict__ b_hn,
                                 const scalar_t* __restrict__ h_prev, scalar_t* __restrict__ hn_out,
                                 scalar_t* __restrict__ h_out) {
  const int64_t idx = gru_flat_index();
  if (idx < n) gru_forward_pointwise_element<scalar_t, VEC>(idx, H, gates, gh, b_hn, h_prev, hn_out, h_out);
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    gru_backward_pointwise_kernel(int64_t n, int64_t H, const scalar_t* __restrict__ gates,
                                  const scalar_t* __restrict__ hn, const scalar_t* __restrict__ h_prev,
                                  const scalar_t* __restrict__ dh_next, const scalar_t* __restrict__ gout,
                                  scalar_t* __restrict__ dgx, scalar_t* __restrict__ dgh,
                                  scalar_t* __restrict__ dh_prev) {
  const int64_t idx = gru_flat_index();
  if (idx < n) {
    gru_backward_pointwise_element<scalar_t, VEC>(idx, H, gates, hn, h_prev, dh_next, gout, dgx, dgh, dh_prev);
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t launch_gru_forward_pointwise(scalar_t* gates, const scalar_t* gh, const scalar_t* b_hn,
                                         const scalar_t* h_prev, scalar_t* hn_out, scalar_t* h_out, int64_t B,
                                         int64_t H, cudaStream_t stream) {
  if (B <= 0 || H <= 0) return cudaSuccess;
  const PointwisePlan p = plan_pointwise<scalar_t>(B, H, max_vec<scalar_t>(), kMinBlocks,
                                                   {gates, gh, b_hn, h_prev, hn_out, h_out}, {});
  if (p.blocks > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;  // gridDim.x limit
  dispatch_vec<scalar_t>(p.vec, [&](auto vec) {
    gru_forward_pointwise_kernel<scalar_t, decltype(vec)::value>
        <<<unsigned(p.blocks), kThreads, 0, stream>>>(p.n, H, gates, gh, b_hn, h_prev, hn_out, h_out);
  });
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_gru_backward_pointwise(const scalar_t* gates, const scalar_t* hn, const scalar_t* h_prev,
                                          const scalar_t* dh_next, const scalar_t* gout, scalar_t* dgx,
                                          scalar_t* dgh, scalar_t* dh_prev, int64_t B, int64_t H,
                                          cudaStream_t stream) {
  if (B <= 0 || H <= 0) return cudaSuccess;
  const PointwisePlan p = plan_pointwise<scalar_t>(
      B, H, max_vec<scalar_t>(), kMinBlocks, {gates, hn, h_prev, dh_next, gout, dgx, dgh, dh_prev}, {});
  if (p.blocks > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;  // gridDim.x limit
  dispatch_vec<scalar_t>(p.vec, [&](auto vec) {
    gru_backward_pointwise_kernel<scalar_t, decltype(vec)::value><<<unsigned(p.blocks), kThreads, 0, stream>>>(
        p.n, H, gates, hn, h_prev, dh_next, gout, dgx, dgh, dh_prev);
  });
  return cudaGetLastError();
}

#define FASTLSTM_INSTANTIATE_GRU_LAUNCHERS(T)                                                                 \
  template cudaError_t launch_gru_forward_pointwise<T>(T*, const T*, const T*, const T*, T*, T*, int64_t,    \
                                                       int64_t, cudaStream_t);                               \
  template cudaError_t launch_gru_backward_pointwise<T>(const T*, const T*, const T*, const T*, const T*, T*, \
                                                        T*, T*, int64_t, int64_t, cudaStream_t);
FASTLSTM_INSTANTIATE_GRU_LAUNCHERS(float)
FASTLSTM_INSTANTIATE_GRU_LAUNCHERS(double)
FASTLSTM_INSTANTIATE_GRU_LAUNCHERS(__half)
FASTLSTM_INSTANTIATE_GRU_LAUNCHERS(__nv_bfloat16)
#undef FASTLSTM_INSTANTIATE_GRU_LAUNCHERS

}  // namespace gpu
}  // namespace fastlstm
