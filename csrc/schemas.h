// Every fastlstm op schema, written once: csrc/ops.cpp defines them as torch.ops.fastlstm.*, and the CUDA
// harness (tests/harness/harness.cpp) defines the same ones in its own namespace.
//
// One op runs ONE layer in ONE direction over the whole sequence; Python stacks layers and directions. The
// *_inference_pair ops run the two directions of a bidirectional layer in inference in one op (at once on the
// CPU): the inference op's arguments for each direction (*_r: the reverse one's), input and lengths shared,
// and both directions' results (csrc/cells/pairs.h).
// Shapes (T steps, B batch, I input, H hidden, P = proj_size if proj_size > 0 else H; A = float32 for
// half/bfloat16 inputs, else the input dtype):
//   input [T, B, I] (time-major), h0 [B, P], c0 [B, H], lengths int64 [B] on the input's device: element b is
//   active at step t iff t < lengths[b] (padded PackedSequence; inactive steps keep the state and output
//   zeros; values are not checked, which on CUDA would cost a device-to-host sync: below 0 means never active,
//   above T throughout). reverse: run t = T-1 .. 0.
// LSTM: w_ih [4H, I], w_hh [4H, P], b_ih/b_hh [4H], w_hr [P, H] (proj_size > 0 only). Saved for backward:
//   gates [T, B, 4H] (activated i, f, g, o) and cells [T, B, H] A (every c_t). grad_bias is the gradient of
//   b_ih (== that of b_hh); grad_w_hr is [P, H], or [0] without w_hr.
// Peephole LSTM: no proj_size; w_ci, w_cf, w_co the peepholes of the input, forget and output gates, all [H]
//   ("diagonal": elementwise with the cell state) or all [H, H] ("full": c @ w^T):
//   i = sigmoid(x_i + w_ci . c_{t-1}), f = sigmoid(x_f + w_cf . c_{t-1}), g = tanh(x_g),
//   c_t = f * c_{t-1} + i * g, o = sigmoid(x_o + w_co . c_t), h_t = o * tanh(c_t).
// GRU (nn.GRU's cell, gate order r, z, n): h0 [B, H], w_ih [3H, I], w_hh [3H, H], b_ih/b_hh [3H]. Saved:
//   gates [T, B, 3H] (activated r, z, n) and hn [T, B, H] (W_hn h_{t-1} + b_hn). grad_b_ih and grad_b_hh
//   differ in their n part (b_hn sits inside r * (...)).
// Layer-norm LSTM (csrc/cells/layernorm_lstm.h): no proj_size; ln_ih_w/b, ln_hh_w/b [4H] and ln_c_w/b [H]
//   the three layer norms' weights and biases, eps their epsilon. Saved: gates, cells as for the LSTM (cells
//   before the layer norm), norm_ih and norm_hh [T, B, 4H] (the normalised input and recurrent terms) and
//   stats [T, B, 4] A (rstd of both terms, mean and rstd of c_t). grad_bias is the gradient of b_ih (== b_hh).
#pragma once

