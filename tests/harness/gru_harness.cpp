// The CPU harness of the GRU CUDA kernels: runs the per-element functions of csrc/cuda/gru_kernels.cuh that
// the __global__ kernels run, over every thread of every block of each launch, with the launchers' launch
// plan, on CPU tensors whose storage is float, double, __half or __nv_bfloat16; plugged into the same layer
// driver (csrc/gru_layer.h) as the CUDA adapter. The GRU twin of tests/harness/cuda_harness.cpp (the
// LSTM's), registered as torch.ops.fastlstm_gru_harness with fastlstm's GRU schemas plus set_max_vec.
// Built by tests/test_gru_cuda_harness.py with g++ -DFASTLSTM_HARNESS.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "../../csrc/cuda/dispatch.h"
#include "../../csrc/cuda/gru_kernels.cuh"
#include "../../csrc/gru_layer.h"

namespace fastlstm {
namespace gru_harness {
namespace {

// The widest vector the plan may take (1: the scalar kernels). No minimum block count: the widest vector
// the shapes allow is what the small test shapes should exercise.
int g_max_vec = 16;

void set_max_vec(int64_t max_vec) {
  TORCH_CHECK(max_vec == 1 || max_vec == 2 || max_vec == 4 || max_vec == 8 || max_vec == 16,
              "set_max_vec: a power of two <= 16, got ", max_vec);
  g_max_vec = int(max_vec);
}

// Every thread of the grid, with the __global__ wrappers' bounds check: what the GPU would run.
template <typename F>
void run_grid(const gpu::PointwisePlan& p, F&& element) {
  for (int64_t block = 0; block < p.blocks; ++block) {
    for (int64_t thread = 0; thread < gpu::kThreads; ++thread) {
      const int64_t idx = block * gpu::kThreads + thread;
      if (idx < p.n) element(idx);
    }
  }
}

// Outputs start as NaN so that an element the grid misses cannot pass for a computed one.
void poison(std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts) t->fill_(std::numeric_limits<double>::quiet_NaN());
}

struct HarnessGruBackend {
  // Shapes as CudaGruBackend's (csrc/cuda/gru_cuda.cpp).
  static void gru_forward_pointwise(const Tensor& gates, const Tensor& gh, const Tensor& b_hn,
                                    const Tensor& h_prev, const Tensor& hn_out, const Tensor& h_out) {
    gpu::check_dense({&gates, &gh, &h_prev, &hn_out, &h_out});
    poison({&hn_out, &h_out});
    const int64_t B = gates.size(0), H = h_out.size(1);
    if (B == 0 || H == 0) return;
    gpu::dispatch_storage(gates.scalar_type(), "gru_forward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      scalar_t* g = gpu::data_as<scalar_t>(gates);
      const scalar_t* r = gpu::data_as<const scalar_t>(gh);
      const scalar_t* b = b_hn.defined() ? gpu::data_as<const scalar_t>(b_hn) : nullptr;
      const scalar_t* hp = gpu::data_as<const scalar_t>(h_prev);
      scalar_t* hn = gpu::data_as<scalar_t>(hn_out);
      scalar_t* h = gpu::data_as<scalar_t>(h_out);
      const auto plan = gpu::plan_pointwise<scalar_t>(B, H, g_max_vec, 0, {g, r, b, hp, hn, h}, {});
      gpu::dispatch_vec<scalar_t>(plan.vec, [&](auto vec) {
        run_grid(plan, [&](int64_t idx) {
          gpu::gru_forward_pointwise_element<scalar_t, decltype(vec)::value>(idx, H, g, r, b, hp, hn, h);
        });
      });
    });
  }

  static void gru_backward_pointwise(const Tensor& gates, const Tensor& hn, const Tensor& h_prev,
                                     const Tensor& dh_next, const Tensor& gout, const Tensor& dgx,
                                     const Tensor& dgh, const Tensor& dh_prev) {
    gpu::check_dense({&gates, &hn, &h_prev, &dh_next, &gout, &dgx, &dgh, &dh_prev});
    poison({&dgx, &dgh, &dh_prev});
    const int64_t B = gates.size(0), H = hn.size(1);
    if (B == 0 || H == 0) return;
    gpu::dispatch_storage(gates.scalar_type(), "gru_backward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      const scalar_t* g = gpu::data_as<const scalar_t>(gates);
      const scalar_t* n = gpu::data_as<const scalar_t>(hn);
      const scalar_t* hp = gpu::data_as<const scalar_t>(h_prev);
      const scalar_t* dn = gpu::data_as<const scalar_t>(dh_next);
      const scalar_t* go = gpu::data_as<const scalar_t>(gout);
      scalar_t* dx = gpu::data_as<scalar_t>(dgx);
      scalar_t* dr = gpu::data_as<scalar_t>(dgh);
      scalar_t* dp = gpu::data_as<scalar_t>(dh_prev);
      const auto plan = gpu::plan_pointwise<scalar_t>(B, H, g_max_vec, 0, {g, n, hp, dn, go, dx, dr, dp}, {});
      gpu::dispatch_vec<scalar_t>(plan.vec, [&](auto vec) {
        run_grid(plan, [&](int64_t idx) {
          gpu::gru_backward_pointwise_element<scalar_t, decltype(vec)::value>(idx, H, g, n, hp, dn, go, dx, dr,
                                                                               dp);
        });
      });
    });
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(const Tensor& input, const Tensor& h0, const Tensor& w_ih,
                                                       const Tensor& w_hh, const OptTensor& b_ih,
                                                       const OptTensor& b_hh, const OptTensor& lengths,
                                                       bool reverse) {
  return gru_layer_forward<HarnessGruBackend>(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, true);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& h0, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& lengths, const Tensor& output, const Tensor& gates, const Tensor& hn,
    bool reverse) {
  return gru_layer_backward<HarnessGruBackend>(grad_output, grad_h_n, input, h0, w_ih, w_hh, lengths, output,
                                               gates, hn, reverse);
}

}  // namespace
}  // namespace gru_harness
}  // namespace fastlstm

// The schemas are fastlstm's own (csrc/fastlstm.cpp), under another namespace.
TORCH_LIBRARY(fastlstm_gru_harness, m) {
  m.def(
      "gru_forward(Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? lengths, bool reverse) -> (Tensor output, Tensor h_n, Tensor gates, Tensor hn)");
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor h0, Tensor w_ih, Tensor w_hh, "
      "Tensor? lengths, Tensor output, Tensor gates, Tensor hn, bool reverse) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
      "Tensor grad_b_hh)");
  m.def("set_max_vec(int max_vec) -> ()", &fastlstm::gru_harness::set_max_vec);
}

TORCH_LIBRARY_IMPL(fastlstm_gru_harness, CPU, m) {
  m.impl("gru_forward", &fastlstm::gru_harness::gru_forward);
  m.impl("gru_backward", &fastlstm::gru_harness::gru_backward);
}
