"""TEMPORARY: a pure-PyTorch stand-in for the C++ layernorm_lstm ops, for running tests/test_layernorm_lstm.py
before the engine's build has them. Installed only when FASTLSTM_LAYERNORM_STANDIN=1 and the real ops are
missing (tests/conftest.py); never part of the package. Delete once csrc/ registers the ops.

It defines the three schemas exactly as the engine will, and implements them from the oracle's cell (so a
test against the oracle checks the Python plumbing, not kernels). Its saved tensors are its own business:
``gates`` holds the sum of the four additive shifts (β_ih + β_hh + b_ih + b_hh, which the backward op is
not given) and ``cells`` the cell states, from which its backward recomputes through autograd.
"""
import concurrent.futures

import torch

from fastlstm import ops
from fastlstm.cells.layernorm_lstm import layernorm_lstm_cell_ref

SCHEMAS = [
    "layernorm_lstm_forward(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
    "Tensor? b_hh, Tensor ln_ih_w, Tensor ln_ih_b, Tensor ln_hh_w, Tensor ln_hh_b, Tensor ln_c_w, Tensor ln_c_b, "
    "Tensor? lengths, bool reverse, float eps) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, "
    "Tensor cells, Tensor norm_ih, Tensor norm_hh, Tensor stats)",
    "layernorm_lstm_inference(Tensor input, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
    "Tensor? b_hh, Tensor ln_ih_w, Tensor ln_ih_b, Tensor ln_hh_w, Tensor ln_hh_b, Tensor ln_c_w, Tensor ln_c_b, "
    "Tensor? lengths, bool reverse, float eps) -> (Tensor output, Tensor h_n, Tensor c_n)",
    "layernorm_lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor h0, "
    "Tensor c0, Tensor w_ih, Tensor w_hh, Tensor ln_ih_w, Tensor ln_hh_w, Tensor ln_c_w, Tensor ln_c_b, "
    "Tensor? lengths, Tensor output, Tensor gates, Tensor cells, Tensor norm_ih, Tensor norm_hh, Tensor stats, "
    "bool reverse, float eps) -> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, "
    "Tensor grad_w_hh, Tensor grad_bias, Tensor grad_ln_ih_w, Tensor grad_ln_ih_b, Tensor grad_ln_hh_w, "
    "Tensor grad_ln_hh_b, Tensor grad_ln_c_w, Tensor grad_ln_c_b)",
]

_lib = None
_pool = None


def _worker():
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    return _pool


def _run(input, h0, c0, w_ih, w_hh, shift, ln_ih_w, ln_hh_w, ln_c_w, ln_c_b, lengths, reverse, eps):
    """The layer with one additive shift [4H]; returns (output, h_n, c_n, cells [T, B, H]), in acc dtype."""
    acc = ops._acc_dtype(input.dtype)
    cast = (lambda t: t.to(acc))  # noqa: E731
    x, h, c = cast(input), cast(h0), cast(c0)
    w = [cast(t) for t in (w_ih, w_hh)]
    zero = torch.zeros_like(cast(shift))
    T = x.shape[0]
    outs, cells = [None] * T, [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h_new, c_new = layernorm_lstm_cell_ref(x[t], h, c, *w, cast(shift), None, cast(ln_ih_w), zero,
                                               cast(ln_hh_w), zero, cast(ln_c_w), cast(ln_c_b), eps)
        if lengths is not None:
            active = (t < lengths).unsqueeze(1)
            h, c = torch.where(active, h_new, h), torch.where(active, c_new, c)
            outs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
        else:
            h, c = h_new, c_new
            outs[t] = h_new
        cells[t] = c
    return torch.stack(outs), h, c, torch.stack(cells)


def _forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, lengths,
             reverse, eps):
    shift = ln_ih_b + ln_hh_b
    for b in (b_ih, b_hh):
        if b is not None:
            shift = shift + b
    with torch.no_grad():
        out, h, c, cells = _run(input, h0, c0, w_ih, w_hh, shift, ln_ih_w, ln_hh_w, ln_c_w, ln_c_b, lengths,
                                reverse, eps)
    T, B, _ = input.shape
    dt, G = input.dtype, w_ih.shape[0]
    acc = ops._acc_dtype(dt)
    gates = shift.to(dt).expand(T, B, G).contiguous()
    norm = input.new_zeros(T, B, G)
    return (out.to(dt), h.to(dt), c.to(dt), gates, cells.to(acc), norm, norm.clone(),
            input.new_zeros(T, B, 4, dtype=acc))


def _inference(*args):
    return _forward(*args)[:3]


def _backward(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, ln_ih_w, ln_hh_w, ln_c_w, ln_c_b,
              lengths, output, gates, cells, norm_ih, norm_hh, stats, reverse, eps):
    leaves = [t.detach().clone().requires_grad_() for t in (input, h0, c0, w_ih, w_hh, gates[0, 0], ln_ih_w,
                                                            ln_hh_w, ln_c_w, ln_c_b)]
    x, h0_, c0_, wi, wh, shift, gi, gh, gc, bc = leaves
    def recompute():
        out, h, c, _ = _run(x, h0_, c0_, wi, wh, shift, gi, gh, gc, bc, lengths, reverse, eps)
        return torch.autograd.grad((out, h, c), leaves, (grad_output, grad_h_n, grad_c_n), allow_unused=True)

    # A kernel runs below autograd (and under whatever dispatch modes the caller, e.g. opcheck, set up); a
    # separate thread starts from clean thread-local state, where autograd records again. One thread for all.
    grads = _worker().submit(recompute).result()
    gx, gh0, gc0, gwi, gwh, gshift, ggi, ggh, ggc, gbc = [
        (torch.zeros_like(v) if g is None else g).to(v.dtype).contiguous() for g, v in zip(grads, leaves)]
    return gx, gh0, gc0, gwi, gwh, gshift, ggi, gshift.clone(), ggh, gshift.clone(), ggc, gbc


def install() -> None:
    """Define the three ops (if this build lacks them) with CPU kernels from the oracle, and register their
    fakes and autograd through fastlstm.ops' table."""
    global _lib
    if ops.CELL_OPS["layernorm_lstm"].exists():
        return
    _lib = torch.library.Library("fastlstm", "FRAGMENT")
    for schema, fn in zip(SCHEMAS, (_forward, _inference, _backward)):
        _lib.define(schema)
        _lib.impl(schema.split("(")[0], fn, "CPU")
    ops.register_cell("layernorm_lstm")
