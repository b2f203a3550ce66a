"""PeepholeLSTM: an LSTM whose gates also see the cell state, on fused kernels (issue 6).

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

import math
import numbers
import warnings
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import init

from . import _C  # noqa: F401  (loads the shared library, which registers the ops)
from . import functional
from .modules import FastLSTM
from .ops import _acc_dtype

_OPS = ("peephole_forward", "peephole_inference", "peephole_backward")
PEEPHOLE_MODES = ("diagonal", "full")


@torch.library.register_fake("fastlstm::peephole_forward")
def _peephole_forward_fake(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, lengths, reverse):
    T, B, _ = input.shape
    H = w_ih.shape[0] // 4
    return (
        input.new_empty(T, B, H),
        input.new_empty(B, H),
        input.new_empty(B, H),
        input.new_empty(T, B, 4 * H),
        input.new_empty(T, B, H, dtype=_acc_dtype(input.dtype)),
    )


@torch.library.register_fake("fastlstm::peephole_inference")
def _peephole_inference_fake(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, lengths, reverse):
    T, B, _ = input.shape
    H = w_ih.shape[0] // 4
    return input.new_empty(T, B, H), input.new_empty(B, H), input.new_empty(B, H)


@torch.library.register_fake("fastlstm::peephole_backward")
def _peephole_backward_fake(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, w_ci, w_cf, w_co,
                            lengths, output, gates, cells, reverse):
    return (
        torch.empty_like(input),
        torch.empty_like(h0),
        torch.empty_like(c0),
        torch.empty_like(w_ih),
        torch.empty_like(w_hh),
        w_ih.new_empty(w_ih.shape[0]),
        torch.empty_like(w_ci),
        torch.empty_like(w_cf),
        torch.empty_like(w_co),
    )


class PeepholeLayerFunction(torch.autograd.Function):
    """One peephole layer, one direction: forward through peephole_forward, backward through peephole_backward.

    Returns (output [T,B,H], h_n [B,H], c_n [B,H], gates, cells); the last two are what backward needs and
    are not differentiable. Backward works in eval mode too (it depends only on what was saved).
    """

    @staticmethod
    def forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, lengths, reverse):
        return torch.ops.fastlstm.peephole_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co,
                                                   lengths, reverse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, lengths, reverse = inputs
        out, _, _, gates, cells = output
        ctx.save_for_backward(input, h0, c0, w_ih, w_hh, w_ci, w_cf, w_co, lengths, out, gates, cells)
        ctx.has_b_ih = b_ih is not None
        ctx.has_b_hh = b_hh is not None
        ctx.reverse = reverse
        ctx.mark_non_differentiable(gates, cells)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_gates, _grad_cells):
        input, h0, c0, w_ih, w_hh, w_ci, w_cf, w_co, lengths, out, gates, cells = ctx.saved_tensors
        dx, dh0, dc0, dw_ih, dw_hh, db, dw_ci, dw_cf, dw_co = torch.ops.fastlstm.peephole_backward(
            grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, w_ci, w_cf, w_co, lengths, out, gates,
            cells, ctx.reverse)
        return (
            dx, dh0, dc0, dw_ih, dw_hh,
            db if ctx.has_b_ih else None,
            db if ctx.has_b_hh else None,
            dw_ci, dw_cf, dw_co,
            None, None,
        )


def peephole_layer(
    input: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    w_ci: Tensor,
    w_cf: Tensor,
    w_co: Tensor,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One peephole-LSTM layer in one direction over a whole sequence.

    input [T, B, I], h0 [B, H], c0 [B, H], peephole weights all [H] or all [H, H]
    -> (output [T, B, H], h_n [B, H], c_n [B, H]). Differentiable in every tensor argument; when no gradient
    is needed the inference op runs, which saves nothing for backward.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co))
    if needs_grad:
        out, h_n, c_n, _, _ = PeepholeLayerFunction.apply(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf,
                                                          w_co, lengths, reverse)
        return out, h_n, c_n
    return torch.ops.fastlstm.peephole_inference(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co,
                                                 lengths, reverse)


def _has_peephole_kernels(device_type: str) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("fastlstm::peephole_forward", key)


# Looked up once: a dispatcher query inside forward would break torch.compile's graph.
_HAS = {dev: _has_peephole_kernels(dev) for dev in ("cpu", "cuda")}


class PeepholeLSTM(nn.Module):
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
    would silently drop the peepholes. It does borrow nn.LSTM's argument checks and FastLSTM's forward (the
    input/hx/PackedSequence plumbing), which read only the attributes set in __init__, ``_flat_weights`` and
    the hooks ``_update_flat_weights``, ``_supported`` and ``_run`` defined here.
    """

    # nn.LSTM's checks and messages (torch/nn/modules/rnn.py) and FastLSTM's forward, borrowed; see above.
    check_input = nn.RNNBase.check_input
    get_expected_hidden_size = nn.RNNBase.get_expected_hidden_size
    check_hidden_size = nn.RNNBase.check_hidden_size
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden
    forward = FastLSTM.forward
    _zeros = FastLSTM._zeros
    _check_devices = FastLSTM._check_devices

    # The borrowed code reads proj_size; a peephole LSTM never projects.
    proj_size = 0

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 peephole: str = "diagonal", device=None, dtype=None) -> None:
        super().__init__()
        # nn.RNNBase.__init__'s checks and messages, in its order.
        if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             "element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=2)
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
        if not isinstance(input_size, int):
            raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
        if input_size <= 0:
            raise ValueError("input_size must be greater than zero")
        if not isinstance(hidden_size, int):
            raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if peephole not in PEEPHOLE_MODES:
            raise ValueError(f"peephole must be one of {PEEPHOLE_MODES}, got {peephole!r}")

        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.peephole = peephole

        kw = {"device": device, "dtype": dtype}
        H = hidden_size
        D = 2 if bidirectional else 1
        peep_shape = (H,) if peephole == "diagonal" else (H, H)
        self._param_names: list[str] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else H * D
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                shapes = [("weight_ih", (4 * H, layer_input)), ("weight_hh", (4 * H, H))]
                if bias:
                    shapes += [("bias_ih", (4 * H,)), ("bias_hh", (4 * H,))]
                shapes += [("weight_ci", peep_shape), ("weight_cf", peep_shape), ("weight_co", peep_shape)]
                for name, shape in shapes:
                    self.register_parameter(name + sfx, nn.Parameter(torch.empty(shape, **kw)))
                    self._param_names.append(name + sfx)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every parameter, peepholes included, as nn.LSTM does."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -stdv, stdv)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, peephole: str = "diagonal") -> "PeepholeLSTM":
        """A PeepholeLSTM with ``lstm``'s configuration, device, dtype, mode and weights (copied), and zero
        peepholes, so that it computes exactly what ``lstm`` does until it is trained."""
        if lstm.proj_size > 0:
            raise ValueError("PeepholeLSTM has no proj_size: cannot copy an LSTM with proj_size > 0")
        p = lstm.weight_ih_l0
        m = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, lstm.batch_first,
                float(lstm.dropout), lstm.bidirectional, peephole, device=p.device, dtype=p.dtype)
        state = dict(lstm.state_dict())
        for name in m._param_names:
            if name.startswith(("weight_ci", "weight_cf", "weight_co")):
                state[name] = torch.zeros_like(getattr(m, name))
        m.load_state_dict(state)
        m.train(lstm.training)
        return m

    @property
    def _flat_weights(self) -> list[Tensor]:
        # What the borrowed nn.LSTM checks read (dtype of [0], device of each).
        return [getattr(self, n) for n in self._param_names]

    def _forward_lean(self, input: Tensor, hx) -> None:
        # FastLSTM's lean path calls the plain LSTM op directly; PeepholeLSTM always takes the general path.
        return None

    def _update_flat_weights(self) -> None:
        # FastLSTM.forward refreshes nn.LSTM's cached weight list here; this module keeps none.
        pass

    def _supported(self, input: Tensor) -> bool:
        dev = input.device.type
        if not _HAS.get(dev, False):
            # Unlike FastLSTM, there is nothing to fall back on: torch has no peephole LSTM.
            raise RuntimeError(f"fastlstm: PeepholeLSTM has no kernels for device '{dev}' in this build")
        return True

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
                    getattr(self, "weight_ci" + sfx),
                    getattr(self, "weight_cf" + sfx),
                    getattr(self, "weight_co" + sfx),
                ))
        return params

    def _run(self, x: Tensor, hx: tuple[Tensor, Tensor], lengths: Optional[Tensor]):
        return functional.lstm(x, hx[0], hx[1], self._layer_params(), self.num_layers, self.bidirectional,
                               self.dropout, self.training, lengths, layer_fn=peephole_layer)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s + f", peephole={self.peephole!r}"
