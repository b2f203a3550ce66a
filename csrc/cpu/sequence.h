// The CPU's whole-sequence path (the layer driver's Dev::Sequence hook, csrc/layer.h): one parallel region
// runs a layer's whole step loop, forward or backward, for the cells with a whole-sequence description
// (csrc/cells/sequence.h: LSTM, GRU, the diagonal peephole LSTM), as the persistent CUDA kernel does on a GPU.
//
// Each thread owns a slice of the hidden units with all their gates (a block, SeqPlan in rows.h) and keeps
// its slice of W_hh, packed once per op call into a float32 panel (bfloat16 K-pairs for AVX512-BF16's dot
// product on an AMD CPU that has it: SeqPlan::pairs), in its own cache for the whole sequence.
// Per step it computes its part of h_{t-1} W_hh^T (backward: dgates_{t+1} W_hh) in float32 registers
// (rows_impl.h), adds it into the step's pre-activations, runs the cell's own pass (the same code as the
// per-step path) on its units, and waits at one barrier. The layer-norm LSTM's pass needs sums over whole
// rows (cells::SeqTraits::rows): its steps run in two phases, the product by blocks of units into the pass's
// separate operand, a barrier, then the pass on each thread's share of the batch rows, a barrier. Per step that replaces a GEMM call, a pass launch
// and the driver's slicing with the arithmetic and one barrier (measured on 2 threads, B=16, H=64, T=1000,
// inference: 13.2 ms per call on the per-step path, 8.7 ms here).
//
// Taken for float32, bfloat16 and float16 layers without a projection (a second barrier per step), forward
// also with a PackedSequence's sorted lengths (each step on its active rows), where it measured faster
// than the per-step path (seq_auto: kSeqPanelBytes, kSeqWidePanelBytes);
// FASTLSTM_CPU_SEQUENCE=0 turns it off, =1 takes it wherever it can run (tests), read per call.
// The threads are ATen's OpenMP team: every chunk of an OpenMP parallel_for runs on its own thread at once,
// so a barrier between them cannot deadlock; without OpenMP, or inside a parallel region (parallel_for runs
// the whole range on the calling thread), the layer runs as one block.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#include "../layer.h"
#include "rows.h"

namespace fastlstm {
namespace cpu {

template <class Seq, typename S>
struct SeqKernels {
  SeqForwardFn<Seq, S> forward;
  SeqBackwardFn<Seq, S> backward;
  // A row-pass cell's (cells::SeqTraits::rows) passes on batch rows, the per-step path's row kernels.
  RowsFn<typename Seq::Fwd, S> forward_rows;
  RowsFn<typename Seq::Bwd, S> backward_rows;
};
// This CPU's instruction set's kernels (device.cpp picks them as it picks the row kernels).
template <class Seq, typename S>
SeqKernels<Seq, S> seq_kernels();
// Whether the instruction set has SIMD kernels (AVX2, AVX-512): the path is never taken automatically on
// ATen's scalar fallback.
bool seq_simd();
// Whether this is a CPU where the path measured faster than the per-step one up to kSeqAmdPanelBytes (AMD's:
// device.cpp reads CPUID).
bool seq_large_panels();
// Whether oneDNN's GEMMs in `dtype` run on this CPU's own half-type dot products (AMX, or bfloat16's
// AVX512-BF16 on an AMD CPU; device.cpp), so the per-step path's GEMMs are not float32 ones.
bool seq_native_half_gemms(at::ScalarType dtype);
// Whether the AVX-512 kernels run bfloat16 panels as K-pairs on AVX512-BF16's dot product (SeqPlan::pairs;
// cpuinfo's avx512_bf16, on an AMD CPU, where it was measured). FASTLSTM_CPU_BF16_PAIRS=0 keeps float32 panels
// (tests, paired measurements).
bool seq_bf16_pairs();

// A barrier for the blocks of one layer call: each thread arrives once per step for all the blocks it runs.
// Spins (the wait is well under a microsecond when every thread has a core), then yields, so a thread whose
// partner was descheduled on a busy machine gives its core back.
class SpinBarrier {
 public:
  explicit SpinBarrier(int64_t total) : total_(total) {}
  void arrive_and_wait(int64_t n) {
    const int64_t gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(n, std::memory_order_acq_rel) + n == total_) {
      count_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < 2000) {
#if defined(__x86_64__) || defined(_M_X64)
        __builtin_ia32_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  std::atomic<int64_t> count_{0};
  std::atomic<int64_t> gen_{0};
  const int64_t total_;
};

// f(block, i) for phases i in [0, phases), every block of a phase before any of the next.
template <class F>
void run_phases(int64_t blocks, int64_t phases, const F& f) {
  if (blocks == 1) {
    for (int64_t i = 0; i < phases; ++i) f(0, i);
    return;
  }
  SpinBarrier barrier(blocks);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t i = 0; i < phases; ++i) {
      for (int64_t k = b0; k < b1; ++k) f(k, i);
      if (i + 1 < phases) barrier.arrive_and_wait(b1 - b0);
    }
  });
}

