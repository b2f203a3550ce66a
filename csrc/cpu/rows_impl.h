// The body of the CPU pass kernels (rows.h), included once per instruction set by kernels_*.cpp, each of
// which defines FASTLSTM_ISA (isa_DEFAULT, isa_AVX2, isa_AVX512) first.
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
#include <vector>

// The cell math's scalar functions before the target pragma: compiled for the baseline ISA here as in every
// file, so the copy the linker keeps runs anywhere. The passes (templates instantiated only here, with this
// ISA's executor) come after it.
#include "../cells/math.h"

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

#include "../cells/all.h"
#include "rows.h"

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

// The scalar tail's activations: a type of this ISA's own, so that no instantiation of the cell math is
// shared (and merged by the linker) between the per-ISA files.
struct ScalarAct : math::ScalarAct {};

// A lane of one SIMD register of A (float for the half types, which load into and store from float32
// registers, rounding to nearest even as c10's conversions do).
template <typename A>
struct VecLane {
  using C = Vectorized<A>;
  using Act = VecAct;
  static constexpr int64_t width = C::size();
  C load(const A* p) const { return C::loadu(p); }
  template <typename S, std::enable_if_t<at::vec::is_reduced_floating_point_v<S>, int> = 0>
  C load(const S* p) const {
    C out;
    at::vec::load_to_float(p, out);
    return out;
  }
  void store(A* p, const C& v) const { v.store(p); }
  template <typename S, std::enable_if_t<at::vec::is_reduced_floating_point_v<S>, int> = 0>
  void store(S* p, const C& v) const {
    at::vec::convert_from_float<S>(v, v).store(p, width);
  }
};

// One unit, in A.
template <typename A>
struct ScalarLane {
  using C = A;
  using Act = ScalarAct;
  static constexpr int64_t width = 1;
  template <typename T>
  C load(const T* p) const {
    return static_cast<A>(*p);
  }
  template <typename T>
  void store(T* p, C v) const {
    *p = static_cast<T>(v);
  }
};

// Runs a whole row on the calling thread: SIMD lanes, then the scalar tail (see csrc/cells/passes.h).
template <typename A>
struct RowExec {
  template <class F>
  void for_units(int64_t n, const F& f) const {
    constexpr int64_t W = VecLane<A>::width;
    int64_t j = 0;
    for (; j + W <= n; j += W) f(j, VecLane<A>{});
    for (; j < n; ++j) f(j, ScalarLane<A>{});
  }
  template <class F>
  A sum(int64_t n, const F& f) const {
    constexpr int64_t W = VecLane<A>::width;
    Vectorized<A> acc(A(0));
    int64_t j = 0;
    for (; j + W <= n; j += W) acc = acc + f(j, VecLane<A>{});
    A s = at::vec::vec_reduce_all<A>([](Vectorized<A>& x, Vectorized<A>& y) { return x + y; }, acc);
    for (; j < n; ++j) s += f(j, ScalarLane<A>{});
    return s;
  }
  template <class F>
  void once(const F& f) const {
    f();
  }
};

template <class Pass, typename S>
void rows(const typename Pass::template Args<S>& a, int64_t b0, int64_t b1, int64_t H) {
  const RowExec<math::acc_of<S>> e;
  for (int64_t b = b0; b < b1; ++b) Pass::template row<S>(e, a, b, H);
}

#define FASTLSTM_INSTANTIATE_ROWS(PASS)                                                                    \
  template void rows<cells::PASS, float>(const cells::PASS::Args<float>&, int64_t, int64_t, int64_t);       \
  template void rows<cells::PASS, double>(const cells::PASS::Args<double>&, int64_t, int64_t, int64_t);     \
  template void rows<cells::PASS, c10::BFloat16>(const cells::PASS::Args<c10::BFloat16>&, int64_t, int64_t, \
                                                 int64_t);                                                  \
  template void rows<cells::PASS, c10::Half>(const cells::PASS::Args<c10::Half>&, int64_t, int64_t, int64_t);
FASTLSTM_PASSES(FASTLSTM_INSTANTIATE_ROWS)
#undef FASTLSTM_INSTANTIATE_ROWS

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

