// The LSTM cell's fused passes (nn.LSTM's cell, gate order i, f, g, o), framework-free: see passes.h for
// how a pass runs on every device, math.h for the gate math.
#pragma once

#include "passes.h"
#include "sequence.h"

namespace fastlstm {
namespace cells {

// Forward step, row b:
//   gates  [B, 4H] S  in: pre-activations (x W_ih^T + b_ih + b_hh + h W_hh^T); out: activated i, f, g, o
//   c_prev [B, H]  A  the previous cell state;  c [B, H] A out: the new one
//   h      [B, H]  S  out: the new (unprojected) hidden state o * tanh(c)
//   pre    [B, 4H] A  or null: the pre-activations in float32 (passes.h, "pre"); gates is then out only
struct LstmForward {
  static constexpr bool kRowReduce = false;
  template <typename S>
  struct Args {
    S* gates;
    const acc_of<S>* c_prev;
    acc_of<S>* c;
    S* h;
    const acc_of<S>* pre;
    std::array<const void*, 5> ptrs() const { return {gates, c_prev, c, h, pre}; }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t b, int64_t H) {
    S* g = a.gates + b * 4 * H;
    const acc_of<S>* cp = a.c_prev + b * H;
    acc_of<S>* c = a.c + b * H;
    S* h = a.h + b * H;
    auto body = [&](const auto* x) {
      e.for_units(H, [&](int64_t j, auto L) {
        FASTLSTM_LANE(L);
        C i, f, gg, o, cn, hn;
        math::cell_forward<C, Act>(L.load(x + j), L.load(x + H + j), L.load(x + 2 * H + j), L.load(x + 3 * H + j),
                                   L.load(cp + j), i, f, gg, o, cn, hn);
        L.store(g + j, i);
        L.store(g + H + j, f);
        L.store(g + 2 * H + j, gg);
        L.store(g + 3 * H + j, o);
        L.store(c + j, cn);
        L.store(h + j, hn);
      });
    };
    with_inputs(a.pre, static_cast<const S*>(a.gates), b * 4 * H, body);
  }
};

// Backward step, row b:
//   gates [B, 4H] S (activated);  c, c_prev [B, H] A;  dh [B, H] S: gradient reaching the unprojected h;
//   dc_next [B, H] A: gradient reaching c from the step after
//   dgates [B, 4H] S out: gradients of the four pre-activations;  dc_prev [B, H] A out
struct LstmBackward {
  static constexpr bool kRowReduce = false;
  template <typename S>
  struct Args {
    const S* gates;
    const acc_of<S>* c;
    const acc_of<S>* c_prev;
    const S* dh;
    const acc_of<S>* dc_next;
    S* dgates;
    acc_of<S>* dc_prev;
    std::array<const void*, 7> ptrs() const { return {gates, c, c_prev, dh, dc_next, dgates, dc_prev}; }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t b, int64_t H) {
    const S* g = a.gates + b * 4 * H;
    S* dg = a.dgates + b * 4 * H;
    const int64_t r = b * H;
    e.for_units(H, [&](int64_t j, auto L) {
      FASTLSTM_LANE(L);
      C di, df, dgg, dout, dcp;
      math::cell_backward<C, Act>(L.load(g + j), L.load(g + H + j), L.load(g + 2 * H + j), L.load(g + 3 * H + j),
                                  L.load(a.c + r + j), L.load(a.c_prev + r + j), L.load(a.dh + r + j),
                                  L.load(a.dc_next + r + j), di, df, dgg, dout, dcp);
      L.store(dg + j, di);
      L.store(dg + H + j, df);
      L.store(dg + 2 * H + j, dgg);
      L.store(dg + 3 * H + j, dout);
      L.store(a.dc_prev + r + j, dcp);
    });
  }
};

// The cell for the whole-sequence kernel (sequence.h): the steps' pass arguments from the sequence's buffers.
// The recurrent product is added into the step's gates before the forward pass; backward's dgates are the
// recurrent product's gradient too.
struct LstmSeq {
  using Fwd = LstmForward;
  using Bwd = LstmBackward;
  static constexpr int kGates = 4;
  static constexpr bool kHasC = true;
  static constexpr bool kSeparateRec = false;
  static constexpr bool kDirectDh = false;
  static constexpr bool kRowPass = false;
  // Processing step s: h_prev [B, H] the state it starts from, h [B, H] out.
  template <typename S>
  FASTLSTM_HOST_DEVICE static typename Fwd::template Args<S> forward(const SeqForwardArgs<S>& q, int64_t s,
                                                                     const S*, S* h) {
    return {q.gates_at(s, 4 * q.H), q.cell_before(s), q.cell_at(s), h, q.pre_at(s, 4 * q.H)};
  }
  // dc_next [B, H]: the gradient reaching c_t from the step after; dg [B, 4H] out (the dgates);
  // dc_prev [B, H] out.
  template <typename S>
  FASTLSTM_HOST_DEVICE static typename Bwd::template Args<S> backward(const SeqBackwardArgs<S>& q, int64_t s,
                                                                      const acc_of<S>* dc_next, S* dg,
                                                                      acc_of<S>* dc_prev) {
    return {q.gates + q.step(s) * 4 * q.B * q.H, q.cell_at(s), q.cell_before(s), q.dh, dc_next, dg, dc_prev};
  }
};

}  // namespace cells
}  // namespace fastlstm
