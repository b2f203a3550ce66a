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
#include <cstring>
#include <algorithm>
#include <type_traits>
#include <vector>

// The cell math before the target pragma: its plain inline functions compiled for the baseline ISA here as
// in every file, so the copy the linker keeps runs anywhere; its cell functions (templates over Act,
// instantiated only here with this ISA's types) for this ISA through FASTLSTM_ISA_FN. The passes
// (templates instantiated only here, with this ISA's executor) come after the pragma.
#if defined(__GNUC__) && FASTLSTM_ISA_AVX512
#define FASTLSTM_ISA_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#elif defined(__GNUC__) && FASTLSTM_ISA_AVX2
#define FASTLSTM_ISA_FN __attribute__((target("avx2,fma,f16c")))
#endif
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
#if FASTLSTM_ISA_AVX512
#include <immintrin.h>
#endif

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
// Forced inline: left to the heuristics, GCC calls them out of line (through the PLT, the registers spilled
// to the stack per call), measured at ~13% of a B=16, H=64 inference call.
#if defined(__GNUC__)
#define FASTLSTM_VEC_INLINE __attribute__((always_inline)) inline
#else
#define FASTLSTM_VEC_INLINE inline
#endif
struct VecAct {
  template <typename V>
  FASTLSTM_VEC_INLINE static V exp_fast(V x) {
    if constexpr (std::is_same_v<V, at::vec::Vectorized<float>>) {
      return V::blendv(x.exp_u20(), x, x.isnan());
    } else {
      return x.exp();
    }
  }
  template <typename V>
  FASTLSTM_VEC_INLINE static V sigmoid(V x) {
    return V(1) / (V(1) + exp_fast(x.neg()));
  }
  template <typename V>
  FASTLSTM_VEC_INLINE static V tanh(V x) {
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

// y [r0, r1) += w [R, K] rows . x [K], R rows of K contiguous. kGemvRows rows at a time: one row's sum is
// two FMA chains of K / (2 * width) links, latency-bound alone (Zen 3: 4-cycle FMAs, two units, so 8
// chains in flight keep them busy), and the rows share each load of x. Every row's sum is still formed
// exactly as one row alone forms it (same chains, same reduction, same tail), so the result does not
// depend on how the range was split: streaming steps, whole-sequence steps and the threads' ranges agree.
constexpr int64_t kGemvRows = 4;
// The register blocks' loops over their rows / vectors, unrolled so their accumulators stay in registers
// (GCC kept the half types' ones on the stack, storing them every iteration: 0.76x of one row at a time).
#if defined(__clang__)
#define FASTLSTM_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define FASTLSTM_UNROLL _Pragma("GCC unroll 8")
#else
#define FASTLSTM_UNROLL
#endif

template <typename scalar_t, int64_t NR>
inline void gemv_rows_block(const scalar_t* w, const scalar_t* x, scalar_t* y, int64_t r, int64_t K) {
  using V = Vectorized<scalar_t>;
  const int64_t n = V::size();
  V acc0[NR], acc1[NR];
  FASTLSTM_UNROLL
  for (int64_t i = 0; i < NR; ++i) acc0[i] = acc1[i] = V(scalar_t(0));
  int64_t k = 0;
  for (; k + 2 * n <= K; k += 2 * n) {
    const V x0 = V::loadu(x + k), x1 = V::loadu(x + k + n);
    FASTLSTM_UNROLL
    for (int64_t i = 0; i < NR; ++i) {
      const scalar_t* wr = w + (r + i) * K;
      acc0[i] = at::vec::fmadd(V::loadu(wr + k), x0, acc0[i]);
      acc1[i] = at::vec::fmadd(V::loadu(wr + k + n), x1, acc1[i]);
    }
  }
  if (k + n <= K) {
    const V x0 = V::loadu(x + k);
    FASTLSTM_UNROLL
    for (int64_t i = 0; i < NR; ++i) acc0[i] = at::vec::fmadd(V::loadu(w + (r + i) * K + k), x0, acc0[i]);
    k += n;
  }
  FASTLSTM_UNROLL
  for (int64_t i = 0; i < NR; ++i) {
    const scalar_t* wr = w + (r + i) * K;
    scalar_t sum = at::vec::vec_reduce_all<scalar_t>([](V& a, V& b) { return a + b; }, acc0[i] + acc1[i]);
    for (int64_t j = k; j < K; ++j) sum += wr[j] * x[j];
    y[r + i] += sum;
  }
}

template <typename scalar_t>
void gemv_rows_t(const scalar_t* w, const scalar_t* x, scalar_t* y, int64_t r0, int64_t r1, int64_t K) {
  int64_t r = r0;
  for (; r + kGemvRows <= r1; r += kGemvRows) gemv_rows_block<scalar_t, kGemvRows>(w, x, y, r, K);
  for (; r < r1; ++r) gemv_rows_block<scalar_t, 1>(w, x, y, r, K);
}

// The half types: float32 registers and sums, one rounding per output (y += W x, as addmm_ rounds), x
// converted to float32 once per call of the range; rows in blocks as gemv_rows_t.
template <typename S, int64_t NR>
inline void gemv_rows_half_block(const S* w, const float* xf, S* y, int64_t r, int64_t K) {
  using V = Vectorized<float>;
  const int64_t n = V::size();
  V acc0[NR], acc1[NR];
  FASTLSTM_UNROLL
  for (int64_t i = 0; i < NR; ++i) acc0[i] = acc1[i] = V(0.0f);
  int64_t k = 0;
  for (; k + 2 * n <= K; k += 2 * n) {
    const V x0 = V::loadu(xf + k), x1 = V::loadu(xf + k + n);
    FASTLSTM_UNROLL
    for (int64_t i = 0; i < NR; ++i) {
      const S* wr = w + (r + i) * K;
      V w0, w1;
      at::vec::load_to_float(wr + k, w0);
      at::vec::load_to_float(wr + k + n, w1);
      acc0[i] = at::vec::fmadd(w0, x0, acc0[i]);
      acc1[i] = at::vec::fmadd(w1, x1, acc1[i]);
    }
  }
  if (k + n <= K) {
    const V x0 = V::loadu(xf + k);
    FASTLSTM_UNROLL
    for (int64_t i = 0; i < NR; ++i) {
      V w0;
      at::vec::load_to_float(w + (r + i) * K + k, w0);
      acc0[i] = at::vec::fmadd(w0, x0, acc0[i]);
    }
    k += n;
  }
  FASTLSTM_UNROLL
  for (int64_t i = 0; i < NR; ++i) {
    const S* wr = w + (r + i) * K;
    float sum = at::vec::vec_reduce_all<float>([](V& a, V& b) { return a + b; }, acc0[i] + acc1[i]);
    for (int64_t j = k; j < K; ++j) sum += static_cast<float>(wr[j]) * xf[j];
    y[r + i] = static_cast<S>(static_cast<float>(y[r + i]) + sum);
  }
}

template <typename S>
void gemv_rows_half(const S* w, const S* x, S* y, int64_t r0, int64_t r1, int64_t K) {
  std::vector<float> xf(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) xf[size_t(k)] = static_cast<float>(x[k]);
  int64_t r = r0;
  for (; r + kGemvRows <= r1; r += kGemvRows) gemv_rows_half_block<S, kGemvRows>(w, xf.data(), y, r, K);
  for (; r < r1; ++r) gemv_rows_half_block<S, 1>(w, xf.data(), y, r, K);
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

// y [c0, c1) = a [R] @ w [R, C] columns. The columns in register blocks of kGemvTCols vectors, each summed
// over all R rows in registers (y's loads and stores once per block rather than once per row, and
// independent FMA chains for the units); each column's sum is still a[0] w[0, c] + a[1] w[1, c] + ... in
// row order from zero, so the result does not depend on the block or the range split.
constexpr int64_t kGemvTCols = 8;

// A: the accumulator type (float for the half types); Load(p, v) loads a vector of A from p.
template <typename A, int64_t NV, typename W, class Load>
inline void gemv_t_block(const W* w, const A* a, A* y, int64_t c, int64_t R, int64_t C, const Load& load) {
  using V = Vectorized<A>;
  const int64_t n = V::size();
  V acc[NV];
  FASTLSTM_UNROLL
  for (int64_t j = 0; j < NV; ++j) acc[j] = V(A(0));
  for (int64_t r = 0; r < R; ++r) {
    const V av(a[r]);
    const W* wr = w + r * C + c;
    FASTLSTM_UNROLL
    for (int64_t j = 0; j < NV; ++j) {
      V wv;
      load(wr + j * n, wv);
      acc[j] = at::vec::fmadd(av, wv, acc[j]);
    }
  }
  FASTLSTM_UNROLL
  for (int64_t j = 0; j < NV; ++j) acc[j].store(y + c + j * n);
}

// Columns [c0, c1) of y = a @ w into yf (A) through gemv_t_block, the tail columns one by one in the
// same row order.
template <typename A, typename W, class Load>
inline void gemv_t_range(const W* w, const A* a, A* yf, int64_t c0, int64_t c1, int64_t R, int64_t C,
                         const Load& load) {
  const int64_t n = Vectorized<A>::size();
  int64_t c = c0;
  for (; c + kGemvTCols * n <= c1; c += kGemvTCols * n) gemv_t_block<A, kGemvTCols>(w, a, yf, c, R, C, load);
  for (; c + n <= c1; c += n) gemv_t_block<A, 1>(w, a, yf, c, R, C, load);
  // The tail columns with the vector lanes' fused multiply-add, so a column's value does not depend on
  // whether the split put it in a lane or here (a separate multiply and add differed in the last bit).
  for (; c < c1; ++c) {
    A s(0);
    for (int64_t r = 0; r < R; ++r) s = std::fma(a[r], static_cast<A>(w[r * C + c]), s);
    yf[c] = s;
  }
}

template <typename scalar_t>
void gemv_t_cols(const scalar_t* w, const scalar_t* a, scalar_t* y, int64_t c0, int64_t c1, int64_t R, int64_t C) {
  gemv_t_range<scalar_t>(w, a, y, c0, c1, R, C,
                         [](const scalar_t* p, Vectorized<scalar_t>& v) { v = Vectorized<scalar_t>::loadu(p); });
}

// The half types: the columns' sums in float32, rounded once into y.
template <typename S>
void gemv_t_cols_half(const S* w, const S* a, S* y, int64_t c0, int64_t c1, int64_t R, int64_t C) {
  std::vector<float> af(static_cast<size_t>(R)), acc(static_cast<size_t>(c1 - c0));
  for (int64_t r = 0; r < R; ++r) af[size_t(r)] = static_cast<float>(a[r]);
  float* yf = acc.data() - c0;
  gemv_t_range<float>(w, af.data(), yf, c0, c1, R, C,
                      [](const S* p, Vectorized<float>& v) { at::vec::load_to_float(p, v); });
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


// ------------------------------------------------------------------------------------------------------
// The whole-sequence path's step kernels (sequence.h): one block's product on its packed weight panel,
// straight into float32 registers, then the cell's own pass on its units only.

// Runs a pass's unit loops on units [lo, hi) of a row: SIMD lanes, then the scalar tail. Passes with row
// sums need the whole row, so they never run here (the plan declines their cells).
template <typename A>
struct SliceExec {
  int64_t lo, hi;
  template <class F>
  void for_units(int64_t n, const F& f) const {
    constexpr int64_t W = VecLane<A>::width;
    const int64_t end = std::min(n, hi);
    int64_t j = lo;
    for (; j + W <= end; j += W) f(j, VecLane<A>{});
    for (; j < end; ++j) f(j, ScalarLane<A>{});
  }
  template <class F>
  A sum(int64_t, const F&) const {
    return A(0);  // unreachable: see the static_assert in seq_rows
  }
  template <class F>
  void once(const F& f) const {
    f();
  }
};

template <class Pass, typename S>
void seq_rows(const typename Pass::template Args<S>& a, int64_t lo, int64_t hi, int64_t B, int64_t H) {
  static_assert(!Pass::kRowReduce, "a block owns a slice of the units: passes with row sums cannot run there");
  const SliceExec<math::acc_of<S>> e{lo, hi};
  for (int64_t b = 0; b < B; ++b) Pass::template row<S>(e, a, b, H);
}

// The register tile: out [M, NV * W] = x [M, K] (row stride ldx, S) @ w [K, NV * W] (row stride ldw,
// float32), every sum in float32 registers from k = 0 up (so the result does not depend on the tiling).
template <int M, int NV, typename S>
void seq_tile(const S* x, int64_t ldx, const float* w, int64_t ldw, int64_t K, float* out, int64_t ldo) {
  using V = Vectorized<float>;
  constexpr int64_t W = V::size();
  V acc[M][NV];
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < NV; ++j) acc[i][j] = V(0.0f);
  }
  for (int64_t k = 0; k < K; ++k) {
    V wv[NV];
    for (int j = 0; j < NV; ++j) wv[j] = V::loadu(w + k * ldw + j * W);
    for (int i = 0; i < M; ++i) {
      const V a(static_cast<float>(x[i * ldx + k]));
      for (int j = 0; j < NV; ++j) acc[i][j] = at::vec::fmadd(a, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < NV; ++j) acc[i][j].store(out + i * ldo + j * W);
  }
}

// At most kSeqMR rows per tile; with M rows the tiles are balanced (M = 8: one 8-row tile, not 6 + 2: a
// tile of few rows reads as much of the panel per FMA as a full one and runs at the cache's speed, not the
// FMA units'). Register columns: at most 24 accumulators of AVX-512's 32 ZMM (8 x 3, 6 x 4), 8 of AVX2's
// 16 (4 x 2, 2 x 4; seq_nv).
constexpr bool kSeqWide = Vectorized<float>::size() >= 16;
constexpr int kSeqMR = kSeqWide ? 8 : 4;
inline int seq_nv(int mr) {
  // AVX2 at few rows: 2 YMM accumulators a row are 2 dependent FMA chains per k where the two FMA units'
  // 4-cycle latency wants 8 in flight; 6 at one row halved the tile's time (B = 1, H = 128, T = 200: 1.8 ->
  // 1.1 ms of CPU a call, perf's cpu-clock samples). AVX-512's 4 accumulators at one row already run at L2's
  // speed (its 128 KiB panel streams from L2 every step): 8 measured slower there (0.67 -> 0.95 ms).
  if (kSeqWide) return mr > 6 ? 3 : 4;
  return mr == 1 ? 6 : mr == 2 ? 4 : mr == 3 ? 3 : 2;
}

template <int M, typename S>
void seq_tile_nv(int nv, const S* x, int64_t ldx, const float* w, int64_t ldw, int64_t K, float* out) {
  switch (nv) {
    case 1: return seq_tile<M, 1, S>(x, ldx, w, ldw, K, out, ldw);
    case 2: return seq_tile<M, 2, S>(x, ldx, w, ldw, K, out, ldw);
    case 3: return seq_tile<M, 3, S>(x, ldx, w, ldw, K, out, ldw);
    case 4: return seq_tile<M, 4, S>(x, ldx, w, ldw, K, out, ldw);
    case 5: return seq_tile<M, 5, S>(x, ldx, w, ldw, K, out, ldw);
    default: return seq_tile<M, 6, S>(x, ldx, w, ldw, K, out, ldw);  // seq_nv's widest
  }
}

// The column-panel / row-tile loop of both panel kinds: tile(m, nv, r, c) computes rows [r, r + m) and SIMD
// column vectors [c, c + nv), m an std::integral_constant (the register tile's row count). Columns outer, rows
// inner: a column panel (K x nv vectors) stays in L1/L2 while every row tile reads it.
template <class Tile>
void seq_tiles(int64_t M, int64_t nvec, const Tile& tile) {
  const int64_t tiles = (M + kSeqMR - 1) / kSeqMR;
  const int mr = int((M + tiles - 1) / tiles);
  const int nv_max = seq_nv(mr);
  for (int64_t c = 0; c < nvec; c += nv_max) {
    const int nv = int(std::min<int64_t>(nv_max, nvec - c));
    for (int64_t r = 0; r < M; r += mr) {
      switch (std::min<int64_t>(mr, M - r)) {
        case 1: tile(std::integral_constant<int, 1>{}, nv, r, c); break;
        case 2: tile(std::integral_constant<int, 2>{}, nv, r, c); break;
        case 3: tile(std::integral_constant<int, 3>{}, nv, r, c); break;
        case 4: tile(std::integral_constant<int, 4>{}, nv, r, c); break;
        case 5: tile(std::integral_constant<int, 5>{}, nv, r, c); break;
        case 6: tile(std::integral_constant<int, 6>{}, nv, r, c); break;
        case 7: tile(std::integral_constant<int, 7>{}, nv, r, c); break;
        default: tile(std::integral_constant<int, 8>{}, nv, r, c); break;
      }
    }
  }
}

// out [M, N] float32 = x [M, K] (row stride ldx) @ w [K, N], N a multiple of the SIMD width. Half-typed
// x is first widened to float32 in a buffer of the thread's own (SIMD conversions, once per element rather
// than once per element and column panel; c10::Half's scalar conversion is a bit-twiddling function call).
template <typename S>
void seq_product(const S* x, int64_t ldx, int64_t M, const float* w, int64_t N, int64_t K, float* out) {
  if constexpr (!std::is_same_v<S, float>) {
    static thread_local std::vector<float> xf;
    xf.resize(size_t(M * K));
    constexpr int64_t W = Vectorized<float>::size();
    for (int64_t m = 0; m < M; ++m) {
      const S* src = x + m * ldx;
      float* dst = xf.data() + m * K;
      int64_t k = 0;
      for (; k + W <= K; k += W) {
        Vectorized<float> v;
        at::vec::load_to_float(src + k, v);
        v.store(dst + k);
      }
      for (; k < K; ++k) dst[k] = static_cast<float>(src[k]);
    }
    return seq_product<float>(xf.data(), K, M, w, N, K, out);
  }
  constexpr int64_t W = Vectorized<float>::size();
  seq_tiles(M, N / W, [&](auto m, int nv, int64_t r, int64_t c) {
    seq_tile_nv<decltype(m)::value, S>(nv, x + r * ldx, ldx, w + c * W, N, K, out + r * N + c * W);
  });
}

#if FASTLSTM_ISA_AVX512
// The K-pair tile (SeqPlan::pairs): out [M, NV * 16] = x [M, K] bfloat16 @ w [K / 2, NV * 16, 2] bfloat16
// (row stride ldw columns), K even. VDPBF16PS multiplies two bfloat16 pairs into float32 and adds both
// products to the accumulator: the products are exact, as the float32 panel's are, the sums are float32 in
// pairs (and, as the instruction defines, subnormal inputs and results are flushed to zero, as in oneDNN's
// bfloat16 RNN on the same instruction). Against the float32 panel it halves the bytes streamed per step and
// does twice the multiply-adds per instruction: the [64, 256] x [256, 512] block product of a T=50, B=64,
// H=256 step on one Zen 4 core measured 35.6 us against 70.0 us (236 GMAC/s; a register-only loop of the
// instruction peaks at 232 there).
#define FASTLSTM_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,avx512bf16")))
template <int M, int NV>
FASTLSTM_BF16_TARGET void seq_tile_pairs(const c10::BFloat16* x, int64_t ldx, const uint16_t* w, int64_t ldw,
                                         int64_t K, float* out, int64_t ldo) {
  __m512 acc[M][NV];
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; k += 2) {
    __m512i wv[NV];
    for (int j = 0; j < NV; ++j) wv[j] = _mm512_loadu_si512(w + k * ldw + j * 32);
    for (int i = 0; i < M; ++i) {
      int32_t pair;
      std::memcpy(&pair, x + i * ldx + k, sizeof(pair));
      const __m512i a = _mm512_set1_epi32(pair);
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)a, (__m512bh)wv[j]);
    }
  }
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(out + i * ldo + j * 16, acc[i][j]);
  }
}

