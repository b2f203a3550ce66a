"""fastlstm's CUDA kernels on a GPU: parity with nn.LSTM (cuDNN) and with the CPU op, low-precision error,
gradcheck, CUDA-graph capture, streams and devices. Every test here needs a CUDA device and a build with the
CUDA kernels (conftest.HAS_CUDA); elsewhere they skip, and tests/test_cuda_harness.py runs the kernels'
per-element code on the CPU instead.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastlstm
from conftest import HAS_CUDA, LOWP_FACTOR, LOWP_SLACK, NO_CUDA_REASON, TOL
from fastlstm import FastLSTM
from fastlstm.reference import lstm_ref, module_params

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)

DEV = "cuda"
T, B = 9, 5

# nn.LSTM configurations: I input, H hidden, L layers, and nn.LSTM keyword flags.
CONFIGS = {
    "one_layer": dict(I=16, H=32, L=1),
    "stacked_bidirectional": dict(I=10, H=24, L=2, bidirectional=True),
    "proj": dict(I=8, H=20, L=2, proj_size=6),
    "odd_no_bias": dict(I=5, H=7, L=1, bias=False),
    "batch_first": dict(I=6, H=16, L=1, batch_first=True),
}


def make_lstm(cfg: dict, dtype: torch.dtype, seed: int = 0) -> nn.LSTM:
    torch.manual_seed(seed)
    return nn.LSTM(cfg["I"], cfg["H"], cfg["L"], bias=cfg.get("bias", True),
                   batch_first=cfg.get("batch_first", False), bidirectional=cfg.get("bidirectional", False),
                   proj_size=cfg.get("proj_size", 0), device=DEV, dtype=dtype)


def make_data(m: nn.LSTM, dtype: torch.dtype, seed: int = 1):
    """x [T,B,I] (or [B,T,I]), hx = (h0 [L*D,B,P], c0 [L*D,B,H]) and upstream grads for (y, h_n, c_n)."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    D = 2 if m.bidirectional else 1
    P = m.proj_size or m.hidden_size
    xs = (B, T, m.input_size) if m.batch_first else (T, B, m.input_size)
    ys = (B, T, D * P) if m.batch_first else (T, B, D * P)

    def r(*s):
        return torch.randn(*s, generator=g, device=DEV, dtype=torch.float64).to(dtype)

    x = r(*xs)
    hx = (r(m.num_layers * D, B, P) * 0.5, r(m.num_layers * D, B, m.hidden_size) * 0.5)
    grads = (r(*ys), r(m.num_layers * D, B, P), r(m.num_layers * D, B, m.hidden_size))
    return x, hx, grads


def run(m: nn.Module, x, hx, grads, forward=None) -> dict:
    """Forward and backward of `m` (or of forward(x, hx)): outputs and the gradients of input, h0, c0 and
    every parameter, by name."""
    x = x.detach().clone().requires_grad_()
    hx = tuple(h.detach().clone().requires_grad_() for h in hx)
    params = dict(m.named_parameters())
    y, (h_n, c_n) = (forward or m)(x, hx)
    outs = (y, h_n, c_n)
    gs = torch.autograd.grad(outs, [x, *hx, *params.values()], grads)
    res = dict(output=y.detach(), h_n=h_n.detach(), c_n=c_n.detach(), grad_input=gs[0], grad_h0=gs[1],
               grad_c0=gs[2])
    res.update({"grad_" + n: gr for n, gr in zip(params, gs[3:])})
    return res


