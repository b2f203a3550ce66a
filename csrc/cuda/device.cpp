// The CUDA device of the layer driver (csrc/layer.h): the thin adapter between ATen and the framework-free
// kernels (launch.h, kernels.cu). The driver runs the GEMMs through ATen (cuBLAS, on the current stream) and
// the step loop; this file supplies how a pass is launched, the device guard, the current stream, the
// dtype mapping, and for half types the GEMMs with a float32 output that keep the gate pre-activations in
// float32 (cublasGemmEx on ATen's cuBLAS handle, bound to the current stream). Nothing here synchronises
// the host, so forward and backward can be captured in a CUDA graph. Registers every cell's ops for CUDA.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>

#include "../cells/ops.h"
#include "../cells/pairs.h"
#include "dispatch.h"
#include "launch.h"
#include "sequence.h"

namespace fastlstm {
namespace gpu {
namespace {

// A 2-D tensor as cuBLAS's row-major operand: itself when its rows are dense (unit column stride, row
// stride >= its width), else a contiguous copy.
Tensor rows_dense(const Tensor& t) {
  const bool ok = t.stride(1) == 1 && t.stride(0) >= std::max<int64_t>(1, t.size(1));
  return ok ? t : t.contiguous();
}

// out [M, N] float32 (=, or += with accumulate) a [M, K] @ w [N, K]^T, a and w float16 or bfloat16 (the
// same): float32 products and sums (CUBLAS_COMPUTE_32F), as cuDNN computes its RNN's pre-activations.
// Row-major out = a w^T is column-major out^T = w a^T: cuBLAS's (op T on w, op N on a).
void gemm_acc(const Tensor& out, const Tensor& a_in, const Tensor& w_in, bool accumulate) {
  const int64_t M = out.size(0), N = out.size(1), K = a_in.size(1);
  TORCH_INTERNAL_ASSERT(out.scalar_type() == at::kFloat && out.stride(1) == 1 && out.stride(0) >= N &&
                        a_in.size(0) == M && w_in.size(0) == N && w_in.size(1) == K &&
                        a_in.scalar_type() == w_in.scalar_type());
  if (M == 0 || N == 0) return;
  // cuBLAS takes int sizes; the driver's chunks keep M * N under 2^21.
  TORCH_CHECK(std::max({M, N, K, out.stride(0)}) <= INT_MAX, "fastlstm: a float32-output GEMM of [", M, ", ", K,
              "] x [", K, ", ", N, "] is too large for cuBLAS");
  if (K == 0) {
    if (!accumulate) const_cast<Tensor&>(out).zero_();
    return;
  }
  const Tensor a = rows_dense(a_in), w = rows_dense(w_in);
  TORCH_CHECK(std::max(a.stride(0), w.stride(0)) <= INT_MAX, "fastlstm: a GEMM operand's rows are too long for cuBLAS");
  const cudaDataType_t type = a.scalar_type() == at::kHalf ? CUDA_R_16F : CUDA_R_16BF;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // on the current stream
  TORCH_CUDABLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &alpha, w.data_ptr(),
                                    type, int(w.stride(0)), a.data_ptr(), type, int(a.stride(0)), &beta,
                                    out.data_ptr(), CUDA_R_32F, int(out.stride(0)), CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
}

}  // namespace

// The persistent kernel's side of PersistentSequence (sequence.h): on only with FASTLSTM_CUDA_PERSISTENT=1
// (read per call, so tests and benchmarks can switch paths), until it has been proven on a GPU. Its float32
// product is strict float32: where cuDNN's RNN flag allows TF32 (see Call below), the per-step path runs, so
// the precision a user gets follows that flag whichever path is on.
struct PersistentRunner {
  static bool enabled(const Tensor& input) {
    const char* e = std::getenv("FASTLSTM_CUDA_PERSISTENT");
    if (e == nullptr || std::strcmp(e, "1") != 0) return false;
    return !(input.scalar_type() == at::kFloat && at::globalContext().allowTF32CuDNN(at::Float32Op::RNN));
  }
  // 16M elements (32 MiB of half gates) per launch: the weight slices are reloaded once per launch.
  static int64_t chunk_elems() { return int64_t(1) << 24; }
  // The device's limits, read once per device.
  static bool limits(const Tensor& like, int* sms, size_t* smem_max) {
    struct Limits {
      bool ok = false;
      int sms = 0;
      size_t smem = 0;
    };
    static std::array<Limits, 64> cache;
    static std::array<std::once_flag, 64> once;
    const int dev = like.device().index();
    if (dev < 0 || dev >= 64) return false;
    std::call_once(once[size_t(dev)], [&] {
      Limits l;
      l.ok = persistent_limits(dev, &l.sms, &l.smem) == cudaSuccess;
      (void)cudaGetLastError();  // an unsupported attribute must not poison the next launch's check
      cache[size_t(dev)] = l;
    });
    const Limits& l = cache[size_t(dev)];
    *sms = l.sms;
    *smem_max = l.smem;
    return l.ok;
  }
  template <class Seq, typename S>
  static void forward(const cells::SeqForwardArgs<S>& q, const PersistentPlan& p, const Tensor& like) {
    const cudaError_t err =
        persistent_forward<Seq, S>(q, p, c10::cuda::getCurrentCUDAStream(like.device().index()).stream());
    C10_CUDA_CHECK(err);
  }
  template <class Seq, typename S>
  static void backward(const cells::SeqBackwardArgs<S>& q, const PersistentPlan& p, const Tensor& like) {
    const cudaError_t err =
        persistent_backward<Seq, S>(q, p, c10::cuda::getCurrentCUDAStream(like.device().index()).stream());
    C10_CUDA_CHECK(err);
  }
};

// The dtype check and the GEMMs in the storage dtype are AtenDevice's (cuBLAS, current stream); for half
// types the gate pre-activations are float32 (kAccGates, layer.h), from the float32-output GEMMs here.
struct CudaDevice : AtenDevice {
  static constexpr bool kAccGates = true;
  template <class Cell>
  using Sequence = PersistentSequence<Cell, PersistentRunner>;

