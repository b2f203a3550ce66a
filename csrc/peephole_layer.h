// One peephole-LSTM layer in one direction over a whole sequence (issue 6), written once against ATen and
// shared by every device, like csrc/lstm_layer.h (whose checks, masks and bias folding it reuses).
//
// Cell (csrc/lstm_math.h, "Peephole LSTM"): i = sigmoid(x_i + w_ci . c_{t-1}),
// f = sigmoid(x_f + w_cf . c_{t-1}), g = tanh(x_g), c_t = f * c_{t-1} + i * g, o = sigmoid(x_o + w_co . c_t),
// h_t = o * tanh(c_t). No projection: h is [B, H].
//
// Two peephole modes, chosen by the rank of w_ci/w_cf/w_co:
//   Diagonal ([H] each): the peephole terms are elementwise, so a step is the LSTM's step with a different
//     fused pointwise pass: one recurrent GEMM, one pass.
//   Full ([H, H] each): the terms are GEMMs on the cell state. i and f see c_{t-1}, which is known before
//     the step, so their term is one more addmm (c_{t-1} @ [W_ci; W_cf]^T) into the i,f gate slices before
//     the pointwise pass. o sees c_t, which the pointwise pass produces, so the pass is split in two around
//     a third GEMM: pass 1 (i, f, g, c_t), c_t @ W_co^T into the o slice, pass 2 (o, h_t). Backward mirrors
//     it: pass 1 (dxo, dc through h), dc += dxo @ W_co, pass 2 (dxi, dxf, dxg, dc_prev through the update),
//     dc_prev += [dxi, dxf] @ [W_ci; W_cf]. Folding all three into one concatenated GEMM is impossible (o's
//     input does not exist yet), and two separate passes for the diagonal mode would cost a second sweep
//     over the gates for nothing, hence the two code paths.
//
// Backend must provide (tensors on the device, B rows, [B, 4H] gate tensors contiguous with gate order
// i, f, g, o; acc is float32 for half/bfloat16 and the input dtype otherwise):
//   peephole_forward_diag(gates [B,4H] scalar: pre-activations without the peephole terms in, activated
//       i,f,g,o out; c_prev [B,H] acc; p_i, p_f, p_o [H] acc; c_out [B,H] acc; h_out [B,H] scalar)
//   peephole_forward_c(gates [B,4H]: i,f (peephole terms included), g pre-activations in, activated out,
//       o untouched; c_prev [B,H] acc; c_out [B,H] acc)
//   peephole_forward_h(gates [B,4H]: o pre-activation (peephole term included) in, activated out, the rest
//       untouched; c [B,H] acc; h_out [B,H] scalar)
//   peephole_backward_diag(gates [B,4H] scalar (activated); c, c_prev [B,H] acc; p_i, p_f, p_o [H] acc;
//       dh [B,H] scalar; dc_next [B,H] acc; dgates_out [B,4H] scalar; dc_prev_out [B,H] acc)
//   peephole_backward_h(gates [B,4H] (activated); c [B,H] acc; dh [B,H] scalar; dc_next [B,H] acc;
//       dgates_out [B,4H]: o slice written; dc_out [B,H] acc: dc_next + the gradient through h)
//   peephole_backward_c(gates [B,4H] (activated); c_prev [B,H] acc; dc [B,H] acc (complete);
//       dgates_out [B,4H]: i,f,g slices written; dc_prev_out [B,H] acc: through the cell update only)
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "lstm_layer.h"

