"""lstm_ref: the slow, obvious oracle that tests compare fastlstm against. Not used by the package itself.

A plain Python loop over time with the textbook cell, computed in float64 (or float32 if asked), built
only from differentiable torch ops so that its gradients come from autograd, independently of our
hand-written backward.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


def lstm_cell_ref(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                  b_hh: Optional[Tensor], w_hr: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """One step. x [B, I], h [B, P], c [B, H] -> (h' [B, P], c' [B, H]); gate order i, f, g, o."""
    gates = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih
    if b_hh is not None:
        gates = gates + b_hh
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    h = o * torch.tanh(c)
    if w_hr is not None:
        h = h @ w_hr.t()
    return h, c


def lstm_layer_ref(input: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih=None, b_hh=None,
                   w_hr=None, lengths: Optional[Tensor] = None, reverse: bool = False,
                   compute_dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """One layer, one direction; the same contract as torch.ops.fastlstm.lstm_forward's first 3 outputs.

    input [T, B, I] -> (output [T, B, P], h_n [B, P], c_n [B, H]) in input's dtype. With lengths [B],
    element b only runs steps t < lengths[b]; elsewhere its state is held and its output is zero.
    """
    dt = input.dtype
    cast = (lambda t: None if t is None else t.to(compute_dtype))
    x, h, c = cast(input), cast(h0), cast(c0)
    w = [cast(t) for t in (w_ih, w_hh, b_ih, b_hh, w_hr)]
    T = x.shape[0]
    outs: list[Optional[Tensor]] = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        h_new, c_new = lstm_cell_ref(x[t], h, c, *w)
        if lengths is not None:
            active = (t < lengths.to(x.device)).unsqueeze(1)
            h = torch.where(active, h_new, h)
            c = torch.where(active, c_new, c)
            outs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
        else:
            h, c = h_new, c_new
            outs[t] = h_new
    out = torch.stack(outs) if T else x.new_zeros(0, x.shape[1], h.shape[1])
    return out.to(dt), h.to(dt), c.to(dt)


def lstm_ref(input: Tensor, hx: Optional[tuple[Tensor, Tensor]], params: Sequence[tuple], num_layers: int,
             bidirectional: bool = False, lengths: Optional[Tensor] = None,
             compute_dtype: torch.dtype = torch.float64) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The stacked LSTM, time-major, no dropout: nn.LSTM's math written out.

    input [T, B, I]; hx = (h0 [L*D, B, P], c0 [L*D, B, H]) or None for zeros; params: one
    (w_ih, w_hh, b_ih, b_hh, w_hr) per layer and direction in nn.LSTM's order.
    Returns (output [T, B, D*P], (h_n [L*D, B, P], c_n [L*D, B, H])).
    """
    D = 2 if bidirectional else 1
    T, B, _ = input.shape
    H = params[0][1].shape[0] // 4
    P = params[0][1].shape[1]
    if hx is None:
        hx = (input.new_zeros(num_layers * D, B, P), input.new_zeros(num_layers * D, B, H))
    x, hs, cs = input, [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            o, h, c = lstm_layer_ref(x, hx[0][k], hx[1][k], *params[k], lengths=lengths, reverse=d == 1,
                                     compute_dtype=compute_dtype)
            outs.append(o)
            hs.append(h)
            cs.append(c)
        x = torch.cat(outs, 2)
    return x, (torch.stack(hs), torch.stack(cs))


def module_params(m: torch.nn.LSTM) -> list[tuple]:
    """An nn.LSTM's (or FastLSTM's) parameters as lstm_ref's `params`."""
    D = 2 if m.bidirectional else 1
    out = []
    for layer in range(m.num_layers):
        for d in range(D):
            s = f"_l{layer}" + ("_reverse" if d else "")
            out.append((getattr(m, "weight_ih" + s), getattr(m, "weight_hh" + s),
                        getattr(m, "bias_ih" + s, None) if m.bias else None,
                        getattr(m, "bias_hh" + s, None) if m.bias else None,
                        getattr(m, "weight_hr" + s, None) if m.proj_size > 0 else None))
    return out


# --------------------------------------------------------------------------------------------------------
# GRU (nn.GRU's math: gate order r, z, n; b_hn inside r * (...)).

def gru_cell_ref(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                 b_hh: Optional[Tensor]) -> Tensor:
    """One step. x [B, I], h [B, H] -> h' [B, H]."""
    gx = x @ w_ih.t()
    gh = h @ w_hh.t()
    if b_ih is not None:
        gx = gx + b_ih
    if b_hh is not None:
        gh = gh + b_hh
    xr, xz, xn = gx.chunk(3, dim=1)
    hr, hz, hn = gh.chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def gru_layer_ref(input: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih=None, b_hh=None,
                  lengths: Optional[Tensor] = None, reverse: bool = False,
                  compute_dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """One GRU layer, one direction; the contract of torch.ops.fastlstm.gru_forward's first 2 outputs.

    input [T, B, I], h0 [B, H] -> (output [T, B, H], h_n [B, H]) in input's dtype. With lengths [B], element
    b only runs steps t < lengths[b]; elsewhere its state is held and its output is zero.
    """
    dt = input.dtype
    cast = (lambda t: None if t is None else t.to(compute_dtype))
    x, h = cast(input), cast(h0)
    w = [cast(t) for t in (w_ih, w_hh, b_ih, b_hh)]
    T = x.shape[0]
    outs: list[Optional[Tensor]] = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        h_new = gru_cell_ref(x[t], h, *w)
        if lengths is not None:
            active = (t < lengths.to(x.device)).unsqueeze(1)
            h = torch.where(active, h_new, h)
            outs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
        else:
            h = h_new
            outs[t] = h_new
    out = torch.stack(outs) if T else x.new_zeros(0, x.shape[1], h.shape[1])
    return out.to(dt), h.to(dt)


def gru_ref(input: Tensor, hx: Optional[Tensor], params: Sequence[tuple], num_layers: int,
            bidirectional: bool = False, lengths: Optional[Tensor] = None,
            compute_dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """The stacked GRU, time-major, no dropout: nn.GRU's math written out.

    input [T, B, I]; hx = h0 [L*D, B, H] or None for zeros; params: one (w_ih, w_hh, b_ih, b_hh) per layer
    and direction in nn.GRU's order (see gru_module_params). Returns (output [T, B, D*H], h_n [L*D, B, H]).
    """
    D = 2 if bidirectional else 1
    T, B, _ = input.shape
    H = params[0][1].shape[1]
    if hx is None:
        hx = input.new_zeros(num_layers * D, B, H)
    x, hs = input, []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            o, h = gru_layer_ref(x, hx[k], *params[k], lengths=lengths, reverse=d == 1,
                                 compute_dtype=compute_dtype)
            outs.append(o)
            hs.append(h)
        x = torch.cat(outs, 2)
    return x, torch.stack(hs)


def gru_module_params(m: torch.nn.GRU) -> list[tuple]:
    """An nn.GRU's (or FastGRU's) parameters as gru_ref's `params`: (w_ih, w_hh, b_ih, b_hh) each."""
    return [p[:4] for p in module_params(m)]


# ------------------------------------- Peephole LSTM (issue 6) -------------------------------------

def _peep(c: Tensor, w: Tensor) -> Tensor:
    """A peephole term: c [B, H] with w [H] (diagonal, elementwise) or [H, H] (full, c @ w^T)."""
    return c * w if w.dim() == 1 else c @ w.t()


def peephole_lstm_cell_ref(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                           b_hh: Optional[Tensor], w_ci: Tensor, w_cf: Tensor,
                           w_co: Tensor) -> tuple[Tensor, Tensor]:
    """One peephole step. x [B, I], h [B, H], c [B, H]; w_ci/w_cf/w_co [H] or [H, H] -> (h' [B, H], c' [B, H]).

    i, f see the previous cell state, o the new one (Gers et al. 2002): gate order i, f, g, o.
    """
    gates = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih
    if b_hh is not None:
        gates = gates + b_hh
    xi, xf, xg, xo = gates.chunk(4, dim=1)
    i = torch.sigmoid(xi + _peep(c, w_ci))
    f = torch.sigmoid(xf + _peep(c, w_cf))
    g = torch.tanh(xg)
    c = f * c + i * g
    o = torch.sigmoid(xo + _peep(c, w_co))
    return o * torch.tanh(c), c


def peephole_lstm_layer_ref(input: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih, b_hh,
                            w_ci: Tensor, w_cf: Tensor, w_co: Tensor, lengths: Optional[Tensor] = None,
                            reverse: bool = False,
                            compute_dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """One peephole layer, one direction: torch.ops.fastlstm.peephole_forward's first 3 outputs.

    input [T, B, I], h0 [B, H], c0 [B, H] -> (output [T, B, H], h_n [B, H], c_n [B, H]) in input's dtype;
    lengths as in lstm_layer_ref. compute_dtype=None computes in the input's own dtype.
    """
    dt = input.dtype
    compute_dtype = compute_dtype or dt
    cast = (lambda t: None if t is None else t.to(compute_dtype))
    x, h, c = cast(input), cast(h0), cast(c0)
    w = [cast(t) for t in (w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co)]
    T = x.shape[0]
    outs: list[Optional[Tensor]] = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h_new, c_new = peephole_lstm_cell_ref(x[t], h, c, *w)
        if lengths is not None:
            active = (t < lengths.to(x.device)).unsqueeze(1)
            h = torch.where(active, h_new, h)
            c = torch.where(active, c_new, c)
            outs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
        else:
            h, c = h_new, c_new
            outs[t] = h_new
    out = torch.stack(outs) if T else x.new_zeros(0, x.shape[1], h.shape[1])
    return out.to(dt), h.to(dt), c.to(dt)


def peephole_lstm_ref(input: Tensor, hx: Optional[tuple[Tensor, Tensor]], params: Sequence[tuple],
                      num_layers: int, bidirectional: bool = False, lengths: Optional[Tensor] = None,
                      compute_dtype: torch.dtype = torch.float64) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The stacked peephole LSTM, time-major, no dropout.

    input [T, B, I]; hx = (h0 [L*D, B, H], c0 [L*D, B, H]) or None for zeros; params: one
    (w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co) per layer and direction in nn.LSTM's order.
    Returns (output [T, B, D*H], (h_n [L*D, B, H], c_n [L*D, B, H])).
    """
    D = 2 if bidirectional else 1
    T, B, _ = input.shape
    H = params[0][1].shape[1]
    if hx is None:
        hx = (input.new_zeros(num_layers * D, B, H), input.new_zeros(num_layers * D, B, H))
    x, hs, cs = input, [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            o, h, c = peephole_lstm_layer_ref(x, hx[0][k], hx[1][k], *params[k], lengths=lengths, reverse=d == 1,
                                              compute_dtype=compute_dtype)
            outs.append(o)
            hs.append(h)
            cs.append(c)
        x = torch.cat(outs, 2)
    return x, (torch.stack(hs), torch.stack(cs))


def peephole_module_params(m: torch.nn.Module) -> list[tuple]:
    """A PeepholeLSTM's parameters as peephole_lstm_ref's `params`."""
    D = 2 if m.bidirectional else 1
    out = []
    for layer in range(m.num_layers):
        for d in range(D):
            s = f"_l{layer}" + ("_reverse" if d else "")
            out.append(tuple(getattr(m, n + s) if hasattr(m, n + s) else None
                             for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                       "weight_ci", "weight_cf", "weight_co")))
    return out
