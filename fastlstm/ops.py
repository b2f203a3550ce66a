"""The table of cell ops, and everything Python adds to them: fake kernels, autograd, vmap rules and a
torch.func-transformable form, written once from the table, and the one-layer functions the modules call.

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
import torch.autograd.forward_ad as _fwad
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

    @property
    def has_c(self) -> bool:
        return "c_n" in self.outputs

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


def _empty(like: Tensor, spec: tuple, sizes: dict) -> Tensor:
    dtype = _acc_dtype(like.dtype) if spec[-1] == ACC else like.dtype
    dims = [sizes[d] if isinstance(d, str) else d for d in spec if d != ACC]
    return like.new_empty(dims, dtype=dtype)


# --------------------------------------------------------------------------------------------------------
# Double backward. The fused backward ops are not themselves differentiable, so when autograd asks for a
# graph of the gradient (create_graph=True, as in a gradient penalty, gradgradcheck or torch.func.grad),
# the registered backward recomputes the layer with these composites -- each cell's step in plain torch ops
# -- and differentiates that with autograd: second (and higher) derivatives are then exact. They compute in
# the kernels' accumulation dtype (float32 for half inputs) and return the input's dtype, as the ops do.
# Only the results (output, h_n[, c_n]) are produced: the saved tensors are the fused ops' business.

def _scan(step, gx: Tensor, states: list, lengths: Optional[Tensor], reverse: bool) -> tuple:
    """Runs step(gx_t, *states) -> new states (the first is the step's output) over time; with lengths, an
    element whose step t >= lengths[b] keeps its state and outputs zeros, as the ops do."""
    T = gx.shape[0]
    outs: list = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        new = step(gx[t], *states)
        if lengths is not None:
            active = (t < lengths).unsqueeze(1)
            states = [torch.where(active, n, s) for n, s in zip(new, states)]
            outs[t] = torch.where(active, new[0], torch.zeros_like(new[0]))
        else:
            states = list(new)
            outs[t] = new[0]
    output = torch.stack(outs) if T else states[0].new_zeros((0,) + tuple(states[0].shape))
    return (output, *states)


def _input_term(v: dict, bias_names=("b_ih", "b_hh")) -> Tensor:
    gx = v["input"] @ v["w_ih"].t()
    for n in bias_names:
        if v.get(n) is not None:
            gx = gx + v[n]
    return gx


def _lstm_composite(v: dict) -> tuple:
    w_hh, w_hr = v["w_hh"], v.get("w_hr")

    def step(gx, h, c):
        i, f, g, o = (gx + h @ w_hh.t()).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h if w_hr is None else h @ w_hr.t()), c
    return _scan(step, _input_term(v), [v["h0"], v["c0"]], v["lengths"], v["reverse"])


def _gru_composite(v: dict) -> tuple:
    w_hh, b_hh = v["w_hh"], v["b_hh"]
    # b_hn sits inside r * (W_hn h + b_hn), so b_hh is added per step, not folded into the input term.
    gx = _input_term(v, ("b_ih",))

    def step(gx_t, h):
        gh = h @ w_hh.t()
        if b_hh is not None:
            gh = gh + b_hh
        xr, xz, xn = gx_t.chunk(3, 1)
        hr, hz, hn = gh.chunk(3, 1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return ((1 - z) * n + z * h,)
    return _scan(step, gx, [v["h0"]], v["lengths"], v["reverse"])


def _peephole_composite(v: dict) -> tuple:
    w_hh, w_ci, w_cf, w_co = v["w_hh"], v["w_ci"], v["w_cf"], v["w_co"]

    def peep(c, w):  # diagonal [H] (elementwise) or full [H, H] (c @ w^T)
        return c * w if w.dim() == 1 else c @ w.t()

    def step(gx, h, c):
        xi, xf, xg, xo = (gx + h @ w_hh.t()).chunk(4, 1)
        i, f = torch.sigmoid(xi + peep(c, w_ci)), torch.sigmoid(xf + peep(c, w_cf))
        c = f * c + i * torch.tanh(xg)
        return torch.sigmoid(xo + peep(c, w_co)) * torch.tanh(c), c
    return _scan(step, _input_term(v), [v["h0"], v["c0"]], v["lengths"], v["reverse"])


def _layernorm_lstm_composite(v: dict) -> tuple:
    w_hh, eps = v["w_hh"], v["eps"]
    G, H = w_hh.shape[0], w_hh.shape[0] // 4
    ln = torch.nn.functional.layer_norm
    # LN(W_ih x) for every step at once; the biases are added after the norm.
    gx = ln(v["input"] @ v["w_ih"].t(), (G,), v["ln_ih_w"], v["ln_ih_b"], eps)
    for n in ("b_ih", "b_hh"):
        if v[n] is not None:
            gx = gx + v[n]

    def step(gx_t, h, c):
        pre = gx_t + ln(h @ w_hh.t(), (G,), v["ln_hh_w"], v["ln_hh_b"], eps)
        i, f, g, o = pre.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(ln(c, (H,), v["ln_c_w"], v["ln_c_b"], eps)), c
    return _scan(step, gx, [v["h0"], v["c0"]], v["lengths"], v["reverse"])


COMPOSITES = {"lstm": _lstm_composite, "gru": _gru_composite, "peephole": _peephole_composite,
              "layernorm_lstm": _layernorm_lstm_composite}


def composite_layer(name: str, values: dict) -> tuple:
    """The results of cell ``name``'s forward op (output, h_n[, c_n]) from its arguments by schema name,
    computed with differentiable torch ops (in the accumulation dtype, returned in the input's)."""
    if name not in COMPOSITES:
        raise RuntimeError(f"fastlstm::{name}_backward: double backward (create_graph=True) needs a "
                           f"differentiable composite of the {name!r} cell, and there is none")
    dtype = values["input"].dtype
    acc = _acc_dtype(dtype)
    v = {k: (t.to(acc) if isinstance(t, Tensor) and t.is_floating_point() else t) for k, t in values.items()}
    return tuple(r.to(dtype) for r in COMPOSITES[name](v))


def _no_materialized_grads(ctx, results) -> None:
    """Autograd would otherwise hand backward a zero gradient for every output without one, the
    non-differentiable saved ones included: a [T, B, G] zero tensor for the gates alone, written in full
    each call (~8% of a training call at T=50, B=64, H=256, and its peak memory up by the saved tensors'
    size). Only the results' gradients are used; _result_grads makes the missing ones, from these shapes."""
    ctx.set_materialize_grads(False)
    ctx.result_meta = tuple((r.shape, r.dtype, r.device) for r in results)


def _result_grads(ctx, grads: tuple) -> tuple:
    """The gradients of the layer's results, zeros where autograd passed None (see _no_materialized_grads)."""
    return tuple(torch.zeros(shape, dtype=dtype, device=device) if g is None else g
                 for g, (shape, dtype, device) in zip(grads, ctx.result_meta))


def _recompute_backward(row: CellOps, ctx, grads: tuple, values: dict, fwd_args: list) -> tuple:
    """The forward op's input gradients as a differentiable graph: autograd through composite_layer."""
    wrt = [i for i, n in enumerate(fwd_args) if ctx.needs_input_grad[i] and values[n] is not None]
    out = [None] * len(fwd_args)
    if not wrt:
        return tuple(out)
    with torch.enable_grad():
        results = composite_layer(row.name, {n: values[n] for n in fwd_args})
        got = torch.autograd.grad(results, [values[fwd_args[i]] for i in wrt], grads, create_graph=True,
                                  allow_unused=True)
    for i, g in zip(wrt, got):
        out[i] = torch.zeros_like(values[fwd_args[i]]) if g is None else g
    return tuple(out)


# --------------------------------------------------------------------------------------------------------
# Argument checks for the fake kernels, mirroring csrc/layer.h's Check (check_layer, the cells' params and
# the backward's saved tensors) and its messages, so that a call that would fail on a real device fails the
# same way under FakeTensorMode and on the meta device -- and a call with only some arguments on the meta
# device (which dispatch sends to the fake kernel) raises instead of returning uninitialised memory.
# Sizes are compared with torch._check: under torch.compile with dynamic shapes a size is symbolic, and an
# equality the call needs anyway is a fine guard (or a runtime assert, for an unbacked size).

_C10_DTYPE = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
              torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
              torch.uint8: "Byte", torch.bool: "Bool", torch.complex64: "ComplexFloat",
              torch.complex128: "ComplexDouble"}
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_LONG = "long"  # a spec's dtype: int64 (lengths), whatever the input's dtype


def _dtype_str(d: torch.dtype) -> str:
    return _C10_DTYPE.get(d, str(d).replace("torch.", ""))


def _describe(t) -> str:
    if not isinstance(t, Tensor):
        return "an undefined tensor"
    s = f"a {_dtype_str(t.dtype)} tensor of shape {list(t.shape)} on {t.device}"
    return s if t.layout == torch.strided else s + f" with layout {t.layout}"


class _FakeCheck:
    """csrc/layer.h's Check: every tensor of its exact shape, dtype and device, else the same message."""

    def __init__(self, op: str, input: Tensor):
        self.op, self.device, self.dtype = op, input.device, input.dtype

    def fail(self, name: str, what: str, t=None, expected: bool = True):
        msg = f"fastlstm::{self.op}: argument '{name}' " + (f"must be {what}, got {_describe(t)}" if expected
                                                             else what)
        raise RuntimeError(msg)

    def __call__(self, name: str, t, shape: tuple, dtype=None) -> None:
        want = torch.int64 if dtype == _LONG else _acc_dtype(self.dtype) if dtype == ACC else self.dtype
        expected = (f"a {_dtype_str(want)} tensor of shape "
                    f"[{', '.join('*' if isinstance(k, int) and k < 0 else str(k) for k in shape)}] on {self.device}")
        if not (isinstance(t, Tensor) and t.layout == torch.strided and t.dim() == len(shape)
                and t.dtype == want and t.device == self.device):
            self.fail(name, expected, t)
        for have, k in zip(t.shape, shape):
            if not (isinstance(k, int) and k < 0):
                torch._check(have == k, lambda: f"fastlstm::{self.op}: argument '{name}' must be {expected}, "
                                                f"got {_describe(t)}")


# Shapes of the arguments every cell may have, in the symbols of _check_args (A: the accumulation dtype).
_ARG_SPECS = {
    "w_hh": (("G", "P"),), "b_ih": (("G",),), "b_hh": (("G",),), "h0": (("B", "P"),), "c0": (("B", "H"),),
    "lengths": (("B",), _LONG),
    "grad_output": (("T", "B", "P"),), "grad_h_n": (("B", "P"),), "grad_c_n": (("B", "H"),),
    "output": (("T", "B", "P"),), "gates": (("T", "B", "G"),), "cells": (("T", "B", "H"), ACC),
    "hn": (("T", "B", "H"),), "norm_ih": (("T", "B", "G"),), "norm_hh": (("T", "B", "G"),),
    "stats": (("T", "B", 4), ACC),
    "ln_ih_w": (("G",),), "ln_ih_b": (("G",),), "ln_hh_w": (("G",),), "ln_hh_b": (("G",),),
    "ln_c_w": (("H",),), "ln_c_b": (("H",),),
}
_PEEPHOLES = ("w_ci", "w_cf", "w_co")


def _check_args(row: CellOps, op: str, args: dict) -> dict:
    """Raises as the C++ ops do on a malformed call; returns the sizes T, B, I, H, G, P."""
    x = args["input"]
    if not (isinstance(x, Tensor) and x.layout == torch.strided and x.dim() == 3):
        # No input to take a device and dtype from: the C++ names the input alone.
        raise RuntimeError(f"fastlstm::{op}: argument 'input' must be a 3-D tensor [T, B, I] (strided), got "
                           f"{_describe(x)}")
    chk = _FakeCheck(op, x)
    if x.dtype not in _FLOATS:
        chk.fail("input", f"must be float32, float64, bfloat16 or float16, got {_dtype_str(x.dtype)}",
                 expected=False)
    T, B, I = x.shape
    w_ih, g = args["w_ih"], row.gates
    if not (isinstance(w_ih, Tensor) and w_ih.dim() == 2):
        chk.fail("w_ih", f"a 2-D tensor [{g}H, {I}] with H > 0", w_ih)
    G = w_ih.shape[0]
    torch._check(G > 0, lambda: f"fastlstm::{op}: argument 'w_ih' must be a 2-D tensor [{g}H, {I}] with H > 0, "
                                f"got {_describe(w_ih)}")
    torch._check(G % g == 0, lambda: f"fastlstm::{op}: argument 'w_ih' must be a 2-D tensor [{g}H, {I}] with "
                                     f"H > 0, got {_describe(w_ih)}")
    H = G // g
    chk("w_ih", w_ih, (G, I))
    w_hr = args.get("w_hr")
    P = H
    if w_hr is not None:
        chk("w_hr", w_hr, (-1, H))
        P = w_hr.shape[0]
        torch._check(P > 0, lambda: f"fastlstm::{op}: argument 'w_hr' must have proj_size > 0 rows, got [0, {H}]")
    sizes = {"T": T, "B": B, "I": I, "H": H, "G": G, "P": P}
    if _PEEPHOLES[0] in args:
        ws = [args[n] for n in _PEEPHOLES]
        full = isinstance(ws[0], Tensor) and ws[0].dim() == 2
        shape = (H, H) if full else (H,)
        if not all(isinstance(w, Tensor) and w.dim() == len(shape) for w in ws):
            chk.fail("w_ci", f"w_cf and w_co must all be [{H}] (diagonal) or all [{H}, {H}] (full), got "
                     + ", ".join(_describe(w) for w in ws), expected=False)
        for n, w in zip(_PEEPHOLES, ws):
            chk(n, w, shape)
    for name, t in args.items():
        spec = _ARG_SPECS.get(name)
        if spec is None or (t is None and name in ("b_ih", "b_hh", "lengths")):
            continue
        if not row.has_c and name in ("c0", "grad_c_n", "cells"):
            continue
        chk(name, t, tuple(sizes[d] if isinstance(d, str) else d for d in spec[0]), *spec[1:])
    return sizes


class _Static:
    """The non-tensor part of a transformed layer's context (see _register's Layer): the differentiable
    inputs present (``names``), the names of the saved tensors in order (``saved``) and the non-tensor
    arguments by name (``others``). One object, which pytree treats as a leaf, so functorch's transforms pass
    it through untouched."""
    __slots__ = ("names", "saved", "others")

    def __init__(self, names: tuple, saved: list, others: dict):
        self.names, self.saved, self.others = names, saved, others

    def values(self, tensors) -> dict:
        """The saved tensors and the non-tensor arguments, by schema name."""
        values = dict(zip(self.saved, tensors))
        values.update(self.others)
        return values


# cell name -> its layer as a torch.func-transformable Function, (forward op's arguments) -> results.
_TRANSFORMED: dict = {}


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
    def forward_fake(*a, op=f"{row.name}_forward"):
        args = dict(zip(fwd_args, a))
        sizes = _check_args(row, op, args)
        return tuple(_empty(args["input"], s, sizes) for s in specs)

    def inference_fake(*a):
        return forward_fake(*a, op=f"{row.name}_inference")[:row.n_results]

    def backward_fake(*a):
        args = dict(zip(bwd_args, a))
        sizes = _check_args(row, f"{row.name}_backward", args)
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

    # Both forward ops save every tensor input (the double-backward path below recomputes from all of them,
    # biases included, which the backward op does not take) plus the outputs the backward op reads. Saving a
    # reference costs nothing measurable; see tests/test_double_backward.py for the timing check.
    is_tensor_input = [a.type.isSubtypeOf(torch._C.OptionalType.ofTensor()) for a in fwd._schema.arguments]
    tensor_inputs = [n for n, is_t in zip(fwd_args, is_tensor_input) if is_t]
    other_inputs = [n for n, is_t in zip(fwd_args, is_tensor_input) if not is_t]
    saved_outputs = [n for n in saved_names if n in out_names]

    def run_backward(ctx, grads, values: dict) -> tuple:
        if torch.is_grad_enabled():
            # create_graph=True: the fused backward op has no derivative of its own, so recompute the layer
            # with differentiable torch ops and let autograd differentiate that, twice if asked.
            return _recompute_backward(row, ctx, grads[:n_grads], values, fwd_args)
        args = list(grads[:n_grads])
        args += [values[n] for n in bwd_args[n_grads:]]
        res = bwd(*args)
        return tuple(res[k] if k is not None and present else None
                     for k, present in zip(grad_of, ctx.present))

    def setup_context(ctx, inputs, output):
        values = dict(zip(fwd_args, inputs))
        values.update(zip(out_names, output))
        ctx.save_for_backward(*[values[n] for n in tensor_inputs + saved_outputs])
        ctx.others = [values[n] for n in other_inputs]
        ctx.present = [v is not None for v in inputs]
        ctx.mark_non_differentiable(*output[row.n_results:])
        _no_materialized_grads(ctx, output[:row.n_results])

    def saved_values(ctx) -> dict:
        values = dict(zip(tensor_inputs + saved_outputs, ctx.saved_tensors))
        values.update(zip(other_inputs, ctx.others))
        return values

    def backward(ctx, *grads):
        return run_backward(ctx, _result_grads(ctx, grads[:n_grads]), saved_values(ctx))

    # The inference op saves nothing but its inputs, so its gradient recomputes: the forward op again, then
    # the backward op. The layer functions never need this (they call the forward op when a gradient is
    # wanted); it makes the inference op correct, not fast, for anyone who differentiates it directly.
    def setup_context_inference(ctx, inputs, output):
        values = dict(zip(fwd_args, inputs))
        ctx.save_for_backward(*[values[n] for n in tensor_inputs])
        ctx.others = [values[n] for n in other_inputs]
        ctx.present = [v is not None for v in inputs]

    def backward_inference(ctx, *grads):
        values = dict(zip(tensor_inputs, ctx.saved_tensors))
        values.update(zip(other_inputs, ctx.others))
        if not torch.is_grad_enabled():
            with torch.no_grad():
                output = fwd(*[values[n] for n in fwd_args])
            values.update(zip(out_names, output))
        return run_backward(ctx, grads, values)

    # Every argument and result of the backward op must be accounted for by the names.
    assert all(n in tensor_inputs + saved_outputs + other_inputs for n in saved_names), row.name
    assert all(n in row.sized or n[len("grad_"):] in bwd_args for n in bwd_rets), row.name
    assert list(grad_inputs) == [f"grad_{n}" for n in out_names[:row.n_results]] == bwd_args[:n_grads], row.name
    torch.library.register_autograd(fwd, backward, setup_context=setup_context)

    # vmap (issue 12 item 6): the ops are batch-parallel, so a vmap over the input and/or the states is a
    # bigger batch -- fold the vmapped dimension N into B ([T, N*B, ...]) and unfold the results. Weights
    # are shared by every example; a vmap over them would be N different layers, which this does not do.
    batch_dim_of = {"input": 1, "h0": 0, "c0": 0, "lengths": 0}

    def make_vmap(op, kind):
        def vmap_rule(info, in_dims, *a):
            N = info.batch_size
            args = list(a)
            for n, d, v in zip(fwd_args, in_dims, a):
                if d is not None and n not in batch_dim_of:
                    raise RuntimeError(f"fastlstm::{row.name}_{kind}: vmap over argument '{n}' is not supported "
                                       "(only over input, h0, c0 and lengths: the weights must be shared)")
            for i, (n, d, v) in enumerate(zip(fwd_args, in_dims, a)):
                if n not in batch_dim_of or v is None:
                    continue
                b = batch_dim_of[n]
                v = v.movedim(d, 0) if d is not None else v.unsqueeze(0).expand(N, *v.shape)
                v = v.movedim(0, b)  # [.., N, B, ..]: N outside B, so B's rows of one example stay together
                args[i] = v.reshape(*v.shape[:b], -1, *v.shape[b + 2:])
            out = op(*args)
            res = []
            for spec, o in zip(specs, out):
                b = 1 if spec[0] == "T" else 0
                res.append(o.reshape(*o.shape[:b], N, -1, *o.shape[b + 1:]))
            return tuple(res), tuple(1 if spec[0] == "T" else 0 for spec in specs[:len(out)])
        return vmap_rule

    torch.library.register_vmap(fwd, make_vmap(fwd, "forward"))
    torch.library.register_vmap(inf, make_vmap(inf, "inference"))
    torch.library.register_autograd(inf, backward_inference, setup_context=setup_context_inference)

    # torch.func transforms (grad, vjp, jacrev, jvp, jacfwd, and vmap over any of them). The autograd that
    # register_autograd generates has no setup_context of its own, which functorch requires, so under a
    # differentiating transform the layer functions call this Function instead (_TRANSFORMED); plain
    # autograd and plain vmap keep the registrations above. Its backward is itself a Function: the fused
    # backward op for the first derivative, differentiated (second and higher orders, forward mode) through
    # composite_layer. generate_vmap_rule lets functorch vmap both through the ops' own vmap rules.
    diff_inputs = [n for n in tensor_inputs if n != "lengths"]

    def composite_vjp(values: dict, names: tuple, grads: tuple, prims: tuple) -> tuple:
        """The layer's input gradients (one per name in ``names``) for its results' gradients ``grads``,
        through composite_layer: differentiable in ``grads`` and ``prims`` (the values of ``names``) by any
        transform."""
        def results(*p):
            return composite_layer(row.name, {**values, **dict(zip(names, p))})
        _, vjp = torch.func.vjp(results, *prims)
        return vjp(tuple(grads))

    class LayerBackward(torch.autograd.Function):
        """(grads of the results, the layer's tensor inputs, the forward op's saved outputs, static)
        -> the gradient of each present differentiable input, in static.names' order."""
        generate_vmap_rule = True

        @staticmethod
        def forward(*a):
            static = a[-1]
            grads, values = a[:n_grads], static.values(a[n_grads:-1])
            res = bwd(*grads, *[values[n] for n in bwd_args[n_grads:]])
            out, seen = [], set()
            for n in static.names:
                k = ret_index[row.grads[n]]
                # b_ih and b_hh may share one result (the LSTM's grad_bias): a Function returns each once
                out.append(res[k].clone() if k in seen else res[k])
                seen.add(k)
            return tuple(out)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs[:-1])
            ctx.save_for_forward(*inputs[:-1])
            ctx.static = inputs[-1]

        @staticmethod
        def _split(ctx):
            saved, static = ctx.saved_tensors, ctx.static
            values = static.values(saved[n_grads:])
            return static, values, tuple(saved[:n_grads]), tuple(values[n] for n in static.names)

        @staticmethod
        def backward(ctx, *ggrads):
            static, values, grads, prims = LayerBackward._split(ctx)
            _, vjp2 = torch.func.vjp(lambda g, p: composite_vjp(values, static.names, g, p), grads, prims)
            d_grads, d_prims = vjp2(tuple(ggrads))
            d_values = dict(zip(static.names, d_prims))
            return (*d_grads, *[d_values.get(n) for n in static.saved], None)

        @staticmethod
        def jvp(ctx, *tangents):
            static, values, grads, prims = LayerBackward._split(ctx)
            t_values = static.values(tangents[n_grads:-1])
            t_grads = tuple(torch.zeros_like(g) if t is None else t for g, t in zip(grads, tangents[:n_grads]))
            t_prims = tuple(torch.zeros_like(p) if t_values[n] is None else t_values[n]
                            for n, p in zip(static.names, prims))
            _, out = torch.func.jvp(lambda g, p: composite_vjp(values, static.names, g, p), (grads, prims),
                                    (t_grads, t_prims))
            return tuple(out)

    class Layer(torch.autograd.Function):
        """The forward op (every output; only the first n_results are differentiable) as a Function that
        torch.func can transform."""
        generate_vmap_rule = True

        @staticmethod
        def forward(*a):
            return tuple(fwd(*a))

        @staticmethod
        def setup_context(ctx, inputs, output):
            values = dict(zip(fwd_args, inputs))
            values.update(zip(out_names, output))
            saved = [values[n] for n in tensor_inputs + saved_outputs]
            # the same list for both: under vmap, each records its tensors' batch dims in one shared slot
            ctx.save_for_backward(*saved)
            ctx.save_for_forward(*saved)
            ctx.static = _Static(tuple(n for n in diff_inputs if values[n] is not None),
                                 tensor_inputs + saved_outputs, {n: values[n] for n in other_inputs})
            ctx.mark_non_differentiable(*output[row.n_results:])
            _no_materialized_grads(ctx, output[:row.n_results])

        @staticmethod
        def backward(ctx, *grads):
            static = ctx.static
            grads = _result_grads(ctx, grads[:n_grads])
            got = dict(zip(static.names, LayerBackward.apply(*grads, *ctx.saved_tensors, static)))
            return tuple(got.get(n) for n in fwd_args)

        @staticmethod
        def jvp(ctx, *tangents):
            static = ctx.static
            values = static.values(ctx.saved_tensors)
            t_of = dict(zip(fwd_args, tangents))
            prims = tuple(values[n] for n in static.names)
            t_prims = tuple(torch.zeros_like(p) if t_of[n] is None else t_of[n] for n, p in zip(static.names, prims))
            def f(*p):
                return composite_layer(row.name, {**values, **dict(zip(static.names, p))})

            if _functorch_active():
                _, out = torch.func.jvp(f, prims, t_prims)
            else:
                # Plain forward-mode AD (a dual_level): autograd runs this with forward AD off and cannot nest
                # torch.func.jvp, so the JVP is taken by reverse mode twice: J t = d/du <J^T u, t>.
                def primal(v):
                    return _fwad.unpack_dual(v).primal if isinstance(v, Tensor) else v

                values = {n: primal(v) for n, v in values.items()}
                with torch.enable_grad():
                    p = [primal(q).detach().requires_grad_() for q in prims]
                    res = f(*p)
                    us = [torch.zeros_like(r, requires_grad=True) for r in res]
                    g = torch.autograd.grad(res, p, us, create_graph=True, allow_unused=True)
                    inner = sum((gi * ti).sum() for gi, ti in zip(g, t_prims) if gi is not None)
                    out = torch.autograd.grad(inner, us, allow_unused=True) if torch.is_tensor(inner) else [None] * len(us)
                out = tuple(torch.zeros_like(r) if t is None else t.detach() for r, t in zip(res, out))
            return (*out, *[None] * (len(out_names) - row.n_results))

    Layer.__name__, LayerBackward.__name__ = f"{row.name}_layer", f"{row.name}_layer_backward"
    _TRANSFORMED[row.name] = lambda *a: Layer.apply(*a)[:row.n_results]

    # The backward op under vmap (LayerBackward's generated vmap rule calls it so, for per-sample gradients):
    # one call per vmapped example. Folding the examples into the batch, as the forward op's rule does, would
    # sum the weight gradients over them.
    def backward_vmap(info, in_dims, *a):
        outs = [bwd(*[v if d is None or v is None else v.select(d, k) for v, d in zip(a, in_dims)])
                for k in range(info.batch_size)]
        res = tuple(torch.stack(o) for o in zip(*outs))
        return res, (0,) * len(res)

    torch.library.register_vmap(bwd, backward_vmap)


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
    # A row ahead of the build (a new cell whose C++ is not compiled in yet) waits; see register_cell.
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
_layernorm_lstm_forward = torch.ops.fastlstm.layernorm_lstm_forward.default
_layernorm_lstm_inference = torch.ops.fastlstm.layernorm_lstm_inference.default
_functorch_active = torch._C._are_functorch_transforms_active