// The half types: float32 registers and sums, one rounding per output (y += W x, as addmm_ rounds), x
// converted to float32 once per call of the range.
template <typename S>
void gemv_rows_half(const S* w, const S* x, S* y, int64_t r0, int64_t r1, int64_t K) {
  using V = Vectorized<float>;
  const int64_t n = V::size();
  std::vector<float> xf(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) xf[size_t(k)] = static_cast<float>(x[k]);
  for (int64_t r = r0; r < r1; ++r) {
    const S* wr = w + r * K;
    V acc0(0), acc1(0), w0, w1;
    int64_t k = 0;
    for (; k + 2 * n <= K; k += 2 * n) {
      at::vec::load_to_float(wr + k, w0);
      at::vec::load_to_float(wr + k + n, w1);
      acc0 = at::vec::fmadd(w0, V::loadu(xf.data() + k), acc0);
      acc1 = at::vec::fmadd(w1, V::loadu(xf.data() + k + n), acc1);
    }
    for (; k + n <= K; k += n) {
      at::vec::load_to_float(wr + k, w0);
      acc0 = at::vec::fmadd(w0, V::loadu(xf.data() + k), acc0);
    }
    float sum = at::vec::vec_reduce_all<float>([](V& a, V& b) { return a + b; }, acc0 + acc1);
    for (; k < K; ++k) sum += static_cast<float>(wr[k]) * xf[size_t(k)];
    y[r] = static_cast<S>(static_cast<float>(y[r]) + sum);
  }
}

void gemv(c10::ScalarType dtype, const void* w, const void* x, void* y, int64_t r0, int64_t r1, int64_t K) {
  if (dtype == at::kBFloat16) {
    gemv_rows_half<c10::BFloat16>(static_cast<const c10::BFloat16*>(w), static_cast<const c10::BFloat16*>(x),
                                  static_cast<c10::BFloat16*>(y), r0, r1, K);
  } else if (dtype == at::kHalf) {
    gemv_rows_half<c10::Half>(static_cast<const c10::Half*>(w), static_cast<const c10::Half*>(x),
                              static_cast<c10::Half*>(y), r0, r1, K);
  } else if (dtype == at::kFloat) {
    gemv_rows_t<float>(static_cast<const float*>(w), static_cast<const float*>(x), static_cast<float*>(y), r0, r1,
                       K);
  } else if (dtype == at::kDouble) {
    gemv_rows_t<double>(static_cast<const double*>(w), static_cast<const double*>(x), static_cast<double*>(y), r0,
                        r1, K);
  } else {
    TORCH_CHECK(false, "fastlstm: gemv supports float32, float64, bfloat16 and float16, got ", dtype);
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

// The half types: the columns' sums in float32, rounded once into y.
template <typename S>
void gemv_t_cols_half(const S* w, const S* a, S* y, int64_t c0, int64_t c1, int64_t R, int64_t C) {
  using V = Vectorized<float>;
  const int64_t n = V::size();
  std::vector<float> acc(static_cast<size_t>(c1 - c0), 0.0f);
  float* yf = acc.data() - c0;
  for (int64_t r = 0; r < R; ++r) {
    const float ar = static_cast<float>(a[r]);
    const V av(ar);
    const S* wr = w + r * C;
    int64_t c = c0;
    V wv;
    for (; c + n <= c1; c += n) {
      at::vec::load_to_float(wr + c, wv);
      at::vec::fmadd(av, wv, V::loadu(yf + c)).store(yf + c);
    }
    for (; c < c1; ++c) yf[c] += ar * static_cast<float>(wr[c]);
  }
  for (int64_t c = c0; c < c1; ++c) y[c] = static_cast<S>(yf[c]);
}

void gemv_t(c10::ScalarType dtype, const void* w, const void* a, void* y, int64_t c0, int64_t c1, int64_t R,
            int64_t C) {
  if (dtype == at::kBFloat16) {
    gemv_t_cols_half<c10::BFloat16>(static_cast<const c10::BFloat16*>(w), static_cast<const c10::BFloat16*>(a),
                                    static_cast<c10::BFloat16*>(y), c0, c1, R, C);
    return;
  }
  if (dtype == at::kHalf) {
    gemv_t_cols_half<c10::Half>(static_cast<const c10::Half*>(w), static_cast<const c10::Half*>(a),
                                static_cast<c10::Half*>(y), c0, c1, R, C);
    return;
  }
  if (dtype == at::kFloat) {
    gemv_t_cols<float>(static_cast<const float*>(w), static_cast<const float*>(a), static_cast<float*>(y), c0, c1,
                       R, C);
  } else if (dtype == at::kDouble) {
    gemv_t_cols<double>(static_cast<const double*>(w), static_cast<const double*>(a), static_cast<double*>(y), c0,
                        c1, R, C);
  } else {
    TORCH_CHECK(false, "fastlstm: gemv_t supports float32, float64, bfloat16 and float16, got ", dtype);
  }
}

GemvKernels gemv_kernels() { return {&gemv, &gemv_t, FASTLSTM_ISA_NAME}; }

}  // namespace FASTLSTM_ISA
}  // namespace cpu
}  // namespace fastlstm

#if (FASTLSTM_ISA_AVX512 || FASTLSTM_ISA_AVX2)
#if FASTLSTM_TARGET_PRAGMAS
#pragma GCC pop_options
#elif defined(__clang__)
#pragma clang attribute pop
#endif
#endif
