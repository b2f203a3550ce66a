"""torch.vmap over fastlstm's modules (issue 12 item 6): over the input, the states, or both, equal to a Python
loop. The ops fold the vmapped dimension into the batch (fastlstm.ops, register_vmap); weights are shared."""
import pytest
import torch

from fastlstm import FastGRU, FastLSTM, LayerNormLSTM, PeepholeLSTM
from fastlstm.ops import CELL_OPS
from test_cell_ops import forward_args

N, T, B, I, H = 3, 4, 2, 3, 4
MODULES = [(FastLSTM, {}), (FastLSTM, dict(proj_size=2)), (FastGRU, {}), (PeepholeLSTM, {}), (LayerNormLSTM, {})]
IDS = ["lstm", "lstm-proj", "gru", "peephole", "layernorm"]


def _module(cls, kw):
    torch.manual_seed(0)
    return cls(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **kw)


def _hx(m, g, lead=()):
    P = getattr(m, "proj_size", 0) or H
    h = torch.randn(*lead, 4, B, P, generator=g, dtype=torch.float64)
    if isinstance(m, FastGRU):
        return h
    return h, torch.randn(*lead, 4, B, H, generator=g, dtype=torch.float64)


def _flat(out):
    y, h = out
    return (y, *(h if isinstance(h, tuple) else (h,)))


@pytest.mark.parametrize("cls,kw", MODULES, ids=IDS)
def test_vmap_over_input_equals_loop(cls, kw):
    m = _module(cls, kw)
    xs = torch.randn(N, T, B, I, dtype=torch.float64)
    got = torch.vmap(lambda x: _flat(m(x)))(xs)
    for k, x in enumerate(xs):
        for a, b in zip(got, _flat(m(x))):
            torch.testing.assert_close(a[k], b)
    # in_dims other than 0: the vmapped dimension in the middle
    got2 = torch.vmap(lambda x: m(x)[0], in_dims=2)(xs.movedim(0, 2))
    torch.testing.assert_close(got2, got[0])


@pytest.mark.parametrize("cls,kw", MODULES, ids=IDS)
def test_vmap_over_hx_and_over_both_equal_loop(cls, kw):
    m = _module(cls, kw)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    xs = torch.randn(N, T, B, I, generator=g, dtype=torch.float64)
    hxs = _hx(m, g, (N,))
    got_h = torch.vmap(lambda hx: _flat(m(x0, hx)))(hxs)
    got_b = torch.vmap(lambda x, hx: _flat(m(x, hx)))(xs, hxs)
    for k in range(N):
        hx = hxs[k] if isinstance(hxs, torch.Tensor) else tuple(h[k] for h in hxs)
        for a, b in zip(got_h, _flat(m(x0, hx))):
            torch.testing.assert_close(a[k], b)
        for a, b in zip(got_b, _flat(m(xs[k], hx))):
            torch.testing.assert_close(a[k], b)


def test_vmap_is_differentiable_in_the_weights():
    m = _module(FastLSTM, {})
    xs = torch.randn(N, T, B, I, dtype=torch.float64)
    torch.vmap(lambda x: m(x)[0])(xs).pow(2).sum().backward()
    got = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    sum(m(x)[0].pow(2).sum() for x in xs).backward()
    for a, p in zip(got, m.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_vmap_over_a_weight_raises_naming_it():
    row = CELL_OPS["lstm"]
    args = forward_args(row, "cpu")
    w = torch.stack([args[3]] * 2)

    def f(w_ih):
        a = list(args)
        a[3] = w_ih
        return row.op("inference")(*a)[0]
    with pytest.raises(RuntimeError, match="fastlstm::lstm_inference: vmap over argument 'w_ih' is not supported"):
        torch.vmap(f)(w)
