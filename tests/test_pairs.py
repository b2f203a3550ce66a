"""A bidirectional layer's two directions at once in inference (issue 13 item 3; csrc/cells/pairs.h): the
*_inference_pair ops run each direction's inference op on one of ATen's 2 threads. Here: the modules take
them exactly where fastlstm.ops.pair_op says (CPU, 2 threads, no gradient needed, no transform or
compiler), their results match nn.LSTM / nn.GRU and the one-direction ops, errors raised on the second
thread reach the caller naming the pair op and the direction, the caller's inference mode reaches the
second thread, and opcheck holds for each op's schema and fake kernel."""
import contextlib

import pytest
import torch
from torch.profiler import profile

import fastlstm
from conftest import DEVICES, TOL
from fastlstm import PeepholeLSTM
from fastlstm.cells.layernorm_lstm import LayerNormLSTM

OPS = torch.ops.fastlstm
# name -> (module factory, the torch reference (None: no torch twin), pair op name)
MODELS = {
    "lstm": (lambda *a, **k: fastlstm.FastLSTM(*a, **k), torch.nn.LSTM, "lstm_inference_pair"),
    "lstm_proj": (lambda *a, **k: fastlstm.FastLSTM(*a, proj_size=3, **k),
                  lambda *a, **k: torch.nn.LSTM(*a, proj_size=3, **k), "lstm_inference_pair"),
    "gru": (lambda *a, **k: fastlstm.FastGRU(*a, **k), torch.nn.GRU, "gru_inference_pair"),
    "peephole": (lambda *a, **k: PeepholeLSTM(*a, peephole="diagonal", **k), None, "peephole_inference_pair"),
    "peephole_full": (lambda *a, **k: PeepholeLSTM(*a, peephole="full", **k), None, "peephole_inference_pair"),
    "layernorm": (lambda *a, **k: LayerNormLSTM(*a, **k), None, "layernorm_lstm_inference_pair"),
}


@contextlib.contextmanager
def threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _ops_called(fn):
    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages() if e.key.startswith("fastlstm::")}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("lengths", [False, True], ids=["padded", "packed"])
def test_pair_matches_reference_and_one_direction_ops(name, mode, lengths):
    make, ref_cls, pair = MODELS[name]
    torch.manual_seed(0)
    m = make(6, 9, 2, bidirectional=True)
    x = torch.randn(11, 5, 6)
    inp = torch.nn.utils.rnn.pack_padded_sequence(x, [11, 9, 9, 4, 1]) if lengths else x
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with threads(2), ctx():
        called = _ops_called(lambda: m(inp))
        got = m(inp)
    assert f"fastlstm::{pair}" in called and not any(k.endswith("_inference") for k in called), called
    # the same module one direction at a time: 1 thread (the pair needs 2), which is also what each
    # direction runs on inside the pair
    with threads(1), ctx():
        assert f"fastlstm::{pair}" not in _ops_called(lambda: m(inp))
        want = m(inp)
    flat = lambda r: [r[0].data if lengths else r[0], *(r[1] if isinstance(r[1], tuple) else (r[1],))]
    for a, b in zip(flat(got), flat(want)):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    if ref_cls is not None:
        ref = ref_cls(6, 9, 2, bidirectional=True)
        ref.load_state_dict(m.state_dict())
        with torch.no_grad():
            expect = ref(inp)
        for a, b in zip(flat(got), flat(expect)):
            torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_pair_in_every_dtype_equals_the_one_direction_ops(dtype):
    torch.manual_seed(0)
    T, B, I, H = 9, 4, 5, 16
    x = torch.randn(T, B, I, dtype=dtype)
    mk = lambda *s: 0.3 * torch.randn(*s, dtype=dtype)
    f = [mk(4 * H, I), mk(4 * H, H), mk(4 * H), mk(4 * H), None]
    r = [mk(4 * H, I), mk(4 * H, H), mk(4 * H), mk(4 * H), None]
    h0, c0, h0r, c0r = mk(B, H), mk(B, H), mk(B, H), mk(B, H)
    with threads(2), torch.inference_mode():
        got = OPS.lstm_inference_pair(x, h0, c0, *f, h0r, c0r, *r, None)
    with threads(1), torch.inference_mode():
        want = (*OPS.lstm_inference(x, h0, c0, *f, None, False), *OPS.lstm_inference(x, h0r, c0r, *r, None, True))
    for a, b in zip(got, want):
        # one direction's code on one thread either way
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_pair_is_not_taken_where_it_should_not_be():
    torch.manual_seed(0)
    m = fastlstm.FastLSTM(4, 8, bidirectional=True)
    x = torch.randn(5, 3, 4)
    with threads(2):
        # training: autograd through the one-direction ops
        assert "fastlstm::lstm_forward" in _ops_called(lambda: m(x)[0].sum().backward())
        assert "fastlstm::lstm_inference_pair" not in _ops_called(lambda: m(x.requires_grad_())[0].sum())
        with torch.no_grad():
            assert "fastlstm::lstm_inference_pair" in _ops_called(lambda: m(x))
        # torch.func: the one-direction ops' own rules
        params = dict(m.named_parameters())
        with torch.no_grad():
            assert "fastlstm::lstm_inference_pair" not in _ops_called(
                lambda: torch.vmap(lambda xx: torch.func.functional_call(m, params, (xx,))[0])(x.unsqueeze(0)))
    for n in (1, 3):
        with threads(n), torch.no_grad():
            assert "fastlstm::lstm_inference_pair" not in _ops_called(lambda: m(x)), n
    # one direction: nothing to pair
    with threads(2), torch.no_grad():
        assert "fastlstm::lstm_inference_pair" not in _ops_called(lambda: fastlstm.FastLSTM(4, 8, 2)(x))


