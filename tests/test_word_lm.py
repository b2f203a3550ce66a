"""Issue 15: a word-level language model trained the way PyTorch's word_language_model example trains one,
with torch.nn.LSTM and again with FastLSTM swapped in by fastlstm.convert, every step of the example
exercised: embedding, a 2-layer LSTM with dropout between layers, hidden state repackaged (detached)
between batches, gradient-norm clipping, plain SGD, the best model saved whole with torch.save(model),
reloaded with torch.load under safe_globals([... nn.LSTM ...]) (the example's allowlist: it does not
name FastLSTM, and must not need to), evaluated, and exported to ONNX with the default exporter.

With dropout 0 both runs compute the same function from the same initial weights and data, so their
losses agree up to rounding, step for step until the model leaves its initial plateau (~270 steps here).
From there on SGD amplifies any difference about tenfold every 15 steps (measured: float32 5e-7 up to
step 270, 0.2 by step 370; float64 1e-15 up to step 250, 1e-4 by step 440), as it would between two
nn.LSTM runs on different thread counts. So the float32 runs (the example's dtype, 6 epochs, to a model
that has learned) are compared over their first epoch and on the loss they reach, and the same training
in float64 over its first 4 epochs (300 steps) step for step. With dropout the FastLSTM run only has to
work (its random masks differ from nn.LSTM's).
"""
import importlib.util
import io
import math
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastlstm

# torch.onnx.export's default exporter (dynamo=True) needs onnx and onnxscript; without them (they are test
# extras) the rest of the example still runs and the export step is skipped, saying why.
HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))
NO_ONNX = "onnx, onnxscript or onnxruntime not installed (pip install -e '.[test]')"

VOCAB = 40
EMSIZE, NHID, NLAYERS = 32, 32, 2
BATCH, EVAL_BATCH, BPTT = 4, 2, 8
LR, CLIP, EPOCHS = 10.0, 5.0, 6


def _corpus(n_words, seed):
    """Text from a fixed random bigram model over VOCAB words (so there is something to learn), one
    sentence per line; tokenised as the example does: words, plus <eos> at each line end."""
    words = [f"w{k}" for k in range(VOCAB - 1)]
    grammar = random.Random(0)  # one language for every split; `seed` picks the text
    follow = {w: grammar.sample(words, 4) for w in words}
    rng = random.Random(seed)
    tokens, w = [], rng.choice(words)
    while len(tokens) < n_words:
        for _ in range(rng.randint(4, 10)):
            tokens.append(w)
            w = rng.choice(follow[w])
        tokens.append("<eos>")
    index = {t: i for i, t in enumerate(sorted(set(words) | {"<eos>"}))}
    return torch.tensor([index[t] for t in tokens], dtype=torch.long)


def _batchify(data, bsz):
    # Columns are independent streams; row t holds step t of each (the example's layout).
    n = data.size(0) // bsz
    return data[:n * bsz].view(bsz, -1).t().contiguous()


def _get_batch(source, i):
    seq_len = min(BPTT, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


def _repackage(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(_repackage(v) for v in h)


class RNNModel(nn.Module):
    """Encoder, recurrent module, decoder: the example's model, LSTM case."""

    def __init__(self, dropout):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(VOCAB, EMSIZE)
        self.rnn = nn.LSTM(EMSIZE, NHID, NLAYERS, dropout=dropout)
        self.decoder = nn.Linear(NHID, VOCAB)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens, hidden):
        emb = self.drop(self.encoder(tokens))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, VOCAB)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        w = next(self.parameters())
        return (w.new_zeros(NLAYERS, bsz, NHID), w.new_zeros(NLAYERS, bsz, NHID))


# The example's allowlist for reloading its best model: torch's classes and its own model, not fastlstm's.
EXAMPLE_SAFE_GLOBALS = [RNNModel, nn.Dropout, nn.Embedding, nn.Linear, nn.LSTM]


def _evaluate(model, source):
    model.eval()
    total = 0.0
    hidden = model.init_hidden(EVAL_BATCH)
    with torch.no_grad():
        for i in range(0, source.size(0) - 1, BPTT):
            data, targets = _get_batch(source, i)
            output, hidden = model(data, hidden)
            hidden = _repackage(hidden)
            total += len(data) * F.nll_loss(output, targets).item()
    return total / (len(source) - 1)


