// fastlstm's persistent CUDA path: one cooperative kernel runs a layer's whole step loop, forward or backward,
// for cells with a whole-sequence description (csrc/cells/sequence.h: LSTM, GRU). Plan: persistent_plan.h.
//
// Per step, each block (owning hidden units [lo, lo + units)):
//   forward:  acc = h_{t-1} x its W_hh rows (weights from shared memory, loaded once per launch); adds acc
//             into its gates of the step (or writes the separate recurrent operand); runs the cell's own
//             forward pass (csrc/cells/*.h) on its units of every row; writes h_t; grid barrier.
//   backward: acc = dgates_{t+1} x its W_hh columns; dh_t = grad_output_t + acc (+ the pass's direct part)
//             on its units; runs the cell's backward pass; grid barrier. After step 0, grad_h0 likewise.
// One grid barrier per step; nothing crosses blocks except h_t / dgates_t through global memory (L2), whose
// ping-pong buffers are padded with zero rows to the tensor-core tile.
//
// Framework-free, written once for the GPU and for the host: every phase is a loop "for i = tid; i < n;
// i += nthreads" between block barriers, so the CPU harness (tests/harness/harness.cpp) runs the very same
// step functions with one thread per block and the blocks in turn between the grid barriers (emulate_*
// below), which tests the slicing, padding, buffer parity, pass arguments and epilogues where no GPU
// exists. Only the tensor-core product (product_tc) is GPU-only; the host computes the same sums in order.
#pragma once

#if !defined(__CUDACC__) && !defined(FASTLSTM_HARNESS)
#error "persistent.cuh is for nvcc and the CPU harness; host code includes persistent_plan.h"
#endif

#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#include <cooperative_groups.h>
#include <mma.h>
#endif

#include "../cells/all.h"
#include "persistent_plan.h"
#include "row_kernel.cuh"

