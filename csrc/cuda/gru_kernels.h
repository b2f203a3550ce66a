// Launch functions of fastlstm's GRU CUDA kernels: framework-free (CUDA runtime and our own headers only),
// like lstm_kernels.h, whose conventions they follow (storage types float, double, __half, __nv_bfloat16;
// arithmetic in acc_t<scalar_t>; enqueued on `stream`, returning cudaGetLastError() of the launch; no host
// synchronisation; dense row-major buffers that do not overlap; 64-bit indexing).
// Unlike the LSTM there is no acc_t state buffer: the GRU's only state is h, kept in the storage type as
// nn.GRU keeps it.
#pragma once

#include "lstm_kernels.h"

namespace fastlstm {
namespace gpu {

// One forward step's fused pointwise pass (gate order r, z, n), one thread per hidden unit (b, j):
//   gates  [B, 3H] scalar_t  in: x W_ih^T + b_ih (+ b_hr, b_hz); out: the activated r, z, n, in place
//   gh     [B, 3H] scalar_t  h_prev W_hh^T (no bias)
//   b_hn   [H]     scalar_t  the n part of b_hh, or nullptr for none
//   h_prev [B, H]  scalar_t  the previous state
//   hn_out [B, H]  scalar_t  out: W_hn h_prev + b_hn (saved for backward)
//   h_out  [B, H]  scalar_t  out: h' = n + z * (h_prev - n)
template <typename scalar_t>
cudaError_t launch_gru_forward_pointwise(scalar_t* gates, const scalar_t* gh, const scalar_t* b_hn,
                                         const scalar_t* h_prev, scalar_t* hn_out, scalar_t* h_out, int64_t B,
                                         int64_t H, cudaStream_t stream);

// One backward step's fused pointwise pass, one thread per hidden unit (b, j):
//   gates   [B, 3H] scalar_t  the activated r, z, n saved by the forward step
//   hn      [B, H]  scalar_t  W_hn h_prev + b_hn saved by the forward step
//   h_prev  [B, H]  scalar_t  the state this step started from
//   dh_next [B, H]  scalar_t  gradient reaching h' from later steps
//   gout    [B, H]  scalar_t  gradient reaching h' from this step's output (added to dh_next here)
//   dgx     [B, 3H] scalar_t  out: gradients of the input pre-activations (r, z, n)
//   dgh     [B, 3H] scalar_t  out: gradients of the recurrent pre-activations (r, z, W_hn h + b_hn)
//   dh_prev [B, H]  scalar_t  out: dh * z, the part of dh_prev that bypasses the recurrent GEMM
template <typename scalar_t>
cudaError_t launch_gru_backward_pointwise(const scalar_t* gates, const scalar_t* hn, const scalar_t* h_prev,
                                          const scalar_t* dh_next, const scalar_t* gout, scalar_t* dgx,
                                          scalar_t* dgh, scalar_t* dh_prev, int64_t B, int64_t H,
                                          cudaStream_t stream);

// Instantiated in gru_kernels.cu for exactly these storage types.
#define FASTLSTM_DECLARE_GRU_LAUNCHERS(T)                                                                    \
  extern template cudaError_t launch_gru_forward_pointwise<T>(T*, const T*, const T*, const T*, T*, T*,     \
                                                              int64_t, int64_t, cudaStream_t);              \
  extern template cudaError_t launch_gru_backward_pointwise<T>(const T*, const T*, const T*, const T*,      \
                                                               const T*, T*, T*, T*, int64_t, int64_t,      \
                                                               cudaStream_t);
FASTLSTM_DECLARE_GRU_LAUNCHERS(float)
FASTLSTM_DECLARE_GRU_LAUNCHERS(double)
FASTLSTM_DECLARE_GRU_LAUNCHERS(__half)
FASTLSTM_DECLARE_GRU_LAUNCHERS(__nv_bfloat16)
#undef FASTLSTM_DECLARE_GRU_LAUNCHERS

}  // namespace gpu
}  // namespace fastlstm