// Where the path measured faster than the per-step one (2 threads, float32, bfloat16 and float16, T = 50-200):
// blocks' panels up to 128 KiB (H <= 128 on 2 threads: inference 1.2-1.45x, training 1.0-1.2x, B = 1 to 256);
// at H = 256 (512 KiB) MKL's packed per-step GEMMs, which block for the caches themselves, win inference by
// ~10% and tie training. The bound is on the panel so that fewer threads (larger panels) fall back alike.
constexpr int64_t kSeqPanelBytes = int64_t(256) << 10;
constexpr int64_t kSeqMaxBatch = 256;
// Up to twice that (H = 256 on 2 threads) at small batches, where per-step GEMMs of a few rows cannot block
// for the caches either (paired runs, this path over the per-step one, T = 50-200): backward won at every
// B <= 8 (1.07-1.3x of a training call, B = 16 1.06x, B = 64 0.96x); forward only from B = 4 (1.0-1.09x;
// 0.78-0.85x at B <= 2, where the per-step path's GEMV kernels are cheapest).
constexpr int64_t kSeqWidePanelBytes = int64_t(512) << 10;
constexpr int64_t kSeqWideForward[2] = {4, 8};  // batch range
constexpr int64_t kSeqWideBackwardBatch = 16;
// Fewer steps than this and the per-call packing is not won back (streaming, one step per call, ran 1.6x
// slower on the path at H = 64, 1.7x at H = 128; at B = 4 it wins from 8 steps). At batch 1, where the
// per-step path's GEMV kernels are cheapest, it takes T >= H / 2 (measured break-even: T = 64 at H = 128,
// below T = 32 at H = 64).
constexpr int64_t kSeqMinSteps = 8;
// On an AMD EPYC (Zen 4, 1 MiB L2 per core, 2 threads; seq_large_panels), where the per-step path's GEMMs
// (oneDNN's there, MKL's slower still) block less well, the path won at every shape measured up to 2 MiB
// panels (H = 512), paired runs in separate processes, per-step path / this one, float32: inference T=50
// H=256 B=16 1.56x, B=32 1.25x, B=64 1.15x, B=128 1.03x; T=100 B=32 H=512 1.09x; training T=50 H=256 B=16
// 1.15x, B=64 1.06x. Batch 4 and up (the small-batch rule above was measured on Intel only).
constexpr int64_t kSeqAmdPanelBytes = int64_t(2) << 20;
constexpr int64_t kSeqAmdMinBatch = 4;
// Not so where the per-step GEMMs are oneDNN's bfloat16 ones on AVX512-BF16 (seq_native_half_gemms), while this
// path keeps float32 panels: same EPYC, 2 threads, bfloat16, this path / per-step (ms, two runs each),
// inference T=50 H=256 B=16 4.4-4.7 / 5.3-6.0, T=100 B=8 H=256 L=2 bi 22.1-23.7 / 24.9-25.1, but B=32 8.8-12.5 /
// 10.0-11.6, B=64 16.7-24.0 / 14.9-18.9, T=100 B=32 H=512 71-85 / 50-62; training (forward and backward)
// B=16 20.7-20.8 / 20.1-20.3 (backward there by the wide-panel rule), B=32 38.4-39.0 / 35.4-35.6, B=64
// 52.7-62.9 / 49.0-61.9. There, with float32 panels, this rule takes forward only, B <= 16, panels <=
// kSeqWidePanelBytes. bfloat16's K-pair panels (SeqPlan::pairs, AVX512-BF16) won everywhere instead, so they
// take the float32 rule: same EPYC, 2 threads, medians of 6 interleaved calls, K-pair panels / per-step (ms),
// inference T=50 H=256 B=16 3.19 / 5.67, B=32 6.03 / 8.21, B=64 10.86 / 12.13, B=128 19.26 / 20.19, T=100 B=32
// H=512 27.6 / 34.7, T=100 B=8 H=256 L=2 bi 12.1 / 18.1; training B=16 7.7 / 12.8, B=32 13.9 / 18.0, B=64
// 27.5 / 35.3, T=100 B=32 H=512 90 / 103, L=2 bi 38.4 / 75.2.
constexpr int64_t kSeqAmdNativeMaxBatch = 16;

