"""FastGRU: torch.nn.GRU on fastlstm's fused GRU ops, and the layers under it.

Shapes, for one layer in one direction (T steps, B batch, I input, H hidden): input [T, B, I] time-major;
h0 [B, H]; w_ih [3H, I]; w_hh [3H, H]; b_ih, b_hh [3H] (gate order r, z, n); lengths int64 [B] on the
input's device (element b is active at step t iff t < lengths[b]).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _C  # noqa: F401  (loads the shared library, which registers the ops)
from . import export  # ONNX export hook (fastlstm/export.py)
from .functional import stacked
from .modules import _CPU_DTYPES, FastLSTM, _c10_name, _lengths_from_batch_sizes, _warn_once


@torch.library.register_fake("fastlstm::gru_forward")
def _gru_forward_fake(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    T, B, _ = input.shape
    H = w_ih.shape[0] // 3
    return (input.new_empty(T, B, H), input.new_empty(B, H), input.new_empty(T, B, 3 * H),
            input.new_empty(T, B, H))


@torch.library.register_fake("fastlstm::gru_inference")
def _gru_inference_fake(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    T, B, _ = input.shape
    H = w_ih.shape[0] // 3
    return input.new_empty(T, B, H), input.new_empty(B, H)


@torch.library.register_fake("fastlstm::gru_backward")
def _gru_backward_fake(grad_output, grad_h_n, input, h0, w_ih, w_hh, lengths, output, gates, hn, reverse):
    G = w_ih.shape[0]
    return (torch.empty_like(input), torch.empty_like(h0), torch.empty_like(w_ih), torch.empty_like(w_hh),
            w_ih.new_empty(G), w_ih.new_empty(G))


class GRULayerFunction(torch.autograd.Function):
    """One GRU layer, one direction: forward through gru_forward, backward through gru_backward.

    Returns (output [T,B,H], h_n [B,H], gates [T,B,3H], hn [T,B,H]); the last two are what backward needs and
    are not differentiable. Backward works in eval mode too (it depends only on what was saved).
    """

    @staticmethod
    def forward(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
        return torch.ops.fastlstm.gru_forward(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse = inputs
        out, _, gates, hn = output
        ctx.save_for_backward(input, h0, w_ih, w_hh, lengths, out, gates, hn)
        ctx.has_b_ih = b_ih is not None
        ctx.has_b_hh = b_hh is not None
        ctx.reverse = reverse
        ctx.mark_non_differentiable(gates, hn)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, _grad_gates, _grad_hn):
        input, h0, w_ih, w_hh, lengths, out, gates, hn = ctx.saved_tensors
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = torch.ops.fastlstm.gru_backward(
            grad_output, grad_h_n, input, h0, w_ih, w_hh, lengths, out, gates, hn, ctx.reverse)
        return (dx, dh0, dw_ih, dw_hh, db_ih if ctx.has_b_ih else None, db_hh if ctx.has_b_hh else None,
                None, None)


def gru_layer(
    input: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """One GRU layer in one direction over a whole sequence.

    input [T, B, I], h0 [B, H] -> (output [T, B, H], h_n [B, H]). Differentiable in every tensor argument;
    when no gradient is needed the inference op runs, which saves nothing for backward.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, h0, w_ih, w_hh, b_ih, b_hh))
    if needs_grad:
        out, h_n, _, _ = GRULayerFunction.apply(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
        return out, h_n
    return torch.ops.fastlstm.gru_inference(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)


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


_HAS = {dev: torch._C._dispatch_has_kernel_for_dispatch_key("fastlstm::gru_forward", key)
        for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))}


