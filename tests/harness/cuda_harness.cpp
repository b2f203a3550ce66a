// The CPU harness of the CUDA kernels: runs the very per-element functions of csrc/cuda/lstm_kernels.cuh
// that the __global__ kernels run, over every thread of every block of each launch, with the launch plan
// the launchers use, on CPU tensors whose storage is float, double, __half or __nv_bfloat16. Plugged into
// the same layer driver (csrc/lstm_layer.h) as the real CUDA adapter, it runs whole layers forward and
// backward, so tests/test_cuda_harness.py can compare the GPU path's indexing, vector widths and dtype
// handling with the float64 oracle on machines without a GPU.
//
// Built by the test with torch.utils.cpp_extension.load (g++, -DFASTLSTM_HARNESS, CUDA include dir) and
// registered as its own op namespace, torch.ops.fastlstm_harness, with fastlstm's op schemas plus
// set_plan(max_vec, launcher_min_blocks) (the widest vector the launch plan may pick, 1 forcing the scalar
// kernels; and whether it also applies the launchers' minimum block count).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "../../csrc/cuda/dispatch.h"
#include "../../csrc/cuda/lstm_kernels.cuh"
#include "../../csrc/lstm_layer.h"

namespace fastlstm {
namespace harness {
namespace {

// The launch plan's knobs (see gpu::plan_pointwise). By default the harness takes the widest vector the
// shapes and pointers allow (min_blocks 0), to exercise the vector code on small test shapes; the real
// launchers also narrow the vector to reach gpu::kMinBlocks blocks.
int g_max_vec = 16;
int64_t g_min_blocks = 0;

void set_plan(int64_t max_vec, bool launcher_min_blocks) {
  TORCH_CHECK(max_vec == 1 || max_vec == 2 || max_vec == 4 || max_vec == 8 || max_vec == 16,
              "set_plan: max_vec must be a power of two <= 16, got ", max_vec);
  g_max_vec = int(max_vec);
  g_min_blocks = launcher_min_blocks ? gpu::kMinBlocks : 0;
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

struct HarnessBackend {
  // Shapes as CudaBackend's (csrc/cuda/lstm_cuda.cpp).
  static void forward_pointwise(const Tensor& gates, const Tensor& c_prev, const Tensor& c_out,
                                const Tensor& h_out) {
    gpu::check_dense({&gates, &c_prev, &c_out, &h_out});
    poison({&c_out, &h_out});
    const int64_t B = gates.size(0), H = c_out.size(1);
    if (B == 0 || H == 0) return;
    gpu::dispatch_storage(gates.scalar_type(), "lstm_forward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      using acc = gpu::acc_t<scalar_t>;
      scalar_t* g = gpu::data_as<scalar_t>(gates);
      const acc* cp = gpu::data_as<const acc>(c_prev);
      acc* c = gpu::data_as<acc>(c_out);
      scalar_t* h = gpu::data_as<scalar_t>(h_out);
      const auto plan = gpu::plan_pointwise<scalar_t>(B, H, g_max_vec, g_min_blocks, {g, h}, {cp, c});
      gpu::dispatch_vec<scalar_t>(plan.vec, [&](auto vec) {
        run_grid(plan, [&](int64_t idx) {
          gpu::forward_pointwise_element<scalar_t, decltype(vec)::value>(idx, H, g, cp, c, h);
        });
      });
    });
  }

  static void backward_pointwise(const Tensor& gates, const Tensor& c, const Tensor& c_prev, const Tensor& dh,
                                 const Tensor& dc_next, const Tensor& dgates, const Tensor& dc_prev) {
    gpu::check_dense({&gates, &c, &c_prev, &dh, &dc_next, &dgates, &dc_prev});
    poison({&dgates, &dc_prev});
    const int64_t B = gates.size(0), H = c.size(1);
    if (B == 0 || H == 0) return;
    gpu::dispatch_storage(gates.scalar_type(), "lstm_backward", [&](auto tag) {
      using scalar_t = typename decltype(tag)::type;
      using acc = gpu::acc_t<scalar_t>;
      const scalar_t* g = gpu::data_as<const scalar_t>(gates);
      const acc* cc = gpu::data_as<const acc>(c);
      const acc* cp = gpu::data_as<const acc>(c_prev);
      const scalar_t* d = gpu::data_as<const scalar_t>(dh);
      const acc* dcn = gpu::data_as<const acc>(dc_next);
      scalar_t* dg = gpu::data_as<scalar_t>(dgates);
      acc* dcp = gpu::data_as<acc>(dc_prev);
      const auto plan =
          gpu::plan_pointwise<scalar_t>(B, H, g_max_vec, g_min_blocks, {g, d, dg}, {cc, cp, dcn, dcp});
      gpu::dispatch_vec<scalar_t>(plan.vec, [&](auto vec) {
        run_grid(plan, [&](int64_t idx) {
          gpu::backward_pointwise_element<scalar_t, decltype(vec)::value>(idx, H, g, cc, cp, d, dcn, dg, dcp);
        });
      });
    });
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(const Tensor& input, const Tensor& h0,
                                                                const Tensor& c0, const Tensor& w_ih,
                                                                const Tensor& w_hh, const OptTensor& b_ih,
                                                                const OptTensor& b_hh, const OptTensor& w_hr,
                                                                const OptTensor& lengths, bool reverse) {
  return lstm_layer_forward<HarnessBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, true);
}

std::tuple<Tensor, Tensor, Tensor> lstm_inference(const Tensor& input, const Tensor& h0, const Tensor& c0,
                                                  const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                                  const OptTensor& b_hh, const OptTensor& w_hr,
                                                  const OptTensor& lengths, bool reverse) {
  auto r = lstm_layer_forward<HarnessBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, false);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
    const OptTensor& lengths, const Tensor& output, const Tensor& gates, const Tensor& cells, bool reverse) {
  return lstm_layer_backward<HarnessBackend>(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, w_hr,
                                             lengths, output, gates, cells, reverse);
}

}  // namespace
}  // namespace harness
}  // namespace fastlstm

// The schemas are fastlstm's own (csrc/fastlstm.cpp), under another namespace.
TORCH_LIBRARY(fastlstm_harness, m) {
  m.def(
      "lstm_forward(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_hr, Tensor? lengths, bool reverse) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)");
  m.def(
      "lstm_inference(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_hr, Tensor? lengths, bool reverse) "
      "-> (Tensor output, Tensor h_n, Tensor c_n)");
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor h0, "
      "Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor? lengths, Tensor output, Tensor gates, "
      "Tensor cells, bool reverse) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_bias, Tensor grad_w_hr)");
  m.def("set_plan(int max_vec, bool launcher_min_blocks) -> ()", &fastlstm::harness::set_plan);
}

TORCH_LIBRARY_IMPL(fastlstm_harness, CPU, m) {
  m.impl("lstm_forward", &fastlstm::harness::lstm_forward);
  m.impl("lstm_inference", &fastlstm::harness::lstm_inference);
  m.impl("lstm_backward", &fastlstm::harness::lstm_backward);
}
