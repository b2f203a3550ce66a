"""Which library runs the CPU's large float32 GEMMs (csrc/cpu/device.cpp, onednn_gemms): oneDNN's matmul on an
AMD CPU, MKL elsewhere; FASTLSTM_CPU_GEMM=mkl / onednn overrides that per call, and torch.backends.mkldnn
disabled keeps MKL. A CPU where oneDNN's matmul does not run (no AVX-512: onednn_matmul_runs) keeps MKL
whatever the setting. Either way the module computes what nn.LSTM does, inference what the training forward does
(exactly: the same GEMM calls), and nothing is cached across calls."""
import pytest
import torch
from torch.profiler import profile

import fastlstm
from conftest import LOWP_FACTOR, LOWP_SLACK, TOL, one_direction_at_a_time, onednn_matmul_runs

# Large enough for oneDNN (kOnednnMinMacs = 2^23 multiply-adds: the step GEMM [64, 256] x [256, 1024] is 2^24)
# and for MKL's packed step GEMM; few steps keep it quick.
T, B, I, H = 6, 64, 256, 256
BACKENDS = ["mkl", "onednn"]


def _ops(fn):
    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.fixture
def gemm(request, monkeypatch):
    monkeypatch.setenv("FASTLSTM_CPU_GEMM", request.param)
    return request.param


@pytest.mark.parametrize("gemm", BACKENDS, indirect=True)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_parity_and_inference_equals_training(gemm, bidirectional):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, bidirectional=bidirectional)
    fast = fastlstm.FastLSTM(I, H, bidirectional=bidirectional)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, requires_grad=True)
    out, (h, c) = fast(x)
    want, (wh, wc) = ref(x)
    for a, b in ((out, want), (h, wh), (c, wc)):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    g = torch.randn_like(out)
    got_g = torch.autograd.grad(out, [x, *fast.parameters()], g)
    want_g = torch.autograd.grad(want, [x, *ref.parameters()], g)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    with torch.no_grad(), one_direction_at_a_time():
        inf = fast(x)
    assert torch.equal(inf[0], out) and torch.equal(inf[1][0], h) and torch.equal(inf[1][1], c)


@pytest.mark.parametrize("gemm", BACKENDS, indirect=True)
def test_the_setting_picks_the_library(gemm):
    # MKL's packed step GEMM is an op the profiler records; oneDNN's matmul is called below the dispatcher.
    torch.manual_seed(0)
    m = fastlstm.FastLSTM(I, H)
    x = torch.randn(T, B, I)
    with torch.no_grad():
        ops = _ops(lambda: m(x))
    on_mkl = gemm == "mkl" or not onednn_matmul_runs()
    assert ("mkl::_mkl_linear" in ops) == (on_mkl and torch.backends.mkl.is_available()), ops
    if not on_mkl:
        assert "aten::addmm" not in ops and "aten::mm" not in ops, ops
        with torch.backends.mkldnn.flags(enabled=False), torch.no_grad():
            assert "mkl::_mkl_linear" in _ops(lambda: m(x)) or not torch.backends.mkl.is_available()


@pytest.mark.skipif(onednn_matmul_runs(), reason="oneDNN's matmul runs on this CPU; this is for one without "
                    "AVX-512 (or AVX-NE-CONVERT), where ATen's mkldnn_matmul raises")
