// The body of the pointwise row kernels, included once per instruction set by kernels_*.cpp, each of which
// defines FASTLSTM_ISA (DEFAULT, AVX2, AVX512) first.
//
// ODR: everything from c10/ATen that at::vec pulls in is included BEFORE the `#pragma GCC target` below, so
// its inline functions are compiled for the baseline ISA here as in every other file (otherwise the linker
// could keep an AVX-512 copy of, say, a c10 helper for the whole library). After the pragma come only
// at::vec (its own inline namespace per CPU_CAPABILITY), sleef.h, and this file's kernels, in a namespace
// named after the ISA.
#pragma once

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Config.h>
#include <ATen/Dispatch.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/native/Math.h>
#include <ATen/native/cpu/zmath.h>
#include <ATen/native/quantized/AffineQuantizerBase.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/MathConstants.h>
#include <c10/util/copysign.h>

#include <cfloat>
#include <algorithm>
#include <type_traits>

#include "../lstm_math.h"
#include "pointwise.h"

#define FASTLSTM_CAT_(a, b) a##b
#define FASTLSTM_CAT(a, b) FASTLSTM_CAT_(a, b)

#if defined(__GNUC__) && !defined(__clang__)
#define FASTLSTM_TARGET_PRAGMAS 1
#endif

#if FASTLSTM_ISA_AVX512
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#if FASTLSTM_TARGET_PRAGMAS
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#elif defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), \
                             apply_to = function)
#endif
#elif FASTLSTM_ISA_AVX2
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#if FASTLSTM_TARGET_PRAGMAS
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#elif defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#endif
#else
#define CPU_CAPABILITY DEFAULT
#endif

