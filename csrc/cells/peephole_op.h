// The peephole-LSTM cell for the layer driver (csrc/layer.h) and its ops peephole_forward,
// peephole_inference, peephole_backward (schemas in csrc/schemas.h); passes in peephole.h.
// Two modes, by the rank of w_ci/w_cf/w_co: diagonal ([H] each) is the LSTM's step with another fused
// pass; full ([H, H] each) adds c_{t-1} @ [W_ci; W_cf]^T into the i, f slices before the pass and splits
// the pass around c_t @ W_co^T (o sees the new cell state, which only the pass produces). Folding the three
// into one GEMM is impossible (o's input does not exist yet), and two passes for the diagonal mode would
// sweep the gates twice for nothing, hence both paths.
#pragma once

#include <torch/library.h>

#include "../layer.h"

namespace fastlstm {

struct PeepholeCell : CellBase {
  static constexpr int kGates = 4;
  using Seq = cells::PeepholeSeq;  // diagonal mode only (seq_ok)
  struct Params {
    Tensor w_ci, w_cf, w_co;  // as given: all [H] or all [H, H]
    bool full = false;
    Tensor p_i, p_f, p_o;     // diagonal: [H] A contiguous
    Tensor w_cif, w_co_acc;   // full: [2H, H] and [H, H] A
    Tensor dc_mid;            // full, backward: a [B, H] A scratch
  };

  static Params make_params(const Check& chk, const Tensor& input, const Tensor& w_ci, const Tensor& w_cf,
                            const Tensor& w_co, int64_t H) {
    Params p{w_ci, w_cf, w_co};
    const bool full = w_ci.defined() && w_ci.dim() == 2;
    const std::vector<int64_t> shape = full ? std::vector<int64_t>{H, H} : std::vector<int64_t>{H};
    for (const Tensor* w : {&w_ci, &w_cf, &w_co}) {
      if (!w->defined() || w->dim() != int64_t(shape.size())) {
        chk.fail("w_ci", "w_cf and w_co must all be [" + std::to_string(H) + "] (diagonal) or all [" +
                             std::to_string(H) + ", " + std::to_string(H) + "] (full), got " +
                             Check::describe(w_ci) + ", " + Check::describe(w_cf) + ", " + Check::describe(w_co));
      }
    }
    chk("w_ci", w_ci, shape);
    chk("w_cf", w_cf, shape);
    chk("w_co", w_co, shape);
    const auto acc = acc_type(input.scalar_type());
    p.full = full;
    if (!full) {
      p.p_i = w_ci.to(acc).contiguous();
      p.p_f = w_cf.to(acc).contiguous();
      p.p_o = w_co.to(acc).contiguous();
    } else {
      p.w_cif = at::cat({w_ci, w_cf}, 0).to(acc);
      p.w_co_acc = w_co.to(acc);
    }
    return p;
  }

  static bool seq_ok(const Params& p) { return !p.full; }
  // The peephole vectors for a whole-sequence launch (Q: cells::SeqForwardArgs / SeqBackwardArgs).
  template <class Q>
  static void set_peepholes(Q& q, const Params& p) {
    using A = std::remove_const_t<std::remove_pointer_t<decltype(q.p_i)>>;
    q.p_i = ptr<const A>(p.p_i);
    q.p_f = ptr<const A>(p.p_f);
    q.p_o = ptr<const A>(p.p_o);
  }
  template <class QF, class SavedT>
  static void seq_forward_extra(QF& q, SavedT&, const Params& p) {
    set_peepholes(q, p);
  }
  template <class QB, class SavedInT>
  static void seq_backward_extra(QB& q, const SavedInT&, const Params& p) {
    set_peepholes(q, p);
  }

