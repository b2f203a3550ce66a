// The CPU's pass kernels, compiled once per instruction set (kernels_{default,avx2,avx512}.cpp include
// rows_impl.h) and picked at run time: an extension built with the default flags would get at::vec's scalar
// fallback (std::exp per element), which costs as much per step as the recurrent GEMM. This is the one CPU
// vectorisation mechanism, for every cell and dtype (half types load into float32 registers).
//
//   rows<Pass, S>(args, b0, b1, H) runs Pass::row over batch rows [b0, b1) (see csrc/cells/passes.h);
//   S: float, double, c10::BFloat16, c10::Half. The threading (at::parallel_for) stays in device.cpp,
//   compiled for the baseline ISA.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "../cells/all.h"

namespace fastlstm {
namespace cpu {

template <class Pass, typename S>
using RowsFn = void (*)(const typename Pass::template Args<S>&, int64_t b0, int64_t b1, int64_t H);

// y[r] += dot(w[r, :], x) for rows r in [r0, r1): w [R,K] row-major, x [K], y [R]; float32/float64 only.
// The recurrent product of a batch-1 step, where a GEMM call's fixed cost is larger than the work.
using GemvRowsFn = void (*)(c10::ScalarType dtype, const void* w, const void* x, void* y, int64_t r0, int64_t r1,
                            int64_t K);
// y[c] = sum_r a[r] * w[r, c] for columns c in [c0, c1): w [R,C] row-major, a [R], y [C]; float32/float64.
using GemvTRowsFn = void (*)(c10::ScalarType dtype, const void* w, const void* a, void* y, int64_t c0, int64_t c1,
                             int64_t R, int64_t C);
struct GemvKernels {
  GemvRowsFn gemv;
  GemvTRowsFn gemv_t;
  const char* isa;  // "DEFAULT", "AVX2" or "AVX512"
};

// How the whole-sequence path (sequence.h) splits a layer over threads: `blocks` slices of `units` hidden
// units each (the last may have fewer), every slice with all its gates. A block's weights are packed once per
// op call into a dense float32 [k, n] panel, k the product's reduction length and n its columns:
//   forward  k = H,     n = gates * upad, column gate * upad + u = W_hh[gate * H + lo + u, :]
//   backward k = G = gates * H, n = upad, column u = W_hh[:, lo + u]
// upad: units rounded up to 16 (the SIMD width of every ISA divides it); padded columns are zero.
// pairs: a bfloat16 layer's panels hold bfloat16 K-pairs instead, [k / 2, n, 2] (k even), for AVX512-BF16's
// dot product (seq_bf16_pairs); stride: a block's panel, in floats (k * n, or k * n / 2 with pairs).
struct SeqPlan {
  int64_t blocks = 0, units = 0, upad = 0, k = 0, n = 0, stride = 0;
  bool pairs = false;
};

// What a forward step needs beyond the launch arguments (all per call):
//   h0 [B, H]: the state step 0 starts from; bias [G] float32 or null: the input bias, added here where the
//   projection left it out; active [T] or null: with a PackedSequence's sorted lengths, the rows active at
//   step t are [0, active[t]) (null: all B); h_fin [B, H] (with active): each row's final h, written at its
//   last step (the rows that never run keep what it held).
template <typename S>
struct SeqForwardExtra {
  const S* h0;
  const float* bias;
  const int64_t* active;
  S* h_fin;
};

// One block's share of processing step s (sequence.h runs every block between per-step barriers).
// w: the block's panel; tile [B, n] float32 scratch of its own. Backward: s = T-1 .. 0, then s = -1 for
// grad_h0 / grad_c0.
template <class Seq, typename S>
using SeqForwardFn = void (*)(const cells::SeqForwardArgs<S>& q, const SeqForwardExtra<S>& x, const float* w,
                              float* tile, const SeqPlan& p, int64_t block, int64_t s);
template <class Seq, typename S>
using SeqBackwardFn = void (*)(const cells::SeqBackwardArgs<S>& q, const float* w, float* tile, const SeqPlan& p,
                               int64_t block, int64_t s);

#define FASTLSTM_DECLARE_ISA(NS)                                                                    \
  namespace NS {                                                                                    \
  template <class Pass, typename S>                                                                 \
  void rows(const typename Pass::template Args<S>& a, int64_t b0, int64_t b1, int64_t H);           \
  GemvKernels gemv_kernels();                                                                       \
  template <class Seq, typename S>                                                                  \
  void seq_forward_step(const cells::SeqForwardArgs<S>& q, const SeqForwardExtra<S>& x,            \
                        const float* w, float* tile, const SeqPlan& p, int64_t block, int64_t s);   \
  template <class Seq, typename S>                                                                  \
  void seq_backward_step(const cells::SeqBackwardArgs<S>& q, const float* w, float* tile,           \
                         const SeqPlan& p, int64_t block, int64_t s);                               \
  }
FASTLSTM_DECLARE_ISA(isa_DEFAULT)
FASTLSTM_DECLARE_ISA(isa_AVX2)
FASTLSTM_DECLARE_ISA(isa_AVX512)
#undef FASTLSTM_DECLARE_ISA

}  // namespace cpu
}  // namespace fastlstm