// FASTLSTM_CPU_SEQUENCE: 0 off, 1 wherever it can run, unset (or anything else) where it measured faster.
inline int seq_mode() {
  const char* v = std::getenv("FASTLSTM_CPU_SEQUENCE");
  if (v != nullptr && std::strcmp(v, "0") == 0) return 0;
  if (v != nullptr && std::strcmp(v, "1") == 0) return 1;
  return 2;
}

// The plan for B rows of H units on `threads` threads; blocks == 0: the layer takes the per-step path.
inline SeqPlan seq_plan(int64_t B, int64_t H, int64_t gates, bool backward, int64_t threads) {
  SeqPlan p;
  threads = std::max<int64_t>(1, std::min(threads, (H + 15) / 16));
  p.units = (H + threads - 1) / threads;
  p.upad = (p.units + 15) / 16 * 16;
  if (p.units > 16) p.units = p.upad;  // whole SIMD registers per block where there are enough units
  p.blocks = (H + p.units - 1) / p.units;
  p.k = backward ? gates * H : H;
  p.n = backward ? p.upad : gates * p.upad;
  p.stride = p.k * p.n;
  (void)B;
  return p;
}

template <class Cell>
class CpuSequence {
  using Seq = typename Cell::Seq;

 public:
  CpuSequence(const LayerArgs& a, const Dims& d, const typename Cell::Params& params, bool backward)
      : a_(a), d_(d), backward_(backward) {
    if constexpr (!std::is_void_v<Seq>) {
      const auto dt = a.input.scalar_type();
      if (!(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf)) return;
      if (defined(a.w_hr) || d.T == 0 || d.B == 0 || !Cell::seq_ok(params)) return;
      if (defined(a.lengths)) {
        // Sorted lengths (a PackedSequence's) run forward on the active rows (rows_impl.h); unsorted ones,
        // backward, and the row-pass cells, take the per-step path's masks and prefix.
        if (backward || cells::SeqTraits<Seq>::rows) return;
        active_ = prefix_active_rows(a.lengths, d.T);
        if (active_.empty()) return;
      }
      const int mode = seq_mode();
      if (mode == 0) return;
      int64_t threads = 1;
#if AT_PARALLEL_OPENMP
      if (!at::in_parallel_region()) threads = at::get_num_threads();
#endif
      SeqPlan p = seq_plan(d.B, d.H, Seq::kGates, backward, threads);
      const char* pairs_env = std::getenv("FASTLSTM_CPU_BF16_PAIRS");
      if (dt == at::kBFloat16 && a.w_hh.scalar_type() == at::kBFloat16 && p.k % 2 == 0 && seq_bf16_pairs() &&
          !(pairs_env != nullptr && std::strcmp(pairs_env, "0") == 0)) {
        p.pairs = true;
        p.stride = p.k * p.n / 2;
      }
      if (mode == 2 && !seq_auto(d, p, backward, seq_native_half_gemms(dt) && !p.pairs)) return;
      plan_ = p;
    }
  }
  explicit operator bool() const { return plan_.blocks > 0; }
  // Inference projects 2^18 gate elements (1 MiB in float32) at a time, so that a step's projection is still
  // in L2 when its step reads it (the per-step path's 8 MiB chunks are not: their loads missed, ~16% of the
  // step at B=16, H=64); at small batches that is still a GEMM of hundreds of rows.
  int64_t chunk_elems() const { return int64_t(1) << 18; }
  bool adds_bias() const { return true; }

