"""ONNX export of fastlstm's modules (issue 12, item 4): the standard ONNX operators, not fastlstm's ops.

fastlstm's kernels are custom ops that no ONNX runtime knows, so while torch.onnx.export runs (either
exporter) each module's forward comes here (a hook at the top of FastLSTM.forward, which PeepholeLSTM
borrows, and of FastGRU.forward) and computes through what exports as ONNX's own operator:

* FastLSTM / FastGRU, TorchScript-based exporter: nn.LSTM's / nn.GRU's own forward, which that exporter
  turns into ONNX's ``LSTM`` / ``GRU`` (the graph nn.LSTM / nn.GRU give, dynamic axes included).
* FastLSTM / FastGRU, ``dynamo=True``: the ``LSTM`` / ``GRU`` node is written here (torch.onnx.ops), one
  per layer, both directions in it. nn.LSTM's own forward is not used there: torch 2.13's torch.export
  fixes the sequence length of nn.LSTM to the example's (and nn.GRU's graph keeps it in a Reshape, so a
  longer sequence fails in onnxruntime); the node written here keeps sequence length and batch dynamic.
* PeepholeLSTM, diagonal: ONNX's ``LSTM`` with its peephole input ``P`` (the same equations; the output
  gate sees the new cell state in both), with either exporter.
* PeepholeLSTM, full [H, H] peepholes (no standard operator): with ``dynamo=True`` a graph of standard
  operators, the recurrence an ONNX ``Scan`` loop (torch's scan); the TorchScript-based exporter cannot
  write a loop for a traced function, so there OnnxExportError says so.
* FastLSTM with proj_size, and any other module with no standard operator (LayerNormLSTM, until it gets
  a Scan path like full peepholes'): OnnxExportError naming the module and the reason, instead of a graph
  of fastlstm ops no runtime can load (or, for proj_size, the broken model nn.LSTM gives with dynamo=True).

Layouts: ONNX orders the LSTM gates i, o, f, c (nn.LSTM: i, f, g, o), the GRU gates z, r, h (nn.GRU: r, z,
n), puts both biases in one B = [Wb, Rb], and the peepholes in P = [p_i, p_o, p_f]. nn.GRU's candidate is
ONNX's ``linear_before_reset=1``.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.compiler import is_dynamo_compiling as _is_dynamo_compiling, is_exporting as _is_exporting
from torch.nn.utils.rnn import PackedSequence


class OnnxExportError(RuntimeError):
    """A fastlstm module has no ONNX form (e.g. full peepholes: no standard operator computes them)."""


def is_onnx_exporting() -> bool:
    """Whether torch.onnx.export (either exporter) is running: torch.onnx.is_in_onnx_export(), but
    cheaper and safe under Dynamo. Every forward asks, and the public function costs ~1 us (two imports
    per call) against a ~13 us one-step streaming call; here, until torch.onnx is imported at all, it is a
    dict lookup. Under Dynamo, whose tracer refuses to enter torch.onnx's functions, the dynamo exporter's
    module flag is read only while torch.export runs (the exporter's fallback to strict export), so that a
    module with no ONNX form fails with its own message there too; under torch.compile the answer is
    False, as Dynamo answers for torch.onnx.is_in_onnx_export itself. Imports neither torch.onnx nor
    Dynamo (importing fastlstm must not).
    """
    mods = sys.modules
    dy = mods.get("torch.onnx._internal.exporter._flags")
    if dy is None:
        # No export has run or asked yet (torch.onnx.is_in_onnx_export imports that module): the public
        # function, once, where torch.onnx is loaded at all.
        return "torch.onnx" in mods and not _is_dynamo_compiling() and torch.onnx.is_in_onnx_export()
    if _is_dynamo_compiling():
        return _is_exporting() and bool(dy._is_onnx_exporting)
    ts = mods.get("torch.onnx._internal.torchscript_exporter._globals")
    return bool(dy._is_onnx_exporting or (ts is not None and ts.GLOBALS.in_onnx_export))


def unsupported(module: torch.nn.Module, reason: str) -> OnnxExportError:
    """The error for a module (configuration) that cannot be exported, naming it and why."""
    return OnnxExportError(f"fastlstm: cannot export {module.__class__.__name__} ({module.extra_repr()}) to "
                           f"ONNX: {reason}")


def _iofc(t: Tensor) -> Tensor:
    # nn.LSTM stacks its gates i, f, g, o along dim 0; ONNX's LSTM wants i, o, f, c (c = nn.LSTM's g).
    i, f, g, o = t.chunk(4, 0)
    return torch.cat([i, o, f, g], 0)


def onnx_lstm_reference(X, W, R, B, initial_h, initial_c, P, direction="forward"):
    """ONNX's LSTM operator (opset 7+, default activations, no clipping, no sequence_lens), computed
    step by step in PyTorch from the operator's own inputs and layouts: X [T, B, I], W [D, 4H, I],
    R [D, 4H, H] (gates i, o, f, c), B [D, 8H] (Wb then Rb) or None, initial_h / initial_c [D, B, H],
    P [D, 3H] (p_i, p_o, p_f) or None. Returns Y [T, D, B, H], Y_h, Y_c [D, B, H].

    What the TorchScript exporter's trace computes in place of the node (its values are the module's
    outputs during the trace), and a check of the layout conversion that needs no ONNX runtime."""
    T = X.shape[0]
    ys, hs, cs = [], [], []
    for d in range(W.shape[0]):
        h, c = initial_h[d], initial_c[d]
        p_i, p_o, p_f = P[d].chunk(3) if P is not None else (0, 0, 0)
        steps = range(T - 1, -1, -1) if (direction == "reverse" or d == 1) else range(T)
        y = [None] * T
        for t in steps:
            z = X[t] @ W[d].T + h @ R[d].T
            if B is not None:
                z = z + B[d].chunk(2)[0] + B[d].chunk(2)[1]
            zi, zo, zf, zc = z.chunk(4, 1)
            i = torch.sigmoid(zi + p_i * c)
            f = torch.sigmoid(zf + p_f * c)
            c = f * c + i * torch.tanh(zc)
            o = torch.sigmoid(zo + p_o * c)
            h = o * torch.tanh(c)
            y[t] = h
        ys.append(torch.stack(y))
        hs.append(h)
        cs.append(c)
    return torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)


def _optional_absent(g):
    # How torch's own ONNX symbolics pass an omitted optional input (an empty name in the node).
    n = g.op("prim::Constant")
    n.setType(torch._C.OptionalType.ofTensor())
    return n


def _is_none(v) -> bool:
    return v is None or (isinstance(v, torch._C.Value) and v.node().mustBeNone())


class _LSTMNode(torch.autograd.Function):
    """ONNX's LSTM node for the TorchScript-based exporter: the trace records this Function and the
    exporter emits what ``symbolic`` returns in its place."""

    @staticmethod
    def forward(ctx, X, W, R, B, initial_h, initial_c, P, hidden_size, direction):
        return onnx_lstm_reference(X, W, R, B, initial_h, initial_c, P, direction)

    @staticmethod
    def symbolic(g, X, W, R, B, initial_h, initial_c, P, hidden_size, direction):
        none = _optional_absent(g)
        return g.op("LSTM", X, W, R, none if _is_none(B) else B, none, initial_h, initial_c,
                    none if _is_none(P) else P,
                    hidden_size_i=hidden_size, direction_s=direction, outputs=3)


def _node(op: str, inputs: list, attrs: dict, n_out: int, shapes: list):
    """One ONNX node for the dynamo exporter: torch.export traces this as one op, written out as ``op``."""
    return torch.onnx.ops.symbolic_multi_out(op, inputs, attrs, dtypes=[inputs[0].dtype] * n_out, shapes=shapes)


def _layer(module, kind: str, x: Tensor, states: list[Tensor], ps: list[tuple]):
    """One layer, both directions, as one ONNX LSTM/GRU node (full peepholes: a Scan loop per direction):
    x [T, B, I], states [D, B, H] each -> (Y [T, D, B, H], final states [D, B, H] each)."""
    if kind == "peephole_full":
        return _full_peephole_layer(module, x, states, ps)
    H = module.hidden_size
    D = len(ps)
    direction = "bidirectional" if D == 2 else "forward"
    T, N = x.shape[0], x.shape[1]
    order = _zrh if kind == "gru" else _iofc
    W = torch.stack([order(p[0]) for p in ps])
    R = torch.stack([order(p[1]) for p in ps])
    B = torch.stack([torch.cat([order(p[2]), order(p[3])]) for p in ps]) if module.bias else None
    if kind == "gru":
        y, h = _node("GRU", [x, W, R, B, None, states[0]],
                     {"hidden_size": H, "direction": direction, "linear_before_reset": 1}, 2,
                     [[T, D, N, H], [D, N, H]])
        return y, [h]
    P = torch.stack([torch.cat([p[4], p[6], p[5]]) for p in ps]) if kind == "peephole" else None
    if torch.jit.is_tracing():  # TorchScript-based exporter (only PeepholeLSTM comes here with it)
        y, h, c = _LSTMNode.apply(x, W, R, B, states[0], states[1], P, H, direction)
    else:
        y, h, c = _node("LSTM", [x, W, R, B, None, states[0], states[1], P],
                        {"hidden_size": H, "direction": direction}, 3, [[T, D, N, H], [D, N, H], [D, N, H]])
    return y, [h, c]


def _full_peephole_layer(module, x: Tensor, states: list[Tensor], ps: list[tuple]):
    """A full-peephole layer as a graph of standard operators: the input projection for all steps as one
    MatMul, then the recurrence as torch's scan, which the dynamo exporter writes as an ONNX ``Scan`` loop
    (sequence length stays dynamic). The TorchScript exporter has no such loop for a traced function."""
    if torch.jit.is_tracing():
        raise unsupported(module, "full [H, H] peephole matrices have no standard ONNX operator (ONNX's LSTM "
                          "has diagonal peepholes only), and the TorchScript-based exporter cannot write the "
                          "recurrence as a loop; export with torch.onnx.export(..., dynamo=True), which writes "
                          "it as an ONNX Scan, or use peephole='diagonal'")
    try:
        from torch._higher_order_ops.scan import scan  # prototype API: torch 2.13's exporter maps it to Scan
    except ImportError as e:  # pragma: no cover - another torch
        raise unsupported(module, f"this torch has no torch._higher_order_ops.scan to export the full-peephole "
                          f"recurrence with ({e})") from e
    ys, hs, cs = [], [], []
    for d, (w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co) in enumerate(ps):
        xs = x @ w_ih.T
        if b_ih is not None:
            xs = xs + (b_ih + b_hh)

        def step(carry, x_t, w_hh=w_hh, w_ci=w_ci, w_cf=w_cf, w_co=w_co):
            # peephole.py's cell, gate order i, f, g, o; the weights are closed over (lifted by export).
            h, c = carry
            zi, zf, zg, zo = (x_t + h @ w_hh.T).chunk(4, 1)
            i = torch.sigmoid(zi + c @ w_ci.T)
            f = torch.sigmoid(zf + c @ w_cf.T)
            c = f * c + i * torch.tanh(zg)
            h = torch.sigmoid(zo + c @ w_co.T) * torch.tanh(c)
            return (h, c), h.clone()  # scan's outputs may not alias its carry

        (h, c), y = scan(step, (states[0][d], states[1][d]), xs, reverse=d == 1)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    return torch.stack(ys, 1), [torch.stack(hs), torch.stack(cs)]


def _zrh(t: Tensor) -> Tensor:
    # nn.GRU stacks its gates r, z, n along dim 0; ONNX's GRU wants z, r, h (h = nn.GRU's n).
    r, z, n = t.chunk(3, 0)
    return torch.cat([z, r, n], 0)


def _kind(module) -> str:
    if isinstance(module, nn.GRU):
        return "gru"
    if isinstance(module, nn.LSTM):
        return "lstm"
    mode = getattr(module, "peephole", None)
    if mode == "diagonal":
        return "peephole"
    if mode == "full":
        return "peephole_full"
    raise unsupported(module, "it has no standard ONNX operator, and fastlstm's own ops are unknown to ONNX "
                      "runtimes")


def forward(module, input, hx=None):
    """The module's forward while torch.onnx.export runs (see the module docstring): nn.LSTM's / nn.GRU's
    inputs and outputs (batch_first, unbatched 2-D input, hx given or not)."""
    kind = _kind(module)
    if kind == "lstm" and module.proj_size > 0:
        # nn.LSTM fares no better: the TorchScript exporter refuses it, and dynamo=True (torch 2.13) writes
        # an LSTM node with the projected size as its cell size, which onnxruntime rejects.
        raise unsupported(module, "ONNX's LSTM operator has no projection (proj_size > 0)")
    if kind in ("lstm", "gru") and (torch.jit.is_tracing() or isinstance(input, PackedSequence)):
        # What nn.LSTM / nn.GRU export to, as they would: with the TorchScript exporter, and for packed
        # input, which the node below does not take.
        return (nn.GRU if kind == "gru" else nn.LSTM).forward(module, input, hx)
    if isinstance(input, PackedSequence):
        raise unsupported(module, "PackedSequence input is not supported in export; pass a padded tensor")
    if input.dim() not in (2, 3):
        raise ValueError(f"{module.__class__.__name__}: Expected input to be 2D or 3D, got {input.dim()}D "
                         "instead")
    batched = input.dim() == 3
    xb = input if batched else input.unsqueeze(0 if module.batch_first else 1)  # batched, module's layout
    x = xb.transpose(0, 1) if module.batch_first else xb
    D = 2 if module.bidirectional else 1
    L, H = module.num_layers, module.hidden_size
    if hx is None:
        states = [x.new_zeros(L * D, x.shape[1], H) for _ in range(1 if kind == "gru" else 2)]
    else:
        states = [hx] if kind == "gru" else list(hx)
        if not batched:
            states = [s.unsqueeze(1) for s in states]
        # nn.LSTM's / nn.GRU's shape checks and messages: the exported graph would not check them.
        module.check_forward_args(xb, states[0] if kind == "gru" else tuple(states), None)
    params = module._layer_params()
    finals: list[list[Tensor]] = [[] for _ in states]
    for layer in range(L):
        k = slice(layer * D, (layer + 1) * D)
        y, last = _layer(module, kind, x, [s[k] for s in states], params[k])
        x = y.transpose(1, 2).flatten(2)  # [T, D, B, H] -> [T, B, D*H]: directions side by side
        if module.dropout > 0 and module.training and layer < L - 1:
            x = F.dropout(x, module.dropout, training=True)
        for acc, s in zip(finals, last):
            acc.append(s)
    out = x.transpose(0, 1) if module.batch_first else x
    finals = [torch.cat(f) for f in finals]
    if not batched:
        out = out.squeeze(0 if module.batch_first else 1)
        finals = [f.squeeze(1) for f in finals]
    return out, (finals[0] if kind == "gru" else tuple(finals))
