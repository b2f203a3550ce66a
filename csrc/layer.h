// The one layer driver: any cell (csrc/cells/*_op.h) over a whole sequence, one layer in one direction,
// written once against ATen and shared by every device. What is the same for every cell lives here: the
// argument checks, the input projection for all steps in one GEMM (chunked in inference), the step loop
// (forward or reversed), the recurrent product through the device's hooks, the packed-sequence masks, the
// projection of h (proj_size), the backward step loop, and the weight-gradient GEMMs over all steps at once.
// A cell supplies only what differs: its gate count, whether it carries a cell state c, whether its
// recurrent product enters the gates before the pass (LSTM) or stays a separate operand (GRU's r * (...),
// the layer norm of the recurrent term), what it saves, and its per-step passes (csrc/cells/*.h, written
// once for every device). A device (csrc/cpu/device.cpp, csrc/cuda/device.cpp) supplies how a pass runs and
// its recurrent GEMM hooks.
//
// Shapes (T steps, B batch, I input, H hidden, G gates per unit, P = proj_size or H; S the input dtype, A
// its arithmetic type: float32 for half types, else S):
//   input [T, B, I] time-major, h0 [B, P], c0 [B, H] (cells with c), w_ih [G*H, I], w_hh [G*H, P],
//   b_ih, b_hh [G*H], w_hr [P, H] (proj_size only), lengths int64 [B] on the input's device: element b is
//   active at step t iff t < lengths[b] (a padded PackedSequence; inactive steps keep the state and output 0).
// Kept from the drivers this replaces because it measured well: StepSlices, the chunked inference
// projection, the packed-weight hooks (now scoped to one call, so they can never serve stale weights).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/util/Optional.h>

#include <cstring>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cells/all.h"

namespace fastlstm {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

inline at::ScalarType acc_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

inline bool defined(const OptTensor& t) { return t.has_value() && t->defined(); }

template <typename T>
T* ptr(const Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}
template <typename T>
T* ptr_or_null(const Tensor& t) {
  return t.defined() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

// ------------------------------------------------------------------------------------------------------
// Argument checks: every argument of every op, before any memory is touched, with a message naming the op,
// the argument, what was expected and what was given. The modules check user input with nn.LSTM's own
// messages before any op runs; these guard direct calls of torch.ops.fastlstm.*.
class Check {
 public:
  Check(const char* op, const Tensor& input) : op_(op), device_(input.device()), dtype_(input.scalar_type()) {}

  const char* op() const { return op_; }

  // A tensor of exactly `shape` (-1: any size there), of `dtype` (default: the input's), on the input's
  // device, strided.
  void operator()(const char* name, const Tensor& t, std::vector<int64_t> shape,
                  std::optional<at::ScalarType> dtype = std::nullopt) const {
    const at::ScalarType want = dtype.value_or(dtype_);
    bool ok = t.defined() && t.layout() == at::kStrided && t.dim() == int64_t(shape.size()) &&
              t.scalar_type() == want && t.device() == device_;
    for (size_t k = 0; ok && k < shape.size(); ++k) ok = shape[k] < 0 || t.size(int64_t(k)) == shape[k];
    if (!ok) fail(name, describe(shape, want, device_), t);
  }
  void optional(const char* name, const OptTensor& t, std::vector<int64_t> shape,
                std::optional<at::ScalarType> dtype = std::nullopt) const {
    if (defined(t)) (*this)(name, *t, std::move(shape), dtype);
  }
  [[noreturn]] void fail(const char* name, const std::string& expected, const Tensor& t) const {
    TORCH_CHECK(false, "fastlstm::", op_, ": argument '", name, "' must be ", expected, ", got ",
                      t.defined() ? describe(t) : std::string("an undefined tensor"));
  }
  [[noreturn]] void fail(const char* name, const std::string& what) const {
    TORCH_CHECK(false, "fastlstm::", op_, ": argument '", name, "' ", what);
  }

  static std::string shape_str(const std::vector<int64_t>& shape) {
    std::ostringstream s;
    s << "[";
    for (size_t k = 0; k < shape.size(); ++k) {
      if (k) s << ", ";
      if (shape[k] < 0) {
        s << "*";
      } else {
        s << shape[k];
      }
    }
    s << "]";
    return s.str();
  }
  static std::string describe(const std::vector<int64_t>& shape, at::ScalarType dtype, at::Device device) {
    std::ostringstream s;
    s << "a " << c10::toString(dtype) << " tensor of shape " << shape_str(shape) << " on " << device;
    return s.str();
  }
  static std::string describe(const Tensor& t) {
    std::ostringstream s;
    s << "a " << c10::toString(t.scalar_type()) << " tensor of shape " << t.sizes() << " on " << t.device();
    if (t.layout() != at::kStrided) s << " with layout " << t.layout();
    return s.str();
  }

 private:
  const char* op_;
  at::Device device_;
  at::ScalarType dtype_;
};

// ------------------------------------------------------------------------------------------------------
// Per-step slices buf[t] of a contiguous [T, ...] buffer without a select() per step (a dispatch and a
// TensorImpl allocation each, which at B=1 cost as much as the step's GEMM): two view tensors made once and
// moved by their storage offset, used in turn. A slice stays valid until the second call after the one
// that returned it, which is all the step loops need (this step's slices and the previous step's one).
class StepSlices {
 public:
  StepSlices() = default;
  explicit StepSlices(const Tensor& buf) : buf_(buf) {
    if (buf.defined() && buf.dim() > 0 && buf.size(0) > 0 && buf.is_contiguous()) {
      for (auto& v : views_) v = buf.select(0, 0);
      movable_ = views_[0].unsafeGetTensorImpl()->allow_tensor_metadata_change() &&
                 views_[1].unsafeGetTensorImpl()->allow_tensor_metadata_change();
    }
  }
  Tensor operator[](int64_t t) {
    if (!buf_.defined()) return Tensor();
    if (!movable_) return buf_.select(0, t);
    Tensor& v = views_[next_];
    next_ ^= 1;
    v.unsafeGetTensorImpl()->set_storage_offset(buf_.storage_offset() + t * buf_.stride(0));
    return v;
  }

 private:
  Tensor buf_;
  Tensor views_[2];
  int next_ = 0;
  bool movable_ = false;
};

// [T, B, 1] bool: element b active at step t.
inline Tensor active_mask(const OptTensor& lengths, int64_t T) {
  return (at::arange(T, lengths->options()).unsqueeze(1) < lengths->unsqueeze(0)).unsqueeze(-1);
}

// With lengths on the CPU in non-increasing order (a PackedSequence's, which the modules pass sorted), the
// active elements of every step are a prefix of the batch: active[t] = #{b : lengths[b] > t}. The steps then
// run on those rows only, as ATen's packed RNN does, so a packed sequence costs what its real lengths cost,
// and no per-step masks are needed. Empty otherwise (unsorted, or on a device: reading them there would be
// a host synchronisation), and the masked path runs.
inline std::vector<int64_t> prefix_active_rows(const OptTensor& lengths, int64_t T) {
  if (!defined(lengths) || !lengths->device().is_cpu() || lengths->scalar_type() != at::kLong) return {};
  const Tensor len = lengths->contiguous();
  const int64_t* l = len.data_ptr<int64_t>();
  const int64_t B = len.numel();
  for (int64_t b = 1; b < B; ++b) {
    if (l[b] > l[b - 1]) return {};
  }
  std::vector<int64_t> active(T);
  int64_t n = B;
  for (int64_t t = 0; t < T; ++t) {
    while (n > 0 && l[n - 1] <= t) --n;
    active[t] = n;
  }
  return active;
}

// The state each step started from, [T, B, X]: `states` [T, B, X] (what each step ended with) shifted by one
// step in the direction of processing, `init` [B, X] where there was no step before. With mask [T, B, 1],
// an element whose previous step was inactive also starts from init: that happens only in reverse, at the
// step after its end (outputs are zero at inactive steps, so the mask matters for h; cell states are held
// through inactive steps and need none).
inline Tensor step_start_states(const Tensor& states, const Tensor& init, const Tensor& mask, bool reverse) {
  const int64_t T = states.size(0);
  Tensor out = at::empty(states.sizes(), states.options());
  if (T == 0) return out;
  (reverse ? out[T - 1] : out[0]).copy_(init);
  if (T == 1) return out;
  if (reverse) {
    out.narrow(0, 0, T - 1).copy_(states.narrow(0, 1, T - 1));
  } else {
    out.narrow(0, 1, T - 1).copy_(states.narrow(0, 0, T - 1));
  }
  if (mask.defined()) {
    Tensor prev_active = at::zeros_like(mask);
    if (reverse) {
      prev_active.narrow(0, 0, T - 1).copy_(mask.narrow(0, 1, T - 1));
    } else {
      prev_active.narrow(0, 1, T - 1).copy_(mask.narrow(0, 0, T - 1));
    }
    out = at::where(prev_active, out, init.unsqueeze(0));
  }
  return out;
}

// out (+)= a @ b where `out` may be of a lower precision than a and b (bfloat16 gates, float32 cell
// states): the product is then formed in a's precision and rounded once, on the add.
inline void addmm_into(const Tensor& out, const Tensor& a, const Tensor& b) {
  if (out.scalar_type() == a.scalar_type()) {
    const_cast<Tensor&>(out).addmm_(a, b);
  } else {
    const_cast<Tensor&>(out).add_(at::mm(a, b));
  }
}

// Float32 GEMMs of half-typed operands (Dev::kAccGrads) on float32 copies of at most 2^18 elements (1 MiB)
// of rows at a time, rounded once to `out` (2^20 measured no faster, and 4 MiB more at training's peak at
// T=50, B=64, H=256). mm_acc_rows: a [R, K] @ b [K, N] -> [R, N]; mm_acc_tn: a^T b for a [R, M], b [R, N]
// -> [M, N], summed over the chunks in float32.
inline int64_t acc_chunk_rows(int64_t width) { return std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, width)); }
template <class Dev>
Tensor mm_acc_rows(const Tensor& a, const Tensor& b, at::ScalarType out) {
  const int64_t R = a.size(0), rows = acc_chunk_rows(a.size(1));
  const Tensor bf = b.to(at::kFloat);
  Tensor r = at::empty({R, b.size(1)}, a.options().dtype(out));
  for (int64_t i = 0; i < R; i += rows) {
    const int64_t n = std::min(rows, R - i);
    r.narrow(0, i, n).copy_(Dev::mm(a.narrow(0, i, n).to(at::kFloat), bf));
  }
  return r;
}
template <class Dev>
Tensor mm_acc_tn(const Tensor& a, const Tensor& b, at::ScalarType out) {
  const int64_t R = a.size(0), rows = acc_chunk_rows(std::max(a.size(1), b.size(1)));
  Tensor acc = at::zeros({a.size(1), b.size(1)}, a.options().dtype(at::kFloat));
  for (int64_t i = 0; i < R; i += rows) {
    const int64_t n = std::min(rows, R - i);
    Dev::addmm_(acc, a.narrow(0, i, n).to(at::kFloat).t(), b.narrow(0, i, n).to(at::kFloat));
  }
  return out == at::kFloat ? acc : acc.to(out);
}

