"""Which library runs the CPU's large float32 GEMMs (csrc/cpu/device.cpp, onednn_gemms): oneDNN's matmul on an
AMD CPU, MKL elsewhere; FASTLSTM_CPU_GEMM=mkl / onednn overrides that per call, and torch.backends.mkldnn
disabled keeps MKL. Either way the module computes what nn.LSTM does, inference what the training forward does
(exactly: the same GEMM calls), and nothing is cached across calls."""
import pytest
import torch
from torch.profiler import profile

import fastlstm
from conftest import TOL, one_direction_at_a_time

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
    assert ("mkl::_mkl_linear" in ops) == (gemm == "mkl" and torch.backends.mkl.is_available()), ops
    if gemm == "onednn":
        assert "aten::addmm" not in ops and "aten::mm" not in ops, ops
        with torch.backends.mkldnn.flags(enabled=False), torch.no_grad():
            assert "mkl::_mkl_linear" in _ops(lambda: m(x)) or not torch.backends.mkl.is_available()


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
