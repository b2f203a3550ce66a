// The gate math of every cell, written once and shared by the CPU kernels (C++, SIMD lanes and scalar
// tails), the CUDA kernels (nvcc) and the CPU harness that runs the CUDA kernels' code on the host. The
// functions are templates over the arithmetic type T (a scalar, an at::vec::Vectorized register or a
// math::Lanes pack of registers) and an activation set Act, so one statement of a cell serves all of them.
//
// No torch header here: nvcc compiles this in the framework-free .cu files.
//
// Conventions (nn.LSTM's): gate order i, f, g, o; pre-activations x* = W_ih x + b_ih + W_hh h + b_hh.
//   i = sigmoid(xi), f = sigmoid(xf), g = tanh(xg), o = sigmoid(xo)
//   c = f * c_prev + i * g,  h = o * tanh(c)
#pragma once

#include <cmath>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTLSTM_HOST_DEVICE __host__ __device__
#else
#define FASTLSTM_HOST_DEVICE
#endif

// The instruction set of the cell functions below (the templates over an activation set Act): the CPU's
// per-ISA kernel files define it before including this header, so those templates, instantiated there only
// with that file's own Act and register types, are compiled for its ISA and the SIMD activations inline
// into them (compiled for the baseline, each register op was an out-of-line call). The plain inline
// functions keep the baseline: the linker keeps one copy of them for every file.
#ifndef FASTLSTM_ISA_FN
#define FASTLSTM_ISA_FN
#endif