def assert_all_close(ours: dict, theirs: dict, dtype):
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], **TOL[dtype], msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_parity_with_cudnn(config, dtype):
    ref = make_lstm(CONFIGS[config], dtype)
    fast = FastLSTM.from_lstm(ref)
    x, hx, grads = make_data(ref, dtype)
    assert_all_close(run(fast, x, hx, grads), run(ref, x, hx, grads), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_parity_with_cudnn_packed(dtype):
    ref = make_lstm(CONFIGS["stacked_bidirectional"], dtype)
    fast = FastLSTM.from_lstm(ref)
    x, hx, (gy, gh, gc) = make_data(ref, dtype)
    lengths = torch.tensor([9, 3, 7, 1, 5])  # unsorted: exercises the permutation too

    def packed(m):
        def f(x, hx):
            y, (h, c) = m(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
            return y.data, (h, c)
        return f

    gy_packed = pack_padded_sequence(gy, lengths, enforce_sorted=False).data
    ours = run(fast, x, hx, (gy_packed, gh, gc), forward=packed(fast))
    theirs = run(ref, x, hx, (gy_packed, gh, gc), forward=packed(ref))
    assert_all_close(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("config", ["one_layer", "stacked_bidirectional", "proj"])
def test_low_precision_error_vs_cudnn(config, dtype):
    # Both implementations get the same low-precision inputs; the float64 oracle gets those values exactly.
    cfg = CONFIGS[config]
    m64 = make_lstm(cfg, torch.float64)
    with torch.no_grad():
        for p in m64.parameters():
            p.copy_(p.to(dtype))
    ref = make_lstm(cfg, dtype)
    ref.load_state_dict(m64.state_dict())
    fast = FastLSTM.from_lstm(ref)
    x, hx, grads = make_data(ref, dtype)

    def oracle(x, hx):
        y, (h, c) = lstm_ref(x, hx, module_params(m64), m64.num_layers, m64.bidirectional)
        return y, (h, c)

    exact = run(m64, x.double(), tuple(h.double() for h in hx), tuple(g.double() for g in grads), forward=oracle)
    ours, theirs = run(fast, x, hx, grads), run(ref, x, hx, grads)
    for k, e in exact.items():
        err = (ours[k].double() - e).abs().max().item()
        base = (theirs[k].double() - e).abs().max().item()
        assert err <= LOWP_FACTOR * base + LOWP_SLACK[dtype], f"{k}: fastlstm {err:.3g}, nn.LSTM {base:.3g}"


LAYER_CASES = {
    "plain": dict(P=None, lengths=None, reverse=False),
    "proj_reverse": dict(P=3, lengths=None, reverse=True),
    "lengths": dict(P=None, lengths=[4, 1, 3], reverse=False),
    "lengths_reverse_proj": dict(P=2, lengths=[2, 4, 3], reverse=True),
}


def layer_args(case: dict, dtype, device, seed=0, requires_grad=False, Tl=4, Bl=3, I=3, H=5):
    """Arguments of fastlstm.lstm_layer / torch.ops.fastlstm.* for one small layer."""
    g = torch.Generator().manual_seed(seed)
    P = case["P"] or H

    def r(*s, scale=1.0):
        t = (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
        return t.requires_grad_(requires_grad)

    return dict(input=r(Tl, Bl, I), h0=r(Bl, P, scale=0.5), c0=r(Bl, H, scale=0.5), w_ih=r(4 * H, I, scale=0.4),
                w_hh=r(4 * H, P, scale=0.4), b_ih=r(4 * H, scale=0.4), b_hh=r(4 * H, scale=0.4),
                w_hr=r(P, H, scale=0.4) if case["P"] else None,
                lengths=torch.tensor(case["lengths"], device=device) if case["lengths"] else None,
                reverse=case["reverse"])


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_ops_match_cpu(case):
    # Op level, float64: the CUDA kernels against the CPU kernels, every output of forward and backward.
    cpu = layer_args(LAYER_CASES[case], torch.float64, "cpu")
    gpu = layer_args(LAYER_CASES[case], torch.float64, DEV)
    fwd_c = torch.ops.fastlstm.lstm_forward(*cpu.values())
    fwd_g = torch.ops.fastlstm.lstm_forward(*gpu.values())
    for a, b in zip(fwd_g, fwd_c):
        torch.testing.assert_close(a.cpu(), b, **TOL[torch.float64])
    inf_g = torch.ops.fastlstm.lstm_inference(*gpu.values())
    for a, b in zip(inf_g, fwd_g[:3]):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    g = torch.Generator().manual_seed(5)
    ups = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in fwd_c[:3]]

    def back(a, f, dev):
        return torch.ops.fastlstm.lstm_backward(*[u.to(dev) for u in ups], a["input"], a["h0"], a["c0"], a["w_ih"],
                                                a["w_hh"], a["w_hr"], a["lengths"], f[0], f[3], f[4], a["reverse"])

    for a, b in zip(back(gpu, fwd_g, DEV), back(cpu, fwd_c, "cpu")):
        torch.testing.assert_close(a.cpu(), b, **TOL[torch.float64])


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_gradcheck_float64(case):
    a = layer_args(LAYER_CASES[case], torch.float64, DEV, requires_grad=True)
    tensors = [a[k] for k in ("input", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr") if a[k] is not None]
    has_proj = a["w_hr"] is not None

    def f(x, h0, c0, w_ih, w_hh, b_ih, b_hh, *rest):
        return fastlstm.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, rest[0] if has_proj else None,
                                   a["lengths"], a["reverse"])

    assert torch.autograd.gradcheck(f, tensors)


@pytest.mark.parametrize("op", ["lstm_forward", "lstm_inference"])
def test_opcheck(op):
    a = layer_args(LAYER_CASES["lengths_reverse_proj"], torch.float32, DEV)
    torch.library.opcheck(getattr(torch.ops.fastlstm, op), tuple(a.values()))


def test_opcheck_backward():
    a = layer_args(LAYER_CASES["lengths_reverse_proj"], torch.float32, DEV)
    out, h_n, c_n, gates, cells = torch.ops.fastlstm.lstm_forward(*a.values())
    args = (torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n), a["input"], a["h0"], a["c0"],
            a["w_ih"], a["w_hh"], a["w_hr"], a["lengths"], out, gates, cells, a["reverse"])
    torch.library.opcheck(torch.ops.fastlstm.lstm_backward, args)


def _module_and_data(dtype=torch.float32):
    m = FastLSTM.from_lstm(make_lstm(CONFIGS["proj"], dtype))
    x, hx, grads = make_data(m, dtype)
    return m, x, hx, grads


def test_cuda_graph_capture_and_replay():
    # Everything forward+backward does must be capturable: no host synchronisation, every launch on the
    # current (capturing) stream. Replays with new inputs must then equal eager runs.
    m, x, hx, (gy, gh, gc) = _module_and_data()
    params = list(m.parameters())
    static = [t.clone() for t in (x, hx[0], hx[1], gy, gh, gc)]

    def step():
        sx, sh, sc, sgy, sgh, sgc = static
        y, (h, c) = m(sx, (sh, sc))
        return (y, h, c), torch.autograd.grad((y, h, c), params, (sgy, sgh, sgc))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph requires
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_outs, graph_grads = step()

    g = torch.Generator(device=DEV).manual_seed(7)
    for _ in range(2):
        for t in static:
            t.copy_(torch.randn(t.shape, generator=g, device=DEV))
        graph.replay()
        eager_outs, eager_grads = step()
        torch.cuda.synchronize()
        for a, b in zip(list(graph_outs) + list(graph_grads), list(eager_outs) + list(eager_grads)):
            torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_cuda_graph_capture_packed_forward_backward():
    # Packed input (issue 16 item 2): the lengths reach the GPU without a blocking copy, so a packed forward
    # and backward capture too. The PackedSequence is built outside (packing sorts and moves indices to the
    # GPU itself); inside, only FastLSTM runs. Replays with new values must equal eager runs.
    m = FastLSTM.from_lstm(make_lstm(CONFIGS["stacked_bidirectional"], torch.float32))
    params = list(m.parameters())
    g = torch.Generator(device=DEV).manual_seed(3)
    x = torch.randn(T, B, m.input_size, generator=g, device=DEV)
    lengths = torch.tensor([T, 2, T - 1, 1, 4])  # unsorted, with repeats
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    D = 2
    h0 = torch.randn(m.num_layers * D, B, m.hidden_size, generator=g, device=DEV)
    c0 = torch.randn(m.num_layers * D, B, m.hidden_size, generator=g, device=DEV)

    def step():
        out, (h, c) = m(packed, (h0, c0))
        loss = (out.data.square().sum() + h.sum() + 2 * c.sum())
        return (out.data, h, c), torch.autograd.grad(loss, params)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_outs, graph_grads = step()
    for _ in range(2):
        for t in (packed.data, h0, c0):
            t.copy_(torch.randn(t.shape, generator=g, device=DEV))
        graph.replay()
        eager_outs, eager_grads = step()
        torch.cuda.synchronize()
        for a, b in zip(list(graph_outs) + list(graph_grads), list(eager_outs) + list(eager_grads)):
            torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_packed_lengths_copy_does_not_block_the_host():
    # With the GPU busy for ~50 ms, a packed forward must return (queue its work) well before the GPU is done;
    # a blocking lengths copy would wait for the sleep.
    import time
    m = FastLSTM.from_lstm(make_lstm(CONFIGS["one_layer"], torch.float32))
    packed = pack_padded_sequence(torch.randn(T, B, 16, device=DEV), torch.tensor([T, 5, 4, 2, 1]))
    with torch.no_grad():
        m(packed)
        torch.cuda.synchronize()
        torch.cuda._sleep(100_000_000)
        t = time.perf_counter()
        m(packed)
        queued = time.perf_counter() - t
        torch.cuda.synchronize()
    assert queued < 0.025, f"the packed forward waited {queued * 1e3:.1f} ms for the GPU"


def test_non_default_stream():
    # On a side stream whose inputs are only ready after a long GPU sleep: a kernel launched on any other
    # stream would run before its inputs exist and give a different result.
    m, x, hx, grads = _module_and_data()
    expected = run(m, x, hx, grads)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # ~50 ms of GPU time queued ahead on `side` only
        x_late = x * 1
        got = run(m, x_late, hx, grads)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert_all_close(got, expected, torch.float32)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device_while_current_is_first():
    # The device guard: tensors on cuda:1 while cuda:0 is current must run on cuda:1's stream.
    m0, x, hx, grads = _module_and_data()
    expected = run(m0, x, hx, grads)
    m1 = FastLSTM.from_lstm(m0).to("cuda:1")
    with torch.cuda.device(0):
        got = run(m1, x.to("cuda:1"), tuple(h.to("cuda:1") for h in hx), tuple(g.to("cuda:1") for g in grads))
    assert_all_close({k: v.to("cuda:0") for k, v in got.items()}, expected, torch.float32)


def test_backward_in_eval_mode():
    # cuDNN refuses backward in eval mode; fastlstm's kernels do not care (and this proves they ran).
    m, x, hx, grads = _module_and_data()
    m.eval()
    res = run(m, x, hx, grads)
    assert all(torch.isfinite(v).all() for v in res.values())
