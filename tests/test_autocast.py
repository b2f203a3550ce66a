"""Under torch.autocast every fastlstm module returns the dtypes nn.LSTM / nn.GRU return (fastlstm/autocast.py
states torch's rules), computes what it computes in fp32-with-cast-weights, and sends float32 gradients back
to float32 parameters; the weights are cast once per call, not once per time step."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import fastlstm
from conftest import DEVICES
from fastlstm.autocast import torch_lstm_runs_cpu_autocast

BF, HALF = torch.bfloat16, torch.float16
# bfloat16 keeps 8 bits: after a few steps results agree with nn.LSTM's to a couple of bf16 ulps.
LOWP_TOL = {BF: dict(atol=4e-2, rtol=4e-2), HALF: dict(atol=5e-3, rtol=5e-3)}

LSTM_CASES = {
    "plain": dict(),
    "2-layers-bidir-batch_first": dict(num_layers=2, bidirectional=True, batch_first=True),
    "proj": dict(proj_size=3),
    "no-bias": dict(bias=False),
}


def _pair(torch_cls, fast_cls, device, **kw):
    torch.manual_seed(0)
    ref = torch_cls(4, 6, device=device, **kw)
    fast = fast_cls(4, 6, device=device, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _flat(result):
    out, h = result
    out = out.data if hasattr(out, "batch_sizes") else out
    return [out, *(h if isinstance(h, tuple) else (h,))]


def _run(m, x, hx, device, dtype):
    if type(m) is nn.LSTM and device == "cpu" and not torch_lstm_runs_cpu_autocast(dtype) and \
            not isinstance(x, torch.nn.utils.rnn.PackedSequence) and m.proj_size == 0:
        return _flat(_cast_run(m, x, hx, dtype))
    with torch.autocast(device, dtype=dtype):
        return _flat(m(x, hx))


def _cast_run(m, x, hx, dtype):
    """What nn.LSTM computes under CPU autocast where oneDNN's RNN primitive runs (mkldnn_rnn_layer: input,
    states and float32 weights cast to `dtype` once, every output in `dtype`), on a CPU where that primitive
    does not exist for `dtype` (nn.LSTM raises "could not create a primitive descriptor" there: bfloat16 on an
    AMD EPYC Zen 3, AVX2 only): nn.LSTM itself on the cast tensors, autograd through the casts."""
    cast = lambda t: t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t  # noqa: E731
    params = {k: cast(v) for k, v in m.named_parameters()}
    hx = None if hx is None else tuple(cast(h) for h in hx)
    with torch.autocast("cpu", enabled=False):
        return torch.func.functional_call(m, params, (cast(x), hx))


def _input(batch_first, device, unbatched=False):
    torch.manual_seed(1)
    if unbatched:
        return torch.randn(5, 4, device=device)
    return torch.randn((3, 5, 4) if batch_first else (5, 3, 4), device=device)


@pytest.mark.parametrize("name", list(LSTM_CASES))
def test_cpu_bfloat16_lstm_dtypes_values_and_grads_as_nn_lstm(name):
    ref, fast = _pair(nn.LSTM, fastlstm.FastLSTM, "cpu", **LSTM_CASES[name])
    x = _input(ref.batch_first, "cpu")
    results, grads = [], []
    for m in (ref, fast):
        m.zero_grad()
        xx = x.clone().requires_grad_()
        outs = _run(m, xx, None, "cpu", BF)
        sum(o.float().sum() for o in outs).backward()
        results.append(outs)
        grads.append([xx.grad] + [p.grad for p in m.parameters()])
    assert [t.dtype for t in results[1]] == [t.dtype for t in results[0]]
    assert results[0][0].dtype == BF  # the premise: nn.LSTM does cast here
    for a, b in zip(results[1], results[0]):
        torch.testing.assert_close(a.float(), b.float(), **LOWP_TOL[BF])
    for g_fast, g_ref in zip(grads[1], grads[0]):
        assert g_fast.dtype == g_ref.dtype == torch.float32
        torch.testing.assert_close(g_fast, g_ref, atol=0.15, rtol=0.1)


@pytest.mark.parametrize("form", ["given-float32-hx", "unbatched", "packed", "bfloat16-input"])
def test_cpu_bfloat16_input_forms(form):
    ref, fast = _pair(nn.LSTM, fastlstm.FastLSTM, "cpu", num_layers=2)
    x, hx = _input(False, "cpu", unbatched=form == "unbatched"), None
    if form == "given-float32-hx":
        hx = (torch.randn(2, 3, 6), torch.randn(2, 3, 6))
    elif form == "packed":
        x = pack_padded_sequence(x, [5, 3, 2])
    elif form == "bfloat16-input":
        x = x.to(BF)
    want, got = _run(ref, x, hx, "cpu", BF), _run(fast, x, hx, "cpu", BF)
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), **LOWP_TOL[BF])


def test_cpu_gru_is_not_autocast_as_nn_gru():
    ref, fast = _pair(nn.GRU, fastlstm.FastGRU, "cpu", num_layers=2, batch_first=True)
    x = _input(True, "cpu")
    want, got = _run(ref, x, None, "cpu", BF), _run(fast, x, None, "cpu", BF)
    assert [t.dtype for t in want] == [t.dtype for t in got] == [torch.float32] * 2
    # Not autocast at all: exactly fastlstm's float32 results (nn.GRU's own matmuls ran in bf16, hence no
    # tight comparison with it).
    for a, b in zip(got, _flat(fast(x))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **LOWP_TOL[BF])


def test_cpu_float16_as_nn_lstm_without_autograd():
    # nn.LSTM runs CPU float16 autocast at most without autograd (with it, oneDNN raises; fastlstm runs it),
    # and on a CPU without float16 arithmetic not at all: there fastlstm's side is checked, and the parity skips.
    ref, fast = _pair(nn.LSTM, fastlstm.FastLSTM, "cpu")
    x = _input(False, "cpu")
    with torch.no_grad():
        got = _run(fast, x, None, "cpu", HALF)
        want = _run(ref, x, None, "cpu", HALF) if torch_lstm_runs_cpu_autocast(torch.float16) else None
    assert [t.dtype for t in got] == [HALF] * 3
    out = _run(fast, x.requires_grad_(), None, "cpu", HALF)[0]
    out.float().sum().backward()
    assert out.dtype == HALF and fast.weight_ih_l0.grad.dtype == torch.float32
    if want is None:
        pytest.skip("parity part: nn.LSTM under CPU float16 autocast fails on this CPU (oneDNN: 'could not "
                    "create a primitive descriptor'; no avx512_fp16 / amx_fp16)")
    assert [t.dtype for t in want] == [HALF] * 3
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), **LOWP_TOL[HALF])


@pytest.mark.parametrize("cls", [fastlstm.FastLSTM, fastlstm.PeepholeLSTM, fastlstm.LayerNormLSTM])
def test_autocast_equals_running_on_cast_weights(cls):
    # What autocast means: the same kernels on the input, states and weights cast to bf16 once.
    torch.manual_seed(0)
    m = cls(4, 6, num_layers=2, bidirectional=True)
    x, hx = _input(False, "cpu"), (torch.randn(4, 3, 6), torch.randn(4, 3, 6))
    got = _run(m, x, hx, "cpu", BF)
    low = cls(4, 6, num_layers=2, bidirectional=True, dtype=BF)
    low.load_state_dict(m.state_dict())
    want = _flat(low(x.to(BF), tuple(h.to(BF) for h in hx)))
    assert [t.dtype for t in got] == [BF] * 3
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    sum(o.float().sum() for o in got).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())


class _CountCasts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._to_copy.default,):
            self.casts += 1
        return func(*args, **(kwargs or {}))


def test_weights_cast_once_per_call_not_per_step():
    m = fastlstm.FastLSTM(4, 6, num_layers=2)
    n_params = len(list(m.parameters()))
    for T in (2, 20):
        x = torch.randn(T, 3, 4)
        with _CountCasts() as mode, torch.autocast("cpu", dtype=BF):
            m(x)
        # The parameters and the input, whatever the sequence length.
        assert mode.casts == n_params + 1, (T, mode.casts)
    # And the cast copies are not left behind in nn.RNNBase's cached weight list.
    assert all(w is p for w, p in zip(m._flat_weights, m.parameters()))


def test_autocast_off_or_float64_changes_nothing():
    m = fastlstm.FastLSTM(4, 6)
    x = torch.randn(5, 3, 4)
    with torch.autocast("cpu", dtype=BF, enabled=False):
        assert m(x)[0].dtype == torch.float32
    m64 = fastlstm.FastLSTM(4, 6, dtype=torch.float64)
    with torch.autocast("cpu", dtype=BF):  # autocast never touches float64, nor does nn.LSTM's
        assert m64(x.double())[0].dtype == torch.float64


@pytest.mark.parametrize("device", [d for d in DEVICES if getattr(d, "values", [d])[0] == "cuda"])
@pytest.mark.parametrize("dtype", [HALF, BF])
@pytest.mark.parametrize("kind", ["lstm", "gru", "lstm-packed", "lstm-proj"])
def test_cuda_autocast_as_cudnn(kind, dtype, device):
    # cuDNN's autocast casts everything float32 (input, states, weights) for LSTM and GRU alike.
    torch_cls, fast_cls = (nn.GRU, fastlstm.FastGRU) if kind == "gru" else (nn.LSTM, fastlstm.FastLSTM)
    ref, fast = _pair(torch_cls, fast_cls, device, num_layers=2, **({"proj_size": 3} if kind == "lstm-proj" else {}))
    x = _input(False, device)
    if kind == "lstm-packed":
        x = pack_padded_sequence(x, [5, 3, 2])
    want, got = _run(ref, x, None, device, dtype), _run(fast, x, None, device, dtype)
    assert [t.dtype for t in got] == [t.dtype for t in want] == [dtype] * len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), **LOWP_TOL[dtype])


def test_compiled_under_autocast_as_eager():
    # The autocast path traces whole (fullgraph) and gives eager's dtypes and values.
    torch._dynamo.reset()
    m = fastlstm.FastLSTM(4, 6, num_layers=2, batch_first=True)
    x = _input(True, "cpu")
    want = _run(m, x, None, "cpu", BF)
    got = _run(torch.compile(m, fullgraph=True, backend="aot_eager"), x, None, "cpu", BF)
    torch._dynamo.reset()
    assert [t.dtype for t in got] == [t.dtype for t in want] == [BF] * 3
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