#define FASTLSTM_SCHEMAS(X)                                                                                      \
  X("lstm_forward",                                                                                              \
    "(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, "   \
    "Tensor? lengths, bool reverse) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)")     \
  X("lstm_inference",                                                                                            \
    "(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, "   \
    "Tensor? lengths, bool reverse) -> (Tensor output, Tensor h_n, Tensor c_n)")                                 \
  X("lstm_backward",                                                                                             \
    "(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor h0, Tensor c0, Tensor w_ih, "   \
    "Tensor w_hh, Tensor? w_hr, Tensor? lengths, Tensor output, Tensor gates, Tensor cells, bool reverse) "      \
    "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, "                \
    "Tensor grad_bias, Tensor grad_w_hr)")                                                                      \
  X("peephole_forward",                                                                                          \
    "(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor w_ci, "   \
    "Tensor w_cf, Tensor w_co, Tensor? lengths, bool reverse) "                                                  \
    "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)")                                    \
  X("peephole_inference",                                                                                        \
    "(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor w_ci, "   \
    "Tensor w_cf, Tensor w_co, Tensor? lengths, bool reverse) -> (Tensor output, Tensor h_n, Tensor c_n)")      \
  X("peephole_backward",                                                                                         \
    "(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor h0, Tensor c0, Tensor w_ih, "   \
    "Tensor w_hh, Tensor w_ci, Tensor w_cf, Tensor w_co, Tensor? lengths, Tensor output, Tensor gates, "         \
    "Tensor cells, bool reverse) -> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, "      \
    "Tensor grad_w_hh, Tensor grad_bias, Tensor grad_w_ci, Tensor grad_w_cf, Tensor grad_w_co)")                \
  X("gru_forward",                                                                                               \
    "(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? lengths, "          \
    "bool reverse) -> (Tensor output, Tensor h_n, Tensor gates, Tensor hn)")                                     \
  X("gru_inference",                                                                                             \
    "(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? lengths, "          \
    "bool reverse) -> (Tensor output, Tensor h_n)")                                                              \
  X("gru_backward",                                                                                              \
    "(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? lengths, " \
    "Tensor output, Tensor gates, Tensor hn, bool reverse) -> (Tensor grad_input, Tensor grad_h0, "              \
    "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)")                                   \
  X("layernorm_lstm_forward",                                                                                    \
    "(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "                \
    "Tensor ln_ih_w, Tensor ln_ih_b, Tensor ln_hh_w, Tensor ln_hh_b, Tensor ln_c_w, Tensor ln_c_b, "             \
    "Tensor? lengths, bool reverse, float eps) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, "        \
    "Tensor cells, Tensor norm_ih, Tensor norm_hh, Tensor stats)")                                               \
  X("layernorm_lstm_inference",                                                                                  \
    "(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "                \
    "Tensor ln_ih_w, Tensor ln_ih_b, Tensor ln_hh_w, Tensor ln_hh_b, Tensor ln_c_w, Tensor ln_c_b, "             \
    "Tensor? lengths, bool reverse, float eps) -> (Tensor output, Tensor h_n, Tensor c_n)")                      \
  X("layernorm_lstm_backward",                                                                                   \
    "(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor h0, Tensor c0, Tensor w_ih, "   \
    "Tensor w_hh, Tensor ln_ih_w, Tensor ln_hh_w, Tensor ln_c_w, Tensor ln_c_b, Tensor? lengths, "               \
    "Tensor output, Tensor gates, Tensor cells, Tensor norm_ih, Tensor norm_hh, Tensor stats, bool reverse, "    \
    "float eps) -> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, "     \
    "Tensor grad_bias, Tensor grad_ln_ih_w, Tensor grad_ln_ih_b, Tensor grad_ln_hh_w, Tensor grad_ln_hh_b, "     \
    "Tensor grad_ln_c_w, Tensor grad_ln_c_b)")                                                                    \
  X("lstm_inference_pair",                                                                                       \
    "(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, "   \
    "Tensor h0_r, Tensor c0_r, Tensor w_ih_r, Tensor w_hh_r, Tensor? b_ih_r, Tensor? b_hh_r, Tensor? w_hr_r, "    \
    "Tensor? lengths) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor output_r, Tensor h_n_r, Tensor c_n_r)")  \
  X("gru_inference_pair",                                                                                        \
    "(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor h0_r, "              \
    "Tensor w_ih_r, Tensor w_hh_r, Tensor? b_ih_r, Tensor? b_hh_r, Tensor? lengths) "                            \
    "-> (Tensor output, Tensor h_n, Tensor output_r, Tensor h_n_r)")                                             \
  X("peephole_inference_pair",                                                                                   \
    "(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor w_ci, "   \
    "Tensor w_cf, Tensor w_co, Tensor h0_r, Tensor c0_r, Tensor w_ih_r, Tensor w_hh_r, Tensor? b_ih_r, "         \
    "Tensor? b_hh_r, Tensor w_ci_r, Tensor w_cf_r, Tensor w_co_r, Tensor? lengths) "                             \
    "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor output_r, Tensor h_n_r, Tensor c_n_r)")                   \
  X("layernorm_lstm_inference_pair",                                                                             \
    "(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "                \
    "Tensor ln_ih_w, Tensor ln_ih_b, Tensor ln_hh_w, Tensor ln_hh_b, Tensor ln_c_w, Tensor ln_c_b, "             \
    "Tensor h0_r, Tensor c0_r, Tensor w_ih_r, Tensor w_hh_r, Tensor? b_ih_r, Tensor? b_hh_r, "                   \
    "Tensor ln_ih_w_r, Tensor ln_ih_b_r, Tensor ln_hh_w_r, Tensor ln_hh_b_r, Tensor ln_c_w_r, Tensor ln_c_b_r, " \
    "Tensor? lengths, float eps) "                                                                               \
    "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor output_r, Tensor h_n_r, Tensor c_n_r)")

// Defines every schema in library `m` (a torch::Library of kind DEF).
#define FASTLSTM_DEFINE_SCHEMA(NAME, SIG) m.def(NAME SIG);
#define FASTLSTM_DEFINE_SCHEMAS(m) FASTLSTM_SCHEMAS(FASTLSTM_DEFINE_SCHEMA)