  template <class Dev>
  static void forward_step(const ForwardStep<PeepholeCell>& s) {
    const Params& p = *s.params;
    const int64_t B = s.gates.size(0), H = s.c.size(1);
    if (!p.full) {
      Dev::template run<cells::PeepholeForwardDiag>(s.gates, B, H, [&](auto tag) {
        using S = typename decltype(tag)::type;
        using A = math::acc_of<S>;
        return cells::PeepholeForwardDiag::Args<S>{ptr<S>(s.gates),     ptr<const A>(s.c_prev), ptr<const A>(p.p_i),
                                                   ptr<const A>(p.p_f), ptr<const A>(p.p_o),    ptr<A>(s.c),
                                                   ptr<S>(s.h),         ptr_or_null<const A>(s.pre)};
      });
      return;
    }
    // The peephole products join the pre-activations where they are: in float32 with s.pre.
    const Tensor& x = s.pre.defined() ? s.pre : s.gates;
    addmm_into(x.narrow(1, 0, 2 * H), s.c_prev, p.w_cif.t());
    Dev::template run<cells::PeepholeForwardC>(s.gates, B, H, [&](auto tag) {
      using S = typename decltype(tag)::type;
      using A = math::acc_of<S>;
      return cells::PeepholeForwardC::Args<S>{ptr<S>(s.gates), ptr<const A>(s.c_prev), ptr<A>(s.c),
                                              ptr_or_null<const A>(s.pre)};
    });
    addmm_into(x.narrow(1, 3 * H, H), s.c, p.w_co_acc.t());
    Dev::template run<cells::PeepholeForwardH>(s.gates, B, H, [&](auto tag) {
      using S = typename decltype(tag)::type;
      using A = math::acc_of<S>;
      return cells::PeepholeForwardH::Args<S>{ptr<S>(s.gates), ptr<const A>(s.c), ptr<S>(s.h),
                                              ptr_or_null<const A>(s.pre)};
    });
  }

