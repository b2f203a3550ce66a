// CUDA implementation of the fastlstm ops: the thin adapter between ATen and the framework-free kernels of
// lstm_kernels.cu. The layer driver (csrc/lstm_layer.h) runs the GEMMs through ATen (cuBLAS, on the
// current stream) and the step loop; this file supplies its two pointwise passes, the device guard, the
// current stream and the dtype mapping. Nothing here synchronises the host, so forward and backward can
// be captured in a CUDA graph.
//
// Deliberately not included: ATen/cuda/CUDAContext.h (it pulls cuBLAS headers, which the CPU wheel that CI
// syntax-checks this file against does not ship). c10/cuda is enough.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../lstm_layer.h"
#include "dispatch.h"
#include "lstm_kernels.h"

namespace fastlstm {
namespace {

using gpu::check_dense;
using gpu::data_as;
using gpu::dispatch_storage;

struct CudaBackend {
  // gates [B,4H] scalar (in place), c_prev [B,H] acc, c_out [B,H] acc, h_out [B,H] scalar.
  static void forward_pointwise(const Tensor& gates, const Tensor& c_prev, const Tensor& c_out,
                                const Tensor& h_out) {
    check_dense({&gates, &c_prev, &c_out, &h_out});
    const int64_t B = gates.size(0), H = c_out.size(1);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(gates.device().index()).stream();
    dispatch_storage(gates.scalar_type(), "lstm_forward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      using acc = gpu::acc_t<scalar_t>;
      C10_CUDA_CHECK(gpu::launch_forward_pointwise<scalar_t>(data_as<scalar_t>(gates), data_as<const acc>(c_prev),
                                                             data_as<acc>(c_out), data_as<scalar_t>(h_out), B, H,
                                                             stream));
    });
  }

  // gates [B,4H] scalar, c/c_prev [B,H] acc, dh [B,H] scalar, dc_next [B,H] acc -> dgates [B,4H] scalar,
  // dc_prev [B,H] acc.
  static void backward_pointwise(const Tensor& gates, const Tensor& c, const Tensor& c_prev, const Tensor& dh,
                                 const Tensor& dc_next, const Tensor& dgates, const Tensor& dc_prev) {
    check_dense({&gates, &c, &c_prev, &dh, &dc_next, &dgates, &dc_prev});
    const int64_t B = gates.size(0), H = c.size(1);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(gates.device().index()).stream();
    dispatch_storage(gates.scalar_type(), "lstm_backward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      using acc = gpu::acc_t<scalar_t>;
      C10_CUDA_CHECK(gpu::launch_backward_pointwise<scalar_t>(
          data_as<const scalar_t>(gates), data_as<const acc>(c), data_as<const acc>(c_prev),
          data_as<const scalar_t>(dh), data_as<const acc>(dc_next), data_as<scalar_t>(dgates), data_as<acc>(dc_prev),
          B, H, stream));
    });
  }
};

// Fails early, before any work, on a dtype the kernels lack.
void check_cuda_dtype(const Tensor& input, const char* name) {
  dispatch_storage(input.scalar_type(), name, [](auto) {});
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_cuda(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& lengths,
    bool reverse) {
  check_cuda_dtype(input, "lstm_forward");
  const c10::cuda::CUDAGuard guard(input.device());
  return lstm_layer_forward<CudaBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, true);
}

std::tuple<Tensor, Tensor, Tensor> lstm_inference_cuda(const Tensor& input, const Tensor& h0, const Tensor& c0,
                                                       const Tensor& w_ih, const Tensor& w_hh,
                                                       const OptTensor& b_ih, const OptTensor& b_hh,
                                                       const OptTensor& w_hr, const OptTensor& lengths,
                                                       bool reverse) {
  check_cuda_dtype(input, "lstm_inference");
  const c10::cuda::CUDAGuard guard(input.device());
  auto r = lstm_layer_forward<CudaBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, false);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cuda(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
    const OptTensor& lengths, const Tensor& output, const Tensor& gates, const Tensor& cells, bool reverse) {
  check_cuda_dtype(input, "lstm_backward");
  const c10::cuda::CUDAGuard guard(input.device());
  return lstm_layer_backward<CudaBackend>(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, w_hr,
                                          lengths, output, gates, cells, reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlstm, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward_cuda);
  m.impl("lstm_inference", &lstm_inference_cuda);
  m.impl("lstm_backward", &lstm_backward_cuda);
}

}  // namespace fastlstm
