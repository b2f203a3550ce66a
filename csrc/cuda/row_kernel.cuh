// fastlstm's one CUDA kernel pattern: a block runs a cell's pass (csrc/cells/*.h) on one batch row, or on a
// slice of it for passes without row sums, through the BlockExec executor below; one thread moves VEC
// consecutive units as a Pack (16-byte vector loads and stores where the shapes and pointers allow).
// Framework-free (CUDA headers and ours), so nvcc compiles it without torch, and the CPU harness
// (tests/harness/harness.cpp, g++ -DFASTLSTM_HARNESS) runs the very same executor and pass code on the
// host, thread by thread, with the same launch plan: the GPU path's indexing, vector widths, alignment
// rules, reductions and storage conversions are tested where no GPU exists.
#pragma once

#if !defined(__CUDACC__) && !defined(FASTLSTM_HARNESS)
#error "row_kernel.cuh is for nvcc and the CPU harness; host code includes launch.h"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "../cells/all.h"
#include "launch.h"

#if defined(__CUDACC__)
#define FASTLSTM_UNROLL _Pragma("unroll")
#else
#define FASTLSTM_UNROLL _Pragma("GCC unroll 8")
#endif

namespace fastlstm {
namespace gpu {

// Storage <-> arithmetic conversions. Explicit functions, because torch's nvcc flags disable the implicit
// __half/__nv_bfloat16 conversions (-D__CUDA_NO_HALF_CONVERSIONS__ ...). Round to nearest even, as
// c10::Half/c10::BFloat16 (and so the CPU kernels) do.
FASTLSTM_HOST_DEVICE inline float to_acc(float x) { return x; }
FASTLSTM_HOST_DEVICE inline double to_acc(double x) { return x; }
FASTLSTM_HOST_DEVICE inline float to_acc(__half x) { return __half2float(x); }
FASTLSTM_HOST_DEVICE inline float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename scalar_t>
FASTLSTM_HOST_DEVICE inline scalar_t from_acc(math::acc_of<scalar_t> x) {
  return x;
}
template <>
FASTLSTM_HOST_DEVICE inline __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
FASTLSTM_HOST_DEVICE inline __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// N consecutive elements moved as whole 16-, 8-, 4- or 2-byte words: `w` is the same bytes as `v`, and
// moving the words (not the elements, not the struct) is what makes nvcc emit vector loads and stores.
// Alignment is capped at 16 bytes (the widest CUDA access): 8 floats of cell state next to 8 halves of
// gates are two 16-byte words.
template <typename T>
constexpr uintptr_t pack_alignment(int n) {
  return sizeof(T) * n > 16 ? 16 : sizeof(T) * n;
}

template <int Bytes>
struct RawWord;
template <>
struct RawWord<16> {
  using type = uint4;
};
template <>
struct RawWord<8> {
  using type = uint2;
};
template <>
struct RawWord<4> {
  using type = unsigned int;
};
template <>
struct RawWord<2> {
  using type = unsigned short;
};

template <typename T, int N>
struct alignas(pack_alignment<T>(N)) Pack {
  using Word = typename RawWord<int(pack_alignment<T>(N))>::type;
  static constexpr int kWords = int(sizeof(T) * N / sizeof(Word));
  static_assert(pack_alignment<T>(N) >= alignof(T), "a pack is at least as aligned as its elements");
  static_assert(sizeof(Word) * kWords == sizeof(T) * N, "a pack is a whole number of words");
  union {
    T v[N];
    Word w[kWords];
  };
};

template <int N, typename T>
FASTLSTM_HOST_DEVICE inline Pack<T, N> load(const T* p) {
  using W = typename Pack<T, N>::Word;
  Pack<T, N> x;
  FASTLSTM_UNROLL
  for (int k = 0; k < Pack<T, N>::kWords; ++k) x.w[k] = reinterpret_cast<const W*>(p)[k];
  return x;
}

template <int N, typename T>
FASTLSTM_HOST_DEVICE inline void store(T* p, const Pack<T, N>& x) {
  using W = typename Pack<T, N>::Word;
  W* q = reinterpret_cast<W*>(p);
  FASTLSTM_UNROLL
  for (int k = 0; k < Pack<T, N>::kWords; ++k) {
#if defined(__CUDA_ARCH__)
    // The intrinsic takes the whole word, which keeps the compiler from splitting the store per element
    // (it does when the pack was filled element by element). Same bits, same default cache policy.
    __stwb(q + k, x.w[k]);
#else
    q[k] = x.w[k];
#endif
  }
}

// The widest vector: 16 bytes of storage type.
template <typename scalar_t>
constexpr int max_vec() {
  return 16 / int(sizeof(scalar_t));
}

// A lane of VEC consecutive units of one thread, in A (math::Lanes), loaded and stored as one Pack.
template <typename S, int VEC>
struct PackLane {
  using A = math::acc_of<S>;
  using C = math::Lanes<A, VEC>;
  using Act = math::ScalarAct;
  template <typename T>
  FASTLSTM_HOST_DEVICE C load(const T* p) const {
    const Pack<T, VEC> x = gpu::load<VEC>(p);
    C r;
    FASTLSTM_UNROLL
    for (int k = 0; k < VEC; ++k) r.v[k] = to_acc(x.v[k]);
    return r;
  }
  template <typename T>
  FASTLSTM_HOST_DEVICE void store(T* p, const C& v) const {
    Pack<T, VEC> x;
    FASTLSTM_UNROLL
    for (int k = 0; k < VEC; ++k) x.v[k] = from_acc<T>(v.v[k]);
    gpu::store<VEC>(p, x);
  }
};

// The executor of csrc/cells/passes.h for one block: units [lo, hi) of a row are this block's; thread t
// owns units lo + t*VEC + k*threads*VEC. On the device `threads` is blockDim.x; on the host (the harness)
// the same loops run for every t in turn, which computes the same values: between two sums the threads of
// a pass touch only their own units.
template <typename S, int VEC>
struct BlockExec {
  using A = math::acc_of<S>;
  int64_t lo, hi;
  int threads;
  A* red;  // shared scratch for sums: one value per warp (device only)

