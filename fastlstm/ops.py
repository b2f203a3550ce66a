"""The table of cell ops, and everything Python adds to them: fake kernels and autograd, written once from
the table, and the one-layer functions the modules call.

Every cell has three ops (csrc/fastlstm.cpp holds their schemas): ``<cell>_forward`` returns the layer's
results and then what its backward needs (saved tensors); ``<cell>_inference`` returns only the results;
``<cell>_backward`` maps the results' gradients and the saved tensors to the inputs' gradients. The names of
the schema arguments wire them together: the backward op's ``grad_<x>`` is the gradient of the forward op's
output ``x``, and any other argument of the backward op is the forward op's input or output of that name.

Shapes, for one layer in one direction (T steps, B batch, I input, H hidden, G = gates·H, P = proj_size or
H): input [T, B, I] time-major; h0 [B, P]; c0 [B, H]; w_ih [G, I]; w_hh [G, P]; b_ih, b_hh [G];
lengths int64 [B] on the input's device (element b is active at step t iff t < lengths[b]).
LSTM: G = 4H, w_hr [P, H]. GRU: G = 3H, no c0. Peephole: w_ci, w_cf, w_co [H] or [H, H].
LayerNorm LSTM: ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b [4H], ln_c_w, ln_c_b [H].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loads the shared library, which registers the ops)

_REDUCED = (torch.float16, torch.bfloat16)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half types carry the cell state in float32; see csrc/lstm_layer.h.
    return torch.float32 if dtype in _REDUCED else dtype


ACC = "acc"  # an output stored in the accumulation dtype (float32 for half types)


@dataclass(frozen=True)
class CellOps:
    """One row of the table: a cell's three ops and what Python needs to know about them.

    name: the op prefix (``lstm`` -> fastlstm::lstm_forward, lstm_inference, lstm_backward).
    gates: gate rows per hidden unit (4 for LSTM cells, 3 for the GRU): H = w_ih.shape[0] // gates.
    outputs: every output of the forward op, by schema name, in order, as its shape in the symbols T, B, H,
        G, P, with ACC last for one held in the accumulation dtype; the inference op returns the first
        ``n_results`` of them, and only those are differentiable.
    grads: forward input -> the backward op's output that is its gradient; inputs not named here (lengths,
        flags) get none. b_ih and b_hh may share one (their gradients are equal when both sit outside every
        nonlinearity, as in the LSTM).
    sized: backward outputs whose argument is not an input of the backward op (the biases), as shapes.
    """
    name: str
    gates: int
    outputs: dict
    n_results: int
    grads: dict
    sized: dict = field(default_factory=dict)

    @property
    def forward_name(self) -> str:
        return f"fastlstm::{self.name}_forward"

    def exists(self) -> bool:
        return hasattr(torch.ops.fastlstm, f"{self.name}_forward")

    def op(self, kind: str) -> torch._ops.OpOverload:
        return getattr(torch.ops.fastlstm, f"{self.name}_{kind}").default


_LSTM_RESULTS = {"output": ("T", "B", "P"), "h_n": ("B", "P"), "c_n": ("B", "H")}
_LSTM_SAVED = {"gates": ("T", "B", "G"), "cells": ("T", "B", "H", ACC)}
_LSTM_GRADS = {"input": "grad_input", "h0": "grad_h0", "c0": "grad_c0", "w_ih": "grad_w_ih",
               "w_hh": "grad_w_hh", "b_ih": "grad_bias", "b_hh": "grad_bias"}

CELL_OPS: dict[str, CellOps] = {row.name: row for row in (
    CellOps("lstm", 4, {**_LSTM_RESULTS, **_LSTM_SAVED}, 3, {**_LSTM_GRADS, "w_hr": "grad_w_hr"},
            {"grad_bias": ("G",)}),
    CellOps("gru", 3, {"output": ("T", "B", "H"), "h_n": ("B", "H"), "gates": ("T", "B", "G"),
                       "hn": ("T", "B", "H")}, 2,
            {"input": "grad_input", "h0": "grad_h0", "w_ih": "grad_w_ih", "w_hh": "grad_w_hh",
             "b_ih": "grad_b_ih", "b_hh": "grad_b_hh"},
            {"grad_b_ih": ("G",), "grad_b_hh": ("G",)}),
    CellOps("peephole", 4, {**_LSTM_RESULTS, **_LSTM_SAVED}, 3,
            {**_LSTM_GRADS, "w_ci": "grad_w_ci", "w_cf": "grad_w_cf", "w_co": "grad_w_co"},
            {"grad_bias": ("G",)}),
    CellOps("layernorm_lstm", 4,
            {**_LSTM_RESULTS, **_LSTM_SAVED, "norm_ih": ("T", "B", "G"), "norm_hh": ("T", "B", "G"),
             "stats": ("T", "B", 4, ACC)}, 3,
            {**_LSTM_GRADS, "ln_ih_w": "grad_ln_ih_w", "ln_ih_b": "grad_ln_ih_b", "ln_hh_w": "grad_ln_hh_w",
             "ln_hh_b": "grad_ln_hh_b", "ln_c_w": "grad_ln_c_w", "ln_c_b": "grad_ln_c_b"},
            {"grad_bias": ("G",), "grad_ln_ih_b": ("G",), "grad_ln_hh_b": ("G",)}),
)}


def _arg_names(op: torch._ops.OpOverload) -> list[str]:
    return [a.name for a in op._schema.arguments]


def _ret_names(op: torch._ops.OpOverload) -> list[str]:
    return [r.name for r in op._schema.returns]


def _sizes(row: CellOps, args: dict) -> dict:
    x, h0, w_ih = args["input"], args["h0"], args["w_ih"]
    G = w_ih.shape[0]
    return {"T": x.shape[0], "B": x.shape[1], "G": G, "H": G // row.gates, "P": h0.shape[1]}


def _empty(like: Tensor, spec: tuple, sizes: dict) -> Tensor:
    dtype = _acc_dtype(like.dtype) if spec[-1] == ACC else like.dtype
    dims = [sizes[d] if isinstance(d, str) else d for d in spec if d != ACC]
    return like.new_empty(dims, dtype=dtype)


def _register(row: CellOps) -> None:
    """Fake kernels for the row's three ops, and autograd for its forward and inference ops, from the
    schemas' names."""
    fwd, inf, bwd = row.op("forward"), row.op("inference"), row.op("backward")
    fwd_args, bwd_args, bwd_rets = _arg_names(fwd), _arg_names(bwd), _ret_names(bwd)
    out_names = list(row.outputs)
    assert _ret_names(fwd) == out_names and _ret_names(inf) == out_names[:row.n_results], row.name
    specs = list(row.outputs.values())

    # Fake kernels: contiguous results, whatever the arguments' strides (empty_like would copy a transposed
    # input's layout, which the kernels do not return), as the kernels' GEMMs and loops write them.
    def forward_fake(*a):
        args = dict(zip(fwd_args, a))
        sizes = _sizes(row, args)
        return tuple(_empty(args["input"], s, sizes) for s in specs)

    def inference_fake(*a):
        return forward_fake(*a)[:row.n_results]

    def backward_fake(*a):
        args = dict(zip(bwd_args, a))
        sizes = _sizes(row, args)
        x, outs = args["input"], []
        for name in bwd_rets:
            src = args.get(name[len("grad_"):], ...)
            if name in row.sized:
                outs.append(_empty(x, row.sized[name], sizes))
            elif src is None:  # an optional argument that was not given (w_hr): a [0] placeholder
                outs.append(x.new_empty(0))
            else:
                outs.append(x.new_empty(src.shape))
        return tuple(outs)

    torch.library.register_fake(fwd, forward_fake)
    torch.library.register_fake(inf, inference_fake)
    torch.library.register_fake(bwd, backward_fake)

    # Autograd on the forward op itself (pytorch/extension-cpp's pattern), so torch.ops.fastlstm.*_forward
    # is differentiable wherever it is called from. Backward depends only on what was saved, so it works in
    # eval mode too. The backward op's arguments come from the forward op's inputs and outputs by name.
    saved_names = [n for n in bwd_args if not n.startswith("grad_")]
    grad_inputs = {n: i for i, n in enumerate(bwd_args) if n.startswith("grad_")}
    n_grads = len(grad_inputs)
    ret_index = {n: i for i, n in enumerate(bwd_rets)}
    grad_of = [ret_index[row.grads[n]] if n in row.grads else None for n in fwd_args]
    is_tensor_arg = [a.type.isSubtypeOf(torch._C.OptionalType.ofTensor()) for a in bwd._schema.arguments]

    def split(values: dict) -> tuple[list, list]:
        # The backward op's non-gradient arguments, tensors (to save for backward) apart from the rest.
        tensors, others = [], []
        for n, is_t in zip(bwd_args[n_grads:], is_tensor_arg[n_grads:]):
            (tensors if is_t else others).append(values[n])
        return tensors, others

    def run_backward(ctx, grads, tensors, others) -> tuple:
        if torch.is_grad_enabled():
            # create_graph=True: the backward op has no derivative of its own. Refuse loudly rather than
            # hand back gradients that silently do not depend on the inputs.
            raise RuntimeError(f"fastlstm::{row.name}_backward is not differentiable: double backward "
                               "through fastlstm's ops is not supported")
        tensors, others = iter(tensors), iter(others)
        args = list(grads[:n_grads])
        for is_t in is_tensor_arg[n_grads:]:
            args.append(next(tensors) if is_t else next(others))
        res = bwd(*args)
        return tuple(res[k] if k is not None and present else None
                     for k, present in zip(grad_of, ctx.present))

    def setup_context(ctx, inputs, output):
        values = dict(zip(fwd_args, inputs))
        values.update(zip(out_names, output))
        tensors, ctx.others = split(values)
        ctx.save_for_backward(*tensors)
        ctx.present = [v is not None for v in inputs]
        ctx.mark_non_differentiable(*output[row.n_results:])

    def backward(ctx, *grads):
        return run_backward(ctx, grads, ctx.saved_tensors, ctx.others)

    # The inference op saves nothing, so its gradient recomputes: the forward op again, then the backward op.
    # The layer functions never need this (they call the forward op when a gradient is wanted); it makes the
    # inference op correct, not fast, for anyone who differentiates it directly.
    is_tensor_input = [a.type.isSubtypeOf(torch._C.OptionalType.ofTensor()) for a in fwd._schema.arguments]

    def setup_context_inference(ctx, inputs, output):
        ctx.save_for_backward(*[v for v, is_t in zip(inputs, is_tensor_input) if is_t])
        ctx.others = [v for v, is_t in zip(inputs, is_tensor_input) if not is_t]
        ctx.present = [v is not None for v in inputs]

    def backward_inference(ctx, *grads):
        saved, others = iter(ctx.saved_tensors), iter(ctx.others)
        inputs = [next(saved) if is_t else next(others) for is_t in is_tensor_input]
        with torch.no_grad():
            output = fwd(*inputs)
        values = dict(zip(fwd_args, inputs))
        values.update(zip(out_names, output))
        return run_backward(ctx, grads, *split(values))

    # Every argument and result of the backward op must be accounted for by the names.
    assert all(n in fwd_args or n in out_names for n in saved_names), row.name
    assert all(n in row.sized or n[len("grad_"):] in bwd_args for n in bwd_rets), row.name
    assert list(grad_inputs) == [f"grad_{n}" for n in out_names[:row.n_results]] == bwd_args[:n_grads], row.name
    torch.library.register_autograd(fwd, backward, setup_context=setup_context)
    torch.library.register_autograd(inf, backward_inference, setup_context=setup_context_inference)


