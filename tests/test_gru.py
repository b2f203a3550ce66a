"""FastGRU against torch.nn.GRU (and the gru_ref oracle): outputs, final states and every gradient, every flag."""
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastlstm
from fastlstm import FastGRU
from fastlstm.reference import gru_layer_ref, gru_module_params, gru_ref

from conftest import DEVICES, LOWP_FACTOR, LOWP_SLACK, TOL, native_rnn_reference, one_direction_at_a_time


def _pair(I, H, L=1, bias=True, batch_first=False, bidirectional=False, dropout=0.0, dtype=torch.float32,
          device="cpu", seed=0):
    torch.manual_seed(seed)
    ref = nn.GRU(I, H, L, bias=bias, batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                 device=device, dtype=dtype)
    return ref, FastGRU.from_gru(ref)


def _run(m, x, hx):
    """Forward + backward of a loss touching every output; returns [output, h_n, dx, dhx, *param grads]."""
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else hx.detach().clone().requires_grad_()
    m.zero_grad()
    out, h_n = m(x, hx) if hx is not None else m(x)
    # Weights that differ per element, so that every gradient path is exercised with distinct values.
    w_o = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    w_h = torch.linspace(1, -0.5, h_n.numel(), dtype=out.dtype, device=out.device).view_as(h_n)
    ((out * w_o).sum() + (h_n * w_h).sum()).backward()
    grads = [x.grad] + ([hx.grad] if hx is not None else []) + [p.grad for p in m.parameters()]
    return [out.detach(), h_n.detach()] + grads


def _assert_close_all(got, want, dtype):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, **TOL[dtype], msg=lambda m: f"tensor #{k}: {m}")


CONFIGS = [  # (L, bidirectional, batch_first, bias, with_hx)
    (1, False, False, True, False),
    (1, False, True, True, True),
    (1, True, False, False, True),
    (2, False, False, True, True),
    (2, True, True, True, False),
    (3, True, False, True, True),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L,bi,bf,bias,with_hx", CONFIGS)
def test_matches_nn_gru(device, dtype, L, bi, bf, bias, with_hx):
    T, B, I, H = 7, 3, 5, 6
    ref, fast = _pair(I, H, L, bias, bf, bi, dtype=dtype, device=device)
    x = torch.randn((B, T, I) if bf else (T, B, I), dtype=dtype, device=device)
    hx = torch.randn(L * (2 if bi else 1), B, H, dtype=dtype, device=device) if with_hx else None
    _assert_close_all(_run(fast, x, hx), _run(ref, x, hx), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (1, 4, 3, 2), (9, 1, 2, 17), (4, 5, 33, 9), (3, 2, 8, 64)])