// Elementwise helpers for the few-element tensors every call makes (its folded bias, a streaming step's
// state conversions): on the CPU a plain loop over contiguous memory, where an ATen op's TensorIterator setup
// (~1 us a call) costs as much as a whole batch-1 step's kernels. Each loop computes what the ATen op it
// replaces computes: half types widened to float32, one operation, rounded once to nearest even.
namespace flat {
template <typename F>
bool dispatch_float(at::ScalarType t, const F& f) {
  switch (t) {
    case at::kFloat: f(float{}); return true;
    case at::kDouble: f(double{}); return true;
    case at::kBFloat16: f(c10::BFloat16{}); return true;
    case at::kHalf: f(c10::Half{}); return true;
    default: return false;
  }
}
inline bool plain_cpu(const Tensor& t) { return t.defined() && t.is_cpu() && t.is_contiguous() && !t.is_conj() && !t.is_neg(); }
}  // namespace flat

// a [N] with b's first n elements added: a new tensor, a + b on [0, n), a elsewhere (n <= N, b's size).
inline Tensor bias_sum(const Tensor& a, const Tensor& b, int64_t n) {
  if (flat::plain_cpu(a) && flat::plain_cpu(b) && a.scalar_type() == b.scalar_type() && a.dim() == 1 &&
      b.dim() == 1 && n <= a.numel() && n <= b.numel()) {
    Tensor out = at::empty({a.numel()}, a.options());
    if (flat::dispatch_float(a.scalar_type(), [&](auto tag) {
          using S = decltype(tag);
          using A = std::conditional_t<std::is_same_v<S, double>, double, float>;
          const S* pa = a.const_data_ptr<S>();
          const S* pb = b.const_data_ptr<S>();
          S* po = out.mutable_data_ptr<S>();
          for (int64_t k = 0; k < n; ++k) po[k] = S(A(pa[k]) + A(pb[k]));
          for (int64_t k = n; k < a.numel(); ++k) po[k] = pa[k];
        })) {
      return out;
    }
  }
  Tensor out = a.clone(at::MemoryFormat::Contiguous);
  out.narrow(0, 0, n).add_(b.narrow(0, 0, n));
  return out;
}

// src converted to `dtype` (a new contiguous tensor; src itself where it already has that dtype).
inline Tensor convert_flat(const Tensor& src, at::ScalarType dtype) {
  if (src.scalar_type() == dtype) return src;
  if (flat::plain_cpu(src)) {
    Tensor out = at::empty(src.sizes(), src.options().dtype(dtype));
    const int64_t n = src.numel();
    bool done = false;
    flat::dispatch_float(src.scalar_type(), [&](auto from) {
      using F = decltype(from);
      done = flat::dispatch_float(dtype, [&](auto to) {
        using D = decltype(to);
        using A = std::conditional_t<std::is_same_v<F, double> || std::is_same_v<D, double>, double, float>;
        const F* p = src.const_data_ptr<F>();
        D* q = out.mutable_data_ptr<D>();
        for (int64_t k = 0; k < n; ++k) q[k] = D(A(p[k]));
      });
    });
    if (done) return out;
  }
  return src.to(dtype);
}

// ------------------------------------------------------------------------------------------------------
// What every cell's op shares.
struct LayerArgs {
  Tensor input, h0, c0;  // c0 undefined for cells without a cell state
  Tensor w_ih, w_hh;
  OptTensor b_ih, b_hh, w_hr, lengths;
  bool reverse = false;
};

struct Dims {
  int64_t T, B, I, H, G, P;  // G = gates * H
};

