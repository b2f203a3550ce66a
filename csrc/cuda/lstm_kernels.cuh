// The per-element work of fastlstm's CUDA kernels, as host/device functions of the kernel's flat index.
//
// The __global__ wrappers in lstm_kernels.cu only compute the 64-bit flat index and call these; the CPU
// test harness (tests/harness/cuda_harness.cpp, built with g++ -DFASTLSTM_HARNESS) calls the very same
// functions for every index of a launch, with the same launch plan (`plan_pointwise`). So the indexing,
// vector widths, alignment rules and storage conversions of the GPU path are tested on machines without a
// GPU. Framework-free: CUDA headers (whose half/bfloat16 conversions also have host versions) and ours.
//
// Work split: one thread per VEC consecutive hidden units (b, j .. j+VEC-1), each computing all four gates
// of its units. Consecutive threads touch consecutive j in each of the four gate blocks of a row, so every
// load and store is coalesced; VEC > 1 turns them into 16-byte vector accesses.
#pragma once

#if !defined(__CUDACC__) && !defined(FASTLSTM_HARNESS)
#error "lstm_kernels.cuh is for nvcc and the CPU harness; host code includes lstm_kernels.h"
#endif

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "../lstm_math.h"
#include "lstm_kernels.h"

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
FASTLSTM_HOST_DEVICE inline scalar_t from_acc(acc_t<scalar_t> x) {
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

// Threads per block: the per-step problems are small ([B, H], latency-bound), so small blocks spread them
// over more SMs.
constexpr int kThreads = 128;
// Below this many blocks a step cannot fill an H100/A100 (132/108 SMs); the launcher then prefers more,
// narrower threads over wider vectors.
constexpr int64_t kMinBlocks = 128;

// How one pointwise launch covers [B, H]: `n` threads of VEC = `vec` units each, in `blocks` blocks of
// kThreads. vec is the widest power of two <= max_vec_allowed that divides H and for which every pointer
// is aligned for its Pack; then halved while that leaves fewer than min_blocks blocks.
struct PointwisePlan {
  int vec;
  int64_t n;
  int64_t blocks;
};

template <typename scalar_t>
inline PointwisePlan plan_pointwise(int64_t B, int64_t H, int max_vec_allowed, int64_t min_blocks,
                                    std::initializer_list<const void*> scalar_ptrs,
                                    std::initializer_list<const void*> acc_ptrs) {
  using acc = acc_t<scalar_t>;
  auto fits = [&](int v) {
    if (H % v != 0) return false;
    const uintptr_t sa = pack_alignment<scalar_t>(v), aa = pack_alignment<acc>(v);
    for (const void* p : scalar_ptrs) {
      if (reinterpret_cast<uintptr_t>(p) % sa != 0) return false;
    }
    for (const void* p : acc_ptrs) {
      if (reinterpret_cast<uintptr_t>(p) % aa != 0) return false;
    }
    return true;
  };
  int vec = max_vec<scalar_t>() < max_vec_allowed ? max_vec<scalar_t>() : max_vec_allowed;
  while (vec > 1 && !fits(vec)) vec /= 2;
  auto blocks_for = [&](int v) { return (B * (H / v) + kThreads - 1) / kThreads; };
  while (vec > 1 && blocks_for(vec) < min_blocks) vec /= 2;
  return PointwisePlan{vec, B * (H / vec), blocks_for(vec)};
}

// Calls f(std::integral_constant<int, V>{}) for the plan's vec, instantiating only widths that the storage
// type can use.
template <typename scalar_t, typename F>
inline void dispatch_vec(int vec, F&& f) {
  if constexpr (max_vec<scalar_t>() >= 8) {
    if (vec == 8) return f(std::integral_constant<int, 8>{});
  }
  if constexpr (max_vec<scalar_t>() >= 4) {
    if (vec == 4) return f(std::integral_constant<int, 4>{});
  }
  if (vec == 2) return f(std::integral_constant<int, 2>{});
  return f(std::integral_constant<int, 1>{});
}

// Forward step, thread `idx` of plan.n: hidden units j .. j+VEC-1 of batch row b. Shapes as in
// launch_forward_pointwise (lstm_kernels.h); H % VEC == 0.
template <typename scalar_t, int VEC>
FASTLSTM_HOST_DEVICE inline void forward_pointwise_element(int64_t idx, int64_t H, scalar_t* __restrict__ gates,
                                                           const acc_t<scalar_t>* __restrict__ c_prev,
                                                           acc_t<scalar_t>* __restrict__ c_out,
                                                           scalar_t* __restrict__ h_out) {
  using acc = acc_t<scalar_t>;
  const int64_t per_row = H / VEC;
  const int64_t b = idx / per_row;
  const int64_t j = (idx - b * per_row) * VEC;
  scalar_t* g = gates + b * 4 * H + j;
  const int64_t s = b * H + j;

  const Pack<scalar_t, VEC> xi = load<VEC>(g), xf = load<VEC>(g + H), xg = load<VEC>(g + 2 * H),
                            xo = load<VEC>(g + 3 * H);
  const Pack<acc, VEC> cp = load<VEC>(c_prev + s);
  Pack<scalar_t, VEC> gi, gf, gg, go, h;
  Pack<acc, VEC> c;
  FASTLSTM_UNROLL
  for (int k = 0; k < VEC; ++k) {
    acc i, f, gt, o, cn, hn;
    math::cell_forward<acc>(to_acc(xi.v[k]), to_acc(xf.v[k]), to_acc(xg.v[k]), to_acc(xo.v[k]), cp.v[k], i, f,
                            gt, o, cn, hn);
    gi.v[k] = from_acc<scalar_t>(i);
    gf.v[k] = from_acc<scalar_t>(f);
    gg.v[k] = from_acc<scalar_t>(gt);
    go.v[k] = from_acc<scalar_t>(o);
    c.v[k] = cn;
    h.v[k] = from_acc<scalar_t>(hn);
  }
  store<VEC>(g, gi);
  store<VEC>(g + H, gf);
  store<VEC>(g + 2 * H, gg);
  store<VEC>(g + 3 * H, go);
  store<VEC>(c_out + s, c);
  store<VEC>(h_out + s, h);
}

// Backward step, thread `idx` of plan.n: hidden units j .. j+VEC-1 of batch row b. Shapes as in
// launch_backward_pointwise (lstm_kernels.h); H % VEC == 0.
template <typename scalar_t, int VEC>
FASTLSTM_HOST_DEVICE inline void backward_pointwise_element(
    int64_t idx, int64_t H, const scalar_t* __restrict__ gates, const acc_t<scalar_t>* __restrict__ c,
    const acc_t<scalar_t>* __restrict__ c_prev, const scalar_t* __restrict__ dh,
    const acc_t<scalar_t>* __restrict__ dc_next, scalar_t* __restrict__ dgates,
    acc_t<scalar_t>* __restrict__ dc_prev) {
  using acc = acc_t<scalar_t>;
  const int64_t per_row = H / VEC;
  const int64_t b = idx / per_row;
  const int64_t j = (idx - b * per_row) * VEC;
  const scalar_t* g = gates + b * 4 * H + j;
  scalar_t* dg = dgates + b * 4 * H + j;
  const int64_t s = b * H + j;

  const Pack<scalar_t, VEC> gi = load<VEC>(g), gf = load<VEC>(g + H), gg = load<VEC>(g + 2 * H),
                            go = load<VEC>(g + 3 * H), d = load<VEC>(dh + s);
  const Pack<acc, VEC> cc = load<VEC>(c + s), cp = load<VEC>(c_prev + s), dcn = load<VEC>(dc_next + s);
  Pack<scalar_t, VEC> di, df, dgg, dout;
  Pack<acc, VEC> dcp;
  FASTLSTM_UNROLL
  for (int k = 0; k < VEC; ++k) {
    acc a, bf, cg, o, e;
    math::cell_backward<acc>(to_acc(gi.v[k]), to_acc(gf.v[k]), to_acc(gg.v[k]), to_acc(go.v[k]), cc.v[k],
                             cp.v[k], to_acc(d.v[k]), dcn.v[k], a, bf, cg, o, e);
    di.v[k] = from_acc<scalar_t>(a);
    df.v[k] = from_acc<scalar_t>(bf);
    dgg.v[k] = from_acc<scalar_t>(cg);
    dout.v[k] = from_acc<scalar_t>(o);
    dcp.v[k] = e;
  }
  store<VEC>(dg, di);
  store<VEC>(dg + H, df);
  store<VEC>(dg + 2 * H, dgg);
  store<VEC>(dg + 3 * H, dout);
  store<VEC>(dc_prev + s, dcp);
}

}  // namespace gpu
}  // namespace fastlstm
