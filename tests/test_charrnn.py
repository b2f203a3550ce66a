"""fastlstm.charrnn: batching, state carry, training, exact resume, sampling, torchrun (gloo)."""
import csv
import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import LOWP_FACTOR, LOWP_SLACK, TOL
from fastlstm.charrnn import (CharRNN, Vocab, batch_rows, get_batches, load_checkpoint, load_model,
                              probabilities, sample)
from fastlstm.autocast import torch_lstm_runs_cpu_autocast
from fastlstm.charrnn.__main__ import main
from fastlstm.charrnn.data import IGNORE

REPO = Path(__file__).resolve().parents[1]


def _find_anna():
    """anna.txt: $FASTLSTM_DATA (the file, or a folder holding it), else shared/data/anna.txt beside the
    repository or any folder above it (CI clones the repository next to shared/)."""
    env = os.environ.get("FASTLSTM_DATA")
    if env:
        p = Path(env)
        return p / "anna.txt" if p.is_dir() else p
    for d in [REPO, *REPO.parents]:
        p = d / "shared" / "data" / "anna.txt"
        if p.is_file():
            return p
    return None


ANNA = _find_anna()
NO_ANNA = "anna.txt not found: set FASTLSTM_DATA or put it at ../shared/data/anna.txt"
needs_anna = pytest.mark.skipif(ANNA is None or not ANNA.is_file(), reason=NO_ANNA)


def _slice(tmp_path, n_chars, name="text.txt"):
    """The first n_chars characters of anna.txt (newlines normalised) as a file in tmp_path."""
    text = open(ANNA, encoding="utf-8").read()[:n_chars]
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def _log(out):
    with open(os.path.join(out, "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(autouse=True)
def _restore_threads():
    # Training runs here pass --threads 1 (tiny models gain nothing from more, and on a loaded machine
    # OpenMP threads waiting on each other cost seconds); give the rest of the session its threads back.
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


# --- batching ---------------------------------------------------------------------------------------------

def test_batching_issue_example():
    seq = torch.arange(1, 13)
    batches = list(get_batches(seq, batch_size=2, seq_length=3))
    assert [x.tolist() for x, _ in batches] == [[[1, 2, 3], [7, 8, 9]], [[4, 5, 6], [10, 11, 12]]]
    # Targets: the next character in the text; 12 has none, so its target is ignored by the loss.
    assert [y.tolist() for _, y in batches] == [[[2, 3, 4], [8, 9, 10]], [[5, 6, 7], [11, 12, IGNORE]]]


def test_batching_targets_shift_and_leftover():
    seq = torch.arange(1, 16)  # 15 = 2 batches of 2x3, 3 left over; 13 is the target of 12
    x, y = batch_rows(seq, 2, 3)
    assert x.tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]
    assert y.tolist() == [[2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13]]
    assert [b[0].tolist() for b in get_batches(seq, 2, 3, start=1)] == [[[4, 5, 6], [10, 11, 12]]]
    with pytest.raises(ValueError, match="too short"):
        batch_rows(torch.arange(5), 2, 3)


def test_vocab_roundtrip_and_unknown_char():
    v = Vocab.from_text("hello world")
    assert v.chars == sorted(set("hello world"))
    assert v.decode(v.encode("world hello")) == "world hello"
    with pytest.raises(KeyError, match="'z'"):  # the first unknown one
        v.encode("oz")


# --- state carry ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["fastlstm", "torch"])
def test_state_carry_chunked_equals_whole(backend):
    torch.manual_seed(0)
    model = CharRNN(11, hidden_size=16, num_layers=2, dropout=0.5, backend=backend).double().eval()
    x = torch.randint(0, 11, (23, 3))
    whole, (h, c) = model(x, model.init_state(3, dtype=torch.float64))
    state = model.init_state(3, dtype=torch.float64)
    outs = []
    for chunk in (x[:9], x[9:10], x[10:]):
        o, state = model(chunk, state)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs), whole, **TOL[torch.float64])
    torch.testing.assert_close(state[0], h, **TOL[torch.float64])
    torch.testing.assert_close(state[1], c, **TOL[torch.float64])