def _run(fast, dropout, data, dtype=torch.float32, epochs=EPOCHS, onnx_export=HAS_ONNX):
    """The example's main loop; returns what it printed (losses) and what it produced (model, ONNX)."""
    train_data, val_data, test_data = data
    torch.manual_seed(1111)
    model = RNNModel(dropout).to(dtype)
    if fast:
        model = fastlstm.convert(model)
        assert type(model.rnn) is fastlstm.FastLSTM
    log = {"train": [], "val": []}
    best_val, lr, saved = None, LR, io.BytesIO()
    torch.manual_seed(0)  # the dropout masks' stream
    for _ in range(epochs):
        model.train()
        hidden = model.init_hidden(BATCH)
        for i in range(0, train_data.size(0) - 1, BPTT):
            data, targets = _get_batch(train_data, i)
            model.zero_grad()
            hidden = _repackage(hidden)
            output, hidden = model(data, hidden)
            loss = F.nll_loss(output, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
            log["train"].append(loss.item())
        val_loss = _evaluate(model, val_data)
        log["val"].append(val_loss)
        if best_val is None or val_loss < best_val:
            saved.seek(0)
            saved.truncate()
            torch.save(model, saved)
            best_val = val_loss
        else:
            lr /= 4.0
    saved.seek(0)
    with torch.serialization.safe_globals(EXAMPLE_SAFE_GLOBALS):
        model = torch.load(saved)  # weights_only=True, torch's default
    model.rnn.flatten_parameters()
    assert type(model.rnn) is (fastlstm.FastLSTM if fast else nn.LSTM)
    log["best_val"] = best_val
    log["test"] = _evaluate(model, test_data)

    if not onnx_export:
        return log, model, None
    # The example's export_onnx: eval mode, a zero token batch of seq_len x 1, initial hidden state.
    model.eval()
    dummy = torch.zeros(BPTT, 1, dtype=torch.long)
    hidden = model.init_hidden(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (dummy, hidden), verbose=False)
    return log, model, program


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # At these sizes extra threads only wait on each other; on a loaded machine nn.LSTM's OpenMP threads
    # spin for ~1 s per step (tests/test_charrnn.py runs its training with one thread for the same reason).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    return (_batchify(_corpus(2400, seed=1), BATCH), _batchify(_corpus(200, seed=2), EVAL_BATCH),
            _batchify(_corpus(200, seed=3), EVAL_BATCH))


@pytest.fixture(scope="module")
def runs(data):
    return {fast: _run(fast, 0.0, data) for fast in (False, True)}


def test_training_learns_and_losses_agree_in_float32_without_dropout(runs, data):
    (ref, _, _), (fast, _, _) = runs[False], runs[True]
    steps_per_epoch = len(range(0, data[0].size(0) - 1, BPTT))
    assert len(ref["train"]) == len(fast["train"]) == EPOCHS * steps_per_epoch
    # Both learned: from about log(VOCAB) to well below it.
    assert ref["train"][0] == pytest.approx(math.log(VOCAB), rel=0.05)
    for log in (ref, fast):
        assert log["best_val"] < 0.8 * math.log(VOCAB) and log["test"] < 0.8 * math.log(VOCAB)
    # The first epoch step for step (see the module docstring for why not all of them in float32).
    first = slice(0, steps_per_epoch)
    torch.testing.assert_close(torch.tensor(fast["train"][first]), torch.tensor(ref["train"][first]),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(fast["val"][0], ref["val"][0], rtol=0, atol=1e-5)
    # ...and the end: a similar model, whichever way rounding sent the two.
    assert fast["test"] == pytest.approx(ref["test"], rel=0.1)


def test_losses_agree_step_for_step_in_float64(data):
    ref, _, _ = _run(False, 0.0, data, dtype=torch.float64, epochs=4, onnx_export=False)
    fast, _, _ = _run(True, 0.0, data, dtype=torch.float64, epochs=4, onnx_export=False)
    assert ref["val"][-1] < 0.85 * math.log(VOCAB)  # off the plateau: the weights have moved for real
    # Measured ~3e-14 (float64 rounding, amplified).
    for key in ("train", "val"):
        torch.testing.assert_close(torch.tensor(fast[key]), torch.tensor(ref[key]), rtol=0, atol=1e-9)
    assert fast["test"] == pytest.approx(ref["test"], rel=0, abs=1e-9)


@pytest.mark.skipif(not HAS_ONNX, reason=NO_ONNX)
def test_onnx_export_of_both_models_runs_in_onnxruntime(runs):
    import onnxruntime as ort
    tokens = torch.randint(0, VOCAB, (BPTT, 1), generator=torch.Generator().manual_seed(5))
    results = {}
    for fast, (_, model, program) in runs.items():
        ops = {n.op_type for n in program.model_proto.graph.node}
        assert "LSTM" in ops and all(n.domain in ("", "ai.onnx") for n in program.model_proto.graph.node)
        sess = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
        h0 = torch.randn(NLAYERS, 1, NHID, generator=torch.Generator().manual_seed(6))
        feeds = [tokens, h0, torch.zeros_like(h0)]
        got = sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), feeds)})
        with torch.no_grad():
            out, (h, c) = model(tokens, (h0, torch.zeros_like(h0)))
        for g, e in zip(got, (out, h, c)):
            torch.testing.assert_close(torch.from_numpy(g), e, atol=1e-5, rtol=0)
        results[fast] = got[0]
    assert results[True].shape == results[False].shape == (BPTT, VOCAB)


def test_with_dropout_every_step_works(data):
    # The example's default: dropout between the LSTM layers and around them, in training only.
    log, model, _ = _run(True, 0.2, data, epochs=2, onnx_export=False)
    assert model.rnn.dropout == 0.2
    assert all(math.isfinite(v) for v in log["train"] + log["val"] + [log["test"]])
    assert log["val"][-1] < 1.1 * math.log(VOCAB)
