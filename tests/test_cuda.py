"""fastlstm's CUDA kernels on a GPU: parity with nn.LSTM (cuDNN) and with the CPU op, low-precision error,
gradcheck, CUDA-graph capture, streams and devices; every cell at shapes that reach each vector width of the
pointwise kernels; float32 following cuDNN's TF32 flag. Every test here needs a CUDA device and a build with
the CUDA kernels (conftest.HAS_CUDA); elsewhere they skip, and tests/test_cuda_harness.py runs the kernels'
per-element code on the CPU instead.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastlstm
from conftest import HAS_CUDA, LOWP_FACTOR, LOWP_SLACK, NO_CUDA_REASON, TOL, record_error
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


def _capture(step):
    """(graph, step's results inside it): step warmed up on a side stream (as torch.cuda.graph requires), then
    captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph requires
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        res = step()
    return graph, res


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

    graph, (graph_outs, graph_grads) = _capture(step)

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

    graph, (graph_outs, graph_grads) = _capture(step)
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


# ----------------------------------------------------------------------------------------------------------
# Vector widths (issue 16 item 3). The launcher (plan_rows, csrc/cuda/row_kernel.cuh) takes the widest vector
# of 16 bytes of storage type that divides H and suits the pointers' alignment, then, for map passes, halves
# it while fewer than kMinBlocks blocks (row slices of kMapThreads threads) would run; so every small shape
# above runs width 1. These shapes reach each width a storage type has (float64: 2; float32: 2, 4; half types:
# 2, 4, 8), in every cell, for the training forward, its backward and the inference forward: each gives 192
# blocks at its width and 96 at the next, so a minimum block count anywhere from 97 to 192 still picks it;
# test_cuda_plan.py checks that arithmetic against the constants in csrc.

WIDE_T, WIDE_I = 2, 32
WIDE_SHAPES = {2: dict(B=96, H=512), 4: dict(B=96, H=1024), 8: dict(B=192, H=1024)}
WIDE_CASES = [(torch.float64, 2), (torch.float32, 2), (torch.float32, 4)] + [
    (dt, w) for dt in (torch.bfloat16, torch.float16) for w in (2, 4, 8)]


def _find_oracle(*names):
    """The first of `names` found in fastlstm.reference or in a module of fastlstm.cells (where a cell's
    oracle may live beside it), else None."""
    import importlib
    import pkgutil

    import fastlstm.reference as ref_mod
    mods = [ref_mod]
    try:
        cells = importlib.import_module("fastlstm.cells")
        mods += [importlib.import_module(f"fastlstm.cells.{m.name}") for m in pkgutil.iter_modules(cells.__path__)]
    except ImportError:
        pass
    found = [getattr(m, n) for n in names for m in mods if callable(getattr(m, n, None))]
    return found[0] if found else None


def _layernorm_oracle():
    ref = _find_oracle("layernorm_lstm_ref")
    params = _find_oracle("layernorm_lstm_module_params", "layernorm_module_params")
    if ref is None or params is None:
        return None
    return lambda m, x, hx: ref(x, hx, params(m), m.num_layers, m.bidirectional)


def _wide_cells():
    """name -> (make(I, H, dtype) -> module on the CPU, oracle(module, x, state) -> (output, state) or None)."""
    from fastlstm import FastGRU, PeepholeLSTM
    from fastlstm.reference import gru_module_params, gru_ref, peephole_lstm_ref, peephole_module_params

    cells = {
        "lstm": (lambda I, H, dt: FastLSTM(I, H, dtype=dt),
                 lambda m, x, hx: lstm_ref(x, hx, module_params(m), m.num_layers, m.bidirectional)),
        "gru": (lambda I, H, dt: FastGRU(I, H, dtype=dt),
                lambda m, x, h: gru_ref(x, h, gru_module_params(m), m.num_layers, m.bidirectional)),
    }
    for mode in ("diagonal", "full"):
        cells[f"peephole_{mode}"] = (
            lambda I, H, dt, mode=mode: PeepholeLSTM(I, H, peephole=mode, dtype=dt),
            lambda m, x, hx: peephole_lstm_ref(x, hx, peephole_module_params(m), m.num_layers, m.bidirectional))
    if hasattr(fastlstm, "LayerNormLSTM"):
        cells["layernorm_lstm"] = (lambda I, H, dt: fastlstm.LayerNormLSTM(I, H, dtype=dt), _layernorm_oracle())
    return cells


WIDE_CELLS = _wide_cells()


def _wide_id(dtype, width):
    return f"{str(dtype).replace('torch.', '')}-vec{width}-B{WIDE_SHAPES[width]['B']}H{WIDE_SHAPES[width]['H']}"


def _wide_problem(cell: str, dtype, width: int, seed: int = 0):
    """The CPU module (parameters drawn in float64, rounded to dtype), x, the initial state and the upstream
    gradients of (output, *final state), all on the CPU in dtype."""
    make, _ = WIDE_CELLS[cell]
    B, H = WIDE_SHAPES[width]["B"], WIDE_SHAPES[width]["H"]
    torch.manual_seed(seed)
    m = make(WIDE_I, H, torch.float64).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    n_states = 1 if cell == "gru" else 2
    state = tuple(r(1, B, H, scale=0.5) for _ in range(n_states))
    ups = (r(WIDE_T, B, H),) + tuple(r(1, B, H) for _ in range(n_states))
    return m, r(WIDE_T, B, WIDE_I), state, ups


def _wide_run(m, x, state, ups, forward=None) -> dict:
    """Forward + backward (outputs, and the gradients of x, the initial state and every parameter by name),
    plus the no-grad forward (the inference op) when forward is None."""
    x = x.detach().clone().requires_grad_()
    state = tuple(s.detach().clone().requires_grad_() for s in state)
    params = dict(m.named_parameters())
    st = state if len(state) == 2 else state[0]
    out, fin = (forward or m)(x, st)
    fin = fin if isinstance(fin, tuple) else (fin,)
    outs = (out, *fin)
    gs = torch.autograd.grad(outs, [x, *state, *params.values()], ups)
    res = {"output": out.detach(), **{f"state_n{k}": f.detach() for k, f in enumerate(fin)},
           "grad_input": gs[0], **{f"grad_state0{k}": g for k, g in enumerate(gs[1:1 + len(state)])}}
    res.update({"grad_" + n: g for n, g in zip(params, gs[1 + len(state):])})
    if forward is None:
        with torch.no_grad():
            iout, ifin = m(x.detach(), tuple(s.detach() for s in state) if len(state) == 2 else state[0].detach())
        ifin = ifin if isinstance(ifin, tuple) else (ifin,)
        res["inference_output"] = iout
        res.update({f"inference_state_n{k}": f for k, f in enumerate(ifin)})
    return res


_wide_cache: dict = {}


def _wide_results(cell: str, dtype, width: int) -> dict:
    """{'cuda', 'cpu'}: _wide_run of the same module and data on each device, moved to the CPU. Kept for the
    last case only, for the oracle test of the same case that follows."""
    key = (cell, dtype, width)
    if key not in _wide_cache:
        _wide_cache.clear()
        m, x, state, ups = _wide_problem(cell, dtype, width)
        cpu = _wide_run(m, x, state, ups)
        mc = copy.deepcopy(m).to(DEV)
        cuda = {k: v.cpu() for k, v in _wide_run(mc, x.to(DEV), tuple(s.to(DEV) for s in state),
                                                   tuple(u.to(DEV) for u in ups)).items()}
        _wide_cache[key] = {"cpu": cpu, "cuda": cuda}
    return _wide_cache[key]


def _assert_half_close(a, b, dtype, what, norm=3, elem=32):
    # Two correct implementations in a half type differ by their rounding errors: at these shapes the CPU op's
    # own error against float64 is 0.53 eps in norm and at most 7.9 eps x (|element| + mean |element|)
    # anywhere (weight gradients, measured on the CPU), so the difference of two is bounded by 3 eps and
    # 32 eps of the same. A wrong index, lane or tail is off by the values' own size: in norm, or (a single
    # element) elementwise. The float64 oracle test below holds the precise bound.
    eps = torch.finfo(dtype).eps
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), f"{what}: not finite"
    rel = ((a - b).norm() / b.norm()).item()
    assert rel <= norm * eps, f"{what}: relative difference {rel:.3g} > {norm} eps = {norm * eps:.3g}"
    bound = elem * eps * (b.abs() + b.abs().mean())
    bad = (a - b).abs() > bound
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {b.numel()} elements differ, worst |diff| "
        f"{(a - b).abs().max().item():.3g} (bound there {bound.flatten()[(a - b).abs().argmax()].item():.3g})")