namespace fastlstm {

enum class PeepholeMode { Diagonal, Full };

// Checks the peephole weights against the (already checked) layer arguments; returns the mode.
inline PeepholeMode check_peephole_args(const Tensor& input, const Tensor& w_ci, const Tensor& w_cf,
                                        const Tensor& w_co, int64_t H) {
  const int64_t d = w_ci.dim();
  TORCH_CHECK(d == 1 || d == 2, "fastlstm: peephole weights must be [H] (diagonal) or [H, H] (full), got ",
              w_ci.sizes());
  for (const Tensor& w : {w_ci, w_cf, w_co}) {
    const bool ok = d == 1 ? (w.dim() == 1 && w.size(0) == H)
                           : (w.dim() == 2 && w.size(0) == H && w.size(1) == H);
    TORCH_CHECK(ok, "fastlstm: w_ci, w_cf and w_co must all be [", H, "] or all [", H, ", ", H, "], got ",
                w_ci.sizes(), ", ", w_cf.sizes(), ", ", w_co.sizes());
    TORCH_CHECK(w.scalar_type() == input.scalar_type(), "fastlstm: expected all tensors to be ",
                input.scalar_type(), ", got ", w.scalar_type());
    TORCH_CHECK(w.device() == input.device(), "fastlstm: expected all tensors on ", input.device(),
                ", got one on ", w.device());
  }
  return d == 1 ? PeepholeMode::Diagonal : PeepholeMode::Full;
}

// out += a @ b. `out` may be of a lower precision than a and b (bfloat16 gates, float32 cell states); the
// product is then formed in a's precision and rounded once, on the add.
inline void addmm_into(const Tensor& out, const Tensor& a, const Tensor& b) {
  if (out.scalar_type() == a.scalar_type()) {
    out.addmm_(a, b);
  } else {
    out.add_(at::mm(a, b));
  }
}

// states [T, B, X]: the state after each step; init [B, X]. Returns [T, B, X]: the state each step started
// from, i.e. `states` shifted by one step in the direction of processing, with `init` where there was no
// step before. With mask [T, B, 1] (packed sequences), an element whose previous step was inactive also
// starts from init: that happens only in reverse, at the step after its end. Used for h (whose outputs are
// zero at inactive steps, so the mask matters); cell states are held through inactive steps, so they need
// no mask.
inline Tensor step_start_states(const Tensor& states, const Tensor& init, const Tensor& mask, bool reverse) {
  const int64_t T = states.size(0);
  Tensor out = at::empty(states.sizes(), states.options());
  if (T == 0) return out;
  (reverse ? out[T - 1] : out[0]).copy_(init);
  if (T == 1) return out;
  if (reverse) {
    out.narrow(0, 0, T - 1).copy_(states.narrow(0, 1, T - 1));
  } else {
    out.narrow(0, 1, T - 1).copy_(states.narrow(0, 0, T - 1));
  }
  if (mask.defined()) {
    Tensor prev_active = at::zeros_like(mask);
    if (reverse) {
      prev_active.narrow(0, 0, T - 1).copy_(mask.narrow(0, 1, T - 1));
    } else {
      prev_active.narrow(0, 1, T - 1).copy_(mask.narrow(0, 0, T - 1));
    }
    out = at::where(prev_active, out, init.unsqueeze(0));
  }
  return out;
}

// Returns (output [T,B,H], h_n [B,H], c_n [B,H], gates [T,B,4H], cells [T,B,H]); with training == false,
// gates and cells are undefined and only two [B,H] cell buffers are used.
template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> peephole_layer_forward(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ci, const Tensor& w_cf, const Tensor& w_co,
    const OptTensor& lengths, bool reverse, bool training) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in lstm_layer_forward
  check_layer_args(input, h0, c0, w_ih, w_hh, b_ih, b_hh, std::nullopt, lengths);
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t H = w_ih.size(0) / 4;
  const PeepholeMode mode = check_peephole_args(input, w_ci, w_cf, w_co, H);
  const auto acc = acc_type(input.scalar_type());
  const auto opts = input.options();

