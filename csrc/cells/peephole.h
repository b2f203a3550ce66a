// The peephole-LSTM cell's fused passes, framework-free: see passes.h, and math.h ("Peephole LSTM") for the
// cell and why the full mode splits a step into two halves around GEMMs on the cell state.
// Rows of [B, 4H] gates (i, f, g, o) in S; cell states and their gradients [B, H] in A; h and dh [B, H] in S;
// diagonal peephole weights p_i, p_f, p_o [H] in A. The forward passes' optional `pre` [B, 4H] A holds the
// pre-activations in float32 instead of gates (passes.h, "pre"); gates is then out only.
#pragma once

#include "passes.h"
#include "sequence.h"

namespace fastlstm {
namespace cells {

// Diagonal mode, forward: gates pre-activations without the peephole terms in, activated out.
struct PeepholeForwardDiag {
  static constexpr bool kRowReduce = false;
  template <typename S>
  struct Args {
    S* gates;
    const acc_of<S>* c_prev;
    const acc_of<S>*p_i, *p_f, *p_o;
    acc_of<S>* c;
    S* h;
    const acc_of<S>* pre;
    std::array<const void*, 8> ptrs() const { return {gates, c_prev, p_i, p_f, p_o, c, h, pre}; }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t b, int64_t H) {
    S* g = a.gates + b * 4 * H;
    const int64_t r = b * H;
    auto body = [&](const auto* x) {
      e.for_units(H, [&](int64_t j, auto L) {
        FASTLSTM_LANE(L);
        C i, f, gg, o, cn, hn;
        math::peephole_cell_forward<C, Act>(L.load(x + j), L.load(x + H + j), L.load(x + 2 * H + j),
                                            L.load(x + 3 * H + j), L.load(a.c_prev + r + j), L.load(a.p_i + j),
                                            L.load(a.p_f + j), L.load(a.p_o + j), i, f, gg, o, cn, hn);
        L.store(g + j, i);
        L.store(g + H + j, f);
        L.store(g + 2 * H + j, gg);
        L.store(g + 3 * H + j, o);
        L.store(a.c + r + j, cn);
        L.store(a.h + r + j, hn);
      });
    };
    with_inputs(a.pre, static_cast<const S*>(a.gates), b * 4 * H, body);
  }
};

// Full mode, forward, first half: i, f (peephole terms already in), g and the new cell state; o untouched.
struct PeepholeForwardC {
  static constexpr bool kRowReduce = false;
  template <typename S>
  struct Args {
    S* gates;
    const acc_of<S>* c_prev;
    acc_of<S>* c;
    const acc_of<S>* pre;
    std::array<const void*, 4> ptrs() const { return {gates, c_prev, c, pre}; }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t b, int64_t H) {
    S* g = a.gates + b * 4 * H;
    const int64_t r = b * H;
    auto body = [&](const auto* x) {
      e.for_units(H, [&](int64_t j, auto L) {
        FASTLSTM_LANE(L);
        C i, f, gg, cn;
        math::peephole_forward_c<C, Act>(L.load(x + j), L.load(x + H + j), L.load(x + 2 * H + j),
                                         L.load(a.c_prev + r + j), i, f, gg, cn);
        L.store(g + j, i);
        L.store(g + H + j, f);
        L.store(g + 2 * H + j, gg);
        L.store(a.c + r + j, cn);
      });
    };
    with_inputs(a.pre, static_cast<const S*>(a.gates), b * 4 * H, body);
  }
};

// Full mode, forward, second half: o (its peephole term on the new cell state already in) and h.
struct PeepholeForwardH {
  static constexpr bool kRowReduce = false;
  template <typename S>
  struct Args {
    S* gates;
    const acc_of<S>* c;
    S* h;
    const acc_of<S>* pre;
    std::array<const void*, 4> ptrs() const { return {gates, c, h, pre}; }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t b, int64_t H) {
    S* go = a.gates + b * 4 * H + 3 * H;
    const int64_t r = b * H;
    auto body = [&](const auto* xo) {
      e.for_units(H, [&](int64_t j, auto L) {
        FASTLSTM_LANE(L);
        C o, hn;
        math::peephole_forward_h<C, Act>(L.load(xo + j), L.load(a.c + r + j), o, hn);
        L.store(go + j, o);
        L.store(a.h + r + j, hn);
      });
    };
    with_inputs(a.pre, static_cast<const S*>(a.gates), b * 4 * H + 3 * H, body);
  }
};

// Diagonal mode, backward: all four pre-activation gradients and dc_prev, the peephole paths included.
struct PeepholeBackwardDiag {
  static constexpr bool kRowReduce = false;
  template <typename S>
  struct Args {
    const S* gates;
    const acc_of<S>*c, *c_prev;
    const acc_of<S>*p_i, *p_f, *p_o;
    const S* dh;
    const acc_of<S>* dc_next;
    S* dgates;
    acc_of<S>* dc_prev;
    std::array<const void*, 10> ptrs() const { return {gates, c, c_prev, p_i, p_f, p_o, dh, dc_next, dgates, dc_prev}; }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t b, int64_t H) {
    const S* g = a.gates + b * 4 * H;
    S* dg = a.dgates + b * 4 * H;
    const int64_t r = b * H;
    e.for_units(H, [&](int64_t j, auto L) {
      FASTLSTM_LANE(L);
      C di, df, dgg, dout, dcp;
      math::peephole_cell_backward<C, Act>(L.load(g + j), L.load(g + H + j), L.load(g + 2 * H + j),
                                           L.load(g + 3 * H + j), L.load(a.c + r + j), L.load(a.c_prev + r + j),
                                           L.load(a.p_i + j), L.load(a.p_f + j), L.load(a.p_o + j),
                                           L.load(a.dh + r + j), L.load(a.dc_next + r + j), di, df, dgg, dout,
                                           dcp);
      L.store(dg + j, di);
      L.store(dg + H + j, df);
      L.store(dg + 2 * H + j, dgg);
      L.store(dg + 3 * H + j, dout);
      L.store(a.dc_prev + r + j, dcp);
    });
  }
};

// Full mode, backward, second half (runs first): dxo into dgates' o slice, and dc = dc_next + the
// gradient through h (the o peephole path is added by a GEMM after it).
struct PeepholeBackwardH {
  static constexpr bool kRowReduce = false;
  template <typename S>
  struct Args {
    const S* gates;
    const acc_of<S>* c;
    const S* dh;
    const acc_of<S>* dc_next;
    S* dgates;
    acc_of<S>* dc;
    std::array<const void*, 6> ptrs() const { return {gates, c, dh, dc_next, dgates, dc}; }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t b, int64_t H) {
    const S* go = a.gates + b * 4 * H + 3 * H;
    S* dgo = a.dgates + b * 4 * H + 3 * H;
    const int64_t r = b * H;
    e.for_units(H, [&](int64_t j, auto L) {
      FASTLSTM_LANE(L);
      C dout, dcv;
      math::peephole_backward_h<C, Act>(L.load(go + j), L.load(a.c + r + j), L.load(a.dh + r + j),
                                        L.load(a.dc_next + r + j), dout, dcv);
      L.store(dgo + j, dout);
      L.store(a.dc + r + j, dcv);
    });
  }
};

// Full mode, backward, first half: from the complete dc, the i, f, g gradients and dc_prev through the
// cell update (the i, f peephole paths are added by a GEMM after it).
struct PeepholeBackwardC {
  static constexpr bool kRowReduce = false;
  template <typename S>
  struct Args {
    const S* gates;
    const acc_of<S>* c_prev;
    const acc_of<S>* dc;
    S* dgates;
    acc_of<S>* dc_prev;
    std::array<const void*, 5> ptrs() const { return {gates, c_prev, dc, dgates, dc_prev}; }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t b, int64_t H) {
    const S* g = a.gates + b * 4 * H;
    S* dg = a.dgates + b * 4 * H;
    const int64_t r = b * H;
    e.for_units(H, [&](int64_t j, auto L) {
      FASTLSTM_LANE(L);
      C di, df, dgg, dcp;
      math::peephole_backward_c<C, Act>(L.load(g + j), L.load(g + H + j), L.load(g + 2 * H + j),
                                        L.load(a.c_prev + r + j), L.load(a.dc + r + j), di, df, dgg, dcp);
      L.store(dg + j, di);
      L.store(dg + H + j, df);
      L.store(dg + 2 * H + j, dgg);
      L.store(a.dc_prev + r + j, dcp);
    });
  }
};

// The diagonal-peephole cell for the whole-sequence kernel (sequence.h): the LSTM's, with the peephole
// vectors. Full peepholes need c @ W (a matrix over all units) inside the step: not a block's slice.
struct PeepholeSeq {
  using Fwd = PeepholeForwardDiag;
  using Bwd = PeepholeBackwardDiag;
  static constexpr int kGates = 4;
  static constexpr bool kHasC = true;
  static constexpr bool kSeparateRec = false;
  static constexpr bool kDirectDh = false;
  static constexpr bool kRowPass = false;
  template <typename S>
  FASTLSTM_HOST_DEVICE static typename Fwd::template Args<S> forward(const SeqForwardArgs<S>& q, int64_t s,
                                                                     const S*, S* h) {
    return {q.gates_at(s, 4 * q.H), q.cell_before(s), q.p_i, q.p_f, q.p_o, q.cell_at(s), h, q.pre_at(s, 4 * q.H)};
  }
  template <typename S>
  FASTLSTM_HOST_DEVICE static typename Bwd::template Args<S> backward(const SeqBackwardArgs<S>& q, int64_t s,
                                                                      const acc_of<S>* dc_next, S* dg,
                                                                      acc_of<S>* dc_prev) {
    return {q.gates + q.step(s) * 4 * q.B * q.H, q.cell_at(s), q.cell_before(s), q.p_i, q.p_f, q.p_o, q.dh,
            dc_next, dg, dc_prev};
  }
};

}  // namespace cells
}  // namespace fastlstm