class FastGRU(nn.GRU):
    r"""A drop-in replacement for :class:`torch.nn.GRU` backed by fused kernels.

    Same constructor, parameters (names, shapes, initialisation), state_dict, checks and error messages as
    nn.GRU, which it subclasses; only ``forward`` differs. Input and output shapes are nn.GRU's:
    input [T, B, I] (or [B, T, I] with batch_first, [T, I] unbatched, or a PackedSequence);
    hx = h_0 [L*D, B, H]; returns (output [T, B, D*H], h_n [L*D, B, H]).
    """

    @classmethod
    def from_gru(cls, gru: nn.GRU) -> "FastGRU":
        """A FastGRU with the same configuration, device, dtype and weights (copied) as ``gru``."""
        p = gru.weight_ih_l0
        m = cls(gru.input_size, gru.hidden_size, gru.num_layers, gru.bias, gru.batch_first, float(gru.dropout),
                gru.bidirectional, device=p.device, dtype=p.dtype)
        m.load_state_dict(gru.state_dict())
        m.train(gru.training)
        return m

    def _layer_params(self) -> list[tuple]:
        D = 2 if self.bidirectional else 1
        params = []
        for layer in range(self.num_layers):
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                params.append((
                    getattr(self, "weight_ih" + sfx),
                    getattr(self, "weight_hh" + sfx),
                    getattr(self, "bias_ih" + sfx) if self.bias else None,
                    getattr(self, "bias_hh" + sfx) if self.bias else None,
                ))
        return params

    def _supported(self, input: Tensor) -> bool:
        dev = input.device.type
        if not _HAS.get(dev, False):
            _warn_once(("gru-device", dev), f"fastlstm has no GRU kernels for device '{dev}' in this build; "
                       "FastGRU runs torch.nn.GRU's implementation there (slower path, same results).")
            return False
        return dev != "cpu" or input.dtype in _CPU_DTYPES

    def forward(self, input, hx=None):  # noqa: C901  (mirrors nn.GRU.forward step by step)
        if export.is_onnx_exporting():  # ONNX export hook: the standard ONNX operator, not fastlstm's ops
            return export.forward(self, input, hx)
        self._update_flat_weights()
        orig_input = input
        num_directions = 2 if self.bidirectional else 1
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
            if hx is None:
                hx = torch.zeros(self.num_layers * num_directions, max_batch_size, self.hidden_size,
                                 dtype=input.dtype, device=input.device)
            else:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            batch_sizes = None
            if input.dim() not in (2, 3):
                raise ValueError(f"GRU: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
                    hx = hx.unsqueeze(1)
            else:
                if hx is not None and hx.dim() != 3:
                    raise RuntimeError(
                        f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = None
            unsorted_indices = None
            if hx is None:
                hx = torch.zeros(self.num_layers * num_directions, max_batch_size, self.hidden_size,
                                 dtype=input.dtype, device=input.device)
            else:
                hx = self.permute_hidden(hx, sorted_indices)

        self.check_forward_args(input, hx, batch_sizes)
        if hx.dtype != input.dtype:
            # What nn.GRU raises here: its first recurrent GEMM (mat1 = hx, mat2 = the weight) rejects it.
            raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got {_c10_name(hx.dtype)} and "
                               f"{_c10_name(input.dtype)}")
        # nn.GRU's C++ device messages (RNN.cpp, shared with nn.LSTM); FastLSTM's check reads only the flat
        # weights and the states.
        FastLSTM._check_devices(self, input, (hx,))
        if not self._supported(input):
            return self._fallback(orig_input, hx, unsorted_indices)

        if batch_sizes is not None:
            if input.size(0) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            lengths = _lengths_from_batch_sizes(batch_sizes)
            padded, _ = pad_packed_sequence(PackedSequence(input, batch_sizes), batch_first=False)
            out, h_n = self._run(padded, hx, lengths.to(input.device))
            output = pack_padded_sequence(out, lengths, enforce_sorted=True).data
            return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(h_n, unsorted_indices))

        x = input.transpose(0, 1) if self.batch_first else input
        if x.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        out, h_n = self._run(x, hx, None)
        output = out.transpose(0, 1) if self.batch_first else out
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
        return output, self.permute_hidden(h_n, unsorted_indices)

    def _run(self, x: Tensor, hx: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        return gru(x, hx, self._layer_params(), self.num_layers, self.bidirectional, float(self.dropout),
                   self.training, lengths)

    def _fallback(self, orig_input, hx, unsorted_indices):
        # hx here is already batched and permuted into sorted order; undo that for nn.GRU.forward.
        if isinstance(orig_input, PackedSequence):
            hx = self.permute_hidden(hx, unsorted_indices)
        elif orig_input.dim() == 2:
            hx = hx.squeeze(1)
        return super().forward(orig_input, hx)