template <int M>
FASTLSTM_BF16_TARGET void seq_tile_pairs_nv(int nv, const c10::BFloat16* x, int64_t ldx, const uint16_t* w,
                                            int64_t ldw, int64_t K, float* out) {
  switch (nv) {
    case 1: return seq_tile_pairs<M, 1>(x, ldx, w, ldw, K, out, ldw);
    case 2: return seq_tile_pairs<M, 2>(x, ldx, w, ldw, K, out, ldw);
    case 3: return seq_tile_pairs<M, 3>(x, ldx, w, ldw, K, out, ldw);
    default: return seq_tile_pairs<M, 4>(x, ldx, w, ldw, K, out, ldw);  // seq_nv's widest on AVX-512
  }
}

// out [M, N] float32 = x [M, K] bfloat16 (row stride ldx) @ the K-pair panel w (N columns), as seq_product.
inline void seq_product_pairs(const c10::BFloat16* x, int64_t ldx, int64_t M, const uint16_t* w, int64_t N,
                              int64_t K, float* out) {
  constexpr int64_t W = 16;
  seq_tiles(M, N / W, [&](auto m, int nv, int64_t r, int64_t c) {
    seq_tile_pairs_nv<decltype(m)::value>(nv, x + r * ldx, ldx, w + c * W * 2, N, K, out + r * N + c * W);
  });
}
#undef FASTLSTM_BF16_TARGET
#endif