  void forward(const SeqForwardCall<Cell>& c) {
    if constexpr (!std::is_void_v<Seq>) {
      const bool pack = panel_ == nullptr;
      prepare();
      const auto opts = a_.input.options();
      if (Seq::kSeparateRec && !rec_.defined()) {
        rec_ = at::empty({d_.B, d_.G}, c.pre.defined() ? opts.dtype(c.pre.scalar_type()) : opts);
      }
      const Tensor tiles = at::empty({plan_.blocks, d_.B, plan_.n}, opts.dtype(at::kFloat));
      dispatch([&](auto tag) {
        using S = typename decltype(tag)::type;
        const cells::SeqForwardArgs<S> q = seq_forward_args<Cell, S>(c, d_, a_.reverse, w_hh_, Tensor(), rec_);
        const auto fn = seq_kernels<Seq, S>().forward;
        if (c.bias.defined() && !bias_.defined()) bias_ = c.bias.to(at::kFloat).contiguous();
        SeqForwardExtra<S> x{};
        x.h0 = ptr<const S>(c.h0);
        x.bias = bias_.defined() ? ptr<const float>(bias_) : nullptr;
        x.active = active_.empty() ? nullptr : active_.data();
        x.h_fin = c.h_fin.defined() ? ptr<S>(c.h_fin) : nullptr;
        TORCH_CHECK(x.active == nullptr || x.h_fin != nullptr, "fastlstm: packed whole-sequence call without h_fin");
        const float* w = panel_;
        float* tile0 = ptr<float>(tiles);
        const SeqPlan p = plan_;
        const int64_t tile_elems = d_.B * p.n;
        if constexpr (cells::SeqTraits<Seq>::rows) {
          // Two phases a step: the product into q.rec by blocks of units, then the pass on whole rows.
          const auto rows_fn = seq_kernels<Seq, S>().forward_rows;
          run_phases(p.blocks, 2 * (c.s1 - c.s0), [&](int64_t k, int64_t i) {
            const int64_t s = c.s0 + i / 2;
            if (i % 2 == 0) {
              if (i == 0 && pack) pack_block(k);
              return fn(q, x, w, tile0 + k * tile_elems, p, k, s);
            }
            const int64_t r0 = k * d_.B / p.blocks, r1 = (k + 1) * d_.B / p.blocks;
            const S* h_prev = s == 0 ? x.h0 : q.out + q.step(s - 1) * d_.B * d_.H;
            if (r1 > r0) rows_fn(Seq::template forward<S>(q, s, h_prev, q.out + q.step(s) * d_.B * d_.H), r0, r1, d_.H);
          });
          return;
        }
        run_phases(p.blocks, c.s1 - c.s0, [&](int64_t k, int64_t i) {
          if (i == 0 && pack) pack_block(k);
          fn(q, x, w, tile0 + k * tile_elems, p, k, c.s0 + i);
        });
        const int64_t T = d_.T;
        if (x.active != nullptr && a_.reverse && c.s1 == T && T >= 2) {
          // The last h0 rows put into an output (step T-2's, for step T-1), now read: zeroed (see rows_impl.h).
          const int64_t t2 = q.step(T - 2), r0 = x.active[t2], r1 = x.active[q.step(T - 1)];
          if (r1 > r0) c.output[t2].narrow(0, r0, r1 - r0).zero_();
        }
      });
    }
  }

