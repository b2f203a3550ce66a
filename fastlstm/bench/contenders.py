"""What is timed against what. A model (MODELS) is a factory that builds, for one Case, the contenders of its
row with identical weights, device and dtype:

  lstm      FastLSTM      vs nn.LSTM (oneDNN on the CPU, cuDNN on CUDA)  and an nn.LSTMCell loop
  gru       FastGRU       vs nn.GRU                                      and an nn.GRUCell loop
  peephole  PeepholeLSTM  vs its plain PyTorch loop (torch has no peephole LSTM)

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

import torch
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


def _twin(cls: type, case: Case, device: str, **kw) -> tuple[nn.Module, nn.Module]:
    # Two instances of a fastlstm module with the same weights: one to time, one for a baseline to read its
    # parameters from (a separate copy, so the two never share gradient buffers).
    args = (case.I, case.H, case.layers)
    kw.update(bidirectional=case.bidirectional, device=device, dtype=case.torch_dtype)
    m, twin = cls(*args, **kw), cls(*args, **kw)
    twin.load_state_dict(m.state_dict())
    return m, twin


def make_peephole(case: Case, device: str) -> dict[str, nn.Module]:
    """PeepholeLSTM (diagonal) as "fastlstm" and its oracle loop in the "torch" slot (there is no torch
    peephole LSTM). Compare with FastLSTM through the lstm rows of the same run (--models lstm,peephole)."""
    from ..peephole import PeepholeLSTM

    m, twin = _twin(PeepholeLSTM, case, device, peephole="diagonal")
    return {"fastlstm": m, "torch": PeepholeOracle(twin)}


@dataclass(frozen=True)
class Model:
    """One --models entry. build(case, device) -> {contender: module}, a subset of CONTENDERS ("fastlstm"
    always); label names the ratio torch/fast in the report ("baseline/fastlstm module"); packed: whether
    the packed modes apply (the baseline takes a PackedSequence)."""

    name: str
    label: str
    build: Callable[[Case, str], dict[str, nn.Module]]
    packed: bool = False

    def __call__(self, case: Case, device: str) -> dict[str, nn.Module]:
        return self.build(case, device)


MODELS: dict[str, Model] = {m.name: m for m in (
    Model("lstm", "nn.LSTM/FastLSTM", make_lstm, packed=True),
    Model("gru", "nn.GRU/FastGRU", make_gru, packed=True),
    Model("peephole", "oracle loop/PeepholeLSTM", make_peephole),
)}
