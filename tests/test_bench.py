"""Tests of the benchmark package (python -m fastlstm.bench) on tiny shapes: the CLI runs and its table, JSON
and CSV hold the measured rows; every dtype and the packed modes are covered; the contenders of a row get the
same weights and inputs in the same dtype (or the ratios mean nothing); the memory probe measures; bad flags
are refused. The timings themselves are not checked."""
import csv
import json
import re

import pytest
import torch

from fastlstm import bench
from fastlstm.bench import cases, measure

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
    first, second = out.splitlines()[:2]
    assert first == f"# fastlstm benchmark on {env['cpu']}, torch {torch.__version__}, " \
                    f"{torch.get_num_threads()} threads, {len(rows)} cases"
    assert re.match(r"# \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; cpu ", second)
    # one geomean block per dtype, headed by the machine, one line per model and mode
    for dtype in ("float32", "bfloat16", "float16"):
        block = out.split(f"\n{dtype} on {env['cpu']}, torch {torch.__version__}, "
                          f"{torch.get_num_threads()} threads:\n")[1].split("\n\n")[0].splitlines()
        assert len(block) == 2 * len(bench.MODES)
        assert all(re.match(rf"geomean nn\.(LSTM/FastLSTM|GRU/FastGRU) +[a-z_]+ +{dtype} *: \d+\.\d\dx", line)
                   for line in block)
    assert re.search(r"geomean nn.GRU/FastGRU +packed_training +bfloat16", out)


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


@pytest.mark.parametrize("model", ["lstm", "gru", "peephole"])
@pytest.mark.parametrize("mode", ["training", "packed_training"])
def test_contenders_get_the_same_weights_and_inputs(model, mode):
    # One timed call of each contender in float64 lands the same gradients in the same weights: the same
    # numbers went in, through the same (packed or not) input.
    if mode.startswith("packed") and not bench.MODELS[model].packed:
        pytest.skip(f"{model} has no packed modes")
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
    # probe must see at least that, for several cases in one worker, and the same in a one-off probe. (Not
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


def test_bad_flags(capsys):
    for flags in (["--shapes", "1,2,3"], ["--modes", "nonsense"], ["--dtypes", "float8"], ["--models", "rnn"],
                  ["--contenders", "torch"], ["--models", "peephole", "--modes", "packed"]):
        with pytest.raises(SystemExit) as e:
            bench.main(["--device", "cpu", "--no-progress"] + flags)
        assert e.value.code not in (0, None), flags
