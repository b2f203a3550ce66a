// The layer-norm LSTM cell for the layer driver (csrc/layer.h) and its ops layernorm_lstm_forward,
// layernorm_lstm_inference, layernorm_lstm_backward (schemas in csrc/schemas.h); the cell and its passes
// are in layernorm_lstm.h. The input term's layer norm runs once for all steps right after the input
// projection (the driver's projection epilogue), and its backward once after the step loop; the recurrent
// term's and c_t's layer norms are row reductions inside the step's fused pass.
#pragma once

#include <torch/library.h>

#include "../layer.h"

namespace fastlstm {

struct LayerNormLstmCell : CellBase {
  static constexpr int kGates = 4;
  static constexpr bool kSeparateRec = true;
  static constexpr bool kProjectEpilogue = true;
  using Seq = cells::LnSeq;  // the CPU's two-phase whole-sequence path (cells::SeqTraits::rows)
  struct Params {
    Tensor ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b;  // [4H] x 4, [H] x 2, S contiguous
    Tensor bias;                                                 // b_ih + b_hh [4H], or undefined
    double eps = 1e-5;
    Tensor bias_acc;  // b_ih + b_hh summed in float32 for float32 pre-activations (Dev::kAccGates), or undefined
  };
  struct Saved {
    Tensor norm_ih, norm_hh, stats;  // [T, B, 4H] S, [T, B, 4H] S, [T, B, 4] A (training only)
    StepSlices norm_hh_at, stats_at;
    static Saved alloc(const Dims& d, const at::TensorOptions& o, bool training) {
      if (!training) return Saved{Tensor(), Tensor(), Tensor(), StepSlices(Tensor()), StepSlices(Tensor())};
      // Zeros, not empty: with sorted lengths the steps skip inactive rows (layer.h's prefix path), and
      // backward's weight-gradient sums multiply these rows by zero gradients, which garbage could make NaN.
      Tensor ni = at::empty({d.T, d.B, d.G}, o), nh = at::zeros({d.T, d.B, d.G}, o);
      Tensor st = at::zeros({d.T, d.B, 4}, o.dtype(acc_type(o.dtype().toScalarType())));
      return Saved{ni, nh, st, StepSlices(nh), StepSlices(st)};
    }
  };
  struct SavedIn {
    Tensor norm_ih, norm_hh, stats;
    // backward's per-step slices of norm_hh and stats (no select() per step); mutable: they move their views
    mutable StepSlices norm_hh_at, stats_at;
    SavedIn(Tensor ni, Tensor nh, Tensor st)
        : norm_ih(std::move(ni)), norm_hh(std::move(nh)), stats(std::move(st)), norm_hh_at(norm_hh), stats_at(stats) {}
  };
  struct Grads {
    Tensor dy;  // [T, B, H] A: the gradient of LN(c_t)
    StepSlices dy_at;
    static Grads alloc(const Dims& d, const at::TensorOptions& o) {
      Tensor dy = at::empty({d.T, d.B, d.H}, o.dtype(acc_type(o.dtype().toScalarType())));
      return Grads{dy, StepSlices(dy)};
    }
  };

