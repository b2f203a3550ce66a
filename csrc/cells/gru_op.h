// The GRU cell for the layer driver (csrc/layer.h) and its ops gru_forward, gru_inference, gru_backward
// (schemas in csrc/schemas.h). The passes are in gru.h. b_ih and the r, z parts of b_hh are folded into the
// input GEMM; b_hn sits inside r * (W_hn h + b_hn), so the pass adds it.
#pragma once

#include <torch/library.h>

#include "../layer.h"

namespace fastlstm {

struct GruCell : CellBase {
  static constexpr int kGates = 3;
  static constexpr bool kHasC = false;
  static constexpr bool kSeparateRec = true;
  static constexpr bool kNeedsHPrev = true;
  static constexpr bool kDirectDh = true;
  using Seq = cells::GruSeq;
  struct Params {
    Tensor b_hn;  // [H] S contiguous, or undefined without biases
  };
  struct Saved {
    Tensor hn;  // [T, B, H] S (training) or a [B, H] scratch: W_hn h_{t-1} + b_hn
    StepSlices hn_at;
    bool training = false;
    static Saved alloc(const Dims& d, const at::TensorOptions& o, bool training) {
      // Zeros in training: with sorted lengths the steps skip inactive rows (layer.h's prefix path), and a
      // saved output must not hold uninitialised memory.
      Tensor hn = training ? at::zeros({d.T, d.B, d.H}, o) : at::empty({d.B, d.H}, o);
      return Saved{hn, StepSlices(training ? hn : Tensor()), training};
    }
  };
  struct SavedIn {
    Tensor hn;  // [T, B, H] S
    mutable StepSlices hn_at;  // backward's per-step slices (no select() per step)
    explicit SavedIn(Tensor h) : hn(std::move(h)), hn_at(hn) {}
  };
  static Tensor input_bias(const LayerArgs& a, const Params&) {
    if (!defined(a.b_hh)) return defined(a.b_ih) ? *a.b_ih : Tensor();
    const int64_t H = a.b_hh->size(0) / 3;
    return bias_sum(defined(a.b_ih) ? *a.b_ih : at::zeros_like(*a.b_hh), *a.b_hh, 2 * H);
  }
  static void check_saved(const Check& chk, const Dims& d, const SavedIn& s) { chk("hn", s.hn, {d.T, d.B, d.H}); }
  // hn and b_hn for a whole-sequence launch (QF / QB: cells::SeqForwardArgs / SeqBackwardArgs of S).
  template <class QF>
  static void seq_forward_extra(QF& q, Saved& sv, const Params& p) {
    using S = std::remove_pointer_t<decltype(q.hn)>;
    q.hn = ptr<S>(sv.hn);
    q.hn_per_step = sv.training;
    q.b_hn = ptr_or_null<const S>(p.b_hn);
  }
  template <class QB>
  static void seq_backward_extra(QB& q, const SavedIn& s, const Params&) {
    using S = std::remove_const_t<std::remove_pointer_t<decltype(q.hn)>>;
    q.hn = ptr<const S>(s.hn);
  }

  template <class Dev>
  static void forward_step(const ForwardStep<GruCell>& s) {
    Saved& sv = *s.saved;
    const Tensor hn = sv.training ? sv.hn_at[s.t] : sv.hn;
    // With float32 pre-activations (s.pre), the recurrent product s.rec is float32 too.
    const bool acc = s.pre.defined();
    Dev::template run<cells::GruForward>(s.gates, s.gates.size(0), s.h.size(1), [&](auto tag) {
      using S = typename decltype(tag)::type;
      using A = math::acc_of<S>;
      return cells::GruForward::Args<S>{ptr<S>(s.gates),
                                        acc ? nullptr : ptr<const S>(s.rec),
                                        ptr_or_null<const S>(s.params->b_hn),
                                        ptr<const S>(s.h_prev),
                                        ptr<S>(hn),
                                        ptr<S>(s.h),
                                        ptr_or_null<const A>(s.pre),
                                        acc ? ptr<const A>(s.rec) : nullptr};
    });
  }
  template <class Dev>
  static void backward_step(const BackwardStep<GruCell>& s) {
    const Tensor hn = s.saved->hn_at[s.t];
    Dev::template run<cells::GruBackward>(s.gates, s.gates.size(0), s.dh.size(1), [&](auto tag) {
      using S = typename decltype(tag)::type;
      return cells::GruBackward::Args<S>{ptr<const S>(s.gates), ptr<const S>(hn),  ptr<const S>(s.h_prev),
                                         ptr<const S>(s.dh),    ptr<S>(s.dgx),     ptr<S>(s.dgh),
                                         ptr<S>(s.dh_prev)};
    });
  }
};

template <class Dev>
struct GruOps {
  static LayerArgs args(const Tensor& input, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                        const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& lengths, bool reverse) {
    return LayerArgs{input, h0, Tensor(), w_ih, w_hh, b_ih, b_hh, std::nullopt, lengths, reverse};
  }
  static GruCell::Params params(const OptTensor& b_hh, int64_t H) {
    return {defined(b_hh) && b_hh->dim() == 1 && b_hh->size(0) == 3 * H ? b_hh->narrow(0, 2 * H, H).contiguous()
                                                                          : Tensor()};
  }
  static int64_t hidden(const Tensor& w_ih) { return w_ih.dim() == 2 ? w_ih.size(0) / 3 : 0; }
  // -> (output [T,B,H], h_n [B,H], gates [T,B,3H] (r, z, n), hn [T,B,H])
  static std::tuple<Tensor, Tensor, Tensor, Tensor> forward(const Tensor& input, const Tensor& h0, const Tensor& w_ih,
                                                            const Tensor& w_hh, const OptTensor& b_ih,
                                                            const OptTensor& b_hh, const OptTensor& lengths,
                                                            bool reverse) {
    const Check chk("gru_forward", input);
    auto a = args(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse);
    check_layer<GruCell>(chk, a);
    auto r = layer_forward<GruCell, Dev>(chk, a, params(b_hh, hidden(w_ih)), true);
    return {r.output, r.h_n, r.gates, r.saved.hn};
  }
  static std::tuple<Tensor, Tensor> inference(const Tensor& input, const Tensor& h0, const Tensor& w_ih,
                                              const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                              const OptTensor& lengths, bool reverse) {
    const Check chk("gru_inference", input);
    auto a = args(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse);
    check_layer<GruCell>(chk, a);
    auto r = layer_forward<GruCell, Dev>(chk, a, params(b_hh, hidden(w_ih)), false);
    return {r.output, r.h_n};
  }
  // -> (grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih [3H], grad_b_hh [3H]); the two bias gradients
  //    differ in their n part.
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward(
      const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& h0, const Tensor& w_ih,
      const Tensor& w_hh, const OptTensor& lengths, const Tensor& output, const Tensor& gates, const Tensor& hn,
      bool reverse) {
    const Check chk("gru_backward", input);
    auto r = layer_backward<GruCell, Dev>(chk, args(input, h0, w_ih, w_hh, std::nullopt, std::nullopt, lengths, reverse),
                                          {}, grad_output, grad_h_n, Tensor(), output, gates, Tensor(),
                                          GruCell::SavedIn{hn.contiguous()});
    return {r.grad_input, r.grad_h0, r.grad_w_ih, r.grad_w_hh, sum_rows(r.dgx), sum_rows(r.dgh)};
  }
  static void register_impls(torch::Library& m) {
    m.impl("gru_forward", &forward);
    m.impl("gru_inference", &inference);
    m.impl("gru_backward", &backward);
  }
};

}  // namespace fastlstm
