"""A weight changed in any way between calls is the weight the next call uses (issue 11 item 1).

The CPU path once cached MKL's packed copy of W_hh across calls, keyed on the parameter's TensorImpl and
version counter: writes that bump neither (``p.data.copy_``, ``p.data = ...``, a write through
``.numpy()``, ``vector_to_parameters``) then served the old weights, forward and backward. The shape below
takes that path (float32, batch >= 2, B*4H*P >= 2**19, enough steps)."""
import pytest
import torch
from torch import nn

import fastlstm
from conftest import TOL, max_abs_diff


def _new_weights(p, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(p.shape, generator=g, dtype=p.dtype) * 0.2 - 0.1


def _write_data_copy(p, new):
    p.data.copy_(new)


def _write_data_assign(p, new):
    p.data = new.clone()


def _write_numpy(p, new):
    p.detach().numpy()[...] = new.numpy()


def _write_vector_to_parameters(module, new_by_name):
    flat = torch.cat([new_by_name.get(n, p.detach()).reshape(-1) for n, p in module.named_parameters()])
    nn.utils.vector_to_parameters(flat, module.parameters())


WRITES = {"data.copy_": _write_data_copy, "data=": _write_data_assign, "numpy": _write_numpy,
          "vector_to_parameters": None}


def _apply(kind, module, names, seed):
    new = {n: _new_weights(getattr(module, n), seed + k) for k, n in enumerate(names)}
    if kind == "vector_to_parameters":
        _write_vector_to_parameters(module, new)
    else:
        for n in names:
            WRITES[kind](getattr(module, n), new[n])
    return new


def _run(module, x):
    x = x.detach().clone().requires_grad_()
    out, (h, c) = module(x)
    (out.sum() + h.sum() * 0.5 + c.sum() * 0.25).backward()
    return out, x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("kind", list(WRITES))
@pytest.mark.parametrize("cell", ["lstm", "peephole"])
def test_weights_written_behind_autograds_back_are_used(kind, cell):
    torch.manual_seed(0)
    if cell == "lstm":
        fast = fastlstm.FastLSTM(16, 128)
        names = ["weight_hh_l0", "weight_ih_l0"]
    else:
        fast = fastlstm.PeepholeLSTM(16, 128)
        names = ["weight_hh_l0", "weight_ci_l0"]
    x = torch.randn(5, 8, 16)
    _run(fast, x)  # the first call packs the weights
    fast.zero_grad()
    _apply(kind, fast, names, seed=7)
    # The reference: a fresh module holding the new weights, which has never run.
    if cell == "lstm":
        ref = nn.LSTM(16, 128)
    else:
        ref = fastlstm.PeepholeLSTM(16, 128)
    ref.load_state_dict({k: v.detach().clone() for k, v in fast.state_dict().items()})
    out_f, dx_f, g_f = _run(fast, x)
    out_r, dx_r, g_r = _run(ref, x)
    tol = TOL[torch.float32]["atol"]
    assert max_abs_diff(out_f, out_r) < tol
    assert max_abs_diff(dx_f, dx_r) < tol
    for n in g_r:
        assert max_abs_diff(g_f[n], g_r[n]) < 10 * tol, n
