"""Direct op calls that once returned wrong numbers or crashed (issue 11 items 2, 3, 5, 6, 7), fixed in the
one layer driver (csrc/layer.h): each test here fails on the drivers it replaced."""
import pytest
import torch

import fastlstm

OPS = torch.ops.fastlstm


def _gru_case(T=4, B=3, I=5, H=6, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype) * 0.3  # noqa: E731
    x, h0 = r(T, B, I), r(B, H)
    w_ih, w_hh, b_ih, b_hh = r(3 * H, I), r(3 * H, H), r(3 * H), r(3 * H)
    return x, h0, w_ih, w_hh, b_ih, b_hh


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_fastgru_propagates_nan_like_nn_gru(dtype):
    """Item 2: the GRU's own exp polynomial clamped NaN to a finite number (the row read -1)."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(4, 8, dtype=dtype)
    fast = fastlstm.FastGRU.from_gru(ref)
    x = torch.randn(5, 2, 4, dtype=dtype)
    x[1, 0, 2] = float("nan")
    out_r, h_r = ref(x)
    out_f, h_f = fast(x)
    assert torch.equal(out_f.isnan(), out_r.isnan())
    assert torch.equal(h_f.isnan(), h_r.isnan())
    xf = x.clone().requires_grad_()
    fast(xf)[0].sum().backward()
    assert xf.grad.isnan().any()


def test_gru_backward_reads_noncontiguous_saved_tensors_correctly():
    """Item 3: gru_backward read transposed-layout saved tensors as if contiguous (grad_input off by 3.07)."""
    x, h0, w_ih, w_hh, b_ih, b_hh = _gru_case()
    out, h_n, gates, hn = OPS.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, None, False)
    go, gh = torch.randn_like(out), torch.randn_like(h_n)

    def t_layout(t):  # the same values, stored [B, T, X] and viewed as [T, B, X]
        return t.transpose(0, 1).contiguous().transpose(0, 1)

    ref = OPS.gru_backward(go, gh, x, h0, w_ih, w_hh, None, out, gates, hn, False)
    got = OPS.gru_backward(t_layout(go), gh, t_layout(x), h0, w_ih, w_hh, None, t_layout(out), t_layout(gates),
                           t_layout(hn), False)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("what,shape", [
    ("grad_h_n", (0, 6)), ("grad_h_n", (2, 6)), ("grad_h_n", (3, 5)), ("grad_h_n", (18,)),
    ("gates", (4, 4, 18)), ("hn", (4, 2, 6)), ("output", (4, 3, 5)), ("grad_output", (3, 3, 6)),
])
def test_gru_backward_rejects_malformed_arguments_naming_them(what, shape):
    """Item 5: these read and wrote out of bounds (segfault, heap corruption) or were silently accepted."""
    x, h0, w_ih, w_hh, b_ih, b_hh = _gru_case()
    out, h_n, gates, hn = OPS.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, None, False)
    args = dict(grad_output=torch.randn_like(out), grad_h_n=torch.randn_like(h_n), input=x, h0=h0, w_ih=w_ih,
                w_hh=w_hh, lengths=None, output=out, gates=gates, hn=hn, reverse=False)
    args[what] = torch.randn(*shape)
    with pytest.raises(RuntimeError, match=rf"fastlstm::gru_backward: argument '{what}' must be"):
        OPS.gru_backward(*args.values())


def test_lstm_backward_accepts_an_empty_sequence():
    """Item 6: lstm_backward with T=0 raised IndexError ('select(): index 0 out of range')."""
    B, I, H = 2, 3, 4
    x = torch.randn(0, B, I)
    h0, c0 = torch.randn(B, H), torch.randn(B, H)
    w_ih, w_hh = torch.randn(4 * H, I), torch.randn(4 * H, H)
    out, h_n, c_n, gates, cells = OPS.lstm_forward(x, h0, c0, w_ih, w_hh, None, None, None, None, False)
    dx, dh0, dc0, dw_ih, dw_hh, db, _ = OPS.lstm_backward(torch.zeros(0, B, H), torch.ones(B, H), torch.ones(B, H),
                                                         x, h0, c0, w_ih, w_hh, None, None, out, gates, cells,
                                                         False)
    assert dx.shape == (0, B, I) and torch.equal(dh0, torch.ones(B, H)) and torch.equal(dc0, torch.ones(B, H))
    assert torch.equal(dw_hh, torch.zeros(4 * H, H)) and torch.equal(db, torch.zeros(4 * H))


@pytest.mark.parametrize("op", ["gru_forward", "gru_inference"])
def test_gru_ops_run_on_tensors_that_require_grad(op):
    """Item 6: a direct call on leaves that require grad failed inside ('out= arguments don't support
    automatic differentiation')."""
    args = [t.requires_grad_() for t in _gru_case()]
    res = getattr(OPS, op)(*args, None, False)
    ref = getattr(OPS, op)(*[t.detach() for t in args], None, False)
    for a, b in zip(res, ref):
        torch.testing.assert_close(a.detach(), b)


@pytest.mark.parametrize("bad,pattern", [
    (dict(h0=torch.randn(3, 6, dtype=torch.float64)), r"argument 'h0' must be a Float tensor of shape \[3, 6\]"),
    (dict(w_hh=torch.randn(18, 5)), r"argument 'w_hh' must be a Float tensor of shape \[18, 6\]"),
    (dict(b_ih=torch.randn(17)), r"argument 'b_ih' must be a Float tensor of shape \[18\]"),
    (dict(input=torch.randn(4, 3)), r"argument 'input' must be a 3-D tensor"),
    (dict(lengths=torch.ones(3)), r"argument 'lengths' must be a Long tensor of shape \[3\]"),
])
def test_op_errors_name_the_op_the_argument_and_what_was_expected(bad, pattern):
    """Item 7: errors such as 'expected scalar type Double but found Float' told a user nothing."""
    x, h0, w_ih, w_hh, b_ih, b_hh = _gru_case()
    args = dict(input=x, h0=h0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, lengths=None, reverse=False)
    args.update(bad)
    with pytest.raises(RuntimeError, match=r"fastlstm::gru_forward: " + pattern + ".*, got "):
        OPS.gru_forward(*args.values())