  template <class Dev>
  static void backward_step(const BackwardStep<PeepholeCell>& s) {
    const Params& p = *s.params;
    const int64_t B = s.gates.size(0), H = s.c.size(1);
    if (!p.full) {
      Dev::template run<cells::PeepholeBackwardDiag>(s.gates, B, H, [&](auto tag) {
        using S = typename decltype(tag)::type;
        using A = math::acc_of<S>;
        return cells::PeepholeBackwardDiag::Args<S>{
            ptr<const S>(s.gates), ptr<const A>(s.c),  ptr<const A>(s.c_prev), ptr<const A>(p.p_i),
            ptr<const A>(p.p_f),   ptr<const A>(p.p_o), ptr<const S>(s.dh),    ptr<const A>(s.dc),
            ptr<S>(s.dgx),         ptr<A>(s.dc_prev)};
      });
      return;
    }
    // The scratch has the batch's rows; a step may run on fewer (layer.h's prefix path).
    const Tensor dc_mid = B < p.dc_mid.size(0) ? p.dc_mid.narrow(0, 0, B) : p.dc_mid;
    Dev::template run<cells::PeepholeBackwardH>(s.gates, B, H, [&](auto tag) {
      using S = typename decltype(tag)::type;
      using A = math::acc_of<S>;
      return cells::PeepholeBackwardH::Args<S>{ptr<const S>(s.gates), ptr<const A>(s.c), ptr<const S>(s.dh),
                                               ptr<const A>(s.dc),    ptr<S>(s.dgx),      ptr<A>(dc_mid)};
    });
    const_cast<Tensor&>(dc_mid).addmm_(s.dgx.narrow(1, 3 * H, H).to(dc_mid.scalar_type()), p.w_co_acc);
    Dev::template run<cells::PeepholeBackwardC>(s.gates, B, H, [&](auto tag) {
      using S = typename decltype(tag)::type;
      using A = math::acc_of<S>;
      return cells::PeepholeBackwardC::Args<S>{ptr<const S>(s.gates), ptr<const A>(s.c_prev), ptr<const A>(dc_mid),
                                               ptr<S>(s.dgx),         ptr<A>(s.dc_prev)};
    });
    const_cast<Tensor&>(s.dc_prev).addmm_(s.dgx.narrow(1, 0, 2 * H).to(s.dc_prev.scalar_type()), p.w_cif);
  }
};

template <class Dev>
struct PeepholeOps {
  static LayerArgs args(const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                        const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& lengths,
                        bool reverse) {
    return LayerArgs{input, h0, c0, w_ih, w_hh, b_ih, b_hh, std::nullopt, lengths, reverse};
  }
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> run_forward(
      const char* op, bool training, const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
      const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ci, const Tensor& w_cf,
      const Tensor& w_co, const OptTensor& lengths, bool reverse) {
    const Check chk(op, input);
    const LayerArgs a = args(input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse);
    const Dims d = check_layer<PeepholeCell>(chk, a);
    auto r = layer_forward<PeepholeCell, Dev>(chk, a, PeepholeCell::make_params(chk, input, w_ci, w_cf, w_co, d.H),
                                              training);
    return {r.output, r.h_n, r.c_n, r.gates, r.cells};
  }
  // -> (output [T,B,H], h_n, c_n [B,H], gates [T,B,4H], cells [T,B,H] A)
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> forward(
      const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
      const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ci, const Tensor& w_cf, const Tensor& w_co,
      const OptTensor& lengths, bool reverse) {
    return run_forward("peephole_forward", true, input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, lengths,
                       reverse);
  }
  static std::tuple<Tensor, Tensor, Tensor> inference(const Tensor& input, const Tensor& h0, const Tensor& c0,
                                                      const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                                      const OptTensor& b_hh, const Tensor& w_ci, const Tensor& w_cf,
                                                      const Tensor& w_co, const OptTensor& lengths, bool reverse) {
    auto r = run_forward("peephole_inference", false, input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co,
                         lengths, reverse);
    return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
  }
  // -> (grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias [4H], grad_w_ci, grad_w_cf, grad_w_co)
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward(
      const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
      const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& w_ci,
      const Tensor& w_cf, const Tensor& w_co, const OptTensor& lengths, const Tensor& output, const Tensor& gates,
      const Tensor& cells, bool reverse) {
    const Check chk("peephole_backward", input);
    const LayerArgs a = args(input, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, lengths, reverse);
    const Dims d = check_layer<PeepholeCell>(chk, a);
    PeepholeCell::Params p = PeepholeCell::make_params(chk, input, w_ci, w_cf, w_co, d.H);
    if (p.full) p.dc_mid = at::empty({d.B, d.H}, input.options().dtype(acc_type(input.scalar_type())));
    auto r = layer_backward<PeepholeCell, Dev>(chk, a, p, grad_output, grad_h_n, grad_c_n, output, gates, cells, {});
    const auto dtype = input.scalar_type();
    const auto acc = acc_type(dtype);
    // i and f saw c_{t-1}, o saw c_t; inactive steps have zero gate gradients, so held states add nothing.
    const int64_t H = d.H;
    const Tensor dg2 = r.dgx.view({-1, 4 * H});
    // The cell state each step started from, made here: the other cells' backward has no use for it (a
    // [T, B, H] float32 buffer at training's peak).
    const Tensor c_all = cells.contiguous().view({-1, H});
    const Tensor c_prev = step_start_states(cells.contiguous(), c0.to(acc).contiguous(), Tensor(), reverse).view({-1, H});
    const Tensor dxi = dg2.narrow(1, 0, H), dxf = dg2.narrow(1, H, H), dxo = dg2.narrow(1, 3 * H, H);
    Tensor gci, gcf, gco;
    if (!p.full) {
      // p . c is elementwise: the gradient is the sum over steps and batch of dx * c, accumulated in A.
      auto dot_rows = [&](const Tensor& dx, const Tensor& c) {
        return at::sum(at::mul(dx, c), {0}, /*keepdim=*/false, acc).to(dtype);
      };
      gci = dot_rows(dxi, c_prev);
      gcf = dot_rows(dxf, c_prev);
      gco = dot_rows(dxo, c_all);
    } else {
      // x += c @ W^T: dW = dx^T @ c, over all steps at once.
      gci = at::mm(dxi.t().to(acc), c_prev).to(dtype);
      gcf = at::mm(dxf.t().to(acc), c_prev).to(dtype);
      gco = at::mm(dxo.t().to(acc), c_all).to(dtype);
    }
    return {r.grad_input, r.grad_h0, r.grad_c0, r.grad_w_ih, r.grad_w_hh, sum_rows(r.dgx), gci, gcf, gco};
  }
  static void register_impls(torch::Library& m) {
    m.impl("peephole_forward", &forward);
    m.impl("peephole_inference", &inference);
    m.impl("peephole_backward", &backward);
  }
};

}  // namespace fastlstm
