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


// ---------------------------------------------------------------------------------------------------------
// GRU cell (nn.GRU's conventions): gate order r, z, n.
//   r = sigmoid(xr + hr), z = sigmoid(xz + hz), n = tanh(xn + r * hn), h' = (1 - z) * n + z * h
// where x* = W_i* x + b_i* (+ b_hr, b_hz folded in for r, z) and h* = W_h* h (hn including b_hn: it sits
// inside r * (...), so it cannot be folded into the input projection).
namespace gru {

// One cell, forward: the pre-activations and the previous state in; the activated gates (saved for
// backward) and the new state out. h' is written n + z * (h - n), ATen's form, for matching rounding.
template <typename T, typename Act = ScalarAct>
FASTLSTM_HOST_DEVICE inline void cell_forward(T xr, T xz, T xn, T hr, T hz, T hn, T h_prev, T& r, T& z, T& n,
                                              T& h) {
  r = Act::sigmoid(xr + hr);
  z = Act::sigmoid(xz + hz);
  n = Act::tanh(xn + r * hn);
  h = n + z * (h_prev - n);
}

// One cell, backward. Given the saved r, z, n, hn (= W_hn h_prev + b_hn), the previous state and the
// gradient dh reaching h', produce the gradients of the input pre-activations (dxr, dxz, dxn), of the
// recurrent n pre-activation (dhn; those of hr, hz equal dxr, dxz), and the direct part of dh_prev
// (dh * z; the rest is the recurrent GEMM).
template <typename T, typename Act = ScalarAct>
FASTLSTM_HOST_DEVICE inline void cell_backward(T r, T z, T n, T hn, T h_prev, T dh, T& dxr, T& dxz, T& dxn,
                                               T& dhn, T& dh_prev) {
  const T one(1);
  dxn = dh * (one - z) * (one - n * n);
  dxz = dh * (h_prev - n) * z * (one - z);
  dxr = dxn * hn * r * (one - r);
  dhn = dxn * r;
  dh_prev = dh * z;
}

}  // namespace gru
}  // namespace math
}  // namespace fastlstm
