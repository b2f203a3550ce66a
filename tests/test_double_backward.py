"""Double backward (issue 12 item 1): the fused backward ops have no derivative of their own, so with
create_graph=True the registered backward recomputes the layer with differentiable torch ops
(fastlstm.ops.composite_layer). These tests hold it to exact second derivatives: gradgradcheck in float64
for every op and every module over the flags, and a gradient-penalty step equal to nn.LSTM's / nn.GRU's."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fastlstm import FastGRU, FastLSTM, LayerNormLSTM, PeepholeLSTM
from fastlstm.ops import CELL_OPS
from test_cell_ops import ROWS, forward_args

T, B, I, H = 3, 2, 2, 2
LENGTHS = torch.tensor([3, 2])


@pytest.mark.parametrize("kind", ["forward", "inference"])
@pytest.mark.parametrize("name", ROWS)
def test_op_gradgradcheck(name, kind):
    row = CELL_OPS[name]
    op = row.op(kind)
    for kw in (dict(), dict(lengths=False, reverse=False, proj=name == "lstm", bias=False)):
        args = forward_args(row, "cpu", requires_grad=True, **kw)
        idx = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]

        def fn(*tensors):
            full = list(args)
            for i, t in zip(idx, tensors):
                full[i] = t
            return op(*full)[:row.n_results]
        assert torch.autograd.gradgradcheck(fn, [args[i] for i in idx], atol=1e-6, fast_mode=True), \
            (name, kind, kw)


def _module(cls, **kw):
    torch.manual_seed(0)
    return cls(I, H, dtype=torch.float64, **kw)


MODULES = [(FastLSTM, {}), (FastLSTM, dict(proj_size=1)), (FastGRU, {}), (PeepholeLSTM, {}),
           (PeepholeLSTM, dict(peephole="full")), (LayerNormLSTM, {})]
# num_layers x bidirectional x packed x hx, in a few representative combinations rather than all (2 cores).
FLAGS = [dict(num_layers=1, bidirectional=False, packed=False, hx=False),
         dict(num_layers=2, bidirectional=True, packed=False, hx=True),
         dict(num_layers=1, bidirectional=True, packed=True, hx=False),
         dict(num_layers=2, bidirectional=False, packed=True, hx=True)]


def _call(m, x, hx, packed, weights=None):
    if packed:
        x = pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
    out, h = m(x, hx) if weights is None else torch.func.functional_call(m, weights, (x, hx))
    if packed:
        out = pad_packed_sequence(out, total_length=T)[0]
    return (out, *(h if isinstance(h, tuple) else (h,)))


def _states(m, g):
    D = 2 if m.bidirectional else 1
    P = getattr(m, "proj_size", 0) or m.hidden_size
    h = torch.randn(m.num_layers * D, B, P, generator=g, dtype=torch.float64).requires_grad_()
    if isinstance(m, FastGRU) or isinstance(m, torch.nn.GRU):
        return h
    return (h, torch.randn(m.num_layers * D, B, m.hidden_size, generator=g, dtype=torch.float64).requires_grad_())


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("cls,kw", MODULES, ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
def test_module_gradgradcheck(cls, kw, flags):
    m = _module(cls, num_layers=flags["num_layers"], bidirectional=flags["bidirectional"], **kw)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64, requires_grad=True)
    hx = _states(m, g) if flags["hx"] else None
    leaves = [x, *(() if hx is None else (hx,) if isinstance(hx, torch.Tensor) else hx)]
    params = list(m.parameters())

    def fn(x, *rest):
        states = rest[:len(leaves) - 1]
        hx_ = None if not states else states[0] if len(states) == 1 else tuple(states)
        # The parameters are inputs too, so the second derivatives in the weights are checked.
        weights = dict(zip([n for n, _ in m.named_parameters()], rest[len(leaves) - 1:]))
        return _call(m, x, hx_, flags["packed"], weights)
    # fast_mode: a random projection of the Jacobians rather than every column (2 shared cores).
    assert torch.autograd.gradgradcheck(fn, (*leaves, *params), atol=1e-6, fast_mode=True)


PAIRS = [(FastLSTM, torch.nn.LSTM, {}), (FastLSTM, torch.nn.LSTM, dict(proj_size=1)),
         (FastGRU, torch.nn.GRU, {})]


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("cls,ref_cls,kw", PAIRS, ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
def test_gradient_penalty_step_equals_torch(cls, ref_cls, kw, flags):
    # WGAN-GP style: the penalty on the input gradient's norm, then backward into the weights.
    torch.manual_seed(0)
    ref = ref_cls(I, H, num_layers=flags["num_layers"], bidirectional=flags["bidirectional"],
                  dtype=torch.float64, **kw)
    m = cls(I, H, num_layers=flags["num_layers"], bidirectional=flags["bidirectional"], dtype=torch.float64, **kw)
    m.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    hx0 = _states(ref, g) if flags["hx"] else None
    grads = []
    for mod in (m, ref):
        x = x0.clone().requires_grad_()
        hx = None if hx0 is None else (hx0.detach().clone().requires_grad_() if isinstance(hx0, torch.Tensor)
                                       else tuple(h.detach().clone().requires_grad_() for h in hx0))
        outs = _call(mod, x, hx, flags["packed"])
        loss = sum((o * o.new_tensor(1.0 + k)).sin().sum() for k, o in enumerate(outs))
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        penalty = (gx.norm(2, dim=2) - 1).pow(2).mean()
        mod.zero_grad()
        penalty.backward()
        grads.append([p.grad for p in mod.parameters()])
    for (n, _), a, b in zip(m.named_parameters(), *grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=n)


def test_float32_gradient_penalty_close_to_torch():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H)
    m = FastLSTM(I, H)
    m.load_state_dict(ref.state_dict())
    x0 = torch.randn(T, B, I)
    grads = []
    for mod in (m, ref):
        x = x0.clone().requires_grad_()
        (gx,) = torch.autograd.grad(mod(x)[0].sum(), x, create_graph=True)
        mod.zero_grad()
        gx.pow(2).sum().backward()
        grads.append([p.grad for p in mod.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_normal_backward_does_not_recompute(monkeypatch):
    # The recomputation is for create_graph only: a plain backward must go to the fused op.
    import fastlstm.ops as ops

    def boom(*a, **k):
        raise AssertionError("composite recomputation ran on the plain backward path")
    monkeypatch.setattr(ops, "_recompute_backward", boom)
    m = FastLSTM(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    m(x)[0].sum().backward()
    assert x.grad is not None
