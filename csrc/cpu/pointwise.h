// The CPU pointwise passes, compiled once per instruction set (kernels_{default,avx2,avx512}.cpp) and
// picked at run time: an extension built with the default flags would get at::vec's scalar fallback
// (std::exp per element), which costs as much per step as the recurrent GEMM. Each kernel handles a range
// of batch rows; the threading (at::parallel_for) stays in lstm_cpu.cpp, compiled for the baseline ISA.
//
// Row kernels (rows [b0, b1) of B; pointers are to contiguous tensors; acc = float for half/bfloat16 and
// the input dtype otherwise):
//   forward:  gates [B,4H] scalar (pre-activations in, activated i,f,g,o out), c_prev [B,H] acc,
//             c_out [B,H] acc, h_out [B,H] scalar
//   backward: gates [B,4H] scalar (activated), c [B,H] acc, c_prev [B,H] acc, dh [B,H] scalar,
//             dc_next [B,H] acc, dgates [B,4H] scalar (out), dc_prev [B,H] acc (out)
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace fastlstm {
namespace cpu {

using ForwardRowsFn = void (*)(c10::ScalarType dtype, void* gates, const void* c_prev, void* c_out, void* h_out,
                               int64_t b0, int64_t b1, int64_t H);
using BackwardRowsFn = void (*)(c10::ScalarType dtype, const void* gates, const void* c, const void* c_prev,
                                const void* dh, const void* dc_next, void* dgates, void* dc_prev, int64_t b0,
                                int64_t b1, int64_t H);

// y[r] += dot(w[r, :], x) for rows r in [r0, r1): w [R,K] row-major, x [K], y [R]; float32/float64 only.
// The recurrent product of a batch-1 step (a matrix-vector product), where a GEMM call's fixed cost is
// larger than the work.
using GemvRowsFn = void (*)(c10::ScalarType dtype, const void* w, const void* x, void* y, int64_t r0, int64_t r1,
                            int64_t K);

// y[c] = sum_r a[r] * w[r, c] for columns c in [c0, c1): w [R,C] row-major, a [R], y [C]; float32/float64.
// The batch-1 backward recurrent product (dgates @ w_hh).
using GemvTRowsFn = void (*)(c10::ScalarType dtype, const void* w, const void* a, void* y, int64_t c0, int64_t c1,
                             int64_t R, int64_t C);

// Peephole-LSTM row kernels (issue 6; the Backend passes of csrc/peephole_layer.h, which documents the
// arguments), rows [b0, b1): gates [B,4H] scalar, cell states and gradients acc, h and dh scalar, the
// diagonal peephole weights p_i, p_f, p_o [H] acc.
using PeepholeForwardDiagFn = void (*)(c10::ScalarType dtype, void* gates, const void* c_prev, const void* p_i,
                                       const void* p_f, const void* p_o, void* c_out, void* h_out, int64_t b0,
                                       int64_t b1, int64_t H);
using PeepholeForwardCFn = void (*)(c10::ScalarType dtype, void* gates, const void* c_prev, void* c_out,
                                    int64_t b0, int64_t b1, int64_t H);
using PeepholeForwardHFn = void (*)(c10::ScalarType dtype, void* gates, const void* c, void* h_out, int64_t b0,
                                    int64_t b1, int64_t H);
using PeepholeBackwardDiagFn = void (*)(c10::ScalarType dtype, const void* gates, const void* c,
                                        const void* c_prev, const void* p_i, const void* p_f, const void* p_o,
                                        const void* dh, const void* dc_next, void* dgates, void* dc_prev,
                                        int64_t b0, int64_t b1, int64_t H);
using PeepholeBackwardHFn = void (*)(c10::ScalarType dtype, const void* gates, const void* c, const void* dh,
                                     const void* dc_next, void* dgates, void* dc_out, int64_t b0, int64_t b1,
                                     int64_t H);
using PeepholeBackwardCFn = void (*)(c10::ScalarType dtype, const void* gates, const void* c_prev,
                                     const void* dc, void* dgates, void* dc_prev, int64_t b0, int64_t b1,
                                     int64_t H);

struct PeepholeKernels {
  PeepholeForwardDiagFn forward_diag;
  PeepholeForwardCFn forward_c;
  PeepholeForwardHFn forward_h;
  PeepholeBackwardDiagFn backward_diag;
  PeepholeBackwardHFn backward_h;
  PeepholeBackwardCFn backward_c;
};

struct PointwiseKernels {
  ForwardRowsFn forward;
  BackwardRowsFn backward;
  GemvRowsFn gemv;
  GemvTRowsFn gemv_t;
  PeepholeKernels peephole;
  const char* isa;  // "DEFAULT", "AVX2" or "AVX512"
};

PointwiseKernels kernels_DEFAULT();
PointwiseKernels kernels_AVX2();
PointwiseKernels kernels_AVX512();

}  // namespace cpu
}  // namespace fastlstm
