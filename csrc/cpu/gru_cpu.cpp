// CPU implementation of the fastlstm GRU ops: the shared GRU layer driver (csrc/gru_layer.h) with CPU
// pointwise passes, vectorized with at::vec and threaded with at::parallel_for over batch rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <type_traits>

#include "../gru_layer.h"
#include "../lstm_math.h"

namespace fastlstm {
namespace {

// Why no at::vec here: in an extension built without -mavx2, at::vec::Vectorized is the generic fallback,
// whose exp/tanh are scalar libm calls per lane; those made the pointwise pass the largest cost of a small
// GRU. Instead the float path below uses branch-free exp/tanh written in plain arithmetic, which GCC/Clang
// auto-vectorize at -O3, and (on x86-64 Linux with GCC) is compiled for AVX-512, AVX2 and the baseline,
// chosen at load time (target_clones), so the package still runs on any x86-64 CPU.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTLSTM_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTLSTM_CPU_CLONES
#endif
#if defined(__GNUC__)
#define FASTLSTM_INLINE inline __attribute__((always_inline))
#else
#define FASTLSTM_INLINE inline
#endif

// exp for float, branch-free (Cephes' expf: range reduction by ln 2, degree-6 polynomial, exponent bits
// set directly), within ~2 ulp of expf on [-87, 88]; inputs are clamped there, so sigmoid/tanh saturate
// cleanly.
FASTLSTM_INLINE float exp_poly(float x) {
  x = x < 88.3762626647949f ? x : 88.3762626647949f;
  x = x > -87.3365447504f ? x : -87.3365447504f;
  // n = round(x / ln 2), by the 1.5 * 2^23 trick (exact for |t| < 2^22; no SSE4.1 round needed).
  const float t = x * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;
  x = x - n * 0.693359375f;
  x = x - n * -2.12194440e-4f;
  const float xx = x * x;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * xx + x + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// Activations for the float path, plugged into the shared cell math (lstm_math.h).
struct PolyAct {
  static FASTLSTM_INLINE float sigmoid(float x) { return 1.0f / (1.0f + exp_poly(-x)); }
  static FASTLSTM_INLINE float tanh(float x) {
    // (1 - e^-2|x|) / (1 + e^-2|x|) with x's sign; near 0 that cancels, so a short odd series takes over.
    const float ax = x < 0.0f ? -x : x;
    const float e = exp_poly(-2.0f * ax);
    const float big = (1.0f - e) / (1.0f + e);
    const float xx = x * x;
    const float small = ax * (1.0f + xx * (-0.333333333f + xx * (0.133333333f + xx * -0.0539682540f)));
    const float r = ax < 0.0625f ? small : big;
    return x < 0.0f ? -r : r;
  }
};

// float math for float/half/bfloat16 (PolyAct), libm for double (float64 is the accuracy path).
template <typename acc_t>
using ActFor = std::conditional_t<std::is_same_v<acc_t, float>, PolyAct, math::ScalarAct>;

// Rows per task: below ~16K gate elements per task, threading costs more than it saves.
inline int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, 3 * H)); }

// gates [B,3H] in/out, gh [B,3H], b_hn [H] or null, h_prev/hn_out/h_out [B,H]; rows b0..b1. Plain loops
// over j with no aliasing between the arrays, so that the compiler vectorizes them.
template <typename scalar_t>
FASTLSTM_INLINE void gru_forward_rows(scalar_t* __restrict__ gates, const scalar_t* __restrict__ gh_all,
                                      const scalar_t* __restrict__ b_hn, const scalar_t* __restrict__ h_prev,
                                      scalar_t* __restrict__ hn_out, scalar_t* __restrict__ h_out, int64_t b0,
                                      int64_t b1, int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  using Act = ActFor<acc_t>;
  for (int64_t b = b0; b < b1; ++b) {
    scalar_t* __restrict__ g = gates + b * 3 * H;
    const scalar_t* __restrict__ gh = gh_all + b * 3 * H;
    const scalar_t* __restrict__ hp = h_prev + b * H;
    scalar_t* __restrict__ hn = hn_out + b * H;
    scalar_t* __restrict__ h = h_out + b * H;
    for (int64_t j = 0; j < H; ++j) {
      // The saved hn is rounded to the input dtype; use the rounded value, so backward sees what forward did.
      const scalar_t hn_s = scalar_t(acc_t(gh[2 * H + j]) + (b_hn != nullptr ? acc_t(b_hn[j]) : acc_t(0)));
      acc_t r, z, n, hv;
      math::gru::cell_forward<acc_t, Act>(acc_t(g[j]), acc_t(g[H + j]), acc_t(g[2 * H + j]), acc_t(gh[j]),
                                          acc_t(gh[H + j]), acc_t(hn_s), acc_t(hp[j]), r, z, n, hv);
      g[j] = scalar_t(r);
      g[H + j] = scalar_t(z);
      g[2 * H + j] = scalar_t(n);
      hn[j] = hn_s;
      h[j] = scalar_t(hv);
    }
  }
}

