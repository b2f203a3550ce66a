// The CPU harness of the peephole CUDA kernels (issue 6), in the pattern of cuda_harness.cpp: runs the very
// per-element functions of csrc/cuda/peephole_kernels.cuh that the __global__ kernels run, over every
// thread of every block of each launch, with the launchers' plan, on CPU tensors whose storage is float,
// double, __half or __nv_bfloat16; plugged into the same layer driver (csrc/peephole_layer.h) as the CUDA
// adapter. tests/test_peephole_cuda_harness.py builds it (g++, -DFASTLSTM_HARNESS) and compares whole layers
// with the float64 oracle. Registered as torch.ops.fastlstm_peephole_harness: the peephole op schemas plus
// set_plan(max_vec) (the widest vector the plan may pick; 1 forces the scalar kernels).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "../../csrc/cuda/dispatch.h"
#include "../../csrc/cuda/peephole_kernels.cuh"
#include "../../csrc/peephole_layer.h"

namespace fastlstm {
namespace peephole_harness {
namespace {

int g_max_vec = 16;

void set_plan(int64_t max_vec) {
  TORCH_CHECK(max_vec == 1 || max_vec == 2 || max_vec == 4 || max_vec == 8 || max_vec == 16,
              "set_plan: max_vec must be a power of two <= 16, got ", max_vec);
  g_max_vec = int(max_vec);
}

// Every thread of the grid, with the __global__ wrappers' bounds check: what the GPU would run.
template <typename F>
void run_grid(const gpu::PointwisePlan& p, F&& element) {
  for (int64_t idx = 0; idx < p.blocks * gpu::kThreads; ++idx) {
    if (idx < p.n) element(idx);
  }
}

// Outputs start as NaN so that an element the grid misses cannot pass for a computed one.
void poison(std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts) t->fill_(std::numeric_limits<double>::quiet_NaN());
}

// Runs element<scalar_t, VEC>(idx) over the plan for [B, H], with the storage type of `like`.
template <typename Body>
void launch(const Tensor& like, int64_t B, int64_t H, std::initializer_list<const void*> scalar_ptrs,
            std::initializer_list<const void*> acc_ptrs, Body&& body) {
  if (B == 0 || H == 0) return;
  gpu::dispatch_storage(like.scalar_type(), "peephole_harness", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    const auto plan = gpu::plan_pointwise<scalar_t>(B, H, g_max_vec, 0, scalar_ptrs, acc_ptrs);
    gpu::dispatch_vec<scalar_t>(plan.vec, [&](auto vec) {
      run_grid(plan, [&](int64_t idx) { body(tag, vec, idx); });
    });
  });
}

#define FASTLSTM_TYPES(tag)                      \
  using scalar_t = typename decltype(tag)::type; \
  using acc = gpu::acc_t<scalar_t>
#define P(T, t) gpu::data_as<T>(t)

// Shapes as in the Backend contract of csrc/peephole_layer.h.
struct HarnessPeepholeBackend {
  static void peephole_forward_diag(const Tensor& gates, const Tensor& c_prev, const Tensor& p_i, const Tensor& p_f,
                                    const Tensor& p_o, const Tensor& c_out, const Tensor& h_out) {
    gpu::check_dense({&gates, &c_prev, &p_i, &p_f, &p_o, &c_out, &h_out});
    poison({&c_out, &h_out});
    launch(gates, gates.size(0), c_out.size(1), {gates.data_ptr(), h_out.data_ptr()},
           {c_prev.data_ptr(), p_i.data_ptr(), p_f.data_ptr(), p_o.data_ptr(), c_out.data_ptr()},
           [&](auto tag, auto vec, int64_t idx) {
             FASTLSTM_TYPES(tag);
             gpu::peephole_forward_diag_element<scalar_t, decltype(vec)::value>(
                 idx, c_out.size(1), P(scalar_t, gates), P(const acc, c_prev), P(const acc, p_i), P(const acc, p_f),
                 P(const acc, p_o), P(acc, c_out), P(scalar_t, h_out));
           });
  }

  static void peephole_forward_c(const Tensor& gates, const Tensor& c_prev, const Tensor& c_out) {
    gpu::check_dense({&gates, &c_prev, &c_out});
    poison({&c_out});
    launch(gates, gates.size(0), c_out.size(1), {gates.data_ptr()}, {c_prev.data_ptr(), c_out.data_ptr()},
           [&](auto tag, auto vec, int64_t idx) {
             FASTLSTM_TYPES(tag);
             gpu::peephole_forward_c_element<scalar_t, decltype(vec)::value>(
                 idx, c_out.size(1), P(scalar_t, gates), P(const acc, c_prev), P(acc, c_out));
           });
  }

  static void peephole_forward_h(const Tensor& gates, const Tensor& c, const Tensor& h_out) {
    gpu::check_dense({&gates, &c, &h_out});
    poison({&h_out});
    launch(gates, gates.size(0), c.size(1), {gates.data_ptr(), h_out.data_ptr()}, {c.data_ptr()},
           [&](auto tag, auto vec, int64_t idx) {
             FASTLSTM_TYPES(tag);
             gpu::peephole_forward_h_element<scalar_t, decltype(vec)::value>(idx, c.size(1), P(scalar_t, gates),
                                                                             P(const acc, c), P(scalar_t, h_out));
           });
  }

