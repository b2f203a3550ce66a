// CPU implementation of the fastlstm ops: the shared layer driver (csrc/lstm_layer.h) with CPU pointwise
// passes, vectorized with at::vec for the CPU's instruction set (pointwise.h) and threaded with
// at::parallel_for over batch rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "../lstm_layer.h"
#include "cpu_common.h"

namespace fastlstm {
namespace {

// The recurrent-product hooks (recurrent_addmm, recurrent_backward_mm) come from cpu_common.h, shared with
// the peephole backend.
struct CpuBackend : cpu::RecurrentHooks {
  static void forward_pointwise(const Tensor& gates, const Tensor& c_prev, const Tensor& c_out,
                                const Tensor& h_out) {
    const int64_t B = gates.size(0), H = c_out.size(1);
    const auto fn = cpu::pointwise_kernels().forward;
    const auto dtype = gates.scalar_type();
    void* g = gates.data_ptr();
    const void* cp = c_prev.data_ptr();
    void* c = c_out.data_ptr();
    void* h = h_out.data_ptr();
    at::parallel_for(0, B, cpu::row_grain(H), [&](int64_t b0, int64_t b1) { fn(dtype, g, cp, c, h, b0, b1, H); });
  }

  static void backward_pointwise(const Tensor& gates, const Tensor& c, const Tensor& c_prev, const Tensor& dh,
                                 const Tensor& dc_next, const Tensor& dgates, const Tensor& dc_prev) {
    const int64_t B = gates.size(0), H = c.size(1);
    const auto fn = cpu::pointwise_kernels().backward;
    const auto dtype = gates.scalar_type();
    const void* g = gates.data_ptr();
    const void* cc = c.data_ptr();
    const void* cp = c_prev.data_ptr();
    const void* d = dh.data_ptr();
    const void* dcn = dc_next.data_ptr();
    void* dg = dgates.data_ptr();
    void* dcp = dc_prev.data_ptr();
    at::parallel_for(0, B, cpu::row_grain(H), [&](int64_t b0, int64_t b1) {
      fn(dtype, g, cc, cp, d, dcn, dg, dcp, b0, b1, H);
    });
  }
};

void check_cpu_dtype(const Tensor& input) {
  const auto t = input.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf,
              "fastlstm: the CPU kernels support float32, float64, bfloat16 and float16, got ", t);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_cpu(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& lengths,
    bool reverse) {
  check_cpu_dtype(input);
  const cpu::LayerCall call(input.dim() > 0 ? input.size(0) : 0);
  return lstm_layer_forward<CpuBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, true);
}

std::tuple<Tensor, Tensor, Tensor> lstm_inference_cpu(const Tensor& input, const Tensor& h0, const Tensor& c0,
                                                      const Tensor& w_ih, const Tensor& w_hh,
                                                      const OptTensor& b_ih, const OptTensor& b_hh,
                                                      const OptTensor& w_hr, const OptTensor& lengths,
                                                      bool reverse) {
  check_cpu_dtype(input);
  const cpu::LayerCall call(input.dim() > 0 ? input.size(0) : 0);
  auto r = lstm_layer_forward<CpuBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, false);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
    const OptTensor& lengths, const Tensor& output, const Tensor& gates, const Tensor& cells, bool reverse) {
  check_cpu_dtype(input);
  const cpu::LayerCall call(input.dim() > 0 ? input.size(0) : 0);
  return lstm_layer_backward<CpuBackend>(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, w_hr,
                                         lengths, output, gates, cells, reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlstm, CPU, m) {
  m.impl("lstm_forward", &lstm_forward_cpu);
  m.impl("lstm_inference", &lstm_inference_cpu);
  m.impl("lstm_backward", &lstm_backward_cpu);
}

}  // namespace fastlstm