namespace fastlstm {
namespace gpu {
namespace persist {

using cells::SeqBackwardArgs;
using cells::SeqForwardArgs;

// One block's view: its thread, the block's size, its index, its shared memory. The host runs each phase
// for the whole block as thread 0 of 1.
struct Cta {
  int tid, nthreads, cta;
  unsigned char* smem;
};

FASTLSTM_HOST_DEVICE inline void cta_sync() {
#if defined(__CUDA_ARCH__)
  __syncthreads();
#endif
}

template <typename S>
FASTLSTM_HOST_DEVICE inline S* weights(const Cta& c) {
  return reinterpret_cast<S*>(c.smem);
}
template <typename S>
FASTLSTM_HOST_DEVICE inline math::acc_of<S>* accumulators(const Cta& c, const PersistentPlan& p) {
  return reinterpret_cast<math::acc_of<S>*>(c.smem + p.w_bytes);
}

// The executor of csrc/cells/passes.h on units [lo, hi) of one row, `width` threads of the block per row
// (on the host one thread does them all). Passes with row sums need the whole row in one block: never here.
template <typename S>
struct SliceExec {
  using A = math::acc_of<S>;
  int64_t lo, hi;
  int lane, width;
  template <class F>
  FASTLSTM_HOST_DEVICE void for_units(int64_t n, const F& f) const {
    const int64_t end = n < hi ? n : hi;
    for (int64_t j = lo + lane; j < end; j += width) f(j, PackLane<S, 1>{});
  }
  template <class F>
  FASTLSTM_HOST_DEVICE A sum(int64_t, const F&) const {
    return A(0);  // unreachable: run_rows rejects row-reduce passes at compile time
  }
  template <class F>
  FASTLSTM_HOST_DEVICE void once(const F& f) const {
    if (lane == 0) f();
  }
};

// A cell's pass on units [lo, hi) of rows [0, B): rows spread over groups of a power-of-two number of
// threads (at most a warp), so a block with few units per row still uses all its threads.
template <class Pass, typename S>
FASTLSTM_HOST_DEVICE void run_rows(const Cta& c, int64_t lo, int64_t hi, int64_t B, int64_t H,
                                   const typename Pass::template Args<S>& a) {
  static_assert(!Pass::kRowReduce, "the persistent kernel slices rows: passes with row sums cannot run there");
  int width = 1;
  while (width < hi - lo && width < 32 && width < c.nthreads) width *= 2;
  const int groups = c.nthreads / width;
  const int group = c.tid / width;
  if (group >= groups) return;
  const SliceExec<S> e{lo, hi, c.tid % width, width};
  for (int64_t b = group; b < B; b += groups) Pass::template row<S>(e, a, b, H);
}

// The block's weight slice into shared memory, zero where padded: forward row n = gate * units + u holds
// W_hh[gate * H + lo + u, :]; backward row u holds W_hh[:, lo + u]. w: W_hh [gates * H, H].
template <typename S>
FASTLSTM_HOST_DEVICE void load_weights(const Cta& c, const PersistentPlan& p, const S* w, int64_t H, bool backward) {
  S* ws = weights<S>(c);
  const int64_t lo = int64_t(c.cta) * p.units;
  const int64_t uc = p.units < H - lo ? p.units : H - lo;
  const int64_t total = int64_t(p.npad) * p.ldw;
  for (int64_t i = c.tid; i < total; i += c.nthreads) {
    const int64_t n = i / p.ldw, k = i % p.ldw;
    S v = from_acc<S>(math::acc_of<S>(0));
    if (k < p.k && n < p.n) {
      if (!backward) {
        const int64_t gate = n / p.units, u = n % p.units;
        if (u < uc) v = w[(gate * H + lo + u) * H + k];
      } else if (n < uc) {
        v = w[k * H + lo + n];
      }
    }
    ws[i] = v;
  }
}

#if defined(__CUDA_ARCH__)
// acc [rows, npad] (fp32) = x [rows, k] (row stride ldx, rows >= B zero) x slice^T, on tensor cores: warps
// take (tile, part of k) items; the ksplit partial tiles are summed in place afterwards.
template <typename S>
__device__ void product_tc(const Cta& c, const PersistentPlan& p, const S* x, int64_t ldx) {
#if __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  float* part = accumulators<S>(c, p);
  const S* ws = weights<S>(c);
  const int warp = c.tid / 32, warps = c.nthreads / 32;
  const int mtiles = p.rows / 16, ntiles = p.npad / 16, tiles = mtiles * ntiles, ktiles = p.k / 16;
  const int kchunk = (ktiles + p.ksplit - 1) / p.ksplit;
  for (int item = warp; item < tiles * p.ksplit; item += warps) {
    const int tile = item % tiles, kp = item / tiles, mt = tile / ntiles, nt = tile % ntiles;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    const int k_end = (kp + 1) * kchunk < ktiles ? (kp + 1) * kchunk : ktiles;
    for (int kt = kp * kchunk; kt < k_end; ++kt) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, S, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, S, wmma::col_major> fb;
      wmma::load_matrix_sync(fa, x + int64_t(mt) * 16 * ldx + kt * 16, unsigned(ldx));
      wmma::load_matrix_sync(fb, ws + int64_t(nt) * 16 * p.ldw + kt * 16, unsigned(p.ldw));
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(part + int64_t(kp) * p.rows * p.npad + int64_t(mt) * 16 * p.npad + nt * 16, acc,
                            unsigned(p.npad), wmma::mem_row_major);
  }
  __syncthreads();
  if (p.ksplit > 1) {
    const int64_t n = int64_t(p.rows) * p.npad;
    for (int64_t i = c.tid; i < n; i += c.nthreads) {
      float s = part[i];
      for (int kp = 1; kp < p.ksplit; ++kp) s += part[kp * n + i];
      part[i] = s;
    }
    __syncthreads();
  }
#else
  __trap();  // the plan takes tensor cores only where the build has them (sm_80+)
#endif
}
#endif

// acc [rows, npad] = x [rows, k] (row stride ldx; rows >= B are zero or absent) x the weight slice^T.
template <typename S>
FASTLSTM_HOST_DEVICE void product(const Cta& c, const PersistentPlan& p, const S* x, int64_t ldx) {
#if defined(__CUDA_ARCH__)
  if constexpr (persistent_tensor_cores<S>()) {
    product_tc<S>(c, p, x, ldx);
    return;
  }
#endif
  using A = math::acc_of<S>;
  A* acc = accumulators<S>(c, p);
  const S* ws = weights<S>(c);
  const int64_t n_out = int64_t(p.rows) * p.npad;
  for (int64_t i = c.tid; i < n_out; i += c.nthreads) {
    const int64_t m = i / p.npad, n = i % p.npad;
    const S* xr = x + m * ldx;
    const S* wr = ws + n * p.ldw;
    A s = A(0);
    for (int64_t k = 0; k < p.k; ++k) s += to_acc(xr[k]) * to_acc(wr[k]);
    acc[i] = s;
  }
  cta_sync();
}

// Processing step s of the forward (see the top of this file).
template <class Seq, typename S>
FASTLSTM_HOST_DEVICE void forward_step(const Cta& c, const PersistentPlan& p, const SeqForwardArgs<S>& q, int64_t s) {
  using A = math::acc_of<S>;
  const int64_t B = q.B, H = q.H, G = Seq::kGates * H, t = q.step(s);
  const int64_t lo = int64_t(c.cta) * p.units;
  const int64_t uc = p.units < H - lo ? p.units : H - lo;
  const S* h_prev = q.hbuf + (s % 2) * p.rows * H;
  S* h_next = q.hbuf + ((s + 1) % 2) * p.rows * H;
  product<S>(c, p, h_prev, H);
  const A* acc = accumulators<S>(c, p);
  // The product into the step's pre-activations: float32 ones where the layer keeps them (half types on
  // CUDA), else the storage-typed projection (rounded once, as the per-step path's addmm does).
  S* g = q.gates_at(s, G);
  A* pre = q.pre_at(s, G);
  for (int64_t i = c.tid; i < B * p.n; i += c.nthreads) {
    const int64_t b = i / p.n, n = i % p.n, gate = n / p.units, u = n % p.units;
    if (u >= uc) continue;
    const int64_t idx = b * G + gate * H + lo + u;
    const A v = acc[b * p.npad + n];
    if constexpr (Seq::kSeparateRec) {
      if (pre != nullptr) {
        q.rec_acc[idx] = v;
      } else {
        q.rec[idx] = from_acc<S>(v);
      }
    } else if (pre != nullptr) {
      pre[idx] += v;
    } else {
      g[idx] = from_acc<S>(to_acc(g[idx]) + v);
    }
  }
  cta_sync();
  run_rows<typename Seq::Fwd, S>(c, lo, lo + uc, B, H, Seq::template forward<S>(q, s, h_prev, h_next));
  cta_sync();
  S* o = q.out + t * B * H;
  for (int64_t i = c.tid; i < B * uc; i += c.nthreads) {
    const int64_t idx = (i / uc) * H + lo + i % uc;
    o[idx] = h_next[idx];
  }
}

// Processing step s of the backward (s from T - 1 down to 0).
template <class Seq, typename S>
FASTLSTM_HOST_DEVICE void backward_step(const Cta& c, const PersistentPlan& p, const SeqBackwardArgs<S>& q,
                                        int64_t s) {
  using A = math::acc_of<S>;
  const int64_t B = q.B, H = q.H, G = Seq::kGates * H, t = q.step(s);
  const int64_t lo = int64_t(c.cta) * p.units;
  const int64_t uc = p.units < H - lo ? p.units : H - lo;
  const bool last = s == q.T - 1;
  S* dg = q.dgbuf + (s % 2) * p.rows * G;
  if (!last) product<S>(c, p, q.dgbuf + ((s + 1) % 2) * p.rows * G, G);
  const A* acc = accumulators<S>(c, p);
  const S* go = q.gout + t * B * H;
  for (int64_t i = c.tid; i < B * uc; i += c.nthreads) {
    const int64_t b = i / uc, u = i % uc, idx = b * H + lo + u;
    A v = to_acc(go[idx]);
    if (last) {
      v += to_acc(q.grad_h_n[idx]);
    } else {
      v += acc[b * p.npad + u];
      if constexpr (Seq::kDirectDh) v += to_acc(q.direct[idx]);
    }
    q.dh[idx] = from_acc<S>(v);
  }
  cta_sync();
  const A* dc_next = Seq::kHasC ? (last ? q.grad_c_n : q.dcbuf + ((s + 1) % 2) * B * H) : nullptr;
  A* dc_prev = Seq::kHasC ? q.dcbuf + (s % 2) * B * H : nullptr;
  run_rows<typename Seq::Bwd, S>(c, lo, lo + uc, B, H, Seq::template backward<S>(q, s, dc_next, dg, dc_prev));
  cta_sync();
  S* dst = (Seq::kSeparateRec ? q.dgh : q.dgx) + t * B * G;
  const int64_t per_row = Seq::kGates * uc;
  for (int64_t i = c.tid; i < B * per_row; i += c.nthreads) {
    const int64_t b = i / per_row, r = i % per_row, idx = b * G + (r / uc) * H + lo + r % uc;
    dst[idx] = dg[idx];
  }
}

// After step 0 (and its grid barrier): grad_h0 = dgates_0 W_hh (+ the direct part), grad_c0.
template <class Seq, typename S>
FASTLSTM_HOST_DEVICE void backward_finish(const Cta& c, const PersistentPlan& p, const SeqBackwardArgs<S>& q) {
  using A = math::acc_of<S>;
  const int64_t B = q.B, H = q.H, G = Seq::kGates * H;
  const int64_t lo = int64_t(c.cta) * p.units;
  const int64_t uc = p.units < H - lo ? p.units : H - lo;
  product<S>(c, p, q.dgbuf, G);
  const A* acc = accumulators<S>(c, p);
  for (int64_t i = c.tid; i < B * uc; i += c.nthreads) {
    const int64_t b = i / uc, u = i % uc, idx = b * H + lo + u;
    A v = acc[b * p.npad + u];
    if constexpr (Seq::kDirectDh) v += to_acc(q.direct[idx]);
    q.grad_h0[idx] = from_acc<S>(v);
    if constexpr (Seq::kHasC) q.grad_c0[idx] = q.dcbuf[idx];
  }
}

#if defined(__CUDACC__)
template <class Seq, typename S>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    forward_kernel(const SeqForwardArgs<S> q, const PersistentPlan p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Cta c{int(threadIdx.x), int(blockDim.x), int(blockIdx.x), smem};
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  load_weights<S>(c, p, q.w_hh, q.H, false);
  __syncthreads();
  for (int64_t s = q.s0; s < q.s1; ++s) {
    forward_step<Seq, S>(c, p, q, s);
    grid.sync();  // h_t of every block, in global memory, before any block's next product
  }
}

template <class Seq, typename S>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    backward_kernel(const SeqBackwardArgs<S> q, const PersistentPlan p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Cta c{int(threadIdx.x), int(blockDim.x), int(blockIdx.x), smem};
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  load_weights<S>(c, p, q.w_hh, q.H, true);
  __syncthreads();
  for (int64_t s = q.T - 1; s >= 0; --s) {
    backward_step<Seq, S>(c, p, q, s);
    grid.sync();
  }
  backward_finish<Seq, S>(c, p, q);
}
#endif

// The kernels' work on the host, block by block between the grid barriers (the CPU harness): each block's
// shared memory lives for the whole launch, as on the GPU.
class HostGrid {
 public:
  explicit HostGrid(const PersistentPlan& p)
      : smem_(size_t(p.ctas), std::vector<double>(p.smem / sizeof(double) + 1)) {}
  Cta operator[](int k) { return Cta{0, 1, k, reinterpret_cast<unsigned char*>(smem_[size_t(k)].data())}; }

 private:
  std::vector<std::vector<double>> smem_;
};

template <class Seq, typename S>
void emulate_forward(const SeqForwardArgs<S>& q, const PersistentPlan& p) {
  HostGrid grid(p);
  for (int k = 0; k < p.ctas; ++k) load_weights<S>(grid[k], p, q.w_hh, q.H, false);
  for (int64_t s = q.s0; s < q.s1; ++s) {
    for (int k = 0; k < p.ctas; ++k) forward_step<Seq, S>(grid[k], p, q, s);
  }
}

template <class Seq, typename S>
void emulate_backward(const SeqBackwardArgs<S>& q, const PersistentPlan& p) {
  HostGrid grid(p);
  for (int k = 0; k < p.ctas; ++k) load_weights<S>(grid[k], p, q.w_hh, q.H, true);
  for (int64_t s = q.T - 1; s >= 0; --s) {
    for (int k = 0; k < p.ctas; ++k) backward_step<Seq, S>(grid[k], p, q, s);
  }
  for (int k = 0; k < p.ctas; ++k) backward_finish<Seq, S>(grid[k], p, q);
}

}  // namespace persist
}  // namespace gpu
}  // namespace fastlstm
