// CPU implementation of the fastlstm GRU ops: the shared GRU layer driver (csrc/gru_layer.h) with CPU
// pointwise passes, vectorized with at::vec and threaded with at::parallel_for over batch rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "../gru_layer.h"
#include "../lstm_math.h"

namespace fastlstm {
namespace {

using at::vec::Vectorized;

// Activations for SIMD registers, plugged into the shared cell math (lstm_math.h). The same formulas as
// lstm_cpu.cpp's, which keeps its own in an anonymous namespace.
struct VecAct {
  template <typename V>
  static V sigmoid(V x) {
    return V(1) / (V(1) + x.neg().exp());
  }
  template <typename V>
  static V tanh(V x) {
    return x.tanh();
  }
};

// Rows per task: below ~16K gate elements per task, threading costs more than it saves.
inline int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, 3 * H)); }

// gates [B,3H] in/out, gh [B,3H], b_hn [H] or null, h_prev/hn_out/h_out [B,H]; rows b0..b1.
template <typename scalar_t>
void gru_forward_rows(scalar_t* gates, const scalar_t* gh_all, const scalar_t* b_hn, const scalar_t* h_prev,
                      scalar_t* hn_out, scalar_t* h_out, int64_t b0, int64_t b1, int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t b = b0; b < b1; ++b) {
    scalar_t* g = gates + b * 3 * H;
    const scalar_t* gh = gh_all + b * 3 * H;
    const scalar_t* hp = h_prev + b * H;
    scalar_t* hn = hn_out + b * H;
    scalar_t* h = h_out + b * H;
    int64_t j = 0;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      using V = Vectorized<scalar_t>;
      for (; j + V::size() <= H; j += V::size()) {
        V hnv = V::loadu(gh + 2 * H + j);
        if (b_hn != nullptr) hnv = hnv + V::loadu(b_hn + j);
        V r, z, n, hv;
        math::gru::cell_forward<V, VecAct>(V::loadu(g + j), V::loadu(g + H + j), V::loadu(g + 2 * H + j),
                                           V::loadu(gh + j), V::loadu(gh + H + j), hnv, V::loadu(hp + j), r, z,
                                           n, hv);
        r.store(g + j);
        z.store(g + H + j);
        n.store(g + 2 * H + j);
        hnv.store(hn + j);
        hv.store(h + j);
      }
    }
    for (; j < H; ++j) {
      acc_t hnv = acc_t(gh[2 * H + j]);
      if (b_hn != nullptr) hnv += acc_t(b_hn[j]);
      // The saved hn is rounded to the input dtype; use the rounded value, so backward sees what forward did.
      const scalar_t hn_s = scalar_t(hnv);
      acc_t r, z, n, hv;
      math::gru::cell_forward<acc_t>(acc_t(g[j]), acc_t(g[H + j]), acc_t(g[2 * H + j]), acc_t(gh[j]),
                                     acc_t(gh[H + j]), acc_t(hn_s), acc_t(hp[j]), r, z, n, hv);
      g[j] = scalar_t(r);
      g[H + j] = scalar_t(z);
      g[2 * H + j] = scalar_t(n);
      hn[j] = hn_s;
      h[j] = scalar_t(hv);
    }
  }
}

// gates [B,3H], hn/h_prev/dh [B,H] in; dgx/dgh [B,3H], dh_prev [B,H] out; rows b0..b1.
template <typename scalar_t>
void gru_backward_rows(const scalar_t* gates, const scalar_t* hn_all, const scalar_t* h_prev,
                       const scalar_t* dh_in, scalar_t* dgx_all, scalar_t* dgh_all, scalar_t* dh_prev, int64_t b0,
                       int64_t b1, int64_t H) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t b = b0; b < b1; ++b) {
    const scalar_t* g = gates + b * 3 * H;
    const scalar_t* hn = hn_all + b * H;
    const scalar_t* hp = h_prev + b * H;
    const scalar_t* dh = dh_in + b * H;
    scalar_t* dgx = dgx_all + b * 3 * H;
    scalar_t* dgh = dgh_all + b * 3 * H;
    scalar_t* dhp = dh_prev + b * H;
    int64_t j = 0;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      using V = Vectorized<scalar_t>;
      for (; j + V::size() <= H; j += V::size()) {
        V dxr, dxz, dxn, dhn, dhpv;
        math::gru::cell_backward<V, VecAct>(V::loadu(g + j), V::loadu(g + H + j), V::loadu(g + 2 * H + j),
                                            V::loadu(hn + j), V::loadu(hp + j), V::loadu(dh + j), dxr, dxz, dxn,
                                            dhn, dhpv);
        dxr.store(dgx + j);
        dxz.store(dgx + H + j);
        dxn.store(dgx + 2 * H + j);
        dxr.store(dgh + j);
        dxz.store(dgh + H + j);
        dhn.store(dgh + 2 * H + j);
        dhpv.store(dhp + j);
      }
    }
    for (; j < H; ++j) {
      acc_t dxr, dxz, dxn, dhn, dhpv;
      math::gru::cell_backward<acc_t>(acc_t(g[j]), acc_t(g[H + j]), acc_t(g[2 * H + j]), acc_t(hn[j]),
                                      acc_t(hp[j]), acc_t(dh[j]), dxr, dxz, dxn, dhn, dhpv);
      dgx[j] = scalar_t(dxr);
      dgx[H + j] = scalar_t(dxz);
      dgx[2 * H + j] = scalar_t(dxn);
      dgh[j] = scalar_t(dxr);
      dgh[H + j] = scalar_t(dxz);
      dgh[2 * H + j] = scalar_t(dhn);
      dhp[j] = scalar_t(dhpv);
    }
  }
}

