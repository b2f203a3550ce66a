// The persistent kernels' launchers (persistent.cuh), instantiated for every cell with a whole-sequence
// description and every storage type. Framework-free: nvcc compiles this without torch.
#include "launch.h"
#include "persistent.cuh"

namespace fastlstm {
namespace gpu {

cudaError_t persistent_limits(int device, int* sms, size_t* smem_max) {
  int n = 0, coop = 0, smem = 0;
  cudaError_t e = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) return e;
  if (!coop) return cudaErrorNotSupported;
  *sms = n;
  *smem_max = size_t(smem);
  return cudaSuccess;
}

namespace {

// Raises the kernel's dynamic shared-memory limit to the plan's, then launches it as a cooperative grid
// (every block resident: the plan has at most one per SM), on `stream`, without a host synchronisation.
template <class Kernel, class Args>
cudaError_t launch_cooperative(Kernel kernel, const Args& args, const PersistentPlan& p, cudaStream_t stream) {
  if (!p.ok) return cudaErrorInvalidConfiguration;
  cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(p.smem));
  if (e != cudaSuccess) return e;
  Args a = args;
  PersistentPlan plan = p;
  void* params[] = {&a, &plan};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(unsigned(p.ctas)),
                                     dim3(kPersistentThreads), params, p.smem, stream);
}

}  // namespace

template <class Seq, typename S>
cudaError_t persistent_forward(const cells::SeqForwardArgs<S>& q, const PersistentPlan& p, cudaStream_t stream) {
  if (q.s1 <= q.s0) return cudaSuccess;
  return launch_cooperative(persist::forward_kernel<Seq, S>, q, p, stream);
}

template <class Seq, typename S>
cudaError_t persistent_backward(const cells::SeqBackwardArgs<S>& q, const PersistentPlan& p, cudaStream_t stream) {
  if (q.T <= 0) return cudaSuccess;
  return launch_cooperative(persist::backward_kernel<Seq, S>, q, p, stream);
}

#define FASTLSTM_INSTANTIATE_PERSISTENT(SEQ, S)                                                                   \
  template cudaError_t persistent_forward<cells::SEQ, S>(const cells::SeqForwardArgs<S>&, const PersistentPlan&, \
                                                         cudaStream_t);                                         \
  template cudaError_t persistent_backward<cells::SEQ, S>(const cells::SeqBackwardArgs<S>&,                      \
                                                          const PersistentPlan&, cudaStream_t);
#define FASTLSTM_INSTANTIATE_PERSISTENT_ALL(SEQ)        \
  FASTLSTM_INSTANTIATE_PERSISTENT(SEQ, float)           \
  FASTLSTM_INSTANTIATE_PERSISTENT(SEQ, double)          \
  FASTLSTM_INSTANTIATE_PERSISTENT(SEQ, __half)          \
  FASTLSTM_INSTANTIATE_PERSISTENT(SEQ, __nv_bfloat16)
FASTLSTM_SEQUENCES(FASTLSTM_INSTANTIATE_PERSISTENT_ALL)
#undef FASTLSTM_INSTANTIATE_PERSISTENT_ALL
#undef FASTLSTM_INSTANTIATE_PERSISTENT

}  // namespace gpu
}  // namespace fastlstm