// gates [B,3H], hn/h_prev [B,H], dh_next [B,H] (gradient from the step after), gout [B,H] (this step's
// output gradient) in; dgx/dgh [B,3H], dh_prev [B,H] out; rows b0..b1.
template <typename scalar_t>
FASTLSTM_INLINE void gru_backward_rows(const scalar_t* __restrict__ gates, const scalar_t* __restrict__ hn_all,
                                       const scalar_t* __restrict__ h_prev, const scalar_t* __restrict__ dh_next,
                                       const scalar_t* __restrict__ gout, scalar_t* __restrict__ dgx_all,
                                       scalar_t* __restrict__ dgh_all, scalar_t* __restrict__ dh_prev, int64_t b0,
                                       int64_t b1, int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  using Act = ActFor<acc_t>;
  for (int64_t b = b0; b < b1; ++b) {
    const scalar_t* __restrict__ g = gates + b * 3 * H;
    const scalar_t* __restrict__ hn = hn_all + b * H;
    const scalar_t* __restrict__ hp = h_prev + b * H;
    const scalar_t* __restrict__ dn = dh_next + b * H;
    const scalar_t* __restrict__ go = gout + b * H;
    scalar_t* __restrict__ dgx = dgx_all + b * 3 * H;
    scalar_t* __restrict__ dgh = dgh_all + b * 3 * H;
    scalar_t* __restrict__ dhp = dh_prev + b * H;
    for (int64_t j = 0; j < H; ++j) {
      acc_t dxr, dxz, dxn, dhn, dhpv;
      // dh = dh_next + gout is rounded to the input dtype first, as a separate add would round it.
      const acc_t dh = acc_t(scalar_t(acc_t(dn[j]) + acc_t(go[j])));
      math::gru::cell_backward<acc_t, Act>(acc_t(g[j]), acc_t(g[H + j]), acc_t(g[2 * H + j]), acc_t(hn[j]),
                                           acc_t(hp[j]), dh, dxr, dxz, dxn, dhn, dhpv);
      dgx[j] = scalar_t(dxr);
      dgx[H + j] = scalar_t(dxz);
      dgx[2 * H + j] = scalar_t(dxn);
      dgh[j] = scalar_t(dxr);
      dgh[H + j] = scalar_t(dxz);
      dgh[2 * H + j] = scalar_t(dhn);
      dhp[j] = scalar_t(dhpv);
    }
  }
}

// One compiled entry per dtype, cloned per instruction set (templates cannot carry target_clones).
#define FASTLSTM_GRU_ROWS(T, NAME)                                                                          \
  FASTLSTM_CPU_CLONES void gru_forward_rows_##NAME(T* g, const T* gh, const T* b, const T* hp, T* hn, T* h, \
                                                   int64_t b0, int64_t b1, int64_t H) {                     \
    gru_forward_rows<T>(g, gh, b, hp, hn, h, b0, b1, H);                                                    \
  }                                                                                                         \
  FASTLSTM_CPU_CLONES void gru_backward_rows_##NAME(const T* g, const T* hn, const T* hp, const T* dn,      \
                                                    const T* go, T* dgx, T* dgh, T* dhp, int64_t b0,        \
                                                    int64_t b1, int64_t H) {                                \
    gru_backward_rows<T>(g, hn, hp, dn, go, dgx, dgh, dhp, b0, b1, H);                                      \
  }
FASTLSTM_GRU_ROWS(float, f32)
FASTLSTM_GRU_ROWS(double, f64)
FASTLSTM_GRU_ROWS(at::BFloat16, bf16)
FASTLSTM_GRU_ROWS(at::Half, f16)
#undef FASTLSTM_GRU_ROWS