def test_odd_sizes(device, T, B, I, H):
    # H=17, 33 and 9 leave a scalar tail after the SIMD loop; H=64 runs fully vectorized.
    dtype = torch.float64
    ref, fast = _pair(I, H, 1, True, False, True, dtype=dtype, device=device)
    x = torch.randn(T, B, I, dtype=dtype, device=device)
    hx = torch.randn(2, B, H, dtype=dtype, device=device)
    _assert_close_all(_run(fast, x, hx), _run(ref, x, hx), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L,bi", [(1, False), (2, True)])
def test_packed_unsorted(device, dtype, L, bi):
    T, I, H = 6, 4, 5
    lengths = torch.tensor([3, 6, 1, 4, 6])
    ref, fast = _pair(I, H, L, True, True, bi, dtype=dtype, device=device)
    x = torch.randn(len(lengths), T, I, dtype=dtype, device=device)
    hx = torch.randn(L * (2 if bi else 1), len(lengths), H, dtype=dtype, device=device)

    def run(m):
        xx, hh = x.clone().requires_grad_(), hx.clone().requires_grad_()
        m.zero_grad()
        packed = pack_padded_sequence(xx, lengths, batch_first=True, enforce_sorted=False)
        out, h_n = m(packed, hh)
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        assert torch.equal(out.unsorted_indices, packed.unsorted_indices)
        w = torch.linspace(-1, 1, out.data.numel(), dtype=dtype, device=device).view_as(out.data)
        ((out.data * w).sum() + (h_n * h_n).sum()).backward()
        return [out.data.detach(), h_n.detach(), xx.grad, hh.grad] + [p.grad for p in m.parameters()]

    _assert_close_all(run(fast), run(ref), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_hx", [False, True])
def test_unbatched(device, with_hx):
    dtype = torch.float64
    ref, fast = _pair(3, 4, 2, True, False, True, dtype=dtype, device=device)
    x = torch.randn(5, 3, dtype=dtype, device=device)
    hx = torch.randn(4, 4, dtype=dtype, device=device) if with_hx else None
    got, want = _run(fast, x, hx), _run(ref, x, hx)
    assert got[0].shape == (5, 8) and got[1].shape == (4, 4)
    _assert_close_all(got, want, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_inference_paths_match(device):
    # eval + no_grad takes gru_inference (nothing saved); it must equal the training op's forward.
    ref, fast = _pair(4, 5, 2, True, False, True, dtype=torch.float64, device=device)
    x = torch.randn(6, 3, 4, dtype=torch.float64, device=device)
    with torch.no_grad(), one_direction_at_a_time():
        out, h = fast.eval()(x)
        out_ref, h_ref = ref.eval()(x)
    out_t, h_t = fast.train()(x)
    torch.testing.assert_close(out, out_ref, **TOL[torch.float64])
    torch.testing.assert_close(h, h_ref, **TOL[torch.float64])
    assert torch.equal(out, out_t.detach()) and torch.equal(h, h_t.detach())


@pytest.mark.parametrize("device", DEVICES)
def test_backward_in_eval_mode(device):
    ref, fast = _pair(4, 5, 1, True, False, False, dtype=torch.float64, device=device)
    x = torch.randn(6, 3, 4, dtype=torch.float64, device=device)
    # cuDNN has no backward in eval mode; nn.GRU's native kernels do.
    with native_rnn_reference():
        want = _run(ref.eval(), x, None)
    _assert_close_all(_run(fast.eval(), x, None), want, torch.float64)


def test_dropout_matches_nn_gru_given_seed():
    # nn.GRU and FastGRU both apply at::dropout to each non-final layer's output, drawing from the same
    # generator in the same order, so with one seed they drop the same elements.
    dtype = torch.float64
    ref, fast = _pair(4, 5, 3, True, False, True, dropout=0.5, dtype=dtype)
    x = torch.randn(6, 3, 4, dtype=dtype)
    torch.manual_seed(123)
    want = _run(ref, x, None)
    torch.manual_seed(123)
    got = _run(fast, x, None)
    _assert_close_all(got, want, dtype)
    torch.manual_seed(124)
    other = _run(fast, x, None)
    assert not torch.allclose(other[0], got[0]), "a different seed must drop different elements"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_lowp_rule(dtype, device):
    # Error against a float64 oracle may be at most LOWP_FACTOR x nn.GRU's own error in that dtype (+ slack).
    # On CUDA the yardstick is nn.GRU's own CUDA implementation in that dtype.
    T, B, I, H, L = 8, 4, 16, 24, 2
    ref, fast = _pair(I, H, L, True, False, True, dtype=dtype, device=device)
    x = torch.randn(T, B, I, dtype=dtype, device=device)
    hx = torch.randn(2 * L, B, H, dtype=dtype, device=device)
    ref64 = nn.GRU(I, H, L, bidirectional=True, dtype=torch.float64, device=device)
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    exact = _run(ref64, x.double(), hx.double())
    mine, theirs = _run(fast, x, hx), _run(ref, x, hx)
    for k, (m, t, e) in enumerate(zip(mine, theirs, exact)):
        err_m = (m.double() - e).abs().max().item()
        err_t = (t.double() - e).abs().max().item()
        assert err_m <= LOWP_FACTOR * err_t + LOWP_SLACK[dtype], (k, err_m, err_t)


def _layer_inputs(T, B, I, H, bias, dtype=torch.float64, lengths=None):
    g = torch.Generator().manual_seed(1)
    mk = lambda *s: torch.randn(*s, dtype=dtype, generator=g).requires_grad_()  # noqa: E731
    return (mk(T, B, I), mk(B, H), mk(3 * H, I) * 0.5, mk(3 * H, H) * 0.5,
            mk(3 * H) if bias else None, mk(3 * H) if bias else None, lengths)


@pytest.mark.parametrize("bias,reverse,packed", [(True, False, False), (False, True, False), (True, True, True),
                                                 (True, False, True)])
def test_gradcheck_op(bias, reverse, packed):
    lengths = torch.tensor([4, 2, 1]) if packed else None
    inp = list(_layer_inputs(4, 3, 2, 3, bias, lengths=lengths))
    inp = [t.detach().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
           for t in inp]

    def f(*args):
        out, h_n, _, _ = torch.ops.fastlstm.gru_forward(*args, reverse)
        return out, h_n

    assert torch.autograd.gradcheck(f, tuple(inp))


def test_layer_matches_ref_packed_reverse():
    # The op against the oracle directly, where masking and direction interact.
    lengths = torch.tensor([5, 1, 3, 0])
    x, h0, w_ih, w_hh, b_ih, b_hh, _ = _layer_inputs(5, 4, 3, 6, True)
    for reverse in (False, True):
        out, h_n = fastlstm.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
        out_r, h_r = gru_layer_ref(x, h0, w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse)
        torch.testing.assert_close(out, out_r, **TOL[torch.float64])
        torch.testing.assert_close(h_n, h_r, **TOL[torch.float64])
        assert torch.equal(h_n[3], h0[3]), "an element with length 0 keeps h0"


@pytest.mark.parametrize("bias,packed", [(True, False), (False, True)])
def test_opcheck(bias, packed):
    lengths = torch.tensor([3, 1]) if packed else None
    x, h0, w_ih, w_hh, b_ih, b_hh, _ = [t.detach() if isinstance(t, torch.Tensor) else t
                                        for t in _layer_inputs(3, 2, 4, 5, bias, torch.float32)]
    for reverse in (False, True):
        args = (x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
        torch.library.opcheck(torch.ops.fastlstm.gru_inference.default, args)
        torch.library.opcheck(torch.ops.fastlstm.gru_forward.default, args)
        out, h_n, gates, hn = torch.ops.fastlstm.gru_forward(*args)
        bargs = (torch.randn_like(out), torch.randn_like(h_n), x, h0, w_ih, w_hh, lengths, out, gates, hn,
                 reverse)
        torch.library.opcheck(torch.ops.fastlstm.gru_backward.default, bargs)


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    ref, fast = _pair(4, 5, 2, True, True, True)
    x = torch.randn(3, 6, 4)

    def step(m, x):
        out, h = m(x)
        return out.sum() + h.square().sum()

    fast.zero_grad()
    loss = step(fast, x)
    loss.backward()
    eager = [loss.detach()] + [p.grad.clone() for p in fast.parameters()]
    fast.zero_grad()
    # Dynamo refuses every nn.RNNBase subclass unless allow_rnn is set; fastlstm sets it only while Dynamo
    # wraps one of its own modules (fastlstm.rnn._let_dynamo_trace_fastlstm), FastGRU included. aot_eager runs
    # the same capture (Dynamo + fake tensors + AOTAutograd, our fake kernels and the autograd registered on
    # the ops) as inductor without its ~30 s of C++ codegen; inductor was checked by hand to give the same
    # result.
    assert not torch._dynamo.config.allow_rnn
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss_c = compiled(fast, x)
    loss_c.backward()
    got = [loss_c.detach()] + [p.grad for p in fast.parameters()]
    _assert_close_all(got, eager, torch.float32)


def test_state_dict_both_ways_and_repr():
    ref = nn.GRU(3, 4, 2, bias=False, batch_first=True, dropout=0.25, bidirectional=True)
    fast = FastGRU(3, 4, 2, bias=False, batch_first=True, dropout=0.25, bidirectional=True)
    assert isinstance(fast, nn.GRU)
    assert list(fast.state_dict()) == list(ref.state_dict())
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert repr(fast) == repr(ref).replace("GRU(", "FastGRU(", 1)
    fast.load_state_dict(ref.state_dict())
    for (k, a), (_, b) in zip(fast.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    ref2 = nn.GRU(3, 4, 2, bias=False, batch_first=True, dropout=0.25, bidirectional=True)
    ref2.load_state_dict(FastGRU(3, 4, 2, bias=False, batch_first=True, dropout=0.25,
                                 bidirectional=True).state_dict())
    x = torch.randn(2, 5, 3)
    fast.load_state_dict(ref2.state_dict())
    ref2.eval(), fast.eval()
    torch.testing.assert_close(fast(x)[0], ref2(x)[0], **TOL[torch.float32])


def test_from_gru_keeps_config_and_mode():
    ref = nn.GRU(3, 4, 2, dropout=0.1, dtype=torch.float64).eval()
    fast = FastGRU.from_gru(ref)
    assert type(fast) is FastGRU and not fast.training
    assert (fast.input_size, fast.hidden_size, fast.num_layers, fast.dropout) == (3, 4, 2, 0.1)
    assert fast.weight_ih_l0.dtype == torch.float64
    assert fast.weight_ih_l0.data_ptr() != ref.weight_ih_l0.data_ptr(), "weights are copied, not shared"


def test_init_like_nn_gru():
    torch.manual_seed(7)
    ref = nn.GRU(5, 6, 2)
    torch.manual_seed(7)
    fast = FastGRU(5, 6, 2)
    for (k, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), k


def _error_of(fn):
    with pytest.raises(Exception) as e:
        fn()
    return type(e.value), str(e.value)


BAD_CALLS = {
    "4d input": lambda m: m(torch.randn(2, 3, 4, 3)),
    "1d input": lambda m: m(torch.randn(3)),
    "batched, 2d hx": lambda m: m(torch.randn(5, 2, 3), torch.randn(2, 4)),
    "unbatched, 3d hx": lambda m: m(torch.randn(5, 3), torch.randn(2, 1, 4)),
    "wrong input size": lambda m: m(torch.randn(5, 2, 7)),
    "wrong hx batch": lambda m: m(torch.randn(5, 2, 3), torch.randn(2, 3, 4)),
    "wrong hx layers": lambda m: m(torch.randn(5, 2, 3), torch.randn(1, 2, 4)),
    "wrong input dtype": lambda m: m(torch.randn(5, 2, 3, dtype=torch.float64)),
    "wrong hx dtype": lambda m: m(torch.randn(5, 2, 3), torch.randn(2, 2, 4, dtype=torch.float64)),
    "zero steps": lambda m: m(torch.randn(0, 2, 3)),
    "hx tuple": lambda m: m(torch.randn(5, 2, 3), (torch.randn(2, 2, 4),)),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_errors_same_as_nn_gru(case):
    ref, fast = _pair(3, 4, 2)
    want = _error_of(lambda: BAD_CALLS[case](ref))
    got = _error_of(lambda: BAD_CALLS[case](fast))
    assert got == want


def test_convert_swaps_grus_and_lstms():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(3, 4, batch_first=True)
            self.inner = nn.Sequential(nn.Linear(4, 4))
            self.inner.add_module("lstm", nn.LSTM(4, 2))

        def forward(self, x):
            y, _ = self.gru(x)
            return self.inner.lstm(self.inner[0](y))[0]

    net = Net().double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    want = net(x)
    fastlstm.convert(net)
    assert type(net.gru) is FastGRU and type(net.inner.lstm) is fastlstm.FastLSTM
    torch.testing.assert_close(net(x), want, **TOL[torch.float64])
    assert type(fastlstm.convert(nn.GRU(2, 3))) is FastGRU
    already = FastGRU(2, 3)
    assert fastlstm.convert(already) is already


@pytest.mark.parametrize("L,bi,packed", [(1, False, False), (2, True, False), (2, True, True)])
def test_gru_ref_matches_nn_gru(L, bi, packed):
    dtype = torch.float64
    ref, _ = _pair(4, 5, L, True, False, bi, dtype=dtype)
    B = 3
    x = torch.randn(6, B, 4, dtype=dtype)
    hx = torch.randn(L * (2 if bi else 1), B, 5, dtype=dtype)
    lengths = torch.tensor([6, 2, 4]) if packed else None
    out, h_n = gru_ref(x, hx, gru_module_params(ref), L, bi, lengths=lengths)
    if packed:
        p_out, p_h = ref(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
        want_out = torch.nn.utils.rnn.pad_packed_sequence(p_out)[0]
        torch.testing.assert_close(out, want_out, **TOL[dtype])
        torch.testing.assert_close(h_n, p_h, **TOL[dtype])
    else:
        want_out, want_h = ref(x, hx)
        torch.testing.assert_close(out, want_out, **TOL[dtype])
        torch.testing.assert_close(h_n, want_h, **TOL[dtype])


def test_functional_lstm_unchanged_by_generalisation():
    # functional.lstm now delegates to functional.stacked; FastLSTM must still match nn.LSTM exactly.
    torch.manual_seed(0)
    ref = nn.LSTM(3, 5, 2, bidirectional=True, dtype=torch.float64)
    fast = fastlstm.FastLSTM.from_lstm(ref)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    for a, b in zip(itertools.chain.from_iterable([(o, *h) for o, h in [fast(x)]]),
                    itertools.chain.from_iterable([(o, *h) for o, h in [ref(x)]])):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
