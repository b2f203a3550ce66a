"""What is timed against what. A model (MODELS) is a factory that builds, for one Case, the contenders of its
row with identical weights, device and dtype:

  lstm       FastLSTM       vs nn.LSTM (oneDNN on the CPU, cuDNN on CUDA)  and an nn.LSTMCell loop
  gru        FastGRU        vs nn.GRU                                      and an nn.GRUCell loop
  peephole   PeepholeLSTM   vs its plain PyTorch loop (torch has no peephole LSTM)
  layernorm  LayerNormLSTM  vs LayerNormLSTMLoop: the same model in plain PyTorch (F.layer_norm and a loop
                            over time), what users write today; only in builds that have fastlstm.LayerNormLSTM

Every contender is called as module(x, state) -> (output, state) with state None at the start; "fastlstm" is
always fastlstm's module, "torch" the baseline the ratio column compares it with, "cell_loop" (optional) a
Python loop over a torch cell. In the packed modes x is a PackedSequence and only the models whose baseline
takes one (lstm, gru) run, without the cell loop.

For the half types every contender holds its weights and takes its inputs in that dtype: on the CPU
nn.LSTM then runs oneDNN's bf16/fp16 path, not a float32 one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .cases import Case

CONTENDERS = ("fastlstm", "torch", "cell_loop")


class CellLoop(nn.Module):
    """A stacked, optionally bidirectional RNN run as a Python loop over time of nn.*Cell modules, with the
    weights of a given nn.LSTM/nn.GRU: what people write when they need per-step control.

    forward(x [T, B, I], state) -> (output [T, B, D*H], state); state is (h, c) [L*D, B, H] each for an
    LSTM cell, h [L*D, B, H] for a GRU cell, or None for zeros.
    """

    def __init__(self, rnn: nn.Module, cell_cls: type):
        super().__init__()
        self.num_layers, self.D = rnn.num_layers, 2 if rnn.bidirectional else 1
        self.hidden_size = rnn.hidden_size
        self.has_c = cell_cls is nn.LSTMCell
        p0 = rnn.weight_ih_l0
        self.cells = nn.ModuleList()
        for layer in range(self.num_layers):
            for d in range(self.D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih = getattr(rnn, "weight_ih" + sfx)
                cell = cell_cls(w_ih.shape[1], self.hidden_size, bias=rnn.bias, device=p0.device, dtype=p0.dtype)
                with torch.no_grad():
                    cell.weight_ih.copy_(w_ih)
                    cell.weight_hh.copy_(getattr(rnn, "weight_hh" + sfx))
                    if rnn.bias:
                        cell.bias_ih.copy_(getattr(rnn, "bias_ih" + sfx))
                        cell.bias_hh.copy_(getattr(rnn, "bias_hh" + sfx))
                self.cells.append(cell)

    def forward(self, x: Tensor, state=None):
        T, B = x.shape[0], x.shape[1]
        if state is None:
            z = x.new_zeros(self.num_layers * self.D, B, self.hidden_size)
            state = (z, z) if self.has_c else z
        finals = []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.D):
                k = layer * self.D + d
                s = (state[0][k], state[1][k]) if self.has_c else state[k]
                ys = [None] * T
                for t in (range(T - 1, -1, -1) if d else range(T)):
                    s = self.cells[k](x[t], s)
                    ys[t] = s[0] if self.has_c else s
                outs.append(torch.stack(ys))
                finals.append(s)
            x = outs[0] if self.D == 1 else torch.cat(outs, 2)
        if self.has_c:
            return x, (torch.stack([s[0] for s in finals]), torch.stack([s[1] for s in finals]))
        return x, torch.stack(finals)


def _torch_rnn(case: Case, device: str, rnn_cls: type, cell_cls: type, to_fast: Callable) -> dict[str, nn.Module]:
    # One nn.LSTM/nn.GRU in the case's dtype; fastlstm's module and the cell loop copy its weights, so all
    # three start from the same numbers in the same dtype.
    ref = rnn_cls(case.I, case.H, case.layers, bidirectional=case.bidirectional, device=device,
                  dtype=case.torch_dtype)
    out = {"fastlstm": to_fast(ref), "torch": ref}
    if not case.packed:  # a cell loop takes no PackedSequence
        out["cell_loop"] = CellLoop(ref, cell_cls)
    return out


def make_lstm(case: Case, device: str) -> dict[str, nn.Module]:
    """FastLSTM, nn.LSTM and an nn.LSTMCell loop with identical weights."""
    from ..modules import FastLSTM

    return _torch_rnn(case, device, nn.LSTM, nn.LSTMCell, FastLSTM.from_lstm)


def make_gru(case: Case, device: str) -> dict[str, nn.Module]:
    """FastGRU, nn.GRU and an nn.GRUCell loop with identical weights."""
    from ..gru import FastGRU

    return _torch_rnn(case, device, nn.GRU, nn.GRUCell, FastGRU.from_gru)


class PeepholeOracle(nn.Module):
    """The plain PyTorch loop (fastlstm.reference.peephole_lstm_ref, computed in the input's dtype) over a
    PeepholeLSTM's parameters: torch has no peephole LSTM, so this loop is what a user would otherwise run."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x: Tensor, state=None):
        from ..reference import peephole_lstm_ref, peephole_module_params

        return peephole_lstm_ref(x, state, peephole_module_params(self.m), self.m.num_layers,
                                 self.m.bidirectional, compute_dtype=x.dtype)


def make_peephole(case: Case, device: str) -> dict[str, nn.Module]:
    """PeepholeLSTM (diagonal) as "fastlstm" and its oracle loop in the "torch" slot (there is no torch
    peephole LSTM). Compare with FastLSTM through the lstm rows of the same run (--models lstm,peephole)."""
    from ..peephole import PeepholeLSTM

    kw = dict(bidirectional=case.bidirectional, peephole="diagonal", device=device, dtype=case.torch_dtype)
    m = PeepholeLSTM(case.I, case.H, case.layers, **kw)
    # The oracle reads its parameters from a copy: the two never share gradient buffers.
    twin = PeepholeLSTM(case.I, case.H, case.layers, **kw)
    twin.load_state_dict(m.state_dict())
    return {"fastlstm": m, "torch": PeepholeOracle(twin)}


class LayerNormLSTMLoop(nn.Module):
    r"""The layer-normalised LSTM of Ba et al. 2016 in plain PyTorch: F.layer_norm and a Python loop over time,
    as a user writes it without fastlstm. The baseline fastlstm.LayerNormLSTM is timed against, with the same
    constructor, parameter names and shapes (so state_dicts load both ways) and forward contract.

    Per layer k (suffix ``_reverse`` for the backward direction): ``weight_ih_l{k}`` [4H, I_k],
    ``weight_hh_l{k}`` [4H, H], ``bias_ih_l{k}``, ``bias_hh_l{k}`` [4H] (if bias), ``layernorm_ih_weight_l{k}``,
    ``layernorm_ih_bias_l{k}``, ``layernorm_hh_weight_l{k}``, ``layernorm_hh_bias_l{k}`` [4H],
    ``layernorm_c_weight_l{k}``, ``layernorm_c_bias_l{k}`` [H]. One step, gate order i, f, g, o as nn.LSTM:

        pre = LN(W_ih x_t; ih) + LN(W_hh h_{t-1}; hh) + b_ih + b_hh     (LN over the 4H vector)
        i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of pre's four H-chunks
        c_t = f * c_{t-1} + i * g,    h_t = o * tanh(LN(c_t; c))        (LN over H)

    LN(v; γ, β) = (v - mean v) / sqrt(biased var v + eps) * γ + β. Input [T, B, I] ([B, T, I] with batch_first);
    hx = (h_0, c_0), each [L*D, B, H], or None for zeros; returns (output [T, B, D*H], (h_n, c_n)). Dropout
    (training mode) between layers. No PackedSequence, no unbatched input.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, eps: float = 1e-5,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.eps = bidirectional, eps
        kw = {"device": device, "dtype": dtype}
        H, D = hidden_size, 2 if bidirectional else 1
        for layer in range(num_layers):
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                shapes = {"weight_ih": (4 * H, input_size if layer == 0 else D * H), "weight_hh": (4 * H, H)}
                if bias:
                    shapes.update(bias_ih=(4 * H,), bias_hh=(4 * H,))
                for part, n in (("ih", 4 * H), ("hh", 4 * H), ("c", H)):
                    shapes[f"layernorm_{part}_weight"] = shapes[f"layernorm_{part}_bias"] = (n,)
                for name, shape in shapes.items():
                    self.register_parameter(name + sfx, nn.Parameter(torch.empty(shape, **kw)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.LSTM's U(-1/sqrt(H), 1/sqrt(H)) for the weights and biases; LN scales 1, LN shifts 0."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            with torch.no_grad():
                if not name.startswith("layernorm_"):
                    p.uniform_(-k, k)
                elif "_weight_" in name:
                    p.fill_(1.0)
                else:
                    p.zero_()

    def _layer(self, x: Tensor, h: Tensor, c: Tensor, sfx: str, reverse: bool):
        # x [T, B, I_k], h and c [B, H] -> (output [T, B, H], h_n, c_n)
        H = self.hidden_size
        p = lambda name: getattr(self, name + sfx, None)  # noqa: E731  (None: a bias that bias=False left out)
        # LN(W_ih x_t) depends on x alone, so it is computed for all steps at once, outside the loop: a loop
        # a careful user writes, and a stronger baseline than one re-projecting the input every step.
        pre_x = F.layer_norm(x @ p("weight_ih").t(), (4 * H,), p("layernorm_ih_weight"), p("layernorm_ih_bias"),
                             self.eps)
        if self.bias:
            pre_x = pre_x + (p("bias_ih") + p("bias_hh"))
        outs: list = [None] * x.shape[0]
        for t in (range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])):
            pre = pre_x[t] + F.layer_norm(h @ p("weight_hh").t(), (4 * H,), p("layernorm_hh_weight"),
                                          p("layernorm_hh_bias"), self.eps)
            i, f, g, o = pre.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            c_norm = F.layer_norm(c, (H,), p("layernorm_c_weight"), p("layernorm_c_bias"), self.eps)
            h = torch.sigmoid(o) * torch.tanh(c_norm)
            outs[t] = h
        return torch.stack(outs), h, c

    def forward(self, input: Tensor, hx=None):
        x = input.transpose(0, 1) if self.batch_first else input
        D = 2 if self.bidirectional else 1
        if hx is None:
            z = x.new_zeros(self.num_layers * D, x.shape[1], self.hidden_size)
            hx = (z, z)
        hs, cs = [], []
        for layer in range(self.num_layers):
            if layer:
                x = F.dropout(x, self.dropout, self.training)
            outs = []
            for d in range(D):
                k = layer * D + d
                out, h, c = self._layer(x, hx[0][k], hx[1][k], f"_l{layer}" + ("_reverse" if d else ""), d == 1)
                outs.append(out)
                hs.append(h)
                cs.append(c)
            x = outs[0] if D == 1 else torch.cat(outs, 2)
        return (x.transpose(0, 1) if self.batch_first else x), (torch.stack(hs), torch.stack(cs))


def layernorm_lstm_cls():
    """fastlstm.LayerNormLSTM, or None in a build of fastlstm that does not have it."""
    try:
        from .. import LayerNormLSTM
    except ImportError:
        return None
    return LayerNormLSTM


def make_layernorm(case: Case, device: str) -> dict[str, nn.Module]:
    """fastlstm.LayerNormLSTM and LayerNormLSTMLoop (in the "torch" slot) with identical weights."""
    cls = layernorm_lstm_cls()
    if cls is None:  # the CLI says so before it gets here; this is for direct callers
        raise RuntimeError("fastlstm.LayerNormLSTM is not in this build of fastlstm")
    m = cls(case.I, case.H, case.layers, bidirectional=case.bidirectional, device=device, dtype=case.torch_dtype)
    loop = LayerNormLSTMLoop(case.I, case.H, case.layers, bidirectional=case.bidirectional, device=device,
                             dtype=case.torch_dtype)
    loop.load_state_dict(m.state_dict())  # strict: a parameter the two name differently fails here, loudly
    return {"fastlstm": m, "torch": loop}


@dataclass(frozen=True)
class Model:
    """One --models entry. build(case, device) -> {contender: module}, a subset of CONTENDERS ("fastlstm"
    always); label names the ratio torch/fast in the report ("baseline/fastlstm module"); packed: whether
    the packed modes apply (the baseline takes a PackedSequence); available(): whether this build of
    fastlstm has `requires`, the module it times."""

    name: str
    label: str
    build: Callable[[Case, str], dict[str, nn.Module]]
    packed: bool = False
    requires: str = ""
    available: Callable[[], bool] = lambda: True

    def __call__(self, case: Case, device: str) -> dict[str, nn.Module]:
        return self.build(case, device)


MODELS: dict[str, Model] = {m.name: m for m in (
    Model("lstm", "nn.LSTM/FastLSTM", make_lstm, packed=True, requires="fastlstm.FastLSTM"),
    Model("gru", "nn.GRU/FastGRU", make_gru, packed=True, requires="fastlstm.FastGRU"),
    Model("peephole", "oracle loop/PeepholeLSTM", make_peephole, requires="fastlstm.PeepholeLSTM"),
    Model("layernorm", "LN loop/LayerNormLSTM", make_layernorm, requires="fastlstm.LayerNormLSTM",
          available=lambda: layernorm_lstm_cls() is not None),
)}


def available_models() -> tuple[str, ...]:
    """The models this build can run, in MODELS' order (what --models all means)."""
    return tuple(name for name, m in MODELS.items() if m.available())
