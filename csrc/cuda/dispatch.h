// Host-side glue shared by the CUDA adapter (device.cpp) and the CPU harness that runs the CUDA
// kernels: the mapping from a tensor dtype to the
// kernels' storage type. Uses ATen, so it is not included by any .cu/.cuh file.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <initializer_list>

namespace fastlstm {
namespace gpu {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<storage type>{}) for a tensor dtype: at::Half and at::BFloat16 have the bit layout of
// CUDA's __half and __nv_bfloat16, which the kernels use. `name` is the op, for the error message.
template <typename F>
void dispatch_storage(at::ScalarType t, const char* name, F&& f) {
  switch (t) {
    case at::kFloat:
      return f(TypeTag<float>{});
    case at::kDouble:
      return f(TypeTag<double>{});
    case at::kHalf:
      return f(TypeTag<__half>{});
    case at::kBFloat16:
      return f(TypeTag<__nv_bfloat16>{});
    default:
      TORCH_CHECK(false, "fastlstm: ", name, ": the CUDA kernels support float32, float64, bfloat16 and float16, got ",
                  t);
  }
}

// A tensor's data as the kernels' type T (the dtype was checked by dispatch_storage).
template <typename T>
T* data_as(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

}  // namespace gpu
}  // namespace fastlstm
