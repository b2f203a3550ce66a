"""Tests of the benchmark package (python -m fastlstm.bench) on tiny shapes: the CLI runs and its table, JSON
and CSV hold the measured rows; every dtype and the packed modes are covered; the contenders of a row get the
same weights and inputs in the same dtype (or the ratios mean nothing); the memory probe measures; bad flags
are refused. The timings themselves are not checked."""
import csv
import json
import math
import os
import re

import pytest
import torch

import fastlstm
from fastlstm import bench
from fastlstm.bench import cases, measure
from fastlstm.bench.contenders import LayerNormLSTMLoop

TINY = ["--device", "cpu", "--shapes", "3,2,4,5", "--rounds", "1", "--min-run-time", "0.001", "--no-progress"]


def test_cli_one_small_shape(tmp_path, capsys):
    js, cs = tmp_path / "b.json", tmp_path / "b.csv"
    rows = bench.main(TINY + ["--dtypes", "float32", "--modes", "inference,training,streaming",
                              "--json", str(js), "--csv", str(cs)])
    out = capsys.readouterr().out
    assert [r["mode"] for r in rows] == ["inference", "training", "streaming"]
    for r in rows:
        for c in bench.CONTENDERS:
            assert r[f"{c}_ms"] > 0
        assert r["ratio"] == pytest.approx(r["torch_ms"] / r["fastlstm_ms"])
        assert r["ratio_cell_loop"] == pytest.approx(r["cell_loop_ms"] / r["fastlstm_ms"])
    assert rows[2]["B"] == 1
    assert rows[0]["fastlstm_peak_mb"] >= 0 and "fastlstm_peak_mb" not in rows[2]  # no memory for streaming
    assert re.search(r"geomean nn.LSTM/FastLSTM +training", out) and "T=3 B=2 I=4 H=5" in out
    data = json.loads(js.read_text())
    assert data["environment"]["torch"] == torch.__version__ and len(data["rows"]) == 3
    with open(cs) as f:
        assert [r["mode"] for r in csv.DictReader(f)] == ["inference", "training", "streaming"]


def test_cli_default_reports_every_dtype_and_packed(capsys):
    rows = bench.main(TINY + ["--models", "lstm,gru", "--no-memory"])
    out = capsys.readouterr().out
    got = {(r["dtype"], r["mode"], r["model"]) for r in rows}
    assert got == {(d, m, n) for d in ("float32", "bfloat16", "float16") for m in bench.MODES
                   for n in ("lstm", "gru")}
    # dtype by dtype, so the report reads per dtype
    dts = [r["dtype"] for r in rows]
    assert dts == sorted(dts, key=["float32", "bfloat16", "float16"].index)
    for r in rows:
        assert r["ratio"] == pytest.approx(r["torch_ms"] / r["fastlstm_ms"])
        assert ("cell_loop_ms" in r) == (not r["mode"].startswith("packed"))  # no cell loop on a PackedSequence
    # the header: CPU model (from /proc/cpuinfo), torch version, threads, date
    env = bench.environment("cpu")
    cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if "model name" in cpuinfo:  # x86 Linux; elsewhere the name comes from platform
        assert f"model name\t: {env['cpu']}\n" in cpuinfo
    n = torch.get_num_threads()
    machine = f"{env['cpu']}, torch {torch.__version__}, {n} thread{'' if n == 1 else 's'}"
    first, second = out.splitlines()[:2]
    assert first == f"# fastlstm benchmark on {machine}, {len(rows)} cases"
    assert re.match(r"# \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; cpu ", second)
    # one geomean block per dtype, headed by the machine, one line per model and mode
    for dtype in ("float32", "bfloat16", "float16"):
        block = out.split(f"\n{dtype} on {machine}:\n")[1].split("\n\n")[0].splitlines()
        assert len(block) == 2 * len(bench.MODES)
        assert all(re.match(rf"geomean nn\.(LSTM/FastLSTM|GRU/FastGRU) +[a-z_]+ +{dtype} *: \d+\.\d\dx", line)
                   for line in block)
    assert re.search(r"geomean nn.GRU/FastGRU +packed_training +bfloat16", out)