// `#pragma GCC target` enables the instructions but not the feature macros, and sleef.h declares its
// 256/512-bit entry points only under them. Every x86 CPU ATen reports as AVX2 (AVX512) has these features.
#if FASTLSTM_ISA_AVX512 || FASTLSTM_ISA_AVX2
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#endif
#if FASTLSTM_ISA_AVX512
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace fastlstm {
namespace cpu {
namespace FASTLSTM_ISA {

using at::vec::Vectorized;

// Activations for SIMD registers, plugged into the shared cell math (lstm_math.h).
// float32 uses ATen's exp_u20 (a degree-5 polynomial, ~20 ulp, the exp of ATen's CPU softmax/attention)
// rather than Sleef's 1-ulp exp and tanh: measured ~8 ns per hidden unit with Sleef, the largest cost of a
// step at B=32, H=512; the error it adds (~1e-6 relative) is far below what float32 LSTM parity tolerates.
// exp_u20 clamps its input (min/max drop NaN), so NaN is put back: nn.LSTM propagates NaN and so must we.
// float64 keeps the exact functions.
struct VecAct {
  template <typename V>
  static V exp_fast(V x) {
    if constexpr (std::is_same_v<V, at::vec::Vectorized<float>>) {
      return V::blendv(x.exp_u20(), x, x.isnan());
    } else {
      return x.exp();
    }
  }
  template <typename V>
  static V sigmoid(V x) {
    return V(1) / (V(1) + exp_fast(x.neg()));
  }
  template <typename V>
  static V tanh(V x) {
    if constexpr (std::is_same_v<V, at::vec::Vectorized<float>>) {
      // tanh(x) = 1 - 2 / (e^{2x} + 1): saturates to +-1 where e^{2x} clamps, and is NaN for NaN.
      return V(1) - V(2) / (exp_fast(x + x) + V(1));
    } else {
      return x.tanh();
    }
  }
};

template <typename scalar_t, typename acc_t>
void forward_rows(scalar_t* gates, const acc_t* c_prev, acc_t* c_out, scalar_t* h_out, int64_t b0, int64_t b1,
                  int64_t H) {
  for (int64_t b = b0; b < b1; ++b) {
    scalar_t* g = gates + b * 4 * H;
    const acc_t* cp = c_prev + b * H;
    acc_t* c = c_out + b * H;
    scalar_t* h = h_out + b * H;
    int64_t j = 0;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      using V = Vectorized<scalar_t>;
      for (; j + V::size() <= H; j += V::size()) {
        V i, f, gg, o, cn, hn;
        math::cell_forward<V, VecAct>(V::loadu(g + j), V::loadu(g + H + j), V::loadu(g + 2 * H + j),
                                      V::loadu(g + 3 * H + j), V::loadu(cp + j), i, f, gg, o, cn, hn);
        i.store(g + j);
        f.store(g + H + j);
        gg.store(g + 2 * H + j);
        o.store(g + 3 * H + j);
        cn.store(c + j);
        hn.store(h + j);
      }
    }
    for (; j < H; ++j) {
      acc_t i, f, gg, o, cn, hn;
      math::cell_forward<acc_t>(acc_t(g[j]), acc_t(g[H + j]), acc_t(g[2 * H + j]), acc_t(g[3 * H + j]), cp[j], i,
                                f, gg, o, cn, hn);
      g[j] = scalar_t(i);
      g[H + j] = scalar_t(f);
      g[2 * H + j] = scalar_t(gg);
      g[3 * H + j] = scalar_t(o);
      c[j] = cn;
      h[j] = scalar_t(hn);
    }
  }
}

template <typename scalar_t, typename acc_t>
void backward_rows(const scalar_t* gates, const acc_t* c_cur, const acc_t* c_prev, const scalar_t* dh_in,
                   const acc_t* dc_next, scalar_t* dgates, acc_t* dc_prev, int64_t b0, int64_t b1, int64_t H) {
  for (int64_t b = b0; b < b1; ++b) {
    const scalar_t* g = gates + b * 4 * H;
    scalar_t* dg = dgates + b * 4 * H;
    const acc_t* c = c_cur + b * H;
    const acc_t* cp = c_prev + b * H;
    const scalar_t* dh = dh_in + b * H;
    const acc_t* dcn = dc_next + b * H;
    acc_t* dcp = dc_prev + b * H;
    int64_t j = 0;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      using V = Vectorized<scalar_t>;
      for (; j + V::size() <= H; j += V::size()) {
        V di, df, dgg, dout, dcpv;
        math::cell_backward<V, VecAct>(V::loadu(g + j), V::loadu(g + H + j), V::loadu(g + 2 * H + j),
                                       V::loadu(g + 3 * H + j), V::loadu(c + j), V::loadu(cp + j),
                                       V::loadu(dh + j), V::loadu(dcn + j), di, df, dgg, dout, dcpv);
        di.store(dg + j);
        df.store(dg + H + j);
        dgg.store(dg + 2 * H + j);
        dout.store(dg + 3 * H + j);
        dcpv.store(dcp + j);
      }
    }
    for (; j < H; ++j) {
      acc_t di, df, dgg, dout, dcpv;
      math::cell_backward<acc_t>(acc_t(g[j]), acc_t(g[H + j]), acc_t(g[2 * H + j]), acc_t(g[3 * H + j]), c[j],
                                 cp[j], acc_t(dh[j]), dcn[j], di, df, dgg, dout, dcpv);
      dg[j] = scalar_t(di);
      dg[H + j] = scalar_t(df);
      dg[2 * H + j] = scalar_t(dgg);
      dg[3 * H + j] = scalar_t(dout);
      dcp[j] = dcpv;
    }
  }
}

void forward(c10::ScalarType dtype, void* gates, const void* c_prev, void* c_out, void* h_out, int64_t b0,
             int64_t b1, int64_t H) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "fastlstm_forward_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_rows<scalar_t, acc_t>(static_cast<scalar_t*>(gates), static_cast<const acc_t*>(c_prev),
                                  static_cast<acc_t*>(c_out), static_cast<scalar_t*>(h_out), b0, b1, H);
  });
}

void backward(c10::ScalarType dtype, const void* gates, const void* c, const void* c_prev, const void* dh,
              const void* dc_next, void* dgates, void* dc_prev, int64_t b0, int64_t b1, int64_t H) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "fastlstm_backward_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_rows<scalar_t, acc_t>(static_cast<const scalar_t*>(gates), static_cast<const acc_t*>(c),
                                   static_cast<const acc_t*>(c_prev), static_cast<const scalar_t*>(dh),
                                   static_cast<const acc_t*>(dc_next), static_cast<scalar_t*>(dgates),
                                   static_cast<acc_t*>(dc_prev), b0, b1, H);
  });
}

template <typename scalar_t>
void gemv_rows_t(const scalar_t* w, const scalar_t* x, scalar_t* y, int64_t r0, int64_t r1, int64_t K) {
  using V = Vectorized<scalar_t>;
  const int64_t n = V::size();
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* wr = w + r * K;
    V acc0(0), acc1(0);
    int64_t k = 0;
    for (; k + 2 * n <= K; k += 2 * n) {
      acc0 = at::vec::fmadd(V::loadu(wr + k), V::loadu(x + k), acc0);
      acc1 = at::vec::fmadd(V::loadu(wr + k + n), V::loadu(x + k + n), acc1);
    }
    for (; k + n <= K; k += n) acc0 = at::vec::fmadd(V::loadu(wr + k), V::loadu(x + k), acc0);
    scalar_t sum = at::vec::vec_reduce_all<scalar_t>([](V& a, V& b) { return a + b; }, acc0 + acc1);
    for (; k < K; ++k) sum += wr[k] * x[k];
    y[r] += sum;
  }
}

