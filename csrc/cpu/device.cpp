// The CPU device of the layer driver (csrc/layer.h): how a cell's pass runs (the per-ISA row kernels of
// rows.h, threaded over batch rows with at::parallel_for), and the recurrent GEMM hooks (batch-1 GEMV
// kernels; MKL's packed SGEMM with the weight packed once per op call). Registers every cell's ops for CPU.
#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/cpu/Utils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

#if AT_MKLDNN_ENABLED()
namespace at {
namespace native {
// aten/src/ATen/native/mkldnn/Matmul.cpp, exported by libtorch_cpu (its header is not installed): result =
// beta * result + alpha * mat1 @ mat2 through oneDNN's matmul primitive, written into result's own storage
// (2-D: mat1 [M, K], mat2 [K, N], result [M, N], each contiguous or transposed-contiguous).
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha);
}  // namespace native
}  // namespace at
#endif

#include "../cells/ops.h"
#include "../cells/pairs.h"
#include "rows.h"
#include "sequence.h"

namespace fastlstm {
namespace cpu {
namespace {

enum class Isa { DEFAULT, AVX2, AVX512 };

// The best instruction set ATen itself uses here (it honours ATEN_CPU_CAPABILITY and what the CPU
// supports), chosen once.
Isa isa() {
  static const Isa k = [] {
#if defined(__x86_64__) || defined(_M_X64)
    const std::string cap = at::get_cpu_capability();
    if (cap == "AVX512") return Isa::AVX512;
    if (cap == "AVX2") return Isa::AVX2;
#endif
    return Isa::DEFAULT;
  }();
  return k;
}

template <class Pass, typename S>
RowsFn<Pass, S> rows_fn() {
  switch (isa()) {
    case Isa::AVX512:
      return &isa_AVX512::rows<Pass, S>;
    case Isa::AVX2:
      return &isa_AVX2::rows<Pass, S>;
    default:
      return &isa_DEFAULT::rows<Pass, S>;
  }
}

const GemvKernels& gemv_kernels() {
  static const GemvKernels k = isa() == Isa::AVX512 ? isa_AVX512::gemv_kernels()
                               : isa() == Isa::AVX2 ? isa_AVX2::gemv_kernels()
                                                    : isa_DEFAULT::gemv_kernels();
  return k;
}

}  // namespace

template <class Seq, typename S>
SeqKernels<Seq, S> seq_kernels() {
  switch (isa()) {
    case Isa::AVX512:
      return {&isa_AVX512::seq_forward_step<Seq, S>, &isa_AVX512::seq_backward_step<Seq, S>,
              &isa_AVX512::rows<typename Seq::Fwd, S>, &isa_AVX512::rows<typename Seq::Bwd, S>};
    case Isa::AVX2:
      return {&isa_AVX2::seq_forward_step<Seq, S>, &isa_AVX2::seq_backward_step<Seq, S>,
              &isa_AVX2::rows<typename Seq::Fwd, S>, &isa_AVX2::rows<typename Seq::Bwd, S>};
    default:
      return {&isa_DEFAULT::seq_forward_step<Seq, S>, &isa_DEFAULT::seq_backward_step<Seq, S>,
              &isa_DEFAULT::rows<typename Seq::Fwd, S>, &isa_DEFAULT::rows<typename Seq::Bwd, S>};
  }
}
bool seq_simd() { return isa() != Isa::DEFAULT; }
bool amd_cpu();
bool seq_large_panels() { return amd_cpu(); }

namespace {

template <typename T>
struct TypeTag {
  using type = T;
};

// MKL's packed SGEMM (torch's mkl::_mkl_linear, the op Inductor uses for CPU linears): the weight is
// reordered once into MKL's internal panel format, so the T per-step GEMMs skip the packing that every plain
// sgemm call repeats (~1.7x on the step GEMM [32,512]x[512,2048], 1 thread). Looked up through the
// dispatcher: absent (no MKL in this torch build) means plain addmm_.
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

}  // namespace

// Whether the CPU is AMD's (CPUID's vendor string), read once.
bool amd_cpu() {
  static const bool k = [] {
#if defined(__x86_64__) || defined(_M_X64)
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(0, &a, &b, &c, &d) == 0) return false;
    char v[13];
    std::memcpy(v, &b, 4);
    std::memcpy(v + 4, &d, 4);
    std::memcpy(v + 8, &c, 4);
    v[12] = 0;
    return std::strcmp(v, "AuthenticAMD") == 0;
#else
    return false;
#endif
  }();
  return k;
}

namespace {

// Whether oneDNN's GEMMs in `dtype` outrun float32 ones on this CPU, where they run on its own half-type dot
// products (cpuinfo), float32 accumulation either way: AMX tiles (amx_bf16 / amx_fp16; bf16 [3200, 256] x
// [256, 1024] 0.90 ms against 8.6 ms in float32 on a Xeon with AMX), and bfloat16's AVX512-BF16 on an AMD CPU
// (the same product 5.5 ms against 10.3 ms in oneDNN's float32, the step GEMM [64, 256] x [256, 1024] 181 us
// against 263 us: an EPYC, Zen 4, 2 threads, side by side). Not AVX512-BF16 on a Xeon without AMX: there
// float32 won (bf16 input projection 190 GFLOP/s, float32 318 GFLOP/s at T=100, B=32, H=512).
// Whether cpuinfo (ATen's CPU capabilities) reports `name`.
bool cpu_flag(const char* name) {
  static const auto caps = at::cpu::get_cpu_capabilities();
  const auto it = caps.find(name);
  return it != caps.end() && it->second.isBool() && it->second.toBool();
}

inline bool native_half_gemms(at::ScalarType dtype) {
  static const std::pair<bool, bool> k = [] {
    const auto flag = cpu_flag;
    return std::make_pair((flag("amx_bf16") && flag("amx_tile")) || (flag("avx512_bf16") && amd_cpu()),
                          flag("amx_fp16") && flag("amx_tile"));
  }();
  return dtype == at::kBFloat16 ? k.first : dtype == at::kHalf ? k.second : false;
}

}  // namespace

bool seq_native_half_gemms(at::ScalarType dtype) { return native_half_gemms(dtype); }

// AMD's only: measured there (csrc/cpu/sequence.h). On a Xeon without AMX oneDNN's own AVX512-BF16 GEMMs
// ran slower than float32 ones (native_half_gemms), so the K-pair tile is not assumed to win there unmeasured.
bool seq_bf16_pairs() {
  static const bool k = isa() == Isa::AVX512 && cpu_flag("avx512_bf16") && amd_cpu();
  return k;
}

namespace {

// Which library runs the large float32 GEMMs (the input projection, the per-step recurrent products): oneDNN's
// matmul on an AMD CPU, MKL (packed for the steps) elsewhere. On an AMD EPYC (Zen 4, 2 threads) oneDNN
// measured 1.26-1.4x MKL's rate, side by side: [3200, 256] x [256, 1024] 9.9 ms against 12.4 ms (addmm),
// the step GEMM [64, 256] x [256, 1024] 232 us against 285-300 us, [32, 512] x [512, 2048] 532 us against
// 758 us; but slower below ~8M multiply-adds (oneDNN's per-call cost: [16, 64] x [64, 256] 34 us against
// 12 us; [8, 256] x [256, 1024] a tie), hence kOnednnMinMacs. On Intel CPUs MKL is the measured baseline.
// FASTLSTM_CPU_GEMM=mkl / onednn overrides the vendor rule (read per call; tests run both), and
// torch.backends.mkldnn.enabled = False keeps every GEMM on MKL. The choice depends only on the shape and
// these settings, never on timing, so a run is reproducible.
//
// at::native::mkldnn_matmul runs only where oneDNN has its bfloat16 instructions (AVX-512 BW/VL/DQ or
// AVX-NE-CONVERT: ATen's mkldnn_bf16_device_check), whatever the dtype: elsewhere it raises "mkldnn_matmul
// bf16 path needs ...", even for float32 (seen on an AMD EPYC Zen 3, AVX2 only, torch 2.13). ATen itself
// calls it only for half types and reduced-precision float32, so there every GEMM stays on MKL.
constexpr int64_t kOnednnMinMacs = int64_t(1) << 23;
bool onednn_matmul_runs() {
  static const bool k = isa() == Isa::AVX512 || cpu_flag("avx_ne_convert");
  return k;
}
inline bool onednn_gemms() {
#if AT_MKLDNN_ENABLED()
  if (!at::globalContext().userEnabledMkldnn() || !onednn_matmul_runs()) return false;
  const char* v = std::getenv("FASTLSTM_CPU_GEMM");
  if (v != nullptr && std::strcmp(v, "onednn") == 0) return true;
  if (v != nullptr && std::strcmp(v, "mkl") == 0) return false;
  return amd_cpu();
#else
  return false;
#endif
}
// Whether out [M, N] (+)= a [M, K] @ b [K, N] goes to oneDNN: onednn_gemms(), a product of kOnednnMinMacs or
// more, float32 throughout, out contiguous, a and b contiguous or transposed-contiguous (oneDNN's plain layouts).
inline bool onednn_takes(const Tensor& out, const Tensor& a, const Tensor& b) {
#if AT_MKLDNN_ENABLED()
  auto plain = [](const Tensor& t) {
    return t.scalar_type() == at::kFloat && t.dim() == 2 && !t.is_conj() && !t.is_neg() &&
           (t.is_contiguous() || t.t().is_contiguous());
  };
  return plain(a) && plain(b) && out.scalar_type() == at::kFloat && out.is_contiguous() &&
         a.size(0) * a.size(1) * b.size(1) >= kOnednnMinMacs && onednn_gemms();
#else
  return false;
#endif
}
// out (+)= a @ b through oneDNN where onednn_takes says so (false: nothing done).
inline bool onednn_mm(const Tensor& out, const Tensor& a, const Tensor& b, bool accumulate) {
#if AT_MKLDNN_ENABLED()
  if (!onednn_takes(out, a, b)) return false;
  at::native::mkldnn_matmul(a, b, out, accumulate ? 1.f : 0.f, 1.f);
  return true;
#else
  return false;
#endif
}

// Fewer steps than this and packing costs more than it saves: MKL's reorder of [2048, 512] measured 447 us
// against 496 us for a packed step and 757 us for a plain one (break-even ~2 steps).
constexpr int64_t kMinPackedSteps = 4;

}  // namespace

// AtenDevice's dtype check; the GEMMs are this device's own (GEMV kernels, MKL's packed SGEMM).
struct CpuDevice : AtenDevice {
  // bfloat16 / float16 layers of kMinPackedSteps steps or more run their forward GEMMs in float32 on copies
  // of the operands made once per call (the weights, MKL-packed) or per chunk (the input): this CPU's
  // float32 GEMMs outrun its half-type ones (a Xeon without AMX; measured: bf16 input projection 190 GFLOP/s,
  // float32 318 GFLOP/s at T=100, B=32, H=512), and the pre-activations are then float32, as on CUDA and in
  // cuDNN.
  //
  // Not where oneDNN's half-type GEMMs are the faster ones (native_half_gemms: AMX, or bfloat16's AVX512-BF16
  // on an AMD CPU): there its half-type GEMMs (float32 accumulation, one rounding) outrun float32 ones, and the
  // layer keeps its gates in the storage dtype, as below 4 steps: the GEMMs are ATen's half-type ones,
  // backward's included.
  static constexpr bool kAccGates = true;
  static bool acc_gates_enabled(int64_t T, at::ScalarType dtype) { return T >= kMinPackedSteps && !native_half_gemms(dtype); }
  static constexpr bool kAccGrads = true;
  // A layer's whole step loop in one parallel region, weights resident per thread (sequence.h).
  template <class Cell>
  using Sequence = CpuSequence<Cell>;

