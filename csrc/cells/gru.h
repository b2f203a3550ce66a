// The GRU cell's fused passes (nn.GRU's cell, gate order r, z, n), framework-free: see passes.h.
//   r = sigmoid(x_r + h_r), z = sigmoid(x_z + h_z), n = tanh(x_n + r * (W_hn h + b_hn)), h' = (1 - z) n + z h
// The recurrent product enters n inside r * (...), so it stays a separate [B, 3H] operand of the pass
// instead of being accumulated into the gates; the state h is kept in the storage dtype, as nn.GRU does.
#pragma once

#include "passes.h"
#include "sequence.h"

namespace fastlstm {
namespace cells {

// Forward step, row b:
//   gates  [B, 3H] S  in: input pre-activations (b_ih and the r, z parts of b_hh folded in); out: r, z, n
//   gh     [B, 3H] S  h_prev W_hh^T (no bias);  b_hn [H] S or null;  h_prev [B, H] S
//   hn     [B, H]  S  out: W_hn h_prev + b_hn, rounded to S (saved; the cell uses the rounded value, so
//                     backward sees what forward used);  h [B, H] S out
//   pre, gh_acc [B, 3H] A or both null: the input pre-activations and h_prev W_hh^T in float32 (passes.h,
//                     "pre"); gates is then out only, gh unused, and the cell uses hn unrounded (as
//                     cuDNN does; backward's saved hn differs from it by one rounding)
struct GruForward {
  static constexpr bool kRowReduce = false;
  template <typename S>
  struct Args {
    S* gates;
    const S* gh;
    const S* b_hn;
    const S* h_prev;
    S* hn;
    S* h;
    const acc_of<S>* pre;
    const acc_of<S>* gh_acc;
    std::array<const void*, 8> ptrs() const { return {gates, gh, b_hn, h_prev, hn, h, pre, gh_acc}; }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t b, int64_t H) {
    S* g = a.gates + b * 3 * H;
    const int64_t r0 = b * H;
    // x, rh: the input and recurrent pre-activations; rounded (a std::bool_constant): whether the cell
    // reads hn back from S.
    auto body = [&](const auto* x, const auto* rh, auto rounded) {
      e.for_units(H, [&](int64_t j, auto L) {
        FASTLSTM_LANE(L);
        const C bias = a.b_hn != nullptr ? L.load(a.b_hn + j) : C(0);
        const C hn = L.load(rh + 2 * H + j) + bias;
        L.store(a.hn + r0 + j, hn);
        C r, z, n, h;
        math::gru::cell_forward<C, Act>(L.load(x + j), L.load(x + H + j), L.load(x + 2 * H + j), L.load(rh + j),
                                        L.load(rh + H + j), decltype(rounded)::value ? L.load(a.hn + r0 + j) : hn,
                                        L.load(a.h_prev + r0 + j), r, z, n, h);
        L.store(g + j, r);
        L.store(g + H + j, z);
        L.store(g + 2 * H + j, n);
        L.store(a.h + r0 + j, h);
      });
    };
    if (a.pre != nullptr) {
      body(a.pre + b * 3 * H, a.gh_acc + b * 3 * H, std::false_type{});
    } else {
      body(static_cast<const S*>(g), a.gh + b * 3 * H, std::true_type{});
    }
  }
};

// Backward step, row b:
//   gates [B, 3H] S (r, z, n);  hn, h_prev [B, H] S;  dh [B, H] S: the whole gradient reaching h
//   dgx [B, 3H] S out: gradients of the input pre-activations;  dgh [B, 3H] S out: of the recurrent ones
//   (equal to dgx in r, z);  dh_prev [B, H] S out: dh * z, the part of dh_prev that bypasses the GEMM
struct GruBackward {
  static constexpr bool kRowReduce = false;
  template <typename S>
  struct Args {
    const S* gates;
    const S* hn;
    const S* h_prev;
    const S* dh;
    S* dgx;
    S* dgh;
    S* dh_prev;
    std::array<const void*, 7> ptrs() const { return {gates, hn, h_prev, dh, dgx, dgh, dh_prev}; }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t b, int64_t H) {
    const S* g = a.gates + b * 3 * H;
    S* dx = a.dgx + b * 3 * H;
    S* dr = a.dgh + b * 3 * H;
    const int64_t r0 = b * H;
    e.for_units(H, [&](int64_t j, auto L) {
      FASTLSTM_LANE(L);
      C dxr, dxz, dxn, dhn, dhp;
      math::gru::cell_backward<C, Act>(L.load(g + j), L.load(g + H + j), L.load(g + 2 * H + j),
                                       L.load(a.hn + r0 + j), L.load(a.h_prev + r0 + j),
                                       L.load(a.dh + r0 + j), dxr, dxz, dxn, dhn, dhp);
      L.store(dx + j, dxr);
      L.store(dx + H + j, dxz);
      L.store(dx + 2 * H + j, dxn);
      L.store(dr + j, dxr);
      L.store(dr + H + j, dxz);
      L.store(dr + 2 * H + j, dhn);
      L.store(a.dh_prev + r0 + j, dhp);
    });
  }
};

// The cell for the whole-sequence kernel (sequence.h). The recurrent product is the pass's separate operand
// `gh` (q.rec); backward writes the direct part dh * z of dh_{t-1} itself (q.direct).
struct GruSeq {
  using Fwd = GruForward;
  using Bwd = GruBackward;
  static constexpr int kGates = 3;
  static constexpr bool kHasC = false;
  static constexpr bool kSeparateRec = true;
  static constexpr bool kDirectDh = true;
  static constexpr bool kRowPass = false;
  template <typename S>
  FASTLSTM_HOST_DEVICE static typename Fwd::template Args<S> forward(const SeqForwardArgs<S>& q, int64_t s,
                                                                     const S* h_prev, S* h) {
    const int64_t t = q.step(s);
    return {q.gates_at(s, 3 * q.H), q.rec, q.b_hn, h_prev, q.hn + (q.hn_per_step ? t * q.B * q.H : 0), h,
            q.pre_at(s, 3 * q.H), q.rec_acc};
  }
  template <typename S>
  FASTLSTM_HOST_DEVICE static typename Bwd::template Args<S> backward(const SeqBackwardArgs<S>& q, int64_t s,
                                                                      const acc_of<S>*, S* dg, acc_of<S>*) {
    const int64_t t = q.step(s), BH = q.B * q.H;
    return {q.gates + t * 3 * BH, q.hn + t * BH, q.h_prev_all + t * BH, q.dh, q.dgx + t * 3 * BH, dg, q.direct};
  }
};

}  // namespace cells
}  // namespace fastlstm
