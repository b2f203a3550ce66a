// How the persistent CUDA kernel (persistent.cuh) covers one layer: framework-free and host-only, so the
// adapter (device.cpp), the launcher (persistent.cu) and the CPU harness all plan the same way.
//
// One cooperative grid of `ctas` blocks (at most one per SM, so all are resident and a grid barrier per
// step is safe), each owning `units` consecutive hidden units with all their gates. A block keeps its slice
// of W_hh in shared memory for the whole launch: forward, the rows gate * H + unit (n = gates * units rows of
// H); backward, the columns of its units (n = units rows of G = gates * H, W_hh transposed), since
// dh_{t-1} = dgates_t W_hh needs every gate row for a unit. The per-step product is then
//   acc [rows, npad] = X [rows, k] (h_{t-1} or dgates_t, from global memory) x slice^T [k, npad],
// on tensor cores (wmma 16x16x16, fp32 accumulation) for float16 / bfloat16, on the CUDA cores in the
// storage precision for float32 (no TF32: cuDNN's float32 with TF32 off) and float64.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../cells/math.h"

namespace fastlstm {
namespace gpu {

constexpr int kPersistentThreads = 256;  // 8 warps
constexpr int kPersistentMaxRows = 128;  // larger batches fill the GPU with per-step GEMMs anyway

template <typename S>
constexpr bool persistent_tensor_cores() {
  return std::is_same<S, __half>::value || std::is_same<S, __nv_bfloat16>::value;
}

struct PersistentPlan {
  bool ok = false;
  const char* why = "not planned";  // when !ok: why this layer takes the per-step path
  int units = 0;     // hidden units per block (the last block may have fewer)
  int ctas = 0;      // blocks
  int rows = 0;      // rows of the product: B, rounded up to 16 for tensor cores (zero rows)
  int n = 0;         // columns of the product that are real: gates * units (forward) or units (backward)
  int npad = 0;      // n rounded up to 16 for tensor cores
  int k = 0;         // the product's reduction length: H (forward) or G (backward)
  int ldw = 0;       // shared-memory row stride of the weight slice, in elements (padded against bank conflicts)
  int ksplit = 1;    // tensor cores: warps sharing one output tile, each over a part of k
  bool tc = false;   // tensor cores
  size_t w_bytes = 0;  // the weight slice's bytes (then the accumulators)
  size_t smem = 0;   // dynamic shared memory per block
};

// B, H: the layer; gates: the cell's gate count; sms: the device's multiprocessor count; smem_max: its
// opt-in shared memory per block. S: the storage type.
template <typename S>
PersistentPlan persistent_plan(int64_t B, int64_t H, int gates, bool backward, int sms, size_t smem_max) {
  using A = math::acc_of<S>;
  PersistentPlan p;
  p.tc = persistent_tensor_cores<S>();
  if (B < 1 || H < 1 || sms < 1) {
    p.why = "empty layer";
    return p;
  }
  if (p.tc && H % 16 != 0) {
    p.why = "hidden_size is not a multiple of 16 (the tensor-core tiles)";
    return p;
  }
  const int64_t rows = p.tc ? (B + 15) / 16 * 16 : B;
  if (rows > kPersistentMaxRows) {
    p.why = "batch larger than 128";
    return p;
  }
  const int64_t units = (H + sms - 1) / sms;
  const int64_t ctas = (H + units - 1) / units;
  const int64_t n = backward ? units : gates * units;
  const int64_t k = backward ? gates * H : H;
  const int64_t npad = p.tc ? (n + 15) / 16 * 16 : n;
  // Tensor cores read 16-element rows of the slice (32 bytes): a stride of k + 8 elements keeps rows
  // 32-byte aligned and moves consecutive rows to other banks; the CUDA-core loop reads one element of
  // each of 32 rows at a time, which an odd stride spreads over all banks.
  const int64_t ldw = p.tc ? k + 8 : k + 1;
  int ksplit = 1;
  if (p.tc) {
    const int64_t tiles = (rows / 16) * (npad / 16);
    const int64_t warps = kPersistentThreads / 32;
    ksplit = int(tiles >= warps ? 1 : warps / tiles);
    if (ksplit > k / 16) ksplit = int(k / 16);
    if (ksplit < 1) ksplit = 1;
  }
  const size_t w_bytes = (size_t(npad) * size_t(ldw) * sizeof(S) + 127) / 128 * 128;
  const size_t smem = w_bytes + size_t(ksplit) * size_t(rows) * size_t(npad) * sizeof(A);
  if (smem > smem_max) {
    p.why = "the block's weight slice does not fit in shared memory";
    return p;
  }
  p.ok = true;
  p.why = "";
  p.units = int(units);
  p.ctas = int(ctas);
  p.rows = int(rows);
  p.n = int(n);
  p.npad = int(npad);
  p.k = int(k);
  p.ldw = int(ldw);
  p.ksplit = ksplit;
  p.w_bytes = w_bytes;
  p.smem = smem;
  return p;
}

}  // namespace gpu
}  // namespace fastlstm
