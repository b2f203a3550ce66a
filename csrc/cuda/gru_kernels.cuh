// The per-element work of the GRU CUDA kernels, as host/device functions of the kernel's flat index, on
// the same footing as lstm_kernels.cuh (whose Pack/load/store, conversions and launch plan they use): the
// __global__ wrappers in gru_kernels.cu only compute the index, and a CPU harness can call these for every
// index of a launch. One thread per VEC consecutive hidden units (b, j .. j+VEC-1), computing all three
// gates of its units; loads and stores are coalesced and, for VEC > 1, 16-byte vector accesses.
#pragma once

#include "gru_kernels.h"
#include "lstm_kernels.cuh"

namespace fastlstm {
namespace gpu {

// Forward step, thread `idx`: shapes as in launch_gru_forward_pointwise; H % VEC == 0.
template <typename scalar_t, int VEC>
FASTLSTM_HOST_DEVICE inline void gru_forward_pointwise_element(int64_t idx, int64_t H,
                                                               scalar_t* __restrict__ gates,
                                                               const scalar_t* __restrict__ gh,
                                                               const scalar_t* __restrict__ b_hn,
                                                               const scalar_t* __restrict__ h_prev,
                                                               scalar_t* __restrict__ hn_out,
                                                               scalar_t* __restrict__ h_out) {
  using acc = acc_t<scalar_t>;
  const int64_t per_row = H / VEC;
  const int64_t b = idx / per_row;
  const int64_t j = (idx - b * per_row) * VEC;
  scalar_t* g = gates + b * 3 * H + j;
  const scalar_t* r_h = gh + b * 3 * H + j;
  const int64_t s = b * H + j;

  const Pack<scalar_t, VEC> xr = load<VEC>(g), xz = load<VEC>(g + H), xn = load<VEC>(g + 2 * H);
  const Pack<scalar_t, VEC> hr = load<VEC>(r_h), hz = load<VEC>(r_h + H), hnr = load<VEC>(r_h + 2 * H);
  const Pack<scalar_t, VEC> hp = load<VEC>(h_prev + s);
  Pack<scalar_t, VEC> bias;
  if (b_hn != nullptr) {
    bias = load<VEC>(b_hn + j);
  } else {
    FASTLSTM_UNROLL
    for (int k = 0; k < VEC; ++k) bias.v[k] = from_acc<scalar_t>(acc(0));
  }
  Pack<scalar_t, VEC> gr, gz, gn, hn, h;
  FASTLSTM_UNROLL
  for (int k = 0; k < VEC; ++k) {
    // hn is rounded to storage before use, as it is saved: backward then sees what forward used (the CPU
    // kernel does the same).
    hn.v[k] = from_acc<scalar_t>(to_acc(hnr.v[k]) + to_acc(bias.v[k]));
    acc r, z, n, hv;
    math::gru::cell_forward<acc>(to_acc(xr.v[k]), to_acc(xz.v[k]), to_acc(xn.v[k]), to_acc(hr.v[k]),
                                 to_acc(hz.v[k]), to_acc(hn.v[k]), to_acc(hp.v[k]), r, z, n, hv);
    gr.v[k] = from_acc<scalar_t>(r);
    gz.v[k] = from_acc<scalar_t>(z);
    gn.v[k] = from_acc<scalar_t>(n);
    h.v[k] = from_acc<scalar_t>(hv);
  }
  store<VEC>(g, gr);
  store<VEC>(g + H, gz);
  store<VEC>(g + 2 * H, gn);
  store<VEC>(hn_out + s, hn);
  store<VEC>(h_out + s, h);
}

// Backward step, thread `idx`: shapes as in launch_gru_backward_pointwise; H % VEC == 0.
template <typename scalar_t, int VEC>
FASTLSTM_HOST_DEVICE inline void gru_backward_pointwise_element(
    int64_t idx, int64_t H, const scalar_t* __restrict__ gates, const scalar_t* __restrict__ hn,
    const scalar_t* __restrict__ h_prev, const scalar_t* __restrict__ dh_next, const scalar_t* __restrict__ gout,
    scalar_t* __restrict__ dgx, scalar_t* __restrict__ dgh, scalar_t* __restrict__ dh_prev) {
  using acc = acc_t<scalar_t>;
  const int64_t per_row = H / VEC;
  const int64_t b = idx / per_row;
  const int64_t j = (idx - b * per_row) * VEC;
  const scalar_t* g = gates + b * 3 * H + j;
  scalar_t* dx = dgx + b * 3 * H + j;
  scalar_t* dr = dgh + b * 3 * H + j;
  const int64_t s = b * H + j;

  const Pack<scalar_t, VEC> gr = load<VEC>(g), gz = load<VEC>(g + H), gn = load<VEC>(g + 2 * H);
  const Pack<scalar_t, VEC> hnv = load<VEC>(hn + s), hp = load<VEC>(h_prev + s), dn = load<VEC>(dh_next + s),
                            go = load<VEC>(gout + s);
  Pack<scalar_t, VEC> dxr, dxz, dxn, dhn, dhp;
  FASTLSTM_UNROLL
  for (int k = 0; k < VEC; ++k) {
    // dh_next + gout rounded to storage first, as a separate add would round it (and the CPU kernel does).
    const acc dh = to_acc(from_acc<scalar_t>(to_acc(dn.v[k]) + to_acc(go.v[k])));
    acc a, z, n, h, p;
    math::gru::cell_backward<acc>(to_acc(gr.v[k]), to_acc(gz.v[k]), to_acc(gn.v[k]), to_acc(hnv.v[k]),
                                  to_acc(hp.v[k]), dh, a, z, n, h, p);
    dxr.v[k] = from_acc<scalar_t>(a);
    dxz.v[k] = from_acc<scalar_t>(z);
    dxn.v[k] = from_acc<scalar_t>(n);
    dhn.v[k] = from_acc<scalar_t>(h);
    dhp.v[k] = from_acc<scalar_t>(p);
  }
  store<VEC>(dx, dxr);
  store<VEC>(dx + H, dxz);
  store<VEC>(dx + 2 * H, dxn);
  store<VEC>(dr, dxr);
  store<VEC>(dr + H, dxz);
  store<VEC>(dr + 2 * H, dhn);
  store<VEC>(dh_prev + s, dhp);
}

}  // namespace gpu
}  // namespace fastlstm
