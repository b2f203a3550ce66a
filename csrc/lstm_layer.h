// One LSTM layer in one direction over a whole sequence, written once against ATen and shared by the CPU
// and CUDA implementations. A device supplies only its two fused pointwise passes (`Backend`); the GEMMs go
// through ATen (MKL/oneDNN on the CPU, cuBLAS on the GPU, on the current stream) and the step loop,
// masking for packed sequences and the big weight-gradient GEMMs are here.
//
// Backend must provide (all tensors contiguous, on the device, B rows):
//   forward_pointwise(gates [B,4H] scalar: pre-activations in, activated i,f,g,o out,
//                     c_prev [B,H] acc, c_out [B,H] acc, h_out [B,H] scalar)
//   backward_pointwise(gates [B,4H] scalar (activated), c [B,H] acc, c_prev [B,H] acc, dh [B,H] scalar,
//                      dc_next [B,H] acc, dgates_out [B,4H] scalar, dc_prev_out [B,H] acc)
// where acc is float32 for half/bfloat16 and the input dtype otherwise.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/util/Optional.h>

#include <tuple>
#include <type_traits>
#include <utility>

namespace fastlstm {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

inline at::ScalarType acc_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

inline bool defined(const OptTensor& t) { return t.has_value() && t->defined(); }

// Shape, dtype and device checks shared by every op. The module checks user input with nn.LSTM's own
// messages before it gets here; these guard direct calls of torch.ops.fastlstm.*.
inline void check_layer_args(const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                             const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                             const OptTensor& w_hr, const OptTensor& lengths) {
  TORCH_CHECK(input.dim() == 3, "fastlstm: input must be [T, B, I], got ", input.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_hh.dim() == 2, "fastlstm: weights must be 2-D");
  const int64_t B = input.size(1), I = input.size(2);
  const int64_t G = w_ih.size(0);
  TORCH_CHECK(G % 4 == 0 && G > 0, "fastlstm: w_ih must be [4H, I], got ", w_ih.sizes());
  const int64_t H = G / 4;
  const int64_t P = defined(w_hr) ? w_hr->size(0) : H;
  TORCH_CHECK(w_ih.size(1) == I, "fastlstm: w_ih must be [4H, ", I, "], got ", w_ih.sizes());
  TORCH_CHECK(w_hh.size(0) == G && w_hh.size(1) == P, "fastlstm: w_hh must be [", G, ", ", P, "], got ",
              w_hh.sizes());
  if (defined(w_hr)) {
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(1) == H, "fastlstm: w_hr must be [P, ", H, "], got ",
                w_hr->sizes());
  }
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == P, "fastlstm: h0 must be [", B, ", ", P,
              "], got ", h0.sizes());
  TORCH_CHECK(c0.dim() == 2 && c0.size(0) == B && c0.size(1) == H, "fastlstm: c0 must be [", B, ", ", H,
              "], got ", c0.sizes());
  for (const OptTensor& b : {b_ih, b_hh}) {
    if (defined(b)) {
      TORCH_CHECK(b->dim() == 1 && b->size(0) == G, "fastlstm: biases must be [", G, "], got ", b->sizes());
    }
  }
  std::vector<Tensor> floats = {input, h0, c0, w_ih, w_hh};
  for (const OptTensor& t : {b_ih, b_hh, w_hr}) {
    if (defined(t)) floats.push_back(*t);
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

// Per-step slices buf[t] of a contiguous [T, ...] buffer without a select() per step (a dispatch and a
// TensorImpl allocation each, which at B=1 cost as much as the step's GEMM): two view tensors made once and
// moved by their storage offset, used in turn. A slice stays valid until the second call after the one
// that returned it, which is all the step loops need (this step's slices and the previous step's one).
class StepSlices {
 public:
  explicit StepSlices(const Tensor& buf) : buf_(buf) {
    if (buf.dim() > 0 && buf.size(0) > 0 && buf.is_contiguous()) {
      for (auto& v : views_) v = buf.select(0, 0);
      movable_ = views_[0].unsafeGetTensorImpl()->allow_tensor_metadata_change() &&
                 views_[1].unsafeGetTensorImpl()->allow_tensor_metadata_change();
    }
  }
  Tensor operator[](int64_t t) {
    if (!movable_) return buf_.select(0, t);
    Tensor& v = views_[next_];
    next_ ^= 1;
    v.unsafeGetTensorImpl()->set_storage_offset(buf_.storage_offset() + t * buf_.stride(0));
    return v;
  }

 private:
  Tensor buf_;
  Tensor views_[2];
  int next_ = 0;
  bool movable_ = false;
};

// Optional Backend hook, detected at compile time (a Backend without it is unaffected):
//   static bool recurrent_addmm(gates [B,4H], h [B,P], w_hh [4H,P]): gates += h @ w_hh^T, or return false to
//   leave it to addmm_. The CPU uses it for batch 1, where a GEMM call costs more than its arithmetic.
template <class Backend, class = void>
struct has_recurrent_addmm : std::false_type {};
template <class Backend>
struct has_recurrent_addmm<Backend, std::void_t<decltype(Backend::recurrent_addmm(
                                        std::declval<const Tensor&>(), std::declval<const Tensor&>(),
                                        std::declval<const Tensor&>()))>> : std::true_type {};

//   static bool recurrent_backward_mm(dh [B,P], dgates [B,4H], w_hh [4H,P]): dh = dgates @ w_hh, or false.
template <class Backend, class = void>
struct has_recurrent_backward_mm : std::false_type {};
template <class Backend>
struct has_recurrent_backward_mm<Backend, std::void_t<decltype(Backend::recurrent_backward_mm(
                                              std::declval<const Tensor&>(), std::declval<const Tensor&>(),
                                              std::declval<const Tensor&>()))>> : std::true_type {};

template <class Backend>
void recurrent_backward_mm(const Tensor& dh, const Tensor& dgates, const Tensor& w_hh) {
  bool done = false;
  if constexpr (has_recurrent_backward_mm<Backend>::value) done = Backend::recurrent_backward_mm(dh, dgates, w_hh);
  if (!done) at::mm_out(const_cast<Tensor&>(dh), dgates, w_hh);
}

// [T, B] bool: element b active at step t.
inline Tensor active_mask(const OptTensor& lengths, int64_t T) {
  return at::arange(T, lengths->options()).unsqueeze(1) < lengths->unsqueeze(0);
}

// Both biases folded into one [4H] vector (added once, in the input-projection GEMM), or undefined.
inline Tensor fold_bias(const OptTensor& b_ih, const OptTensor& b_hh) {
  if (defined(b_ih) && defined(b_hh)) return at::add(*b_ih, *b_hh);
  if (defined(b_ih)) return *b_ih;
  if (defined(b_hh)) return *b_hh;
  return Tensor();
}

// The state each step started from, [T, B, P]: the previous step's output, or h0 where there was none (the
// first step, or in a reversed packed sequence the step after the element's end). output [T, B, P] as the
// forward returned it, h0 [B, P], mask [T, B, 1] bool or undefined.
inline Tensor previous_states(const Tensor& output, const Tensor& h0, const Tensor& mask, bool reverse) {
  const int64_t T = output.size(0);
  Tensor h_prev_all = at::empty(output.sizes(), output.options());
  if (T > 0) {
    const Tensor first = reverse ? h_prev_all[T - 1] : h_prev_all[0];
    first.copy_(h0);
    if (T > 1) {
      if (reverse) {
        h_prev_all.narrow(0, 0, T - 1).copy_(output.narrow(0, 1, T - 1));
      } else {
        h_prev_all.narrow(0, 1, T - 1).copy_(output.narrow(0, 0, T - 1));
      }
      if (mask.defined()) {
        Tensor prev_active = at::zeros_like(mask);
        if (reverse) {
          prev_active.narrow(0, 0, T - 1).copy_(mask.narrow(0, 1, T - 1));
        } else {
          prev_active.narrow(0, 1, T - 1).copy_(mask.narrow(0, 0, T - 1));
        }
        h_prev_all = at::where(prev_active, h_prev_all, h0.unsqueeze(0));
      }
    }
  }
  return h_prev_all;
}

// Returns (output [T,B,P], h_n [B,P], c_n [B,H], gates [T,B,4H], cells [T,B,H]); with training == false,
// gates and cells are undefined and only two [B,H] cell buffers are used.
template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_forward(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& lengths,
    bool reverse, bool training) {
  // The ATen calls below are the op's internals, never recorded by autograd (gradients come from
  // lstm_backward), even when the op is called directly on tensors that require grad.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_layer_args(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths);
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t H = w_ih.size(0) / 4;
  const int64_t P = h0.size(1);
  const bool proj = defined(w_hr);
  const auto acc = acc_type(input.scalar_type());
  const auto opts = input.options();

  // 1. Input projection in one GEMM, both biases folded in. The result is then activated in place step by
  //    step, so in training the same [T,B,4H] buffer ends up holding the gates that backward needs. Inference
  //    saves nothing, so it projects `chunk` steps at a time into one reused buffer of at most 2M elements
  //    (8 MiB in float32): memory (and the cost of first-touching fresh pages) no longer grows with T, while
  //    each projection GEMM stays tall enough to run near peak (1 MiB chunks, M = 128 rows at B=32, H=512,
  //    measured slower than nn.LSTM's single projection).
  const int64_t chunk =
      training ? T : std::max<int64_t>(1, std::min<int64_t>(T, (int64_t(1) << 21) / std::max<int64_t>(1, B * 4 * H)));
  Tensor gates = at::empty({chunk, B, 4 * H}, opts);
  const Tensor bias = fold_bias(b_ih, b_hh);
  // Projects the steps [t_lo, t_lo + n) into gates[0, n).
  auto project = [&](int64_t t_lo, int64_t n) {
    if (n * B == 0) return;
    Tensor x2d = input.narrow(0, t_lo, n).reshape({n * B, I});
    Tensor g2d = gates.narrow(0, 0, n).view({n * B, 4 * H});
    if constexpr (has_recurrent_addmm<Backend>::value) {
      // A single row (one streaming step at batch 1): the Backend's GEMV hook, as for the recurrent
      // product, instead of a GEMM call that costs more than its arithmetic.
      if (n * B == 1 && x2d.is_contiguous()) {
        if (bias.defined()) {
          g2d.copy_(bias);
        } else {
          g2d.zero_();
        }
        if (Backend::recurrent_addmm(g2d, x2d, w_ih)) return;
      }
    }
    if (bias.defined()) {
      at::addmm_out(g2d, bias, x2d, w_ih.t());
    } else {
      at::mm_out(g2d, x2d, w_ih.t());
    }
  };

  Tensor output = at::empty({T, B, P}, opts);
  Tensor cells = at::empty({training ? T : std::min<int64_t>(T, 2), B, H}, opts.dtype(acc));
  Tensor hraw = proj ? at::empty({B, H}, opts) : Tensor();
  Tensor mask = defined(lengths) ? active_mask(lengths, T).unsqueeze(-1) : Tensor();  // [T,B,1]
  const Tensor w_hh_t = w_hh.t();

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
    // 2. The recurrent GEMM accumulates into the step's slice of the projection, then one fused pass.
    bool done = false;
    if constexpr (has_recurrent_addmm<Backend>::value) done = Backend::recurrent_addmm(g_t, h_prev, w_hh);
    if (!done) g_t.addmm_(h_prev, w_hh_t);
    Tensor c_t = cells_at[training ? t : s % 2];
    Tensor out_t = output_at[t];
    Backend::forward_pointwise(g_t, c_prev, c_t, proj ? hraw : out_t);
    if (proj) at::mm_out(out_t, hraw, w_hr->t());
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

// Returns (grad_input [T,B,I], grad_h0 [B,P], grad_c0 [B,H], grad_w_ih [4H,I], grad_w_hh [4H,P],
// grad_bias [4H], grad_w_hr [P,H] or [0]).
template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
    const OptTensor& lengths, const Tensor& output, const Tensor& gates, const Tensor& cells, bool reverse) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in lstm_layer_forward
  check_layer_args(input, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, w_hr, lengths);
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t H = w_ih.size(0) / 4;
  const int64_t P = h0.size(1);
  const bool proj = defined(w_hr);
  const auto dtype = input.scalar_type();
  const auto acc = acc_type(dtype);
  const auto opts = input.options();
  // The pointwise pass indexes gates/cells/grads as dense [B, 4H] / [B, H] rows: a wrong shape, dtype or
  // layout in a direct call would read out of bounds, so check all of them and make them contiguous.
  const auto expect = [&](const Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType type) {
    TORCH_CHECK(t.sizes() == shape, "fastlstm: lstm_backward: ", name, " must be ", shape, ", got ",
                t.sizes());
    TORCH_CHECK(t.scalar_type() == type, "fastlstm: lstm_backward: ", name, " must be ", type, ", got ",
                t.scalar_type());
    TORCH_CHECK(t.device() == input.device(), "fastlstm: lstm_backward: ", name, " must be on ",
                input.device(), ", got ", t.device());
  };
  expect(grad_output, "grad_output", {T, B, P}, dtype);
  expect(grad_h_n, "grad_h_n", {B, P}, dtype);
  expect(grad_c_n, "grad_c_n", {B, H}, dtype);
  expect(output, "output", {T, B, P}, dtype);
  expect(gates, "gates", {T, B, 4 * H}, dtype);
  expect(cells, "cells", {T, B, H}, acc);
  const Tensor gates_c = gates.contiguous(), cells_c = cells.contiguous();

  Tensor gout = grad_output.contiguous();
  Tensor dgates = at::empty({T, B, 4 * H}, opts);
  Tensor mask = defined(lengths) ? active_mask(lengths, T).unsqueeze(-1) : Tensor();  // [T,B,1]
  // An inactive step's output is the constant 0: a gradient arriving there reaches nothing (it would
  // otherwise flow into the held state and on into earlier steps).
  if (mask.defined()) gout = gout.masked_fill(mask.logical_not(), 0);
  // The unprojected hidden states, needed only for grad_w_hr: recomputed from the saved gates and cells.
  Tensor hraw_all, dh_all;
  if (proj) {
    hraw_all = (gates_c.narrow(2, 3 * H, H) * cells_c.tanh()).to(dtype);
    dh_all = at::empty({T, B, P}, opts);
  }
  Tensor dhraw = proj ? at::empty({B, H}, opts) : Tensor();
  Tensor c0_acc = c0.to(acc).contiguous();

  // The step loop writes into buffers allocated once, not per step: dh_t (the whole gradient reaching h_t)
  // and dh_rec (its recurrent part, dgates_{t+1} @ w_hh).
  Tensor dh = grad_h_n.contiguous();
  Tensor dh_t = at::empty({B, P}, opts);
  Tensor dh_rec = at::empty({B, P}, opts);
  Tensor dc = grad_c_n.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
  Tensor dc_prev = at::empty({B, H}, opts.dtype(acc));
  StepSlices gout_at(gout), gates_at(gates_c), cells_at(cells_c), dgates_at(dgates);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s;
    at::add_out(dh_t, dh, gout_at[t]);
    if (proj) {
      dh_all[t].copy_(dh_t);
      at::mm_out(dhraw, dh_t, *w_hr);
    }
    const Tensor c_prev = s > 0 ? cells_at[reverse ? t + 1 : t - 1] : c0_acc;
    Tensor dg_t = dgates_at[t];
    Backend::backward_pointwise(gates_at[t], cells_at[t], c_prev, proj ? dhraw : dh_t, dc, dg_t, dc_prev);
    if (mask.defined()) {
      const Tensor m = mask[t];
      dg_t.masked_fill_(m.logical_not(), 0);
      dc_prev.copy_(at::where(m, dc_prev, dc));
      recurrent_backward_mm<Backend>(dh_rec, dg_t, w_hh);
      dh = at::where(m, dh_rec, dh_t);
    } else {
      // The next step's add_out reads dh_rec into dh_t before this buffer is overwritten again.
      recurrent_backward_mm<Backend>(dh_rec, dg_t, w_hh);
      dh = dh_rec;
    }
    std::swap(dc, dc_prev);
  }

  // 3. Everything that does not feed the recurrence: a few GEMMs over all steps at once.
  Tensor dg2 = dgates.view({T * B, 4 * H});
  Tensor grad_input = at::mm(dg2, w_ih).view({T, B, I});
  Tensor grad_w_ih = at::mm(dg2.t(), input.reshape({T * B, I}));
  // grad_w_hh = sum_t dgates_t^T h_{t-1}. Unmasked, h_{t-1} is the previous step's output (h0 for the first
  // step): one GEMM over the T-1 shifted steps plus one for h0, with no [T,B,P] copy of the shifted outputs.
  // With lengths, the state a step started from may be h0 mid-sequence: build it explicitly.
  Tensor grad_w_hh;
  if (!mask.defined()) {
    const int64_t first = reverse ? T - 1 : 0;
    grad_w_hh = at::mm(dgates[first].t(), h0);
    if (T > 1) {
      const Tensor dg_rest = dgates.narrow(0, reverse ? 0 : 1, T - 1).reshape({(T - 1) * B, 4 * H});
      const Tensor h_rest = output.narrow(0, reverse ? 1 : 0, T - 1).reshape({(T - 1) * B, P});
      grad_w_hh.addmm_(dg_rest.t(), h_rest);
    }
  } else {
    grad_w_hh = at::mm(dg2.t(), previous_states(output, h0, mask, reverse).view({T * B, P}));
  }
  Tensor grad_bias = at::sum(dg2, {0}, /*keepdim=*/false, acc).to(dtype);
  // A step where an element is inactive did not use its projection: no gradient reaches w_hr from it.
  if (proj && mask.defined()) dh_all.masked_fill_(mask.logical_not(), 0);
  Tensor grad_w_hr = proj ? at::mm(dh_all.view({T * B, P}).t(), hraw_all.view({T * B, H}))
                          : at::empty({0}, opts);
  Tensor grad_h0 = dh.clone();
  Tensor grad_c0 = dc.to(dtype, /*non_blocking=*/false, /*copy=*/true);
  return {grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_w_hr};
}

}  // namespace fastlstm