  void backward(const SeqBackwardCall<Cell>& c) {
    if constexpr (!std::is_void_v<Seq>) {
      prepare();
      const int64_t B = d_.B, H = d_.H;
      const auto opts = a_.input.options();
      const Tensor dh = at::empty({B, H}, opts);
      const Tensor direct = Seq::kDirectDh ? at::empty({B, H}, opts) : Tensor();
      const Tensor dcbuf = Seq::kHasC ? at::empty({2, B, H}, opts.dtype(acc_type(a_.input.scalar_type()))) : Tensor();
      const Tensor tiles = at::empty({plan_.blocks, B, plan_.n}, opts.dtype(at::kFloat));
      dispatch([&](auto tag) {
        using S = typename decltype(tag)::type;
        const cells::SeqBackwardArgs<S> q =
            seq_backward_args<Cell, S>(c, d_, a_.reverse, w_hh_, Tensor(), dh, direct, dcbuf);
        const auto fn = seq_kernels<Seq, S>().backward;
        const float* w = panel_;
        float* tile0 = ptr<float>(tiles);
        const SeqPlan p = plan_;
        const int64_t T = d_.T, tile_elems = B * p.n;
        if constexpr (cells::SeqTraits<Seq>::rows) {
          // Two phases a step (T-1 down to 0): dh by blocks of units, then the pass on whole rows; the last
          // phase (i = 2T) forms grad_h0 and grad_c0.
          const auto rows_fn = seq_kernels<Seq, S>().backward_rows;
          S* dg_all = Seq::kSeparateRec ? q.dgh : q.dgx;
          run_phases(p.blocks, 2 * T + 1, [&](int64_t k, int64_t i) {
            const int64_t s = T - 1 - i / 2;
            if (i % 2 == 0) {
              if (i == 0) pack_block(k);
              return fn(q, w, tile0 + k * tile_elems, p, k, s);
            }
            const int64_t r0 = k * B / p.blocks, r1 = (k + 1) * B / p.blocks;
            if (r1 <= r0) return;
            const auto* dc_next = s == T - 1 ? q.grad_c_n : q.dcbuf + ((s + 1) % 2) * B * H;
            auto* dc_prev = q.dcbuf + (s % 2) * B * H;
            rows_fn(Seq::template backward<S>(q, s, dc_next, dg_all + q.step(s) * B * d_.G, dc_prev), r0, r1, H);
          });
          return;
        }
        // Phase i runs step T-1-i; the last phase (i = T) forms grad_h0 and grad_c0.
        run_phases(p.blocks, T + 1, [&](int64_t k, int64_t i) {
          if (i == 0) pack_block(k);
          fn(q, w, tile0 + k * tile_elems, p, k, T - 1 - i);
        });
      });
    }
  }

 private:
  // Where the path beats the per-step one (kSeqPanelBytes, kSeqWidePanelBytes), with the SIMD kernels; the
  // bounds are in float32 panel bytes, for K-pair panels too (measured against them; those are half the size).
  // native_half: the layer's dtype has native per-step GEMMs (seq_native_half_gemms) and its panels are
  // float32 ones.
  static bool seq_auto(const Dims& d, const SeqPlan& p, bool backward, bool native_half) {
    const int64_t panel = p.k * p.n * int64_t(sizeof(float));
    const bool wide = panel <= kSeqWidePanelBytes &&
        (backward ? d.B <= kSeqWideBackwardBatch : d.B >= kSeqWideForward[0] && d.B <= kSeqWideForward[1]);
    const bool large = panel <= kSeqAmdPanelBytes && d.B >= kSeqAmdMinBatch && seq_large_panels() &&
        (!native_half || (!backward && d.B <= kSeqAmdNativeMaxBatch && panel <= kSeqWidePanelBytes));
    return seq_simd() && (panel <= kSeqPanelBytes || wide || large) && d.B <= kSeqMaxBatch && d.T >= kSeqMinSteps &&
           (d.B > 1 || 2 * d.T >= d.H);
  }

  template <class F>
  void dispatch(const F& f) const {
    switch (a_.input.scalar_type()) {
      case at::kFloat:
        return f(TypeTag<float>{});
      case at::kBFloat16:
        return f(TypeTag<c10::BFloat16>{});
      default:
        return f(TypeTag<c10::Half>{});
    }
  }