// Defaults of the optional parts of a cell; a cell inherits them and hides what it does differently.
struct CellBase {
  static constexpr bool kHasC = true;
  static constexpr bool kSeparateRec = false;
  static constexpr bool kHasProj = false;
  static constexpr bool kNeedsHPrev = false;  // backward_step reads h_{t-1}
  static constexpr bool kDirectDh = false;    // backward_step writes a part of dh_{t-1} itself (dh_prev)
  static constexpr bool kProjectEpilogue = false;  // project_epilogue does something (LayerNormLSTM's norm)
  using Seq = void;  // the cell's whole-sequence description (cells/sequence.h), if it has one
  struct Params {};
  struct SavedIn {};  // what backward gets of Saved
  struct Saved {
    static Saved alloc(const Dims&, const at::TensorOptions&, bool) { return {}; }
  };
  struct Grads {
    static Grads alloc(const Dims&, const at::TensorOptions&) { return {}; }
  };
  template <class ParamsT>
  static void check_params(const Check&, const Dims&, const ParamsT&) {}
  template <class SavedInT>
  static void check_saved(const Check&, const Dims&, const SavedInT&) {}
  // Cell-specific per-step gradients to zero where rows are inactive (`off` [B, 1] bool).
  template <class StepT>
  static void mask_step(const StepT&, const Tensor&) {}
  // The unprojected hidden states [T, B, H] from what was saved (cells with proj_size only).
  template <class SavedInT, class ParamsT>
  static Tensor hidden_states(const Tensor&, const Tensor&, const SavedInT&, const ParamsT&) {
    TORCH_CHECK(false, "fastlstm: this cell has no projection");
  }
  // The bias added in the input-projection GEMM, [G]: both biases, by default.
  template <class ParamsT>
  static Tensor input_bias(const LayerArgs& a, const ParamsT&) {
    if (defined(a.b_ih) && defined(a.b_hh)) return bias_sum(*a.b_ih, *a.b_hh, a.b_ih->numel());
    if (defined(a.b_ih)) return *a.b_ih;
    if (defined(a.b_hh)) return *a.b_hh;
    return Tensor();
  }
  // After the input projection of steps [t_lo, t_lo + n) into g2d [n*B, G] S, or into pre2d [n*B, G] A
  // where the device accumulates half-type gates in float32 (Dev::kAccGates; g2d is then only the storage
  // dtype's witness, of any shape): nothing, by default.
  template <class Dev, class SavedT, class ParamsT>
  static void project_epilogue(const Tensor&, const Tensor&, SavedT&, int64_t, int64_t, const ParamsT&) {}
  // Whether a whole-sequence launch (cells/sequence.h, Seq) can run this layer's parameters: yes, by default.
  template <class ParamsT>
  static bool seq_ok(const ParamsT&) {
    return true;
  }
  // Cell-specific pointers of a whole-sequence launch: none, by default.
  template <class QF, class SavedT, class ParamsT>
  static void seq_forward_extra(QF&, SavedT&, const ParamsT&) {}
  template <class QB, class SavedInT, class ParamsT>
  static void seq_backward_extra(QB&, const SavedInT&, const ParamsT&) {}
  template <class QB, class GradsT>
  static void seq_backward_grads(QB&, GradsT&) {}
  // The gradient of the projection x W_ih^T from that of the gates' input term dgx [T, B, G]: the same.
  template <class Dev, class SavedT, class GradsT, class ParamsT>
  static Tensor input_term_grad(const Tensor& dgx, const SavedT&, GradsT&, const ParamsT&) {
    return dgx;
  }
};

// A whole-sequence launch's operands (the device's Sequence runs the step loop in one kernel).
template <class Cell>
struct SeqForwardCall {
  Tensor gates;            // [s1 - s0, B, G] S: steps [t_lo, t_lo + s1 - s0) projected; with `pre`, the
                           // activated gates only: [T, B, G] (training) or [1, B, G]
  Tensor pre;              // [s1 - s0, B, G] A: the projection, with float32 pre-activations; or undefined
  int64_t t_lo, s0, s1;    // steps s0 .. s1 - 1 in processing order
  Tensor output;           // [T, B, H] S
  Tensor cells;            // [T or 2, B, H] A (cells with c): slot t in training, s % 2 in inference
  Tensor h0, c0;           // [B, H] S, [B, H] A, contiguous
  typename Cell::Saved* saved;
  const typename Cell::Params* params;
  Tensor bias;             // [G] (A with `pre`, else S) where the Sequence adds the folded input bias itself
                           // (adds_bias()): the projection then has none; else undefined
  Tensor h_fin;            // [B, H] S with sorted lengths (the prefix path): each row's final h, written at
                           // its last step; else undefined
};
template <class Cell>
struct SeqBackwardCall {
  Tensor gates, cells, c0;  // [T, B, G] S, [T, B, H] A, [B, H] A
  Tensor h_prev_all;        // [T, B, H] S (cells that read h_{t-1}) or undefined
  Tensor gout, grad_h_n;    // [T, B, H] S, [B, H] S
  Tensor grad_c_n;          // [B, H] A (cells with c)
  Tensor dgx, dgh;          // [T, B, G] S out (the same tensor unless the cell has a separate recurrent operand)
  Tensor grad_h0, grad_c0;  // [B, H] S out, [B, H] A out
  const typename Cell::SavedIn* saved;
  const typename Cell::Params* params;
  typename Cell::Grads* grads;  // the cell's own per-step gradients (LayerNormLSTM's dy), written by the launch
};

// The framework-free arguments of a whole-sequence launch (cells/sequence.h) from one call's tensors, for
// every device's Sequence. S: the device's storage type for the input's dtype (c10::BFloat16 on the CPU,
// __nv_bfloat16 on CUDA: the same bits). The scratch a device keeps for itself (hbuf, rec; dgbuf, dh, direct,
// dcbuf) comes in as tensors, undefined where it keeps none.
template <class Cell, typename S>
cells::SeqForwardArgs<S> seq_forward_args(const SeqForwardCall<Cell>& c, const Dims& d, bool reverse,
                                          const Tensor& w_hh, const Tensor& hbuf, const Tensor& rec) {
  using A = math::acc_of<S>;
  cells::SeqForwardArgs<S> q{};
  q.w_hh = ptr<const S>(w_hh);
  q.gates = ptr<S>(c.gates);
  q.t_lo = c.t_lo;
  q.pre = c.pre.defined() ? ptr<A>(c.pre) : nullptr;
  q.gate_slots = c.gates.size(0);
  q.rec = rec.defined() && !c.pre.defined() ? ptr<S>(rec) : nullptr;
  q.rec_acc = rec.defined() && c.pre.defined() ? ptr<A>(rec) : nullptr;
  q.hbuf = ptr_or_null<S>(hbuf);
  q.out = ptr<S>(c.output);
  q.cells = ptr_or_null<A>(c.cells);
  q.cell_slots = c.cells.defined() ? c.cells.size(0) : 0;
  q.c0 = ptr_or_null<const A>(c.c0);
  q.T = d.T;
  q.B = d.B;
  q.H = d.H;
  q.s0 = c.s0;
  q.s1 = c.s1;
  q.reverse = reverse;
  Cell::seq_forward_extra(q, *c.saved, *c.params);
  return q;
}

template <class Cell, typename S>
cells::SeqBackwardArgs<S> seq_backward_args(const SeqBackwardCall<Cell>& c, const Dims& d, bool reverse,
                                            const Tensor& w_hh, const Tensor& dgbuf, const Tensor& dh,
                                            const Tensor& direct, const Tensor& dcbuf) {
  using A = math::acc_of<S>;
  cells::SeqBackwardArgs<S> q{};
  q.w_hh = ptr<const S>(w_hh);
  q.gates = ptr<const S>(c.gates);
  q.cells = ptr_or_null<const A>(c.cells);
  q.c0 = ptr_or_null<const A>(c.c0);
  q.h_prev_all = ptr_or_null<const S>(c.h_prev_all);
  q.gout = ptr<const S>(c.gout);
  q.grad_h_n = ptr<const S>(c.grad_h_n);
  q.grad_c_n = ptr_or_null<const A>(c.grad_c_n);
  q.dgx = ptr<S>(c.dgx);
  q.dgh = ptr<S>(c.dgh);
  q.dgbuf = ptr_or_null<S>(dgbuf);
  q.dh = ptr_or_null<S>(dh);
  q.direct = ptr_or_null<S>(direct);
  q.dcbuf = ptr_or_null<A>(dcbuf);
  q.grad_h0 = ptr<S>(c.grad_h0);
  q.grad_c0 = ptr_or_null<A>(c.grad_c0);
  q.T = d.T;
  q.B = d.B;
  q.H = d.H;
  q.reverse = reverse;
  Cell::seq_backward_extra(q, *c.saved, *c.params);
  Cell::seq_backward_grads(q, *c.grads);
  return q;
}

