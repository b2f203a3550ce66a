// The layer driver's whole-sequence hook (AtenDevice::Sequence, csrc/layer.h) for the persistent CUDA
// kernel: plans a layer (persistent_plan.h), allocates its workspace through ATen (the caching allocator:
// capturable in a CUDA graph) and forms the kernel's framework-free arguments (csrc/cells/sequence.h).
// Shared by the CUDA device and the CPU harness, which differ only in the Runner: where the limits come
// from, whether the path is on, and what runs the steps (the kernel, or persistent.cuh's emulation).
//
// Runner: static bool enabled(const Tensor& input); static int64_t chunk_elems();
//         static bool limits(const Tensor& like, int* sms, size_t* smem_max);
//         template <class Seq, typename S> static void forward(const SeqForwardArgs<S>&, const PersistentPlan&,
//         const Tensor& like) and backward(...) likewise.
#pragma once

#include <ATen/ATen.h>

#include <type_traits>

#include "../layer.h"
#include "dispatch.h"
#include "persistent_plan.h"

namespace fastlstm {
namespace gpu {

template <class Cell, class Runner>
class PersistentSequence {
  using Seq = typename Cell::Seq;

 public:
  // The path is taken when it is on, the cell has a whole-sequence description, the layer has no packed
  // lengths and no projection (both need more than one barrier per step), and the plan fits the device.
  PersistentSequence(const LayerArgs& a, const Dims& d, const typename Cell::Params& params, bool backward)
      : a_(a), d_(d) {
    if constexpr (!std::is_void_v<Seq>) {
      if (!Runner::enabled(a.input) || defined(a.lengths) || defined(a.w_hr) || d.T == 0 || d.B == 0) return;
      if (!Cell::seq_ok(params)) return;
      int sms = 0;
      size_t smem = 0;
      if (!Runner::limits(a.input, &sms, &smem)) return;
      dispatch_storage(a.input.scalar_type(), "fastlstm", [&](auto tag) {
        using S = typename decltype(tag)::type;
        plan_ = persistent_plan<S>(d.B, d.H, Seq::kGates, backward, sms, smem);
      });
    }
  }
  explicit operator bool() const { return plan_.ok; }
  // Inference projects the input this many gate elements at a time, one launch per chunk.
  int64_t chunk_elems() const { return Runner::chunk_elems(); }

  void forward(const SeqForwardCall<Cell>& c) {
    if constexpr (!std::is_void_v<Seq>) {
      const int64_t B = d_.B, H = d_.H, G = d_.G;
      const auto opts = a_.input.options();
      if (!hbuf_.defined()) {
        // hbuf[0] holds h0 for the first launch; later launches find the state where the last one left it.
        hbuf_ = at::zeros({2, plan_.rows, H}, opts);
        hbuf_[0].narrow(0, 0, B).copy_(c.h0);
        if (Seq::kSeparateRec) rec_ = at::empty({B, G}, c.pre.defined() ? opts.dtype(c.pre.scalar_type()) : opts);
      }
      dispatch_storage(a_.input.scalar_type(), "fastlstm", [&](auto tag) {
        using S = typename decltype(tag)::type;
        using A = math::acc_of<S>;
        cells::SeqForwardArgs<S> q{};
        q.w_hh = data_as<const S>(w_hh_);
        q.gates = data_as<S>(c.gates);
        q.t_lo = c.t_lo;
        q.pre = c.pre.defined() ? data_as<A>(c.pre) : nullptr;
        q.gate_slots = c.gates.size(0);
        q.rec = rec_.defined() && !c.pre.defined() ? data_as<S>(rec_) : nullptr;
        q.rec_acc = rec_.defined() && c.pre.defined() ? data_as<A>(rec_) : nullptr;
        q.hbuf = data_as<S>(hbuf_);
        q.out = data_as<S>(c.output);
        q.cells = c.cells.defined() ? data_as<A>(c.cells) : nullptr;
        q.cell_slots = c.cells.defined() ? c.cells.size(0) : 0;
        q.c0 = c.c0.defined() ? data_as<const A>(c.c0) : nullptr;
        q.T = d_.T;
        q.B = B;
        q.H = H;
        q.s0 = c.s0;
        q.s1 = c.s1;
        q.reverse = a_.reverse;
        Cell::seq_forward_extra(q, *c.saved, *c.params);
        Runner::template forward<Seq, S>(q, plan_, a_.input);
      });
    }
  }

  void backward(const SeqBackwardCall<Cell>& c) {
    if constexpr (!std::is_void_v<Seq>) {
      const int64_t B = d_.B, H = d_.H, G = d_.G;
      const auto opts = a_.input.options();
      const Tensor dgbuf = at::zeros({2, plan_.rows, G}, opts);
      const Tensor dh = at::empty({B, H}, opts);
      const Tensor direct = Seq::kDirectDh ? at::empty({B, H}, opts) : Tensor();
      const Tensor dcbuf = Seq::kHasC ? at::empty({2, B, H}, opts.dtype(acc_type(a_.input.scalar_type())))
                                      : Tensor();
      dispatch_storage(a_.input.scalar_type(), "fastlstm", [&](auto tag) {
        using S = typename decltype(tag)::type;
        using A = math::acc_of<S>;
        auto cptr = [](const Tensor& t) { return t.defined() ? data_as<const A>(t) : nullptr; };
        cells::SeqBackwardArgs<S> q{};
        q.w_hh = data_as<const S>(w_hh_);
        q.gates = data_as<const S>(c.gates);
        q.cells = cptr(c.cells);
        q.c0 = cptr(c.c0);
        q.h_prev_all = c.h_prev_all.defined() ? data_as<const S>(c.h_prev_all) : nullptr;
        q.gout = data_as<const S>(c.gout);
        q.grad_h_n = data_as<const S>(c.grad_h_n);
        q.grad_c_n = cptr(c.grad_c_n);
        q.dgx = data_as<S>(c.dgx);
        q.dgh = data_as<S>(c.dgh);
        q.dgbuf = data_as<S>(dgbuf);
        q.dh = data_as<S>(dh);
        q.direct = direct.defined() ? data_as<S>(direct) : nullptr;
        q.dcbuf = dcbuf.defined() ? data_as<A>(dcbuf) : nullptr;
        q.grad_h0 = data_as<S>(c.grad_h0);
        q.grad_c0 = c.grad_c0.defined() ? data_as<A>(c.grad_c0) : nullptr;
        q.T = d_.T;
        q.B = B;
        q.H = H;
        q.reverse = a_.reverse;
        Cell::seq_backward_extra(q, *c.saved, *c.params);
        Runner::template backward<Seq, S>(q, plan_, a_.input);
      });
    }
  }

 private:
  const LayerArgs& a_;
  Dims d_;
  Tensor w_hh_ = a_.w_hh.contiguous();
  PersistentPlan plan_;
  Tensor hbuf_, rec_;
};

}  // namespace gpu
}  // namespace fastlstm