  template <class F>
  FASTLSTM_HOST_DEVICE void for_units(int64_t n, const F& f) const {
    const int64_t end = n < hi ? n : hi;
    const int64_t step = int64_t(threads) * VEC;
#if defined(__CUDA_ARCH__)
    for (int64_t j = lo + int64_t(threadIdx.x) * VEC; j < end; j += step) f(j, PackLane<S, VEC>{});
#else
    for (int t = 0; t < threads; ++t) {
      for (int64_t j = lo + int64_t(t) * VEC; j < end; j += step) f(j, PackLane<S, VEC>{});
    }
#endif
  }

  // Sums are only used by row-reduce passes, whose block owns the whole row (lo = 0).
  template <class F>
  FASTLSTM_HOST_DEVICE A sum(int64_t n, const F& f) const {
    const int64_t step = int64_t(threads) * VEC;
#if defined(__CUDA_ARCH__)
    __syncthreads();  // what the block wrote before is visible to every thread
    A part = A(0);
    for (int64_t j = int64_t(threadIdx.x) * VEC; j < n; j += step) {
      const auto v = f(j, PackLane<S, VEC>{});
      FASTLSTM_UNROLL
      for (int k = 0; k < VEC; ++k) part += v.v[k];
    }
    for (int o = 16; o > 0; o >>= 1) part += __shfl_down_sync(0xffffffffu, part, o);
    const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
    if (lane == 0) red[warp] = part;
    __syncthreads();
    if (warp == 0) {
      A v = lane < int(blockDim.x) / 32 ? red[lane] : A(0);
      for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
      if (lane == 0) red[0] = v;
    }
    __syncthreads();
    const A total = red[0];
    __syncthreads();  // red is reused by the next sum
    return total;
#else
    A total = A(0);
    for (int t = 0; t < threads; ++t) {
      A part = A(0);
      for (int64_t j = int64_t(t) * VEC; j < n; j += step) {
        const auto v = f(j, PackLane<S, VEC>{});
        for (int k = 0; k < VEC; ++k) part += v.v[k];
      }
      total += part;
    }
    return total;
#endif
  }

