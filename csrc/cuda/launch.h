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

}  // namespace gpu
}  // namespace fastlstm