template <typename T>
void fwd_rows(T* g, const T* gh, const T* b, const T* hp, T* hn, T* h, int64_t b0, int64_t b1, int64_t H) {
  if constexpr (std::is_same_v<T, float>) gru_forward_rows_f32(g, gh, b, hp, hn, h, b0, b1, H);
  if constexpr (std::is_same_v<T, double>) gru_forward_rows_f64(g, gh, b, hp, hn, h, b0, b1, H);
  if constexpr (std::is_same_v<T, at::BFloat16>) gru_forward_rows_bf16(g, gh, b, hp, hn, h, b0, b1, H);
  if constexpr (std::is_same_v<T, at::Half>) gru_forward_rows_f16(g, gh, b, hp, hn, h, b0, b1, H);
}
template <typename T>
void bwd_rows(const T* g, const T* hn, const T* hp, const T* dn, const T* go, T* dgx, T* dgh, T* dhp, int64_t b0,
              int64_t b1, int64_t H) {
  if constexpr (std::is_same_v<T, float>) gru_backward_rows_f32(g, hn, hp, dn, go, dgx, dgh, dhp, b0, b1, H);
  if constexpr (std::is_same_v<T, double>) gru_backward_rows_f64(g, hn, hp, dn, go, dgx, dgh, dhp, b0, b1, H);
  if constexpr (std::is_same_v<T, at::BFloat16>) gru_backward_rows_bf16(g, hn, hp, dn, go, dgx, dgh, dhp, b0, b1, H);
  if constexpr (std::is_same_v<T, at::Half>) gru_backward_rows_f16(g, hn, hp, dn, go, dgx, dgh, dhp, b0, b1, H);
}

struct CpuGruBackend {
  static void gru_forward_pointwise(const Tensor& gates, const Tensor& gh, const Tensor& b_hn,
                                    const Tensor& h_prev, const Tensor& hn_out, const Tensor& h_out) {
    const int64_t B = gates.size(0), H = h_out.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gates.scalar_type(), "fastlstm_gru_forward", [&] {
      scalar_t* g = gates.data_ptr<scalar_t>();
      const scalar_t* ghp = gh.data_ptr<scalar_t>();
      const scalar_t* bp = b_hn.defined() ? b_hn.data_ptr<scalar_t>() : nullptr;
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      scalar_t* hn = hn_out.data_ptr<scalar_t>();
      scalar_t* h = h_out.data_ptr<scalar_t>();
      at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
        fwd_rows<scalar_t>(g, ghp, bp, hp, hn, h, b0, b1, H);
      });
    });
  }

  static void gru_backward_pointwise(const Tensor& gates, const Tensor& hn, const Tensor& h_prev,
                                     const Tensor& dh_next, const Tensor& gout, const Tensor& dgx,
                                     const Tensor& dgh, const Tensor& dh_prev) {
    const int64_t B = gates.size(0), H = hn.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gates.scalar_type(), "fastlstm_gru_backward", [&] {
      const scalar_t* g = gates.data_ptr<scalar_t>();
      const scalar_t* hnp = hn.data_ptr<scalar_t>();
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      const scalar_t* dn = dh_next.data_ptr<scalar_t>();
      const scalar_t* go = gout.data_ptr<scalar_t>();
      scalar_t* dx = dgx.data_ptr<scalar_t>();
      scalar_t* dhh = dgh.data_ptr<scalar_t>();
      scalar_t* dhp = dh_prev.data_ptr<scalar_t>();
      at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
        bwd_rows<scalar_t>(g, hnp, hp, dn, go, dx, dhh, dhp, b0, b1, H);
      });
    });
  }
};

void check_cpu_dtype(const Tensor& input) {
  const auto t = input.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf,
              "fastlstm: the CPU kernels support float32, float64, bfloat16 and float16, got ", t);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward_cpu(const Tensor& input, const Tensor& h0,
                                                           const Tensor& w_ih, const Tensor& w_hh,
                                                           const OptTensor& b_ih, const OptTensor& b_hh,
                                                           const OptTensor& lengths, bool reverse) {
  check_cpu_dtype(input);
  return gru_layer_forward<CpuGruBackend>(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, true);
}

std::tuple<Tensor, Tensor> gru_inference_cpu(const Tensor& input, const Tensor& h0, const Tensor& w_ih,
                                             const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                             const OptTensor& lengths, bool reverse) {
  check_cpu_dtype(input);
  auto r = gru_layer_forward<CpuGruBackend>(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, false);
  return {std::get<0>(r), std::get<1>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& h0, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& lengths, const Tensor& output, const Tensor& gates, const Tensor& hn,
    bool reverse) {
  check_cpu_dtype(input);
  return gru_layer_backward<CpuGruBackend>(grad_output, grad_h_n, input, h0, w_ih, w_hh, lengths, output, gates,
                                           hn, reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlstm, CPU, m) {
  m.impl("gru_forward", &gru_forward_cpu);
  m.impl("gru_inference", &gru_inference_cpu);
  m.impl("gru_backward", &gru_backward_cpu);
}

}  // namespace fastlstm