  // pre2d [R, G] float32 = x2d [R, I] @ w_ih^T (+ bias [G] float32), x2d and w_ih half-typed.
  static void input_mm_acc(const Tensor& pre2d, const Tensor& x2d, const Tensor& w_ih, const Tensor& bias) {
    if (bias.defined()) const_cast<Tensor&>(pre2d).copy_(bias.expand_as(pre2d));
    gemm_acc(pre2d, x2d, w_ih, /*accumulate=*/bias.defined());
  }

  // AtenDevice's, plus the forward product of half-typed h and w into a float32 out.
  class Recurrent : public AtenDevice::Recurrent {
   public:
    Recurrent(const Tensor& w, int64_t B, int64_t T) : AtenDevice::Recurrent(w, B, T), w_(w) {}
    void forward_acc(const Tensor& out, const Tensor& h, bool accumulate) const { gemm_acc(out, h, w_, accumulate); }

   private:
    Tensor w_;
  };

  // One op call's scope: the input's device, and float32 GEMMs that follow cuDNN's RNN TF32 setting
  // (torch.backends.cudnn.allow_tf32 / cudnn.rnn.fp32_precision, on by default), the one nn.LSTM's cuDNN
  // path follows, not torch.backends.cuda.matmul's (off by default): a user then sees the same precision
  // and speed trade-off as with nn.LSTM. Strict float32 is a thread-local guard; TF32 while the matmul
  // flag is off has no such guard in ATen, so the process-wide cuBLAS flag is set for the call and restored
  // after it (a concurrent float32 matmul on another thread sees it meanwhile).
  struct Call {
    c10::cuda::CUDAGuard guard;
    std::optional<at::NoTF32Guard> strict;
    bool restore = false;
    Call(const Tensor& input, int64_t) : guard(input.device()) {
      if (input.scalar_type() != at::kFloat) return;
      auto& ctx = at::globalContext();
      if (!ctx.allowTF32CuDNN(at::Float32Op::RNN)) {
        strict.emplace();
      } else if (!ctx.allowTF32CuBLAS()) {
        ctx.setAllowTF32CuBLAS(true);
        restore = true;
      }
    }
    ~Call() {
      if (restore) at::globalContext().setAllowTF32CuBLAS(false);
    }
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;
  };

  template <class Pass, class Make>
  static void run(const Tensor& like, int64_t rows, int64_t H, const Make& make) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(like.device().index()).stream();
    dispatch_storage(like.scalar_type(), "fastlstm", [&](auto tag) {
      using S = typename decltype(tag)::type;
      const cudaError_t err = launch<Pass, S>(make(tag), rows, H, stream);
      C10_CUDA_CHECK(err);
    });
  }

};

}  // namespace gpu

TORCH_LIBRARY_IMPL(fastlstm, CUDA, m) {
  register_cell_ops<gpu::CudaDevice>(m);
  // The directions one after the other on the caller's stream (csrc/cells/pairs.h): Python does not pick them
  // on CUDA, where one direction already fills the device; a direct call works as on the CPU.
  PairOps<gpu::CudaDevice, /*Concurrent=*/false>::register_impls(m);
}

}  // namespace fastlstm
