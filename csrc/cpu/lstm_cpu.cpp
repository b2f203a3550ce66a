// CPU implementation of the fastlstm ops: the shared layer driver (csrc/lstm_layer.h) with CPU pointwise
// passes, vectorized with at::vec for the CPU's instruction set (pointwise.h) and threaded with
// at::parallel_for over batch rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include "../lstm_layer.h"
#include "pointwise.h"

namespace fastlstm {
namespace {

// Rows per task: below ~16K gate elements per task, threading costs more than it saves.
inline int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, 4 * H)); }

// The pointwise kernels for the best instruction set ATen itself uses here (it honours ATEN_CPU_CAPABILITY
// and what the CPU supports), chosen once.
const cpu::PointwiseKernels& pointwise_kernels() {
  static const cpu::PointwiseKernels k = [] {
#if defined(__x86_64__) || defined(_M_X64)
    const std::string cap = at::get_cpu_capability();
    if (cap == "AVX512") return cpu::kernels_AVX512();
    if (cap == "AVX2") return cpu::kernels_AVX2();
#endif
    return cpu::kernels_DEFAULT();
  }();
  return k;
}

struct CpuBackend {
  static void forward_pointwise(const Tensor& gates, const Tensor& c_prev, const Tensor& c_out,
                                const Tensor& h_out) {
    const int64_t B = gates.size(0), H = c_out.size(1);
    const auto fn = pointwise_kernels().forward;
    const auto dtype = gates.scalar_type();
    void* g = gates.data_ptr();
    const void* cp = c_prev.data_ptr();
    void* c = c_out.data_ptr();
    void* h = h_out.data_ptr();
    at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) { fn(dtype, g, cp, c, h, b0, b1, H); });
  }

  // Optional hook of the layer driver (see lstm_layer.h): gates [B,4H] += h [B,P] @ w_hh [4H,P]^T for a
  // batch of one, in float32/float64, with contiguous operands. Returns false to leave the step to addmm_.
  static bool recurrent_addmm(const Tensor& gates, const Tensor& h, const Tensor& w_hh) {
    const auto dtype = gates.scalar_type();
    if (gates.size(0) != 1 || (dtype != at::kFloat && dtype != at::kDouble) || !gates.is_contiguous() ||
        !h.is_contiguous() || !w_hh.is_contiguous() || h.scalar_type() != dtype || w_hh.scalar_type() != dtype) {
      return false;
    }
    const int64_t R = w_hh.size(0), K = w_hh.size(1);
    const auto fn = pointwise_kernels().gemv;
    const void* w = w_hh.data_ptr();
    const void* x = h.data_ptr();
    void* y = gates.data_ptr();
    at::parallel_for(0, R, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, K)),
                     [&](int64_t r0, int64_t r1) { fn(dtype, w, x, y, r0, r1, K); });
    return true;
  }

  // Optional hook (lstm_layer.h): dh [B,P] = dgates [B,4H] @ w_hh [4H,P] for a batch of one, float32/float64,
  // contiguous operands. Returns false to leave it to mm_out.
  static bool recurrent_backward_mm(const Tensor& dh, const Tensor& dgates, const Tensor& w_hh) {
    const auto dtype = dgates.scalar_type();
    if (dgates.size(0) != 1 || (dtype != at::kFloat && dtype != at::kDouble) || !dgates.is_contiguous() ||
        !dh.is_contiguous() || !w_hh.is_contiguous() || dh.scalar_type() != dtype || w_hh.scalar_type() != dtype) {
      return false;
    }
    const int64_t R = w_hh.size(0), C = w_hh.size(1);
    const auto fn = pointwise_kernels().gemv_t;
    const void* w = w_hh.data_ptr();
    const void* a = dgates.data_ptr();
    void* y = dh.data_ptr();
    at::parallel_for(0, C, std::max<int64_t>(16, 65536 / std::max<int64_t>(1, R)),
                     [&](int64_t c0, int64_t c1) { fn(dtype, w, a, y, c0, c1, R, C); });
    return true;
  }

  static void backward_pointwise(const Tensor& gates, const Tensor& c, const Tensor& c_prev, const Tensor& dh,
                                 const Tensor& dc_next, const Tensor& dgates, const Tensor& dc_prev) {
    const int64_t B = gates.size(0), H = c.size(1);
    const auto fn = pointwise_kernels().backward;
    const auto dtype = gates.scalar_type();
    const void* g = gates.data_ptr();
    const void* cc = c.data_ptr();
    const void* cp = c_prev.data_ptr();
    const void* d = dh.data_ptr();
    const void* dcn = dc_next.data_ptr();
    void* dg = dgates.data_ptr();
    void* dcp = dc_prev.data_ptr();
    at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
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
  return lstm_layer_forward<CpuBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, true);
}

std::tuple<Tensor, Tensor, Tensor> lstm_inference_cpu(const Tensor& input, const Tensor& h0, const Tensor& c0,
                                                      const Tensor& w_ih, const Tensor& w_hh,
                                                      const OptTensor& b_ih, const OptTensor& b_hh,
                                                      const OptTensor& w_hr, const OptTensor& lengths,
                                                      bool reverse) {
  check_cpu_dtype(input);
  auto r = lstm_layer_forward<CpuBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, false);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
    const OptTensor& lengths, const Tensor& output, const Tensor& gates, const Tensor& cells, bool reverse) {
  check_cpu_dtype(input);
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