  template <class F>
  FASTLSTM_HOST_DEVICE void once(const F& f) const {
#if defined(__CUDA_ARCH__)
    if (threadIdx.x == 0) f();
#else
    f();
#endif
  }
};

// Threads per block: map passes use small blocks (the per-step problems are small and latency-bound, so
// they spread over more SMs); row-reduce passes use up to kRowThreads for one row.
constexpr int kMapThreads = 128;
constexpr int kRowThreads = 256;
// Below this many blocks a step cannot fill an H100/A100 (132/108 SMs); a map pass then prefers more,
// narrower threads over wider vectors.
constexpr int64_t kMinBlocks = 128;

// How one launch covers `rows` rows of H units: blocks (rows, slices) of `threads`, VEC = `vec` units per
// thread, `slice` units per block (0: the whole row). vec is the widest power of two <= max_vec_allowed that
// divides H and for which every pointer of the pass is aligned for the widest Pack it may move (16 bytes at
// most); for map passes it is then halved while that leaves fewer than min_blocks blocks.
struct RowPlan {
  int vec;
  int threads;
  int64_t slice;
  int64_t slices;
};

template <class Pass, typename S>
inline RowPlan plan_rows(const typename Pass::template Args<S>& a, int64_t rows, int64_t H, int max_vec_allowed,
                         int64_t min_blocks) {
  using A = math::acc_of<S>;
  auto fits = [&](int v) {
    if (H % v != 0) return false;
    const uintptr_t need = sizeof(A) * v < 16 ? sizeof(A) * v : 16;
    for (const void* p : a.ptrs()) {
      if (p != nullptr && reinterpret_cast<uintptr_t>(p) % need != 0) return false;
    }
    return true;
  };
  int vec = max_vec<S>() < max_vec_allowed ? max_vec<S>() : max_vec_allowed;
  while (vec > 1 && !fits(vec)) vec /= 2;
  if (Pass::kRowReduce) {
    const int threads = 4 * H / vec >= kRowThreads ? kRowThreads : (4 * H / vec > 64 ? 128 : 64);
    return RowPlan{vec, threads, 0, 1};
  }
  auto slices_for = [&](int v) { return (H / v + kMapThreads - 1) / kMapThreads; };
  while (vec > 1 && rows * slices_for(vec) < min_blocks) vec /= 2;
  return RowPlan{vec, kMapThreads, int64_t(kMapThreads) * vec, slices_for(vec)};
}

// Calls f(std::integral_constant<int, V>{}) for the plan's vec, instantiating only widths the storage type
// can use.
template <typename S, typename F>
inline void dispatch_vec(int vec, F&& f) {
  if constexpr (max_vec<S>() >= 8) {
    if (vec == 8) return f(std::integral_constant<int, 8>{});
  }
  if constexpr (max_vec<S>() >= 4) {
    if (vec == 4) return f(std::integral_constant<int, 4>{});
  }
  if (vec == 2) return f(std::integral_constant<int, 2>{});
  return f(std::integral_constant<int, 1>{});
}

// Block (b, y) of a plan: the executor and the pass, as the kernel runs it (the harness calls this too).
template <class Pass, typename S, int VEC>
FASTLSTM_HOST_DEVICE inline void run_block(const typename Pass::template Args<S>& a, int64_t H, int64_t slice,
                                           int64_t b, int64_t y, int threads, math::acc_of<S>* red) {
  const int64_t lo = slice > 0 ? y * slice : 0;
  const int64_t hi = slice > 0 ? lo + slice : std::numeric_limits<int64_t>::max();
  const BlockExec<S, VEC> e{lo, hi, threads, red};
  Pass::template row<S>(e, a, b, H);
}

}  // namespace gpu
}  // namespace fastlstm