// A block's product on its panel, the float32 one or (bfloat16, SeqPlan::pairs) the K-pair one; x [M, K]
// (row stride ldx), out [M, p.n] float32.
template <typename S>
void seq_block_product(const S* x, int64_t ldx, int64_t M, const float* w, const SeqPlan& p, int64_t block,
                       int64_t K, float* out) {
  const float* wb = w + block * p.stride;
#if FASTLSTM_ISA_AVX512
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    if (p.pairs) return seq_product_pairs(x, ldx, M, reinterpret_cast<const uint16_t*>(wb), p.n, K, out);
  }
#endif
  seq_product<S>(x, ldx, M, wb, p.n, K, out);
}

// Forward step s, block `block`: tile = h_{t-1} @ its panel; the product joins the step's pre-activations
// (float32 ones where the layer keeps them, else the storage-typed projection, rounded once as addmm_ does)
// or the cell's separate recurrent operand, and the bias (if given) the pre-activations; then the cell's
// forward pass on the block's units writes h_t straight into the output.
//
// With sorted lengths (x.active) only the first M = active[t] rows run, as on the per-step prefix path: the
// others emit zeros, keep their cell state (copied on from the step before, so the saved cells hold it and a
// reversed row starts from c0), and their saved gates hold the input term. Forward, a row's h_{t-1} is in the
// previous step's output; reversed, a row starts later than the ones before it, so h0 is put where its first
// step reads h_{t-1} (the previous step's output rows, inactive there) and zeroed again two steps on, once
// every block has read it (the last such rows after the loop, sequence.h).
template <class Seq, typename S>
void seq_forward_step(const cells::SeqForwardArgs<S>& q, const SeqForwardExtra<S>& x, const float* w, float* tile,
                      const SeqPlan& p, int64_t block, int64_t s) {
  using A = math::acc_of<S>;
  const int64_t B = q.B, H = q.H, G = Seq::kGates * H, t = q.step(s);
  const int64_t lo = block * p.units, uc = std::min(p.units, H - lo);
  const int64_t M = x.active == nullptr ? B : x.active[t];
  const S* h_prev = s == 0 ? x.h0 : q.out + q.step(s - 1) * B * H;
  S* h = q.out + t * B * H;
  if (M > 0) seq_block_product<S>(h_prev, H, M, w, p, block, H, tile);
  S* g = q.gates_at(s, G);
  A* pre = q.pre_at(s, G);
  for (int64_t b = 0; b < B; ++b) {
    const bool on = b < M;
    for (int64_t gate = 0; gate < Seq::kGates; ++gate) {
      const float* v = tile + b * p.n + gate * p.upad;
      const int64_t i0 = b * G + gate * H + lo;
      const float* bi = x.bias == nullptr ? nullptr : x.bias + gate * H + lo;
      if (!on) {
        // an inactive row: its saved gates hold the input term (bias included)
        if (pre != nullptr) {
          for (int64_t u = 0; u < uc; ++u) {
            if (bi != nullptr) pre[i0 + u] += bi[u];
            g[i0 + u] = static_cast<S>(pre[i0 + u]);
          }
        } else if (bi != nullptr) {
          for (int64_t u = 0; u < uc; ++u) g[i0 + u] = static_cast<S>(static_cast<float>(g[i0 + u]) + bi[u]);
        }
        continue;
      }
      if constexpr (Seq::kSeparateRec) {
        if (pre != nullptr) {
          for (int64_t u = 0; u < uc; ++u) q.rec_acc[i0 + u] = v[u];
          if (bi != nullptr) for (int64_t u = 0; u < uc; ++u) pre[i0 + u] += bi[u];
        } else {
          for (int64_t u = 0; u < uc; ++u) q.rec[i0 + u] = static_cast<S>(v[u]);
          if (bi != nullptr) {
            for (int64_t u = 0; u < uc; ++u) g[i0 + u] = static_cast<S>(static_cast<float>(g[i0 + u]) + bi[u]);
          }
        }
      } else if (pre != nullptr) {
        if (bi != nullptr) {
          for (int64_t u = 0; u < uc; ++u) pre[i0 + u] += v[u] + bi[u];
        } else {
          for (int64_t u = 0; u < uc; ++u) pre[i0 + u] += v[u];
        }
      } else if (bi != nullptr) {
        for (int64_t u = 0; u < uc; ++u) g[i0 + u] = static_cast<S>(static_cast<float>(g[i0 + u]) + (v[u] + bi[u]));
      } else {
        for (int64_t u = 0; u < uc; ++u) g[i0 + u] = static_cast<S>(static_cast<float>(g[i0 + u]) + v[u]);
      }
    }
  }
  // A row-pass cell's pass runs in the step's second phase, on whole rows (sequence.h).
  if constexpr (!Seq::kRowPass) seq_rows<typename Seq::Fwd, S>(Seq::template forward<S>(q, s, h_prev, h), lo, lo + uc, M, H);
  if (x.active == nullptr) return;
  const int64_t a_next = s + 1 < q.T ? x.active[q.step(s + 1)] : 0;
  for (int64_t b = M; b < B; ++b) {
    std::fill(h + b * H + lo, h + b * H + lo + uc, S(0));
    if constexpr (Seq::kHasC) {
      const A* c_prev = q.cell_before(s) + b * H + lo;
      std::copy(c_prev, c_prev + uc, q.cell_at(s) + b * H + lo);
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    if (b < M && b >= a_next) std::copy(h + b * H + lo, h + b * H + lo + uc, x.h_fin + b * H + lo);  // its last step
    if (b >= M && b < a_next) std::copy(x.h0 + b * H + lo, x.h0 + b * H + lo + uc, h + b * H + lo);  // starts next
  }
  if (q.reverse && s >= 2) {
    // the h0 rows put into step s-2's output for step s-1 (read by every block before the last barrier)
    const int64_t t2 = q.step(s - 2);
    S* o2 = q.out + t2 * B * H;
    for (int64_t b = x.active[t2]; b < x.active[q.step(s - 1)]; ++b) std::fill(o2 + b * H + lo, o2 + b * H + lo + uc, S(0));
  }
}

// Backward step s (T-1 down to 0), block `block`: dh_t = grad_output_t + (grad_h_n at the last step, else
// dgates_{t+1} @ its panel + the pass's direct part) on its units, then the cell's backward pass writes the
// step's dgates straight into dgx / dgh. s = -1: grad_h0 = dgates_0 @ its panel (+ the direct part), grad_c0.
template <class Seq, typename S>
void seq_backward_step(const cells::SeqBackwardArgs<S>& q, const float* w, float* tile, const SeqPlan& p,
                       int64_t block, int64_t s) {
  using A = math::acc_of<S>;
  const int64_t B = q.B, H = q.H, G = Seq::kGates * H;
  const int64_t lo = block * p.units, uc = std::min(p.units, H - lo);
  S* dg_all = Seq::kSeparateRec ? q.dgh : q.dgx;
  if (s < 0) {
    seq_block_product<S>(dg_all + q.step(0) * B * G, G, B, w, p, block, G, tile);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t u = 0; u < uc; ++u) {
        const int64_t idx = b * H + lo + u;
        A v = tile[b * p.n + u];
        if constexpr (Seq::kDirectDh) v += static_cast<A>(q.direct[idx]);
        q.grad_h0[idx] = static_cast<S>(v);
        if constexpr (Seq::kHasC) q.grad_c0[idx] = q.dcbuf[idx];
      }
    }
    return;
  }
  const int64_t t = q.step(s);
  const bool last = s == q.T - 1;
  if (!last) seq_block_product<S>(dg_all + q.step(s + 1) * B * G, G, B, w, p, block, G, tile);
  const S* go = q.gout + t * B * H;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t u = 0; u < uc; ++u) {
      const int64_t idx = b * H + lo + u;
      A v = static_cast<A>(go[idx]);
      if (last) {
        v += static_cast<A>(q.grad_h_n[idx]);
      } else {
        v += tile[b * p.n + u];
        if constexpr (Seq::kDirectDh) v += static_cast<A>(q.direct[idx]);
      }
      q.dh[idx] = static_cast<S>(v);
    }
  }
  const A* dc_next = Seq::kHasC ? (last ? q.grad_c_n : q.dcbuf + ((s + 1) % 2) * B * H) : nullptr;
  A* dc_prev = Seq::kHasC ? q.dcbuf + (s % 2) * B * H : nullptr;
  if constexpr (!Seq::kRowPass) {
    seq_rows<typename Seq::Bwd, S>(Seq::template backward<S>(q, s, dc_next, dg_all + t * B * G, dc_prev), lo,
                                   lo + uc, B, H);
  }
}

#define FASTLSTM_INSTANTIATE_SEQ_S(SEQ, S)                                                                     \
  template void seq_forward_step<cells::SEQ, S>(const cells::SeqForwardArgs<S>&, const SeqForwardExtra<S>&,  \
                                                const float*, float*, const SeqPlan&, int64_t, int64_t);      \
  template void seq_backward_step<cells::SEQ, S>(const cells::SeqBackwardArgs<S>&, const float*, float*,      \
                                                 const SeqPlan&, int64_t, int64_t);
#define FASTLSTM_INSTANTIATE_SEQ(SEQ)              \
  FASTLSTM_INSTANTIATE_SEQ_S(SEQ, float)           \
  FASTLSTM_INSTANTIATE_SEQ_S(SEQ, c10::BFloat16)   \
  FASTLSTM_INSTANTIATE_SEQ_S(SEQ, c10::Half)
FASTLSTM_CPU_SEQUENCES(FASTLSTM_INSTANTIATE_SEQ)
#undef FASTLSTM_INSTANTIATE_SEQ
#undef FASTLSTM_INSTANTIATE_SEQ_S

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