# (row name, device type) -> whether this build has kernels for it. Looked up once (and by register_cell): a
# dispatcher query inside a module's forward would break torch.compile's graph.
_HAS: dict = {}


def _query_kernels(row: CellOps) -> None:
    for dev, key in (("cpu", "CPU"), ("cuda", "CUDA")):
        _HAS[row.name, dev] = row.exists() and torch._C._dispatch_has_kernel_for_dispatch_key(row.forward_name, key)


def has_kernels(cell: str, device_type: str) -> bool:
    """Whether this build has kernels for the cell's ops (a CELL_OPS name) on this device type."""
    return _HAS.get((cell, device_type), False)


for _row in CELL_OPS.values():
    _query_kernels(_row)
    # layernorm_lstm's ops come with the C++ engine; until a build has them, its row waits (see register_cell).
    if _row.exists():
        _register(_row)


def register_cell(name: str) -> None:
    """Register the fakes and autograd of a row whose ops were defined after fastlstm was imported (a test's
    stand-in, say), and take note of their kernels."""
    _register(CELL_OPS[name])
    _query_kernels(CELL_OPS[name])


# --------------------------------------------------------------------------------------------------------
# The one-layer functions. Each picks the inference op (which saves nothing) when no gradient is needed,
# and then calls it below the Autograd key: the inference op's autograd kernel (above) is Python, and
# merely passing through it costs ~6 us per call under no_grad, half the one-step kernel. (In inference
# mode the dispatcher skips autograd by itself; under torch.compile the guard is not traceable and not
# needed.) The requires_grad tests are spelled out rather than any(<generator>), and the overloads are
# resolved once here: on the one-step streaming path either would cost about as much as the kernel.