  static Params make_params(const Check& chk, const LayerArgs& a, const Tensor& ih_w, const Tensor& ih_b,
                            const Tensor& hh_w, const Tensor& hh_b, const Tensor& c_w, const Tensor& c_b,
                            double eps, int64_t H) {
    chk("ln_ih_w", ih_w, {4 * H});
    chk("ln_ih_b", ih_b, {4 * H});
    chk("ln_hh_w", hh_w, {4 * H});
    chk("ln_hh_b", hh_b, {4 * H});
    chk("ln_c_w", c_w, {H});
    chk("ln_c_b", c_b, {H});
    if (!(eps > 0)) chk.fail("eps", "must be > 0, got " + std::to_string(eps));
    return Params{ih_w.contiguous(), ih_b.contiguous(), hh_w.contiguous(), hh_b.contiguous(),
                  c_w.contiguous(),  c_b.contiguous(),  CellBase::input_bias(a, 0),  eps};
  }
  static Params backward_params(const Check& chk, const Tensor& ih_w, const Tensor& hh_w, const Tensor& c_w,
                                const Tensor& c_b, double eps, int64_t H) {
    chk("ln_ih_w", ih_w, {4 * H});
    chk("ln_hh_w", hh_w, {4 * H});
    chk("ln_c_w", c_w, {H});
    chk("ln_c_b", c_b, {H});
    if (!(eps > 0)) chk.fail("eps", "must be > 0, got " + std::to_string(eps));
    return Params{ih_w.contiguous(), Tensor(), hh_w.contiguous(), Tensor(), c_w.contiguous(), c_b.contiguous(),
                  Tensor(), eps};
  }
  static void check_saved(const Check& chk, const Dims& d, const SavedIn& s) {
    chk("norm_ih", s.norm_ih, {d.T, d.B, d.G});
    chk("norm_hh", s.norm_hh, {d.T, d.B, d.G});
    chk("stats", s.stats, {d.T, d.B, 4}, acc_type(s.norm_ih.defined() ? s.norm_ih.scalar_type() : at::kFloat));
  }
  // The whole-sequence path's layer-norm pointers: training's saved norm_hh and stats (null in inference).
  template <class QF>
  static void seq_forward_extra(QF& q, Saved& sv, const Params& p) {
    using S = std::remove_const_t<std::remove_pointer_t<decltype(q.ln_hh_w)>>;
    using A = std::remove_pointer_t<decltype(q.stats)>;
    q.ln_hh_w = ptr<const S>(p.ln_hh_w);
    q.ln_hh_b = ptr<const S>(p.ln_hh_b);
    q.ln_c_w = ptr<const S>(p.ln_c_w);
    q.ln_c_b = ptr<const S>(p.ln_c_b);
    q.norm = ptr_or_null<S>(sv.norm_hh);
    q.stats = ptr_or_null<A>(sv.stats);
    q.eps = A(p.eps);
  }
  template <class QB>
  static void seq_backward_extra(QB& q, const SavedIn& sv, const Params& p) {
    using S = std::remove_const_t<std::remove_pointer_t<decltype(q.ln_hh_w)>>;
    using A = std::remove_const_t<std::remove_pointer_t<decltype(q.stats)>>;
    q.norm = ptr<const S>(sv.norm_hh);
    q.ln_hh_w = ptr<const S>(p.ln_hh_w);
    q.ln_c_w = ptr<const S>(p.ln_c_w);
    q.ln_c_b = ptr<const S>(p.ln_c_b);
    q.stats = ptr<const A>(sv.stats);
  }
  template <class QB>
  static void seq_backward_grads(QB& q, Grads& g) {
    using A = std::remove_pointer_t<decltype(q.dy)>;
    q.dy = ptr<A>(g.dy);
  }
  // The biases are added after the input term's layer norm, not in the GEMM.
  static Tensor input_bias(const LayerArgs&, const Params&) { return Tensor(); }

  // The input term in place: in g2d [R, 4H] S, or in pre2d [R, 4H] A when defined (g2d then only gives S).
  template <class Dev>
  static void project_epilogue(const Tensor& g2d, const Tensor& pre2d, Saved& sv, int64_t t_lo, int64_t n,
                               const Params& p) {
    const Tensor& x = pre2d.defined() ? pre2d : g2d;
    const int64_t R = x.size(0), H = x.size(1) / 4;
    const Tensor norm = sv.norm_ih.defined() ? sv.norm_ih.narrow(0, t_lo, n) : Tensor();
    const Tensor stats = sv.stats.defined() ? sv.stats.narrow(0, t_lo, n) : Tensor();
    Dev::template run<cells::LnInputNorm>(g2d, R, H, [&](auto tag) {
      using S = typename decltype(tag)::type;
      using A = math::acc_of<S>;
      return cells::LnInputNorm::Args<S>{pre2d.defined() ? nullptr : ptr<S>(g2d),
                                         ptr_or_null<S>(norm),
                                         ptr_or_null<A>(stats),
                                         ptr<const S>(p.ln_ih_w),
                                         ptr<const S>(p.ln_ih_b),
                                         ptr_or_null<const S>(p.bias),
                                         A(p.eps),
                                         ptr_or_null<A>(pre2d),
                                         pre2d.defined() ? ptr_or_null<const A>(p.bias_acc) : nullptr};
    });
  }

  template <class Dev>
  static void forward_step(const ForwardStep<LayerNormLstmCell>& s) {
    const Params& p = *s.params;
    Saved& sv = *s.saved;
    const Tensor norm = sv.norm_hh.defined() ? sv.norm_hh_at[s.t] : Tensor();
    const Tensor stats = sv.stats.defined() ? sv.stats_at[s.t] : Tensor();
    // With float32 pre-activations (s.pre), the recurrent product s.rec is float32 too.
    const bool acc = s.pre.defined();
    Dev::template run<cells::LnForward>(s.gates, s.gates.size(0), s.c.size(1), [&](auto tag) {
      using S = typename decltype(tag)::type;
      using A = math::acc_of<S>;
      return cells::LnForward::Args<S>{ptr<S>(s.gates),
                                       acc ? nullptr : ptr<const S>(s.rec),
                                       ptr_or_null<S>(norm),
                                       ptr<const S>(p.ln_hh_w),
                                       ptr<const S>(p.ln_hh_b),
                                       ptr<const A>(s.c_prev),
                                       ptr<A>(s.c),
                                       ptr<const S>(p.ln_c_w),
                                       ptr<const S>(p.ln_c_b),
                                       ptr<S>(s.h),
                                       ptr_or_null<A>(stats),
                                       A(p.eps),
                                       ptr_or_null<A>(s.pre),
                                       acc ? ptr<const A>(s.rec) : nullptr};
    });
  }

