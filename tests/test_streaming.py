"""The streaming path: one time step per module call, the state carried from call to call.

Such a call runs the layer's one-step branch in C++ (csrc/layer.h, one_step_forward) and is made from C++
(csrc/lean_call.cpp, fastlstm._C.lean_call) instead of through torch.ops from Python. These tests hold both
to what the module computes over the whole sequence in one call and to nn.LSTM / nn.GRU, in every cell and
dtype, and hold the direct call to what torch.ops would do: torch function modes and __torch_function__
subclasses still see the op, a needed gradient still gets autograd, the profiler still records the op.
"""
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import fastlstm
from conftest import LOWP_FACTOR, LOWP_SLACK, TOL

T, B, I, H = 7, 2, 12, 10


def _modules():
    """name -> a constructor (dtype) of a one-layer module of every cell and variant with a one-step path."""
    return {
        "lstm": lambda dt: fastlstm.FastLSTM(I, H, dtype=dt),
        "lstm_proj": lambda dt: fastlstm.FastLSTM(I, H, proj_size=4, dtype=dt),
        "lstm_nobias": lambda dt: fastlstm.FastLSTM(I, H, bias=False, dtype=dt),
        "lstm_batch_first": lambda dt: fastlstm.FastLSTM(I, H, batch_first=True, dtype=dt),
        "gru": lambda dt: fastlstm.FastGRU(I, H, dtype=dt),
        "gru_nobias": lambda dt: fastlstm.FastGRU(I, H, bias=False, dtype=dt),
        "peephole": lambda dt: fastlstm.PeepholeLSTM(I, H, dtype=dt),
        "peephole_full": lambda dt: fastlstm.PeepholeLSTM(I, H, peephole="full", dtype=dt),
        "layernorm": lambda dt: fastlstm.LayerNormLSTM(I, H, dtype=dt),
    }


MODULES = _modules()