  // Input projection with both biases folded in, as in lstm_layer_forward: all steps in one GEMM for
  // training (the buffer then holds the gates backward needs), `chunk` steps at a time into one reused
  // buffer of at most 2M elements for inference.
  const int64_t chunk =
      training ? T : std::max<int64_t>(1, std::min<int64_t>(T, (int64_t(1) << 21) / std::max<int64_t>(1, B * 4 * H)));
  Tensor gates = at::empty({chunk, B, 4 * H}, opts);
  const Tensor bias = fold_bias(b_ih, b_hh);
  // Projects the steps [t_lo, t_lo + n) into gates[0, n).
  auto project = [&](int64_t t_lo, int64_t n) {
    if (n * B == 0) return;
    Tensor x2d = input.narrow(0, t_lo, n).reshape({n * B, I});
    Tensor g2d = gates.narrow(0, 0, n).view({n * B, 4 * H});
    if (bias.defined()) {
      at::addmm_out(g2d, bias, x2d, w_ih.t());
    } else {
      at::mm_out(g2d, x2d, w_ih.t());
    }
  };

  Tensor output = at::empty({T, B, H}, opts);
  Tensor cells = at::empty({training ? T : std::min<int64_t>(T, 2), B, H}, opts.dtype(acc));
  Tensor mask = defined(lengths) ? active_mask(lengths, T).unsqueeze(-1) : Tensor();  // [T,B,1]
  const Tensor w_hh_t = w_hh.t();
  // Peephole weights in the cell state's precision: the diagonal ones feed the pointwise pass directly,
  // the full ones multiply the (acc) cell states.
  Tensor p_i, p_f, p_o, w_cif_t, w_co_t;
  if (mode == PeepholeMode::Diagonal) {
    p_i = w_ci.to(acc).contiguous();
    p_f = w_cf.to(acc).contiguous();
    p_o = w_co.to(acc).contiguous();
  } else {
    w_cif_t = at::cat({w_ci, w_cf}, 0).to(acc).t();  // [H, 2H]
    w_co_t = w_co.to(acc).t();                        // [H, H]
  }

  Tensor h_prev = h0.contiguous();
  Tensor c_prev = c0.to(acc).contiguous();
  StepSlices gates_at(gates), cells_at(cells), output_at(output);
  int64_t t_lo = 0;  // the first step held in `gates`
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    if (s % chunk == 0) {
      const int64_t n = std::min(chunk, T - s);
      t_lo = reverse ? T - s - n : s;
      project(t_lo, n);
    }
    Tensor g_t = gates_at[t - t_lo];
    // The recurrent GEMM through the Backend's optional hook (lstm_layer.h), as in lstm_layer_forward.
    bool done = false;
    if constexpr (has_recurrent_addmm<Backend>::value) done = Backend::recurrent_addmm(g_t, h_prev, w_hh);
    if (!done) g_t.addmm_(h_prev, w_hh_t);
    Tensor c_t = cells_at[training ? t : s % 2];
    Tensor out_t = output_at[t];
    if (mode == PeepholeMode::Diagonal) {
      Backend::peephole_forward_diag(g_t, c_prev, p_i, p_f, p_o, c_t, out_t);
    } else {
      addmm_into(g_t.narrow(1, 0, 2 * H), c_prev, w_cif_t);
      Backend::peephole_forward_c(g_t, c_prev, c_t);
      addmm_into(g_t.narrow(1, 3 * H, H), c_t, w_co_t);
      Backend::peephole_forward_h(g_t, c_t, out_t);
    }
    if (mask.defined()) {
      // Inactive elements keep their state and emit zeros, as a packed sequence would.
      const Tensor m = mask[t];
      c_t.copy_(at::where(m, c_t, c_prev));
      Tensor h_state = at::where(m, out_t, h_prev);
      out_t.masked_fill_(m.logical_not(), 0);
      h_prev = h_state;
    } else {
      h_prev = out_t;
    }
    c_prev = c_t;
  }
  // Outputs of a custom op may not alias each other or the inputs: copy the final state out.
  Tensor h_n = h_prev.clone();
  Tensor c_n = c_prev.to(input.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  if (!training) return {output, h_n, c_n, Tensor(), Tensor()};
  return {output, h_n, c_n, gates, cells};
}

