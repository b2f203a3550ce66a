// The per-element work of the peephole-LSTM CUDA kernels, as host/device functions of the kernel's flat
// index: the same split as lstm_kernels.cuh (whose packs, conversions and launch plan they reuse), so that
// a CPU harness can run them over every index of a launch. One thread: hidden units j .. j+VEC-1 of batch
// row b; consecutive threads touch consecutive j in each gate block, so accesses coalesce. Shapes as in
// peephole_kernels.h; H % VEC == 0.
#pragma once

#if !defined(__CUDACC__) && !defined(FASTLSTM_HARNESS)
#error "peephole_kernels.cuh is for nvcc and the CPU harness; host code includes peephole_kernels.h"
#endif

#include <cstdint>

#include "../lstm_math.h"
#include "lstm_kernels.cuh"
#include "peephole_kernels.h"

namespace fastlstm {
namespace gpu {

// (row offset b*H + j, unit j, gate row b*4H + j) of thread idx.
struct PeepholeSite {
  int64_t s, j, g;
};

template <int VEC>
FASTLSTM_HOST_DEVICE inline PeepholeSite peephole_site(int64_t idx, int64_t H) {
  const int64_t per_row = H / VEC;
  const int64_t b = idx / per_row;
  const int64_t j = (idx - b * per_row) * VEC;
  return PeepholeSite{b * H + j, j, b * 4 * H + j};
}

template <typename scalar_t, int VEC>
FASTLSTM_HOST_DEVICE inline void peephole_forward_diag_element(
    int64_t idx, int64_t H, scalar_t* __restrict__ gates, const acc_t<scalar_t>* __restrict__ c_prev,
    const acc_t<scalar_t>* __restrict__ p_i, const acc_t<scalar_t>* __restrict__ p_f,
    const acc_t<scalar_t>* __restrict__ p_o, acc_t<scalar_t>* __restrict__ c_out, scalar_t* __restrict__ h_out) {
  using acc = acc_t<scalar_t>;
  const PeepholeSite at = peephole_site<VEC>(idx, H);
  scalar_t* g = gates + at.g;
  const Pack<scalar_t, VEC> xi = load<VEC>(g), xf = load<VEC>(g + H), xg = load<VEC>(g + 2 * H),
                            xo = load<VEC>(g + 3 * H);
  const Pack<acc, VEC> cp = load<VEC>(c_prev + at.s), pi = load<VEC>(p_i + at.j), pf = load<VEC>(p_f + at.j),
                       po = load<VEC>(p_o + at.j);
  Pack<scalar_t, VEC> gi, gf, gg, go, h;
  Pack<acc, VEC> c;
  FASTLSTM_UNROLL
  for (int k = 0; k < VEC; ++k) {
    acc i, f, gt, o, cn, hn;
    math::peephole_cell_forward<acc>(to_acc(xi.v[k]), to_acc(xf.v[k]), to_acc(xg.v[k]), to_acc(xo.v[k]), cp.v[k],
                                     pi.v[k], pf.v[k], po.v[k], i, f, gt, o, cn, hn);
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
  store<VEC>(c_out + at.s, c);
  store<VEC>(h_out + at.s, h);
}

template <typename scalar_t, int VEC>
FASTLSTM_HOST_DEVICE inline void peephole_forward_c_element(int64_t idx, int64_t H, scalar_t* __restrict__ gates,
                                                            const acc_t<scalar_t>* __restrict__ c_prev,
                                                            acc_t<scalar_t>* __restrict__ c_out) {
  using acc = acc_t<scalar_t>;
  const PeepholeSite at = peephole_site<VEC>(idx, H);
  scalar_t* g = gates + at.g;
  const Pack<scalar_t, VEC> xi = load<VEC>(g), xf = load<VEC>(g + H), xg = load<VEC>(g + 2 * H);
  const Pack<acc, VEC> cp = load<VEC>(c_prev + at.s);
  Pack<scalar_t, VEC> gi, gf, gg;
  Pack<acc, VEC> c;
  FASTLSTM_UNROLL
  for (int k = 0; k < VEC; ++k) {
    acc i, f, gt, cn;
    math::peephole_forward_c<acc>(to_acc(xi.v[k]), to_acc(xf.v[k]), to_acc(xg.v[k]), cp.v[k], i, f, gt, cn);
    gi.v[k] = from_acc<scalar_t>(i);
    gf.v[k] = from_acc<scalar_t>(f);
    gg.v[k] = from_acc<scalar_t>(gt);
    c.v[k] = cn;
  }
  store<VEC>(g, gi);
  store<VEC>(g + H, gf);
  store<VEC>(g + 2 * H, gg);
  store<VEC>(c_out + at.s, c);
}

template <typename scalar_t, int VEC>
FASTLSTM_HOST_DEVICE inline void peephole_forward_h_element(int64_t idx, int64_t H, scalar_t* __restrict__ gates,
                                                            const acc_t<scalar_t>* __restrict__ c,
                                                            scalar_t* __restrict__ h_out) {
  using acc = acc_t<scalar_t>;
  const PeepholeSite at = peephole_site<VEC>(idx, H);
  scalar_t* go_ptr = gates + at.g + 3 * H;
  const Pack<scalar_t, VEC> xo = load<VEC>(go_ptr);
  const Pack<acc, VEC> cc = load<VEC>(c + at.s);
  Pack<scalar_t, VEC> go, h;
  FASTLSTM_UNROLL
  for (int k = 0; k < VEC; ++k) {
    acc o, hn;
    math::peephole_forward_h<acc>(to_acc(xo.v[k]), cc.v[k], o, hn);
    go.v[k] = from_acc<scalar_t>(o);
    h.v[k] = from_acc<scalar_t>(hn);
  }
  store<VEC>(go_ptr, go);
  store<VEC>(h_out + at.s, h);
}

template <typename scalar_t, int VEC>
FASTLSTM_HOST_DEVICE inline void peephole_backward_diag_element(
    int64_t idx, int64_t H, const scalar_t* __restrict__ gates, const acc_t<scalar_t>* __restrict__ c,
    const acc_t<scalar_t>* __restrict__ c_prev, const acc_t<scalar_t>* __restrict__ p_i,
    const acc_t<scalar_t>* __restrict__ p_f, const acc_t<scalar_t>* __restrict__ p_o,
    const scalar_t* __restrict__ dh, const acc_t<scalar_t>* __restrict__ dc_next, scalar_t* __restrict__ dgates,
    acc_t<scalar_t>* __restrict__ dc_prev) {
  using acc = acc_t<scalar_t>;
  const PeepholeSite at = peephole_site<VEC>(idx, H);
  const scalar_t* g = gates + at.g;
  scalar_t* dg = dgates + at.g;
  const Pack<scalar_t, VEC> gi = load<VEC>(g), gf = load<VEC>(g + H), gg = load<VEC>(g + 2 * H),
                            go = load<VEC>(g + 3 * H), d = load<VEC>(dh + at.s);
  const Pack<acc, VEC> cc = load<VEC>(c + at.s), cp = load<VEC>(c_prev + at.s), dcn = load<VEC>(dc_next + at.s),
                       pi = load<VEC>(p_i + at.j), pf = load<VEC>(p_f + at.j), po = load<VEC>(p_o + at.j);
  Pack<scalar_t, VEC> di, df, dgg, dout;
  Pack<acc, VEC> dcp;
  FASTLSTM_UNROLL
  for (int k = 0; k < VEC; ++k) {
    acc a, bf, cg, o, e;
    math::peephole_cell_backward<acc>(to_acc(gi.v[k]), to_acc(gf.v[k]), to_acc(gg.v[k]), to_acc(go.v[k]), cc.v[k],
                                      cp.v[k], pi.v[k], pf.v[k], po.v[k], to_acc(d.v[k]), dcn.v[k], a, bf, cg, o, e);
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
  store<VEC>(dc_prev + at.s, dcp);
}

template <typename scalar_t, int VEC>
FASTLSTM_HOST_DEVICE inline void peephole_backward_h_element(int64_t idx, int64_t H,
                                                             const scalar_t* __restrict__ gates,
                                                             const acc_t<scalar_t>* __restrict__ c,
                                                             const scalar_t* __restrict__ dh,
                                                             const acc_t<scalar_t>* __restrict__ dc_next,
                                                             scalar_t* __restrict__ dgates,
                                                             acc_t<scalar_t>* __restrict__ dc_out) {
  using acc = acc_t<scalar_t>;
  const PeepholeSite at = peephole_site<VEC>(idx, H);
  const Pack<scalar_t, VEC> go = load<VEC>(gates + at.g + 3 * H), d = load<VEC>(dh + at.s);
  const Pack<acc, VEC> cc = load<VEC>(c + at.s), dcn = load<VEC>(dc_next + at.s);
  Pack<scalar_t, VEC> dout;
  Pack<acc, VEC> dc;
  FASTLSTM_UNROLL
  for (int k = 0; k < VEC; ++k) {
    acc o, e;
    math::peephole_backward_h<acc>(to_acc(go.v[k]), cc.v[k], to_acc(d.v[k]), dcn.v[k], o, e);
    dout.v[k] = from_acc<scalar_t>(o);
    dc.v[k] = e;
  }
  store<VEC>(dgates + at.g + 3 * H, dout);
  store<VEC>(dc_out + at.s, dc);
}

template <typename scalar_t, int VEC>
FASTLSTM_HOST_DEVICE inline void peephole_backward_c_element(int64_t idx, int64_t H,
                                                             const scalar_t* __restrict__ gates,
                                                             const acc_t<scalar_t>* __restrict__ c_prev,
                                                             const acc_t<scalar_t>* __restrict__ dc,
                                                             scalar_t* __restrict__ dgates,
                                                             acc_t<scalar_t>* __restrict__ dc_prev) {
  using acc = acc_t<scalar_t>;
  const PeepholeSite at = peephole_site<VEC>(idx, H);
  const scalar_t* g = gates + at.g;
  scalar_t* dg = dgates + at.g;
  const Pack<scalar_t, VEC> gi = load<VEC>(g), gf = load<VEC>(g + H), gg = load<VEC>(g + 2 * H);
  const Pack<acc, VEC> cp = load<VEC>(c_prev + at.s), dcv = load<VEC>(dc + at.s);
  Pack<scalar_t, VEC> di, df, dgg;
  Pack<acc, VEC> dcp;
  FASTLSTM_UNROLL
  for (int k = 0; k < VEC; ++k) {
    acc a, bf, cg, e;
    math::peephole_backward_c<acc>(to_acc(gi.v[k]), to_acc(gf.v[k]), to_acc(gg.v[k]), cp.v[k], dcv.v[k], a, bf,
                                   cg, e);
    di.v[k] = from_acc<scalar_t>(a);
    df.v[k] = from_acc<scalar_t>(bf);
    dgg.v[k] = from_acc<scalar_t>(cg);
    dcp.v[k] = e;
  }
  store<VEC>(dg, di);
  store<VEC>(dg + H, df);
  store<VEC>(dg + 2 * H, dgg);
  store<VEC>(dc_prev + at.s, dcp);
}

}  // namespace gpu
}  // namespace fastlstm
