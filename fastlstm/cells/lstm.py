"""FastLSTM (torch.nn.LSTM on fastlstm's fused kernels) and its oracle, lstm_ref.

The cell, in nn.LSTM's gate order i, f, g, o:
    i, f, g, o = σ, σ, tanh, σ of (W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
    c_t = f ⊙ c_{t-1} + i ⊙ g        h_t = o ⊙ tanh(c_t)        (then h_t = W_hr h_t with proj_size)
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..ops import lstm_layer
from ..rnn import Cell, RNNEngine
from .oracle import layer_ref, params_by_name, stack_ref

LSTM_PARAMS = (("weight_ih", None), ("weight_hh", None), ("bias_ih", "bias"), ("bias_hh", "bias"),
               ("weight_hr", "proj_size"))
CELL = Cell(name="FastLSTM", mode="LSTM", ops="lstm", n_states=2, params=LSTM_PARAMS, layer=lstm_layer,
            torch_module=nn.LSTM)


class FastLSTM(RNNEngine, nn.LSTM):
    r"""A drop-in replacement for :class:`torch.nn.LSTM` backed by fused kernels.

    Same constructor, parameters (names, shapes, initialisation), state_dict, checks and error messages as
    nn.LSTM, which it subclasses; only ``forward`` differs. Input and output shapes are nn.LSTM's:
    input [T, B, I] (or [B, T, I] with batch_first, [T, I] unbatched, or a PackedSequence);
    hx = (h_0 [L*D, B, P], c_0 [L*D, B, H]); returns (output [T, B, D*P], (h_n, c_n)).
    Unlike cuDNN's nn.LSTM, backward also works in eval mode.
    """

    cell = CELL

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> "FastLSTM":
        """A FastLSTM with the same configuration, device, dtype and weights (copied) as ``lstm``."""
        return cls._from_module(lstm, proj_size=lstm.proj_size)


# ------------------------------------------------------------------------------------------------- oracle

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
                   compute_dtype: Optional[torch.dtype] = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """One layer, one direction; the same contract as torch.ops.fastlstm.lstm_forward's first 3 outputs.

    input [T, B, I] -> (output [T, B, P], h_n [B, P], c_n [B, H]) in input's dtype. With lengths [B],
    element b only runs steps t < lengths[b]; elsewhere its state is held and its output is zero.
    """
    return layer_ref(lstm_cell_ref, input, (h0, c0), (w_ih, w_hh, b_ih, b_hh, w_hr), lengths, reverse,
                     compute_dtype)


def lstm_ref(input: Tensor, hx: Optional[tuple[Tensor, Tensor]], params: Sequence[tuple], num_layers: int,
             bidirectional: bool = False, lengths: Optional[Tensor] = None,
             compute_dtype: Optional[torch.dtype] = torch.float64) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The stacked LSTM, time-major, no dropout: nn.LSTM's math written out.

    input [T, B, I]; hx = (h0 [L*D, B, P], c0 [L*D, B, H]) or None for zeros; params: one
    (w_ih, w_hh, b_ih, b_hh, w_hr) per layer and direction in nn.LSTM's order.
    Returns (output [T, B, D*P], (h_n [L*D, B, P], c_n [L*D, B, H])).
    """
    LD = num_layers * (2 if bidirectional else 1)
    B = input.shape[1]
    H, P = params[0][1].shape[0] // 4, params[0][1].shape[1]
    if hx is None:
        hx = (input.new_zeros(LD, B, P), input.new_zeros(LD, B, H))
    out, (h, c) = stack_ref(lstm_layer_ref, input, hx, params, num_layers, bidirectional, lengths, compute_dtype)
    return out, (h, c)


def module_params(m: torch.nn.LSTM) -> list[tuple]:
    """An nn.LSTM's (or FastLSTM's) parameters as lstm_ref's `params`."""
    return params_by_name(m, [n for n, _ in LSTM_PARAMS])