def test_plot_and_table_from_rows(tmp_path):
    # Rows as run_case makes them (here by hand: the report must not re-measure), packed and half types too.
    pytest.importorskip("matplotlib")
    rows = []
    for i, (mode, dtype) in enumerate([("training", "float32"), ("packed_training", "bfloat16"),
                                       ("streaming", "float16")]):
        case = bench.Case(mode, 5, 1 if mode == "streaming" else 2, 3, 4, dtype=dtype)
        rows.append(dict(vars(case), fastlstm_ms=1.0, torch_ms=2.0 + i, ratio=2.0 + i))
    png = tmp_path / "s.png"
    bench.write_plot(str(png), rows, bench.environment("cpu"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = bench.format_table(rows, ("fastlstm", "torch"))
    assert "geomean nn.LSTM/FastLSTM         packed_training bfloat16: 3.00x (min 3.00x, 1 cases)" in table
    assert table.splitlines()[0].split() == ["mode", "model", "shape", "dtype", "fastlstm", "ms", "torch", "ms",
                                             "torch/fast", "fastlstm", "MB", "torch", "MB"]


def test_grids():
    cpu = bench.grid_cases("cpu", "cpu")
    shapes = {(c.T, c.B, c.I, c.H, c.layers, c.bidirectional) for c in cpu if c.mode == "training"}
    assert shapes == set(bench.CPU_SPECS)
    assert all(c.B == 1 and not c.bidirectional for c in cpu if c.mode == "streaming")
    for name in bench.GRIDS:  # every grid reports every dtype, and the packed modes
        got = bench.grid_cases(name, "cpu")
        assert {c.dtype for c in got} == {"float32", "bfloat16", "float16"}
        assert {"packed_inference", "packed_training"} <= {c.mode for c in got}
    gpu = bench.grid_cases("gpu", "cuda")
    assert {c.mode for c in gpu} == {"inference", "training", "packed_inference", "packed_training"}
    assert (100, 64, 512, 512) in {(c.T, c.B, c.I, c.H) for c in gpu}
    # what runs without flags: on the CPU a grid smaller than issue 4's, on CUDA issue 3's; --quick: quick
    assert cases.resolve_grid("default", "cpu") == "cpu-default"
    assert set(cases.CPU_DEFAULT_SPECS) < set(bench.CPU_SPECS)
    assert cases.resolve_grid("default", "cuda") == "gpu"
    assert cases.resolve_grid("default", "cpu", quick=True) == "quick"
    assert cases.resolve_grid("cpu", "cpu", quick=True) == "cpu"
    # packed modes only for models whose baseline takes a PackedSequence
    got = bench.make_cases([(5, 2, 3, 4, 1, False)], ("float32",), bench.MODES, ("lstm", "peephole"))
    assert {c.mode for c in got if c.model == "peephole"} == {"inference", "training", "streaming"}
    assert len([c for c in got if c.model == "lstm"]) == len(bench.MODES)


def test_expand_modes():
    assert cases.expand_modes(["training", "packed", "packed_training"]) == \
        ("training", "packed_inference", "packed_training")


def test_packed_lengths():
    lengths = cases.packed_lengths(50, 16)
    assert lengths.dtype == torch.int64 and lengths.shape == (16,)
    assert lengths.min() >= 1 and lengths.max() == 50
    assert torch.equal(lengths, cases.packed_lengths(50, 16))  # fixed seed
    assert not torch.equal(lengths, lengths.sort(descending=True).values)  # exercises enforce_sorted=False
    assert cases.packed_lengths(7, 1).tolist() == [7]
    assert not torch.equal(lengths, cases.packed_lengths(50, 16, seed=1))


def test_cell_loop_matches_lstm():
    # The cell-loop contender must compute the same function as nn.LSTM, or its timings mean nothing.
    torch.manual_seed(0)
    case = bench.Case("training", 4, 3, 5, 6, layers=2, bidirectional=True, dtype="float64")
    mods = bench.MODELS["lstm"](case, "cpu")
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    ref_out, (ref_h, ref_c) = mods["torch"](x, None)
    out, (h, c) = mods["cell_loop"](x, None)
    for a, b in ((out, ref_out), (h, ref_h), (c, ref_c)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _params(module: torch.nn.Module) -> dict:
    # Parameters by nn.LSTM-style name ("weight_ih_l0"), whatever wrapper holds them.
    return {n.split(".")[-1]: p for n, p in module.named_parameters()}


def _grads(module: torch.nn.Module) -> dict:
    return {n: p.grad for n, p in _params(module).items()}


@pytest.mark.parametrize("model,mode", [(m, mode) for m in ("lstm", "gru", "peephole")
                                        for mode in ("training", "packed_training")
                                        if bench.MODELS[m].packed or mode == "training"])
def test_contenders_get_the_same_weights_and_inputs(model, mode):
    # One timed call of each contender in float64 lands the same gradients in the same weights: the same
    # numbers went in, through the same (packed or not) input.
    case = bench.Case(mode, 6, 4, 3, 5, layers=2, bidirectional=True, dtype="float64", model=model)
    torch.manual_seed(0)
    mods = bench.MODELS[model](case, "cpu")
    assert set(mods) == ({"fastlstm", "torch"} if case.packed or model == "peephole" else set(bench.CONTENDERS))
    for m in mods.values():
        bench.make_step(case, m, "cpu")()
    ref = _grads(mods["torch"])
    assert len(ref) == len(list(mods["torch"].parameters())) and "weight_hh_l1_reverse" in ref
    for name, g in _grads(mods["fastlstm"]).items():
        torch.testing.assert_close(g, ref[name], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("model", ["lstm", "gru", "peephole"])
def test_half_types_run_in_that_dtype(model, dtype):
    # On the CPU nn.LSTM has a bf16/fp16 path (oneDNN); a baseline silently kept in float32 would be a
    # different contest. Every contender's weights, and the inputs, are in the case's dtype.
    case = bench.Case("packed_training" if bench.MODELS[model].packed else "training", 5, 3, 4, 6, dtype=dtype,
                      model=model)
    torch.manual_seed(0)
    mods = bench.MODELS[model](case, "cpu")
    want = getattr(torch, dtype)
    for name, m in mods.items():
        assert {p.dtype for p in m.parameters()} == {want}, name
    torch.testing.assert_close(mods["fastlstm"].weight_hh_l0, _params(mods["torch"])["weight_hh_l0"], rtol=0,
                               atol=0)
    seen = []
    hook = mods["torch"].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    bench.make_step(case, mods["torch"], "cpu")()
    hook.remove()
    x = seen[0].data if case.packed else seen[0]
    assert x.dtype == want and x.requires_grad


@pytest.mark.skipif(not measure.cpu_probe_available(), reason="needs /proc/self/clear_refs (Linux)")
def test_memory_probe_measures():
    # A training call at T=50 B=16 H=64 keeps its gates for backward (T*B*4H floats = 800 KiB and more): the
    # probe must see at least that, for several cases in a row (a worker each), and the same in a one-off probe. (Not
    # the cell loop: its many small per-step tensors come from heap chunks its warm-up call freed.)
    big = bench.Case("training", 50, 16, 64, 64)
    small = bench.Case("inference", 2, 1, 2, 2)
    with measure.CpuPeakProbe(threads=1) as probe:
        first, tiny, again = probe(big, ("fastlstm", "torch")), probe(small, ("fastlstm",)), probe(big)
    assert set(first) == {"fastlstm", "torch"} and set(again) == set(bench.CONTENDERS)
    for peaks in (first, again):
        assert peaks["fastlstm"] > 800 * 1024 and peaks["torch"] > 800 * 1024, peaks
    assert tiny["fastlstm"] < 800 * 1024
    one_off = bench.peak_memory(big, "cpu", ("fastlstm",))
    assert one_off["fastlstm"] > 800 * 1024


# ------------------------------------------------------------------------------ the LayerNorm LSTM baseline

def test_layernorm_loop_one_step_by_hand():
    # I = H = 1, x = 1, h0 = c0 = 0, W_ih = [1, 2, 3, 4]^T, every other weight and bias 0, LN scales 1, LN
    # shifts 0 except the cell's, 0.5. Then W_ih x = [1, 2, 3, 4]: mean 2.5, biased variance 1.25, so
    # pre = [-1.5, -0.5, 0.5, 1.5] / s with s = sqrt(1.25 + 1e-5) (W_hh h0 = 0 normalises to the zero shift);
    # c = sigmoid(-1.5/s) * tanh(0.5/s) (f * c0 = 0), and LN of the single cell value is its shift, 0.5:
    # h = sigmoid(1.5/s) * tanh(0.5).
    m = LayerNormLSTMLoop(1, 1, dtype=torch.float64)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.zero_()
        m.weight_ih_l0.copy_(torch.tensor([[1.0], [2.0], [3.0], [4.0]]))
        for part in ("ih", "hh", "c"):
            getattr(m, f"layernorm_{part}_weight_l0").fill_(1.0)
        m.layernorm_c_bias_l0.fill_(0.5)
    out, (h, c) = m(torch.ones(1, 1, 1, dtype=torch.float64))
    s = math.sqrt(1.25 + 1e-5)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert c.item() == pytest.approx(sig(-1.5 / s) * math.tanh(0.5 / s), rel=1e-14)
    assert h.item() == pytest.approx(sig(1.5 / s) * math.tanh(0.5), rel=1e-14)
    assert out.item() == h.item()


def _ln(v, g, b, eps=1e-5):
    mean = sum(v) / len(v)
    var = sum((a - mean) ** 2 for a in v) / len(v)
    return [(a - mean) / math.sqrt(var + eps) * gg + bb for a, gg, bb in zip(v, g, b)]


def _matvec(w, v):
    return [sum(a * b for a, b in zip(row, v)) for row in w]


def _ln_lstm_by_hand(xs, h, c, P):
    """One layer, one direction, one batch row, in Python floats: xs a list over steps of [I] lists,
    h and c [H] lists, P {parameter name without suffix: nested lists}. Returns ([h_t per step], h, c)."""
    H = len(h)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    outs = []
    for x in xs:
        pre = [a + b + bi + bh for a, b, bi, bh in zip(
            _ln(_matvec(P["weight_ih"], x), P["layernorm_ih_weight"], P["layernorm_ih_bias"]),
            _ln(_matvec(P["weight_hh"], h), P["layernorm_hh_weight"], P["layernorm_hh_bias"]),
            P["bias_ih"], P["bias_hh"])]
        i, f = [sig(v) for v in pre[:H]], [sig(v) for v in pre[H:2 * H]]
        g, o = [math.tanh(v) for v in pre[2 * H:3 * H]], [sig(v) for v in pre[3 * H:]]
        c = [fj * cj + ij * gj for fj, cj, ij, gj in zip(f, c, i, g)]
        h = [oj * math.tanh(v) for oj, v in zip(o, _ln(c, P["layernorm_c_weight"], P["layernorm_c_bias"]))]
        outs.append(h)
    return outs, h, c


def test_layernorm_loop_matches_the_cell_by_hand():
    # Two layers, both directions, three steps, a given (h0, c0), every parameter random (LN scales and shifts
    # too): the loop against the cell written out in Python floats, row by row.
    T, B, I, H, L = 3, 2, 3, 2, 2
    torch.manual_seed(0)
    m = LayerNormLSTMLoop(I, H, L, bidirectional=True, dtype=torch.float64)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x, h0, c0 = (torch.randn(*s, dtype=torch.float64) for s in ((T, B, I), (2 * L, B, H), (2 * L, B, H)))
    out, (h_n, c_n) = m(x, (h0, c0))
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "layernorm_ih_weight", "layernorm_ih_bias",
             "layernorm_hh_weight", "layernorm_hh_bias", "layernorm_c_weight", "layernorm_c_bias")
    for b in range(B):
        seq = x[:, b].tolist()
        for layer in range(L):
            outs = []
            for d in range(2):
                k, sfx = 2 * layer + d, f"_l{layer}" + ("_reverse" if d else "")
                P = {n: getattr(m, n + sfx).tolist() for n in names}
                ys, h, c = _ln_lstm_by_hand(seq[::-1] if d else seq, h0[k, b].tolist(), c0[k, b].tolist(), P)
                outs.append(ys[::-1] if d else ys)
                torch.testing.assert_close(h_n[k, b], torch.tensor(h, dtype=torch.float64), rtol=0, atol=1e-12)
                torch.testing.assert_close(c_n[k, b], torch.tensor(c, dtype=torch.float64), rtol=0, atol=1e-12)
            seq = [fw + bw for fw, bw in zip(*outs)]
        torch.testing.assert_close(out[:, b], torch.tensor(seq, dtype=torch.float64), rtol=0, atol=1e-12)


def test_layernorm_loop_parameters_and_batch_first():
    m = LayerNormLSTMLoop(3, 4, 2, bidirectional=True)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes["weight_ih_l1_reverse"] == (16, 8) and shapes["layernorm_c_bias_l0"] == (4,)
    assert shapes["layernorm_hh_weight_l1"] == (16,) and len(shapes) == 2 * 2 * 10
    assert len(list(LayerNormLSTMLoop(3, 4, bias=False).parameters())) == 8
    assert (m.layernorm_ih_weight_l0 == 1).all() and (m.layernorm_c_bias_l1_reverse == 0).all()
    x = torch.randn(5, 2, 3)
    out, (h, c) = m(x)
    m.batch_first = True
    out_bf, (h_bf, c_bf) = m(x.transpose(0, 1))
    torch.testing.assert_close(out_bf.transpose(0, 1), out)
    torch.testing.assert_close(h_bf, h)


def test_layernorm_model_in_the_cli(monkeypatch, capsys):
    # The contender plumbing, with the baseline itself standing in for fastlstm.LayerNormLSTM where the
    # build lacks it (the real module takes over once it exists: same constructor and parameter names).
    if not hasattr(fastlstm, "LayerNormLSTM"):
        monkeypatch.setattr(fastlstm, "LayerNormLSTM", LayerNormLSTMLoop, raising=False)
    assert "layernorm" in bench.available_models()
    case = bench.Case("training", 4, 2, 3, 5, layers=2, bidirectional=True, dtype="float64", model="layernorm")
    mods = bench.MODELS["layernorm"](case, "cpu")
    assert set(mods) == {"fastlstm", "torch"} and isinstance(mods["torch"], LayerNormLSTMLoop)
    for name, p in _params(mods["torch"]).items():
        assert torch.equal(p, _params(mods["fastlstm"])[name]), name
    rows = bench.main(TINY + ["--models", "layernorm", "--dtypes", "float32", "--no-memory"])
    out = capsys.readouterr().out
    assert [r["mode"] for r in rows] == ["inference", "training", "streaming"]  # no packed rows
    assert all(r["ratio"] > 0 and "cell_loop_ms" not in r for r in rows)
    assert re.search(r"geomean LN loop/LayerNormLSTM +training +float32", out)


def test_layernorm_model_absent(monkeypatch, capsys):
    monkeypatch.delattr(fastlstm, "LayerNormLSTM", raising=False)
    assert "layernorm" not in bench.available_models() and "lstm" in bench.available_models()
    with pytest.raises(SystemExit) as e:
        bench.main(["--device", "cpu", "--no-progress", "--models", "lstm,layernorm"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "fastlstm-bench: --models layernorm: fastlstm.LayerNormLSTM is not in this build of fastlstm\n"
    # all = what this build has
    assert {c.model for c in bench.cases_from_args(bench.parse_args(["--models", "all", "--quick"]), "cpu")} == \
        {"lstm", "gru", "peephole"}


def test_bad_flags(capsys):
    for flags in (["--shapes", "1,2,3"], ["--modes", "nonsense"], ["--dtypes", "float8"], ["--models", "rnn"],
                  ["--contenders", "torch"], ["--models", "peephole", "--modes", "packed"]):
        with pytest.raises(SystemExit) as e:
            bench.main(["--device", "cpu", "--no-progress"] + flags)
        assert e.value.code not in (0, None), flags