def test_backends_start_from_same_weights():
    torch.manual_seed(3)
    a = CharRNN(7, 8, 2, 0.5, backend="fastlstm").state_dict()
    torch.manual_seed(3)
    b = CharRNN(7, 8, 2, 0.5, backend="torch").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- training ---------------------------------------------------------------------------------------------

@needs_anna
@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole", "layernorm"])
def test_short_run_lowers_val_loss(tmp_path, cell):
    # The same short run for every cell (issue 6: which cell learns Anna Karenina best).
    text = _slice(tmp_path, 300_000)
    out = str(tmp_path / "run")
    assert main(["train", "--text", text, "--out", out, "--cell", cell, "--hidden", "64", "--layers", "1",
                 "--dropout", "0",
                 "--batch-size", "16", "--seq-length", "50", "--lr", "1e-2", "--epochs", "1",
                 "--max-steps", "150", "--val-every", "75", "--seed", "1", "--threads", "1"]) == 0
    m = json.load(open(os.path.join(out, "metrics.json")))
    start = math.log(m["vocab_size"])
    first = float(_log(out)[0]["loss"])
    assert abs(first - start) < 0.3, (first, start)  # an untrained model is near uniform: ln V nats/char
    print(f"charrnn short run: cell={cell} val_loss={m['val_loss']:.4f} nats/char after {m['steps']} steps")
    assert m["steps"] == 150 and m["val_loss"] < 2.6, m  # ln 83 = 4.42; unigram statistics alone ~3.1
    assert m["train_loss"] is not None and m["seconds"] > 0
    vals = [float(r["loss"]) for r in _log(out) if r["split"] == "val"]
    assert len(vals) == 2 and vals[1] < vals[0]
    assert os.path.getsize(os.path.join(out, "loss.png")) > 0
    assert glob.glob(os.path.join(out, "*.tmp*")) == []


def _tiny(text, out, *extra):
    return ["train", "--text", text, "--out", out, "--hidden", "24", "--layers", "2", "--dropout", "0.3",
            "--batch-size", "6", "--seq-length", "20", "--val-frac", "0.2", "--epochs", "2", "--seed", "5",
            "--val-every", "4", "--threads", "1", *extra]


@needs_anna
@pytest.mark.slow
@pytest.mark.parametrize("backend,dtype", [("fastlstm", "float32"), ("torch", "float32"),
                                           ("fastlstm", "bfloat16"), ("torch", "bfloat16"),
                                           ("fastlstm", "float16")])  # torch: no float16 LSTM training on CPU
def test_resume_is_bit_exact(tmp_path, backend, dtype):
    if backend == "torch" and dtype == "bfloat16" and not TORCH_BF16:
        pytest.skip(NO_TORCH_BF16)
    text = _slice(tmp_path, 3_000)  # 2400 train chars -> 20 steps per epoch
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    run = ("--backend", backend, "--dtype", dtype)
    assert main(_tiny(text, full, *run)) == 0
    # Interrupted mid-epoch (step 27 of 40, not on a validation/checkpoint boundary), then resumed.
    assert main(_tiny(text, part, *run, "--max-steps", "27")) == 0
    assert load_checkpoint(part)["position"]["step"] == 27
    assert main(_tiny(text, part, *run, "--resume")) == 0
    a, b = load_checkpoint(full), load_checkpoint(part)
    assert a["position"]["step"] == b["position"]["step"] == 40
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    train_a = [r["loss"] for r in _log(full) if r["split"] == "train"]
    train_b = [r["loss"] for r in _log(part) if r["split"] == "train"]
    assert train_a == train_b and len(train_a) == 40
    # float16's GradScaler state (its scale and growth tracker) is part of the position, too.
    assert a["scaler"] == b["scaler"] and (a["scaler"] != {}) == (dtype == "float16")
    assert json.load(open(os.path.join(full, "metrics.json")))["val_loss"] == \
        json.load(open(os.path.join(part, "metrics.json")))["val_loss"]


