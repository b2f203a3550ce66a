"""What every cell's oracle (``*_ref``) shares: the loop over time and the stack over layers and directions.

The oracles are slow and obvious on purpose: plain Python loops of differentiable torch ops, computed in
float64 unless asked otherwise, so their gradients come from autograd, independently of the hand-written
backward kernels they check. Nothing in the package runs them; tests (and the benchmark's plain-PyTorch
contender) do.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor


def layer_ref(step: Callable[..., tuple], input: Tensor, states: Sequence[Tensor], weights: Sequence,
              lengths: Optional[Tensor] = None, reverse: bool = False,
              compute_dtype: Optional[torch.dtype] = torch.float64) -> tuple[Tensor, ...]:
    """One layer, one direction, of any cell whose step is ``step(x_t [B, I], *states, *weights) -> new
    states`` with the output being the new first state (h).

    input [T, B, I], states [B, *] each -> (output [T, B, P], *final states) in input's dtype; weights may
    hold None (an absent bias). With lengths [B], element b only runs steps t < lengths[b]; elsewhere its
    state is held and its output is zero. compute_dtype=None computes in the input's own dtype.
    """
    dt = input.dtype
    compute_dtype = compute_dtype or dt

    def cast(t):
        return None if t is None else t.to(compute_dtype)
    x = cast(input)
    st = [cast(s) for s in states]
    w = [cast(t) for t in weights]
    T = x.shape[0]
    outs: list[Optional[Tensor]] = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        new = step(x[t], *st, *w)
        if lengths is not None:
            active = (t < lengths.to(x.device)).unsqueeze(1)
            st = [torch.where(active, n, s) for n, s in zip(new, st)]
            outs[t] = torch.where(active, new[0], torch.zeros_like(new[0]))
        else:
            st = list(new)
            outs[t] = new[0]
    out = torch.stack(outs) if T else x.new_zeros(0, x.shape[1], st[0].shape[1])
    return (out.to(dt), *(s.to(dt) for s in st))


def stack_ref(layer: Callable[..., tuple], input: Tensor, states: Sequence[Tensor], params: Sequence[tuple],
              num_layers: int, bidirectional: bool = False, lengths: Optional[Tensor] = None,
              compute_dtype: Optional[torch.dtype] = torch.float64) -> tuple[Tensor, list[Tensor]]:
    """A one-layer oracle stacked over layers and directions in nn.RNNBase's order, no dropout.

    layer(x, *states_k, *params[k], lengths=..., reverse=..., compute_dtype=...) -> (output, *finals).
    input [T, B, I]; each of states [L*D, B, *]. Returns (output [T, B, D*P], [final states, each stacked
    like its state]).
    """
    D = 2 if bidirectional else 1
    x, finals = input, [[] for _ in states]
    for layer_k in range(num_layers):
        outs = []
        for d in range(D):
            k = layer_k * D + d
            o, *f = layer(x, *(s[k] for s in states), *params[k], lengths=lengths, reverse=d == 1,
                          compute_dtype=compute_dtype)
            outs.append(o)
            for acc, t in zip(finals, f):
                acc.append(t)
        x = torch.cat(outs, 2)
    return x, [torch.stack(f) for f in finals]


def params_by_name(m: torch.nn.Module, names: Sequence[str]) -> list[tuple]:
    """A module's parameters per layer and direction (nn.RNNBase's order), as the oracles take them: for
    each of ``names`` (e.g. "weight_ih"), the parameter with the layer's suffix, or None if there is none."""
    D = 2 if m.bidirectional else 1
    out = []
    for layer in range(m.num_layers):
        for d in range(D):
            s = f"_l{layer}" + ("_reverse" if d else "")
            out.append(tuple(getattr(m, n + s) if hasattr(m, n + s) else None for n in names))
    return out