namespace fastlstm {
namespace math {

// Overloads rather than std:: templates so that the same call resolves on host and device.
FASTLSTM_HOST_DEVICE inline float exp_(float x) { return expf(x); }
FASTLSTM_HOST_DEVICE inline double exp_(double x) { return exp(x); }
FASTLSTM_HOST_DEVICE inline float tanh_(float x) { return tanhf(x); }
FASTLSTM_HOST_DEVICE inline double tanh_(double x) { return tanh(x); }
FASTLSTM_HOST_DEVICE inline float sqrt_(float x) { return sqrtf(x); }
FASTLSTM_HOST_DEVICE inline double sqrt_(double x) { return sqrt(x); }

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

// The arithmetic type of a storage type: float for the 16-bit types (c10::Half/BFloat16 on the CPU,
// __half/__nv_bfloat16 on the GPU), which store in their dtype and compute and carry cell states in float32.
template <typename S>
using acc_of = std::conditional_t<std::is_same_v<S, double>, double, float>;

// N values of T computed on together: what one CUDA thread holds for a vector of N consecutive units, so
// that the cell functions below run on it as on a scalar. Elementwise operators only.
template <typename T, int N>
struct Lanes {
  T v[N];
  FASTLSTM_HOST_DEVICE Lanes() {}
  // Implicit, so that the cell functions' T(1) and T(0) work as for a scalar.
  FASTLSTM_HOST_DEVICE Lanes(T x) {  // NOLINT(google-explicit-constructor)
    for (int k = 0; k < N; ++k) v[k] = x;
  }
};

#define FASTLSTM_LANES_BINARY(OP)                                                           \
  template <typename T, int N>                                                              \
  FASTLSTM_HOST_DEVICE inline Lanes<T, N> operator OP(const Lanes<T, N>& a, const Lanes<T, N>& b) { \
    Lanes<T, N> r;                                                                          \
    for (int k = 0; k < N; ++k) r.v[k] = a.v[k] OP b.v[k];                                  \
    return r;                                                                               \
  }
FASTLSTM_LANES_BINARY(+)
FASTLSTM_LANES_BINARY(-)
FASTLSTM_LANES_BINARY(*)
FASTLSTM_LANES_BINARY(/)
#undef FASTLSTM_LANES_BINARY

template <typename T, int N>
FASTLSTM_HOST_DEVICE inline Lanes<T, N> operator-(const Lanes<T, N>& a) {
  Lanes<T, N> r;
  for (int k = 0; k < N; ++k) r.v[k] = -a.v[k];
  return r;
}
template <typename T, int N>
FASTLSTM_HOST_DEVICE inline Lanes<T, N> exp_(const Lanes<T, N>& a) {
  Lanes<T, N> r;
  for (int k = 0; k < N; ++k) r.v[k] = exp_(a.v[k]);
  return r;
}
template <typename T, int N>
FASTLSTM_HOST_DEVICE inline Lanes<T, N> tanh_(const Lanes<T, N>& a) {
  Lanes<T, N> r;
  for (int k = 0; k < N; ++k) r.v[k] = tanh_(a.v[k]);
  return r;
}

// One cell, forward. Inputs are the four pre-activations and the previous cell state; outputs are the
// activated gates (saved for backward), the new cell state and the (unprojected) hidden state.
template <typename T, typename Act = ScalarAct>
FASTLSTM_HOST_DEVICE FASTLSTM_ISA_FN inline void cell_forward(T xi, T xf, T xg, T xo, T c_prev, T& i, T& f, T& g, T& o, T& c,
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
FASTLSTM_HOST_DEVICE FASTLSTM_ISA_FN inline void cell_backward(T i, T f, T g, T o, T c, T c_prev, T dh, T dc_next, T& dxi,
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
FASTLSTM_HOST_DEVICE FASTLSTM_ISA_FN inline void cell_forward(T xr, T xz, T xn, T hr, T hz, T hn, T h_prev, T& r, T& z, T& n,
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
FASTLSTM_HOST_DEVICE FASTLSTM_ISA_FN inline void cell_backward(T r, T z, T n, T hn, T h_prev, T dh, T& dxr, T& dxz, T& dxn,
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

// ===================================== Peephole LSTM (issue 6) =====================================
// The input and forget gates see the previous cell state, the output gate sees the new one (Gers,
// Schraudolph & Schmidhuber 2002; ONNX's LSTM, Keras):
//   i = sigmoid(xi + p_i . c_prev), f = sigmoid(xf + p_f . c_prev), g = tanh(xg)
//   c = f * c_prev + i * g,  o = sigmoid(xo + p_o . c),  h = o * tanh(c)
// where `.` is an elementwise product with a vector [H] ("diagonal" peepholes) or a product with a matrix
// [H, H] ("full": c @ W^T). The diagonal form is one fused pass (peephole_cell_forward/backward). The full
// form cannot be: its peephole terms mix the H units, so they are GEMMs, and o needs c_t, which only exists
// after the i/f/g half of the cell has run. A full step is therefore split at that seam into two passes,
// with the GEMMs in between (see csrc/peephole_layer.h):
//   forward:  x_if += c_prev @ [W_ci; W_cf]^T  ->  peephole_forward_c  ->  x_o += c @ W_co^T
//             ->  peephole_forward_h
//   backward: peephole_backward_h  ->  dc += dxo @ W_co  ->  peephole_backward_c
//             ->  dc_prev += [dxi, dxf] @ [W_ci; W_cf]
// The diagonal functions are written as the same two halves with the elementwise peephole terms inlined, so
// both modes share one statement of the cell's math.

namespace fastlstm {
namespace math {

// First half of a peephole cell, forward: i, f (their peephole terms already in xi, xf), g and the new
// cell state.
template <typename T, typename Act = ScalarAct>
FASTLSTM_HOST_DEVICE FASTLSTM_ISA_FN inline void peephole_forward_c(T xi, T xf, T xg, T c_prev, T& i, T& f, T& g, T& c) {
  i = Act::sigmoid(xi);
  f = Act::sigmoid(xf);
  g = Act::tanh(xg);
  c = f * c_prev + i * g;
}

// Second half, forward: the output gate (its peephole term on the NEW cell state already in xo) and h.
template <typename T, typename Act = ScalarAct>
FASTLSTM_HOST_DEVICE FASTLSTM_ISA_FN inline void peephole_forward_h(T xo, T c, T& o, T& h) {
  o = Act::sigmoid(xo);
  h = o * Act::tanh(c);
}

// One diagonal-peephole cell, forward; p_i, p_f, p_o are this unit's peephole weights.
template <typename T, typename Act = ScalarAct>
FASTLSTM_HOST_DEVICE FASTLSTM_ISA_FN inline void peephole_cell_forward(T xi, T xf, T xg, T xo, T c_prev, T p_i, T p_f, T p_o,
                                                       T& i, T& f, T& g, T& o, T& c, T& h) {
  peephole_forward_c<T, Act>(xi + p_i * c_prev, xf + p_f * c_prev, xg, c_prev, i, f, g, c);
  peephole_forward_h<T, Act>(xo + p_o * c, c, o, h);
}

// Second half, backward (it runs first): from dh and the gradient dc_next reaching c from the step after,
// the output gate's pre-activation gradient dxo and the gradient of c through h only. The output gate's
// peephole path (dxo . p_o) still has to be added to dc.
template <typename T, typename Act = ScalarAct>
FASTLSTM_HOST_DEVICE FASTLSTM_ISA_FN inline void peephole_backward_h(T o, T c, T dh, T dc_next, T& dxo, T& dc) {
  const T one(1);
  const T tc = Act::tanh(c);
  dxo = dh * tc * o * (one - o);
  dc = dc_next + dh * o * (one - tc * tc);
}

// First half, backward: from the full gradient dc of the cell state, the pre-activation gradients of i, f,
// g and the gradient of c_prev through the cell update only. The i and f peephole paths
// (dxi . p_i + dxf . p_f) still have to be added to dc_prev.
template <typename T, typename Act = ScalarAct>
FASTLSTM_HOST_DEVICE FASTLSTM_ISA_FN inline void peephole_backward_c(T i, T f, T g, T c_prev, T dc, T& dxi, T& dxf, T& dxg,
                                                     T& dc_prev) {
  const T one(1);
  dxi = dc * g * i * (one - i);
  dxf = dc * c_prev * f * (one - f);
  dxg = dc * i * (one - g * g);
  dc_prev = dc * f;
}

// One diagonal-peephole cell, backward: both halves with the three peephole paths added in between.
// The peephole weights' own gradients are sums over steps and batch of dxi * c_prev, dxf * c_prev and
// dxo * c; the layer driver forms them after the step loop.
template <typename T, typename Act = ScalarAct>
FASTLSTM_HOST_DEVICE FASTLSTM_ISA_FN inline void peephole_cell_backward(T i, T f, T g, T o, T c, T c_prev, T p_i, T p_f, T p_o,
                                                        T dh, T dc_next, T& dxi, T& dxf, T& dxg, T& dxo,
                                                        T& dc_prev) {
  T dc;
  peephole_backward_h<T, Act>(o, c, dh, dc_next, dxo, dc);
  dc = dc + dxo * p_o;
  peephole_backward_c<T, Act>(i, f, g, c_prev, dc, dxi, dxf, dxg, dc_prev);
  dc_prev = dc_prev + dxi * p_i + dxf * p_f;
}

}  // namespace math
}  // namespace fastlstm
