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
  // The path is taken when it is on, the cell has a whole-sequence description whose passes run on a block's
  // units (cells::SeqTraits::blocks), the layer has no packed lengths and no projection (both need more than
  // one barrier per step), and the plan fits the device.
  PersistentSequence(const LayerArgs& a, const Dims& d, const typename Cell::Params& params, bool backward)
      : a_(a), d_(d) {
    if constexpr (cells::SeqTraits<Seq>::blocks) {
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
  // The bias stays in the input projection GEMM, as on the per-step path.
  bool adds_bias() const { return false; }

  void forward(const SeqForwardCall<Cell>& c) {
    if constexpr (cells::SeqTraits<Seq>::blocks) {
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
        const cells::SeqForwardArgs<S> q = seq_forward_args<Cell, S>(c, d_, a_.reverse, w_hh_, hbuf_, rec_);
        Runner::template forward<Seq, S>(q, plan_, a_.input);
      });
    }
  }

  void backward(const SeqBackwardCall<Cell>& c) {
    if constexpr (cells::SeqTraits<Seq>::blocks) {
      const int64_t B = d_.B, H = d_.H, G = d_.G;
      const auto opts = a_.input.options();
      const Tensor dgbuf = at::zeros({2, plan_.rows, G}, opts);
      const Tensor dh = at::empty({B, H}, opts);
      const Tensor direct = Seq::kDirectDh ? at::empty({B, H}, opts) : Tensor();
      const Tensor dcbuf = Seq::kHasC ? at::empty({2, B, H}, opts.dtype(acc_type(a_.input.scalar_type())))
                                      : Tensor();
      dispatch_storage(a_.input.scalar_type(), "fastlstm", [&](auto tag) {
        using S = typename decltype(tag)::type;
        const cells::SeqBackwardArgs<S> q =
            seq_backward_args<Cell, S>(c, d_, a_.reverse, w_hh_, dgbuf, dh, direct, dcbuf);
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