@pytest.mark.parametrize("dtype,width", WIDE_CASES, ids=[_wide_id(*c) for c in WIDE_CASES])
@pytest.mark.parametrize("cell", list(WIDE_CELLS))
def test_vector_width_matches_cpu(cell, dtype, width):
    res = _wide_results(cell, dtype, width)
    cpu, cuda = res["cpu"], res["cuda"]
    assert cuda.keys() == cpu.keys()
    for k in cpu:
        assert cuda[k].dtype == dtype, k
        if dtype in TOL:
            torch.testing.assert_close(cuda[k], cpu[k], **TOL[dtype], msg=lambda m, k=k: f"{k}: {m}")
        else:
            _assert_half_close(cuda[k], cpu[k], dtype, k)


@pytest.mark.parametrize("dtype,width", WIDE_CASES, ids=[_wide_id(*c) for c in WIDE_CASES])
@pytest.mark.parametrize("cell", list(WIDE_CELLS))
def test_vector_width_matches_oracle(cell, dtype, width):
    # Half types by the low-precision rule, with the CPU op (same storage rounding points) as the yardstick.
    oracle = WIDE_CELLS[cell][1]
    if oracle is None:
        pytest.skip(f"no float64 oracle for {cell} found (fastlstm.reference or fastlstm.cells); "
                    "test_vector_width_matches_cpu still compares it with the CPU op")
    res = _wide_results(cell, dtype, width)
    m, x, state, ups = _wide_problem(cell, dtype, width)
    m64 = copy.deepcopy(m).double().to(DEV)
    exact = _wide_run(m64, x.double().to(DEV), tuple(s.double().to(DEV) for s in state),
                      tuple(u.double().to(DEV) for u in ups), forward=lambda x, st: oracle(m64, x, st))
    exact = {k: v.cpu() for k, v in exact.items()}
    # The inference forward must compute the training forward's function: same oracle.
    exact.update({"inference_" + k: v for k, v in exact.items() if k == "output" or k.startswith("state_n")})
    cpu, cuda = res["cpu"], res["cuda"]
    assert exact.keys() == cuda.keys()
    for k, e in exact.items():
        if dtype in TOL:
            torch.testing.assert_close(cuda[k], e.to(dtype), **TOL[dtype], msg=lambda m, k=k: f"{k}: {m}")
        else:
            err = (cuda[k].double() - e).abs().max().item()
            base = (cpu[k].double() - e).abs().max().item()
            assert err <= LOWP_FACTOR * base + LOWP_SLACK[dtype], f"{k}: CUDA {err:.3g}, CPU op {base:.3g}"


