// CPU implementation of the peephole-LSTM ops (issue 6): the shared driver (csrc/peephole_layer.h) with
// CPU pointwise passes over the shared peephole cell math (csrc/lstm_math.h), vectorized with at::vec where
// the storage type is the compute type (float32, float64) and threaded with at::parallel_for over batch rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <type_traits>

#include "../lstm_math.h"
#include "../peephole_layer.h"

namespace fastlstm {
namespace {

using at::vec::Vectorized;

// Activations for SIMD registers, plugged into the shared cell math. The same as lstm_cpu.cpp's VecAct,
// which lives in that file's anonymous namespace.
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

// A "lane" is how the per-unit code below reads and writes: a whole SIMD register of acc_t, or one acc_t
// converted from/to the storage type. Writing each pass once as a generic lambda over the lane keeps the
// vector body and the scalar tail (and the half/bfloat16 path) the same code.
template <typename acc_t>
struct VecLane {
  using C = Vectorized<acc_t>;
  using Act = VecAct;
  static constexpr int64_t width = C::size();
  static C load(const acc_t* p) { return C::loadu(p); }
  static void store(acc_t* p, const C& v) { v.store(p); }
};

template <typename acc_t>
struct ScalarLane {
  using C = acc_t;
  using Act = math::ScalarAct;
  static constexpr int64_t width = 1;
  template <typename S>
  static C load(const S* p) {
    return static_cast<C>(*p);
  }
  template <typename S>
  static void store(S* p, C v) {
    *p = static_cast<S>(v);
  }
};

// Calls f(j, lane) for the units j of one row: SIMD-wide while storage == compute type, then one by one.
template <typename scalar_t, typename acc_t, typename F>
inline void for_each_unit(int64_t H, const F& f) {
  int64_t j = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (; j + VecLane<acc_t>::width <= H; j += VecLane<acc_t>::width) f(j, VecLane<acc_t>{});
  }
  for (; j < H; ++j) f(j, ScalarLane<acc_t>{});
}

// Rows per task: below ~16K gate elements per task, threading costs more than it saves.
inline int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, 4 * H)); }

// Runs body(b) for every row b of a [B, ...] pass, threaded over rows.
template <typename F>
void for_rows(const Tensor& gates, int64_t H, const F& body) {
  const int64_t B = gates.size(0);
  at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) body(b);
  });
}

#define FASTLSTM_DISPATCH(T, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, T, NAME, __VA_ARGS__)

