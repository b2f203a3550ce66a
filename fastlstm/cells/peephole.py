"""PeepholeLSTM: an LSTM whose gates also see the cell state, on fused kernels (issue 6); and its oracle,
peephole_lstm_ref.

The cell (Gers, Schraudolph & Schmidhuber 2002; the form ONNX's LSTM operator and Keras use), gate order
i, f, g, o as in nn.LSTM, x_* = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh:

    i = sigmoid(x_i + w_ci . c_{t-1})      f = sigmoid(x_f + w_cf . c_{t-1})      g = tanh(x_g)
    c_t = f * c_{t-1} + i * g              o = sigmoid(x_o + w_co . c_t)          h_t = o * tanh(c_t)

`.` is an elementwise product with a vector [H] (peephole="diagonal") or a product with a matrix [H, H]
(peephole="full", c @ w^T). Shapes for one layer in one direction (T steps, B batch, I input, H hidden):
input [T, B, I] time-major; h0, c0 [B, H]; w_ih [4H, I]; w_hh [4H, H]; b_ih, b_hh [4H]; w_ci, w_cf, w_co
[H] or [H, H]; lengths int64 [B] on the input's device (element b is active at step t iff t < lengths[b]).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..ops import peephole_layer
from ..rnn import Cell, CustomRNNBase
from .oracle import layer_ref, params_by_name, stack_ref

PEEPHOLE_MODES = ("diagonal", "full")
PEEPHOLES = ("weight_ci", "weight_cf", "weight_co")
PEEPHOLE_PARAMS = (("weight_ih", None), ("weight_hh", None), ("bias_ih", "bias"), ("bias_hh", "bias"),
                   *((n, None) for n in PEEPHOLES))
CELL = Cell(name="PeepholeLSTM", mode="LSTM", ops="peephole", n_states=2, params=PEEPHOLE_PARAMS,
            layer=peephole_layer)


class PeepholeLSTM(CustomRNNBase):
    r"""A multi-layer LSTM with peephole connections, on fused kernels.

    Constructor, parameters, inputs and outputs are nn.LSTM's (without proj_size), plus ``peephole``:
    ``"diagonal"`` (each gate sees the cell state through a vector [H]) or ``"full"`` (through a matrix
    [H, H]). Parameters per layer k (suffix ``_reverse`` for the backward direction): ``weight_ih_l{k}``
    [4H, I_k], ``weight_hh_l{k}`` [4H, H], ``bias_ih_l{k}``, ``bias_hh_l{k}`` [4H] (if bias), and
    ``weight_ci_l{k}``, ``weight_cf_l{k}``, ``weight_co_l{k}`` ([H] or [H, H]); all initialised
    U(-1/sqrt(H), 1/sqrt(H)) as nn.LSTM does. Input [T, B, I] (or [B, T, I] with batch_first, [T, I]
    unbatched, or a PackedSequence, sorted or not); hx = (h_0, c_0), each [L*D, B, H]; returns
    (output [T, B, D*H], (h_n, c_n)). Dropout is applied between layers in training mode.

    It deliberately does not subclass nn.LSTM: code that checks ``isinstance(m, nn.LSTM)`` does so to treat
    the module as nn.LSTM's math (dynamic quantization swaps it for a quantized LSTM, ONNX export and cuDNN
    read ``_flat_weights`` as the whole cell, fastlstm.FastLSTM.from_lstm copies it), and every one of those
    would silently drop the peepholes. It does share nn.LSTM's argument checks and messages and FastLSTM's
    forward plumbing (fastlstm.rnn.CustomRNNBase). Unlike FastLSTM, there is no torch implementation to fall
    back on: on a device without kernels it raises.
    """

    cell = CELL

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 peephole: str = "diagonal", device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype)
        if peephole not in PEEPHOLE_MODES:
            raise ValueError(f"peephole must be one of {PEEPHOLE_MODES}, got {peephole!r}")
        self.peephole = peephole
        self._make_parameters()

    def _param_shapes(self, layer_input: int) -> dict:
        H = self.hidden_size
        peep = (H,) if self.peephole == "diagonal" else (H, H)
        return {"weight_ih": (4 * H, layer_input), "weight_hh": (4 * H, H), "bias_ih": (4 * H,),
                "bias_hh": (4 * H,), **{n: peep for n in PEEPHOLES}}

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every parameter, peepholes included, as nn.LSTM does."""
        self._uniform_(*self.parameters())

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, peephole: str = "diagonal") -> "PeepholeLSTM":
        """A PeepholeLSTM with ``lstm``'s configuration, device, dtype, mode and weights (copied), and zero
        peepholes, so that it computes exactly what ``lstm`` does until it is trained."""
        if lstm.proj_size > 0:
            raise ValueError("PeepholeLSTM has no proj_size: cannot copy an LSTM with proj_size > 0")
        return cls._from_module(lstm, extra_state=lambda m: {
            n: torch.zeros_like(getattr(m, n)) for n in m._flat_weights_names if n.startswith(PEEPHOLES)},
            peephole=peephole)

    def _extra_repr_suffix(self) -> str:
        return f", peephole={self.peephole!r}"


# ------------------------------------------------------------------------------------------------- oracle

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
                            compute_dtype: Optional[torch.dtype] = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """One peephole layer, one direction: torch.ops.fastlstm.peephole_forward's first 3 outputs.

    input [T, B, I], h0 [B, H], c0 [B, H] -> (output [T, B, H], h_n [B, H], c_n [B, H]) in input's dtype;
    lengths as in lstm_layer_ref. compute_dtype=None computes in the input's own dtype.
    """
    return layer_ref(peephole_lstm_cell_ref, input, (h0, c0), (w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co),
                     lengths, reverse, compute_dtype)


def peephole_lstm_ref(input: Tensor, hx: Optional[tuple[Tensor, Tensor]], params: Sequence[tuple],
                      num_layers: int, bidirectional: bool = False, lengths: Optional[Tensor] = None,
                      compute_dtype: Optional[torch.dtype] = torch.float64) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The stacked peephole LSTM, time-major, no dropout.

    input [T, B, I]; hx = (h0 [L*D, B, H], c0 [L*D, B, H]) or None for zeros; params: one
    (w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co) per layer and direction in nn.LSTM's order.
    Returns (output [T, B, D*H], (h_n [L*D, B, H], c_n [L*D, B, H])).
    """
    LD, B, H = num_layers * (2 if bidirectional else 1), input.shape[1], params[0][1].shape[1]
    if hx is None:
        hx = (input.new_zeros(LD, B, H), input.new_zeros(LD, B, H))
    out, (h, c) = stack_ref(peephole_lstm_layer_ref, input, hx, params, num_layers, bidirectional, lengths,
                            compute_dtype)
    return out, (h, c)


def peephole_module_params(m: torch.nn.Module) -> list[tuple]:
    """A PeepholeLSTM's parameters as peephole_lstm_ref's `params`."""
    return params_by_name(m, [n for n, _ in PEEPHOLE_PARAMS])