// What a device has unless it says otherwise: the four floating dtypes, the input projection and the
// recurrent products as plain ATen GEMMs (cuBLAS on CUDA, on the current stream). The CPU device replaces
// the GEMMs with its GEMV and MKL-packed hooks.
//
// kAccGates: for bfloat16/float16 input, keep the gate pre-activations in float32, as cuDNN does: the input
// projection (with the bias, summed in float32) and the recurrent product are GEMMs with half inputs and a
// float32 output, the recurrent one accumulated onto the projection in float32, and the passes read those
// float32 values (one rounding per gate, at the activated value the pass stores, where the half-typed
// buffer had two or three: the projection, the bias sum, the sum with the recurrent product). Off here
// (the CPU keeps its half-typed buffer and speed); the CUDA device and the host harness turn it on and
// supply input_mm_acc and Recurrent::forward_acc. The ones below are the harness's: the half operands
// upcast to float32 and an ATen float32 GEMM, which is what a float32-accumulating GEMM of half inputs
// computes up to summation order (a product of two halves is exact in float32).
struct AtenDevice {
  static constexpr bool kAccGates = false;
  // One step's gate terms in one go (one_step_forward): gates [B, G] = x2d [B, I] @ w_ih^T + bias, and
  // rec [B, G] (gates itself unless the cell keeps its recurrent term apart: then = h [B, P] @ w_hh^T, else
  // += it). False: not done, the caller runs input_mm and the Recurrent hook. None here.
  static bool one_step_gates(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                             const Tensor&, const Tensor&) {
    return false;
  }
  // Whether kAccGates applies to a layer of T steps: always, but a test device may switch it off to run
  // the storage-typed scheme, and the CPU takes it only where the weights' float32 copies pay off.
  static bool acc_gates_enabled(int64_t /*T*/, at::ScalarType /*dtype*/) { return true; }
  // kAccGrads: where kAccGates applies, the half types' GEMMs run on float32 copies (the CPU, whose float32
  // GEMMs outrun its half-type ones): W_ih converted once per call for the input projection, and backward's
  // GEMMs over all steps (grad_input, grad_w_ih, grad_w_hh, grad_w_hr) in float32; CUDA keeps the operands in
  // the storage type on the tensor cores.
  static constexpr bool kAccGrads = false;
  // One op call's scope (a device guard, say): nothing by default.
  struct Call {
    Call(const Tensor&, int64_t) {}
  };
  static void check_dtype(const Check& chk, const Tensor& input) {
    const auto t = input.scalar_type();
    if (!(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf)) {
      chk.fail("input", std::string("must be float32, float64, bfloat16 or float16 on ") +
                            c10::DeviceTypeName(input.device().type()) + ", got " + c10::toString(t));
    }
  }
  // A path that runs a layer's whole step loop in one launch (the persistent CUDA kernel): constructed for
  // one layer call, false where the device has none or the layer does not fit it; the step loop runs then.
  template <class Cell>
  struct Sequence {
    Sequence(const LayerArgs&, const Dims&, const typename Cell::Params&, bool /*backward*/) {}
    explicit operator bool() const { return false; }
    int64_t chunk_elems() const { return 0; }  // inference: elements of projected gates per launch
    bool adds_bias() const { return false; }    // whether forward adds the input bias (SeqForwardCall::bias)
    void forward(const SeqForwardCall<Cell>&) {}
    void backward(const SeqBackwardCall<Cell>&) {}
  };
  // [M, N] = a [M, K] @ b [K, N], and out [M, N] += a @ b: the layer's GEMMs over all steps (backward's).
  static Tensor mm(const Tensor& a, const Tensor& b) { return at::mm(a, b); }
  static void addmm_(const Tensor& out, const Tensor& a, const Tensor& b) { const_cast<Tensor&>(out).addmm_(a, b); }
  // g2d [R, G] = x2d [R, I] @ w_ih^T (+ bias [G]).
  static void input_mm(const Tensor& g2d, const Tensor& x2d, const Tensor& w_ih, const Tensor& bias) {
    if (bias.defined()) {
      at::addmm_out(const_cast<Tensor&>(g2d), bias, x2d, w_ih.t());
    } else {
      at::mm_out(const_cast<Tensor&>(g2d), x2d, w_ih.t());
    }
  }
  // pre2d [R, G] A = x2d [R, I] @ w_ih^T (+ bias [G] A), x2d and w_ih half-typed (kAccGates devices).
  static void input_mm_acc(const Tensor& pre2d, const Tensor& x2d, const Tensor& w_ih, const Tensor& bias) {
    const auto acc = pre2d.scalar_type();
    if (bias.defined()) {
      at::addmm_out(const_cast<Tensor&>(pre2d), bias, x2d.to(acc), w_ih.to(acc).t());
    } else {
      at::mm_out(const_cast<Tensor&>(pre2d), x2d.to(acc), w_ih.to(acc).t());
    }
  }
  // The recurrent weight w [N, K] for one op call: out [B, N] (+)= h [B, K] @ w^T forward, out [B, K] (+)=
  // dg [B, N] @ w backward; forward_acc: the forward product of half-typed h and w into a float32 out
  // (kAccGates devices).
  class Recurrent {
   public:
    Recurrent(const Tensor& w, int64_t, int64_t) : w_(w) {}
    void forward_acc(const Tensor& out, const Tensor& h, bool accumulate) const {
      if (!w_acc_.defined()) w_acc_ = w_.to(out.scalar_type());
      const Tensor ha = h.to(out.scalar_type());
      if (accumulate) {
        const_cast<Tensor&>(out).addmm_(ha, w_acc_.t());
      } else {
        at::mm_out(const_cast<Tensor&>(out), ha, w_acc_.t());
      }
    }
    void forward(const Tensor& out, const Tensor& h, bool accumulate) const {
      if (accumulate) {
        const_cast<Tensor&>(out).addmm_(h, w_.t());
      } else {
        at::mm_out(const_cast<Tensor&>(out), h, w_.t());
      }
    }
    void backward(const Tensor& out, const Tensor& dg, bool accumulate) const {
      if (accumulate) {
        const_cast<Tensor&>(out).addmm_(dg, w_);
      } else {
        at::mm_out(const_cast<Tensor&>(out), dg, w_);
      }
    }

   private:
    Tensor w_;
    mutable Tensor w_acc_;  // w in float32, made on the first forward_acc
  };
};

// Whether this device keeps a dtype's gate pre-activations in float32 (AtenDevice::kAccGates): half types only.
template <class Dev>
bool acc_gates_for(at::ScalarType dtype, int64_t T) {
  return Dev::kAccGates && acc_type(dtype) != dtype && Dev::acc_gates_enabled(T, dtype);
}

// The recurrent product out (+)= h @ w^T through the device's hooks: its float32-output GEMM when out is
// float32 and h half-typed (kAccGates devices only), else its GEMM in h's dtype.
template <class Dev, class Rec>
void recurrent_forward(const Rec& w, const Tensor& out, const Tensor& h, bool accumulate) {
  if constexpr (Dev::kAccGates) {
    if (out.scalar_type() != h.scalar_type()) return w.forward_acc(out, h, accumulate);
  }
  w.forward(out, h, accumulate);
}

// One forward step's operands (slices at step t; undefined where the cell has none).
template <class Cell>
struct ForwardStep {
  Tensor gates;   // [B, G] S: the step's input term (+ the recurrent product unless kSeparateRec); the
                  // activated gates out. With `pre`: out only
  Tensor pre;     // [B, G] A or undefined: with Dev::kAccGates and a half type, what `gates` holds on the
                  // way in, in float32 (the passes read it there and may use it as scratch)
  Tensor rec;     // [B, G] S (A with `pre`): h_{t-1} W_hh^T (kSeparateRec only)
  Tensor h_prev;  // [B, P] S
  Tensor c_prev;  // [B, H] A
  Tensor c;       // [B, H] A out
  Tensor h;       // [B, H] S out: the new (unprojected) hidden state
  int64_t t, s;   // the step and its position in processing order
  typename Cell::Saved* saved;
  const typename Cell::Params* params;
};

