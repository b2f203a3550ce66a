"""ONNX export of every module (issue 12, item 4), with both exporters, checked by running onnxruntime.

Each case is exported with one sequence length and batch and run by onnxruntime at others (dynamic axes),
against the module's own output in PyTorch (fastlstm's kernels). The graph must hold the standard
operator (one LSTM/GRU node per layer) and nothing outside ONNX's default domain.
"""
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import fastlstm
from fastlstm import export as fexport

onnx = pytest.importorskip("onnx", reason="onnx not installed (a test extra: pip install -e '.[test]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (a test extra)")
pytest.importorskip("onnxscript", reason="onnxscript (torch.onnx's dynamo exporter needs it) not installed")

ATOL = 1e-5  # float32; fastlstm's kernels and onnxruntime's differ by rounding only
EXPORTERS = ["torchscript", "dynamo"]
EXPORT_SHAPE = (5, 3)  # (T, B) of the example input
RUN_SHAPES = [(7, 2), (2, 4)]  # (T, B) onnxruntime runs: both axes differ from the example's


def _module(kind, **kw):
    torch.manual_seed(0)
    cls = {"lstm": fastlstm.FastLSTM, "gru": fastlstm.FastGRU, "peephole": fastlstm.PeepholeLSTM}[kind]
    m = cls(4, 6, **kw).eval()
    if kind == "peephole":
        # Peepholes that matter: each gate's share (i, f, o) is visible in the output.
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.startswith(("weight_ci", "weight_cf", "weight_co")):
                    p.copy_(torch.randn_like(p))
    return m


CASES = [
    pytest.param("lstm", dict(num_layers=2, bidirectional=True), id="lstm-2layers-bidir"),
    pytest.param("lstm", dict(batch_first=True, bias=False), id="lstm-batchfirst-nobias"),
    pytest.param("gru", dict(num_layers=2, bidirectional=True, batch_first=True), id="gru-2layers-bidir-bf"),
    pytest.param("gru", dict(bias=False), id="gru-nobias"),
    pytest.param("peephole", dict(num_layers=2, bidirectional=True), id="peephole-2layers-bidir"),
    pytest.param("peephole", dict(batch_first=True, bias=False), id="peephole-batchfirst-nobias"),
]


def _x(m, T, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((B, T, 4) if m.batch_first else (T, B, 4), generator=g)


def _hx(m, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (m.num_layers * (2 if m.bidirectional else 1), B, m.hidden_size)
    h = torch.randn(shape, generator=g)
    return h if isinstance(m, nn.GRU) else (h, torch.randn(shape, generator=g))


def _flat(result):
    out, h = result
    return [out, *(h if isinstance(h, tuple) else (h,))]


def _export(m, exporter, with_hx=False):
    """The module exported with sequence length and batch dynamic; returns the ONNX ModelProto."""
    T, B = EXPORT_SHAPE
    x = _x(m, T, B)
    t_dim, b_dim = (1, 0) if m.batch_first else (0, 1)
    args = (x, _hx(m, B)) if with_hx else (x,)
    n_states = 1 if isinstance(m, nn.GRU) else 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own deprecation and tracer notes
        if exporter == "torchscript":
            names = ["x"] + (["h0", "c0"][:n_states] if with_hx else [])
            axes = {"x": {t_dim: "T", b_dim: "B"}, **{n: {1: "B"} for n in names[1:]}}
            f = io.BytesIO()
            torch.onnx.export(m, args, f, dynamo=False, input_names=names, dynamic_axes=axes)
            return onnx.load_from_string(f.getvalue())
        T_, B_ = torch.export.Dim("T"), torch.export.Dim("B")
        shapes = [{t_dim: T_, b_dim: B_}]
        if with_hx:
            hx_shapes = tuple({1: B_} for _ in range(n_states))
            shapes.append(hx_shapes[0] if n_states == 1 else hx_shapes)
        program = torch.onnx.export(m, args, dynamo=True, dynamic_shapes=tuple(shapes), verbose=False)
        return program.model_proto


def _run_ort(model, inputs):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert len(names) == len(inputs)
    return [torch.from_numpy(a) for a in sess.run(None, dict(zip(names, (t.numpy() for t in inputs))))]


def _check_graph(model, m, kind):
    op = "GRU" if kind == "gru" else "LSTM"
    nodes = [n for n in model.graph.node if n.op_type == op]
    assert len(nodes) == m.num_layers  # one node per layer, both directions inside it
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, "non-standard op in the graph"
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs.get("direction", b"forward") == (b"bidirectional" if m.bidirectional else b"forward")
        if kind == "peephole":
            assert len(n.input) == 8 and n.input[7], "no peephole input P"
        if kind == "gru":
            assert attrs["linear_before_reset"] == 1  # PyTorch's GRU candidate
    onnx.checker.check_model(model)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("kind,kw", CASES)
def test_export_runs_in_onnxruntime_like_pytorch(kind, kw, exporter):
    m = _module(kind, **kw)
    model = _export(m, exporter)
    _check_graph(model, m, kind)
    for T, B in RUN_SHAPES:
        x = _x(m, T, B, seed=T)
        with torch.no_grad():
            expected = _flat(m(x))
        got = _run_ort(model, [x])
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, atol=ATOL, rtol=0)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("kind", ["lstm", "gru", "peephole"])
def test_export_with_initial_state(kind, exporter):
    m = _module(kind, num_layers=2)
    model = _export(m, exporter, with_hx=True)
    _check_graph(model, m, kind)
    T, B = RUN_SHAPES[0]
    x, hx = _x(m, T, B), _hx(m, B, seed=3)
    with torch.no_grad():
        expected = _flat(m(x, hx))
    got = _run_ort(model, [x, *(hx if isinstance(hx, tuple) else (hx,))])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)