struct CpuGruBackend {
  static void gru_forward_pointwise(const Tensor& gates, const Tensor& gh, const Tensor& b_hn,
                                    const Tensor& h_prev, const Tensor& hn_out, const Tensor& h_out) {
    const int64_t B = gates.size(0), H = h_out.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gates.scalar_type(), "fastlstm_gru_forward", [&] {
      scalar_t* g = gates.data_ptr<scalar_t>();
      const scalar_t* ghp = gh.data_ptr<scalar_t>();
      const scalar_t* bp = b_hn.defined() ? b_hn.data_ptr<scalar_t>() : nullptr;
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      scalar_t* hn = hn_out.data_ptr<scalar_t>();
      scalar_t* h = h_out.data_ptr<scalar_t>();
      at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
        gru_forward_rows<scalar_t>(g, ghp, bp, hp, hn, h, b0, b1, H);
      });
    });
  }

  static void gru_backward_pointwise(const Tensor& gates, const Tensor& hn, const Tensor& h_prev,
                                     const Tensor& dh, const Tensor& dgx, const Tensor& dgh,
                                     const Tensor& dh_prev) {
    const int64_t B = gates.size(0), H = hn.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gates.scalar_type(), "fastlstm_gru_backward", [&] {
      const scalar_t* g = gates.data_ptr<scalar_t>();
      const scalar_t* hnp = hn.data_ptr<scalar_t>();
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      const scalar_t* d = dh.data_ptr<scalar_t>();
      scalar_t* dx = dgx.data_ptr<scalar_t>();
      scalar_t* dhh = dgh.data_ptr<scalar_t>();
      scalar_t* dhp = dh_prev.data_ptr<scalar_t>();
      at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
        gru_backward_rows<scalar_t>(g, hnp, hp, d, dx, dhh, dhp, b0, b1, H);
      });
    });
  }
};

void check_cpu_dtype(const Tensor& input) {
  const auto t = input.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf,
              "fastlstm: the CPU kernels support float32, float64, bfloat16 and float16, got ", t);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward_cpu(const Tensor& input, const Tensor& h0,
                                                           const Tensor& w_ih, const Tensor& w_hh,
                                                           const OptTensor& b_ih, const OptTensor& b_hh,
                                                           const OptTensor& lengths, bool reverse) {
  check_cpu_dtype(input);
  return gru_layer_forward<CpuGruBackend>(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, true);
}

std::tuple<Tensor, Tensor> gru_inference_cpu(const Tensor& input, const Tensor& h0, const Tensor& w_ih,
                                             const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                             const OptTensor& lengths, bool reverse) {
  check_cpu_dtype(input);
  auto r = gru_layer_forward<CpuGruBackend>(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, false);
  return {std::get<0>(r), std::get<1>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& h0, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& lengths, const Tensor& output, const Tensor& gates, const Tensor& hn,
    bool reverse) {
  check_cpu_dtype(input);
  return gru_layer_backward<CpuGruBackend>(grad_output, grad_h_n, input, h0, w_ih, w_hh, lengths, output, gates,
                                           hn, reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlstm, CPU, m) {
  m.impl("gru_forward", &gru_forward_cpu);
  m.impl("gru_inference", &gru_inference_cpu);
  m.impl("gru_backward", &gru_backward_cpu);
}

}  // namespace fastlstm
