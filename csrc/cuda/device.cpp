// The CUDA device of the layer driver (csrc/layer.h): the thin adapter between ATen and the framework-free
// kernels (launch.h, kernels.cu). The driver runs the GEMMs through ATen (cuBLAS, on the current stream) and
// the step loop; this file supplies how a pass is launched, the device guard, the current stream and the
// dtype mapping. Nothing here synchronises the host, so forward and backward can be captured in a CUDA
// graph. Registers every cell's ops for CUDA.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>

#include "../cells/ops.h"
#include "dispatch.h"
#include "launch.h"
#include "sequence.h"

namespace fastlstm {
namespace gpu {

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

// The dtype check, the input projection and the recurrent GEMMs are AtenDevice's (cuBLAS, current stream).
struct CudaDevice : AtenDevice {
  template <class Cell>
  using Sequence = PersistentSequence<Cell, PersistentRunner>;

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

TORCH_LIBRARY_IMPL(fastlstm, CUDA, m) { register_cell_ops<gpu::CudaDevice>(m); }

}  // namespace fastlstm
