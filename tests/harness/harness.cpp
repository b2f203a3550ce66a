// The CPU harness of the CUDA kernels: a device for the layer driver (csrc/layer.h) that runs every pass the
// way csrc/cuda/kernels.cu launches it — the same launch plan (gpu::plan_rows), the same executor and pass
// code (gpu::run_block) for every block of the grid, thread by thread — on CPU tensors whose storage is
// float, double, __half or __nv_bfloat16. Registered as torch.ops.fastlstm_harness.* with fastlstm's own
// op schemas (csrc/schemas.h), so tests/test_cuda_harness.py runs whole layers of every cell forward and
// backward through the GPU path's indexing, vector widths, alignment rules, row reductions and storage
// conversions on machines without a GPU.
//
// Built by the test with torch.utils.cpp_extension.load (g++, -DFASTLSTM_HARNESS, the CUDA include dir).
// set_plan(max_vec, launcher_min_blocks): the widest vector the plan may pick (1 forces the scalar
// kernels) and whether it also applies the launcher's minimum block count (by default it does not, so that
// small test shapes exercise the vector code); last_vec(): the width the last launch used;
// set_acc_gates(on, min_steps): float32 gate pre-activations for half types, as on CUDA (on, the default),
// or half-typed ones (off); with min_steps 4, the CPU device's rule (float32 from 4 steps on), the same
// computation as the CPU op, for exact comparison.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../../csrc/cells/ops.h"
#include "../../csrc/schemas.h"
#include "../../csrc/cuda/dispatch.h"
#include "../../csrc/cuda/persistent.cuh"
#include "../../csrc/cuda/row_kernel.cuh"
#include "../../csrc/cuda/sequence.h"

namespace fastlstm {
namespace harness {
namespace {

int g_max_vec = 16;
int64_t g_min_blocks = 0;
int64_t g_last_vec = 0;
bool g_acc_gates = true;

void set_plan(int64_t max_vec, bool launcher_min_blocks) {
  TORCH_CHECK(max_vec == 1 || max_vec == 2 || max_vec == 4 || max_vec == 8 || max_vec == 16,
              "set_plan: max_vec must be a power of two <= 16, got ", max_vec);
  g_max_vec = int(max_vec);
  g_min_blocks = launcher_min_blocks ? gpu::kMinBlocks : 0;
}

int64_t last_vec() { return g_last_vec; }

// The persistent path: off by default; set_persistent(true, sms, smem_bytes) runs the layers of cells with
// a whole-sequence description through persistent.cuh's step functions, planned for a device with `sms`
// multiprocessors and `smem_bytes` of shared memory per block. persistent_runs(): how many launches did.
bool g_persistent = false;
int g_sms = 132;
int64_t g_smem = 227 * 1024;
int64_t g_persistent_runs = 0;

void set_persistent(bool on, int64_t sms, int64_t smem_bytes) {
  TORCH_CHECK(sms > 0 && smem_bytes > 0, "set_persistent: sms and smem_bytes must be positive, got ", sms, ", ",
              smem_bytes);
  g_persistent = on;
  g_sms = int(sms);
  g_smem = smem_bytes;
}
int64_t persistent_runs() { return g_persistent_runs; }
int64_t g_chunk_elems = int64_t(1) << 24;
// The inference chunk of the persistent path, in gate elements: small ones make a layer take several launches.
void set_persistent_chunk(int64_t elems) {
  TORCH_CHECK(elems > 0, "set_persistent_chunk: elems must be positive, got ", elems);
  g_chunk_elems = elems;
}

struct HarnessRunner {
  static bool enabled(const Tensor&) { return g_persistent; }
  static int64_t chunk_elems() { return g_chunk_elems; }
  static bool limits(const Tensor&, int* sms, size_t* smem_max) {
    *sms = g_sms;
    *smem_max = size_t(g_smem);
    return true;
  }
  template <class Seq, typename S>
  static void forward(const cells::SeqForwardArgs<S>& q, const gpu::PersistentPlan& p, const Tensor&) {
    ++g_persistent_runs;
    gpu::persist::emulate_forward<Seq, S>(q, p);
  }
  template <class Seq, typename S>
  static void backward(const cells::SeqBackwardArgs<S>& q, const gpu::PersistentPlan& p, const Tensor&) {
    ++g_persistent_runs;
    gpu::persist::emulate_backward<Seq, S>(q, p);
  }
};

// min_steps: float32 pre-activations only for layers of at least that many steps (4: the CPU device's rule).
int64_t g_acc_min_steps = 0;
void set_acc_gates(bool on, int64_t min_steps) {
  g_acc_gates = on;
  g_acc_min_steps = min_steps;
}

// The GEMMs are AtenDevice's, on the CPU; only the passes run the CUDA way. Half-type gate pre-activations
// are float32 as on the CUDA device (kAccGates): AtenDevice's float32-output GEMMs stand in for cuBLAS's.
struct HarnessDevice : AtenDevice {
  static constexpr bool kAccGates = true;
  template <class Cell>
  using Sequence = gpu::PersistentSequence<Cell, HarnessRunner>;
  static bool acc_gates_enabled(int64_t T, at::ScalarType) { return g_acc_gates && T >= g_acc_min_steps; }

  // Every block of the grid the launcher would launch, in turn.
  template <class Pass, class Make>
  static void run(const Tensor& like, int64_t rows, int64_t H, const Make& make) {
    if (rows <= 0 || H <= 0) return;
    gpu::dispatch_storage(like.scalar_type(), "fastlstm_harness", [&](auto tag) {
      using S = typename decltype(tag)::type;
      const auto a = make(tag);
      const gpu::RowPlan p = gpu::plan_rows<Pass, S>(a, rows, H, g_max_vec, g_min_blocks);
      g_last_vec = p.vec;
      gpu::dispatch_vec<S>(p.vec, [&](auto v) {
        for (int64_t b = 0; b < rows; ++b) {
          for (int64_t y = 0; y < p.slices; ++y) {
            gpu::run_block<Pass, S, decltype(v)::value>(a, H, p.slice, b, y, p.threads, nullptr);
          }
        }
      });
    });
  }
};

}  // namespace
}  // namespace harness
}  // namespace fastlstm

TORCH_LIBRARY(fastlstm_harness, m) {
  FASTLSTM_DEFINE_SCHEMAS(m)
  m.def("set_plan(int max_vec, bool launcher_min_blocks) -> ()", &fastlstm::harness::set_plan);
  m.def("last_vec() -> int", &fastlstm::harness::last_vec);
  m.def("set_persistent(bool on, int sms, int smem_bytes) -> ()", &fastlstm::harness::set_persistent);
  m.def("persistent_runs() -> int", &fastlstm::harness::persistent_runs);
  m.def("set_persistent_chunk(int elems) -> ()", &fastlstm::harness::set_persistent_chunk);
  m.def("set_acc_gates(bool on, int min_steps=0) -> ()", &fastlstm::harness::set_acc_gates);
}

TORCH_LIBRARY_IMPL(fastlstm_harness, CPU, m) { fastlstm::register_cell_ops<fastlstm::harness::HarnessDevice>(m); }
