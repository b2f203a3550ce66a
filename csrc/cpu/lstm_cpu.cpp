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


// MKL's packed SGEMM (torch's mkl::_mkl_linear, the op Inductor uses for CPU linears): the weight is
// reordered once per layer call into MKL's internal panel format, so the T per-step recurrent GEMMs skip the
// packing that every plain sgemm call repeats. Measured ~1.7x on the step GEMM [32,512]x[512,2048] (1 thread).
// Looked up through the dispatcher: absent (no MKL in this torch build) means plain addmm_.
struct MklPacked {
  using Linear = Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&, int64_t);
  using Reorder = Tensor(const Tensor&, int64_t);
  std::optional<c10::TypedOperatorHandle<Linear>> linear;
  std::optional<c10::TypedOperatorHandle<Reorder>> reorder;

  static const MklPacked& get() {
    static const MklPacked m = [] {
      MklPacked r;
      auto& d = c10::Dispatcher::singleton();
      auto l = d.findSchema({"mkl::_mkl_linear", ""});
      auto o = d.findSchema({"mkl::_mkl_reorder_linear_weight", ""});
      if (l && o && l->hasKernelForDispatchKey(c10::DispatchKey::CPU) &&
          o->hasKernelForDispatchKey(c10::DispatchKey::CPU)) {
        r.linear = l->typed<Linear>();
        r.reorder = o->typed<Reorder>();
      }
      return r;
    }();
    return m;
  }
};

// One packed weight per thread and role, reused while the same weight tensor (same TensorImpl, same version)
// is multiplied with the same batch size: within one layer call every step hits. The key is a weak reference
// (a freed weight whose address is reused cannot match); `ori` does hold the last weight used per thread and
// role (or its transposed copy), one [4H, P] tensor at most.
struct PackedWeight {
  std::optional<c10::weak_intrusive_ptr<c10::TensorImpl>> key;
  int64_t version = -1, batch = -1;
  Tensor ori, packed;  // ori: the [N, K] operand in linear's layout (contiguous), packed: MKL's reorder of it

  bool matches(const Tensor& w, int64_t B) const {
    if (!key) return false;
    auto impl = key->lock();
    return impl && impl.get() == w.unsafeGetTensorImpl() && version == static_cast<int64_t>(w._version()) &&
           batch == B;
  }
};

// y [B, N] = x [B, K] @ ori^T with ori = make_ori(w) [N, K], through MKL's packed GEMM, or undefined when not
// applicable (no MKL, not float32, or a batch too small to pay for the packing).
template <class MakeOri>
Tensor packed_linear(PackedWeight& cache, const Tensor& w, const Tensor& x, MakeOri make_ori) {
  const auto& mkl = MklPacked::get();
  const int64_t B = x.size(0);
  // Below ~1 MFLOP per step the op call costs more than the packing saves (measured at B=16, H=64).
  if (!mkl.linear || B < 2 || x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat ||
      B * w.numel() < (int64_t(1) << 19)) {
    return Tensor();
  }
  if (!cache.matches(w, B)) {
    at::NoGradGuard no_grad;
    cache.ori = make_ori(w);
    cache.packed = mkl.reorder->call(cache.ori, B);
    cache.key.emplace(w.getIntrusivePtr());
    cache.version = static_cast<int64_t>(w._version());
    cache.batch = B;
  }
  return mkl.linear->call(x, cache.packed, cache.ori, std::nullopt, B);
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
    if (gates.size(0) > 1) {
      thread_local PackedWeight cache;
      Tensor hw = packed_linear(cache, w_hh, h, [](const Tensor& w) { return w.contiguous(); });
      if (!hw.defined()) return false;
      gates.add_(hw);
      return true;
    }
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
    if (dgates.size(0) > 1) {
      thread_local PackedWeight cache;
      Tensor d = packed_linear(cache, w_hh, dgates, [](const Tensor& w) { return w.t().contiguous(); });
      if (!d.defined()) return false;
      const_cast<Tensor&>(dh).copy_(d);
      return true;
    }
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
