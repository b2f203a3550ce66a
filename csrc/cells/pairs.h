// The *_inference_pair ops (schemas in csrc/schemas.h): a bidirectional layer's two directions in inference
// in one op. On the CPU (Concurrent) they run at once, where one direction's GEMMs and steps are too small to
// occupy the cores (issue 13 item 3): each direction is the cell's own inference op, run on one thread of a
// 2-thread team; inside it, nested parallel regions run inline and MKL runs sequentially, so each direction
// has a core to itself and no per-step barrier or fork/join is shared between them. Python
// (fastlstm.ops.pair_op) calls them only where that measured faster: the CPU, ATen on 2 threads, no gradient
// needed, no transform or compiler active. On CUDA the same ops run the directions one after the other on
// the caller's stream (so that every op has a kernel on every device; Python does not pick them there).
//
// Shapes: each direction's arguments as its inference op takes them (input [T, B, I] shared, *_r the reverse
// direction's; lengths shared) -> the forward direction's results, then the reverse direction's.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <string>
#include <tuple>
#include <typeinfo>

#include "ops.h"

namespace fastlstm {

// f(0) and f(1): with `concurrent`, at once on 2 threads where ATen has exactly 2 and is not already inside a
// parallel region; else one after the other. The caller's thread-local state (inference mode, grad mode, dispatch
// keys) goes with f(1) to the second thread. An argument check's error in either direction is raised with the
// pair op's name and the direction; any other exception (an allocator's out-of-memory error, say) as it was.
template <class F>
void both_directions(bool concurrent, const char* op, const char* inner, const F& f) {
  auto named = [&](int64_t d) {
    try {
      f(d);
    } catch (const c10::Error& e) {
      // The one-direction op's checks raise plain c10::Error (RuntimeError) starting with its name; anything
      // else, a subclass included (its Python type differs), goes on unchanged.
      const std::string msg = e.what_without_backtrace();
      const std::string prefix = std::string("fastlstm::") + inner + ":";
      if (typeid(e) != typeid(c10::Error) || msg.rfind(prefix, 0) != 0) throw;
      TORCH_CHECK(false, "fastlstm::", op, d == 0 ? " (forward direction):" : " (reverse direction):",
                  msg.substr(prefix.size()));
    }
  };
  if (!concurrent || at::get_num_threads() != 2 || at::in_parallel_region()) {
    named(0);
    named(1);
    return;
  }
  const at::ThreadLocalState tls;
  at::parallel_for(0, 2, 1, [&](int64_t d0, int64_t d1) {
    at::ThreadLocalStateGuard guard(tls);
    for (int64_t d = d0; d < d1; ++d) named(d);
  });
}

// The pair op's results: f(false)'s (the forward direction's inference results, a tuple R) then f(true)'s.
template <class R, class F>
auto pair_results(bool concurrent, const char* op, const char* inner, const F& f) {
  R r[2];
  both_directions(concurrent, op, inner, [&](int64_t d) { r[d] = f(d == 1); });
  return std::tuple_cat(r[0], r[1]);
}

template <class Dev, bool Concurrent>
struct PairOps {
  using T3 = std::tuple<Tensor, Tensor, Tensor>;
  using T2 = std::tuple<Tensor, Tensor>;

  // -> (output, h_n, c_n, output_r, h_n_r, c_n_r)
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm(
      const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
      const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, const Tensor& h0_r, const Tensor& c0_r,
      const Tensor& w_ih_r, const Tensor& w_hh_r, const OptTensor& b_ih_r, const OptTensor& b_hh_r,
      const OptTensor& w_hr_r, const OptTensor& lengths) {
    return pair_results<T3>(Concurrent, "lstm_inference_pair", "lstm_inference", [&](bool reverse) {
      return reverse
          ? LstmOps<Dev>::inference(input, h0_r, c0_r, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_hr_r, lengths, true)
          : LstmOps<Dev>::inference(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, false);
    });
  }
  // -> (output, h_n, output_r, h_n_r)
  static std::tuple<Tensor, Tensor, Tensor, Tensor> gru(const Tensor& input, const Tensor& h0, const Tensor& w_ih,
                                                        const Tensor& w_hh, const OptTensor& b_ih,
                                                        const OptTensor& b_hh, const Tensor& h0_r,
                                                        const Tensor& w_ih_r, const Tensor& w_hh_r,
                                                        const OptTensor& b_ih_r, const OptTensor& b_hh_r,
                                                        const OptTensor& lengths) {
    return pair_results<T2>(Concurrent, "gru_inference_pair", "gru_inference", [&](bool reverse) {
      return reverse ? GruOps<Dev>::inference(input, h0_r, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths, true)
                     : GruOps<Dev>::inference(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, false);
    });
  }
  // -> (output, h_n, c_n, output_r, h_n_r, c_n_r)
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> peephole(
      const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
      const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ci, const Tensor& w_cf, const Tensor& w_co,
      const Tensor& h0_r, const Tensor& c0_r, const Tensor& w_ih_r, const Tensor& w_hh_r, const OptTensor& b_ih_r,
      const OptTensor& b_hh_r, const Tensor& w_ci_r, const Tensor& w_cf_r, const Tensor& w_co_r,
      const OptTensor& lengths) {
    return pair_results<T3>(Concurrent, "peephole_inference_pair", "peephole_inference", [&](bool reverse) {
      return reverse ? PeepholeOps<Dev>::inference(input, h0_r, c0_r, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ci_r, w_cf_r,
                                                   w_co_r, lengths, true)
                     : PeepholeOps<Dev>::inference(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, lengths,
                                                   false);
    });
  }
  // -> (output, h_n, c_n, output_r, h_n_r, c_n_r)
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layernorm_lstm(
      const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
      const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& ih_w, const Tensor& ih_b, const Tensor& hh_w,
      const Tensor& hh_b, const Tensor& c_w, const Tensor& c_b, const Tensor& h0_r, const Tensor& c0_r,
      const Tensor& w_ih_r, const Tensor& w_hh_r, const OptTensor& b_ih_r, const OptTensor& b_hh_r,
      const Tensor& ih_w_r, const Tensor& ih_b_r, const Tensor& hh_w_r, const Tensor& hh_b_r, const Tensor& c_w_r,
      const Tensor& c_b_r, const OptTensor& lengths, double eps) {
    return pair_results<T3>(Concurrent, "layernorm_lstm_inference_pair", "layernorm_lstm_inference", [&](bool reverse) {
      return reverse ? LayerNormLstmOps<Dev>::inference(input, h0_r, c0_r, w_ih_r, w_hh_r, b_ih_r, b_hh_r, ih_w_r,
                                                        ih_b_r, hh_w_r, hh_b_r, c_w_r, c_b_r, lengths, true, eps)
                     : LayerNormLstmOps<Dev>::inference(input, h0, c0, w_ih, w_hh, b_ih, b_hh, ih_w, ih_b, hh_w,
                                                        hh_b, c_w, c_b, lengths, false, eps);
    });
  }

  static void register_impls(torch::Library& m) {
    m.impl("lstm_inference_pair", &lstm);
    m.impl("gru_inference_pair", &gru);
    m.impl("peephole_inference_pair", &peephole);
    m.impl("layernorm_lstm_inference_pair", &layernorm_lstm);
  }
};

}  // namespace fastlstm