  // W_hh [gates * H, H] into the blocks' panels [blocks, k, n] (SeqPlan), float32, zero where padded; once
  // per op call. prepare() on the calling thread (the float32 weight, the buffer), then each block packs its
  // own panel on the thread that then uses it, at the start of the first parallel region: no barrier is
  // needed (a block reads only its own panel) and the panel starts in that thread's cache. Per call this is
  // the path's fixed cost (one transposing pass over W_hh), which short layers do not win back
  // (kSeqMinSteps).
  void prepare() {
    if (panel_ != nullptr) return;
    if (!plan_.pairs) w_float_ = a_.w_hh.to(at::kFloat).contiguous();
    panel_ = panel_storage(plan_.blocks * plan_.stride);
  }
  void pack_block(int64_t blk) const {
    const int64_t n = plan_.n;
    if (plan_.pairs) {
      // bfloat16 K-pairs [k / 2, n, 2] (SeqPlan::pairs), straight from the bfloat16 W_hh
      uint16_t* pb = reinterpret_cast<uint16_t*>(const_cast<float*>(panel_) + blk * plan_.stride);
      std::fill(pb, pb + plan_.k * n, uint16_t(0));
      pack_into(ptr<const uint16_t>(w_hh_), blk,
                [&](int64_t kk, int64_t col, uint16_t v) { pb[(kk / 2) * n * 2 + col * 2 + (kk & 1)] = v; });
    } else {
      float* pb = const_cast<float*>(panel_) + blk * plan_.stride;
      std::fill(pb, pb + plan_.k * n, 0.0f);
      pack_into(ptr<const float>(w_float_), blk, [&](int64_t kk, int64_t col, float v) { pb[kk * n + col] = v; });
    }
  }
  // put(kk, column, W element) for every element of block blk's panel (the padding stays as filled).
  template <typename W, class Put>
  void pack_into(const W* src, int64_t blk, const Put& put) const {
    const int64_t H = d_.H, g = Seq::kGates, up = plan_.upad, k = plan_.k;
    const int64_t lo = blk * plan_.units, uc = std::min(plan_.units, H - lo);
    if (!backward_) {
      // column gate * upad + u of row kk = W_hh[gate * H + lo + u, kk]: a transpose, in 16 x 16 tiles (one
      // element per cache line either way otherwise: ~0.5 ms for H = 256, a tenth of a T=100 call)
      constexpr int64_t kT = 16;
      for (int64_t gate = 0; gate < g; ++gate) {
        for (int64_t u0 = 0; u0 < uc; u0 += kT) {
          for (int64_t k0 = 0; k0 < H; k0 += kT) {
            const int64_t u1 = std::min(uc, u0 + kT), k1 = std::min(H, k0 + kT);
            for (int64_t u = u0; u < u1; ++u) {
              const W* row = src + (gate * H + lo + u) * H;
              for (int64_t kk = k0; kk < k1; ++kk) put(kk, gate * up + u, row[kk]);
            }
          }
        }
      }
    } else {
      // column u of row kk (kk < G) = W_hh[kk, lo + u]
      for (int64_t kk = 0; kk < k; ++kk) {
        for (int64_t u = 0; u < uc; ++u) put(kk, u, src[kk * H + lo + u]);
      }
    }
  }

  // The panels' memory: the calling thread's own buffer, kept between calls (and re-packed on every call, so
  // it can never hold stale weights). A fresh buffer per call cost more than the packing: its first touch
  // page-faults (~0.5 ms for the 1 MiB of H = 256 here). Panels above kSeqKeepBytes are allocated per call.
  static constexpr int64_t kSeqKeepBytes = int64_t(8) << 20;
  float* panel_storage(int64_t elems) {
    if (elems * int64_t(sizeof(float)) > kSeqKeepBytes) {
      owned_ = at::empty({elems}, at::TensorOptions().dtype(at::kFloat));
      return ptr<float>(owned_);
    }
    static thread_local std::vector<float> fwd, bwd;
    std::vector<float>& v = backward_ ? bwd : fwd;
    if (v.size() < size_t(elems)) v.resize(size_t(elems));
    return v.data();
  }

  template <typename T>
  struct TypeTag {
    using type = T;
  };

  const LayerArgs& a_;
  Dims d_;
  bool backward_;
  SeqPlan plan_;
  Tensor w_hh_ = a_.w_hh.contiguous();
  const float* panel_ = nullptr;  // [blocks, k, n]
  Tensor owned_, rec_, bias_, w_float_;
  std::vector<int64_t> active_;  // sorted lengths: the rows active at each step
};

}  // namespace cpu
}  // namespace fastlstm