void gemv(c10::ScalarType dtype, const void* w, const void* x, void* y, int64_t r0, int64_t r1, int64_t K) {
  if (dtype == at::kFloat) {
    gemv_rows_t<float>(static_cast<const float*>(w), static_cast<const float*>(x), static_cast<float*>(y), r0, r1,
                       K);
  } else if (dtype == at::kDouble) {
    gemv_rows_t<double>(static_cast<const double*>(w), static_cast<const double*>(x), static_cast<double*>(y), r0,
                        r1, K);
  } else {
    TORCH_CHECK(false, "fastlstm: gemv supports float32 and float64, got ", dtype);
  }
}

template <typename scalar_t>
void gemv_t_cols(const scalar_t* w, const scalar_t* a, scalar_t* y, int64_t c0, int64_t c1, int64_t R, int64_t C) {
  using V = Vectorized<scalar_t>;
  const int64_t n = V::size();
  std::fill(y + c0, y + c1, scalar_t(0));
  for (int64_t r = 0; r < R; ++r) {
    const scalar_t ar = a[r];
    const V av(ar);
    const scalar_t* wr = w + r * C;
    int64_t c = c0;
    for (; c + n <= c1; c += n) at::vec::fmadd(av, V::loadu(wr + c), V::loadu(y + c)).store(y + c);
    for (; c < c1; ++c) y[c] += ar * wr[c];
  }
}

void gemv_t(c10::ScalarType dtype, const void* w, const void* a, void* y, int64_t c0, int64_t c1, int64_t R,
            int64_t C) {
  if (dtype == at::kFloat) {
    gemv_t_cols<float>(static_cast<const float*>(w), static_cast<const float*>(a), static_cast<float*>(y), c0, c1,
                       R, C);
  } else if (dtype == at::kDouble) {
    gemv_t_cols<double>(static_cast<const double*>(w), static_cast<const double*>(a), static_cast<double*>(y), c0,
                        c1, R, C);
  } else {
    TORCH_CHECK(false, "fastlstm: gemv_t supports float32 and float64, got ", dtype);
  }
}

// ---- Peephole LSTM (issue 6): the same activations over the shared peephole cell math. ----
// A "lane" is how a per-unit body reads and writes: a whole SIMD register of acc_t, or one acc_t converted
// from/to the storage type. Each pass is written once as a generic lambda over the lane, so the vector body
// and the scalar tail (and the half/bfloat16 path) are the same code.
template <typename acc_t>
struct VecLane {
  using C = Vectorized<acc_t>;
  using Act = VecAct;
  static constexpr int64_t width = C::size();
  static C load(const acc_t* p) { return C::loadu(p); }
  static void store(acc_t* p, const C& v) { v.store(p); }
};

template <typename acc_t>
struct ScalarLane {
  using C = acc_t;
  using Act = math::ScalarAct;
  static constexpr int64_t width = 1;
  template <typename S>
  static C load(const S* p) {
    return static_cast<C>(*p);
  }
  template <typename S>
  static void store(S* p, C v) {
    *p = static_cast<S>(v);
  }
};

// Calls f(j, lane) for the units j of one row: SIMD-wide while storage == compute type, then one by one.
template <typename scalar_t, typename acc_t, typename F>
inline void for_each_unit(int64_t H, const F& f) {
  int64_t j = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (; j + VecLane<acc_t>::width <= H; j += VecLane<acc_t>::width) f(j, VecLane<acc_t>{});
  }
  for (; j < H; ++j) f(j, ScalarLane<acc_t>{});
}

#define FASTLSTM_PEEPHOLE_DISPATCH(T, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, T, NAME, __VA_ARGS__)

