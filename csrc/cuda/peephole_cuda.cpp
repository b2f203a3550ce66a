// CUDA implementation of the peephole-LSTM ops (issue 6): the thin adapter between ATen and the framework-
// free kernels of peephole_kernels.cu, in the pattern of lstm_cuda.cpp. The shared driver
// (csrc/peephole_layer.h) runs the GEMMs through ATen (cuBLAS, current stream) and the step loop; this file
// supplies its pointwise passes, the device guard, the current stream and the dtype mapping. Nothing here
// synchronises the host.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../peephole_layer.h"
#include "dispatch.h"
#include "peephole_kernels.h"

namespace fastlstm {
namespace {

using gpu::check_dense;
using gpu::data_as;
using gpu::dispatch_storage;

cudaStream_t stream_of(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

// Shapes and roles as in the Backend contract of csrc/peephole_layer.h.
struct CudaPeepholeBackend {
  static void peephole_forward_diag(const Tensor& gates, const Tensor& c_prev, const Tensor& p_i, const Tensor& p_f,
                                    const Tensor& p_o, const Tensor& c_out, const Tensor& h_out) {
    check_dense({&gates, &c_prev, &p_i, &p_f, &p_o, &c_out, &h_out});
    const int64_t B = gates.size(0), H = c_out.size(1);
    dispatch_storage(gates.scalar_type(), "peephole_forward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      using acc = gpu::acc_t<scalar_t>;
      C10_CUDA_CHECK(gpu::launch_peephole_forward_diag<scalar_t>(
          data_as<scalar_t>(gates), data_as<const acc>(c_prev), data_as<const acc>(p_i), data_as<const acc>(p_f),
          data_as<const acc>(p_o), data_as<acc>(c_out), data_as<scalar_t>(h_out), B, H, stream_of(gates)));
    });
  }

  static void peephole_forward_c(const Tensor& gates, const Tensor& c_prev, const Tensor& c_out) {
    check_dense({&gates, &c_prev, &c_out});
    const int64_t B = gates.size(0), H = c_out.size(1);
    dispatch_storage(gates.scalar_type(), "peephole_forward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      using acc = gpu::acc_t<scalar_t>;
      C10_CUDA_CHECK(gpu::launch_peephole_forward_c<scalar_t>(data_as<scalar_t>(gates), data_as<const acc>(c_prev),
                                                              data_as<acc>(c_out), B, H, stream_of(gates)));
    });
  }

  static void peephole_forward_h(const Tensor& gates, const Tensor& c, const Tensor& h_out) {
    check_dense({&gates, &c, &h_out});
    const int64_t B = gates.size(0), H = c.size(1);
    dispatch_storage(gates.scalar_type(), "peephole_forward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      using acc = gpu::acc_t<scalar_t>;
      C10_CUDA_CHECK(gpu::launch_peephole_forward_h<scalar_t>(data_as<scalar_t>(gates), data_as<const acc>(c),
                                                              data_as<scalar_t>(h_out), B, H, stream_of(gates)));
    });
  }

  static void peephole_backward_diag(const Tensor& gates, const Tensor& c, const Tensor& c_prev, const Tensor& p_i,
                                     const Tensor& p_f, const Tensor& p_o, const Tensor& dh, const Tensor& dc_next,
                                     const Tensor& dgates, const Tensor& dc_prev) {
    check_dense({&gates, &c, &c_prev, &p_i, &p_f, &p_o, &dh, &dc_next, &dgates, &dc_prev});
    const int64_t B = gates.size(0), H = c.size(1);
    dispatch_storage(gates.scalar_type(), "peephole_backward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      using acc = gpu::acc_t<scalar_t>;
      C10_CUDA_CHECK(gpu::launch_peephole_backward_diag<scalar_t>(
          data_as<const scalar_t>(gates), data_as<const acc>(c), data_as<const acc>(c_prev), data_as<const acc>(p_i),
          data_as<const acc>(p_f), data_as<const acc>(p_o), data_as<const scalar_t>(dh), data_as<const acc>(dc_next),
          data_as<scalar_t>(dgates), data_as<acc>(dc_prev), B, H, stream_of(gates)));
    });
  }

  static void peephole_backward_h(const Tensor& gates, const Tensor& c, const Tensor& dh, const Tensor& dc_next,
                                  const Tensor& dgates, const Tensor& dc_out) {
    check_dense({&gates, &c, &dh, &dc_next, &dgates, &dc_out});
    const int64_t B = gates.size(0), H = c.size(1);
    dispatch_storage(gates.scalar_type(), "peephole_backward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      using acc = gpu::acc_t<scalar_t>;
      C10_CUDA_CHECK(gpu::launch_peephole_backward_h<scalar_t>(
          data_as<const scalar_t>(gates), data_as<const acc>(c), data_as<const scalar_t>(dh),
          data_as<const acc>(dc_next), data_as<scalar_t>(dgates), data_as<acc>(dc_out), B, H, stream_of(gates)));
    });
  }

  static void peephole_backward_c(const Tensor& gates, const Tensor& c_prev, const Tensor& dc, const Tensor& dgates,
                                  const Tensor& dc_prev) {
    check_dense({&gates, &c_prev, &dc, &dgates, &dc_prev});
    const int64_t B = gates.size(0), H = c_prev.size(1);
    dispatch_storage(gates.scalar_type(), "peephole_backward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      using acc = gpu::acc_t<scalar_t>;
      C10_CUDA_CHECK(gpu::launch_peephole_backward_c<scalar_t>(
          data_as<const scalar_t>(gates), data_as<const acc>(c_prev), data_as<const acc>(dc),
          data_as<scalar_t>(dgates), data_as<acc>(dc_prev), B, H, stream_of(gates)));
    });
  }
};

// Fails early, before any work, on a dtype the kernels lack.
void check_cuda_dtype(const Tensor& input, const char* name) {
  dispatch_storage(input.scalar_type(), name, [](auto) {});
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> peephole_forward_cuda(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ci, const Tensor& w_cf, const Tensor& w_co,
    const OptTensor& lengths, bool reverse) {
  check_cuda_dtype(input, "peephole_forward");
  const c10::cuda::CUDAGuard guard(input.device());
  return peephole_layer_forward<CudaPeepholeBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co,
                                                     lengths, reverse, /*training=*/true);
}

std::tuple<Tensor, Tensor, Tensor> peephole_inference_cuda(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ci, const Tensor& w_cf, const Tensor& w_co,
    const OptTensor& lengths, bool reverse) {
  check_cuda_dtype(input, "peephole_inference");
  const c10::cuda::CUDAGuard guard(input.device());
  auto r = peephole_layer_forward<CudaPeepholeBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co,
                                                       lengths, reverse, /*training=*/false);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> peephole_backward_cuda(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& w_ci,
    const Tensor& w_cf, const Tensor& w_co, const OptTensor& lengths, const Tensor& output, const Tensor& gates,
    const Tensor& cells, bool reverse) {
  check_cuda_dtype(input, "peephole_backward");
  const c10::cuda::CUDAGuard guard(input.device());
  return peephole_layer_backward<CudaPeepholeBackend>(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh,
                                                      w_ci, w_cf, w_co, lengths, output, gates, cells, reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlstm, CUDA, m) {
  m.impl("peephole_forward", &peephole_forward_cuda);
  m.impl("peephole_inference", &peephole_inference_cuda);
  m.impl("peephole_backward", &peephole_backward_cuda);
}

}  // namespace fastlstm