@needs_anna
def test_resume_refuses_a_changed_configuration(tmp_path, capsys):
    text = _slice(tmp_path, 3_000)
    out = str(tmp_path / "run")
    assert main(_tiny(text, out, "--max-steps", "1")) == 0
    capsys.readouterr()
    assert main(_tiny(text, out, "--resume", "--hidden", "32")) == 2
    assert "--hidden 32 differs" in capsys.readouterr().err


# --- low precision (--dtype) ------------------------------------------------------------------------------

# A text learnable in a few steps, so a short run's falling loss is not luck; anna.txt is not needed.
REPEATED = "It was the best of times, it was the worst of times, it was the age of wisdom.\n" * 60  # 4800 chars
# First-step losses (the same weights on the same batch) of the two backends in one low-precision dtype:
# both are within LOWP_SLACK of the float32 loss (the autocast rounding of ~2.9 nats), and fastlstm's
# error against float64 is at most LOWP_FACTOR times nn.LSTM's own (conftest's low-precision rule).


# nn.LSTM under CPU bfloat16 autocast takes oneDNN's RNN primitive, which needs AVX-512: without it (an AMD EPYC
# Zen 3, AVX2 only) the torch backend cannot run --dtype bfloat16 at all, and the trainer says so up front.
TORCH_BF16 = torch_lstm_runs_cpu_autocast(torch.bfloat16)
NO_TORCH_BF16 = ("nn.LSTM cannot run CPU bfloat16 autocast on this CPU (oneDNN: 'could not create a primitive "
                 "descriptor'; no AVX-512)")