@pytest.mark.parametrize("make,words,exporter", [
    # Full peepholes export with dynamo=True only (as a Scan loop; see test_full_peepholes_export_as_scan).
    (lambda: fastlstm.PeepholeLSTM(4, 6, peephole="full"), ("PeepholeLSTM", "full", "no standard ONNX operator",
                                                             "dynamo=True"), "torchscript"),
    # nn.LSTM with proj_size: the TorchScript exporter refuses it; dynamo=True writes a model onnxruntime
    # rejects (LSTM node with cell size = proj_size). FastLSTM says so at export instead.
    (lambda: fastlstm.FastLSTM(4, 6, proj_size=3), ("FastLSTM", "proj_size=3", "no projection"), "torchscript"),
    (lambda: fastlstm.FastLSTM(4, 6, proj_size=3), ("FastLSTM", "proj_size=3", "no projection"), "dynamo"),
], ids=["full-peepholes-torchscript", "proj_size-torchscript", "proj_size-dynamo"])
def test_modules_without_onnx_form_raise_a_clear_error(make, words, exporter):
    m = make().eval()
    with pytest.raises(Exception) as info:
        _export(m, exporter)
    # The dynamo exporter wraps what the model raised in its own error; ours is its cause.
    chain, e = [], info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    ours = [e for e in chain if isinstance(e, fexport.OnnxExportError)]
    assert ours, f"no OnnxExportError in {[type(e).__name__ for e in chain]}"
    for w in words:
        assert w in str(ours[0])


@pytest.mark.parametrize("kw,with_hx", [(dict(num_layers=2, bidirectional=True), False),
                                        (dict(batch_first=True, bias=False), True)], ids=["2layers-bidir", "bf-nobias-hx"])
def test_full_peepholes_export_as_scan(kw, with_hx):
    # No standard operator computes [H, H] peepholes: the dynamo exporter gets a graph of standard ops,
    # the recurrence of each layer and direction an ONNX Scan, with sequence length and batch dynamic.
    m = _module("peephole", peephole="full", **kw)
    model = _export(m, "dynamo", with_hx=with_hx)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Scan") == m.num_layers * (2 if m.bidirectional else 1) and "LSTM" not in ops
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    onnx.checker.check_model(model)
    for T, B in RUN_SHAPES:
        x = _x(m, T, B, seed=T)
        hx = _hx(m, B, seed=T + 1) if with_hx else None
        with torch.no_grad():
            expected = _flat(m(x, hx))
        got = _run_ort(model, [x, *hx] if with_hx else [x])
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, atol=ATOL, rtol=0)