// Returns (grad_input [T,B,I], grad_h0 [B,H], grad_c0 [B,H], grad_w_ih [4H,I], grad_w_hh [4H,H],
// grad_bias [4H], grad_w_ci, grad_w_cf, grad_w_co (each [H] or [H,H], as the weights)).
template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> peephole_layer_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& w_ci,
    const Tensor& w_cf, const Tensor& w_co, const OptTensor& lengths, const Tensor& output, const Tensor& gates_in,
    const Tensor& cells_in, bool reverse) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in lstm_layer_forward
  check_layer_args(input, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, std::nullopt, lengths);
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t H = w_ih.size(0) / 4;
  const PeepholeMode mode = check_peephole_args(input, w_ci, w_cf, w_co, H);
  const auto dtype = input.scalar_type();
  const auto acc = acc_type(dtype);
  const auto opts = input.options();
  // The pointwise passes index gates/cells/grads as dense [B, 4H] / [B, H] rows: a wrong shape, dtype or
  // device in a direct call would read out of bounds, so check all of them and make them contiguous.
  const auto expect = [&](const Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType type) {
    TORCH_CHECK(t.sizes() == shape, "fastlstm: peephole_backward: ", name, " must be ", shape, ", got ",
                t.sizes());
    TORCH_CHECK(t.scalar_type() == type, "fastlstm: peephole_backward: ", name, " must be ", type, ", got ",
                t.scalar_type());
    TORCH_CHECK(t.device() == input.device(), "fastlstm: peephole_backward: ", name, " must be on ",
                input.device(), ", got ", t.device());
  };
  expect(grad_output, "grad_output", {T, B, H}, dtype);
  expect(grad_h_n, "grad_h_n", {B, H}, dtype);
  expect(grad_c_n, "grad_c_n", {B, H}, dtype);
  expect(output, "output", {T, B, H}, dtype);
  expect(gates_in, "gates", {T, B, 4 * H}, dtype);
  expect(cells_in, "cells", {T, B, H}, acc);
  const Tensor gates = gates_in.contiguous(), cells = cells_in.contiguous();

  Tensor gout = grad_output.contiguous();
  Tensor dgates = at::empty({T, B, 4 * H}, opts);
  Tensor mask = defined(lengths) ? active_mask(lengths, T).unsqueeze(-1) : Tensor();  // [T,B,1]
  Tensor c0_acc = c0.to(acc).contiguous();
  Tensor p_i, p_f, p_o, w_cif, w_co_acc, dc_mid;
  if (mode == PeepholeMode::Diagonal) {
    p_i = w_ci.to(acc).contiguous();
    p_f = w_cf.to(acc).contiguous();
    p_o = w_co.to(acc).contiguous();
  } else {
    w_cif = at::cat({w_ci, w_cf}, 0).to(acc);  // [2H, H]
    w_co_acc = w_co.to(acc);                    // [H, H]
    dc_mid = at::empty({B, H}, opts.dtype(acc));
  }

  // As in lstm_layer_backward: buffers allocated once (dh_t, the whole gradient reaching h_t; dh_rec, its
  // recurrent part dgates_{t+1} @ w_hh), per-step slices without select(), the Backend's recurrent hook.
  Tensor dh = grad_h_n.contiguous();
  Tensor dh_t = at::empty({B, H}, opts);
  Tensor dh_rec = at::empty({B, H}, opts);
  Tensor dc = grad_c_n.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
  Tensor dc_prev = at::empty({B, H}, opts.dtype(acc));
  StepSlices gout_at(gout), gates_at(gates), cells_at(cells), dgates_at(dgates);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s;
    at::add_out(dh_t, dh, gout_at[t]);
    const Tensor c_prev = s > 0 ? cells_at[reverse ? t + 1 : t - 1] : c0_acc;
    const Tensor c_t = cells_at[t];
    const Tensor g_t = gates_at[t];
    Tensor dg_t = dgates_at[t];
    if (mode == PeepholeMode::Diagonal) {
      Backend::peephole_backward_diag(g_t, c_t, c_prev, p_i, p_f, p_o, dh_t, dc, dg_t, dc_prev);
    } else {
      Backend::peephole_backward_h(g_t, c_t, dh_t, dc, dg_t, dc_mid);
      dc_mid.addmm_(dg_t.narrow(1, 3 * H, H).to(acc), w_co_acc);
      Backend::peephole_backward_c(g_t, c_prev, dc_mid, dg_t, dc_prev);
      dc_prev.addmm_(dg_t.narrow(1, 0, 2 * H).to(acc), w_cif);
    }
    if (mask.defined()) {
      // An inactive element passes its state's gradients through unchanged and feeds no weight. Its output
      // there is a constant zero, so grad_output at that step is dropped (dh, not dh_t, is carried).
      const Tensor m = mask[t];
      dg_t.masked_fill_(m.logical_not(), 0);
      dc_prev.copy_(at::where(m, dc_prev, dc));
      recurrent_backward_mm<Backend>(dh_rec, dg_t, w_hh);
      dh = at::where(m, dh_rec, dh);
    } else {
      // The next step's add_out reads dh_rec into dh_t before this buffer is overwritten again.
      recurrent_backward_mm<Backend>(dh_rec, dg_t, w_hh);
      dh = dh_rec;
    }
    std::swap(dc, dc_prev);
  }

  // Everything that does not feed the recurrence: a few GEMMs / reductions over all steps at once.
  Tensor dg2 = dgates.view({T * B, 4 * H});
  Tensor grad_input = at::mm(dg2, w_ih).view({T, B, I});
  Tensor grad_w_ih = at::mm(dg2.t(), input.reshape({T * B, I}));
  Tensor h_prev_all = step_start_states(output, h0, mask, reverse);
  Tensor grad_w_hh = at::mm(dg2.t(), h_prev_all.view({T * B, H}));
  Tensor grad_bias = at::sum(dg2, {0}, /*keepdim=*/false, acc).to(dtype);

  // Peephole weights: i and f saw c_{t-1}, o saw c_t. Inactive steps have zero gate gradients, so the
  // held cell states there contribute nothing.
  Tensor c_prev_all = step_start_states(cells, c0_acc, Tensor(), reverse).view({T * B, H});
  Tensor c_all = cells.view({T * B, H});
  Tensor dxi = dg2.narrow(1, 0, H), dxf = dg2.narrow(1, H, H), dxo = dg2.narrow(1, 3 * H, H);
  Tensor grad_w_ci, grad_w_cf, grad_w_co;
  if (mode == PeepholeMode::Diagonal) {
    // p . c is elementwise: the gradient is the sum over steps and batch of dx * c (in acc precision).
    auto dot_rows = [&](const Tensor& dx, const Tensor& c) {
      return at::sum(at::mul(dx, c), {0}, /*keepdim=*/false, acc).to(dtype);
    };
    grad_w_ci = dot_rows(dxi, c_prev_all);
    grad_w_cf = dot_rows(dxf, c_prev_all);
    grad_w_co = dot_rows(dxo, c_all);
  } else {
    // x += c @ W^T: dW = dx^T @ c, over all steps at once.
    grad_w_ci = at::mm(dxi.t().to(acc), c_prev_all).to(dtype);
    grad_w_cf = at::mm(dxf.t().to(acc), c_prev_all).to(dtype);
    grad_w_co = at::mm(dxo.t().to(acc), c_all).to(dtype);
  }
  Tensor grad_h0 = dh.clone();
  Tensor grad_c0 = dc.to(dtype, /*non_blocking=*/false, /*copy=*/true);
  return {grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_w_ci, grad_w_cf, grad_w_co};
}

}  // namespace fastlstm
