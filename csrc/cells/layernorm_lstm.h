// The layer-norm LSTM cell's fused passes (Ba, Kiros & Hinton 2016, section 3.1), framework-free: see
// passes.h. With LN(a; w, b) = (a - mean(a)) / sqrt(var(a) + eps) * w + b (biased variance):
//   pre = LN(W_ih x_t; w_ih, b_ih') + LN(W_hh h_{t-1}; w_hh, b_hh') + b_ih + b_hh     (LN over the 4H vector)
//   i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of pre's four H-chunks
//   c_t = f * c_{t-1} + i * g,   h_t = o * tanh(LN(c_t; w_c, b_c))                   (LN over H)
// The input term is normalised for all steps at once after the input projection (LnInputNorm); the
// recurrent term and c_t inside the step's pass (LnForward), as row reductions. Saved per step for
// backward: the activated gates, c_t, both normalised projections and the row statistics
//   stats [., 4] A: rstd of the input projection, rstd of the recurrent product, mean and rstd of c_t.
#pragma once

#include "passes.h"
#include "sequence.h"

namespace fastlstm {
namespace cells {

// The row statistics (mean, 1 / sqrt(var + eps)) of n values x[0, n), two-pass for accuracy.
template <typename A, class E, typename T>
FASTLSTM_HOST_DEVICE inline void row_stats(const E& e, const T* x, int64_t n, A eps, A& mean, A& rstd) {
  mean = e.sum(n, [&](int64_t j, auto L) { return L.load(x + j); }) / A(n);
  const A m = mean;
  const A var = e.sum(n, [&](int64_t j, auto L) {
                  FASTLSTM_LANE(L);
                  const C d = L.load(x + j) - C(m);
                  return d * d;
                }) /
                A(n);
  rstd = A(1) / math::sqrt_(var + eps);
}

// The input projection's layer norm, rows r of [R, 4H] (R = steps x batch):
//   gates [R, 4H] S  in: x W_ih^T (no bias); out: LN(.; w, b) + bias
//   norm [R, 4H] S out: the normalised projection (training; null otherwise); stats [R, 4] A: [r, 0] = rstd
//   (training; null otherwise); w, b [4H] S the layer norm's weight and bias; bias [4H] S (b_ih + b_hh) or null
//   pre [R, 4H] A or null: in and out instead of gates (float32 pre-activations, passes.h; gates unused);
//   bias_acc [4H] A or null: the bias summed in float32, instead of bias
struct LnInputNorm {
  static constexpr bool kRowReduce = true;
  template <typename S>
  struct Args {
    S* gates;
    S* norm;
    acc_of<S>* stats;
    const S *w, *b, *bias;
    acc_of<S> eps;
    acc_of<S>* pre;
    const acc_of<S>* bias_acc;
    std::array<const void*, 8> ptrs() const { return {gates, norm, stats, w, b, bias, pre, bias_acc}; }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t r, int64_t H) {
    using A = acc_of<S>;
    const int64_t G = 4 * H;
    auto body = [&](auto* g) {
      A mean, rstd;
      row_stats(e, g, G, a.eps, mean, rstd);
      e.for_units(G, [&](int64_t j, auto L) {
        FASTLSTM_LANE(L);
        const C n = (L.load(g + j) - C(mean)) * C(rstd);
        if (a.norm != nullptr) L.store(a.norm + r * G + j, n);
        C y = n * L.load(a.w + j) + L.load(a.b + j);
        if (a.bias_acc != nullptr) {
          y = y + L.load(a.bias_acc + j);
        } else if (a.bias != nullptr) {
          y = y + L.load(a.bias + j);
        }
        L.store(g + j, y);
      });
      if (a.stats != nullptr) e.once([&] { a.stats[r * 4] = rstd; });
    };
    if (a.pre != nullptr) {
      body(a.pre + r * G);  // normalised in place: the pass's own scratch
    } else {
      body(a.gates + r * G);
    }
  }
};

// Forward step, row b:
//   gates [B, 4H] S  in: the input term (LnInputNorm's output); out: activated i, f, g, o
//   rec [B, 4H] S  h_{t-1} W_hh^T;  norm [B, 4H] S out or null: its normalised value (training)
//   w_hh, b_hh [4H] S its layer norm;  c_prev [B, H] A;  c [B, H] A out (before its layer norm)
//   w_c, b_c [H] S the cell state's layer norm;  h [B, H] S out;  stats [B, 4] A out or null: [1..3]
//   pre, rec_acc [B, 4H] A or both null: the input term and h_{t-1} W_hh^T in float32 (passes.h, "pre");
//   gates is then out only, rec unused, and pre keeps the activated o for h (not rounded to S first)
struct LnForward {
  static constexpr bool kRowReduce = true;
  template <typename S>
  struct Args {
    S* gates;
    const S* rec;
    S* norm;
    const S *w_hh, *b_hh;
    const acc_of<S>* c_prev;
    acc_of<S>* c;
    const S *w_c, *b_c;
    S* h;
    acc_of<S>* stats;
    acc_of<S> eps;
    acc_of<S>* pre;
    const acc_of<S>* rec_acc;
    std::array<const void*, 13> ptrs() const {
      return {gates, rec, norm, w_hh, b_hh, c_prev, c, w_c, b_c, h, stats, pre, rec_acc};
    }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t b, int64_t H) {
    using A = acc_of<S>;
    const int64_t G = 4 * H;
    S* g = a.gates + b * G;
    S* nrm = a.norm != nullptr ? a.norm + b * G : nullptr;
    acc_of<S>* c = a.c + b * H;
    // x: the input term in, and where o is kept for h (g itself, or the float32 scratch); rec: h W_hh^T.
    auto body = [&](auto* x, const auto* rec) {
      A mh, rh;
      row_stats(e, rec, G, a.eps, mh, rh);
      e.for_units(H, [&](int64_t j, auto L) {
        FASTLSTM_LANE(L);
        C pre[4];
        for (int q = 0; q < 4; ++q) {
          const int64_t k = q * H + j;
          const C n = (L.load(rec + k) - C(mh)) * C(rh);
          if (nrm != nullptr) L.store(nrm + k, n);
          pre[q] = L.load(x + k) + n * L.load(a.w_hh + k) + L.load(a.b_hh + k);
        }
        C i, f, gg, cn;
        math::peephole_forward_c<C, Act>(pre[0], pre[1], pre[2], L.load(a.c_prev + b * H + j), i, f, gg, cn);
        const C o = Act::sigmoid(pre[3]);
        L.store(g + j, i);
        L.store(g + H + j, f);
        L.store(g + 2 * H + j, gg);
        L.store(g + 3 * H + j, o);
        if (static_cast<const void*>(x) != static_cast<const void*>(g)) L.store(x + 3 * H + j, o);
        L.store(c + j, cn);
      });
      A mc, rc;
      row_stats(e, c, H, a.eps, mc, rc);
      e.for_units(H, [&](int64_t j, auto L) {
        FASTLSTM_LANE(L);
        const C y = (L.load(c + j) - C(mc)) * C(rc) * L.load(a.w_c + j) + L.load(a.b_c + j);
        L.store(a.h + b * H + j, L.load(x + 3 * H + j) * Act::tanh(y));
      });
      if (a.stats != nullptr) {
        e.once([&] {
          a.stats[b * 4 + 1] = rh;
          a.stats[b * 4 + 2] = mc;
          a.stats[b * 4 + 3] = rc;
        });
      }
    };
    if (a.pre != nullptr) {
      body(a.pre + b * G, a.rec_acc + b * G);
    } else {
      body(g, a.rec + b * G);
    }
  }
};

// Backward step, row b:
//   gates [B, 4H] S (activated);  norm [B, 4H] S (the normalised recurrent product);  w_hh [4H] S;
//   c, c_prev [B, H] A;  w_c, b_c [H] S;  stats [B, 4] A;  dh [B, H] S (reaching h);  dc_next [B, H] A
//   dgates [B, 4H] S out: gradient of pre (= of the input term and of the recurrent layer norm's output)
//   drec [B, 4H] S out: of h_{t-1} W_hh^T;  dc_prev [B, H] A out;  dy [B, H] A out: of LN(c_t) (for w_c, b_c)
struct LnBackward {
  static constexpr bool kRowReduce = true;
  template <typename S>
  struct Args {
    const S* gates;
    const S* norm;
    const S* w_hh;
    const acc_of<S>*c, *c_prev;
    const S *w_c, *b_c;
    const acc_of<S>* stats;
    const S* dh;
    const acc_of<S>* dc_next;
    S* dgates;
    S* drec;
    acc_of<S>* dc_prev;
    acc_of<S>* dy;
    std::array<const void*, 14> ptrs() const {
      return {gates, norm, w_hh, c, c_prev, w_c, b_c, stats, dh, dc_next, dgates, drec, dc_prev, dy};
    }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t b, int64_t H) {
    using A = acc_of<S>;
    const int64_t G = 4 * H, r = b * H;
    const S* g = a.gates + b * G;
    const S* nrm = a.norm + b * G;
    S* dg = a.dgates + b * G;
    const A rh = a.stats[b * 4 + 1], mc = a.stats[b * 4 + 2], rc = a.stats[b * 4 + 3];
    // h = o * tanh(y), y = LN(c): the output gate's gradient and dy.
    e.for_units(H, [&](int64_t j, auto L) {
      FASTLSTM_LANE(L);
      const C cn = (L.load(a.c + r + j) - C(mc)) * C(rc);
      const C ty = Act::tanh(cn * L.load(a.w_c + j) + L.load(a.b_c + j));
      const C o = L.load(g + 3 * H + j), d = L.load(a.dh + r + j);
      L.store(dg + 3 * H + j, d * ty * o * (C(1) - o));
      L.store(a.dy + r + j, d * o * (C(1) - ty * ty));
    });
    // Through the layer norm of c: dc = rstd * (dn - mean(dn) - n * mean(dn * n)), dn = dy * w_c.
    const A m1 = e.sum(H, [&](int64_t j, auto L) { return L.load(a.dy + r + j) * L.load(a.w_c + j); }) / A(H);
    const A m2 = e.sum(H, [&](int64_t j, auto L) {
                   FASTLSTM_LANE(L);
                   return L.load(a.dy + r + j) * L.load(a.w_c + j) * ((L.load(a.c + r + j) - C(mc)) * C(rc));
                 }) /
                 A(H);
    e.for_units(H, [&](int64_t j, auto L) {
      FASTLSTM_LANE(L);
      const C cn = (L.load(a.c + r + j) - C(mc)) * C(rc);
      const C dn = L.load(a.dy + r + j) * L.load(a.w_c + j);
      const C dc = L.load(a.dc_next + r + j) + C(rc) * (dn - C(m1) - cn * C(m2));
      C di, df, dgg, dcp;
      math::peephole_backward_c<C, Act>(L.load(g + j), L.load(g + H + j), L.load(g + 2 * H + j),
                                        L.load(a.c_prev + r + j), dc, di, df, dgg, dcp);
      L.store(dg + j, di);
      L.store(dg + H + j, df);
      L.store(dg + 2 * H + j, dgg);
      L.store(a.dc_prev + r + j, dcp);
    });
    // Through the recurrent product's layer norm, over 4H.
    const A n1 = e.sum(G, [&](int64_t j, auto L) { return L.load(dg + j) * L.load(a.w_hh + j); }) / A(G);
    const A n2 =
        e.sum(G, [&](int64_t j, auto L) { return L.load(dg + j) * L.load(a.w_hh + j) * L.load(nrm + j); }) / A(G);
    e.for_units(G, [&](int64_t j, auto L) {
      FASTLSTM_LANE(L);
      L.store(a.drec + b * G + j, C(rh) * (L.load(dg + j) * L.load(a.w_hh + j) - C(n1) - L.load(nrm + j) * C(n2)));
    });
  }
};

// Backward of LnInputNorm, rows r of [R, 4H]: da = rstd * (dn - mean(dn) - n * mean(dn * n)), dn = dgx * w.
//   dgx [R, 4H] S (gradient of the input term);  norm [R, 4H] S;  w [4H] S;  stats [R, 4] A;  da [R, 4H] S out
struct LnInputNormBackward {
  static constexpr bool kRowReduce = true;
  template <typename S>
  struct Args {
    const S* dgx;
    const S* norm;
    const S* w;
    const acc_of<S>* stats;
    S* da;
    std::array<const void*, 5> ptrs() const { return {dgx, norm, w, stats, da}; }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t r, int64_t H) {
    using A = acc_of<S>;
    const int64_t G = 4 * H;
    const S* d = a.dgx + r * G;
    const S* n = a.norm + r * G;
    const A rstd = a.stats[r * 4];
    const A m1 = e.sum(G, [&](int64_t j, auto L) { return L.load(d + j) * L.load(a.w + j); }) / A(G);
    const A m2 = e.sum(G, [&](int64_t j, auto L) { return L.load(d + j) * L.load(a.w + j) * L.load(n + j); }) / A(G);
    e.for_units(G, [&](int64_t j, auto L) {
      FASTLSTM_LANE(L);
      L.store(a.da + r * G + j, C(rstd) * (L.load(d + j) * L.load(a.w + j) - C(m1) - L.load(n + j) * C(m2)));
    });
  }
};

// The layer norms' parameter gradients, one pass over backward's per-row results instead of a product and a
// sum per parameter (5 ATen reductions, ~8 ms of a 95 ms training call at T=50, B=64, H=256 on 2 threads).
// Row k sums the `rows` rows [k * rows, min(R, (k + 1) * rows)), a fixed split, so that the sums do not
// depend on the thread count; the op adds the chunks up:
//   dgx, norm_ih, norm_hh [R, 4H] S: the gradient of the pre-activations, the two normalised projections
//   dy, c [R, H] A: the gradient of LN(c_t), c_t;  stats [R, 4] A (mean and rstd of c_t in [2], [3])
//   part [chunks, 14H] A out: chunk k's sums of dgx (the biases' gradient), dgx * norm_ih (ln_ih_w's),
//   dgx * norm_hh (ln_hh_w's) [4H] each, then dy * (c - mean) * rstd (ln_c_w's) and dy (ln_c_b's) [H] each
struct LnParamGrads {
  // No row sums, but its loops run over 4H units, not H: a CUDA block must own the whole row (as for sums).
  static constexpr bool kRowReduce = true;
  static constexpr int64_t kWidth = 14;  // part's row, in units of H
  template <typename S>
  struct Args {
    const S *dgx, *norm_ih, *norm_hh;
    const acc_of<S>*dy, *c, *stats;
    acc_of<S>* part;
    int64_t R, rows;
    std::array<const void*, 7> ptrs() const { return {dgx, norm_ih, norm_hh, dy, c, stats, part}; }
  };
  template <typename S, class E>
  FASTLSTM_HOST_DEVICE static void row(const E& e, const Args<S>& a, int64_t k, int64_t H) {
    const int64_t G = 4 * H, r0 = k * a.rows, r1 = r0 + a.rows < a.R ? r0 + a.rows : a.R;
    acc_of<S>* p = a.part + k * kWidth * H;
    e.for_units(G, [&](int64_t j, auto L) {
      FASTLSTM_LANE(L);
      C s0 = C(acc_of<S>(0)), s1 = s0, s2 = s0;
      for (int64_t r = r0; r < r1; ++r) {
        const C d = L.load(a.dgx + r * G + j);
        s0 = s0 + d;
        s1 = s1 + d * L.load(a.norm_ih + r * G + j);
        s2 = s2 + d * L.load(a.norm_hh + r * G + j);
      }
      L.store(p + j, s0);
      L.store(p + G + j, s1);
      L.store(p + 2 * G + j, s2);
    });
    e.for_units(H, [&](int64_t j, auto L) {
      FASTLSTM_LANE(L);
      C s3 = C(acc_of<S>(0)), s4 = s3;
      for (int64_t r = r0; r < r1; ++r) {
        const C y = L.load(a.dy + r * H + j);
        s3 = s3 + y * ((L.load(a.c + r * H + j) - C(a.stats[r * 4 + 2])) * C(a.stats[r * 4 + 3]));
        s4 = s4 + y;
      }
      L.store(p + 3 * G + j, s3);
      L.store(p + 3 * G + H + j, s4);
    });
  }
};

// The cell for the CPU's whole-sequence path (sequence.h), in two phases a step (SeqTraits::rows): the
// recurrent product by blocks of units into q.rec (or q.rec_acc), then LnForward / LnBackward on whole rows,
// the per-step path's own passes.
struct LnSeq {
  using Fwd = LnForward;
  using Bwd = LnBackward;
  static constexpr int kGates = 4;
  static constexpr bool kHasC = true;
  static constexpr bool kSeparateRec = true;
  static constexpr bool kDirectDh = false;
  static constexpr bool kRowPass = true;
  template <typename S>
  FASTLSTM_HOST_DEVICE static typename Fwd::template Args<S> forward(const SeqForwardArgs<S>& q, int64_t s,
                                                                     const S*, S* h) {
    const int64_t t = q.step(s), G = 4 * q.H;
    return {q.gates_at(s, G),
            q.rec,
            q.norm == nullptr ? nullptr : q.norm + t * q.B * G,
            q.ln_hh_w,
            q.ln_hh_b,
            q.cell_before(s),
            q.cell_at(s),
            q.ln_c_w,
            q.ln_c_b,
            h,
            q.stats == nullptr ? nullptr : q.stats + t * q.B * 4,
            q.eps,
            q.pre_at(s, G),
            q.rec_acc};
  }
  // dg [B, 4H] out: the gradient of the recurrent product (dgh, which the next step's product reads); the
  // pass writes the gates' (dgx) beside it.
  template <typename S>
  FASTLSTM_HOST_DEVICE static typename Bwd::template Args<S> backward(const SeqBackwardArgs<S>& q, int64_t s,
                                                                      const acc_of<S>* dc_next, S* dg,
                                                                      acc_of<S>* dc_prev) {
    const int64_t t = q.step(s), G = 4 * q.H, BG = q.B * G;
    return {q.gates + t * BG, q.norm + t * BG, q.ln_hh_w, q.cell_at(s), q.cell_before(s), q.ln_c_w, q.ln_c_b,
            q.stats + t * q.B * 4, q.dh, dc_next, q.dgx + t * BG, dg, dc_prev, q.dy + t * q.B * q.H};
  }
};

}  // namespace cells
}  // namespace fastlstm
