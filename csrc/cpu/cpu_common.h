// CPU machinery shared by the LSTM and peephole-LSTM backends (lstm_cpu.cpp, peephole_cpu.cpp): the
// run-time choice of the ISA-specific pointwise kernels (pointwise.h), the row grain of their threading, and
// the recurrent-product hooks of the layer drivers (batch-1 GEMV kernels; MKL packed SGEMM with a per-thread
// packed-weight cache for larger batches). Written once so both backends get every speed-up.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>

#include "pointwise.h"

namespace fastlstm {
namespace cpu {

using at::Tensor;

// Rows per task: below ~16K gate elements per task, threading costs more than it saves.
inline int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, 4 * H)); }

// The pointwise kernels for the best instruction set ATen itself uses here (it honours ATEN_CPU_CAPABILITY
// and what the CPU supports), chosen once.
inline const PointwiseKernels& pointwise_kernels() {
  static const PointwiseKernels k = [] {
#if defined(__x86_64__) || defined(_M_X64)
    const std::string cap = at::get_cpu_capability();
    if (cap == "AVX512") return kernels_AVX512();
    if (cap == "AVX2") return kernels_AVX2();
#endif
    return kernels_DEFAULT();
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

// The packed weights live for ONE op call and are rebuilt by the next: a weight can change between calls
// in ways no key sees (`p.data.copy_(...)`, `p.data = ...`, writes through `.numpy()`,
// vector_to_parameters: none bumps the parameter's version counter, and the TensorImpl stays the same), and
// a stale packed copy is a silently wrong result. Within a call the weights cannot change, and every step
// reuses the copy. Packing costs about one pass over the weight, so it is only worth it over several steps.
struct PackedWeight {
  Tensor ori, packed;  // ori: the [N, K] operand in linear's layout (contiguous), packed: MKL's reorder of it
  int64_t batch = -1;
};

struct CallCache {
  PackedWeight forward, backward;  // the recurrent weight as h @ w_hh^T needs it, and as dgates @ w_hh does
  int64_t steps = 0;               // T of the op call in progress on this thread; 0: none (no packing)
};

inline CallCache& call_cache() {
  thread_local CallCache cache;
  return cache;
}

// Scopes the packed-weight cache to one op call of T steps on this thread (the drivers' hooks run on the
// calling thread). The cache is emptied when the call ends, so no weight outlives it.
class LayerCall {
 public:
  explicit LayerCall(int64_t T) {
    CallCache& c = call_cache();
    c = CallCache{};
    c.steps = T;
  }
  ~LayerCall() { call_cache() = CallCache{}; }
  LayerCall(const LayerCall&) = delete;
  LayerCall& operator=(const LayerCall&) = delete;
};

// Fewer steps than this and packing costs more than it saves (one plain GEMM per step is cheaper).
constexpr int64_t kMinPackedSteps = 4;

// y [B, N] = x [B, K] @ ori^T with ori = make_ori(w) [N, K], through MKL's packed GEMM, or undefined when not
// applicable (no MKL, not float32, outside a LayerCall, too few steps, or a batch too small to pay for the
// packing).
template <class MakeOri>
inline Tensor packed_linear(PackedWeight& cache, const Tensor& w, const Tensor& x, MakeOri make_ori) {
  const auto& mkl = MklPacked::get();
  const int64_t B = x.size(0);
  // Below ~1 MFLOP per step the op call costs more than the packing saves (measured at B=16, H=64).
  if (!mkl.linear || B < 2 || x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat ||
      B * w.numel() < (int64_t(1) << 19) || call_cache().steps < kMinPackedSteps) {
    return Tensor();
  }
  if (cache.batch != B) {
    at::NoGradGuard no_grad;
    cache.ori = make_ori(w);
    cache.packed = mkl.reorder->call(cache.ori, B);
    cache.batch = B;
  }
  return mkl.linear->call(x, cache.packed, cache.ori, std::nullopt, B);
}

// The optional recurrent hooks of the layer drivers (lstm_layer.h, peephole_layer.h), for a Backend to
// inherit: detected at compile time there, each returns false to leave the product to ATen.
struct RecurrentHooks {
  // Optional hook of the layer driver (see lstm_layer.h): gates [B,4H] += h [B,P] @ w_hh [4H,P]^T for a
  // batch of one, in float32/float64, with contiguous operands. Returns false to leave the step to addmm_.
  static bool recurrent_addmm(const Tensor& gates, const Tensor& h, const Tensor& w_hh) {
    const auto dtype = gates.scalar_type();
    if (gates.size(0) > 1) {
      Tensor hw = packed_linear(call_cache().forward, w_hh, h, [](const Tensor& w) { return w.contiguous(); });
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
      Tensor d = packed_linear(call_cache().backward, w_hh, dgates, [](const Tensor& w) { return w.t().contiguous(); });
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

};

}  // namespace cpu
}  // namespace fastlstm
