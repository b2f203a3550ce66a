// What a whole-sequence (persistent) kernel needs of a cell, framework-free: the raw pointers of one layer's
// step loop, forward and backward, and per cell (LstmSeq in lstm.h, GruSeq in gru.h) how a step's pass
// arguments are formed from them. The persistent CUDA kernel (csrc/cuda/persistent.cuh) owns the loop over
// steps and the recurrent product; the cell's own passes (the same ones the per-step path runs) do the
// pointwise math, so a cell's math is still written once.
//
// Shapes (T steps, B batch, H hidden, G = gates * H; S the storage type, A = acc_of<S>; Mpad = B rounded up
// to the recurrent product's row tile): every buffer is dense row-major.
#pragma once

#include <cstdint>

#include "passes.h"

namespace fastlstm {
namespace cells {

template <typename S>
struct SeqForwardArgs {
  using A = acc_of<S>;
  const S* w_hh;       // [G, H]
  S* gates;            // [s1 - s0, B, G]: steps [t_lo, t_lo + s1 - s0) projected (x W_ih^T + folded bias);
                       // with `pre`: the activated gates only, [gate_slots, B, G]
  int64_t t_lo;        // the first step held in `gates` (or `pre`)
  acc_of<S>* pre;      // [s1 - s0, B, G] A or null: float32 pre-activations (half types on CUDA): the
                       // projection is here, the recurrent product is added here, the passes read it
  int64_t gate_slots;  // with pre: T (training: step t in slot t) or 1 (inference: one scratch slot)
  S* rec;              // [B, G] scratch: h_{t-1} W_hh^T (cells whose pass takes it as a separate operand)
  acc_of<S>* rec_acc;  // [B, G] A scratch: the same in float32, with pre
  S* hbuf;             // [2, Mpad, H]: hbuf[s % 2] holds the state step s starts from; rows >= B stay zero
  S* out;              // [T, B, H] the layer's output
  A* cells;            // [cell_slots, B, H]: step t's cell state in slot t (cell_slots == T) or s % 2 (2)
  int64_t cell_slots;
  const A* c0;         // [B, H]
  S* hn;               // GRU: [T, B, H] (hn_per_step) or [B, H] scratch: W_hn h_{t-1} + b_hn
  bool hn_per_step;
  const S* b_hn;       // GRU: [H] or null
  const acc_of<S>*p_i, *p_f, *p_o;  // diagonal peepholes: [H] A each
  // layer norm (row-pass cells, SeqTraits): the recurrent term's and the cell state's norms, and what training
  // saves for backward (null in inference)
  const S *ln_hh_w, *ln_hh_b, *ln_c_w, *ln_c_b;  // [G], [G], [H], [H]
  S* norm;                                        // [T, B, G]: the normalised recurrent product
  acc_of<S>* stats;                               // [T, B, 4]
  acc_of<S> eps;
  int64_t T, B, H;
  int64_t s0, s1;      // the steps of this launch, in processing order
  bool reverse;

  FASTLSTM_HOST_DEVICE int64_t step(int64_t s) const { return reverse ? T - 1 - s : s; }
  // Step s's gates [B, G] (G = gates * H) and, with pre, its float32 pre-activations (else null).
  FASTLSTM_HOST_DEVICE S* gates_at(int64_t s, int64_t G) const {
    const int64_t slot = pre == nullptr ? step(s) - t_lo : (gate_slots == T ? step(s) : 0);
    return gates + slot * B * G;
  }
  FASTLSTM_HOST_DEVICE A* pre_at(int64_t s, int64_t G) const {
    return pre == nullptr ? nullptr : pre + (step(s) - t_lo) * B * G;
  }
  FASTLSTM_HOST_DEVICE A* cell_at(int64_t s) const {
    return cells + (cell_slots == T ? step(s) : s % 2) * B * H;
  }
  FASTLSTM_HOST_DEVICE const A* cell_before(int64_t s) const { return s == 0 ? c0 : cell_at(s - 1); }
};

template <typename S>
struct SeqBackwardArgs {
  using A = acc_of<S>;
  const S* w_hh;        // [G, H]
  const S* gates;       // [T, B, G] as the forward saved them (activated)
  const A* cells;       // [T, B, H] (cells with c)
  const A* c0;          // [B, H]
  const S* hn;          // GRU: [T, B, H]
  const S* h_prev_all;  // GRU: [T, B, H] the state each step started from
  const S* gout;        // [T, B, H] the gradient of the output
  const S* grad_h_n;    // [B, H]
  const A* grad_c_n;    // [B, H] (cells with c)
  S* dgx;               // [T, B, G] out: gradient of the gates' input term
  S* dgh;               // [T, B, G] out: of the recurrent product (cells with a separate one; else == dgx)
  S* dgbuf;             // [2, Mpad, G] scratch: step s's dgh in dgbuf[s % 2]; rows >= B stay zero
  S* dh;                // [B, H] scratch: the whole gradient reaching h_t
  S* direct;            // [B, H] scratch: the part of dh_{t-1} the pass writes itself (GRU's dh * z)
  A* dcbuf;             // [2, B, H] scratch (cells with c)
  S* grad_h0;           // [B, H] out
  A* grad_c0;           // [B, H] out (cells with c)
  const A *p_i, *p_f, *p_o;  // diagonal peepholes: [H] A each
  // layer norm (row-pass cells): as saved by the forward, and dy [T, B, H] A out: the gradient of LN(c_t)
  const S *norm, *ln_hh_w, *ln_c_w, *ln_c_b;  // [T, B, G], [G], [H], [H]
  const A* stats;                             // [T, B, 4]
  A* dy;
  int64_t T, B, H;
  bool reverse;

  FASTLSTM_HOST_DEVICE int64_t step(int64_t s) const { return reverse ? T - 1 - s : s; }
  // Step s's cell state and the one it started from (c0 for the first step).
  FASTLSTM_HOST_DEVICE const A* cell_at(int64_t s) const { return cells + step(s) * B * H; }
  FASTLSTM_HOST_DEVICE const A* cell_before(int64_t s) const { return s == 0 ? c0 : cell_at(s - 1); }
};

// How a cell's Seq runs on a device. blocks: its passes work on a slice of the units (one barrier a step;
// every device). rows: they need whole rows (the layer norm's row sums), so the CPU runs each step in two
// phases, the recurrent product by units and the pass by batch rows, with a barrier after each; the
// persistent CUDA kernel does not take these.
template <class Seq>
struct SeqTraits {
  static constexpr bool blocks = !Seq::kRowPass;
  static constexpr bool rows = Seq::kRowPass;
};
template <>
struct SeqTraits<void> {
  static constexpr bool blocks = false;
  static constexpr bool rows = false;
};

}  // namespace cells
}  // namespace fastlstm