@pytest.mark.skipif(TORCH_BF16, reason="nn.LSTM runs CPU bfloat16 autocast on this CPU")
def test_torch_backend_bfloat16_without_onednn_is_a_clear_error(tmp_path, capsys):
    text = tmp_path / "repeated.txt"
    text.write_text(REPEATED, encoding="utf-8")
    out = tmp_path / "o"
    assert main(["train", "--text", str(text), "--out", str(out), "--backend", "torch", "--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert "--dtype bfloat16 --device cpu: torch.nn.LSTM cannot run bfloat16 on this CPU" in err, err
    assert err.count("\n") == 1 and not out.exists()


def _lowp_run(tmp_path, name, backend, dtype, *extra):
    text = tmp_path / "repeated.txt"
    text.write_text(REPEATED, encoding="utf-8")
    out = str(tmp_path / name)
    assert main(["train", "--text", str(text), "--out", out, "--backend", backend, "--dtype", dtype,
                 "--hidden", "32", "--layers", "2", "--dropout", "0", "--batch-size", "8", "--seq-length", "20",
                 "--val-frac", "0", "--lr", "3e-2", "--epochs", "2", "--max-steps", "40", "--seed", "3",
                 "--threads", "1", *extra]) == 0
    return out, [float(r["loss"]) for r in _log(out) if r["split"] == "train"]


def _first_loss(backend, dtype, double=False):
    """The first training step's loss, as _lowp_run computes it (seed 3, V = the text's characters)."""
    vocab = Vocab.from_text(REPEATED)
    x, y = batch_rows(vocab.encode(REPEATED), 8, 20)
    torch.manual_seed(3)
    model = CharRNN(len(vocab), 32, 2, 0.0, backend, dtype=dtype)
    if double:
        model = model.double()
    logits, _ = model(x[:, :20].t(), model.init_state(8, dtype=model.fc.weight.dtype))
    return float(torch.nn.functional.cross_entropy(logits.detach().reshape(-1, len(vocab)),
                                                   y[:, :20].t().reshape(-1)))


def test_bfloat16_trains_on_both_backends(tmp_path):
    runs = {b: _lowp_run(tmp_path, b, b, "bfloat16") for b in ("fastlstm", "torch") if TORCH_BF16 or b != "torch"}
    for backend, (out, losses) in runs.items():
        assert len(losses) == 40 and all(math.isfinite(v) for v in losses), (backend, losses)
        # ln 19 = 2.9 nats at the start, 2.5 from character frequencies alone; in 40 steps the repeated
        # sentence is learnt to about 1.4 (float32 and bfloat16 alike).
        assert sum(losses[-5:]) / 5 < losses[0] - 1.0, (backend, losses)
        ck = load_checkpoint(out)
        assert ck["config"]["dtype"] == "bfloat16"
        # Master weights, Adam's moments and the carried state are float32; bf16 is compute only.
        assert {t.dtype for t in ck["model"].values()} == {torch.float32}
        assert {t.dtype for st in ck["optimizer"]["state"].values() for k, t in st.items() if k != "step"} \
            == {torch.float32}
        assert {t.dtype for t in ck["position"]["state"]} == {torch.float32}
        m = json.load(open(os.path.join(out, "metrics.json")))
        assert m["dtype"] == "bfloat16" and m["steps"] == 40
    # The same weights on the same batch: the backends agree on the first loss (see the rule above).
    l32 = _first_loss("torch", "float32")
    l64 = _first_loss("torch", "float32", double=True)
    fast = runs["fastlstm"][1][0]
    assert fast == pytest.approx(_first_loss("fastlstm", "bfloat16"), abs=1e-6)  # the log is that loss
    assert abs(fast - l32) < LOWP_SLACK[torch.bfloat16] and fast != l32
    if not TORCH_BF16:
        pytest.skip("the comparison with the torch backend: " + NO_TORCH_BF16)
    ref = runs["torch"][1][0]
    assert abs(ref - l32) < LOWP_SLACK[torch.bfloat16]
    assert abs(fast - l64) <= LOWP_FACTOR * abs(ref - l64) + LOWP_SLACK[torch.bfloat16], (fast, ref, l64)
    # ... and they are bf16 losses: the float32 one differs (bf16 keeps 8 bits of mantissa, 2**-8 = 0.004).
    assert fast != l32 and ref != l32


@pytest.mark.parametrize("backend", ["fastlstm", "torch"])
def test_bfloat16_computes_in_bfloat16_and_keeps_the_state_float32(backend):
    if backend == "torch" and not TORCH_BF16:
        pytest.skip(NO_TORCH_BF16)
    torch.manual_seed(0)
    model = CharRNN(11, 16, 2, 0.0, backend, dtype="bfloat16")
    seen = []
    model.rnn.register_forward_hook(lambda mod, args, out: seen.append((args[0].dtype, out[0].dtype)))
    x = torch.randint(0, 11, (7, 3))
    logits, state = model(x, model.init_state(3))
    # The LSTM ran in bf16 (autocast cast its float32 input), yet what comes out is float32: logits for the
    # loss, and the state that is carried to the next batch. (FastLSTM's autocast rule calls the module
    # once more inside, on the cast input: that call is seen first.)
    assert seen[-1] == (torch.float32, torch.bfloat16) and {o for _, o in seen} == {torch.bfloat16}
    assert logits.dtype == torch.float32 and [s.dtype for s in state] == [torch.float32] * 2
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    logits.sum().backward()
    assert {p.grad.dtype for p in model.parameters()} == {torch.float32}
    # The carried state holds bf16 values exactly (the cast up is exact), so carrying loses nothing.
    assert all(torch.equal(s, s.bfloat16().float()) for s in state)


def test_float16_trains_with_a_grad_scaler_on_fastlstm_cpu(tmp_path):
    out, losses = _lowp_run(tmp_path, "fp16", "fastlstm", "float16")
    assert all(math.isfinite(v) for v in losses) and sum(losses[-5:]) / 5 < losses[0] - 1.0, losses
    ck = load_checkpoint(out)
    assert ck["scaler"]["scale"] > 0 and {t.dtype for t in ck["model"].values()} == {torch.float32}
    model, vocab = load_model(out)
    assert model.dtype_name == "float16"  # samples in the dtype it was trained in
    assert sample(model, vocab, "It", 40, seed=1) == sample(model, vocab, "It", 40, seed=1)


def test_bfloat16_checkpoint_samples_in_bfloat16(tmp_path, capsys):
    out, _ = _lowp_run(tmp_path, "bf16", "fastlstm", "bfloat16", "--max-steps", "10")
    model, vocab = load_model(out)
    assert model.dtype_name == "bfloat16"
    assert load_model(out, dtype="float32")[0].dtype_name == "float32"  # --dtype overrides it
    argv = ["sample", "--checkpoint", out, "--prime", "It", "--length", "60", "--seed", "3"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text == sample(model, vocab, "It", 60, top_k=5, seed=3) + "\n" and len(text) == 2 + 60 + 1
    # nn.LSTM's float16 limit on the CPU is its training primitive, and on a CPU without float16 arithmetic any
    # oneDNN float16 LSTM: where nn.LSTM can, it samples; where not, a clear error, not oneDNN's.
    capsys.readouterr()
    code = main(argv + ["--backend", "torch", "--dtype", "float16"])
    if torch_lstm_runs_cpu_autocast(torch.float16):
        assert code == 0 and len(capsys.readouterr().out) == 2 + 60 + 1
    else:
        assert code == 2 and "torch.nn.LSTM cannot run float16 on this CPU" in capsys.readouterr().err


def test_bad_dtype_is_a_clear_error(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(REPEATED, encoding="utf-8")
    for argv in (["train", "--text", str(text), "--out", str(tmp_path / "o"), "--dtype", "fp8"],
                 ["sample", "--checkpoint", str(tmp_path), "--dtype", "half"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "argument --dtype: invalid choice" in err, err
        assert "float32" in err and "bfloat16" in err and "float16" in err and err.count("\n") == 1
    # A combination torch cannot train: refused up front, one line, status 2, before any file is read.
    assert main(["train", "--text", str(text), "--out", str(tmp_path / "o"), "--backend", "torch",
                 "--dtype", "float16"]) == 2
    err = capsys.readouterr().err
    assert "--dtype float16 --device cpu: torch.nn.LSTM cannot train in float16" in err, err
    assert not (tmp_path / "o").exists()
    # The library entry point checks it too.
    from fastlstm.charrnn import CharRNNError, train
    with pytest.raises(CharRNNError, match=r"--dtype must be one of \['float32', 'bfloat16', 'float16'\]"):
        train({"text": str(text), "out": str(tmp_path / "o"), "dtype": "bf16"})
    with pytest.raises(ValueError, match="unknown dtype 'float64'"):
        CharRNN(5, 4, 1, 0.0, dtype="float64")


# --- sampling ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if ANNA is None or not ANNA.is_file():
        pytest.skip(NO_ANNA)
    d = tmp_path_factory.mktemp("charrnn_sample")
    text = _slice(d, 20_000)
    out = str(d / "run")
    assert main(["train", "--text", text, "--out", out, "--hidden", "32", "--layers", "1", "--dropout", "0",
                 "--batch-size", "8", "--seq-length", "25", "--lr", "1e-2", "--epochs", "1", "--seed", "2",
                 "--threads", "1"]) == 0
    return out


def test_sampling_is_reproducible_by_seed(trained, capsys):
    model, vocab = load_model(trained)
    a = sample(model, vocab, "Anna", 200, temperature=1.0, top_k=0, seed=7)
    b = sample(model, vocab, "Anna", 200, temperature=1.0, top_k=0, seed=7)
    c = sample(model, vocab, "Anna", 200, temperature=1.0, top_k=0, seed=8)
    assert a == b and a != c and a.startswith("Anna") and len(a) == 204
    argv = ["sample", "--checkpoint", trained, "--prime", "The", "--length", "80", "--seed", "3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first and first.startswith("The") and len(first) == 3 + 80 + 1


def test_greedy_limits(trained):
    model, vocab = load_model(trained)
    greedy = sample(model, vocab, "Anna", 100, temperature=0, top_k=0, seed=1)
    # top-k 1 is greedy whatever the seed and temperature; temperature -> 0 approaches greedy.
    assert sample(model, vocab, "Anna", 100, temperature=1.0, top_k=1, seed=1) == greedy
    assert sample(model, vocab, "Anna", 100, temperature=3.0, top_k=1, seed=2) == greedy
    assert sample(model, vocab, "Anna", 100, temperature=1e-4, top_k=0, seed=3) == greedy
    # The other backend gives the same greedy text from the same weights.
    m2, _ = load_model(trained, backend="torch")
    assert sample(m2, vocab, "Anna", 100, temperature=0, top_k=0) == greedy


def test_probabilities_temperature_and_top_k():
    torch.manual_seed(0)
    z = torch.randn(30)
    torch.testing.assert_close(probabilities(z), torch.softmax(z.double(), 0))
    torch.testing.assert_close(probabilities(z, temperature=0.5), torch.softmax(2 * z.double(), 0))
    ent = [float(-(p * p.clamp_min(1e-300).log()).sum())
           for p in (probabilities(z, t) for t in (0.25, 0.5, 1.0, 2.0, 4.0))]
    assert all(a < b for a, b in zip(ent, ent[1:]))  # higher temperature, flatter distribution
    assert ent[-1] < math.log(30) and float(probabilities(z, 1e6).max()) < 1 / 30 + 1e-5
    p = probabilities(z, 1.0, top_k=4)
    top = set(z.topk(4).indices.tolist())
    assert set(p.nonzero().flatten().tolist()) == top
    torch.testing.assert_close(p[list(top)], torch.softmax(z[list(top)].double(), 0))
    one = probabilities(z, 2.0, top_k=1)
    assert one[z.argmax()] == 1 and one.sum() == 1
    torch.testing.assert_close(probabilities(z, 1.0, top_k=30), probabilities(z))
    with pytest.raises(ValueError, match="temperature"):
        probabilities(z, -1.0)


# --- many processes ---------------------------------------------------------------------------------------

@needs_anna
@pytest.mark.slow
def test_torchrun_gloo_two_processes(tmp_path):
    text = _slice(tmp_path, 3_000)
    ddp, one = str(tmp_path / "ddp"), str(tmp_path / "one")
    args = ["--text", text, "--hidden", "24", "--layers", "2", "--dropout", "0", "--batch-size", "6",
            "--seq-length", "20", "--val-frac", "0.2", "--max-steps", "8", "--seed", "4"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "fastlstm.charrnn", "train", "--out", ddp, "--threads", "1", *args],
                       env=_env(), cwd=str(tmp_path), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(os.listdir(ddp))
    assert files == ["checkpoint.pt", "log.csv", "loss.png", "metrics.json"], files
    m = json.load(open(os.path.join(ddp, "metrics.json")))
    assert m["world_size"] == 2 and m["steps"] == 8
    ck = load_checkpoint(ddp)
    assert ck["position"]["state"][0].shape == (2, 6, 24)  # both processes' 3 rows, gathered
    assert len(ck["position"]["rng"]) == 2
    # Without dropout, 2 processes x 3 rows follow the same trajectory as 1 process x 6 rows.
    assert main(["train", "--out", one, "--threads", "1", *args]) == 0
    l_ddp = [float(r["loss"]) for r in _log(ddp) if r["split"] == "train"]
    l_one = [float(r["loss"]) for r in _log(one) if r["split"] == "train"]
    assert l_ddp == pytest.approx(l_one, rel=1e-4, abs=1e-5)