def test_module_without_standard_operator_raises():
    # What LayerNormLSTM (or any module reaching the hook that has no ONNX operator) gets.
    class Custom(nn.Module):
        def extra_repr(self):
            return "4, 6"

    with pytest.raises(fexport.OnnxExportError, match="cannot export Custom .* no standard ONNX operator"):
        fexport.forward(Custom(), torch.randn(2, 1, 4))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_onnx_layout_of_peephole_weights(bidirectional):
    # The gate and peephole reordering checked without any ONNX runtime: ONNX's LSTM equations computed
    # in PyTorch from the converted weights must give PeepholeLSTM's output.
    m = _module("peephole", num_layers=2, bidirectional=bidirectional)
    x = _x(m, 4, 3)
    h0, c0 = _hx(m, 3)
    with torch.no_grad():
        expected = _flat(m(x, (h0, c0)))
        D = 2 if bidirectional else 1
        params = m._layer_params()
        inp, hs, cs = x, [], []
        for layer in range(m.num_layers):
            ps = params[layer * D:(layer + 1) * D]
            W = torch.stack([fexport._iofc(p[0]) for p in ps])
            R = torch.stack([fexport._iofc(p[1]) for p in ps])
            B = torch.stack([torch.cat([fexport._iofc(p[2]), fexport._iofc(p[3])]) for p in ps])
            P = torch.stack([torch.cat([p[4], p[6], p[5]]) for p in ps])
            k = slice(layer * D, (layer + 1) * D)
            y, yh, yc = fexport.onnx_lstm_reference(inp, W, R, B, h0[k], c0[k], P)
            inp = y.transpose(1, 2).flatten(2)
            hs.append(yh)
            cs.append(yc)
    for g, e in zip([inp, torch.cat(hs), torch.cat(cs)], expected):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)


def test_export_of_unbatched_input():
    m = _module("peephole")
    x = torch.randn(5, 4)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "T"}})
    x2 = torch.randn(8, 4)
    with torch.no_grad():
        expected = _flat(m(x2))
    for g, e in zip(_run_ort(onnx.load_from_string(f.getvalue()), [x2]), expected):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)


def test_not_exporting_outside_export():
    import torch.onnx  # noqa: F401  (loaded: the flags are read, not just assumed absent)
    assert not fexport.is_onnx_exporting()
    m = fastlstm.FastLSTM(4, 6)
    out, _ = m(torch.randn(3, 2, 4, requires_grad=True))
    assert out.grad_fn is not None and "fastlstm_lstm_forward" in type(out.grad_fn).__name__


def test_compile_fullgraph_still_works_once_torch_onnx_is_imported():
    # Regression: the hook read torch.onnx's exporter flags, which Dynamo refuses to trace, so any process
    # that had imported torch.onnx got a graph break in FastLSTM.forward under fullgraph=True.
    import torch.onnx  # noqa: F401
    torch._dynamo.reset()
    m = fastlstm.FastLSTM(4, 6)
    x = torch.randn(3, 2, 4)
    out, _ = torch.compile(m, fullgraph=True)(x)
    with torch.no_grad():
        torch.testing.assert_close(out, m(x)[0])


@pytest.mark.parametrize("kind", ["lstm", "gru", "peephole"])
def test_export_path_checks_hx_like_torch(kind):
    # The exported graph checks nothing, so the export path runs nn.LSTM's / nn.GRU's own checks first.
    m = _module(kind, num_layers=2)
    x = _x(m, 3, 2)
    bad = _hx(m, 5)  # batch 5 for an input of batch 2
    ref = (nn.GRU if kind == "gru" else nn.LSTM)(4, 6, num_layers=2)
    with pytest.raises(RuntimeError) as expected:
        ref(x, bad)
    with pytest.raises(RuntimeError) as got:
        fexport.forward(m, x, bad)
    assert str(got.value) == str(expected.value)


def test_using_fastlstm_does_not_import_torch_onnx():
    # is_onnx_exporting relies on it (no torch.onnx loaded: no export can run) and keeps it so: importing
    # torch.onnx costs tens of milliseconds that a user who never exports should not pay.
    code = ("import sys, torch, fastlstm\n"
            "for m in (fastlstm.FastLSTM(3, 4), fastlstm.FastGRU(3, 4), fastlstm.PeepholeLSTM(3, 4)):\n"
            "    m(torch.randn(2, 1, 3))\n"
            "assert 'torch.onnx' not in sys.modules, 'torch.onnx was imported'\n")
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode == 0, proc.stderr
