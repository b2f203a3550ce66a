"""TorchScript for fastlstm's modules: torch.jit.script(module) scripts a twin that calls fastlstm's ops.

The modules' own forward (fastlstm.rnn.RNNEngine) is Python TorchScript cannot compile (dataclass cell
descriptions, PackedSequence handling, getattr by name). torch.jit.script calls a module's
``__prepare_scriptable__`` first, on the module and on every submodule of a model; RNNEngine's returns one of
these twins, which holds the *same* Parameter objects under the same names (so state_dict, optimizers and
gradients are shared with the original) and runs the same layer ops, torch.ops.fastlstm.*_forward, whose
autograd is registered with the dispatcher and so works from TorchScript too.

What the twin's forward takes: a tensor input, batched [T, B, I] ([B, T, I] with batch_first) or unbatched
[T, I], and hx or None; PackedSequence is not supported in TorchScript (use torch.jit.trace on padded
input, or eager). It raises on mismatched shapes through the ops' own checks rather than nn.LSTM's messages.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _ScriptedBase(nn.Module):
    __constants__ = ["input_size", "hidden_size", "num_layers", "batch_first", "bidirectional", "dropout",
                     "proj_size", "cell", "n_params", "eps"]

    def __init__(self, src: nn.Module):
        super().__init__()
        self.input_size = int(src.input_size)
        self.hidden_size = int(src.hidden_size)
        self.num_layers = int(src.num_layers)
        self.batch_first = bool(src.batch_first)
        self.bidirectional = bool(src.bidirectional)
        self.dropout = float(src.dropout)
        self.proj_size = int(getattr(src, "proj_size", 0))
        self.cell = src.cell.ops
        self.eps = float(getattr(src, "eps", 1e-5))
        self.train(src.training)
        # The same Parameter objects, under the same names (shared state_dict and gradients) ...
        for name, p in src.named_parameters(recurse=False):
            self.register_parameter(name, p)
        # ... and, per layer and direction, the layer op's parameter list (None where absent) as an
        # attribute TorchScript can index. It refers to the same tensors: in-place updates (optimizers,
        # load_state_dict) reach it; assigning a new Parameter to the original module does not.
        params = src._layer_params()
        self.n_params = len(params[0])
        self.weights: List[Optional[Tensor]] = [w for layer in params for w in layer]

    def _layer(self, x: Tensor, h: Tensor, c: Tensor, k: int, reverse: bool) -> Tuple[Tensor, Tensor, Tensor]:
        w = self.weights[k * self.n_params:(k + 1) * self.n_params]
        if self.cell == "gru":
            w_ih, w_hh = w[0], w[1]
            assert w_ih is not None and w_hh is not None
            out, h_n, _, _ = torch.ops.fastlstm.gru_forward(x, h, w_ih, w_hh, w[2], w[3], None, reverse)
            return out, h_n, c
        w_ih, w_hh = w[0], w[1]
        assert w_ih is not None and w_hh is not None
        if self.cell == "lstm":
            out, h_n, c_n, _, _ = torch.ops.fastlstm.lstm_forward(x, h, c, w_ih, w_hh, w[2], w[3], w[4], None,
                                                                  reverse)
            return out, h_n, c_n
        if self.cell == "peephole":
            w_ci, w_cf, w_co = w[4], w[5], w[6]
            assert w_ci is not None and w_cf is not None and w_co is not None
            out, h_n, c_n, _, _ = torch.ops.fastlstm.peephole_forward(x, h, c, w_ih, w_hh, w[2], w[3], w_ci, w_cf,
                                                                      w_co, None, reverse)
            return out, h_n, c_n
        a, b, d, e, f, g = w[4], w[5], w[6], w[7], w[8], w[9]
        assert a is not None and b is not None and d is not None and e is not None and f is not None
        assert g is not None
        out, h_n, c_n, _, _, _, _, _ = torch.ops.fastlstm.layernorm_lstm_forward(
            x, h, c, w_ih, w_hh, w[2], w[3], a, b, d, e, f, g, None, reverse, self.eps)
        return out, h_n, c_n

    def _stack(self, x: Tensor, h0: Tensor, c0: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        D = 2 if self.bidirectional else 1
        hs: List[Tensor] = []
        cs: List[Tensor] = []
        for layer in range(self.num_layers):
            outs: List[Tensor] = []
            for d in range(D):
                k = layer * D + d
                out, h, c = self._layer(x, h0[k], c0[k], k, d == 1)
                outs.append(out)
                hs.append(h)
                cs.append(c)
            x = outs[0] if D == 1 else torch.cat(outs, 2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        return x, torch.stack(hs), torch.stack(cs)

    def _prepare(self, input: Tensor) -> Tuple[Tensor, bool]:
        if input.dim() not in (2, 3):
            raise ValueError("Expected input to be 2D or 3D, got " + str(input.dim()) + "D instead")
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
        return (input.transpose(0, 1) if self.batch_first else input), batched

    def _finish(self, out: Tensor, batched: bool) -> Tensor:
        out = out.transpose(0, 1) if self.batch_first else out
        return out if batched else out.squeeze(0 if self.batch_first else 1)


class ScriptableLSTM(_ScriptedBase):
    """The twin of FastLSTM, PeepholeLSTM and LayerNormLSTM: forward(input, hx) -> (output, (h_n, c_n))."""

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        x, batched = self._prepare(input)
        LD = self.num_layers * (2 if self.bidirectional else 1)
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        if hx is None:
            h0 = torch.zeros(LD, x.size(1), P, dtype=x.dtype, device=x.device)
            c0 = torch.zeros(LD, x.size(1), self.hidden_size, dtype=x.dtype, device=x.device)
        else:
            h0, c0 = hx
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        out, h_n, c_n = self._stack(x, h0, c0)
        if not batched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return self._finish(out, batched), (h_n, c_n)


class ScriptableGRU(_ScriptedBase):
    """The twin of FastGRU: forward(input, hx) -> (output, h_n)."""

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        x, batched = self._prepare(input)
        LD = self.num_layers * (2 if self.bidirectional else 1)
        if hx is None:
            h0 = torch.zeros(LD, x.size(1), self.hidden_size, dtype=x.dtype, device=x.device)
        else:
            h0 = hx if batched else hx.unsqueeze(1)
        out, h_n, _ = self._stack(x, h0, h0)
        return self._finish(out, batched), (h_n if batched else h_n.squeeze(1))


def scriptable(module: nn.Module) -> nn.Module:
    """The TorchScript-friendly twin of a fastlstm module (what torch.jit.script compiles in its place)."""
    return (ScriptableGRU if module.cell.n_states == 1 else ScriptableLSTM)(module)
