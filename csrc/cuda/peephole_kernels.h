// Launch functions of the peephole-LSTM CUDA kernels (issue 6): framework-free, like lstm_kernels.h, whose
// conventions they share (storage types float, double, __half, __nv_bfloat16; acc_t<scalar_t> for the cell
// state and arithmetic; enqueued on `stream`, no host synchronisation, cudaGetLastError() of the launch;
// dense row-major buffers; 64-bit indexing). One thread per VEC hidden units (b, j) of a [B, H] step; the
// cell math is csrc/lstm_math.h's peephole section. Which pass runs when is csrc/peephole_layer.h's.
//
// Shapes: gates/dgates [B, 4H] scalar_t (gate order i, f, g, o); c, c_prev, c_out, dc_next, dc, dc_out,
// dc_prev [B, H] acc_t; h_out, dh [B, H] scalar_t; p_i, p_f, p_o [H] acc_t (diagonal peephole weights).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "lstm_kernels.h"

namespace fastlstm {
namespace gpu {

// Diagonal mode, forward, one fused pass: gates in (pre-activations without the peephole terms), activated
// i, f, g, o out; c_out = f * c_prev + i * g with i, f seeing p . c_prev and o seeing p_o . c_out.
template <typename scalar_t>
cudaError_t launch_peephole_forward_diag(scalar_t* gates, const acc_t<scalar_t>* c_prev, const acc_t<scalar_t>* p_i,
                                         const acc_t<scalar_t>* p_f, const acc_t<scalar_t>* p_o,
                                         acc_t<scalar_t>* c_out, scalar_t* h_out, int64_t B, int64_t H,
                                         cudaStream_t stream);

// Full mode, forward, first half: i, f (peephole GEMM already added), g activated in place, c_out written;
// the o block of gates is not touched.
template <typename scalar_t>
cudaError_t launch_peephole_forward_c(scalar_t* gates, const acc_t<scalar_t>* c_prev, acc_t<scalar_t>* c_out,
                                      int64_t B, int64_t H, cudaStream_t stream);

// Full mode, forward, second half: o (peephole GEMM on c already added) activated in place, h_out written;
// only the o block of gates is touched.
template <typename scalar_t>
cudaError_t launch_peephole_forward_h(scalar_t* gates, const acc_t<scalar_t>* c, scalar_t* h_out, int64_t B,
                                      int64_t H, cudaStream_t stream);

// Diagonal mode, backward, one fused pass: dgates (all four blocks) and dc_prev, peephole paths included.
template <typename scalar_t>
cudaError_t launch_peephole_backward_diag(const scalar_t* gates, const acc_t<scalar_t>* c,
                                          const acc_t<scalar_t>* c_prev, const acc_t<scalar_t>* p_i,
                                          const acc_t<scalar_t>* p_f, const acc_t<scalar_t>* p_o, const scalar_t* dh,
                                          const acc_t<scalar_t>* dc_next, scalar_t* dgates,
                                          acc_t<scalar_t>* dc_prev, int64_t B, int64_t H, cudaStream_t stream);

// Full mode, backward, first pass: the o block of dgates, and dc_out = dc_next + the gradient through h
// (the o peephole path is a GEMM the driver adds afterwards).
template <typename scalar_t>
cudaError_t launch_peephole_backward_h(const scalar_t* gates, const acc_t<scalar_t>* c, const scalar_t* dh,
                                       const acc_t<scalar_t>* dc_next, scalar_t* dgates, acc_t<scalar_t>* dc_out,
                                       int64_t B, int64_t H, cudaStream_t stream);

// Full mode, backward, second pass: from the complete dc, the i, f, g blocks of dgates and dc_prev through
// the cell update (the i, f peephole paths are a GEMM the driver adds afterwards).
template <typename scalar_t>
cudaError_t launch_peephole_backward_c(const scalar_t* gates, const acc_t<scalar_t>* c_prev,
                                       const acc_t<scalar_t>* dc, scalar_t* dgates, acc_t<scalar_t>* dc_prev,
                                       int64_t B, int64_t H, cudaStream_t stream);

// Instantiated in peephole_kernels.cu for exactly the storage types of lstm_kernels.h.
#define FASTLSTM_DECLARE_PEEPHOLE_LAUNCHERS(T)                                                                 \
  extern template cudaError_t launch_peephole_forward_diag<T>(T*, const acc_t<T>*, const acc_t<T>*,           \
                                                              const acc_t<T>*, const acc_t<T>*, acc_t<T>*, T*, \
                                                              int64_t, int64_t, cudaStream_t);                 \
  extern template cudaError_t launch_peephole_forward_c<T>(T*, const acc_t<T>*, acc_t<T>*, int64_t, int64_t,  \
                                                           cudaStream_t);                                      \
  extern template cudaError_t launch_peephole_forward_h<T>(T*, const acc_t<T>*, T*, int64_t, int64_t,         \
                                                           cudaStream_t);                                      \
  extern template cudaError_t launch_peephole_backward_diag<T>(                                                \
      const T*, const acc_t<T>*, const acc_t<T>*, const acc_t<T>*, const acc_t<T>*, const acc_t<T>*, const T*, \
      const acc_t<T>*, T*, acc_t<T>*, int64_t, int64_t, cudaStream_t);                                         \
  extern template cudaError_t launch_peephole_backward_h<T>(const T*, const acc_t<T>*, const T*,              \
                                                            const acc_t<T>*, T*, acc_t<T>*, int64_t, int64_t, \
                                                            cudaStream_t);                                     \
  extern template cudaError_t launch_peephole_backward_c<T>(const T*, const acc_t<T>*, const acc_t<T>*, T*,   \
                                                            acc_t<T>*, int64_t, int64_t, cudaStream_t);
FASTLSTM_DECLARE_PEEPHOLE_LAUNCHERS(float)
FASTLSTM_DECLARE_PEEPHOLE_LAUNCHERS(double)
FASTLSTM_DECLARE_PEEPHOLE_LAUNCHERS(__half)
FASTLSTM_DECLARE_PEEPHOLE_LAUNCHERS(__nv_bfloat16)
#undef FASTLSTM_DECLARE_PEEPHOLE_LAUNCHERS

}  // namespace gpu
}  // namespace fastlstm