# ----------------------------------------------------------------------------------------------------------
# float32 and TF32 (issue 16 item 5). nn.LSTM on CUDA computes float32 in TF32 when cuDNN's RNN flag allows
# it (torch.backends.cudnn.allow_tf32, on by default, or torch.backends.cudnn.rnn.fp32_precision = "tf32"),
# whatever torch.backends.cuda.matmul's flag says. FastLSTM follows the same flag, and only that one, so
# swapping one module for the other keeps the precision/speed trade-off a user chose. Each case sets the
# matmul flag to the opposite of cuDNN's, so following the wrong flag fails.

TF32_KEYS = ("output", "grad_input", "grad_weight_ih_l0", "grad_weight_hh_l0")  # a GEMM feeds each
STRICT_MAX = 1e-5  # relative error of true float32 at this size is ~1e-7..1e-6; TF32 (10-bit mantissa) ~1e-4
TF32_RANGE = (2e-5, 5e-3)


def _set_rnn_tf32(api: str, on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = not on
    if api == "allow_tf32":
        torch.backends.cudnn.allow_tf32 = on
    else:
        torch.backends.cudnn.rnn.fp32_precision = "tf32" if on else "ieee"


def _rel_errors(res: dict, exact: dict) -> dict:
    return {k: ((res[k].double() - exact[k]).norm() / exact[k].norm()).item() for k in TF32_KEYS}


def _tf32_modules(cell: str, N: int):
    """(fastlstm module, its cuDNN counterpart or None, float64 copy, oracle(m64, x, state)), same weights."""
    torch.manual_seed(0)
    if cell == "lstm":
        ref = nn.LSTM(N, N, device=DEV)
        fast = FastLSTM.from_lstm(ref)
    elif cell == "gru":
        ref = nn.GRU(N, N, device=DEV)
        fast = fastlstm.FastGRU.from_gru(ref)
    else:  # no cuDNN counterpart: the flag still governs, so every cell keeps one precision rule
        ref, fast = None, fastlstm.PeepholeLSTM(N, N, peephole="diagonal", device=DEV)
    return fast, ref, copy.deepcopy(fast).double(), WIDE_CELLS[cell][1]


@pytest.mark.parametrize("api", ["allow_tf32", "rnn.fp32_precision"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole_diagonal"])
def test_float32_follows_cudnn_tf32_flag(cell, api):
    if api == "rnn.fp32_precision" and not hasattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision"):
        pytest.skip("this torch has no torch.backends.cudnn.rnn.fp32_precision")
    T_, B_, N = 16, 64, 512
    fast, ref, m64, oracle = _tf32_modules(cell, N)
    g = torch.Generator(device=DEV).manual_seed(3)

    def r(*s, scale=1.0):
        return torch.randn(*s, generator=g, device=DEV) * scale

    n_states = 1 if cell == "gru" else 2
    x, state = r(T_, B_, N), tuple(r(1, B_, N, scale=0.5) for _ in range(n_states))
    ups = (r(T_, B_, N),) + tuple(r(1, B_, N) for _ in range(n_states))
    exact = _wide_run(m64, x.double(), tuple(s.double() for s in state), tuple(u.double() for u in ups),
                      forward=lambda x, st: oracle(m64, x, st))

    old_rnn = torch.backends.cudnn.rnn.fp32_precision if api != "allow_tf32" else None
    errs = {}
    try:
        for on in (False, True):
            _set_rnn_tf32(api, on)
            errs[on, "fast"] = _rel_errors(_wide_run(fast, x, state, ups), exact)
            if ref is not None:
                errs[on, "cudnn"] = _rel_errors(_wide_run(ref, x, state, ups, forward=ref), exact)
    finally:
        if old_rnn is not None:
            torch.backends.cudnn.rnn.fp32_precision = old_rnn
    for k in TF32_KEYS:
        off, on = errs[False, "fast"][k], errs[True, "fast"][k]
        record_error(f"float32 rel. error, {cell} strict", off, f"{k}, {api}")
        record_error(f"float32 rel. error, {cell} tf32", on, f"{k}, {api}")
        assert off <= STRICT_MAX, f"{k}: TF32 not allowed by cuDNN's flag, yet error {off:.2e} (matmul flag on)"
        assert on >= 10 * off and TF32_RANGE[0] <= on <= TF32_RANGE[1], (
            f"{k}: cuDNN's flag allows TF32, error {on:.2e} vs {off:.2e} strict: TF32 not used (or broken)")
        if ref is None:
            continue
        cudnn_off, cudnn_on = errs[False, "cudnn"][k], errs[True, "cudnn"][k]
        record_error(f"float32 rel. error, cuDNN {cell} strict", cudnn_off, f"{k}, {api}")
        record_error(f"float32 rel. error, cuDNN {cell} tf32", cudnn_on, f"{k}, {api}")
        if cudnn_on >= 10 * cudnn_off:  # cuDNN itself took TF32 here: fastlstm's error is of its size
            assert on <= 4 * cudnn_on, f"{k}: fastlstm TF32 error {on:.2e}, cuDNN's {cudnn_on:.2e}"


# The layer-norm LSTM's CUDA ops at the same shapes, op against op, until fastlstm.LayerNormLSTM (and its
# oracle) puts the cell in WIDE_CELLS: its gate passes are row reductions (one block per row, the widest
# aligned vector at any shape), the rest map passes like the other cells'.
HAS_LN_OPS = hasattr(torch.ops.fastlstm, "layernorm_lstm_forward")


def _layernorm_op_args(dtype, width, seed=0) -> dict:
    B, H = WIDE_SHAPES[width]["B"], WIDE_SHAPES[width]["H"]
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale + shift).to(dtype)

    G = 4 * H
    return dict(input=r(WIDE_T, B, WIDE_I), h0=r(B, H, scale=0.5), c0=r(B, H, scale=0.5),
                w_ih=r(G, WIDE_I, scale=0.2), w_hh=r(G, H, scale=0.03), b_ih=r(G, scale=0.1), b_hh=r(G, scale=0.1),
                ln_ih_w=r(G, scale=0.1, shift=1.0), ln_ih_b=r(G, scale=0.1), ln_hh_w=r(G, scale=0.1, shift=1.0),
                ln_hh_b=r(G, scale=0.1), ln_c_w=r(H, scale=0.1, shift=1.0), ln_c_b=r(H, scale=0.1), lengths=None,
                reverse=False, eps=1e-5)


def _layernorm_ops(a: dict, device: str, seed=1) -> dict:
    """forward's 8 outputs, inference's 3 and backward's 12 (fed by this device's own forward), on the CPU."""
    a = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in a.items()}
    ops = torch.ops.fastlstm
    fwd = ops.layernorm_lstm_forward(*a.values())
    inf = ops.layernorm_lstm_inference(*a.values())
    g = torch.Generator().manual_seed(seed)
    ups = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(device, t.dtype) for t in fwd[:3]]
    out, h_n, c_n, gates, cells, norm_ih, norm_hh, stats = fwd
    bwd = ops.layernorm_lstm_backward(*ups, a["input"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["ln_ih_w"],
                                      a["ln_hh_w"], a["ln_c_w"], a["ln_c_b"], a["lengths"], out, gates, cells,
                                      norm_ih, norm_hh, stats, a["reverse"], a["eps"])
    names = (["output", "h_n", "c_n", "gates", "cells", "norm_ih", "norm_hh", "stats"]
             + [f"inference_{n}" for n in ("output", "h_n", "c_n")]
             + ["grad_input", "grad_h0", "grad_c0", "grad_w_ih", "grad_w_hh", "grad_bias", "grad_ln_ih_w",
                "grad_ln_ih_b", "grad_ln_hh_w", "grad_ln_hh_b", "grad_ln_c_w", "grad_ln_c_b"])
    return {n: t.cpu() for n, t in zip(names, list(fwd) + list(inf) + list(bwd), strict=True)}


@pytest.mark.skipif(not HAS_LN_OPS, reason="this build has no layernorm_lstm ops")
@pytest.mark.parametrize("dtype,width", WIDE_CASES, ids=[_wide_id(*c) for c in WIDE_CASES])
def test_layernorm_ops_at_vector_widths_match_cpu(dtype, width):
    a = _layernorm_op_args(dtype, width)
    cpu, cuda = _layernorm_ops(a, "cpu"), _layernorm_ops(a, DEV)
    assert cuda.keys() == cpu.keys() and all(cuda[k].dtype == cpu[k].dtype for k in cpu)
    if dtype == torch.float64:
        for k in cpu:
            torch.testing.assert_close(cuda[k], cpu[k], **TOL[dtype], msg=lambda m, k=k: f"{k}: {m}")
        return
    # The layer norms amplify rounding noise (measured on the CPU, the op against itself in float64: float32
    # up to 1.6 x TOL in grad_w_hh; half types 1.1 eps in norm and 14.5 eps elementwise), so closeness gets
    # 4 x TOL, or twice the other cells' half-type bounds; the precise check is the low-precision rule against
    # the op in float64 on the same inputs, the CPU op's own error as yardstick.
    exact = _layernorm_ops({k: v.double() if isinstance(v, torch.Tensor) else v for k, v in a.items()}, "cpu")
    slack = TOL[dtype]["atol"] if dtype in TOL else LOWP_SLACK[dtype]
    for k in cpu:
        if dtype in TOL:
            torch.testing.assert_close(cuda[k], cpu[k], atol=4 * TOL[dtype]["atol"], rtol=4 * TOL[dtype]["rtol"],
                                       msg=lambda m, k=k: f"{k}: {m}")
        else:
            _assert_half_close(cuda[k], cpu[k], dtype, k, norm=6, elem=64)
        err = (cuda[k].double() - exact[k]).abs().max().item()
        base = (cpu[k].double() - exact[k]).abs().max().item()
        assert err <= LOWP_FACTOR * base + slack, f"{k}: CUDA {err:.3g}, CPU op {base:.3g}"


# The persistent fused kernel (issue 14; csrc/cuda/persistent.cuh), switched per call through
# tests/cuda_paths.set_persistent. Shapes of the grid (B <= 64, H <= 1024, I = H), T cut to keep it
# short; the kernel's plan takes them all (batch <= 128, H % 16 == 0).
from cuda_paths import NOT_BUILT, set_persistent  # noqa: E402

PERSISTENT_SHAPES = [(1, 256), (16, 768), (64, 1024)]
PERSISTENT_T = 24


def _persistent_kernel_ran(fn) -> bool:
    """Whether fn() launched one of the persistent kernels (by name, from the profiler's CUDA events)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return any("persist" in e.name for e in prof.events())


@pytest.fixture
def persistent_path():
    """Runs the test with the persistent path on; restores the path the run had (scripts/gpu_check.sh runs
    the suite once with each) after."""
    import os
    was_on = os.environ.get("FASTLSTM_CUDA_PERSISTENT", "0") == "1"
    if set_persistent(True) == NOT_BUILT:
        set_persistent(was_on)
        pytest.skip("this build has no persistent path")
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # float32 takes the persistent path only without TF32
    yield
    torch.backends.cudnn.allow_tf32 = old
    set_persistent(was_on)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("B_,H_", PERSISTENT_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_persistent_path_error_within_cudnns(persistent_path, cell, B_, H_, dtype):
    """Forward, final states and every gradient of the persistent path against float64 (the CPU nn.LSTM /
    nn.GRU on the same rounded weights): at most LOWP_FACTOR x cuDNN's own error in that dtype (+ slack);
    and the persistent kernel really ran."""
    ref_cls, cls = (nn.LSTM, FastLSTM) if cell == "lstm" else (nn.GRU, fastlstm.FastGRU)
    torch.manual_seed(0)
    ref = ref_cls(H_, H_).to(DEV, dtype)
    fast = cls(H_, H_).to(DEV, dtype)
    fast.load_state_dict(ref.state_dict())
    m64 = copy.deepcopy(ref).to("cpu", torch.float64)
    g = torch.Generator().manual_seed(1)
    n_states = 2 if cell == "lstm" else 1

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    x, state = r(PERSISTENT_T, B_, H_), tuple(r(1, B_, H_, scale=0.5) for _ in range(n_states))
    ups = (r(PERSISTENT_T, B_, H_),) + tuple(r(1, B_, H_) for _ in range(n_states))
    exact = _wide_run(m64, x.double(), tuple(s.double() for s in state), tuple(u.double() for u in ups),
                      forward=m64)
    on_dev = (x.to(DEV), tuple(s.to(DEV) for s in state), tuple(u.to(DEV) for u in ups))
    ours = _wide_run(fast, *on_dev, forward=fast)
    assert _persistent_kernel_ran(lambda: _wide_run(fast, *on_dev, forward=fast))
    theirs = _wide_run(ref, *on_dev, forward=ref)
    slack = LOWP_SLACK.get(dtype, 1e-5)
    for k, want in exact.items():
        e_ours = (ours[k].cpu().double() - want).abs().max().item()
        e_cudnn = (theirs[k].cpu().double() - want).abs().max().item()
        record_error(f"persistent {cell} {dtype} vs float64", e_ours, f"{k}, B={B_}, H={H_}")
        assert e_ours <= LOWP_FACTOR * e_cudnn + slack, f"{k}: persistent {e_ours:.3g}, cuDNN {e_cudnn:.3g}"


def test_persistent_path_captured_in_a_cuda_graph(persistent_path):
    """The persistent launches (cooperative grids) capture and replay like the default path's."""
    torch.manual_seed(0)
    m = FastLSTM(256, 256).to(DEV, torch.float16)
    params = list(m.parameters())
    static = [torch.randn(s, device=DEV, dtype=torch.float16) for s in ((16, 8, 256), (1, 8, 256), (1, 8, 256))]

    def step():
        y, (h, c) = m(static[0], (static[1], static[2]))
        return (y, h, c), torch.autograd.grad((y, h, c), params, (torch.ones_like(y), h * 0 + 1, c * 0 + 1))

    assert _persistent_kernel_ran(step)
    graph, (graph_outs, graph_grads) = _capture(step)
    for t in static:
        t.copy_(torch.randn_like(t))
    graph.replay()
    eager_outs, eager_grads = step()
    torch.cuda.synchronize()
    for a, b in zip(list(graph_outs) + list(graph_grads), list(eager_outs) + list(eager_grads)):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)