def test_pair_error_in_either_direction_names_the_op_and_direction():
    T, B, I, H = 3, 2, 4, 5
    x = torch.randn(T, B, I)
    w = lambda: [torch.randn(4 * H, I), torch.randn(4 * H, H), None, None, None]
    h, c = torch.zeros(B, H), torch.zeros(B, H)
    bad = torch.zeros(B + 1, H)
    with threads(2), torch.inference_mode():
        # the reverse direction runs on the second thread: its error is raised on the caller's
        with pytest.raises(RuntimeError, match=r"fastlstm::lstm_inference_pair \(reverse direction\): argument 'h0'"):
            OPS.lstm_inference_pair(x, h, c, *w(), bad, c, *w(), None)
        with pytest.raises(RuntimeError, match=r"fastlstm::lstm_inference_pair \(forward direction\): argument 'c0'"):
            OPS.lstm_inference_pair(x, h, bad, *w(), h, c, *w(), None)


def test_inference_mode_reaches_the_second_thread():
    """The reverse direction's tensors are made on the second thread: without the caller's thread-local
    state there they were normal tensors, not inference tensors as in inference mode."""
    T, B, I, H = 4, 3, 4, 5
    x = torch.randn(T, B, I)
    w = lambda: [torch.randn(4 * H, I), torch.randn(4 * H, H), None, None, None]
    h, c = torch.zeros(B, H), torch.zeros(B, H)
    with threads(2), torch.inference_mode():
        out = OPS.lstm_inference_pair(x, h, c, *w(), h, c, *w(), None)
    assert all(t.is_inference() for t in out)


def _pair_args(name):
    torch.manual_seed(0)
    T, B, I, H = 3, 2, 4, 5
    x = torch.randn(T, B, I)
    r = lambda *s: torch.randn(*s)
    if name == "lstm":
        one = lambda: [r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H), None]
        return [x, *one(), *one(), torch.tensor([3, 2])]
    if name == "gru":
        one = lambda: [r(B, H), r(3 * H, I), r(3 * H, H), r(3 * H), r(3 * H)]
        return [x, *one(), *one(), None]
    if name == "peephole":
        one = lambda: [r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H), r(H), r(H), r(H)]
        return [x, *one(), *one(), None]
    one = lambda: [r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), None, None, *[r(4 * H) for _ in range(4)], r(H), r(H)]
    return [x, *one(), *one(), torch.tensor([3, 1]), 1e-5]


@pytest.mark.parametrize("name", ["lstm", "gru", "peephole", "layernorm_lstm"])
def test_opcheck(name):
    op = getattr(OPS, f"{name}_inference_pair").default
    with threads(2):
        torch.library.opcheck(op, tuple(_pair_args(name)), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", DEVICES)
def test_direct_call_on_every_device_equals_the_one_direction_ops(device):
    """Every device has the pair ops (on CUDA they run the directions one after the other); Python picks
    them only on the CPU."""
    torch.manual_seed(0)
    T, B, I, H = 6, 3, 4, 8
    x = torch.randn(T, B, I, device=device)
    mk = lambda *s: 0.3 * torch.randn(*s, device=device)
    f = [mk(3 * H, I), mk(3 * H, H), mk(3 * H), mk(3 * H)]
    r = [mk(3 * H, I), mk(3 * H, H), mk(3 * H), mk(3 * H)]
    h0, h0r = mk(B, H), mk(B, H)
    lengths = torch.tensor([6, 4, 1], device=device)
    with threads(2), torch.inference_mode():
        got = OPS.gru_inference_pair(x, h0, *f, h0r, *r, lengths)
        want = (*OPS.gru_inference(x, h0, *f, lengths, False), *OPS.gru_inference(x, h0r, *r, lengths, True))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