struct CpuPeepholeBackend {
  static void peephole_forward_diag(const Tensor& gates, const Tensor& c_prev, const Tensor& p_i,
                                    const Tensor& p_f, const Tensor& p_o, const Tensor& c_out,
                                    const Tensor& h_out) {
    const int64_t H = c_out.size(1);
    FASTLSTM_DISPATCH(gates.scalar_type(), "fastlstm_peephole_forward_diag", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      scalar_t* G = gates.data_ptr<scalar_t>();
      const acc_t* CP = c_prev.data_ptr<acc_t>();
      const acc_t *PI = p_i.data_ptr<acc_t>(), *PF = p_f.data_ptr<acc_t>(), *PO = p_o.data_ptr<acc_t>();
      acc_t* C = c_out.data_ptr<acc_t>();
      scalar_t* Hh = h_out.data_ptr<scalar_t>();
      for_rows(gates, H, [&](int64_t b) {
        scalar_t* g = G + b * 4 * H;
        const acc_t* cp = CP + b * H;
        acc_t* c = C + b * H;
        scalar_t* h = Hh + b * H;
        for_each_unit<scalar_t, acc_t>(H, [&](int64_t j, auto lane) {
          using L = decltype(lane);
          typename L::C i, f, gg, o, cn, hn;
          math::peephole_cell_forward<typename L::C, typename L::Act>(
              L::load(g + j), L::load(g + H + j), L::load(g + 2 * H + j), L::load(g + 3 * H + j),
              L::load(cp + j), L::load(PI + j), L::load(PF + j), L::load(PO + j), i, f, gg, o, cn, hn);
          L::store(g + j, i);
          L::store(g + H + j, f);
          L::store(g + 2 * H + j, gg);
          L::store(g + 3 * H + j, o);
          L::store(c + j, cn);
          L::store(h + j, hn);
        });
      });
    });
  }

  static void peephole_forward_c(const Tensor& gates, const Tensor& c_prev, const Tensor& c_out) {
    const int64_t H = c_out.size(1);
    FASTLSTM_DISPATCH(gates.scalar_type(), "fastlstm_peephole_forward_c", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      scalar_t* G = gates.data_ptr<scalar_t>();
      const acc_t* CP = c_prev.data_ptr<acc_t>();
      acc_t* C = c_out.data_ptr<acc_t>();
      for_rows(gates, H, [&](int64_t b) {
        scalar_t* g = G + b * 4 * H;
        const acc_t* cp = CP + b * H;
        acc_t* c = C + b * H;
        for_each_unit<scalar_t, acc_t>(H, [&](int64_t j, auto lane) {
          using L = decltype(lane);
          typename L::C i, f, gg, cn;
          math::peephole_forward_c<typename L::C, typename L::Act>(
              L::load(g + j), L::load(g + H + j), L::load(g + 2 * H + j), L::load(cp + j), i, f, gg, cn);
          L::store(g + j, i);
          L::store(g + H + j, f);
          L::store(g + 2 * H + j, gg);
          L::store(c + j, cn);
        });
      });
    });
  }

  static void peephole_forward_h(const Tensor& gates, const Tensor& c, const Tensor& h_out) {
    const int64_t H = c.size(1);
    FASTLSTM_DISPATCH(gates.scalar_type(), "fastlstm_peephole_forward_h", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      scalar_t* G = gates.data_ptr<scalar_t>();
      const acc_t* Cc = c.data_ptr<acc_t>();
      scalar_t* Hh = h_out.data_ptr<scalar_t>();
      for_rows(gates, H, [&](int64_t b) {
        scalar_t* go = G + b * 4 * H + 3 * H;
        const acc_t* cc = Cc + b * H;
        scalar_t* h = Hh + b * H;
        for_each_unit<scalar_t, acc_t>(H, [&](int64_t j, auto lane) {
          using L = decltype(lane);
          typename L::C o, hn;
          math::peephole_forward_h<typename L::C, typename L::Act>(L::load(go + j), L::load(cc + j), o, hn);
          L::store(go + j, o);
          L::store(h + j, hn);
        });
      });
    });
  }

  static void peephole_backward_diag(const Tensor& gates, const Tensor& c, const Tensor& c_prev,
                                     const Tensor& p_i, const Tensor& p_f, const Tensor& p_o, const Tensor& dh,
                                     const Tensor& dc_next, const Tensor& dgates, const Tensor& dc_prev) {
    const int64_t H = c.size(1);
    FASTLSTM_DISPATCH(gates.scalar_type(), "fastlstm_peephole_backward_diag", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* G = gates.data_ptr<scalar_t>();
      const acc_t *Cc = c.data_ptr<acc_t>(), *CP = c_prev.data_ptr<acc_t>();
      const acc_t *PI = p_i.data_ptr<acc_t>(), *PF = p_f.data_ptr<acc_t>(), *PO = p_o.data_ptr<acc_t>();
      const scalar_t* DH = dh.data_ptr<scalar_t>();
      const acc_t* DCN = dc_next.data_ptr<acc_t>();
      scalar_t* DG = dgates.data_ptr<scalar_t>();
      acc_t* DCP = dc_prev.data_ptr<acc_t>();
      for_rows(gates, H, [&](int64_t b) {
        const scalar_t* g = G + b * 4 * H;
        scalar_t* dg = DG + b * 4 * H;
        const acc_t *cc = Cc + b * H, *cp = CP + b * H, *dcn = DCN + b * H;
        const scalar_t* d = DH + b * H;
        acc_t* dcp = DCP + b * H;
        for_each_unit<scalar_t, acc_t>(H, [&](int64_t j, auto lane) {
          using L = decltype(lane);
          typename L::C di, df, dgg, dout, dcpv;
          math::peephole_cell_backward<typename L::C, typename L::Act>(
              L::load(g + j), L::load(g + H + j), L::load(g + 2 * H + j), L::load(g + 3 * H + j),
              L::load(cc + j), L::load(cp + j), L::load(PI + j), L::load(PF + j), L::load(PO + j),
              L::load(d + j), L::load(dcn + j), di, df, dgg, dout, dcpv);
          L::store(dg + j, di);
          L::store(dg + H + j, df);
          L::store(dg + 2 * H + j, dgg);
          L::store(dg + 3 * H + j, dout);
          L::store(dcp + j, dcpv);
        });
      });
    });
  }

  static void peephole_backward_h(const Tensor& gates, const Tensor& c, const Tensor& dh, const Tensor& dc_next,
                                  const Tensor& dgates, const Tensor& dc_out) {
    const int64_t H = c.size(1);
    FASTLSTM_DISPATCH(gates.scalar_type(), "fastlstm_peephole_backward_h", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* G = gates.data_ptr<scalar_t>();
      const acc_t* Cc = c.data_ptr<acc_t>();
      const scalar_t* DH = dh.data_ptr<scalar_t>();
      const acc_t* DCN = dc_next.data_ptr<acc_t>();
      scalar_t* DG = dgates.data_ptr<scalar_t>();
      acc_t* DC = dc_out.data_ptr<acc_t>();
      for_rows(gates, H, [&](int64_t b) {
        const scalar_t* go = G + b * 4 * H + 3 * H;
        scalar_t* dgo = DG + b * 4 * H + 3 * H;
        const acc_t *cc = Cc + b * H, *dcn = DCN + b * H;
        const scalar_t* d = DH + b * H;
        acc_t* dc = DC + b * H;
        for_each_unit<scalar_t, acc_t>(H, [&](int64_t j, auto lane) {
          using L = decltype(lane);
          typename L::C dout, dcv;
          math::peephole_backward_h<typename L::C, typename L::Act>(L::load(go + j), L::load(cc + j),
                                                                     L::load(d + j), L::load(dcn + j), dout, dcv);
          L::store(dgo + j, dout);
          L::store(dc + j, dcv);
        });
      });
    });
  }

  static void peephole_backward_c(const Tensor& gates, const Tensor& c_prev, const Tensor& dc,
                                  const Tensor& dgates, const Tensor& dc_prev) {
    const int64_t H = c_prev.size(1);
    FASTLSTM_DISPATCH(gates.scalar_type(), "fastlstm_peephole_backward_c", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* G = gates.data_ptr<scalar_t>();
      const acc_t *CP = c_prev.data_ptr<acc_t>(), *DC = dc.data_ptr<acc_t>();
      scalar_t* DG = dgates.data_ptr<scalar_t>();
      acc_t* DCP = dc_prev.data_ptr<acc_t>();
      for_rows(gates, H, [&](int64_t b) {
        const scalar_t* g = G + b * 4 * H;
        scalar_t* dg = DG + b * 4 * H;
        const acc_t *cp = CP + b * H, *dcv = DC + b * H;
        acc_t* dcp = DCP + b * H;
        for_each_unit<scalar_t, acc_t>(H, [&](int64_t j, auto lane) {
          using L = decltype(lane);
          typename L::C di, df, dgg, dcpv;
          math::peephole_backward_c<typename L::C, typename L::Act>(
              L::load(g + j), L::load(g + H + j), L::load(g + 2 * H + j), L::load(cp + j), L::load(dcv + j), di,
              df, dgg, dcpv);
          L::store(dg + j, di);
          L::store(dg + H + j, df);
          L::store(dg + 2 * H + j, dgg);
          L::store(dcp + j, dcpv);
        });
      });
    });
  }
};

