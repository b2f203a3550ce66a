"""The functional multi-layer LSTM: stacks fastlstm's one-layer ops over layers and directions."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import lstm_layer

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

    `layer_fn` runs one layer in one direction: layer_fn(x, h0, c0, *params[k], lengths=, reverse=) ->
    (output, h_n, c_n). It is lstm_layer by default; variants of the LSTM cell with the same state (e.g.
    fastlstm.peephole.peephole_layer, whose params carry peephole weights instead of w_hr) reuse this stacking.
    """
    D = 2 if bidirectional else 1
    h_n, c_n = [], []
    x = input
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            out, h, c = layer_fn(x, h0[k], c0[k], *params[k], lengths=lengths, reverse=d == 1)
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        x = outs[0] if D == 1 else torch.cat(outs, 2)
        if dropout > 0 and training and layer < num_layers - 1:
            x = F.dropout(x, dropout, training=True)
    return x, torch.stack(h_n), torch.stack(c_n)