// One backward step's operands.
template <class Cell>
struct BackwardStep {
  Tensor gates;    // [B, G] S as saved (activated)
  Tensor c;        // [B, H] A this step's cell state
  Tensor c_prev;   // [B, H] A
  Tensor h_prev;   // [B, P] S (kNeedsHPrev only)
  Tensor dh;       // [B, H] S: the whole gradient reaching the (unprojected) h_t
  Tensor dc;       // [B, H] A: the gradient reaching c_t from the step after
  Tensor dgx;      // [B, G] S out: gradient of the gates' input term
  Tensor dgh;      // [B, G] S out: gradient of h_{t-1} W_hh^T (the same tensor as dgx unless kSeparateRec)
  Tensor dc_prev;  // [B, H] A out
  Tensor dh_prev;  // [B, P] S out, or undefined: a part of dh_{t-1} that bypasses the recurrent GEMM
  int64_t t;
  const typename Cell::SavedIn* saved;
  typename Cell::Grads* grads;
  const typename Cell::Params* params;
};

// Checks the arguments every cell has; returns the dimensions. `proj` allows w_hr.
template <class Cell>
Dims check_layer(const Check& chk, const LayerArgs& a) {
  const Tensor& x = a.input;
  if (!(x.defined() && x.layout() == at::kStrided && x.dim() == 3)) {
    chk.fail("input", "a 3-D tensor [T, B, I] (strided)", x);
  }
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2);
  const int64_t g = Cell::kGates;
  if (!(a.w_ih.defined() && a.w_ih.dim() == 2 && a.w_ih.size(0) > 0 && a.w_ih.size(0) % g == 0)) {
    chk.fail("w_ih", std::string("a 2-D tensor [") + std::to_string(g) + "H, " + std::to_string(I) +
                         "] with H > 0", a.w_ih);
  }
  const int64_t G = a.w_ih.size(0), H = G / g;
  chk("w_ih", a.w_ih, {G, I});
  if (defined(a.w_hr) && !Cell::kHasProj) chk.fail("w_hr", "is not an argument of this cell");
  const int64_t P = defined(a.w_hr) ? a.w_hr->size(0) : H;
  chk.optional("w_hr", a.w_hr, {-1, H});
  if (defined(a.w_hr) && P <= 0) chk.fail("w_hr", "must have proj_size > 0 rows, got [0, " + std::to_string(H) + "]");
  chk("w_hh", a.w_hh, {G, P});
  chk.optional("b_ih", a.b_ih, {G});
  chk.optional("b_hh", a.b_hh, {G});
  chk("h0", a.h0, {B, P});
  if (Cell::kHasC) chk("c0", a.c0, {B, H});
  chk.optional("lengths", a.lengths, {B}, at::kLong);
  return Dims{T, B, I, H, G, P};
}

// One forward step on the first `bt` rows (the active ones, see prefix_active_rows); the other rows keep
// their state, emit zeros, and their cell state is what the saved `c` holds for them.
template <class Cell, class Dev, class Rec>
void prefix_forward_step(ForwardStep<Cell>& st, const Rec& w_hh, const Tensor& rec, const Tensor& out_t,
                         const Tensor& h_state, const Tensor& c_state, const Tensor& c_t, const Tensor& hraw,
                         const OptTensor& w_hr, int64_t bt, int64_t t, int64_t s) {
  const int64_t B = out_t.size(0);
  const bool proj = defined(w_hr);
  if (bt < B) {
    const_cast<Tensor&>(out_t).narrow(0, bt, B - bt).zero_();
    if (Cell::kHasC) const_cast<Tensor&>(c_t).narrow(0, bt, B - bt).copy_(c_state.narrow(0, bt, B - bt));
    // The saved gates of an inactive row hold its input term, as where the projection is made in place
    // (never uninitialised memory in an op's output).
    if (st.pre.defined()) st.gates.narrow(0, bt, B - bt).copy_(st.pre.narrow(0, bt, B - bt));
  }
  if (bt == 0) return;
  auto rows = [&](const Tensor& x) { return (x.defined() && bt < B) ? x.narrow(0, 0, bt) : x; };
  st.gates = rows(st.gates);
  st.pre = rows(st.pre);
  st.rec = rows(rec);
  st.h_prev = rows(h_state);
  st.c_prev = Cell::kHasC ? rows(c_state) : Tensor();
  st.c = Cell::kHasC ? rows(c_t) : Tensor();
  const Tensor out_v = rows(out_t);
  st.h = proj ? rows(hraw) : out_v;
  st.t = t;
  st.s = s;
  recurrent_forward<Dev>(w_hh, Cell::kSeparateRec ? st.rec : (st.pre.defined() ? st.pre : st.gates), st.h_prev,
                         /*accumulate=*/!Cell::kSeparateRec);
  Cell::template forward_step<Dev>(st);
  if (proj) at::mm_out(const_cast<Tensor&>(out_v), st.h, w_hr->t());
  rows(h_state).copy_(out_v);
  if (Cell::kHasC) rows(c_state).copy_(st.c);
}

// dst = src for two contiguous tensors of one dtype and element count, whatever their shapes: a memcpy on
// the CPU (a TensorIterator copy_ costs ~1 us of setup, as much as a whole streaming step's kernels), copy_
// elsewhere.
inline void copy_flat(const Tensor& dst, const Tensor& src) {
  if (dst.is_cpu() && src.is_cpu() && dst.is_contiguous() && src.is_contiguous() &&
      dst.scalar_type() == src.scalar_type() && dst.numel() == src.numel()) {
    if (src.numel() > 0) std::memcpy(dst.data_ptr(), src.data_ptr(), src.nbytes());
    return;
  }
  const_cast<Tensor&>(dst).view(src.sizes()).copy_(src);
}

// ------------------------------------------------------------------------------------------------------
// Forward over the whole sequence. Returns output [T, B, P], h_n [B, P], c_n [B, H] (undefined without c),
// and with training the saved gates [T, B, G] (activated), cells [T, B, H] A and the cell's Saved.
template <class Cell>
struct ForwardResult {
  Tensor output, h_n, c_n, gates, cells;
  typename Cell::Saved saved;
};

// One inference step without lengths (a streaming call: T == 1) through the same hooks as layer_forward's
// step loop, minus that loop's per-call machinery: its chunked buffers, per-buffer StepSlices (two selects
// each), the 2-D views of each step and the TensorIterator copies of the final state. At B = 1, H = 64
// float32 that machinery was ~30 ATen calls of a one-step call's ~40 (torch.profiler), and most of its time.
// Same operations on the same values as the loop, so the same results, bit for bit (tests/test_streaming.py).
// input [1, B, I] -> output [1, B, P], h_n [B, P], c_n [B, H].
template <class Cell, class Dev>
ForwardResult<Cell> one_step_forward(const LayerArgs& a, const Dims& d, const typename Cell::Params& params) {
  const int64_t B = d.B, I = d.I, H = d.H, G = d.G, P = d.P;
  const bool proj = defined(a.w_hr);
  const auto dtype = a.input.scalar_type();
  const auto acc = acc_type(dtype);
  const auto opts = a.input.options();
  typename Cell::Saved saved = Cell::Saved::alloc(d, opts, /*training=*/false);
  Tensor gates = at::empty({B, G}, opts);
  const Tensor x2d = a.input.is_contiguous() ? a.input.view({B, I}) : a.input.reshape({B, I});
  const Tensor h_prev = a.h0.contiguous();
  const Tensor bias = Cell::input_bias(a, params);
  ForwardStep<Cell> st;
  st.gates = gates;
  st.rec = Cell::kSeparateRec ? at::empty({B, G}, opts) : Tensor();
  const Tensor& rec = Cell::kSeparateRec ? st.rec : gates;
  // Both products at once where the device can and the cell has nothing to do between them; else as the
  // step loop does.
  const bool fused = !Cell::kProjectEpilogue && Dev::one_step_gates(gates, x2d, a.w_ih, bias, rec, h_prev, a.w_hh);
  if (!fused) {
    Dev::input_mm(gates, x2d, a.w_ih, bias);
    Cell::template project_epilogue<Dev>(gates, Tensor(), saved, 0, 1, params);
    const typename Dev::Recurrent w_hh(a.w_hh, B, 1);
    recurrent_forward<Dev>(w_hh, rec, h_prev, /*accumulate=*/!Cell::kSeparateRec);
  }
  ForwardResult<Cell> r;
  r.output = at::empty({1, B, P}, opts);
  r.h_n = at::empty({B, P}, opts);
  st.h_prev = h_prev;
  if (Cell::kHasC) {
    st.c_prev = convert_flat(a.c0, acc).contiguous();
    // The new cell state goes straight to c_n where it is kept in the storage type.
    st.c = at::empty({B, H}, opts.dtype(acc));
  }
  st.h = proj ? at::empty({B, H}, opts) : r.h_n;
  st.t = 0;
  st.s = 0;
  st.saved = &saved;
  st.params = &params;
  Cell::template forward_step<Dev>(st);
  if (proj) at::mm_out(r.h_n, st.h, a.w_hr->t());
  copy_flat(r.output, r.h_n);
  if (Cell::kHasC) r.c_n = convert_flat(st.c, dtype);
  return r;
}