_compiling = torch.compiler.is_compiling
_inference_mode = torch.is_inference_mode_enabled
_below_autograd = torch._C._AutoDispatchBelowAutograd
_lstm_forward = torch.ops.fastlstm.lstm_forward.default
_lstm_inference = torch.ops.fastlstm.lstm_inference.default
_gru_forward = torch.ops.fastlstm.gru_forward.default
_gru_inference = torch.ops.fastlstm.gru_inference.default
_peephole_forward = torch.ops.fastlstm.peephole_forward.default
_peephole_inference = torch.ops.fastlstm.peephole_inference.default


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
    if torch.is_grad_enabled() and (
            input.requires_grad or h0.requires_grad or c0.requires_grad or w_ih.requires_grad
            or w_hh.requires_grad or (b_ih is not None and b_ih.requires_grad)
            or (b_hh is not None and b_hh.requires_grad) or (w_hr is not None and w_hr.requires_grad)):
        return _lstm_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)[:3]
    if _compiling() or _inference_mode():  # in this order: Dynamo cannot trace the second
        return _lstm_inference(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    with _below_autograd():
        return _lstm_inference(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)


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
    """One GRU layer in one direction over a whole sequence (gate order r, z, n).

    input [T, B, I], h0 [B, H] -> (output [T, B, H], h_n [B, H]). Differentiable in every tensor argument;
    when no gradient is needed the inference op runs, which saves nothing for backward.
    """
    if torch.is_grad_enabled() and (
            input.requires_grad or h0.requires_grad or w_ih.requires_grad or w_hh.requires_grad
            or (b_ih is not None and b_ih.requires_grad) or (b_hh is not None and b_hh.requires_grad)):
        return _gru_forward(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)[:2]
    if _compiling() or _inference_mode():  # in this order: Dynamo cannot trace the second
        return _gru_inference(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
    with _below_autograd():
        return _gru_inference(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)


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
    if torch.is_grad_enabled() and (
            input.requires_grad or h0.requires_grad or c0.requires_grad or w_ih.requires_grad
            or w_hh.requires_grad or (b_ih is not None and b_ih.requires_grad)
            or (b_hh is not None and b_hh.requires_grad) or w_ci.requires_grad or w_cf.requires_grad
            or w_co.requires_grad):
        return _peephole_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, lengths, reverse)[:3]
    if _compiling() or _inference_mode():  # in this order: Dynamo cannot trace the second
        return _peephole_inference(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, lengths, reverse)
    with _below_autograd():
        return _peephole_inference(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, lengths, reverse)


def layernorm_lstm_layer(
    input: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    ln_ih_w: Tensor,
    ln_ih_b: Tensor,
    ln_hh_w: Tensor,
    ln_hh_b: Tensor,
    ln_c_w: Tensor,
    ln_c_b: Tensor,
    lengths: Optional[Tensor] = None,
    reverse: bool = False,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """One layer-normalised LSTM layer (Ba et al. 2016, section 3.1) in one direction over a whole sequence.

    input [T, B, I], h0 [B, H], c0 [B, H], ln_ih_*/ln_hh_* [4H], ln_c_* [H]
    -> (output [T, B, H], h_n [B, H], c_n [B, H]); c_n is the cell state before its layer norm.
    Differentiable in every tensor argument; when no gradient is needed the inference op runs.
    """
    ops = torch.ops.fastlstm  # looked up per call: these ops come with the C++ engine (see CELL_OPS)
    args = (input, h0, c0, w_ih, w_hh, b_ih, b_hh, ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, lengths,
            reverse, eps)
    if torch.is_grad_enabled() and (
            input.requires_grad or h0.requires_grad or c0.requires_grad or w_ih.requires_grad
            or w_hh.requires_grad or (b_ih is not None and b_ih.requires_grad)
            or (b_hh is not None and b_hh.requires_grad) or ln_ih_w.requires_grad or ln_ih_b.requires_grad
            or ln_hh_w.requires_grad or ln_hh_b.requires_grad or ln_c_w.requires_grad or ln_c_b.requires_grad):
        return ops.layernorm_lstm_forward.default(*args)[:3]
    if _compiling() or _inference_mode():  # in this order: Dynamo cannot trace the second
        return ops.layernorm_lstm_inference.default(*args)
    with _below_autograd():
        return ops.layernorm_lstm_inference.default(*args)