void peephole_forward_diag(c10::ScalarType dtype, void* gates, const void* c_prev, const void* p_i,
                           const void* p_f, const void* p_o, void* c_out, void* h_out, int64_t b0, int64_t b1,
                           int64_t H) {
  FASTLSTM_PEEPHOLE_DISPATCH(dtype, "fastlstm_peephole_forward_diag", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t *PI = static_cast<const acc_t*>(p_i), *PF = static_cast<const acc_t*>(p_f),
                *PO = static_cast<const acc_t*>(p_o);
    for (int64_t b = b0; b < b1; ++b) {
      scalar_t* g = static_cast<scalar_t*>(gates) + b * 4 * H;
      const acc_t* cp = static_cast<const acc_t*>(c_prev) + b * H;
      acc_t* c = static_cast<acc_t*>(c_out) + b * H;
      scalar_t* h = static_cast<scalar_t*>(h_out) + b * H;
      for_each_unit<scalar_t, acc_t>(H, [&](int64_t j, auto lane) {
        using L = decltype(lane);
        typename L::C i, f, gg, o, cn, hn;
        math::peephole_cell_forward<typename L::C, typename L::Act>(
            L::load(g + j), L::load(g + H + j), L::load(g + 2 * H + j), L::load(g + 3 * H + j), L::load(cp + j),
            L::load(PI + j), L::load(PF + j), L::load(PO + j), i, f, gg, o, cn, hn);
        L::store(g + j, i);
        L::store(g + H + j, f);
        L::store(g + 2 * H + j, gg);
        L::store(g + 3 * H + j, o);
        L::store(c + j, cn);
        L::store(h + j, hn);
      });
    }
  });
}

void peephole_forward_c(c10::ScalarType dtype, void* gates, const void* c_prev, void* c_out, int64_t b0,
                        int64_t b1, int64_t H) {
  FASTLSTM_PEEPHOLE_DISPATCH(dtype, "fastlstm_peephole_forward_c", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t b = b0; b < b1; ++b) {
      scalar_t* g = static_cast<scalar_t*>(gates) + b * 4 * H;
      const acc_t* cp = static_cast<const acc_t*>(c_prev) + b * H;
      acc_t* c = static_cast<acc_t*>(c_out) + b * H;
      for_each_unit<scalar_t, acc_t>(H, [&](int64_t j, auto lane) {
        using L = decltype(lane);
        typename L::C i, f, gg, cn;
        math::peephole_forward_c<typename L::C, typename L::Act>(L::load(g + j), L::load(g + H + j),
                                                                 L::load(g + 2 * H + j), L::load(cp + j), i, f,
                                                                 gg, cn);
        L::store(g + j, i);
        L::store(g + H + j, f);
        L::store(g + 2 * H + j, gg);
        L::store(c + j, cn);
      });
    }
  });
}

void peephole_forward_h(c10::ScalarType dtype, void* gates, const void* c, void* h_out, int64_t b0, int64_t b1,
                        int64_t H) {
  FASTLSTM_PEEPHOLE_DISPATCH(dtype, "fastlstm_peephole_forward_h", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t b = b0; b < b1; ++b) {
      scalar_t* go = static_cast<scalar_t*>(gates) + b * 4 * H + 3 * H;
      const acc_t* cc = static_cast<const acc_t*>(c) + b * H;
      scalar_t* h = static_cast<scalar_t*>(h_out) + b * H;
      for_each_unit<scalar_t, acc_t>(H, [&](int64_t j, auto lane) {
        using L = decltype(lane);
        typename L::C o, hn;
        math::peephole_forward_h<typename L::C, typename L::Act>(L::load(go + j), L::load(cc + j), o, hn);
        L::store(go + j, o);
        L::store(h + j, hn);
      });
    }
  });
}

void peephole_backward_diag(c10::ScalarType dtype, const void* gates, const void* c, const void* c_prev,
                            const void* p_i, const void* p_f, const void* p_o, const void* dh,
                            const void* dc_next, void* dgates, void* dc_prev, int64_t b0, int64_t b1, int64_t H) {
  FASTLSTM_PEEPHOLE_DISPATCH(dtype, "fastlstm_peephole_backward_diag", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t *PI = static_cast<const acc_t*>(p_i), *PF = static_cast<const acc_t*>(p_f),
                *PO = static_cast<const acc_t*>(p_o);
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* g = static_cast<const scalar_t*>(gates) + b * 4 * H;
      scalar_t* dg = static_cast<scalar_t*>(dgates) + b * 4 * H;
      const acc_t* cc = static_cast<const acc_t*>(c) + b * H;
      const acc_t* cp = static_cast<const acc_t*>(c_prev) + b * H;
      const acc_t* dcn = static_cast<const acc_t*>(dc_next) + b * H;
      const scalar_t* d = static_cast<const scalar_t*>(dh) + b * H;
      acc_t* dcp = static_cast<acc_t*>(dc_prev) + b * H;
      for_each_unit<scalar_t, acc_t>(H, [&](int64_t j, auto lane) {
        using L = decltype(lane);
        typename L::C di, df, dgg, dout, dcpv;
        math::peephole_cell_backward<typename L::C, typename L::Act>(
            L::load(g + j), L::load(g + H + j), L::load(g + 2 * H + j), L::load(g + 3 * H + j), L::load(cc + j),
            L::load(cp + j), L::load(PI + j), L::load(PF + j), L::load(PO + j), L::load(d + j), L::load(dcn + j),
            di, df, dgg, dout, dcpv);
        L::store(dg + j, di);
        L::store(dg + H + j, df);
        L::store(dg + 2 * H + j, dgg);
        L::store(dg + 3 * H + j, dout);
        L::store(dcp + j, dcpv);
      });
    }
  });
}

