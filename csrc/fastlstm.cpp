// The op registry: every fastlstm op schema is defined here and nowhere else. Device implementations live
// in csrc/cpu/ and csrc/cuda/ (TORCH_LIBRARY_IMPL), fake (meta) implementations in fastlstm/ops.py.
//
// One op runs ONE layer in ONE direction over the whole sequence; Python stacks layers and directions.
// Shapes (T steps, B batch, I input, H hidden, P = proj_size if proj_size > 0 else H):
//   input [T, B, I] (time-major), h0 [B, P], c0 [B, H], w_ih [4H, I], w_hh [4H, P], b_ih/b_hh [4H],
//   w_hr [P, H] (proj_size > 0 only), lengths int64 [B] on the input's device: element b is active at step t
//   iff t < lengths[b] (padded PackedSequence; inactive steps keep the state and output zeros).
//   reverse: run t = T-1 .. 0 instead of 0 .. T-1.
// Saved for backward: gates [T, B, 4H] (activated i, f, g, o, input dtype) and cells [T, B, H] (every c_t,
// float32 for half/bfloat16 inputs, else the input dtype).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An importable, empty module: importing fastlstm._C runs the static registrations below and in the
// device files. No Python bindings are needed; the ops are reached through torch.ops.fastlstm.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastlstm, m) {
  m.def(
      "lstm_forward(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_hr, Tensor? lengths, bool reverse) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)");
  m.def(
      "lstm_inference(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_hr, Tensor? lengths, bool reverse) "
      "-> (Tensor output, Tensor h_n, Tensor c_n)");
  // grad_bias is the gradient of b_ih (== that of b_hh), [4H]; grad_w_hr is [P, H], or [0] without w_hr.
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor h0, "
      "Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor? lengths, Tensor output, Tensor gates, "
      "Tensor cells, bool reverse) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_bias, Tensor grad_w_hr)");

  // Peephole LSTM (issue 6), one layer in one direction; no proj_size (h0 is [B, H], w_hh [4H, H]).
  // w_ci, w_cf, w_co are the peepholes of the input, forget and output gates: all [H] ("diagonal":
  // elementwise with the cell state) or all [H, H] ("full": c @ w^T); the mode follows from their rank.
  //   i = sigmoid(x_i + w_ci . c_{t-1}), f = sigmoid(x_f + w_cf . c_{t-1}), g = tanh(x_g),
  //   c_t = f * c_{t-1} + i * g, o = sigmoid(x_o + w_co . c_t), h_t = o * tanh(c_t)
  // where x = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh in nn.LSTM's gate order i, f, g, o. Other arguments,
  // lengths/reverse semantics and the saved gates/cells are as for the lstm_* ops above.
  m.def(
      "peephole_forward(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor w_ci, Tensor w_cf, Tensor w_co, Tensor? lengths, bool reverse) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)");
  m.def(
      "peephole_inference(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor w_ci, Tensor w_cf, Tensor w_co, Tensor? lengths, bool reverse) "
      "-> (Tensor output, Tensor h_n, Tensor c_n)");
  // grad_bias is the gradient of b_ih (== that of b_hh), [4H]; grad_w_ci/cf/co have the shapes of w_ci/cf/co.
  m.def(
      "peephole_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor h0, "
      "Tensor c0, Tensor w_ih, Tensor w_hh, Tensor w_ci, Tensor w_cf, Tensor w_co, Tensor? lengths, "
      "Tensor output, Tensor gates, Tensor cells, bool reverse) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_bias, Tensor grad_w_ci, Tensor grad_w_cf, Tensor grad_w_co)");
}

// GRU (nn.GRU's semantics, gate order r, z, n). One layer, one direction, like the LSTM ops.
// Shapes: input [T, B, I], h0 [B, H], w_ih [3H, I], w_hh [3H, H], b_ih/b_hh [3H], lengths and reverse as
// above. b_ih and the r, z parts of b_hh are folded into the all-steps input GEMM; b_hn stays inside
// r ⊙ (W_hn h + b_hn), so it is added per step.
// Saved for backward: gates [T, B, 3H] (activated r, z, n) and hn [T, B, H] (W_hn h_{t-1} + b_hn), both
// in the input dtype. The state each step started from is rebuilt from output and h0.
TORCH_LIBRARY_FRAGMENT(fastlstm, m) {
  m.def(
      "gru_forward(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? lengths, bool reverse) -> (Tensor output, Tensor h_n, Tensor gates, Tensor hn)");
  m.def(
      "gru_inference(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? lengths, bool reverse) -> (Tensor output, Tensor h_n)");
  // grad_b_ih [3H] and grad_b_hh [3H] differ in their n part (b_hn sits inside r ⊙ (…)).
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, "
      "Tensor? lengths, Tensor output, Tensor gates, Tensor hn, bool reverse) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
      "Tensor grad_b_hh)");
}
