"""LayerNormLSTM: the layer-normalised LSTM of Ba, Kiros & Hinton 2016 (section 3.1) on fused kernels, and
its oracle, layernorm_lstm_ref.

The cell, in nn.LSTM's gate order i, f, g, o (LN over the 4H vector for the projections, over H for c):
    pre = LN(W_ih x_t; γ_ih, β_ih) + LN(W_hh h_{t-1}; γ_hh, β_hh) + b_ih + b_hh
    i, f, g, o = σ, σ, tanh, σ of pre's four H-chunks
    c_t = f ⊙ c_{t-1} + i ⊙ g        h_t = o ⊙ tanh(LN(c_t; γ_c, β_c))
LN(a; γ, β) = (a − mean(a)) / sqrt(var(a) + eps) · γ + β, with the biased variance. c_n is the cell state
before its layer norm.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import init

from ..ops import layernorm_lstm_layer
from ..rnn import Cell, CustomRNNBase
from .oracle import layer_ref, params_by_name, stack_ref

LAYERNORMS = ("layernorm_ih_weight", "layernorm_ih_bias", "layernorm_hh_weight", "layernorm_hh_bias",
              "layernorm_c_weight", "layernorm_c_bias")
LAYERNORM_LSTM_PARAMS = (("weight_ih", None), ("weight_hh", None), ("bias_ih", "bias"), ("bias_hh", "bias"),
                         *((n, None) for n in LAYERNORMS))
CELL = Cell(name="LayerNormLSTM", mode="LSTM", ops="layernorm_lstm", n_states=2, params=LAYERNORM_LSTM_PARAMS,
            layer=layernorm_lstm_layer)


class LayerNormLSTM(CustomRNNBase):
    r"""A multi-layer LSTM with layer normalisation (Ba, Kiros & Hinton 2016, section 3.1), on fused kernels.

    Constructor, inputs and outputs are nn.LSTM's (without proj_size), plus ``eps`` (added to the variance in
    every layer norm). Parameters per layer k (suffix ``_reverse`` for the backward direction): nn.LSTM's
    ``weight_ih_l{k}`` [4H, I_k], ``weight_hh_l{k}`` [4H, H], ``bias_ih_l{k}``, ``bias_hh_l{k}`` [4H] (if
    bias; ``bias=False`` drops only these two), and the layer norms' gains and shifts
    ``layernorm_ih_weight_l{k}``, ``layernorm_ih_bias_l{k}``, ``layernorm_hh_weight_l{k}``,
    ``layernorm_hh_bias_l{k}`` [4H] and ``layernorm_c_weight_l{k}``, ``layernorm_c_bias_l{k}`` [H].
    nn.LSTM's parameters are initialised as nn.LSTM does, the gains to 1 and the shifts to 0.
    Input [T, B, I] (or [B, T, I] with batch_first, [T, I] unbatched, or a PackedSequence, sorted or not);
    hx = (h_0, c_0), each [L*D, B, H]; returns (output [T, B, D*H], (h_n, c_n)), c_n the cell state before
    its layer norm. Dropout is applied between layers in training mode.

    Not an nn.LSTM, for the reason PeepholeLSTM gives: code that treats an nn.LSTM as nn.LSTM's math would
    silently drop the layer norms. There is no torch implementation to fall back on: on a device without
    kernels it raises.
    """

    cell = CELL

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype)
        self.eps = float(eps)
        self._make_parameters()

    def _param_shapes(self, layer_input: int) -> dict:
        G, H = 4 * self.hidden_size, self.hidden_size
        return {"weight_ih": (G, layer_input), "weight_hh": (G, H), "bias_ih": (G,), "bias_hh": (G,),
                "layernorm_ih_weight": (G,), "layernorm_ih_bias": (G,), "layernorm_hh_weight": (G,),
                "layernorm_hh_bias": (G,), "layernorm_c_weight": (H,), "layernorm_c_bias": (H,)}

    def reset_parameters(self) -> None:
        """nn.LSTM's U(-1/sqrt(H), 1/sqrt(H)) for its own parameters; gains 1 and shifts 0 (LayerNorm's)."""
        for name, p in self.named_parameters():
            if name.startswith("layernorm_"):
                (init.ones_ if "_weight_" in name else init.zeros_)(p)
            else:
                self._uniform_(p)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, eps: float = 1e-5) -> "LayerNormLSTM":
        """A LayerNormLSTM with ``lstm``'s configuration, device, dtype, mode and weights (copied), and
        layer norms at their initial gains 1 and shifts 0 (a warm start: the layer norms change the function)."""
        if lstm.proj_size > 0:
            raise ValueError("LayerNormLSTM has no proj_size: cannot copy an LSTM with proj_size > 0")
        return cls._from_module(lstm, extra_state=lambda m: {
            n: p.detach().clone() for n, p in m.named_parameters() if n.startswith("layernorm_")}, eps=eps)

    def _layer_extra(self) -> tuple:
        return (self.eps,)

    def _extra_repr_suffix(self) -> str:
        return f", eps={self.eps}" if self.eps != 1e-5 else ""


# ------------------------------------------------------------------------------------------------- oracle

def layer_norm_ref(a: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """LN over the last dimension: (a − mean) / sqrt(var + eps) · weight + bias, biased variance."""
    mean = a.mean(-1, keepdim=True)
    var = (a - mean).square().mean(-1, keepdim=True)
    return (a - mean) / torch.sqrt(var + eps) * weight + bias


def layernorm_lstm_cell_ref(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                            b_hh: Optional[Tensor], ln_ih_w: Tensor, ln_ih_b: Tensor, ln_hh_w: Tensor,
                            ln_hh_b: Tensor, ln_c_w: Tensor, ln_c_b: Tensor,
                            eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """One step. x [B, I], h [B, H], c [B, H]; ln_ih_*/ln_hh_* [4H], ln_c_* [H] -> (h' [B, H], c' [B, H])."""
    pre = layer_norm_ref(x @ w_ih.t(), ln_ih_w, ln_ih_b, eps) + layer_norm_ref(h @ w_hh.t(), ln_hh_w, ln_hh_b, eps)
    if b_ih is not None:
        pre = pre + b_ih
    if b_hh is not None:
        pre = pre + b_hh
    i, f, g, o = pre.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    return o * torch.tanh(layer_norm_ref(c, ln_c_w, ln_c_b, eps)), c


def layernorm_lstm_layer_ref(input: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih, b_hh,
                             ln_ih_w: Tensor, ln_ih_b: Tensor, ln_hh_w: Tensor, ln_hh_b: Tensor, ln_c_w: Tensor,
                             ln_c_b: Tensor, lengths: Optional[Tensor] = None, reverse: bool = False,
                             eps: float = 1e-5, compute_dtype: Optional[torch.dtype] = torch.float64
                             ) -> tuple[Tensor, Tensor, Tensor]:
    """One layer, one direction: torch.ops.fastlstm.layernorm_lstm_forward's first 3 outputs.

    input [T, B, I], h0 [B, H], c0 [B, H] -> (output [T, B, H], h_n [B, H], c_n [B, H]) in input's dtype;
    lengths as in lstm_layer_ref. compute_dtype=None computes in the input's own dtype.
    """
    step = functools.partial(_step, eps=eps)
    return layer_ref(step, input, (h0, c0), (w_ih, w_hh, b_ih, b_hh, ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w,
                                             ln_c_b), lengths, reverse, compute_dtype)


def _step(x, h, c, *w, eps):
    return layernorm_lstm_cell_ref(x, h, c, *w, eps=eps)


def layernorm_lstm_ref(input: Tensor, hx: Optional[tuple[Tensor, Tensor]], params: Sequence[tuple],
                       num_layers: int, bidirectional: bool = False, lengths: Optional[Tensor] = None,
                       eps: float = 1e-5, compute_dtype: Optional[torch.dtype] = torch.float64
                       ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The stacked layer-normalised LSTM, time-major, no dropout.

    input [T, B, I]; hx = (h0 [L*D, B, H], c0 [L*D, B, H]) or None for zeros; params: one
    (w_ih, w_hh, b_ih, b_hh, ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b) per layer and direction in
    nn.LSTM's order (see layernorm_module_params). Returns (output [T, B, D*H], (h_n, c_n) [L*D, B, H]).
    """
    LD, B, H = num_layers * (2 if bidirectional else 1), input.shape[1], params[0][1].shape[1]
    if hx is None:
        hx = (input.new_zeros(LD, B, H), input.new_zeros(LD, B, H))
    layer = functools.partial(layernorm_lstm_layer_ref, eps=eps)
    out, (h, c) = stack_ref(layer, input, hx, params, num_layers, bidirectional, lengths, compute_dtype)
    return out, (h, c)


def layernorm_module_params(m: torch.nn.Module) -> list[tuple]:
    """A LayerNormLSTM's parameters as layernorm_lstm_ref's `params`."""
    return params_by_name(m, [n for n, _ in LAYERNORM_LSTM_PARAMS])
