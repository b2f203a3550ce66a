// CPU implementation of the fastlstm ops: the shared layer driver (csrc/lstm_layer.h) with CPU pointwise
// passes, vectorized with at::vec and threaded with at::parallel_for over batch rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "../lstm_layer.h"
#include "../lstm_math.h"

namespace fastlstm {
namespace {

using at::vec::Vectorized;

// Activations for SIMD registers, plugged into the shared cell math (lstm_math.h).
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
inline int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, 4 * H)); }

template <typename scalar_t, typename acc_t>
void forward_rows(scalar_t* gates, const acc_t* c_prev, acc_t* c_out, scalar_t* h_out, int64_t b0, int64_t b1,
                  int64_t H) {
  for (int64_t b = b0; b < b1; ++b) {
    scalar_t* g = gates + b * 4 * H;
    const acc_t* cp = c_prev + b * H;
    acc_t* c = c_out + b * H;
    scalar_t* h = h_out + b * H;
    int64_t j = 0;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      using V = Vectorized<scalar_t>;
      for (; j + V::size() <= H; j += V::size()) {
        V i, f, gg, o, cn, hn;
        math::cell_forward<V, VecAct>(V::loadu(g + j), V::loadu(g + H + j), V::loadu(g + 2 * H + j),
                                      V::loadu(g + 3 * H + j), V::loadu(cp + j), i, f, gg, o, cn, hn);
        i.store(g + j);
        f.store(g + H + j);
        gg.store(g + 2 * H + j);
        o.store(g + 3 * H + j);
        cn.store(c + j);
        hn.store(h + j);
      }
    }
    for (; j < H; ++j) {
      acc_t i, f, gg, o, cn, hn;
      math::cell_forward<acc_t>(acc_t(g[j]), acc_t(g[H + j]), acc_t(g[2 * H + j]), acc_t(g[3 * H + j]), cp[j], i,
                                f, gg, o, cn, hn);
      g[j] = scalar_t(i);
      g[H + j] = scalar_t(f);
      g[2 * H + j] = scalar_t(gg);
      g[3 * H + j] = scalar_t(o);
      c[j] = cn;
      h[j] = scalar_t(hn);
    }
  }
}

template <typename scalar_t, typename acc_t>
void backward_rows(const scalar_t* gates, const acc_t* c_cur, const acc_t* c_prev, const scalar_t* dh_in,
                   const acc_t* dc_next, scalar_t* dgates, acc_t* dc_prev, int64_t b0, int64_t b1, int64_t H) {
  for (int64_t b = b0; b < b1; ++b) {
    const scalar_t* g = gates + b * 4 * H;
    scalar_t* dg = dgates + b * 4 * H;
    const acc_t* c = c_cur + b * H;
    const acc_t* cp = c_prev + b * H;
    const scalar_t* dh = dh_in + b * H;
    const acc_t* dcn = dc_next + b * H;
    acc_t* dcp = dc_prev + b * H;
    int64_t j = 0;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      using V = Vectorized<scalar_t>;
      for (; j + V::size() <= H; j += V::size()) {
        V di, df, dgg, dout, dcpv;
        math::cell_backward<V, VecAct>(V::loadu(g + j), V::loadu(g + H + j), V::loadu(g + 2 * H + j),
                                       V::loadu(g + 3 * H + j), V::loadu(c + j), V::loadu(cp + j),
                                       V::loadu(dh + j), V::loadu(dcn + j), di, df, dgg, dout, dcpv);
        di.store(dg + j);
        df.store(dg + H + j);
        dgg.store(dg + 2 * H + j);
        dout.store(dg + 3 * H + j);
        dcpv.store(dcp + j);
      }
    }
    for (; j < H; ++j) {
      acc_t di, df, dgg, dout, dcpv;
      math::cell_backward<acc_t>(acc_t(g[j]), acc_t(g[H + j]), acc_t(g[2 * H + j]), acc_t(g[3 * H + j]), c[j],
                                 cp[j], acc_t(dh[j]), dcn[j], di, df, dgg, dout, dcpv);
      dg[j] = scalar_t(di);
      dg[H + j] = scalar_t(df);
      dg[2 * H + j] = scalar_t(dgg);
      dg[3 * H + j] = scalar_t(dout);
      dcp[j] = dcpv;
    }
  }
}

struct CpuBackend {
  static void forward_pointwise(const Tensor& gates, const Tensor& c_prev, const Tensor& c_out,
                                const Tensor& h_out) {
    const int64_t B = gates.size(0), H = c_out.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gates.scalar_type(), "fastlstm_forward_pointwise", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      scalar_t* g = gates.data_ptr<scalar_t>();
      const acc_t* cp = c_prev.data_ptr<acc_t>();
      acc_t* c = c_out.data_ptr<acc_t>();
      scalar_t* h = h_out.data_ptr<scalar_t>();
      at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
        forward_rows<scalar_t, acc_t>(g, cp, c, h, b0, b1, H);
      });
    });
  }

  static void backward_pointwise(const Tensor& gates, const Tensor& c, const Tensor& c_prev, const Tensor& dh,
                                 const Tensor& dc_next, const Tensor& dgates, const Tensor& dc_prev) {
    const int64_t B = gates.size(0), H = c.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gates.scalar_type(), "fastlstm_backward_pointwise", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* g = gates.data_ptr<scalar_t>();
      const acc_t* cc = c.data_ptr<acc_t>();
      const acc_t* cp = c_prev.data_ptr<acc_t>();
      const scalar_t* d = dh.data_ptr<scalar_t>();
      const acc_t* dcn = dc_next.data_ptr<acc_t>();
      scalar_t* dg = dgates.data_ptr<scalar_t>();
      acc_t* dcp = dc_prev.data_ptr<acc_t>();
      at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
        backward_rows<scalar_t, acc_t>(g, cc, cp, d, dcn, dg, dcp, b0, b1, H);
      });
    });
  }
};

void check_cpu_dtype(const Tensor& input) {
  const auto t = input.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf,
              "fastlstm: the CPU kernels support float32, float64, bfloat16 and float16, got ", t);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_cpu(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& lengths,
    bool reverse) {
  check_cpu_dtype(input);
  return lstm_layer_forward<CpuBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, true);
}

std::tuple<Tensor, Tensor, Tensor> lstm_inference_cpu(const Tensor& input, const Tensor& h0, const Tensor& c0,
                                                      const Tensor& w_ih, const Tensor& w_hh,
                                                      const OptTensor& b_ih, const OptTensor& b_hh,
                                                      const OptTensor& w_hr, const OptTensor& lengths,
                                                      bool reverse) {
  check_cpu_dtype(input);
  auto r = lstm_layer_forward<CpuBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, false);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr,
    const OptTensor& lengths, const Tensor& output, const Tensor& gates, const Tensor& cells, bool reverse) {
  check_cpu_dtype(input);
  return lstm_layer_backward<CpuBackend>(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, w_hr,
                                         lengths, output, gates, cells, reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlstm, CPU, m) {
  m.impl("lstm_forward", &lstm_forward_cpu);
  m.impl("lstm_inference", &lstm_inference_cpu);
  m.impl("lstm_backward", &lstm_backward_cpu);
}

}  // namespace fastlstm
