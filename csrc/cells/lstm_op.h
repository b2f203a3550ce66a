// The LSTM cell for the layer driver (csrc/layer.h) and its three ops: lstm_forward, lstm_inference,
// lstm_backward (schemas in csrc/schemas.h). The passes are in lstm.h.
#pragma once

#include <torch/library.h>

#include "../layer.h"

namespace fastlstm {

struct LstmCell : CellBase {
  static constexpr int kGates = 4;
  static constexpr bool kHasProj = true;
  using Seq = cells::LstmSeq;

  template <class Dev>
  static void forward_step(const ForwardStep<LstmCell>& s) {
    Dev::template run<cells::LstmForward>(s.gates, s.gates.size(0), s.c.size(1), [&](auto tag) {
      using S = typename decltype(tag)::type;
      using A = math::acc_of<S>;
      return cells::LstmForward::Args<S>{ptr<S>(s.gates), ptr<const A>(s.c_prev), ptr<A>(s.c), ptr<S>(s.h),
                                         ptr_or_null<const A>(s.pre)};
    });
  }
  template <class Dev>
  static void backward_step(const BackwardStep<LstmCell>& s) {
    Dev::template run<cells::LstmBackward>(s.gates, s.gates.size(0), s.c.size(1), [&](auto tag) {
      using S = typename decltype(tag)::type;
      using A = math::acc_of<S>;
      return cells::LstmBackward::Args<S>{ptr<const S>(s.gates), ptr<const A>(s.c),  ptr<const A>(s.c_prev),
                                          ptr<const S>(s.dh),    ptr<const A>(s.dc), ptr<S>(s.dgx),
                                          ptr<A>(s.dc_prev)};
    });
  }
  template <class SavedInT, class ParamsT>
  static Tensor hidden_states(const Tensor& gates, const Tensor& cells, const SavedInT&, const ParamsT&) {
    const int64_t H = cells.size(2);
    return (gates.narrow(2, 3 * H, H) * cells.tanh()).to(gates.scalar_type());
  }
};

template <class Dev>
struct LstmOps {
  static LayerArgs args(const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                        const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                        const OptTensor& lengths, bool reverse) {
    return LayerArgs{input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse};
  }
  // -> (output [T,B,P], h_n [B,P], c_n [B,H], gates [T,B,4H], cells [T,B,H] A)
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> forward(const Tensor& input, const Tensor& h0,
                                                                    const Tensor& c0, const Tensor& w_ih,
                                                                    const Tensor& w_hh, const OptTensor& b_ih,
                                                                    const OptTensor& b_hh, const OptTensor& w_hr,
                                                                    const OptTensor& lengths, bool reverse) {
    const Check chk("lstm_forward", input);
    auto r = layer_forward<LstmCell, Dev>(chk, args(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse),
                                          {}, true);
    return {r.output, r.h_n, r.c_n, r.gates, r.cells};
  }
  // -> (output, h_n, c_n)
  static std::tuple<Tensor, Tensor, Tensor> inference(const Tensor& input, const Tensor& h0, const Tensor& c0,
                                                      const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                                      const OptTensor& b_hh, const OptTensor& w_hr,
                                                      const OptTensor& lengths, bool reverse) {
    const Check chk("lstm_inference", input);
    auto r = layer_forward<LstmCell, Dev>(chk, args(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse),
                                          {}, false);
    return {r.output, r.h_n, r.c_n};
  }
  // -> (grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias [4H] (of b_ih == of b_hh),
  //     grad_w_hr [P,H] or [0])
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward(
      const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
      const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
      const OptTensor& lengths, const Tensor& output, const Tensor& gates, const Tensor& cells, bool reverse) {
    const Check chk("lstm_backward", input);
    auto r = layer_backward<LstmCell, Dev>(
        chk, args(input, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, w_hr, lengths, reverse), {}, grad_output,
        grad_h_n, grad_c_n, output, gates, cells, {});
    return {r.grad_input, r.grad_h0, r.grad_c0, r.grad_w_ih, r.grad_w_hh, sum_rows(r.dgx),
            defined(w_hr) ? r.grad_w_hr : at::empty({0}, input.options())};
  }
  static void register_impls(torch::Library& m) {
    m.impl("lstm_forward", &forward);
    m.impl("lstm_inference", &inference);
    m.impl("lstm_backward", &backward);
  }
};

}  // namespace fastlstm
