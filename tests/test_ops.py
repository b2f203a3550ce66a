"""The one-layer ops: gradcheck in float64 through the op itself (its autograd is registered on it; against
finite differences, so the hand-written backward is checked independently of nn.LSTM), lstm_layer against
the pure-PyTorch oracle, and torch.library.opcheck (schema, fake kernels, autograd registration, AOT
dispatch) on every op."""
import pytest
import torch

from conftest import DEVICES, TOL
from fastlstm.ops import lstm_layer
from fastlstm.reference import lstm_layer_ref

# name -> (T, B, I, H, P or 0, bias, lengths or None, reverse)
LAYER_CASES = {
    "plain": (3, 2, 3, 4, 0, True, None, False),
    "reverse": (3, 2, 3, 4, 0, True, None, True),
    "proj": (3, 2, 3, 4, 2, True, None, False),
    "lengths": (4, 3, 2, 3, 0, True, [4, 1, 2], False),
    "lengths-reverse-proj": (4, 3, 2, 3, 2, True, [2, 4, 1], True),
    "no-bias": (3, 2, 3, 4, 0, False, None, False),
    "T1-B1-H1": (1, 1, 2, 1, 0, True, None, False),
}


def layer_args(case, device, dtype=torch.float64, requires_grad=True):
    """Arguments of lstm_layer / the ops for a case: (input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
    reverse); the float tensors are leaves (requiring grad if asked)."""
    T, B, I, H, P, bias, lengths, reverse = LAYER_CASES[case]
    P = P or H
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5).to(device, dtype) \
            .requires_grad_(requires_grad)
    w_hr = r(P, H) if P != H else None
    b_ih, b_hh = (r(4 * H), r(4 * H)) if bias else (None, None)
    lengths = torch.tensor(lengths, device=device) if lengths is not None else None
    return (r(T, B, I), r(B, P), r(B, H), r(4 * H, I), r(4 * H, P), b_ih, b_hh, w_hr, lengths, reverse)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_gradcheck_forward_op(case, device):
    # torch.ops.fastlstm.lstm_forward is differentiable itself (torch.library.register_autograd).
    args = layer_args(case, device)

    # gradcheck differentiates every output; gates and cells are non-differentiable by design.
    def fn(*a):
        return torch.ops.fastlstm.lstm_forward(*a)[:3]
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["proj", "lengths-reverse-proj", "no-bias"])
def test_gradcheck_lstm_layer(case, device):
    assert torch.autograd.gradcheck(lstm_layer, layer_args(case, device), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(LAYER_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_lstm_layer_matches_oracle(case, dtype, device):
    # Forward of both ops (training and inference) against lstm_ref's one-layer loop.
    args = layer_args(case, device, dtype, requires_grad=False)
    expected = lstm_layer_ref(*args[:8], lengths=args[8], reverse=args[9])
    train = torch.ops.fastlstm.lstm_forward(*args)
    infer = torch.ops.fastlstm.lstm_inference(*args)
    for a, b, c in zip(train[:3], infer, expected):
        torch.testing.assert_close(a, c, **TOL[dtype])
        assert torch.equal(a, b), "training and inference ops must compute the same thing"


def backward_sample(case, device):
    args = layer_args(case, device, requires_grad=False)
    out, h_n, c_n, gates, cells = torch.ops.fastlstm.lstm_forward(*args)
    input, h0, c0, w_ih, w_hh, _, _, w_hr, lengths, reverse = args
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(t.shape, generator=g, dtype=t.dtype).to(device) for t in (out, h_n, c_n)]
    return (*grads, input, h0, c0, w_ih, w_hh, w_hr, lengths, out, gates, cells, reverse)


OPCHECK_CASES = ["plain", "reverse", "proj", "lengths-reverse-proj", "no-bias"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", OPCHECK_CASES)
@pytest.mark.parametrize("op", ["lstm_forward", "lstm_inference"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_forward_ops(op, case, requires_grad, device):
    # Samples include the optional arguments as None (no bias, no projection, no lengths) and given.
    args = layer_args(case, device, requires_grad=requires_grad)
    torch.library.opcheck(getattr(torch.ops.fastlstm, op).default, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_backward_op(case, device):
    torch.library.opcheck(torch.ops.fastlstm.lstm_backward.default, backward_sample(case, device))


def non_contiguous(t):
    """The same values in a transposed layout (as a batch_first input reaches the ops)."""
    return t.transpose(0, 1).contiguous().transpose(0, 1) if t is not None and t.dim() >= 2 else t


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["lstm_forward", "lstm_inference", "lstm_backward"])
def test_opcheck_non_contiguous_arguments(op, device):
    # The fake kernels must give the strides the real ones give, whatever the layout of the arguments.
    args = backward_sample("lengths-reverse-proj", device) if op == "lstm_backward" else \
        layer_args("lengths-reverse-proj", device, requires_grad=False)
    args = tuple(non_contiguous(a) if isinstance(a, torch.Tensor) else a for a in args)
    assert not args[3 if op == "lstm_backward" else 0].is_contiguous()
    torch.library.opcheck(getattr(torch.ops.fastlstm, op).default, args)