def _stream(m, x, state=None):
    """Runs m one step per call over x ([T, B, I], or [B, T, I] with batch_first); -> (outputs, last state)."""
    outs = []
    for t in range(x.size(1) if m.batch_first else x.size(0)):
        xt = x[:, t:t + 1] if m.batch_first else x[t:t + 1]
        y, state = m(xt, state)
        outs.append(y)
    return torch.cat(outs, 1 if m.batch_first else 0), state


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", list(MODULES))
def test_streaming_equals_the_whole_sequence_call(name, dtype, mode):
    torch.manual_seed(0)
    m = MODULES[name](dtype)
    x = torch.randn(B, T, I, dtype=dtype) if m.batch_first else torch.randn(T, B, I, dtype=dtype)
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    with ctx():
        want, want_state = m(x)
        got, state = _stream(m, x)
    assert not got.requires_grad
    torch.testing.assert_close(got, want, **TOL[dtype])
    for s, w in zip(_flat(state), _flat(want_state)):
        assert s.shape == w.shape
        torch.testing.assert_close(s, w, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru"])
def test_streaming_matches_torch(kind, dtype):
    """Against nn.LSTM / nn.GRU run the same way; the half types by the low-precision rule (error against a
    float64 run at most LOWP_FACTOR x nn.LSTM's own, + LOWP_SLACK)."""
    torch.manual_seed(1)
    kw = dict(proj_size=4) if kind == "lstm_proj" else {}
    ref = (torch.nn.GRU(I, H) if kind == "gru" else torch.nn.LSTM(I, H, **kw)).to(dtype)
    fast = fastlstm.FastGRU.from_gru(ref) if kind == "gru" else fastlstm.FastLSTM.from_lstm(ref)
    ref64 = (torch.nn.GRU(I, H) if kind == "gru" else torch.nn.LSTM(I, H, **kw)).double()
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    x = torch.randn(T, B, I).to(dtype)
    with torch.inference_mode():
        got, gs = _stream(fast, x)
        theirs, ts = _stream(ref, x)
        exact, es = _stream(ref64, x.double())
    if dtype == torch.float32:
        torch.testing.assert_close(got, theirs, **TOL[dtype])
        for a, b in zip(_flat(gs), _flat(ts)):
            torch.testing.assert_close(a, b, **TOL[dtype])
        return
    for what, ours, ref_, want in [("output", got, theirs, exact)] + [
            (f"state {k}", a, b, c) for k, (a, b, c) in enumerate(zip(_flat(gs), _flat(ts), _flat(es)))]:
        e_ours = (ours.double() - want).abs().max().item()
        e_ref = (ref_.double() - want).abs().max().item()
        assert e_ours <= LOWP_FACTOR * e_ref + LOWP_SLACK[dtype], f"{what}: {e_ours:.3g} vs torch {e_ref:.3g}"


def test_streaming_with_gradients_goes_through_autograd():
    """A step whose parameters need a gradient (grad mode on) is not the direct call's: it returns
    NotImplemented and the layer function runs the forward op; gradients over the streamed steps equal
    nn.LSTM's."""
    torch.manual_seed(2)
    ref = torch.nn.LSTM(I, H).double()
    fast = fastlstm.FastLSTM.from_lstm(ref)
    x = torch.randn(T, B, I, dtype=torch.float64)
    y, (h, c) = _stream(fast, x)
    assert y.requires_grad and h.requires_grad and c.requires_grad
    (y.sum() + h.sum() + c.sum()).backward()
    y2, (h2, c2) = _stream(ref, x)
    (y2.sum() + h2.sum() + c2.sum()).backward()
    torch.testing.assert_close(y, y2, **TOL[torch.float64])
    for p, q in zip(fast.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL[torch.float64])


def test_streaming_input_that_requires_grad_gets_its_gradient():
    torch.manual_seed(3)
    ref = torch.nn.LSTM(I, H).double()
    fast = fastlstm.FastLSTM.from_lstm(ref)
    for p in list(fast.parameters()) + list(ref.parameters()):
        p.requires_grad_(False)
    x = torch.randn(1, B, I, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fast(x)[0].sum(), x)
    (g_ref,) = torch.autograd.grad(ref(x)[0].sum(), x)
    torch.testing.assert_close(g, g_ref, **TOL[torch.float64])


class _SeenOps(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_a_torch_function_mode_still_sees_the_op():
    """torch.ops honours torch function modes; the direct call must not skip them: with a mode active it
    declines and the op goes through torch.ops (fails if lean_call ignored modes)."""
    m = fastlstm.FastLSTM(I, H)
    x = torch.randn(1, B, I)
    with torch.inference_mode():
        want = m(x)[0]
        mode = _SeenOps()
        with mode:
            got = m(x)[0]
    assert any("lstm_inference" in s for s in mode.seen), mode.seen
    torch.testing.assert_close(got, want, rtol=0, atol=0)


class _Tagged(torch.Tensor):
    """A __torch_function__ subclass that counts the fastlstm ops it sees."""
    calls = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if "fastlstm" in str(func):
            cls.calls += 1
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def test_a_torch_function_subclass_weight_still_sees_the_op():
    """A parameter swapped for a __torch_function__ subclass (here through torch.func.functional_call): the
    direct call declines for it, and the subclass sees the op, as through torch.ops."""
    m = fastlstm.FastLSTM(I, H)
    x = torch.randn(1, B, I)
    params = {k: v.detach().as_subclass(_Tagged) for k, v in m.named_parameters()}
    _Tagged.calls = 0
    with torch.inference_mode():
        got = torch.func.functional_call(m, params, (x,))[0]
        want = m(x)[0]
    assert _Tagged.calls >= 1
    torch.testing.assert_close(torch.Tensor(got) if isinstance(got, _Tagged) else got, want, rtol=0, atol=0)


class _DispatchLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_and_the_profiler_see_the_op():
    m = fastlstm.FastLSTM(I, H)
    x = torch.randn(1, B, I)
    with torch.inference_mode():
        log = _DispatchLog()
        with log:
            m(x)
        with torch.profiler.profile() as prof:
            m(x)
    assert any("fastlstm.lstm_inference" in s for s in log.seen), log.seen
    assert "fastlstm::lstm_inference" in {e.key for e in prof.key_averages()}


def test_streaming_errors_are_nn_lstms():
    """The direct call runs only for inputs the lean path accepted; bad states still get nn.LSTM's message."""
    m = fastlstm.FastLSTM(I, H)
    ref = torch.nn.LSTM(I, H)
    x = torch.randn(1, B, I)
    bad = (torch.zeros(1, B + 1, H), torch.zeros(1, B, H))
    with torch.inference_mode():
        with pytest.raises(RuntimeError) as e_ref:
            ref(x, bad)
        with pytest.raises(RuntimeError) as e:
            m(x, bad)
    assert str(e.value) == str(e_ref.value)


@pytest.mark.parametrize("case", ["input_size", "h0_batch", "c0_hidden", "h0_none", "h0_2d"])
def test_streaming_bad_or_unusual_input_is_what_nn_lstm_makes_of_it(case):
    """The direct call leaves every check to the op; whatever the op refuses goes to the general path, which
    gives nn.LSTM's error (dtype mismatches of the states are test_errors.py's: nn.LSTM's own message for them
    differs between its oneDNN path, taken here in inference mode, and its native one)."""
    torch.manual_seed(4)
    ref = torch.nn.LSTM(I, H)
    m = fastlstm.FastLSTM.from_lstm(ref)
    x, h, c = torch.randn(1, B, I), torch.randn(1, B, H), torch.randn(1, B, H)
    args = {"input_size": (torch.randn(1, B, I + 1), (h, c)),
            "h0_batch": (x, (torch.randn(1, B + 1, H), c)), "c0_hidden": (x, (h, torch.randn(1, B, H + 1))),
            "h0_none": (x, (None, c)), "h0_2d": (x, (h[0], c))}[case]
    with torch.inference_mode():
        try:
            want = ref(*args)
        except Exception as e:  # noqa: BLE001 - the test compares whatever nn.LSTM raises
            with pytest.raises(type(e)) as got:
                m(*args)
            assert str(got.value) == str(e)
            return
        got = m(*args)
    torch.testing.assert_close(got[0], want[0], **TOL[torch.float32])
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_lean_call_rejects_bad_arguments_without_crashing():
    from fastlstm import _C
    h = _C.op_handle("lstm_inference")
    with pytest.raises(ValueError, match="lean_call"):
        _C.lean_call(h + 1000, 2, torch.zeros(1, 1, 1))
    with pytest.raises(TypeError, match="lean_call"):
        _C.lean_call(h)
    # The op refuses an argument (w_hh's width): None, for the module's general path to raise torch's error.
    assert _C.lean_call(h, 2, torch.zeros(1, 1, 3), torch.zeros(1, 1, 2), torch.zeros(1, 1, 2),
                        torch.zeros(8, 3), torch.zeros(8, 5), None, None, None, None, False) is None
    # An argument of a kind the op call cannot take: declined, nothing run.
    assert _C.lean_call(h, 1, torch.zeros(1, 1, 3), torch.zeros(1, 1, 2), object()) is NotImplemented
    with pytest.raises(RuntimeError):
        _C.op_handle("no_such_op")
    assert _C.op_handle("lstm_inference") == h  # one entry per op, however many modules ask


def test_streaming_from_several_threads_while_modules_are_made():
    """lean_call releases the GIL during the op while other threads may make new modules (whose first call
    looks up their op): every thread's results equal the single-threaded ones."""
    import threading

    torch.manual_seed(5)
    mods = [MODULES[n](torch.float32) for n in ("lstm", "gru", "peephole", "layernorm")]
    x = torch.randn(T, B, I)
    with torch.inference_mode():
        want = [_stream(m, x)[0] for m in mods]
    errors = []

    def work(k):
        try:
            with torch.inference_mode():
                for _ in range(20):
                    MODULES["gru_nobias"](torch.float32)(x[:1])  # a fresh module: a fresh plan
                    torch.testing.assert_close(_stream(mods[k], x)[0], want[k], rtol=0, atol=0)
        except Exception as e:  # noqa: BLE001 - reported below, with the thread's index
            errors.append((k, e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(mods))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_batch_one_steps_do_not_depend_on_the_thread_split(dtype):
    """The batch-1 GEMV kernels work on blocks of rows (forward, W x) and of columns (backward, dgates W),
    and the threads split those ranges wherever the chunk size falls. Each output must still be summed as
    one alone would be, so one thread and two give the same bits: H = 301 puts the two-thread split of the
    4H rows (at 602) and of the H columns (at 151) inside a block, and I = 37 leaves tails in every sum.
    Checked against nn.LSTM too (float32/float64), so equal-but-wrong cannot pass."""
    torch.manual_seed(0)
    n_in, hid = 37, 301
    ref = torch.nn.LSTM(n_in, hid).to(dtype)
    m = fastlstm.FastLSTM.from_lstm(ref)
    xs = [torch.randn(1, 1, n_in).to(dtype) for _ in range(3)]
    h0 = (torch.randn(1, 1, hid).to(dtype), torch.randn(1, 1, hid).to(dtype))

    def run(mod, threads):
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            state = tuple(s.clone().requires_grad_() for s in h0)
            first, outs, s = state, [], state
            for x in xs:
                y, s = mod(x, s)
                outs.append(y)
            (gh0,) = torch.autograd.grad(torch.cat(outs).float().sum() + s[1].float().sum(), first[0])
            return torch.cat(outs).detach(), s[0].detach(), s[1].detach(), gh0
        finally:
            torch.set_num_threads(prev)

    one, two = run(m, 1), run(m, 2)
    for a, b in zip(one, two):
        assert torch.equal(a, b), "a batch-1 step's result changed with the thread count"
    if dtype in (torch.float32, torch.float64):
        for a, b in zip(two, run(ref, 2)):
            torch.testing.assert_close(a, b, **TOL[dtype])