  template <class Dev>
  static void backward_step(const BackwardStep<LayerNormLstmCell>& s) {
    const Params& p = *s.params;
    const Tensor norm = s.saved->norm_hh_at[s.t], stats = s.saved->stats_at[s.t], dy = s.grads->dy_at[s.t];
    Dev::template run<cells::LnBackward>(s.gates, s.gates.size(0), s.c.size(1), [&](auto tag) {
      using S = typename decltype(tag)::type;
      using A = math::acc_of<S>;
      return cells::LnBackward::Args<S>{ptr<const S>(s.gates), ptr<const S>(norm),    ptr<const S>(p.ln_hh_w),
                                        ptr<const A>(s.c),     ptr<const A>(s.c_prev), ptr<const S>(p.ln_c_w),
                                        ptr<const S>(p.ln_c_b), ptr<const A>(stats),  ptr<const S>(s.dh),
                                        ptr<const A>(s.dc),    ptr<S>(s.dgx),         ptr<S>(s.dgh),
                                        ptr<A>(s.dc_prev),     ptr<A>(dy)};
    });
  }
  static void mask_step(const BackwardStep<LayerNormLstmCell>& s, const Tensor& off) {
    s.grads->dy[s.t].masked_fill_(off, 0);
  }

  // The layer norms' parameter gradients in one pass (cells::LnParamGrads), summed in float32 and rounded once:
  // dgx [T, B, 4H] S, dy [T, B, H] A, cells [T, B, H] A -> [14H] S: the biases' (b_ih, b_hh and both layer
  // norms' shifts: all the gradient of the pre-activations) [4H], ln_ih_w's [4H], ln_hh_w's [4H], ln_c_w's
  // [H], ln_c_b's [H].
  template <class Dev>
  static Tensor param_grads(const Tensor& dgx, const SavedIn& sv, const Tensor& dy, const Tensor& cells) {
    const int64_t G = dgx.size(2), H = G / 4, R = dgx.size(0) * dgx.size(1);
    constexpr int64_t kRows = 32;  // rows per chunk: fixed, so the sums are the same on any thread count
    const int64_t chunks = (R + kRows - 1) / kRows;
    const auto acc = acc_type(dgx.scalar_type());
    Tensor part = at::empty({chunks, cells::LnParamGrads::kWidth * H}, dgx.options().dtype(acc));
    const Tensor c = cells.contiguous();
    Dev::template run<cells::LnParamGrads>(dgx, chunks, H, [&](auto tag) {
      using S = typename decltype(tag)::type;
      using A = math::acc_of<S>;
      return cells::LnParamGrads::Args<S>{ptr<const S>(dgx), ptr<const S>(sv.norm_ih), ptr<const S>(sv.norm_hh),
                                          ptr<const A>(dy),  ptr<const A>(c),          ptr<const A>(sv.stats),
                                          ptr<A>(part),      R,                        kRows};
    });
    return at::sum(part, {0}).to(dgx.scalar_type());
  }

