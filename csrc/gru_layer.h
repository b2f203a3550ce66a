// One GRU layer in one direction over a whole sequence, written once against ATen and shared by the CPU and
// CUDA implementations, like csrc/lstm_layer.h (whose helpers it uses: acc_type, defined, active_mask,
// previous_states). A device supplies only its two fused pointwise passes (`Backend`); GEMMs go through
// ATen.
//
// Backend must provide (all tensors contiguous, on the device, B rows, one dtype):
//   gru_forward_pointwise(gates [B,3H]: input pre-activations in (b_ih, b_hr, b_hz folded in), activated
//                           r, z, n out,
//                         gh [B,3H]: W_hh h_prev (no bias), b_hn [H] or undefined, h_prev [B,H],
//                         hn_out [B,H]: W_hn h_prev + b_hn (saved for backward), h_out [B,H])
//   gru_backward_pointwise(gates [B,3H] (activated r, z, n), hn [B,H], h_prev [B,H],
//                          dh_next [B,H] (gradient reaching h' from later steps), gout [B,H] (from this
//                          step's output; the pass adds the two, saving a separate add per step),
//                          dgx_out [B,3H]: gradients of the input pre-activations,
//                          dgh_out [B,3H]: gradients of the recurrent pre-activations (= dgx_out in r, z),
//                          dh_prev_out [B,H]: dh * z, the part of dh_prev that bypasses the GEMM)
// The pointwise passes compute in float32 for half/bfloat16 inputs; the state h is kept in the input dtype,
// as nn.GRU keeps it.
#pragma once

#include "lstm_layer.h"

namespace fastlstm {

// Checks for direct calls of torch.ops.fastlstm.gru_*: the module checks user input with nn.GRU's messages.
inline void check_gru_args(const Tensor& input, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                           const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& lengths) {
  TORCH_CHECK(input.dim() == 3, "fastlstm: input must be [T, B, I], got ", input.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_hh.dim() == 2, "fastlstm: weights must be 2-D");
  const int64_t B = input.size(1), I = input.size(2);
  const int64_t G = w_ih.size(0);
  TORCH_CHECK(G % 3 == 0 && G > 0, "fastlstm: w_ih must be [3H, I], got ", w_ih.sizes());
  const int64_t H = G / 3;
  TORCH_CHECK(w_ih.size(1) == I, "fastlstm: w_ih must be [3H, ", I, "], got ", w_ih.sizes());
  TORCH_CHECK(w_hh.size(0) == G && w_hh.size(1) == H, "fastlstm: w_hh must be [", G, ", ", H, "], got ",
              w_hh.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H, "fastlstm: h0 must be [", B, ", ", H,
              "], got ", h0.sizes());
  std::vector<Tensor> floats = {input, h0, w_ih, w_hh};
  for (const OptTensor& b : {b_ih, b_hh}) {
    if (defined(b)) {
      TORCH_CHECK(b->dim() == 1 && b->size(0) == G, "fastlstm: biases must be [", G, "], got ", b->sizes());
      floats.push_back(*b);
    }
  }
  for (const Tensor& t : floats) {
    TORCH_CHECK(t.scalar_type() == input.scalar_type(), "fastlstm: expected all tensors to be ",
                input.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == input.device(), "fastlstm: expected all tensors on ", input.device(),
                ", got one on ", t.device());
  }
  if (defined(lengths)) {
    TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B, "fastlstm: lengths must be [", B, "]");
    TORCH_CHECK(lengths->scalar_type() == at::kLong, "fastlstm: lengths must be int64");
    TORCH_CHECK(lengths->device() == input.device(), "fastlstm: lengths must be on ", input.device());
  }
}

// The bias of the all-steps input GEMM, [3H]: b_ih plus the r, z parts of b_hh (b_hn cannot be folded), or
// undefined when there is none.
inline Tensor gru_input_bias(const OptTensor& b_ih, const OptTensor& b_hh) {
  if (!defined(b_hh)) return defined(b_ih) ? *b_ih : Tensor();
  const int64_t H = b_hh->size(0) / 3;
  Tensor bias = defined(b_ih) ? b_ih->clone() : at::zeros_like(*b_hh);
  bias.narrow(0, 0, 2 * H).add_(b_hh->narrow(0, 0, 2 * H));
  return bias;
}

