// Launch functions of fastlstm's CUDA kernels: framework-free (CUDA runtime and our own headers only), so
// that the adapter (lstm_cuda.cpp) is the only file that knows about ATen, and nvcc compiles the kernels on
// a machine with neither a GPU nor a CUDA build of torch.
//
// Storage types (scalar_t): float, double, __half, __nv_bfloat16. The cell state and all gate arithmetic
// use acc_t<scalar_t>: float for the two half types, scalar_t otherwise.
//
// Every launcher enqueues its kernel on `stream` and returns cudaGetLastError() of that launch (a launch
// with no work launches nothing and returns cudaSuccess). None of them synchronises the host, so they can
// be captured in a CUDA graph. All buffers are dense, row-major, and must not overlap unless said so.
// Indexing is 64-bit throughout.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastlstm {
namespace gpu {

template <typename scalar_t>
struct AccType {
  using type = scalar_t;
};
template <>
struct AccType<__half> {
  using type = float;
};
template <>
struct AccType<__nv_bfloat16> {
  using type = float;
};
template <typename scalar_t>
using acc_t = typename AccType<scalar_t>::type;

// One forward step's fused pointwise pass, one thread per hidden unit (b, j) computing all four gates:
//   gates  [B, 4H] scalar_t  in: pre-activations (x W_ih^T + b_ih + b_hh + h W_hh^T, gate order i,f,g,o);
//                            out: the activated gates i, f, g, o (what backward needs), in place
//   c_prev [B, H]  acc_t     the previous cell state
//   c_out  [B, H]  acc_t     the new cell state c = f * c_prev + i * g
//   h_out  [B, H]  scalar_t  the new (unprojected) hidden state h = o * tanh(c)
template <typename scalar_t>
cudaError_t launch_forward_pointwise(scalar_t* gates, const acc_t<scalar_t>* c_prev, acc_t<scalar_t>* c_out,
                                     scalar_t* h_out, int64_t B, int64_t H, cudaStream_t stream);

// One backward step's fused pointwise pass, one thread per hidden unit (b, j):
//   gates      [B, 4H] scalar_t  the activated gates i, f, g, o saved by the forward step
//   c          [B, H]  acc_t     this step's cell state
//   c_prev     [B, H]  acc_t     the previous step's cell state (c0 at the first step)
//   dh         [B, H]  scalar_t  gradient reaching this step's (unprojected) hidden state
//   dc_next    [B, H]  acc_t     gradient reaching this step's cell state from the step after
//   dgates     [B, 4H] scalar_t  out: gradients of the four pre-activations
//   dc_prev    [B, H]  acc_t     out: gradient of c_prev
template <typename scalar_t>
cudaError_t launch_backward_pointwise(const scalar_t* gates, const acc_t<scalar_t>* c, const acc_t<scalar_t>* c_prev,
                                      const scalar_t* dh, const acc_t<scalar_t>* dc_next, scalar_t* dgates,
                                      acc_t<scalar_t>* dc_prev, int64_t B, int64_t H, cudaStream_t stream);

// Instantiated in lstm_kernels.cu for exactly these storage types.
#define FASTLSTM_DECLARE_LAUNCHERS(T)                                                                          \
  extern template cudaError_t launch_forward_pointwise<T>(T*, const acc_t<T>*, acc_t<T>*, T*, int64_t, int64_t, \
                                                          cudaStream_t);                                       \
  extern template cudaError_t launch_backward_pointwise<T>(const T*, const acc_t<T>*, const acc_t<T>*, const T*, \
                                                           const acc_t<T>*, T*, acc_t<T>*, int64_t, int64_t,    \
                                                           cudaStream_t);
FASTLSTM_DECLARE_LAUNCHERS(float)
FASTLSTM_DECLARE_LAUNCHERS(double)
FASTLSTM_DECLARE_LAUNCHERS(__half)
FASTLSTM_DECLARE_LAUNCHERS(__nv_bfloat16)
#undef FASTLSTM_DECLARE_LAUNCHERS

}  // namespace gpu
}  // namespace fastlstm
