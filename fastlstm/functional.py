"""The functional multi-layer forms (lstm, gru): fastlstm's one-layer ops stacked over layers and directions."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import gru_layer, lstm_layer, pair_op, run_pair

# (w_ih, w_hh, b_ih, b_hh, w_hr) for one layer and direction; biases and w_hr may be None.
LayerParams = tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]


def lstm(
    input: Tensor,
    h0: Tensor,
    c0: Tensor,
    params: Sequence[LayerParams],
    num_layers: int,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    lengths: Optional[Tensor] = None,
    layer_fn: Callable[..., tuple[Tensor, Tensor, Tensor]] = lstm_layer,
) -> tuple[Tensor, Tensor, Tensor]:
    """A stacked, optionally bidirectional LSTM, time-major.

    input [T, B, I]; h0 [L*D, B, P]; c0 [L*D, B, H]; params in nn.LSTM's order (layer-major, forward
    direction before reverse); lengths int64 [B] for padded variable-length sequences (on input's device).
    Returns output [T, B, D*P], h_n [L*D, B, P], c_n [L*D, B, H]. Dropout with probability `dropout` is
    applied to the outputs of every layer but the last when `training`.

    `layer_fn` runs one layer in one direction: layer_fn(x, h0, c0, *params[k], lengths, reverse) ->
    (output, h_n, c_n). It is lstm_layer by default; variants of the LSTM cell with the same state (e.g.
    fastlstm.ops.peephole_layer, whose params carry peephole weights instead of w_hr) reuse this stacking.
    """
    x, (h_n, c_n) = stacked(layer_fn, input, (h0, c0), params, num_layers, bidirectional, dropout,
                            training, lengths)
    return x, h_n, c_n


def gru(
    input: Tensor,
    h0: Tensor,
    params: Sequence[tuple],
    num_layers: int,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    lengths: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """A stacked, optionally bidirectional GRU, time-major.

    input [T, B, I]; h0 [L*D, B, H]; params: one (w_ih, w_hh, b_ih, b_hh) per layer and direction in
    nn.GRU's order (biases may be None); lengths int64 [B] for padded variable-length sequences.
    Returns output [T, B, D*H], h_n [L*D, B, H]. Dropout as nn.GRU applies it, when `training`.
    """
    x, (h_n,) = stacked(gru_layer, input, (h0,), params, num_layers, bidirectional, dropout, training, lengths)
    return x, h_n


def stacked(
    layer_fn: Callable[..., tuple[Tensor, ...]],
    input: Tensor,
    states: Sequence[Tensor],
    params: Sequence[tuple],
    num_layers: int,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    lengths: Optional[Tensor] = None,
    extra: tuple = (),
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Any one-layer recurrent op stacked over layers and directions (nn.RNNBase's order), time-major.

    layer_fn(x [T, B, *], *states_k, *params[k], lengths, reverse, *extra) -> (output [T, B, P],
    *final_states_k), e.g. lstm_layer (states h, c) or gru_layer (state h); `extra` carries a cell's
    trailing non-tensor arguments (LayerNormLSTM's eps). input [T, B, I]; each of `states` [L*D, B, *].
    Returns output [T, B, D*P] and the final states stacked like `states`. Dropout with probability
    `dropout` is applied to the outputs of every layer but the last when `training`.
    """
    D = 2 if bidirectional else 1
    finals: list[list[Tensor]] = [[] for _ in states]
    x = input
    for layer in range(num_layers):
        outs = []
        k = layer * D
        op = (pair_op(layer_fn, x, (x, *(s[k] for s in states), *(s[k + 1] for s in states), *params[k],
                                    *params[k + 1])) if D == 2 else None)
        if op is not None:
            # Both directions at once (fastlstm.ops.pair_op): each direction's results as layer_fn's.
            n = 1 + len(states)
            r = run_pair(op, (x, *(s[k] for s in states), *params[k], *(s[k + 1] for s in states), *params[k + 1],
                              lengths, *extra))
            outs = [r[0], r[n]]
            for i, acc in enumerate(finals):
                acc.extend((r[1 + i], r[n + 1 + i]))
        for d in range(D if op is None else 0):
            k = layer * D + d
            out, *final = layer_fn(x, *(s[k] for s in states), *params[k], lengths, d == 1, *extra)
            outs.append(out)
            for acc, f in zip(finals, final):
                acc.append(f)
        x = outs[0] if D == 1 else torch.cat(outs, 2)
        if dropout > 0 and training and layer < num_layers - 1:
            x = F.dropout(x, dropout, training=True)
    return x, tuple(torch.stack(f) for f in finals)