void peephole_backward_h(c10::ScalarType dtype, const void* gates, const void* c, const void* dh,
                         const void* dc_next, void* dgates, void* dc_out, int64_t b0, int64_t b1, int64_t H) {
  FASTLSTM_PEEPHOLE_DISPATCH(dtype, "fastlstm_peephole_backward_h", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* go = static_cast<const scalar_t*>(gates) + b * 4 * H + 3 * H;
      scalar_t* dgo = static_cast<scalar_t*>(dgates) + b * 4 * H + 3 * H;
      const acc_t* cc = static_cast<const acc_t*>(c) + b * H;
      const acc_t* dcn = static_cast<const acc_t*>(dc_next) + b * H;
      const scalar_t* d = static_cast<const scalar_t*>(dh) + b * H;
      acc_t* dc = static_cast<acc_t*>(dc_out) + b * H;
      for_each_unit<scalar_t, acc_t>(H, [&](int64_t j, auto lane) {
        using L = decltype(lane);
        typename L::C dout, dcv;
        math::peephole_backward_h<typename L::C, typename L::Act>(L::load(go + j), L::load(cc + j), L::load(d + j),
                                                                  L::load(dcn + j), dout, dcv);
        L::store(dgo + j, dout);
        L::store(dc + j, dcv);
      });
    }
  });
}

void peephole_backward_c(c10::ScalarType dtype, const void* gates, const void* c_prev, const void* dc,
                         void* dgates, void* dc_prev, int64_t b0, int64_t b1, int64_t H) {
  FASTLSTM_PEEPHOLE_DISPATCH(dtype, "fastlstm_peephole_backward_c", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* g = static_cast<const scalar_t*>(gates) + b * 4 * H;
      scalar_t* dg = static_cast<scalar_t*>(dgates) + b * 4 * H;
      const acc_t* cp = static_cast<const acc_t*>(c_prev) + b * H;
      const acc_t* dcv = static_cast<const acc_t*>(dc) + b * H;
      acc_t* dcp = static_cast<acc_t*>(dc_prev) + b * H;
      for_each_unit<scalar_t, acc_t>(H, [&](int64_t j, auto lane) {
        using L = decltype(lane);
        typename L::C di, df, dgg, dcpv;
        math::peephole_backward_c<typename L::C, typename L::Act>(L::load(g + j), L::load(g + H + j),
                                                                  L::load(g + 2 * H + j), L::load(cp + j),
                                                                  L::load(dcv + j), di, df, dgg, dcpv);
        L::store(dg + j, di);
        L::store(dg + H + j, df);
        L::store(dg + 2 * H + j, dgg);
        L::store(dcp + j, dcpv);
      });
    }
  });
}

#undef FASTLSTM_PEEPHOLE_DISPATCH

}  // namespace FASTLSTM_ISA

PointwiseKernels FASTLSTM_CAT(kernels_, FASTLSTM_ISA)() {
  return {&FASTLSTM_ISA::forward,
          &FASTLSTM_ISA::backward,
          &FASTLSTM_ISA::gemv,
          &FASTLSTM_ISA::gemv_t,
          {&FASTLSTM_ISA::peephole_forward_diag, &FASTLSTM_ISA::peephole_forward_c,
           &FASTLSTM_ISA::peephole_forward_h, &FASTLSTM_ISA::peephole_backward_diag,
           &FASTLSTM_ISA::peephole_backward_h, &FASTLSTM_ISA::peephole_backward_c},
          FASTLSTM_ISA_NAME};
}

}  // namespace cpu
}  // namespace fastlstm

#if (FASTLSTM_ISA_AVX512 || FASTLSTM_ISA_AVX2)
#if FASTLSTM_TARGET_PRAGMAS
#pragma GCC pop_options
#elif defined(__clang__)
#pragma clang attribute pop
#endif
#endif
