"""FastGRU (torch.nn.GRU on fastlstm's fused kernels) and its oracle, gru_ref.

The cell, nn.GRU's math (gate order r, z, n; b_hn inside r ⊙ (…)):
    r = σ(W_ir x + b_ir + W_hr h + b_hr)      z = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))      h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..ops import gru_layer
from ..rnn import Cell, RNNEngine, _c10_name
from .oracle import layer_ref, params_by_name, stack_ref

GRU_PARAMS = (("weight_ih", None), ("weight_hh", None), ("bias_ih", "bias"), ("bias_hh", "bias"))
CELL = Cell(name="FastGRU", mode="GRU", ops="gru", n_states=1, params=GRU_PARAMS, layer=gru_layer,
            torch_module=nn.GRU, kernels="GRU kernels")


class FastGRU(RNNEngine, nn.GRU):
    r"""A drop-in replacement for :class:`torch.nn.GRU` backed by fused kernels.

    Same constructor, parameters (names, shapes, initialisation), state_dict, checks and error messages as
    nn.GRU, which it subclasses; only ``forward`` differs. Input and output shapes are nn.GRU's:
    input [T, B, I] (or [B, T, I] with batch_first, [T, I] unbatched, or a PackedSequence);
    hx = h_0 [L*D, B, H]; returns (output [T, B, D*H], h_n [L*D, B, H]).
    """

    cell = CELL

    @classmethod
    def from_gru(cls, gru: nn.GRU) -> "FastGRU":
        """A FastGRU with the same configuration, device, dtype and weights (copied) as ``gru``."""
        return cls._from_module(gru)

    def _check_states(self, input: Tensor, states: tuple) -> None:
        # nn.GRU's order: ATen's device checks (hidden, then parameters), then its zero-length check, and
        # only then its first recurrent GEMM (mat1 = hx, mat2 = the weight), which rejects a hx of another
        # dtype. input is [T, B, I] / [B, T, I] here, or a PackedSequence's [rows, I] data.
        (hx,) = states
        if hx.device != input.device:
            raise RuntimeError("Input and hidden tensors are not at the same device, found input tensor "
                               f"at {input.device} and hidden tensor at {hx.device}")
        self._check_parameter_devices(input)
        steps = input.size(1) if self.batch_first and input.dim() == 3 else input.size(0)
        if hx.dtype != input.dtype and steps > 0:
            if not self.bias:
                # Without biases that GEMM is a plain mm, whose check prints C++ type names.
                raise RuntimeError("expected m1 and m2 to have the same dtype, but got: "
                                   f"{_cpp_name(hx.dtype)} != {_cpp_name(input.dtype)}")
            raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got {_c10_name(hx.dtype)} and "
                               f"{_c10_name(input.dtype)}")


_CPP_NAMES = {torch.float32: "float", torch.float64: "double", torch.float16: "c10::Half",
              torch.bfloat16: "c10::BFloat16", torch.int64: "long int", torch.int32: "int",
              torch.int16: "short int", torch.int8: "signed char", torch.uint8: "unsigned char", torch.bool: "bool",
              torch.complex64: "c10::complex<float>", torch.complex128: "c10::complex<double>"}


def _cpp_name(dtype: torch.dtype) -> str:
    # The C++ type names (c10 TypeMeta) that ATen's mm dtype check prints.
    return _CPP_NAMES.get(dtype, str(dtype).replace("torch.", ""))


# ------------------------------------------------------------------------------------------------- oracle

def gru_cell_ref(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                 b_hh: Optional[Tensor]) -> Tensor:
    """One step. x [B, I], h [B, H] -> h' [B, H]."""
    gx = x @ w_ih.t()
    gh = h @ w_hh.t()
    if b_ih is not None:
        gx = gx + b_ih
    if b_hh is not None:
        gh = gh + b_hh
    xr, xz, xn = gx.chunk(3, dim=1)
    hr, hz, hn = gh.chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def _gru_step(x, h, *w):
    return (gru_cell_ref(x, h, *w),)


def gru_layer_ref(input: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih=None, b_hh=None,
                  lengths: Optional[Tensor] = None, reverse: bool = False,
                  compute_dtype: Optional[torch.dtype] = torch.float64) -> tuple[Tensor, Tensor]:
    """One GRU layer, one direction; the contract of torch.ops.fastlstm.gru_forward's first 2 outputs.

    input [T, B, I], h0 [B, H] -> (output [T, B, H], h_n [B, H]) in input's dtype. With lengths [B], element
    b only runs steps t < lengths[b]; elsewhere its state is held and its output is zero.
    """
    return layer_ref(_gru_step, input, (h0,), (w_ih, w_hh, b_ih, b_hh), lengths, reverse, compute_dtype)


def gru_ref(input: Tensor, hx: Optional[Tensor], params: Sequence[tuple], num_layers: int,
            bidirectional: bool = False, lengths: Optional[Tensor] = None,
            compute_dtype: Optional[torch.dtype] = torch.float64) -> tuple[Tensor, Tensor]:
    """The stacked GRU, time-major, no dropout: nn.GRU's math written out.

    input [T, B, I]; hx = h0 [L*D, B, H] or None for zeros; params: one (w_ih, w_hh, b_ih, b_hh) per layer
    and direction in nn.GRU's order (see gru_module_params). Returns (output [T, B, D*H], h_n [L*D, B, H]).
    """
    if hx is None:
        hx = input.new_zeros(num_layers * (2 if bidirectional else 1), input.shape[1], params[0][1].shape[1])
    out, (h,) = stack_ref(gru_layer_ref, input, (hx,), params, num_layers, bidirectional, lengths, compute_dtype)
    return out, h


def gru_module_params(m: torch.nn.GRU) -> list[tuple]:
    """An nn.GRU's (or FastGRU's) parameters as gru_ref's `params`: (w_ih, w_hh, b_ih, b_hh) each."""
    return params_by_name(m, [n for n, _ in GRU_PARAMS])