@pytest.mark.parametrize("setting", [None, "onednn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_a_cpu_without_onednn_matmul_keeps_mkl(setting, dtype, monkeypatch):
    """Regression: on an AMD EPYC Zen 3 (AVX2) every float32 GEMM of 2^23 multiply-adds or more went to
    ATen's mkldnn_matmul, which raised "mkldnn_matmul bf16 path needs the cpu support ..." there: FastLSTM
    failed at the char-RNN's shape (B=128, H=512), in bfloat16 too (float32 pre-activations)."""
    if setting is None:
        monkeypatch.delenv("FASTLSTM_CPU_GEMM", raising=False)
    else:
        monkeypatch.setenv("FASTLSTM_CPU_GEMM", setting)
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H).to(dtype)
    ref64 = torch.nn.LSTM(I, H).double()
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    m = fastlstm.FastLSTM.from_lstm(ref)
    x = torch.randn(T, B, I).to(dtype)

    def run(mod, dt):
        xx = x.to(dt).requires_grad_()
        out = mod(xx)[0]
        return [out, *torch.autograd.grad(out.sum(), [xx, mod.weight_hh_l0])]

    want = run(ref64, torch.float64)
    for what, ours, theirs, exact in zip(("output", "grad_input", "grad_w_hh"), run(m, dtype), run(ref, dtype), want):
        if dtype == torch.float32:
            torch.testing.assert_close(ours.double(), exact, **TOL[torch.float32])
        else:
            e_ours, e_ref = (ours.double() - exact).abs().max().item(), (theirs.double() - exact).abs().max().item()
            assert e_ours <= LOWP_FACTOR * e_ref + LOWP_SLACK[dtype], f"{what}: {e_ours:.3g} vs nn.LSTM {e_ref:.3g}"
    with torch.no_grad():
        assert ("mkl::_mkl_linear" in _ops(lambda: m(x))) == torch.backends.mkl.is_available()


@pytest.mark.parametrize("gemm", ["onednn"], indirect=True)
def test_onednn_sees_every_weight_change(gemm):
    # Nothing of the weights is kept between calls: an in-place change is in the next call's result.
    torch.manual_seed(0)
    m = fastlstm.FastLSTM(I, H)
    ref = torch.nn.LSTM(I, H)
    x = torch.randn(T, B, I)
    with torch.no_grad():
        m(x)
        for p in (m.weight_ih_l0, m.weight_hh_l0):
            p.data.mul_(0.5)
        ref.load_state_dict(m.state_dict())
        torch.testing.assert_close(m(x)[0], ref(x)[0], **TOL[torch.float32])


@pytest.mark.parametrize("gemm", ["onednn"], indirect=True)
def test_nan_propagates_as_in_nn_lstm(gemm):
    # A NaN in one row's input at step 3 reaches that row's outputs from step 3 on and no other row's.
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H)
    m = fastlstm.FastLSTM(I, H)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    x[3, 5, 7] = float("nan")
    with torch.no_grad():
        got, want = m(x)[0], ref(x)[0]
    assert torch.equal(got.isnan(), want.isnan())
    assert got[3:, 5].isnan().all() and got.isnan().sum() == (T - 3) * H


@pytest.mark.parametrize("gemm", ["onednn"], indirect=True)
def test_both_directions_at_once_on_onednn(gemm):
    # The pair ops run each direction on one of 2 threads; oneDNN's matmul is called inside that parallel region.
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
    m = fastlstm.FastLSTM(I, H, num_layers=2, bidirectional=True)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            got, want = m(x), ref(x)
    finally:
        torch.set_num_threads(old)
    for a, b in ((got[0], want[0]), (got[1][0], want[1][0]), (got[1][1], want[1][1])):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("cell", ["gru", "peephole", "layernorm"])
def test_every_cell_is_as_accurate_on_onednn_as_on_mkl(cell, monkeypatch):
    # The cells share the device's GEMM hooks. Against the same module run in float64, oneDNN's forward and
    # every gradient are at most twice MKL's error (whose own parity the cells' tests pin; at this batch the
    # weight gradients sum 384 rows, so a fixed float32 tolerance would measure the shape, not the library),
    # and the outputs are within the float32 tolerance (FastGRU's also against nn.GRU).
    import copy

    from fastlstm import FastGRU, PeepholeLSTM
    from fastlstm.cells.layernorm_lstm import LayerNormLSTM

    make = {"gru": FastGRU, "peephole": PeepholeLSTM, "layernorm": LayerNormLSTM}[cell]
    torch.manual_seed(0)
    m = make(I, H, bidirectional=True)
    x, g = torch.randn(T, B, I), torch.randn(T, B, 2 * H)

    def run(mod, xx, gg):
        xx = xx.clone().requires_grad_()
        out = mod(xx)[0]
        return [out, *torch.autograd.grad(out, [xx, *mod.parameters()], gg)]

    want = run(copy.deepcopy(m).double(), x.double(), g.double())
    err = {}
    for lib in BACKENDS:
        monkeypatch.setenv("FASTLSTM_CPU_GEMM", lib)
        got = run(m, x, g)
        torch.testing.assert_close(got[0].double(), want[0], **TOL[torch.float32])
        err[lib] = [(a.double() - b).abs().max().item() for a, b in zip(got, want)]
    for i, (e_dnn, e_mkl) in enumerate(zip(err["onednn"], err["mkl"])):
        assert e_dnn <= 2 * e_mkl + 1e-6, (i, e_dnn, e_mkl)
    if cell == "gru":
        ref = torch.nn.GRU(I, H, bidirectional=True)
        ref.load_state_dict(m.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(m(x)[0], ref(x)[0], **TOL[torch.float32])