  template <class Dev>
  static Tensor input_term_grad(const Tensor& dgx, const SavedIn& sv, Grads& g, const Params& p) {
    const int64_t T = dgx.size(0), B = dgx.size(1), G = dgx.size(2);
    Tensor da = at::empty({T, B, G}, dgx.options());
    if (T * B == 0) return da;
    Dev::template run<cells::LnInputNormBackward>(dgx, T * B, G / 4, [&](auto tag) {
      using S = typename decltype(tag)::type;
      using A = math::acc_of<S>;
      return cells::LnInputNormBackward::Args<S>{ptr<const S>(dgx), ptr<const S>(sv.norm_ih), ptr<const S>(p.ln_ih_w),
                                                 ptr<const A>(sv.stats), ptr<S>(da)};
    });
    return da;
  }
};

template <class Dev>
struct LayerNormLstmOps {
  static LayerArgs args(const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                        const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& lengths,
                        bool reverse) {
    return LayerArgs{input, h0, c0, w_ih, w_hh, b_ih, b_hh, std::nullopt, lengths, reverse};
  }
  static ForwardResult<LayerNormLstmCell> run_forward(
      const char* op, bool training, const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
      const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& ih_w, const Tensor& ih_b,
      const Tensor& hh_w, const Tensor& hh_b, const Tensor& c_w, const Tensor& c_b, const OptTensor& lengths,
      bool reverse, double eps) {
    const Check chk(op, input);
    const LayerArgs a = args(input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse);
    const Dims d = check_layer<LayerNormLstmCell>(chk, a);
    auto p = LayerNormLstmCell::make_params(chk, a, ih_w, ih_b, hh_w, hh_b, c_w, c_b, eps, d.H);
    const auto acc = acc_type(input.scalar_type());
    if (acc_gates_for<Dev>(input.scalar_type(), d.T)) {
      // Where the pre-activations are float32, so is the bias sum (as layer_forward does for the other cells).
      LayerArgs af = a;
      if (defined(a.b_ih)) af.b_ih = a.b_ih->to(acc);
      if (defined(a.b_hh)) af.b_hh = a.b_hh->to(acc);
      p.bias_acc = CellBase::input_bias(af, 0);
    }
    return layer_forward<LayerNormLstmCell, Dev>(chk, a, p, training);
  }
  // -> (output [T,B,H], h_n, c_n [B,H], gates [T,B,4H], cells [T,B,H] A, norm_ih, norm_hh [T,B,4H], stats [T,B,4] A)
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> forward(
      const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
      const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& ih_w, const Tensor& ih_b, const Tensor& hh_w,
      const Tensor& hh_b, const Tensor& c_w, const Tensor& c_b, const OptTensor& lengths, bool reverse, double eps) {
    auto r = run_forward("layernorm_lstm_forward", true, input, h0, c0, w_ih, w_hh, b_ih, b_hh, ih_w, ih_b, hh_w,
                         hh_b, c_w, c_b, lengths, reverse, eps);
    return {r.output, r.h_n, r.c_n, r.gates, r.cells, r.saved.norm_ih, r.saved.norm_hh, r.saved.stats};
  }
  static std::tuple<Tensor, Tensor, Tensor> inference(
      const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
      const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& ih_w, const Tensor& ih_b, const Tensor& hh_w,
      const Tensor& hh_b, const Tensor& c_w, const Tensor& c_b, const OptTensor& lengths, bool reverse, double eps) {
    auto r = run_forward("layernorm_lstm_inference", false, input, h0, c0, w_ih, w_hh, b_ih, b_hh, ih_w, ih_b, hh_w,
                         hh_b, c_w, c_b, lengths, reverse, eps);
    return {r.output, r.h_n, r.c_n};
  }
  // -> (grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias [4H] (of b_ih == of b_hh),
  //     grad_ln_ih_w, grad_ln_ih_b, grad_ln_hh_w, grad_ln_hh_b [4H], grad_ln_c_w, grad_ln_c_b [H])
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
  backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
           const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& ih_w,
           const Tensor& hh_w, const Tensor& c_w, const Tensor& c_b, const OptTensor& lengths, const Tensor& output,
           const Tensor& gates, const Tensor& cells, const Tensor& norm_ih, const Tensor& norm_hh, const Tensor& stats,
           bool reverse, double eps) {
    const Check chk("layernorm_lstm_backward", input);
    const LayerArgs a = args(input, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, lengths, reverse);
    const Dims d = check_layer<LayerNormLstmCell>(chk, a);
    const auto p = LayerNormLstmCell::backward_params(chk, ih_w, hh_w, c_w, c_b, eps, d.H);
    const LayerNormLstmCell::SavedIn sv{norm_ih.contiguous(), norm_hh.contiguous(), stats.contiguous()};
    // check_saved runs inside layer_backward before anything reads these; contiguous() only copies.
    auto r = layer_backward<LayerNormLstmCell, Dev>(chk, a, p, grad_output, grad_h_n, grad_c_n, output, gates, cells,
                                                    sv);
    const Tensor s = LayerNormLstmCell::param_grads<Dev>(r.dgx, sv, r.grads.dy, cells);
    const int64_t G = d.G, H = d.H;
    // Outputs of an op may not alias each other: each its own copy of its slice.
    const Tensor db = s.narrow(0, 0, G).clone();
    return {r.grad_input,
            r.grad_h0,
            r.grad_c0,
            r.grad_w_ih,
            r.grad_w_hh,
            db,
            s.narrow(0, G, G).clone(),
            db.clone(),
            s.narrow(0, 2 * G, G).clone(),
            db.clone(),
            s.narrow(0, 3 * G, H).clone(),
            s.narrow(0, 3 * G + H, H).clone()};
  }
  static void register_impls(torch::Library& m) {
    m.impl("layernorm_lstm_forward", &forward);
    m.impl("layernorm_lstm_inference", &inference);
    m.impl("layernorm_lstm_backward", &backward);
  }
};

}  // namespace fastlstm