template <class Cell, class Dev>
ForwardResult<Cell> layer_forward(const Check& chk, const LayerArgs& a, const typename Cell::Params& params,
                                  bool training) {
  // The ATen calls below are the op's internals, never recorded by autograd (the op's gradient is its
  // backward op), even when the op is called directly on tensors that require grad.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Dims d = check_layer<Cell>(chk, a);
  Cell::check_params(chk, d, params);
  Dev::check_dtype(chk, a.input);
  const typename Dev::Call call(a.input, d.T);
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H, G = d.G, P = d.P;
  const bool proj = defined(a.w_hr);
  const auto acc = acc_type(a.input.scalar_type());
  const auto opts = a.input.options();

  // 1. The input projection in one GEMM with the cell's bias folded in. In training the [T, B, G] buffer is
  //    then activated in place step by step and ends up holding the gates backward needs. Inference saves
  //    nothing, so it projects `chunk` steps at a time into one reused buffer of at most 2M elements (8 MiB
  //    in float32): memory (and first-touching fresh pages) no longer grows with T, while each GEMM stays
  //    tall enough to run near peak (1 MiB chunks measured slower than one projection at B=32, H=512).
  //    With float32 pre-activations for a half type (Dev::kAccGates) the projection goes to a float32
  //    buffer `pre`, chunked in training too (2^19 elements there, see chunk_elems), and the passes write
  //    the activated gates to `gates` in S: the [T, B, G] saved gates in training, a one-step scratch in
  //    inference.
  typename Dev::template Sequence<Cell> seq(a, d, params, /*backward=*/false);
  const bool acc_gates = acc_gates_for<Dev>(a.input.scalar_type(), T);
  if (T == 1 && !training && !acc_gates && !seq && !defined(a.lengths)) return one_step_forward<Cell, Dev>(a, d, params);
  // The whole-sequence path relaunches per chunk (its weights reloaded each time): its own, larger chunks.
  // Training's float32 pre-activation chunks (half types) are live beside the saved gates: 2 MiB, not 8
  // (measured as fast at T=50-100, B=32-64, H=256-512, and 6 MiB off the forward's peak).
  const int64_t chunk_elems = seq ? seq.chunk_elems() : int64_t(1) << (training ? 19 : 21);
  const int64_t chunk = training && !acc_gates ? T
      : std::max<int64_t>(1, std::min<int64_t>(T, chunk_elems / std::max<int64_t>(1, B * G)));
  Tensor gates = at::empty({acc_gates ? (training ? T : 1) : chunk, B, G}, opts);
  Tensor pre = acc_gates ? at::empty({chunk, B, G}, opts.dtype(acc)) : Tensor();
  typename Cell::Saved saved = Cell::Saved::alloc(d, opts, training);
  // The folded bias is summed in float32 too where the pre-activations are.
  LayerArgs a_bias = a;
  if (acc_gates) {
    if (defined(a.b_ih)) a_bias.b_ih = a.b_ih->to(acc);
    if (defined(a.b_hh)) a_bias.b_hh = a.b_hh->to(acc);
  }
  const Tensor bias = Cell::input_bias(a_bias, params);
  // A device whose half-type GEMMs run on float32 copies (kAccGrads) gets W_ih's once per call, not per chunk.
  const Tensor w_ih_in = acc_gates && Dev::kAccGrads ? a.w_ih.to(acc) : a.w_ih;
  // A Sequence that adds the bias in its own epilogue spares the projection's GEMM the copy of the bias into
  // every row of its output (ATen's addmm writes it first: ~12% of a B=16, H=64 inference call).
  const bool seq_bias = seq && seq.adds_bias() && bias.defined();
  const Tensor proj_bias = seq_bias ? Tensor() : bias;
  auto project = [&](int64_t t_lo, int64_t n) {  // steps [t_lo, t_lo + n) into gates[0, n) or pre[0, n)
    if (n * B == 0) return;
    Tensor x2d = a.input.narrow(0, t_lo, n).reshape({n * B, I});
    if (acc_gates) {
      Tensor pre2d = pre.narrow(0, 0, n).view({n * B, G});
      if constexpr (Dev::kAccGates) Dev::input_mm_acc(pre2d, x2d, w_ih_in, proj_bias);
      Cell::template project_epilogue<Dev>(gates, pre2d, saved, t_lo, n, params);
      return;
    }
    Tensor g2d = gates.narrow(0, 0, n).view({n * B, G});
    Dev::input_mm(g2d, x2d, a.w_ih, proj_bias);
    Cell::template project_epilogue<Dev>(g2d, Tensor(), saved, t_lo, n, params);
  };

  Tensor output = at::empty({T, B, P}, opts);
  Tensor cells = Cell::kHasC ? at::empty({training ? T : std::min<int64_t>(T, 2), B, H}, opts.dtype(acc)) : Tensor();
  Tensor hraw = proj ? at::empty({B, H}, opts) : Tensor();
  Tensor rec = Cell::kSeparateRec ? at::empty({B, G}, acc_gates ? opts.dtype(acc) : opts) : Tensor();
  const std::vector<int64_t> active = prefix_active_rows(a.lengths, T);
  const bool prefix = !active.empty();
  const Tensor mask = defined(a.lengths) && !prefix ? active_mask(a.lengths, T) : Tensor();  // [T, B, 1]
  const typename Dev::Recurrent w_hh(a.w_hh, B, T);

  Tensor h_prev = a.h0.contiguous();
  Tensor c_prev = Cell::kHasC ? a.c0.to(acc).contiguous() : Tensor();
  // The prefix path keeps the state in buffers of its own: each step updates the rows still active.
  Tensor h_state, c_state;
  if (prefix) {
    h_state = a.h0.clone(at::MemoryFormat::Contiguous);
    if (Cell::kHasC) c_state = a.c0.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
  }
  StepSlices gates_at(gates), pre_at(pre), cells_at(cells), output_at(output);
  ForwardStep<Cell> st;
  st.rec = rec;
  st.saved = &saved;
  st.params = &params;
  int64_t t_lo = 0;  // the first step held in `gates`
  if (seq) {
    // One launch per chunk for the whole step loop (the Sequence checked: no projection, and lengths only
    // sorted ones, whose active rows it runs).
    for (int64_t s = 0; s < T; s += chunk) {
      const int64_t n = std::min(chunk, T - s);
      t_lo = a.reverse ? T - s - n : s;
      project(t_lo, n);
      seq.forward(SeqForwardCall<Cell>{gates, pre, t_lo, s, s + n, output, cells, h_prev, c_prev, &saved, &params,
                                       seq_bias ? bias : Tensor(), prefix ? h_state : Tensor()});
    }
    if (T > 0) {
      const int64_t last = a.reverse ? 0 : T - 1;
      h_prev = output[last];
      if (Cell::kHasC) c_prev = cells[cells.size(0) == T ? last : (T - 1) % 2];
      // With lengths the last step's cell states hold every row's final one (inactive rows carry theirs on).
      if (prefix && Cell::kHasC) c_state.copy_(c_prev);
    }
  }
  for (int64_t s = 0; s < (seq ? 0 : T); ++s) {
    const int64_t t = a.reverse ? T - 1 - s : s;
    if (s % chunk == 0) {
      const int64_t n = std::min(chunk, T - s);
      t_lo = a.reverse ? T - s - n : s;
      project(t_lo, n);
    }
    if (acc_gates) {
      st.gates = gates_at[training ? t : 0];
      st.pre = pre_at[t - t_lo];
    } else {
      st.gates = gates_at[t - t_lo];
    }
    Tensor out_t = output_at[t];
    if (prefix) {
      prefix_forward_step<Cell, Dev>(st, w_hh, rec, out_t, h_state, c_state,
                                     Cell::kHasC ? cells_at[training ? t : s % 2] : Tensor(), hraw, a.w_hr,
                                     active[t], t, s);
      continue;
    }
    // 2. The recurrent product, into the step's slice of the projection or into its own buffer.
    recurrent_forward<Dev>(w_hh, Cell::kSeparateRec ? rec : (acc_gates ? st.pre : st.gates), h_prev,
                           /*accumulate=*/!Cell::kSeparateRec);
    st.h_prev = h_prev;
    st.c_prev = c_prev;
    st.c = Cell::kHasC ? cells_at[training ? t : s % 2] : Tensor();
    st.h = proj ? hraw : out_t;
    st.t = t;
    st.s = s;
    Cell::template forward_step<Dev>(st);
    if (proj) at::mm_out(out_t, hraw, a.w_hr->t());
    if (mask.defined()) {
      // Inactive elements keep their state and emit zeros, as a packed sequence would.
      const Tensor m = mask[t];
      if (Cell::kHasC) st.c.copy_(at::where(m, st.c, c_prev));
      Tensor h_state = at::where(m, out_t, h_prev);
      out_t.masked_fill_(m.logical_not(), 0);
      h_prev = h_state;
    } else {
      h_prev = out_t;
    }
    c_prev = st.c;
  }
  // Outputs of a custom op may not alias each other or the inputs: copy the final state out.
  ForwardResult<Cell> r;
  r.output = output;
  if (prefix) {
    h_prev = h_state;
    c_prev = c_state;
  }
  r.h_n = prefix ? h_state : h_prev.clone();
  if (Cell::kHasC) r.c_n = c_prev.to(a.input.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  if (training) {
    r.gates = gates;
    r.cells = cells;
    r.saved = std::move(saved);
  }
  return r;
}

// ------------------------------------------------------------------------------------------------------
// Backward over the whole sequence, from what the forward saved.
template <class Cell>
struct BackwardResult {
  Tensor grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_w_hr;
  Tensor dgx;         // [T, B, G] the gradient of the gates' input term (masked)
  Tensor dgh;         // [T, B, G] of the recurrent product (== dgx unless kSeparateRec)
  typename Cell::Grads grads;
};

// grad_output [T, B, P], grad_h_n [B, P], grad_c_n [B, H] (cells with c); output [T, B, P], gates
// [T, B, G], cells [T, B, H] A as the forward returned them.
template <class Cell, class Dev>
BackwardResult<Cell> layer_backward(const Check& chk, const LayerArgs& a, const typename Cell::Params& params,
                                    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
                                    const Tensor& output, const Tensor& gates_in, const Tensor& cells_in,
                                    const typename Cell::SavedIn& saved) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in layer_forward
  const Dims d = check_layer<Cell>(chk, a);
  Cell::check_params(chk, d, params);
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H, G = d.G, P = d.P;
  // The passes index every saved tensor as dense rows: a wrong shape, dtype or device in a direct call would
  // read out of bounds, so all are checked, and made contiguous.
  const auto dtype = a.input.scalar_type();
  const auto acc = acc_type(dtype);
  chk("grad_output", grad_output, {T, B, P});
  chk("grad_h_n", grad_h_n, {B, P});
  if (Cell::kHasC) chk("grad_c_n", grad_c_n, {B, H});
  chk("output", output, {T, B, P});
  chk("gates", gates_in, {T, B, G});
  if (Cell::kHasC) chk("cells", cells_in, {T, B, H}, acc);
  Cell::check_saved(chk, d, saved);
  Dev::check_dtype(chk, a.input);
  const typename Dev::Call call(a.input, T);
  const bool proj = defined(a.w_hr);
  const auto opts = a.input.options();
  const Tensor gates = gates_in.contiguous();
  const Tensor cells = Cell::kHasC ? cells_in.contiguous() : Tensor();
  const Tensor out = output.contiguous();
  const Tensor gout = grad_output.contiguous();
  const Tensor mask = defined(a.lengths) ? active_mask(a.lengths, T) : Tensor();  // [T, B, 1]
  const std::vector<int64_t> active = prefix_active_rows(a.lengths, T);  // see layer_forward
  const bool prefix = !active.empty();

  BackwardResult<Cell> r;
  r.grads = Cell::Grads::alloc(d, opts);
  Tensor dgx = at::empty({T, B, G}, opts);
  Tensor dgh = Cell::kSeparateRec ? at::empty({T, B, G}, opts) : dgx;
  // h_{t-1} for every step, when the cell needs it or the mask makes the shifted outputs wrong for it.
  // On the prefix path (sorted lengths) a row is active over steps [0, len), so where its gradient is not
  // zero its h_{t-1} is the shifted output, as without lengths -- except in reverse at its first step
  // (t = len - 1 < T - 1), which started from h0, not from the zero output at t + 1: grad_w_hh adds those
  // rows below, and no [T, B, P] copy is made.
  Tensor h_prev_all;
  if (Cell::kNeedsHPrev || (mask.defined() && !prefix)) {
    h_prev_all = step_start_states(out, a.h0, mask, a.reverse).contiguous();
  }
  // The unprojected hidden states, needed only for grad_w_hr: recomputed from the saved gates and cells.
  Tensor hraw_all, dh_all;
  if (proj) {
    hraw_all = Cell::hidden_states(gates, cells, saved, params);
    dh_all = at::empty({T, B, P}, opts);
  }
  Tensor dhraw = proj ? at::empty({B, H}, opts) : Tensor();
  const Tensor c0_acc = Cell::kHasC ? a.c0.to(acc).contiguous() : Tensor();

  // Buffers allocated once, not per step: dh_t (the whole gradient reaching h_t) and dh_rec (what reaches
  // h_{t-1} through the recurrence).
  Tensor dh = grad_h_n.contiguous();
  Tensor dh_t = at::empty({B, P}, opts);
  Tensor dh_rec[2] = {at::empty({B, P}, opts), at::empty({B, P}, opts)};
  Tensor dc = Cell::kHasC ? grad_c_n.to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous() : Tensor();
  Tensor dc_prev = Cell::kHasC ? at::empty({B, H}, opts.dtype(acc)) : Tensor();
  const typename Dev::Recurrent w_hh(a.w_hh, B, T);
  StepSlices gout_at(gout), gates_at(gates), cells_at(cells), dgx_at(dgx), dgh_at(dgh), hprev_at(h_prev_all);
  BackwardStep<Cell> st;
  st.saved = &saved;
  st.grads = &r.grads;
  st.params = &params;
  typename Dev::template Sequence<Cell> seq(a, d, params, /*backward=*/true);
  if (seq && T > 0) {
    // The whole step loop in one launch; dh and dc end as grad_h0 and grad_c0.
    Tensor gh0 = at::empty({B, P}, opts);
    Tensor gc0 = Cell::kHasC ? at::empty({B, H}, opts.dtype(acc)) : Tensor();
    seq.backward(SeqBackwardCall<Cell>{gates, cells, c0_acc, h_prev_all, gout, dh, dc, dgx, dgh, gh0, gc0, &saved,
                                       &params, &r.grads});
    dh = gh0;
    dc = gc0;
  }
  for (int64_t s = (seq ? -1 : T - 1); s >= 0; --s) {
    const int64_t t = a.reverse ? T - 1 - s : s;
    at::add_out(dh_t, dh, gout_at[t]);
    if (proj) {
      dh_all[t].copy_(dh_t);
      at::mm_out(dhraw, dh_t, *a.w_hr);
    }
    Tensor dh_next = dh_rec[s % 2];
    st.gates = gates_at[t];
    if (Cell::kHasC) {
      st.c = cells_at[t];
      st.c_prev = s > 0 ? cells_at[a.reverse ? t + 1 : t - 1] : c0_acc;
    }
    st.h_prev = Cell::kNeedsHPrev ? hprev_at[t] : Tensor();
    st.dh = proj ? dhraw : dh_t;
    st.dc = dc;
    st.dgx = dgx_at[t];
    st.dgh = Cell::kSeparateRec ? dgh_at[t] : st.dgx;
    st.dc_prev = dc_prev;
    st.dh_prev = Cell::kDirectDh ? dh_next : Tensor();
    st.t = t;
    if (prefix) {
      // Only the first bt rows ran this step; the others pass their state's gradients through unchanged
      // and feed no weight.
      const int64_t bt = active[t];
      if (bt < B) {
        const int64_t n = B - bt;
        st.dgx.narrow(0, bt, n).zero_();
        if (Cell::kSeparateRec) st.dgh.narrow(0, bt, n).zero_();
        if (Cell::kHasC) dc_prev.narrow(0, bt, n).copy_(dc.narrow(0, bt, n));
        dh_next.narrow(0, bt, n).copy_(dh.narrow(0, bt, n));
        Cell::mask_step(st, mask[t].logical_not());
        auto rows = [&](Tensor& x) {
          if (x.defined()) x = x.narrow(0, 0, bt);
        };
        for (Tensor* x : {&st.gates, &st.c, &st.c_prev, &st.h_prev, &st.dh, &st.dc, &st.dgx, &st.dgh, &st.dc_prev,
                          &st.dh_prev}) {
          rows(*x);
        }
      }
      if (bt > 0) {
        Cell::template backward_step<Dev>(st);
        w_hh.backward(bt < B ? dh_next.narrow(0, 0, bt) : dh_next, st.dgh, /*accumulate=*/Cell::kDirectDh);
      }
      dh = dh_next;
      if (Cell::kHasC) std::swap(dc, dc_prev);
      continue;
    }
    Cell::template backward_step<Dev>(st);
    // What reaches h_{t-1} through the recurrence (plus the cell's direct part, already in dh_next).
    w_hh.backward(dh_next, st.dgh, /*accumulate=*/Cell::kDirectDh);
    if (mask.defined()) {
      // An inactive element passes its state's gradients through unchanged and feeds no weight; its output
      // there is a constant zero, so grad_output at that step reaches nothing (dh, not dh_t, is carried).
      const Tensor m = mask[t];
      const Tensor off = m.logical_not();
      st.dgx.masked_fill_(off, 0);
      if (Cell::kSeparateRec) st.dgh.masked_fill_(off, 0);
      if (Cell::kHasC) dc_prev.copy_(at::where(m, dc_prev, dc));
      Cell::mask_step(st, off);
      // dh_next was formed from the unmasked gradients: rebuild it for the inactive rows.
      dh_next.copy_(at::where(m, dh_next, dh));
    }
    dh = dh_next;
    if (Cell::kHasC) std::swap(dc, dc_prev);
  }
  if (Cell::kHasC) r.grad_c0 = dc.to(dtype, /*non_blocking=*/false, /*copy=*/true);
  r.grad_h0 = dh.clone();

  // 3. Everything that does not feed the recurrence: a few GEMMs over all steps at once.
  const Tensor dproj = Cell::template input_term_grad<Dev>(dgx, saved, r.grads, params);
  const Tensor dp2 = dproj.view({T * B, G});
  // With acc_mm these GEMMs run in float32 on float32 copies of row chunks (mm_acc_rows, mm_acc_tn: a few
  // MiB at a time, so training's peak memory does not grow by float32 copies of [T, B, G]).
  const bool acc_mm = Dev::kAccGrads && acc_gates_for<Dev>(dtype, T);
  r.grad_input = (acc_mm ? mm_acc_rows<Dev>(dp2, a.w_ih, dtype) : Dev::mm(dp2, a.w_ih)).view({T, B, I});
  const Tensor x2d = a.input.reshape({T * B, I});
  r.grad_w_ih = acc_mm ? mm_acc_tn<Dev>(dp2, x2d, dtype) : Dev::mm(dp2.t(), x2d);
  // grad_w_hh = sum_t dgh_t^T h_{t-1}. Unmasked, h_{t-1} is the previous step's output (h0 for the first):
  // one GEMM over the T-1 shifted steps plus one for h0, with no [T, B, P] copy of the shifted outputs.
  if (h_prev_all.defined()) {
    r.grad_w_hh = acc_mm ? mm_acc_tn<Dev>(dgh.view({T * B, G}), h_prev_all.view({T * B, P}), dtype)
                         : Dev::mm(dgh.view({T * B, G}).t(), h_prev_all.view({T * B, P}));
  } else if (T == 0) {
    r.grad_w_hh = at::zeros({G, P}, opts);
  } else {
    const int64_t first = a.reverse ? T - 1 : 0;
    if (acc_mm) {
      r.grad_w_hh = mm_acc_tn<Dev>(dgh[first], a.h0, acc);
    } else {
      r.grad_w_hh = at::mm(dgh[first].t(), a.h0);
    }
    if (T > 1) {
      const Tensor dg_rest = dgh.narrow(0, a.reverse ? 0 : 1, T - 1).reshape({(T - 1) * B, G});
      const Tensor h_rest = out.narrow(0, a.reverse ? 1 : 0, T - 1).reshape({(T - 1) * B, P});
      if (acc_mm) {
        r.grad_w_hh.add_(mm_acc_tn<Dev>(dg_rest, h_rest, acc));
      } else {
        Dev::addmm_(r.grad_w_hh, dg_rest.t(), h_rest);
      }
    }
    if (prefix && a.reverse) {
      // Rows b with 0 < len_b < T: dgh[len_b - 1, b]^T h0[b] (see h_prev_all above).
      // (The prefix path runs only with int64 lengths on the CPU, so everything here is on the CPU.)
      const Tensor& len = *a.lengths;
      const Tensor rows = at::nonzero((len > 0).logical_and(len < T)).view({-1});
      if (rows.numel() > 0) {
        const Tensor flat = (len.index_select(0, rows) - 1) * B + rows;
        const Tensor dg_first = dgh.view({T * B, G}).index_select(0, flat);
        const Tensor h_first = a.h0.index_select(0, rows);
        if (acc_mm) {
          r.grad_w_hh.add_(mm_acc_tn<Dev>(dg_first, h_first, acc));
        } else {
          r.grad_w_hh.addmm_(dg_first.t(), h_first);
        }
      }
    }
    if (acc_mm) r.grad_w_hh = r.grad_w_hh.to(dtype);
  }
  // A step where an element is inactive did not use its projection: no gradient reaches w_hr from it.
  if (proj && mask.defined()) dh_all.masked_fill_(mask.logical_not(), 0);
  if (proj) {
    r.grad_w_hr = acc_mm ? mm_acc_tn<Dev>(dh_all.view({T * B, P}), hraw_all.view({T * B, H}), dtype)
                         : Dev::mm(dh_all.view({T * B, P}).t(), hraw_all.view({T * B, H}));
  }
  r.dgx = dgx;
  r.dgh = dgh;
  return r;
}

// The sum over steps and batch of a [T, B, X] gradient, accumulated in A, as [X] in S. ATen's sum of a half
// type accumulates in float32 and rounds once (on CPU and CUDA alike); asking for a float32 result instead
// would first copy all of g to float32 (a [T, B, G] float32 buffer at training's peak).
inline Tensor sum_rows(const Tensor& g) {
  return at::sum(g.reshape({-1, g.size(-1)}), {0}, /*keepdim=*/false);
}

}  // namespace fastlstm