#undef FASTLSTM_DISPATCH

void check_cpu_dtype(const Tensor& input) {
  const auto t = input.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf,
              "fastlstm: the CPU kernels support float32, float64, bfloat16 and float16, got ", t);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> peephole_forward_cpu(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ci, const Tensor& w_cf, const Tensor& w_co,
    const OptTensor& lengths, bool reverse) {
  check_cpu_dtype(input);
  return peephole_layer_forward<CpuPeepholeBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co,
                                                    lengths, reverse, /*training=*/true);
}

std::tuple<Tensor, Tensor, Tensor> peephole_inference_cpu(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const Tensor& w_ci, const Tensor& w_cf, const Tensor& w_co,
    const OptTensor& lengths, bool reverse) {
  check_cpu_dtype(input);
  auto r = peephole_layer_forward<CpuPeepholeBackend>(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co,
                                                      lengths, reverse, /*training=*/false);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> peephole_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& w_ci,
    const Tensor& w_cf, const Tensor& w_co, const OptTensor& lengths, const Tensor& output, const Tensor& gates,
    const Tensor& cells, bool reverse) {
  check_cpu_dtype(input);
  return peephole_layer_backward<CpuPeepholeBackend>(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh,
                                                     w_ci, w_cf, w_co, lengths, output, gates, cells, reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlstm, CPU, m) {
  m.impl("peephole_forward", &peephole_forward_cpu);
  m.impl("peephole_inference", &peephole_inference_cpu);
  m.impl("peephole_backward", &peephole_backward_cpu);
}

}  // namespace fastlstm
