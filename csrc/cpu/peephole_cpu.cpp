// CPU implementation of the peephole-LSTM ops (issue 6): the shared driver (csrc/peephole_layer.h) with the
// LSTM backend's CPU machinery (cpu_common.h): ISA-dispatched row kernels over the shared peephole cell math
// (csrc/lstm_math.h, kernels in pointwise_impl.h), threaded with at::parallel_for over batch rows, and the
// same recurrent-product hooks.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../peephole_layer.h"
#include "cpu_common.h"

namespace fastlstm {
namespace {

// Runs fn(b0, b1) over the row ranges of a [B, ...] pass, threaded as lstm_cpu.cpp's passes are.
template <typename F>
void for_row_ranges(const Tensor& gates, int64_t H, const F& fn) {
  at::parallel_for(0, gates.size(0), cpu::row_grain(H), fn);
}

// The pointwise passes are the ISA-dispatched row kernels of pointwise.h (the same fast activations as the
// LSTM's); the recurrent-product hooks are the LSTM backend's (cpu_common.h).
struct CpuPeepholeBackend : cpu::RecurrentHooks {
  static void peephole_forward_diag(const Tensor& gates, const Tensor& c_prev, const Tensor& p_i,
                                    const Tensor& p_f, const Tensor& p_o, const Tensor& c_out,
                                    const Tensor& h_out) {
    const auto fn = cpu::pointwise_kernels().peephole.forward_diag;
    const auto dtype = gates.scalar_type();
    const int64_t H = c_out.size(1);
    void* g = gates.data_ptr();
    const void *cp = c_prev.data_ptr(), *pi = p_i.data_ptr(), *pf = p_f.data_ptr(), *po = p_o.data_ptr();
    void* c = c_out.data_ptr();
    void* h = h_out.data_ptr();
    for_row_ranges(gates, H, [&](int64_t b0, int64_t b1) { fn(dtype, g, cp, pi, pf, po, c, h, b0, b1, H); });
  }

  static void peephole_forward_c(const Tensor& gates, const Tensor& c_prev, const Tensor& c_out) {
    const auto fn = cpu::pointwise_kernels().peephole.forward_c;
    const auto dtype = gates.scalar_type();
    const int64_t H = c_out.size(1);
    void* g = gates.data_ptr();
    const void* cp = c_prev.data_ptr();
    void* c = c_out.data_ptr();
    for_row_ranges(gates, H, [&](int64_t b0, int64_t b1) { fn(dtype, g, cp, c, b0, b1, H); });
  }

  static void peephole_forward_h(const Tensor& gates, const Tensor& c, const Tensor& h_out) {
    const auto fn = cpu::pointwise_kernels().peephole.forward_h;
    const auto dtype = gates.scalar_type();
    const int64_t H = c.size(1);
    void* g = gates.data_ptr();
    const void* cc = c.data_ptr();
    void* h = h_out.data_ptr();
    for_row_ranges(gates, H, [&](int64_t b0, int64_t b1) { fn(dtype, g, cc, h, b0, b1, H); });
  }

  static void peephole_backward_diag(const Tensor& gates, const Tensor& c, const Tensor& c_prev,
                                     const Tensor& p_i, const Tensor& p_f, const Tensor& p_o, const Tensor& dh,
                                     const Tensor& dc_next, const Tensor& dgates, const Tensor& dc_prev) {
    const auto fn = cpu::pointwise_kernels().peephole.backward_diag;
    const auto dtype = gates.scalar_type();
    const int64_t H = c.size(1);
    const void *g = gates.data_ptr(), *cc = c.data_ptr(), *cp = c_prev.data_ptr();
    const void *pi = p_i.data_ptr(), *pf = p_f.data_ptr(), *po = p_o.data_ptr();
    const void *d = dh.data_ptr(), *dcn = dc_next.data_ptr();
    void* dg = dgates.data_ptr();
    void* dcp = dc_prev.data_ptr();
    for_row_ranges(gates, H, [&](int64_t b0, int64_t b1) {
      fn(dtype, g, cc, cp, pi, pf, po, d, dcn, dg, dcp, b0, b1, H);
    });
  }

  static void peephole_backward_h(const Tensor& gates, const Tensor& c, const Tensor& dh, const Tensor& dc_next,
                                  const Tensor& dgates, const Tensor& dc_out) {
    const auto fn = cpu::pointwise_kernels().peephole.backward_h;
    const auto dtype = gates.scalar_type();
    const int64_t H = c.size(1);
    const void *g = gates.data_ptr(), *cc = c.data_ptr(), *d = dh.data_ptr(), *dcn = dc_next.data_ptr();
    void* dg = dgates.data_ptr();
    void* dc = dc_out.data_ptr();
    for_row_ranges(gates, H, [&](int64_t b0, int64_t b1) { fn(dtype, g, cc, d, dcn, dg, dc, b0, b1, H); });
  }

  static void peephole_backward_c(const Tensor& gates, const Tensor& c_prev, const Tensor& dc,
                                  const Tensor& dgates, const Tensor& dc_prev) {
    const auto fn = cpu::pointwise_kernels().peephole.backward_c;
    const auto dtype = gates.scalar_type();
    const int64_t H = c_prev.size(1);
    const void *g = gates.data_ptr(), *cp = c_prev.data_ptr(), *dcv = dc.data_ptr();
    void* dg = dgates.data_ptr();
    void* dcp = dc_prev.data_ptr();
    for_row_ranges(gates, H, [&](int64_t b0, int64_t b1) { fn(dtype, g, cp, dcv, dg, dcp, b0, b1, H); });
  }
};

void check_cpu_dtype(const Tensor& input) {
  const auto t = input.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf,
              "fastlstm: the CPU kernels support float32, float64, bfloat16 and float16, got ", t);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> peephole_forward_cpu(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ci, const Tensor& w_cf, const Tensor& w_co,
    const OptTensor& lengths, bool reverse) {
  check_cpu_dtype(input);
  const cpu::LayerCall call(input.dim() > 0 ? input.size(0) : 0);
  return peephole_layer_forward<CpuPeepholeBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co,
                                                    lengths, reverse, /*training=*/true);
}

std::tuple<Tensor, Tensor, Tensor> peephole_inference_cpu(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ci, const Tensor& w_cf, const Tensor& w_co,
    const OptTensor& lengths, bool reverse) {
  check_cpu_dtype(input);
  const cpu::LayerCall call(input.dim() > 0 ? input.size(0) : 0);
  auto r = peephole_layer_forward<CpuPeepholeBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co,
                                                      lengths, reverse, /*training=*/false);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> peephole_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& w_ci,
    const Tensor& w_cf, const Tensor& w_co, const OptTensor& lengths, const Tensor& output, const Tensor& gates,
    const Tensor& cells, bool reverse) {
  check_cpu_dtype(input);
  const cpu::LayerCall call(input.dim() > 0 ? input.size(0) : 0);
  return peephole_layer_backward<CpuPeepholeBackend>(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh,
                                                     w_ci, w_cf, w_co, lengths, output, gates, cells, reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlstm, CPU, m) {
  m.impl("peephole_forward", &peephole_forward_cpu);
  m.impl("peephole_inference", &peephole_inference_cpu);
  m.impl("peephole_backward", &peephole_backward_cpu);
}

}  // namespace fastlstm
