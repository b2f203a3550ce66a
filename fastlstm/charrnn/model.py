"""The lesson's CharRNN: one-hot characters -> stacked recurrent layers -> dropout -> Linear -> logits.

The recurrent layers come from ``make_rnn`` (a small factory keyed by cell type and backend), so a new
cell (gru, peephole, ...) is one entry in ``CELLS``; everything else, training included, is unchanged.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cells import FastGRU, FastLSTM, LayerNormLSTM, PeepholeLSTM

BACKENDS = ("fastlstm", "torch")
# --dtype: the compute dtype. The parameters (the optimiser's master weights) stay float32 whatever it is.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Cell:
    """How to build one kind of recurrent stack.

    build(backend, input_size, hidden_size, num_layers, dropout) -> a module with nn.LSTM's calling
    convention: time-major input [T, B, I] and a state -> (output [T, B, H], new state). n_states is how
    many [num_layers, B, H] tensors the state has: 2 means an (h, c) tuple (LSTM), 1 a single tensor (GRU).
    """
    build: Callable[..., nn.Module]
    n_states: int


def _lstm(backend: str, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
    # FastLSTM subclasses nn.LSTM: same constructor, parameter names and initialisation, so for one seed
    # both backends start from the same weights and their state_dicts are interchangeable.
    cls = {"fastlstm": FastLSTM, "torch": nn.LSTM}[backend]
    return cls(input_size, hidden_size, num_layers, dropout=dropout if num_layers > 1 else 0.0)


def _gru(backend: str, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
    cls = {"fastlstm": FastGRU, "torch": nn.GRU}[backend]
    return cls(input_size, hidden_size, num_layers, dropout=dropout if num_layers > 1 else 0.0)


def _fastlstm_only(cls: type, cell: str, what: str) -> Callable[..., nn.Module]:
    def build(backend: str, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
        if backend != "fastlstm":
            # torch.nn has no such cell; a silent substitute would make the comparison meaningless.
            raise ValueError(f"--cell {cell} exists only with --backend fastlstm (torch.nn has no {what})")
        return cls(input_size, hidden_size, num_layers, dropout=dropout if num_layers > 1 else 0.0)
    return build


CELLS: dict[str, Cell] = {
    "lstm": Cell(build=_lstm, n_states=2),
    "gru": Cell(build=_gru, n_states=1),
    "peephole": Cell(build=_fastlstm_only(PeepholeLSTM, "peephole", "peephole LSTM"), n_states=2),
    "layernorm": Cell(build=_fastlstm_only(LayerNormLSTM, "layernorm", "layer-normalised LSTM"), n_states=2),
}


def make_rnn(cell: str, backend: str, input_size: int, hidden_size: int, num_layers: int,
             dropout: float) -> tuple[nn.Module, Cell]:
    """The recurrent stack for ``cell`` on ``backend`` (see Cell for its interface), and its Cell."""
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; choose from {sorted(CELLS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
    spec = CELLS[cell]
    return spec.build(backend, input_size, hidden_size, num_layers, dropout), spec


State = tuple[Tensor, ...]


class CharRNN(nn.Module):
    """Next-character model. forward(x int64 [T, B], state) -> (logits float32 [T, B, V], new state).

    The state is a tuple of ``n_states`` tensors [num_layers, B, hidden] (for an LSTM: (h, c)). Dropout
    sits between recurrent layers (inside the stack) and before the output layer.

    ``dtype`` (a DTYPES name) is the compute dtype: other than float32, forward runs under
    torch.autocast(dtype) on the input's device, so the parameters stay float32 (master weights) and are
    cast once per call, by nn.LSTM / nn.GRU's own autocast rule and FastLSTM's copy of it (fastlstm/
    autocast.py). The logits come back float32 (the loss and the sampling softmax are float32 math, as
    autocast itself does for cross_entropy), and the new state in the dtype the given state was in:
    the carried state stays float32, holding the values the compute dtype produced (the cast up is
    exact), so it is checkpointed, resumed and carried across batches exactly as in a float32 run.
    """

    def __init__(self, vocab_size: int, hidden_size: int = 512, num_layers: int = 2, dropout: float = 0.5,
                 backend: str = "fastlstm", cell: str = "lstm", dtype: str = "float32"):
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {list(DTYPES)}")
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.dtype_name = dtype
        self.rnn, self.cell = make_rnn(cell, backend, vocab_size, hidden_size, num_layers, dropout)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size, vocab_size)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> State:
        """Zeros: n_states tensors [num_layers, batch_size, hidden]."""
        return tuple(torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device, dtype=dtype)
                     for _ in range(self.cell.n_states))

    def autocast(self, device_type: str):
        """The autocast context forward runs under on ``device_type`` (none for float32)."""
        if self.dtype_name == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=DTYPES[self.dtype_name])

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        p = self.fc.weight
        onehot = F.one_hot(x, self.vocab_size).to(p.dtype)
        with self.autocast(x.device.type):
            out, new = self.rnn(onehot, state if self.cell.n_states > 1 else state[0])
            logits = self.fc(self.dropout(out))
        new = tuple(new) if isinstance(new, (tuple, list)) else (new,)
        # Under autocast an LSTM's h_n, c_n come back in the compute dtype (a GRU's on the CPU do not).
        new = tuple(s.to(old.dtype) for s, old in zip(new, state))
        return logits.to(p.dtype), new


def detach(state: State) -> State:
    """The same state cut from the graph: truncated backpropagation through time."""
    return tuple(s.detach() for s in state)
