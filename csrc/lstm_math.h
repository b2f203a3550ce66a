// Gate math for the LSTM cell, written once and shared by the CPU kernels (C++), the CUDA kernels (nvcc)
// and the CPU harness that runs the CUDA kernels' per-element code on the host.
//
// No torch header here: nvcc compiles this in the framework-free .cu files.
//
// Conventions (nn.LSTM's): gate order i, f, g, o; pre-activations x* = W_ih x + b_ih + W_hh h + b_hh.
//   i = sigmoid(xi), f = sigmoid(xf), g = tanh(xg), o = sigmoid(xo)
//   c = f * c_prev + i * g,  h = o * tanh(c)
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTLSTM_HOST_DEVICE __host__ __device__
#else
#define FASTLSTM_HOST_DEVICE
#endif

namespace fastlstm {
namespace math {

// Overloads rather than std:: templates so that the same call resolves on host and device.
FASTLSTM_HOST_DEVICE inline float exp_(float x) { return expf(x); }
FASTLSTM_HOST_DEVICE inline double exp_(double x) { return exp(x); }
FASTLSTM_HOST_DEVICE inline float tanh_(float x) { return tanhf(x); }
FASTLSTM_HOST_DEVICE inline double tanh_(double x) { return tanh(x); }

// Scalar activations. `Act` is a template parameter of the cell functions below so that the CPU can pass a
// SIMD type (at::vec::Vectorized) with its own activations while the composition stays written once.
struct ScalarAct {
  template <typename T>
  FASTLSTM_HOST_DEVICE static T sigmoid(T x) {
    // 1 / (1 + e^-x): the form ATen uses, so results match nn.LSTM to the last bits where possible.
    return T(1) / (T(1) + exp_(-x));
  }
  template <typename T>
  FASTLSTM_HOST_DEVICE static T tanh(T x) {
    return tanh_(x);
  }
};

// One cell, forward. Inputs are the four pre-activations and the previous cell state; outputs are the
// activated gates (saved for backward), the new cell state and the (unprojected) hidden state.
template <typename T, typename Act = ScalarAct>
FASTLSTM_HOST_DEVICE inline void cell_forward(T xi, T xf, T xg, T xo, T c_prev, T& i, T& f, T& g, T& o, T& c,
                                              T& h) {
  i = Act::sigmoid(xi);
  f = Act::sigmoid(xf);
  g = Act::tanh(xg);
  o = Act::sigmoid(xo);
  c = f * c_prev + i * g;
  h = o * Act::tanh(c);
}

// One cell, backward. Given the saved activated gates, the cell states c (this step) and c_prev, the
// gradient dh reaching the (unprojected) hidden state and dc_next reaching the cell state from the step
// after, produce the gradients of the four pre-activations and of c_prev.
template <typename T, typename Act = ScalarAct>
FASTLSTM_HOST_DEVICE inline void cell_backward(T i, T f, T g, T o, T c, T c_prev, T dh, T dc_next, T& dxi,
                                               T& dxf, T& dxg, T& dxo, T& dc_prev) {
  const T one(1);
  const T tc = Act::tanh(c);
  const T dc = dc_next + dh * o * (one - tc * tc);
  dxo = dh * tc * o * (one - o);
  dxi = dc * g * i * (one - i);
  dxf = dc * c_prev * f * (one - f);
  dxg = dc * i * (one - g * g);
  dc_prev = dc * f;
}

}  // namespace math
}  // namespace fastlstm
