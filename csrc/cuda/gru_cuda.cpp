// CUDA implementation of the fastlstm GRU ops: the thin adapter between ATen and the framework-free kernels
// of gru_kernels.cu, on the pattern of lstm_cuda.cpp. The layer driver (csrc/gru_layer.h) runs the GEMMs
// through ATen (cuBLAS, on the current stream) and the step loop; this file supplies its two pointwise
// passes, the device guard, the current stream and the dtype mapping. Nothing here synchronises the host.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../gru_layer.h"
#include "dispatch.h"
#include "gru_kernels.h"

namespace fastlstm {
namespace {

using gpu::check_dense;
using gpu::data_as;
using gpu::dispatch_storage;

struct CudaGruBackend {
  // gates [B,3H] (in place), gh [B,3H], b_hn [H] or undefined, h_prev/hn_out/h_out [B,H]; one dtype.
  static void gru_forward_pointwise(const Tensor& gates, const Tensor& gh, const Tensor& b_hn,
                                    const Tensor& h_prev, const Tensor& hn_out, const Tensor& h_out) {
    check_dense({&gates, &gh, &h_prev, &hn_out, &h_out});
    if (b_hn.defined()) check_dense({&b_hn});
    const int64_t B = gates.size(0), H = h_out.size(1);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(gates.device().index()).stream();
    dispatch_storage(gates.scalar_type(), "gru_forward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      C10_CUDA_CHECK(gpu::launch_gru_forward_pointwise<scalar_t>(
          data_as<scalar_t>(gates), data_as<const scalar_t>(gh),
          b_hn.defined() ? data_as<const scalar_t>(b_hn) : nullptr, data_as<const scalar_t>(h_prev),
          data_as<scalar_t>(hn_out), data_as<scalar_t>(h_out), B, H, stream));
    });
  }

  // gates [B,3H], hn/h_prev/dh_next/gout [B,H] -> dgx/dgh [B,3H], dh_prev [B,H]; one dtype.
  static void gru_backward_pointwise(const Tensor& gates, const Tensor& hn, const Tensor& h_prev,
                                     const Tensor& dh_next, const Tensor& gout, const Tensor& dgx,
                                     const Tensor& dgh, const Tensor& dh_prev) {
    check_dense({&gates, &hn, &h_prev, &dh_next, &gout, &dgx, &dgh, &dh_prev});
    const int64_t B = gates.size(0), H = hn.size(1);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(gates.device().index()).stream();
    dispatch_storage(gates.scalar_type(), "gru_backward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      C10_CUDA_CHECK(gpu::launch_gru_backward_pointwise<scalar_t>(
          data_as<const scalar_t>(gates), data_as<const scalar_t>(hn), data_as<const scalar_t>(h_prev),
          data_as<const scalar_t>(dh_next), data_as<const scalar_t>(gout), data_as<scalar_t>(dgx),
          data_as<scalar_t>(dgh), data_as<scalar_t>(dh_prev), B, H, stream));
    });
  }
};

// Fails early, before any work, on a dtype the kernels lack.
void check_gru_cuda_dtype(const Tensor& input, const char* name) {
  dispatch_storage(input.scalar_type(), name, [](auto) {});
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward_cuda(const Tensor& input, const Tensor& h0,
                                                            const Tensor& w_ih, const Tensor& w_hh,
                                                            const OptTensor& b_ih, const OptTensor& b_hh,
                                                            const OptTensor& lengths, bool reverse) {
  check_gru_cuda_dtype(input, "gru_forward");
  const c10::cuda::CUDAGuard guard(input.device());
  return gru_layer_forward<CudaGruBackend>(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, true);
}

std::tuple<Tensor, Tensor> gru_inference_cuda(const Tensor& input, const Tensor& h0, const Tensor& w_ih,
                                              const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                              const OptTensor& lengths, bool reverse) {
  check_gru_cuda_dtype(input, "gru_inference");
  const c10::cuda::CUDAGuard guard(input.device());
  auto r = gru_layer_forward<CudaGruBackend>(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, false);
  return {std::get<0>(r), std::get<1>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward_cuda(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& h0, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& lengths, const Tensor& output, const Tensor& gates, const Tensor& hn,
    bool reverse) {
  check_gru_cuda_dtype(input, "gru_backward");
  const c10::cuda::CUDAGuard guard(input.device());
  return gru_layer_backward<CudaGruBackend>(grad_output, grad_h_n, input, h0, w_ih, w_hh, lengths, output, gates,
                                            hn, reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlstm, CUDA, m) {
  m.impl("gru_forward", &gru_forward_cuda);
  m.impl("gru_inference", &gru_inference_cuda);
  m.impl("gru_backward", &gru_backward_cuda);
}

}  // namespace fastlstm
