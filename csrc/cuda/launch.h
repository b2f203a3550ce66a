// The launcher of fastlstm's CUDA kernels: framework-free (CUDA runtime and our own headers only), so that
// the adapter (device.cpp) is the only file that knows about ATen, and nvcc compiles the kernels on a
// machine with neither a GPU nor a CUDA build of torch.
//
// launch<Pass, S>(args, rows, H, stream) runs a cell's pass (csrc/cells/*.h) over `rows` rows of width H
// (S: float, double, __half, __nv_bfloat16) on `stream`, and returns cudaGetLastError() of that launch
// (nothing to do launches nothing and returns cudaSuccess). It never synchronises the host, so it can be
// captured in a CUDA graph. Indexing is 64-bit; rows > 2^31 - 1 returns cudaErrorInvalidConfiguration.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "../cells/all.h"
#include "persistent_plan.h"

namespace fastlstm {
namespace gpu {

template <class Pass, typename S>
cudaError_t launch(const typename Pass::template Args<S>& args, int64_t rows, int64_t H, cudaStream_t stream);

// Instantiated in kernels.cu for exactly these passes and storage types.
#define FASTLSTM_DECLARE_LAUNCH(PASS)                                                                          \
  extern template cudaError_t launch<cells::PASS, float>(const cells::PASS::Args<float>&, int64_t, int64_t,   \
                                                         cudaStream_t);                                      \
  extern template cudaError_t launch<cells::PASS, double>(const cells::PASS::Args<double>&, int64_t, int64_t, \
                                                          cudaStream_t);                                     \
  extern template cudaError_t launch<cells::PASS, __half>(const cells::PASS::Args<__half>&, int64_t, int64_t, \
                                                          cudaStream_t);                                     \
  extern template cudaError_t launch<cells::PASS, __nv_bfloat16>(const cells::PASS::Args<__nv_bfloat16>&,    \
                                                                 int64_t, int64_t, cudaStream_t);
FASTLSTM_PASSES(FASTLSTM_DECLARE_LAUNCH)
#undef FASTLSTM_DECLARE_LAUNCH

// The persistent path (persistent.cuh), off unless FASTLSTM_CUDA_PERSISTENT=1 until it has run on a GPU.
// persistent_limits: the device's multiprocessor count and opt-in shared memory per block, for
// persistent_plan; cudaErrorNotSupported where it cannot launch cooperative grids.
cudaError_t persistent_limits(int device, int* sms, size_t* smem_max);
// One launch for steps [q.s0, q.s1) of a forward / the whole backward, planned by persistent_plan<S>(B, H,
// Seq::kGates, backward, ...) for this device; on `stream`, no host synchronisation.
template <class Seq, typename S>
cudaError_t persistent_forward(const cells::SeqForwardArgs<S>& q, const PersistentPlan& p, cudaStream_t stream);
template <class Seq, typename S>
cudaError_t persistent_backward(const cells::SeqBackwardArgs<S>& q, const PersistentPlan& p, cudaStream_t stream);

#define FASTLSTM_DECLARE_PERSISTENT(SEQ, S)                                                                        \
  extern template cudaError_t persistent_forward<cells::SEQ, S>(const cells::SeqForwardArgs<S>&,                 \
                                                                const PersistentPlan&, cudaStream_t);            \
  extern template cudaError_t persistent_backward<cells::SEQ, S>(const cells::SeqBackwardArgs<S>&,               \
                                                                 const PersistentPlan&, cudaStream_t);
#define FASTLSTM_DECLARE_PERSISTENT_ALL(SEQ)                                                            \
  FASTLSTM_DECLARE_PERSISTENT(SEQ, float)                                                               \
  FASTLSTM_DECLARE_PERSISTENT(SEQ, double)                                                              \
  FASTLSTM_DECLARE_PERSISTENT(SEQ, __half) FASTLSTM_DECLARE_PERSISTENT(SEQ, __nv_bfloat16)
FASTLSTM_SEQUENCES(FASTLSTM_DECLARE_PERSISTENT_ALL)
#undef FASTLSTM_DECLARE_PERSISTENT_ALL
#undef FASTLSTM_DECLARE_PERSISTENT

}  // namespace gpu
}  // namespace fastlstm
