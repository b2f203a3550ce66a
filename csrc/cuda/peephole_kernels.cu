// The peephole-LSTM CUDA kernels (issue 6). Each __global__ function only computes its 64-bit flat index and
// calls the per-element function of peephole_kernels.cuh; launch plans are lstm_kernels.cuh's. Framework-
// free: CUDA headers and our own only.
#include "peephole_kernels.cuh"

namespace fastlstm {
namespace gpu {
namespace {

__device__ __forceinline__ int64_t flat_index() {
  return int64_t(blockIdx.x) * int64_t(blockDim.x) + int64_t(threadIdx.x);
}

// gridDim.x is limited to 2^31 - 1 blocks.
inline bool grid_fits(const PointwisePlan& p) { return p.blocks <= int64_t(0x7fffffff); }

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    peephole_forward_diag_kernel(int64_t n, int64_t H, scalar_t* __restrict__ gates,
                                 const acc_t<scalar_t>* __restrict__ c_prev, const acc_t<scalar_t>* __restrict__ p_i,
                                 const acc_t<scalar_t>* __restrict__ p_f, const acc_t<scalar_t>* __restrict__ p_o,
                                 acc_t<scalar_t>* __restrict__ c_out, scalar_t* __restrict__ h_out) {
  const int64_t idx = flat_index();
  if (idx < n) peephole_forward_diag_element<scalar_t, VEC>(idx, H, gates, c_prev, p_i, p_f, p_o, c_out, h_out);
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    peephole_forward_c_kernel(int64_t n, int64_t H, scalar_t* __restrict__ gates,
                              const acc_t<scalar_t>* __restrict__ c_prev, acc_t<scalar_t>* __restrict__ c_out) {
  const int64_t idx = flat_index();
  if (idx < n) peephole_forward_c_element<scalar_t, VEC>(idx, H, gates, c_prev, c_out);
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    peephole_forward_h_kernel(int64_t n, int64_t H, scalar_t* __restrict__ gates,
                              const acc_t<scalar_t>* __restrict__ c, scalar_t* __restrict__ h_out) {
  const int64_t idx = flat_index();
  if (idx < n) peephole_forward_h_element<scalar_t, VEC>(idx, H, gates, c, h_out);
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    peephole_backward_diag_kernel(int64_t n, int64_t H, const scalar_t* __restrict__ gates,
                                  const acc_t<scalar_t>* __restrict__ c, const acc_t<scalar_t>* __restrict__ c_prev,
                                  const acc_t<scalar_t>* __restrict__ p_i, const acc_t<scalar_t>* __restrict__ p_f,
                                  const acc_t<scalar_t>* __restrict__ p_o, const scalar_t* __restrict__ dh,
                                  const acc_t<scalar_t>* __restrict__ dc_next, scalar_t* __restrict__ dgates,
                                  acc_t<scalar_t>* __restrict__ dc_prev) {
  const int64_t idx = flat_index();
  if (idx < n) {
    peephole_backward_diag_element<scalar_t, VEC>(idx, H, gates, c, c_prev, p_i, p_f, p_o, dh, dc_next, dgates,
                                                  dc_prev);
  }
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    peephole_backward_h_kernel(int64_t n, int64_t H, const scalar_t* __restrict__ gates,
                               const acc_t<scalar_t>* __restrict__ c, const scalar_t* __restrict__ dh,
                               const acc_t<scalar_t>* __restrict__ dc_next, scalar_t* __restrict__ dgates,
                               acc_t<scalar_t>* __restrict__ dc_out) {
  const int64_t idx = flat_index();
  if (idx < n) peephole_backward_h_element<scalar_t, VEC>(idx, H, gates, c, dh, dc_next, dgates, dc_out);
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    peephole_backward_c_kernel(int64_t n, int64_t H, const scalar_t* __restrict__ gates,
                               const acc_t<scalar_t>* __restrict__ c_prev, const acc_t<scalar_t>* __restrict__ dc,
                               scalar_t* __restrict__ dgates, acc_t<scalar_t>* __restrict__ dc_prev) {
  const int64_t idx = flat_index();
  if (idx < n) peephole_backward_c_element<scalar_t, VEC>(idx, H, gates, c_prev, dc, dgates, dc_prev);
}

}  // namespace

template <typename scalar_t>
cudaError_t launch_peephole_forward_diag(scalar_t* gates, const acc_t<scalar_t>* c_prev, const acc_t<scalar_t>* p_i,
                                         const acc_t<scalar_t>* p_f, const acc_t<scalar_t>* p_o,
                                         acc_t<scalar_t>* c_out, scalar_t* h_out, int64_t B, int64_t H,
                                         cudaStream_t stream) {
  if (B <= 0 || H <= 0) return cudaSuccess;
  const PointwisePlan p = plan_pointwise<scalar_t>(B, H, max_vec<scalar_t>(), kMinBlocks, {gates, h_out},
                                                   {c_prev, p_i, p_f, p_o, c_out});
  if (!grid_fits(p)) return cudaErrorInvalidConfiguration;
  dispatch_vec<scalar_t>(p.vec, [&](auto vec) {
    peephole_forward_diag_kernel<scalar_t, decltype(vec)::value>
        <<<unsigned(p.blocks), kThreads, 0, stream>>>(p.n, H, gates, c_prev, p_i, p_f, p_o, c_out, h_out);
  });
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_peephole_forward_c(scalar_t* gates, const acc_t<scalar_t>* c_prev, acc_t<scalar_t>* c_out,
                                      int64_t B, int64_t H, cudaStream_t stream) {
  if (B <= 0 || H <= 0) return cudaSuccess;
  const PointwisePlan p = plan_pointwise<scalar_t>(B, H, max_vec<scalar_t>(), kMinBlocks, {gates}, {c_prev, c_out});
  if (!grid_fits(p)) return cudaErrorInvalidConfiguration;
  dispatch_vec<scalar_t>(p.vec, [&](auto vec) {
    peephole_forward_c_kernel<scalar_t, decltype(vec)::value>
        <<<unsigned(p.blocks), kThreads, 0, stream>>>(p.n, H, gates, c_prev, c_out);
  });
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_peephole_forward_h(scalar_t* gates, const acc_t<scalar_t>* c, scalar_t* h_out, int64_t B,
                                      int64_t H, cudaStream_t stream) {
  if (B <= 0 || H <= 0) return cudaSuccess;
  const PointwisePlan p = plan_pointwise<scalar_t>(B, H, max_vec<scalar_t>(), kMinBlocks, {gates, h_out}, {c});
  if (!grid_fits(p)) return cudaErrorInvalidConfiguration;
  dispatch_vec<scalar_t>(p.vec, [&](auto vec) {
    peephole_forward_h_kernel<scalar_t, decltype(vec)::value>
        <<<unsigned(p.blocks), kThreads, 0, stream>>>(p.n, H, gates, c, h_out);
  });
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_peephole_backward_diag(const scalar_t* gates, const acc_t<scalar_t>* c,
                                          const acc_t<scalar_t>* c_prev, const acc_t<scalar_t>* p_i,
                                          const acc_t<scalar_t>* p_f, const acc_t<scalar_t>* p_o, const scalar_t* dh,
                                          const acc_t<scalar_t>* dc_next, scalar_t* dgates,
                                          acc_t<scalar_t>* dc_prev, int64_t B, int64_t H, cudaStream_t stream) {
  if (B <= 0 || H <= 0) return cudaSuccess;
  const PointwisePlan p = plan_pointwise<scalar_t>(B, H, max_vec<scalar_t>(), kMinBlocks, {gates, dh, dgates},
                                                   {c, c_prev, p_i, p_f, p_o, dc_next, dc_prev});
  if (!grid_fits(p)) return cudaErrorInvalidConfiguration;
  dispatch_vec<scalar_t>(p.vec, [&](auto vec) {
    peephole_backward_diag_kernel<scalar_t, decltype(vec)::value><<<unsigned(p.blocks), kThreads, 0, stream>>>(
        p.n, H, gates, c, c_prev, p_i, p_f, p_o, dh, dc_next, dgates, dc_prev);
  });
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_peephole_backward_h(const scalar_t* gates, const acc_t<scalar_t>* c, const scalar_t* dh,
                                       const acc_t<scalar_t>* dc_next, scalar_t* dgates, acc_t<scalar_t>* dc_out,
                                       int64_t B, int64_t H, cudaStream_t stream) {
  if (B <= 0 || H <= 0) return cudaSuccess;
  const PointwisePlan p = plan_pointwise<scalar_t>(B, H, max_vec<scalar_t>(), kMinBlocks, {gates, dh, dgates},
                                                   {c, dc_next, dc_out});
  if (!grid_fits(p)) return cudaErrorInvalidConfiguration;
  dispatch_vec<scalar_t>(p.vec, [&](auto vec) {
    peephole_backward_h_kernel<scalar_t, decltype(vec)::value>
        <<<unsigned(p.blocks), kThreads, 0, stream>>>(p.n, H, gates, c, dh, dc_next, dgates, dc_out);
  });
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_peephole_backward_c(const scalar_t* gates, const acc_t<scalar_t>* c_prev,
                                       const acc_t<scalar_t>* dc, scalar_t* dgates, acc_t<scalar_t>* dc_prev,
                                       int64_t B, int64_t H, cudaStream_t stream) {
  if (B <= 0 || H <= 0) return cudaSuccess;
  const PointwisePlan p = plan_pointwise<scalar_t>(B, H, max_vec<scalar_t>(), kMinBlocks, {gates, dgates},
                                                   {c_prev, dc, dc_prev});
  if (!grid_fits(p)) return cudaErrorInvalidConfiguration;
  dispatch_vec<scalar_t>(p.vec, [&](auto vec) {
    peephole_backward_c_kernel<scalar_t, decltype(vec)::value>
        <<<unsigned(p.blocks), kThreads, 0, stream>>>(p.n, H, gates, c_prev, dc, dgates, dc_prev);
  });
  return cudaGetLastError();
}

#define FASTLSTM_INSTANTIATE_PEEPHOLE_LAUNCHERS(T)                                                              \
  template cudaError_t launch_peephole_forward_diag<T>(T*, const acc_t<T>*, const acc_t<T>*, const acc_t<T>*,   \
                                                       const acc_t<T>*, acc_t<T>*, T*, int64_t, int64_t,        \
                                                       cudaStream_t);                                           \
  template cudaError_t launch_peephole_forward_c<T>(T*, const acc_t<T>*, acc_t<T>*, int64_t, int64_t,           \
                                                    cudaStream_t);                                              \
  template cudaError_t launch_peephole_forward_h<T>(T*, const acc_t<T>*, T*, int64_t, int64_t, cudaStream_t);  \
  template cudaError_t launch_peephole_backward_diag<T>(const T*, const acc_t<T>*, const acc_t<T>*,             \
                                                        const acc_t<T>*, const acc_t<T>*, const acc_t<T>*,      \
                                                        const T*, const acc_t<T>*, T*, acc_t<T>*, int64_t,      \
                                                        int64_t, cudaStream_t);                                 \
  template cudaError_t launch_peephole_backward_h<T>(const T*, const acc_t<T>*, const T*, const acc_t<T>*, T*,  \
                                                     acc_t<T>*, int64_t, int64_t, cudaStream_t);                \
  template cudaError_t launch_peephole_backward_c<T>(const T*, const acc_t<T>*, const acc_t<T>*, T*, acc_t<T>*, \
                                                     int64_t, int64_t, cudaStream_t);
FASTLSTM_INSTANTIATE_PEEPHOLE_LAUNCHERS(float)
FASTLSTM_INSTANTIATE_PEEPHOLE_LAUNCHERS(double)
FASTLSTM_INSTANTIATE_PEEPHOLE_LAUNCHERS(__half)
FASTLSTM_INSTANTIATE_PEEPHOLE_LAUNCHERS(__nv_bfloat16)
#undef FASTLSTM_INSTANTIATE_PEEPHOLE_LAUNCHERS

}  // namespace gpu
}  // namespace fastlstm
