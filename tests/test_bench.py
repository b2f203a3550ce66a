"""Smoke tests of the benchmark CLI (python -m fastlstm.bench) on one tiny shape: it runs, its table, JSON
and CSV hold the measured rows, and bad flags are refused. The timings themselves are not checked."""
import re
import csv
import json

import pytest
import torch

from fastlstm import bench


def test_cli_one_small_shape(tmp_path, capsys):
    js, cs = tmp_path / "b.json", tmp_path / "b.csv"
    rows = bench.main(["--device", "cpu", "--shapes", "3,2,4,5", "--modes", "inference,training,streaming",
                       "--rounds", "1", "--min-run-time", "0.001", "--no-progress", "--json", str(js),
                       "--csv", str(cs)])
    out = capsys.readouterr().out
    assert [r["mode"] for r in rows] == ["inference", "training", "streaming"]
    for r in rows:
        for c in bench.CONTENDERS:
            assert r[f"{c}_ms"] > 0
        assert r["ratio"] == pytest.approx(r["torch_ms"] / r["fastlstm_ms"])
    assert rows[2]["B"] == 1
    assert re.search(r"geomean nn.LSTM/FastLSTM +training", out) and "T=3 B=2 I=4 H=5" in out
    data = json.loads(js.read_text())
    assert data["environment"]["torch"] == torch.__version__ and len(data["rows"]) == 3
    with open(cs) as f:
        assert [r["mode"] for r in csv.DictReader(f)] == ["inference", "training", "streaming"]


def test_grids():
    cpu = bench.grid_cases("cpu", "cpu")
    shapes = {(c.T, c.B, c.I, c.H, c.layers, c.bidirectional) for c in cpu if c.mode == "training"}
    assert shapes == set(bench.CPU_SPECS)
    assert all(c.B == 1 and not c.bidirectional for c in cpu if c.mode == "streaming")
    gpu = bench.grid_cases("gpu", "cuda")
    assert {c.dtype for c in gpu} == {"float32", "bfloat16"} and {c.mode for c in gpu} == {"inference", "training"}
    assert (100, 64, 512, 512) in {(c.T, c.B, c.I, c.H) for c in gpu}


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


def test_bad_flags():
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--shapes", "1,2,3", "--no-progress"])
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--modes", "nonsense", "--no-progress"])