def _transformed() -> bool:
    """Whether the layer must run as the transformable Function: a differentiating torch.func transform, or
    forward-mode AD (torch.autograd.forward_ad.dual_level), whose tangents the ops alone would drop without a
    word on a frozen module (the inference op has no derivative at all)."""
    return (_functorch_active() and _differentiating()) or _fwad._current_level >= 0


def _differentiating() -> bool:
    """Whether a torch.func transform that differentiates (grad, vjp, jacrev, jvp, jacfwd) is on the stack.
    The layer functions then run the layer as a Function functorch can transform (_TRANSFORMED); under vmap
    alone the ops' own vmap rules and autograd serve, with the fused backward. Asked only once
    _functorch_active() (one C call, all the streaming path pays) says some transform is."""
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    return any(i.key() in (TransformType.Grad, TransformType.Jvp) for i in retrieve_all_functorch_interpreters())


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
    if _transformed():  # torch.func.grad, jacrev, jvp, ...; forward-mode AD
        return _TRANSFORMED["lstm"](input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
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
    if _transformed():  # torch.func.grad, jacrev, jvp, ...; forward-mode AD
        return _TRANSFORMED["gru"](input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
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
    if _transformed():  # torch.func.grad, jacrev, jvp, ...; forward-mode AD
        return _TRANSFORMED["peephole"](input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, lengths, reverse)
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
    args = (input, h0, c0, w_ih, w_hh, b_ih, b_hh, ln_ih_w, ln_ih_b, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, lengths,
            reverse, eps)
    if _transformed():
        return _TRANSFORMED["layernorm_lstm"](*args)
    if torch.is_grad_enabled() and (
            input.requires_grad or h0.requires_grad or c0.requires_grad or w_ih.requires_grad
            or w_hh.requires_grad or (b_ih is not None and b_ih.requires_grad)
            or (b_hh is not None and b_hh.requires_grad) or ln_ih_w.requires_grad or ln_ih_b.requires_grad
            or ln_hh_w.requires_grad or ln_hh_b.requires_grad or ln_c_w.requires_grad or ln_c_b.requires_grad):
        return _layernorm_lstm_forward(*args)[:3]
    if _compiling() or _inference_mode():  # in this order: Dynamo cannot trace the second
        return _layernorm_lstm_inference(*args)
    with _below_autograd():
        return _layernorm_lstm_inference(*args)


# ------------------------------------------------------------------------------------------------------------
# A bidirectional layer's two directions at once (issue 13 item 3): the *_inference_pair ops (CPU,
# csrc/cells/pairs.h) run each direction's inference op on one of ATen's 2 threads, single-threaded inside,
# instead of both directions one after the other on both threads. Measured on 2 threads (csrc/cells/pairs.h's
# note, README): 1.03x (B=64, H=256, GEMM-bound) to 1.7x (B=16, H=64) a layer.
_get_num_threads = torch.get_num_threads
_PAIR_OPS = {
    lstm_layer: torch.ops.fastlstm.lstm_inference_pair.default,
    gru_layer: torch.ops.fastlstm.gru_inference_pair.default,
    peephole_layer: torch.ops.fastlstm.peephole_inference_pair.default,
    layernorm_lstm_layer: torch.ops.fastlstm.layernorm_lstm_inference_pair.default,
}


def pair_op(layer_fn, x: Tensor, tensors) -> Optional[object]:
    """The pair op for layer_fn's two directions over x, where it applies, else None: x on the CPU with ATen
    on exactly 2 threads (measured there, this machine's cores; with more, a thread per direction would leave
    cores idle, and one thread cannot run two), no
    gradient needed by any of `tensors` (the pair op has no autograd: training takes the per-direction ops),
    and no torch.func transform, forward-mode AD or compiler active (the one-direction ops have their rules)."""
    if _compiling():  # first: Dynamo cannot trace get_num_threads
        return None
    op = _PAIR_OPS.get(layer_fn)
    if (op is None or x.device.type != "cpu" or _functorch_active() or _fwad._current_level >= 0
            or _get_num_threads() != 2):
        return None
    if torch.is_grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return None
    return op


def run_pair(op, args: tuple) -> tuple:
    """Calls a pair op as the layer functions call their inference ops (below autograd, which it needs
    nothing of, unless inference mode already is)."""
    if _inference_mode():
        return op(*args)
    with _below_autograd():
        return op(*args)


def _register_pair_fakes() -> None:
    """Fake kernels for the pair ops: each direction's results as its inference op's fake kernel gives them,
    with that op's checks (a direct call with a bad argument fails as the CPU kernel does)."""
    for name in ("lstm", "gru", "peephole", "layernorm_lstm"):
        pair = getattr(torch.ops.fastlstm, f"{name}_inference_pair").default
        inf = getattr(torch.ops.fastlstm, f"{name}_inference").default
        pair_args, inf_args = _arg_names(pair), _arg_names(inf)

        def fake(*a, pair_args=pair_args, inf_args=inf_args, inf=inf):
            given = dict(zip(pair_args, a))
            outs = []
            for reverse in (False, True):
                one = [reverse if n == "reverse" else given[n + "_r" if reverse and n + "_r" in given else n]
                       for n in inf_args]
                outs.extend(inf(*one))
            return tuple(outs)

        torch.library.register_fake(pair, fake)


_register_pair_fakes()