# ----------------------------------------------------------------------------------------------------------
# Half-type pre-activations in float32 (issue 16 item 4). cuDNN keeps an RNN's gate pre-activations in float32;
# so does fastlstm on CUDA for float16 and bfloat16 (float32-output GEMMs for the input projection and the
# recurrent product, the bias summed in float32), where a half-typed buffer rounds each gate two or three
# times. The forward's relative error against float64 (same half-valued inputs) must then be of cuDNN's size:
# at most PRE_FACTOR times nn.LSTM's / nn.GRU's, with no slack, at a size where those extra roundings showed
# (tests/test_cuda_harness.py measures the old scheme against the new one on the CPU). The training forward
# and the inference forward (no_grad) both.
PRE_FACTOR = 2.0
PRE_T, PRE_B, PRE_N = 32, 16, 256


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru"])
def test_half_forward_error_vs_cudnn(cell, dtype):
    torch.manual_seed(0)
    if cell == "gru":
        m64 = nn.GRU(PRE_N, PRE_N, dtype=torch.float64)
    else:
        m64 = nn.LSTM(PRE_N, PRE_N, proj_size=PRE_N // 4 if cell == "lstm_proj" else 0, dtype=torch.float64)
    with torch.no_grad():
        for p in m64.parameters():
            p.copy_(p.to(dtype))  # the half-typed modules get these values exactly
    ref = copy.deepcopy(m64).to(DEV, dtype)
    fast = (fastlstm.FastGRU.from_gru(ref) if cell == "gru" else FastLSTM.from_lstm(ref))
    g = torch.Generator().manual_seed(1)
    P = m64.proj_size if cell == "lstm_proj" else PRE_N
    x = (torch.randn(PRE_T, PRE_B, PRE_N, generator=g, dtype=torch.float64)).to(dtype)
    h0 = (torch.randn(1, PRE_B, P, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    c0 = (torch.randn(1, PRE_B, PRE_N, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    state = h0 if cell == "gru" else (h0, c0)

    def on(s, dev, dt):
        return tuple(t.to(dev, dt) for t in s) if isinstance(s, tuple) else s.to(dev, dt)

    with torch.no_grad():
        exact, _ = m64(x.double(), on(state, "cpu", torch.float64))  # nn.LSTM/GRU in float64 on the CPU
        theirs, _ = ref(x.to(DEV), on(state, DEV, dtype))
        inf, _ = fast(x.to(DEV), on(state, DEV, dtype))
    xs = x.to(DEV).requires_grad_()
    ours, _ = fast(xs, on(state, DEV, dtype))  # the training forward (the op that saves for backward)

    def rel(y):
        return ((y.detach().cpu().double() - exact).norm() / exact.norm()).item()

    base = rel(theirs)
    record_error(f"{dtype} rel. forward error, cuDNN {cell}", base, "output")
    for what, y in (("training forward", ours), ("inference forward", inf)):
        err = rel(y)
        record_error(f"{dtype} rel. forward error, fastlstm {cell}", err, what)
        assert err <= PRE_FACTOR * base, f"{what}: fastlstm {err:.3g}, cuDNN {base:.3g}"