  // pre2d [R, G] float32 = x2d [R, I] @ w_ih^T (+ bias [G] float32), x2d half-typed, w_ih float32 (the
  // driver's once-per-call copy, kAccGrads) or half-typed.
  static void input_mm_acc(const Tensor& pre2d, const Tensor& x2d, const Tensor& w_ih, const Tensor& bias) {
    input_mm(pre2d, x2d.to(at::kFloat), w_ih.to(at::kFloat), bias);
  }

  // Runs Pass over `rows` batch rows of width H, in parallel over rows; make(TypeTag<S>) gives its Args<S>.
  template <class Pass, class Make>
  static void run(const Tensor& like, int64_t rows, int64_t H, const Make& make) {
    if (rows <= 0) return;
    // Rows per task: below ~16K elements per task, threading costs more than it saves.
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, 4 * H));
    auto go = [&](auto tag) {
      using S = typename decltype(tag)::type;
      const auto args = make(tag);
      const RowsFn<Pass, S> fn = rows_fn<Pass, S>();
      at::parallel_for(0, rows, grain, [&](int64_t b0, int64_t b1) { fn(args, b0, b1, H); });
    };
    switch (like.scalar_type()) {
      case at::kFloat:
        return go(TypeTag<float>{});
      case at::kDouble:
        return go(TypeTag<double>{});
      case at::kBFloat16:
        return go(TypeTag<c10::BFloat16>{});
      case at::kHalf:
        return go(TypeTag<c10::Half>{});
      default:
        TORCH_CHECK(false, "fastlstm: unsupported dtype ", like.scalar_type());
    }
  }

  // AtenDevice's backward GEMMs, on oneDNN where onednn_takes says so.
  static Tensor mm(const Tensor& a, const Tensor& b) {
    if (a.scalar_type() != at::kFloat || a.dim() != 2 || b.dim() != 2) return at::mm(a, b);
    Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
    if (onednn_mm(out, a, b, /*accumulate=*/false)) return out;
    return at::mm_out(out, a, b);
  }
  static void addmm_(const Tensor& out, const Tensor& a, const Tensor& b) {
    if (!onednn_mm(out, a, b, /*accumulate=*/true)) const_cast<Tensor&>(out).addmm_(a, b);
  }

  // g2d [R, G] = x2d [R, I] @ w_ih^T (+ bias [G]). A single row (one streaming step at batch 1) goes through
  // the GEMV kernel, as the recurrent product does.
  static void input_mm(const Tensor& g2d, const Tensor& x2d, const Tensor& w_ih, const Tensor& bias) {
    if (x2d.size(0) == 1 && gemv_ok(x2d, w_ih) && g2d.is_contiguous()) {
      if (bias.defined()) {
        copy_flat(g2d, bias);  // [G] into [1, G]
      } else {
        const_cast<Tensor&>(g2d).zero_();
      }
      gemv(g2d, x2d, w_ih);
      return;
    }
    if (onednn_takes(g2d, x2d, w_ih.t()) && (!bias.defined() || bias.scalar_type() == at::kFloat)) {
      // The bias into every row first, as addmm does, then the product added onto it.
      if (bias.defined()) const_cast<Tensor&>(g2d).copy_(bias.view({1, -1}).expand_as(g2d));
      onednn_mm(g2d, x2d, w_ih.t(), /*accumulate=*/bias.defined());
      return;
    }
    AtenDevice::input_mm(g2d, x2d, w_ih, bias);
  }

  // One streaming step's two products at batch 1 in one parallel region over the gate rows (AtenDevice's
  // one_step_gates for the contract): each task fills its rows of gates with the bias, adds w_ih's rows . x,
  // and adds (or, into a separate rec, writes) w_hh's rows . h. The same GEMV kernel calls in the same
  // order as input_mm and Recurrent::forward make, so the same results; one fork/join instead of two, and
  // a task's rows of both weights are read while its gate rows are in L1.
  static bool one_step_gates(const Tensor& gates, const Tensor& x2d, const Tensor& w_ih, const Tensor& bias,
                             const Tensor& rec, const Tensor& h, const Tensor& w_hh) {
    if (x2d.size(0) != 1 || !gemv_ok(x2d, w_ih) || !gemv_ok(h, w_hh) || !gates.is_contiguous() ||
        !rec.is_contiguous() || rec.scalar_type() != gates.scalar_type() || w_ih.size(0) != w_hh.size(0) ||
        gates.scalar_type() != x2d.scalar_type() || h.size(0) != 1)
      return false;
    if (bias.defined() && !(bias.is_contiguous() && bias.scalar_type() == gates.scalar_type() &&
                            bias.numel() == gates.numel()))
      return false;
    const int64_t R = w_ih.size(0), I = w_ih.size(1), P = w_hh.size(1);
    const auto fn = gemv_kernels().gemv;
    const auto dtype = x2d.scalar_type();
    const size_t es = gates.element_size();
    const bool separate = !rec.is_same(gates);
    char* g = static_cast<char*>(gates.data_ptr());
    char* rp = static_cast<char*>(rec.data_ptr());
    const char* bp = bias.defined() ? static_cast<const char*>(bias.data_ptr()) : nullptr;
    const void *wi = w_ih.data_ptr(), *wh = w_hh.data_ptr(), *xp = x2d.data_ptr(), *hp = h.data_ptr();
    at::parallel_for(0, R, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, I + P)), [&](int64_t r0, int64_t r1) {
      const size_t off = size_t(r0) * es, n = size_t(r1 - r0) * es;
      if (bp != nullptr) {
        std::memcpy(g + off, bp + off, n);
      } else {
        std::memset(g + off, 0, n);  // +0.0 in every floating type
      }
      fn(dtype, wi, xp, g, r0, r1, I);
      if (separate) std::memset(rp + off, 0, n);
      fn(dtype, wh, hp, rp, r0, r1, P);
    });
    return true;
  }

  // The recurrent weight w [N, K] (N = G, K = P) for the steps of one op call: out [B, N] (+)= h [B, K] @ w^T
  // forward, out [B, K] (+)= dg [B, N] @ w backward. The packed copies live as long as this object, i.e.
  // one op call: a weight can change between calls in ways no key would see (p.data.copy_, p.data = ...,
  // writes through .numpy(), vector_to_parameters leave the version counter alone), and a stale packed copy
  // is a silently wrong result (tests/test_weight_changes.py).
  class Recurrent {
   public:
    Recurrent(const Tensor& w, int64_t B, int64_t T) : w_(w), B_(B), T_(T), packable_(packable(w, B, T)) {}

    void forward(const Tensor& out, const Tensor& h, bool accumulate) const {
      forward_with(w_, packable_, fwd_, out, h, accumulate);
    }
    // out [B, N] float32 (+)= h [B, K] half-typed @ w^T, in float32 on w's float32 copy (made on first use,
    // packed like a float32 weight).
    void forward_acc(const Tensor& out, const Tensor& h, bool accumulate) const {
      const Tensor& w = acc_weights();  // sets packable_acc_: before it is read
      forward_with(w, packable_acc_, fwd_acc_, out, h.to(at::kFloat), accumulate);
    }

    void backward(const Tensor& out, const Tensor& dg, bool accumulate) const {
      if (at::isReducedFloatingType(w_.scalar_type()) && acc_gates_enabled(T_, w_.scalar_type())) {
        // Half types as forward_acc: float32 on the float32 copy, rounded once into out.
        const Tensor d = at::empty(out.sizes(), out.options().dtype(at::kFloat));
        const Tensor& w = acc_weights();
        backward_with(w, packable_acc_, bwd_acc_, d, dg.to(at::kFloat), /*accumulate=*/false);
        Tensor& o = const_cast<Tensor&>(out);
        if (accumulate) {
          o.add_(d);
        } else {
          o.copy_(d);
        }
        return;
      }
      backward_with(w_, packable_, bwd_, out, dg, accumulate);
    }

   private:
    struct Packed {
      Tensor ori, packed;  // ori: the [N, K] operand in linear's layout (contiguous); packed: MKL's reorder
    };
    // w in float32 for the half types' float32 products, made once per op call.
    const Tensor& acc_weights() const {
      if (!w_acc_.defined()) {
        w_acc_ = w_.to(at::kFloat).contiguous();
        packable_acc_ = packable(w_acc_, B_, T_);
      }
      return w_acc_;
    }
    // out [B, K] (+)= dg [B, N] @ w, out, dg and w of one dtype.
    void backward_with(const Tensor& w, bool packable, Packed& p, const Tensor& out, const Tensor& dg,
                       bool accumulate) const {
      Tensor& o = const_cast<Tensor&>(out);
      if (!accumulate && dg.size(0) == 1 && gemv_ok(dg, w) && o.is_contiguous()) {
        const int64_t R = w.size(0), C = w.size(1);
        const auto fn = gemv_kernels().gemv_t;
        const auto dtype = dg.scalar_type();
        const void* wp = w.data_ptr();
        const void* a = dg.data_ptr();
        void* y = o.data_ptr();
        at::parallel_for(0, C, std::max<int64_t>(16, 65536 / std::max<int64_t>(1, R)),
                         [&](int64_t c0, int64_t c1) { fn(dtype, wp, a, y, c0, c1, R, C); });
      } else if (onednn_mm(o, dg, w, accumulate)) {
      } else if (packable) {
        const Tensor d = linear(w, p, dg, [](const Tensor& x) { return x.t().contiguous(); });
        if (accumulate) {
          o.add_(d);
        } else {
          o.copy_(d);
        }
      } else if (accumulate) {
        o.addmm_(dg, w);
      } else {
        at::mm_out(o, dg, w);
      }
    }
    void forward_with(const Tensor& w, bool packable, Packed& p, const Tensor& out, const Tensor& h,
                      bool accumulate) const {
      Tensor& o = const_cast<Tensor&>(out);
      if (h.size(0) == 1 && gemv_ok(h, w) && o.is_contiguous()) {
        if (!accumulate) o.zero_();
        gemv(o, h, w);
      } else if (onednn_mm(o, h, w.t(), accumulate)) {
      } else if (packable) {
        const Tensor hw = linear(w, p, h, [](const Tensor& x) { return x.contiguous(); });
        if (accumulate) {
          o.add_(hw);
        } else {
          o.copy_(hw);
        }
      } else if (accumulate) {
        o.addmm_(h, w.t());
      } else {
        at::mm_out(o, h, w.t());
      }
    }
    static bool packable(const Tensor& w, int64_t B, int64_t T) {
      // Below ~1 MFLOP per step the op call costs more than the packing saves (measured at B=16, H=64).
      return MklPacked::get().linear.has_value() && B >= 2 && T >= kMinPackedSteps && w.scalar_type() == at::kFloat &&
             B * w.numel() >= (int64_t(1) << 19);
    }
    template <class MakeOri>
    Tensor linear(const Tensor& w, Packed& p, const Tensor& x, MakeOri make_ori) const {
      const auto& mkl = MklPacked::get();
      if (!p.packed.defined()) {
        at::NoGradGuard no_grad;
        p.ori = make_ori(w);
        p.packed = mkl.reorder->call(p.ori, B_);
      }
      return mkl.linear->call(x, p.packed, p.ori, std::nullopt, B_);
    }
    Tensor w_;
    int64_t B_, T_;
    bool packable_;
    mutable Packed fwd_, bwd_, fwd_acc_, bwd_acc_;
    mutable Tensor w_acc_;  // w in float32, for forward_acc
    mutable bool packable_acc_ = false;
  };

 private:
  static bool gemv_ok(const Tensor& x, const Tensor& w) {
    const auto dt = x.scalar_type();
    return (dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf) && w.scalar_type() == dt &&
           x.is_contiguous() && w.is_contiguous();
  }
  // y [1, R] += x [1, K] @ w [R, K]^T through the GEMV kernel.
  static void gemv(const Tensor& y, const Tensor& x, const Tensor& w) {
    const int64_t R = w.size(0), K = w.size(1);
    const auto fn = gemv_kernels().gemv;
    const auto dtype = x.scalar_type();
    const void* wp = w.data_ptr();
    const void* xp = x.data_ptr();
    void* yp = y.data_ptr();
    at::parallel_for(0, R, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, K)),
                     [&](int64_t r0, int64_t r1) { fn(dtype, wp, xp, yp, r0, r1, K); });
  }
};

}  // namespace cpu

TORCH_LIBRARY_IMPL(fastlstm, CPU, m) {
  register_cell_ops<cpu::CpuDevice>(m);
  PairOps<cpu::CpuDevice, /*Concurrent=*/true>::register_impls(m);
}

}  // namespace fastlstm