  static void peephole_backward_diag(const Tensor& gates, const Tensor& c, const Tensor& c_prev, const Tensor& p_i,
                                     const Tensor& p_f, const Tensor& p_o, const Tensor& dh, const Tensor& dc_next,
                                     const Tensor& dgates, const Tensor& dc_prev) {
    gpu::check_dense({&gates, &c, &c_prev, &p_i, &p_f, &p_o, &dh, &dc_next, &dgates, &dc_prev});
    poison({&dgates, &dc_prev});
    launch(gates, gates.size(0), c.size(1), {gates.data_ptr(), dh.data_ptr(), dgates.data_ptr()},
           {c.data_ptr(), c_prev.data_ptr(), p_i.data_ptr(), p_f.data_ptr(), p_o.data_ptr(), dc_next.data_ptr(),
            dc_prev.data_ptr()},
           [&](auto tag, auto vec, int64_t idx) {
             FASTLSTM_TYPES(tag);
             gpu::peephole_backward_diag_element<scalar_t, decltype(vec)::value>(
                 idx, c.size(1), P(const scalar_t, gates), P(const acc, c), P(const acc, c_prev), P(const acc, p_i),
                 P(const acc, p_f), P(const acc, p_o), P(const scalar_t, dh), P(const acc, dc_next),
                 P(scalar_t, dgates), P(acc, dc_prev));
           });
  }

  static void peephole_backward_h(const Tensor& gates, const Tensor& c, const Tensor& dh, const Tensor& dc_next,
                                  const Tensor& dgates, const Tensor& dc_out) {
    gpu::check_dense({&gates, &c, &dh, &dc_next, &dgates, &dc_out});
    // Only the o block of dgates is this pass's; the driver's buffer is fresh, so poison just that block.
    dgates.narrow(1, 3 * c.size(1), c.size(1)).fill_(std::numeric_limits<double>::quiet_NaN());
    poison({&dc_out});
    launch(gates, gates.size(0), c.size(1), {gates.data_ptr(), dh.data_ptr(), dgates.data_ptr()},
           {c.data_ptr(), dc_next.data_ptr(), dc_out.data_ptr()}, [&](auto tag, auto vec, int64_t idx) {
             FASTLSTM_TYPES(tag);
             gpu::peephole_backward_h_element<scalar_t, decltype(vec)::value>(
                 idx, c.size(1), P(const scalar_t, gates), P(const acc, c), P(const scalar_t, dh),
                 P(const acc, dc_next), P(scalar_t, dgates), P(acc, dc_out));
           });
  }

  static void peephole_backward_c(const Tensor& gates, const Tensor& c_prev, const Tensor& dc, const Tensor& dgates,
                                  const Tensor& dc_prev) {
    gpu::check_dense({&gates, &c_prev, &dc, &dgates, &dc_prev});
    dgates.narrow(1, 0, 3 * c_prev.size(1)).fill_(std::numeric_limits<double>::quiet_NaN());
    poison({&dc_prev});
    launch(gates, gates.size(0), c_prev.size(1), {gates.data_ptr(), dgates.data_ptr()},
           {c_prev.data_ptr(), dc.data_ptr(), dc_prev.data_ptr()}, [&](auto tag, auto vec, int64_t idx) {
             FASTLSTM_TYPES(tag);
             gpu::peephole_backward_c_element<scalar_t, decltype(vec)::value>(
                 idx, c_prev.size(1), P(const scalar_t, gates), P(const acc, c_prev), P(const acc, dc),
                 P(scalar_t, dgates), P(acc, dc_prev));
           });
  }
};

#undef P
#undef FASTLSTM_TYPES

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> peephole_forward(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ci, const Tensor& w_cf, const Tensor& w_co,
    const OptTensor& lengths, bool reverse) {
  return peephole_layer_forward<HarnessPeepholeBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co,
                                                        lengths, reverse, /*training=*/true);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> peephole_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& w_ci,
    const Tensor& w_cf, const Tensor& w_co, const OptTensor& lengths, const Tensor& output, const Tensor& gates,
    const Tensor& cells, bool reverse) {
  return peephole_layer_backward<HarnessPeepholeBackend>(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih,
                                                         w_hh, w_ci, w_cf, w_co, lengths, output, gates, cells,
                                                         reverse);
}

}  // namespace
}  // namespace peephole_harness
}  // namespace fastlstm

TORCH_LIBRARY(fastlstm_peephole_harness, m) {
  m.def(
      "peephole_forward(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor w_ci, Tensor w_cf, Tensor w_co, Tensor? lengths, bool reverse) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)");
  m.def(
      "peephole_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor h0, "
      "Tensor c0, Tensor w_ih, Tensor w_hh, Tensor w_ci, Tensor w_cf, Tensor w_co, Tensor? lengths, "
      "Tensor output, Tensor gates, Tensor cells, bool reverse) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_bias, Tensor grad_w_ci, Tensor grad_w_cf, Tensor grad_w_co)");
  m.def("set_plan(int max_vec) -> ()", &fastlstm::peephole_harness::set_plan);
}

TORCH_LIBRARY_IMPL(fastlstm_peephole_harness, CPU, m) {
  m.impl("peephole_forward", &fastlstm::peephole_harness::peephole_forward);
  m.impl("peephole_backward", &fastlstm::peephole_harness::peephole_backward);
}