// Returns (output [T,B,H], h_n [B,H], gates [T,B,3H], hn [T,B,H]); with training == false, gates and hn are
// undefined (a [B,H] scratch replaces hn).
template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_layer_forward(const Tensor& input, const Tensor& h0,
                                                             const Tensor& w_ih, const Tensor& w_hh,
                                                             const OptTensor& b_ih, const OptTensor& b_hh,
                                                             const OptTensor& lengths, bool reverse,
                                                             bool training) {
  check_gru_args(input, h0, w_ih, w_hh, b_ih, b_hh, lengths);
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t H = w_ih.size(0) / 3;
  const auto opts = input.options();

  // 1. Input projection for all steps in one GEMM; activated in place step by step, so the same buffer ends
  //    up holding the gates backward needs.
  Tensor gates = at::empty({T, B, 3 * H}, opts);
  if (T * B > 0) {
    Tensor x2d = input.reshape({T * B, I});
    Tensor g2d = gates.view({T * B, 3 * H});
    Tensor bias = gru_input_bias(b_ih, b_hh);
    if (bias.defined()) {
      at::addmm_out(g2d, bias, x2d, w_ih.t());
    } else {
      at::mm_out(g2d, x2d, w_ih.t());
    }
  }
  const Tensor b_hn = defined(b_hh) ? b_hh->narrow(0, 2 * H, H).contiguous() : Tensor();

  Tensor output = at::empty({T, B, H}, opts);
  Tensor hn = training ? at::empty({T, B, H}, opts) : at::empty({B, H}, opts);
  Tensor gh = at::empty({B, 3 * H}, opts);
  Tensor mask = defined(lengths) ? active_mask(lengths, T).unsqueeze(-1) : Tensor();  // [T,B,1]
  const Tensor w_hh_t = w_hh.t();

  Tensor h_prev = h0.contiguous();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    // 2. The recurrent GEMM (no bias: b_hn is added inside the fused pass), then one fused pass.
    at::mm_out(gh, h_prev, w_hh_t);
    Tensor out_t = output[t];
    Backend::gru_forward_pointwise(gates[t], gh, b_hn, h_prev, training ? hn[t] : hn, out_t);
    if (mask.defined()) {
      // Inactive elements keep their state and emit zeros, as a packed sequence would.
      const Tensor m = mask[t];
      Tensor h_state = at::where(m, out_t, h_prev);
      out_t.masked_fill_(m.logical_not(), 0);
      h_prev = h_state;
    } else {
      h_prev = out_t;
    }
  }
  // Outputs of a custom op may not alias each other or the inputs: copy the final state out.
  Tensor h_n = h_prev.clone();
  if (!training) return {output, h_n, Tensor(), Tensor()};
  return {output, h_n, gates, hn};
}

// Returns (grad_input [T,B,I], grad_h0 [B,H], grad_w_ih [3H,I], grad_w_hh [3H,H], grad_b_ih [3H],
// grad_b_hh [3H]).
template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_layer_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& h0, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& lengths, const Tensor& output, const Tensor& gates, const Tensor& hn,
    bool reverse) {
  check_gru_args(input, h0, w_ih, w_hh, std::nullopt, std::nullopt, lengths);
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t H = w_ih.size(0) / 3;
  const auto dtype = input.scalar_type();
  const auto acc = acc_type(dtype);
  const auto opts = input.options();
  TORCH_CHECK(grad_output.sizes() == output.sizes() && output.size(0) == T && gates.size(0) == T &&
                  hn.size(0) == T && gates.size(2) == 3 * H && hn.size(2) == H,
              "fastlstm: gru_backward got tensors of inconsistent shapes");

  Tensor gout = grad_output.contiguous();
  Tensor dgx = at::empty({T, B, 3 * H}, opts);
  Tensor dgh = at::empty({T, B, 3 * H}, opts);
  Tensor mask = defined(lengths) ? active_mask(lengths, T).unsqueeze(-1) : Tensor();  // [T,B,1]
  // h_prev enters the cell's math (dz = dh * (h_prev - n)) and grad_w_hh: rebuilt once from output and h0.
  Tensor h_prev_all = previous_states(output.contiguous(), h0, mask, reverse).contiguous();

  Tensor dh = grad_h_n.contiguous();
  // Two buffers for dh_prev, alternating: the pass reads dh (last step's) while writing the new one.
  Tensor dh_buf[2] = {at::empty({B, H}, opts), at::empty({B, H}, opts)};
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s;
    Tensor dh_prev = dh_buf[s % 2];
    Tensor dgx_t = dgx[t], dgh_t = dgh[t];
    Backend::gru_backward_pointwise(gates[t], hn[t], h_prev_all[t], dh, gout[t], dgx_t, dgh_t, dh_prev);
    if (mask.defined()) {
      const Tensor m = mask[t];
      const Tensor inactive = m.logical_not();
      dgx_t.masked_fill_(inactive, 0);
      dgh_t.masked_fill_(inactive, 0);
      dh_prev.addmm_(dgh_t, w_hh);
      // An inactive step's output is a constant zero: its gradient must not reach the state.
      dh = at::where(m, dh_prev, dh);
    } else {
      dh_prev.addmm_(dgh_t, w_hh);
      dh = dh_prev;
    }
  }

  // 3. Everything that does not feed the recurrence: a few GEMMs over all steps at once.
  Tensor dgx2 = dgx.view({T * B, 3 * H});
  Tensor dgh2 = dgh.view({T * B, 3 * H});
  Tensor grad_input = at::mm(dgx2, w_ih).view({T, B, I});
  Tensor grad_w_ih = at::mm(dgx2.t(), input.reshape({T * B, I}));
  Tensor grad_w_hh = at::mm(dgh2.t(), h_prev_all.view({T * B, H}));
  Tensor grad_b_ih = at::sum(dgx2, {0}, /*keepdim=*/false, acc).to(dtype);
  Tensor grad_b_hh = at::sum(dgh2, {0}, /*keepdim=*/false, acc).to(dtype);
  Tensor grad_h0 = dh.clone();
  return {grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
}

}  // namespace fastlstm
