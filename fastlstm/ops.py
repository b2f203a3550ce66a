"""The autograd Function over torch.ops.fastlstm.*, and the fake (meta) kernels of every op.

Shapes, for one layer in one direction (T steps, B batch, I input, H hidden, P = proj_size or H):
input [T, B, I] time-major; h0 [B, P]; c0 [B, H]; w_ih [4H, I]; w_hh [4H, P]; b_ih, b_hh [4H];
w_hr [P, H]; lengths int64 [B] on the input's device (element b is active at step t iff t < lengths[b]).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loads the shared library, which registers the ops)

_REDUCED = (torch.float16, torch.bfloat16)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half types carry the cell state in float32; see csrc/lstm_layer.h.
    return torch.float32 if dtype in _REDUCED else dtype


@torch.library.register_fake("fastlstm::lstm_forward")
def _lstm_forward_fake(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
    T, B, _ = input.shape
    H, P = w_ih.shape[0] // 4, h0.shape[1]
    return (
        input.new_empty(T, B, P),
        input.new_empty(B, P),
        input.new_empty(B, H),
        input.new_empty(T, B, 4 * H),
        input.new_empty(T, B, H, dtype=_acc_dtype(input.dtype)),
    )


@torch.library.register_fake("fastlstm::lstm_inference")
def _lstm_inference_fake(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
    T, B, _ = input.shape
    H, P = w_ih.shape[0] // 4, h0.shape[1]
    return input.new_empty(T, B, P), input.new_empty(B, P), input.new_empty(B, H)


@torch.library.register_fake("fastlstm::lstm_backward")
def _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, w_hr, lengths, output,
                        gates, cells, reverse):
    # Contiguous whatever the inputs' strides (empty_like would copy a transposed input's layout), as the
    # kernel's GEMM results are.
    return (
        input.new_empty(input.shape),
        input.new_empty(h0.shape),
        input.new_empty(c0.shape),
        input.new_empty(w_ih.shape),
        input.new_empty(w_hh.shape),
        input.new_empty(w_ih.shape[0]),
        input.new_empty(w_hr.shape) if w_hr is not None else input.new_empty(0),
    )


# The overloads themselves: calling an OpOverloadPacket resolves the overload on every call, which costs
# more than the whole one-step kernel on the streaming path.
_forward_op = torch.ops.fastlstm.lstm_forward.default
_inference_op = torch.ops.fastlstm.lstm_inference.default
_backward_op = torch.ops.fastlstm.lstm_backward.default


class LSTMLayerFunction(torch.autograd.Function):
    """One layer, one direction: forward through lstm_forward, backward through lstm_backward.

    Returns (output [T,B,P], h_n [B,P], c_n [B,H], gates, cells); the last two are what backward needs and
    are not differentiable. Backward works in eval mode too (it depends only on what was saved).
    """

    @staticmethod
    def forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
        return _forward_op(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse = inputs
        out, _, _, gates, cells = output
        ctx.save_for_backward(input, h0, c0, w_ih, w_hh, w_hr, lengths, out, gates, cells)
        ctx.has_b_ih = b_ih is not None
        ctx.has_b_hh = b_hh is not None
        ctx.reverse = reverse
        ctx.mark_non_differentiable(gates, cells)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_gates, _grad_cells):
        input, h0, c0, w_ih, w_hh, w_hr, lengths, out, gates, cells = ctx.saved_tensors
        dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = _backward_op(
            grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, w_hr, lengths, out, gates, cells,
            ctx.reverse)
        return (
            dx, dh0, dc0, dw_ih, dw_hh,
            db if ctx.has_b_ih else None,
            db if ctx.has_b_hh else None,
            dw_hr if w_hr is not None else None,
            None, None,
        )


def lstm_layer(
    input: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    w_hr: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer in one direction over a whole sequence.

    input [T, B, I], h0 [B, P], c0 [B, H] -> (output [T, B, P], h_n [B, P], c_n [B, H]).
    Differentiable in every tensor argument; when no gradient is needed the inference op runs, which saves
    nothing for backward.
    """
    # Spelled out rather than any(<generator>): on the one-step streaming path the generator costs ~1 us.
    if torch.is_grad_enabled() and (
            input.requires_grad or h0.requires_grad or c0.requires_grad or w_ih.requires_grad
            or w_hh.requires_grad or (b_ih is not None and b_ih.requires_grad)
            or (b_hh is not None and b_hh.requires_grad) or (w_hr is not None and w_hr.requires_grad)):
        out, h_n, c_n, _, _ = LSTMLayerFunction.apply(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                                                      reverse)
        return out, h_n, c_n
    return _inference_op(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
