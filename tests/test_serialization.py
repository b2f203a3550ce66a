"""Issue 15: whole saved models holding fastlstm modules load under torch.load's default weights_only=True.

Every torch.load here is the default one (weights_only=True): the point is that nothing has to be
allowlisted for fastlstm's own classes. Containers the tests define themselves (Net) are allowlisted with
torch.serialization.safe_globals, as their authors would have to for any model.
"""
import inspect
import io
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fastlstm
from conftest import DEVICES, TOL
from fastlstm.serialization import _SAVED_UNDER, module_classes, safe_globals

FIXTURE = Path(__file__).parent / "data" / "whole_models_0.1.0.pt"


def _configs(cls):
    """Constructor kwargs per class (nn.LSTM's signature; every fastlstm module takes it). Two
    configurations per class, one with every flag that changes the parameter set, so a pickled module
    with reverse/extra parameters is covered."""
    base = [dict(num_layers=1), dict(num_layers=2, bidirectional=True, batch_first=True, bias=False)]
    if cls is fastlstm.PeepholeLSTM:
        return [dict(c, peephole=mode) for c in base for mode in ("diagonal", "full")]
    if cls is fastlstm.FastLSTM:
        return base + [dict(num_layers=2, proj_size=2)]
    return base


CASES = [pytest.param(cls, kw, id=f"{cls.__name__}-{i}") for cls in module_classes()
         for i, kw in enumerate(_configs(cls))]


def _run(m, x):
    """Outputs as a flat tuple of tensors; the module runs in eval mode without grad (comparison only)."""
    with torch.no_grad():
        out, h = m(x)
    return (out, *(h if isinstance(h, tuple) else (h,)))


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)  # weights_only=True: torch's default since 2.6


def test_weights_only_is_the_default_here():
    # The tests below prove nothing if this torch loads with the full unpickler by default.
    assert inspect.signature(torch.load).parameters["weights_only"].default in (None, True)
    buf = io.BytesIO()
    torch.save(nn.Identity(), buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="Identity"):
        torch.load(buf)


def test_registration_covers_every_module_class_fastlstm_exposes():
    classes = module_classes()
    for name in ("FastLSTM", "FastGRU", "PeepholeLSTM"):
        assert getattr(fastlstm, name) in classes
    # A module class reachable as fastlstm.X but left out of __all__ would be missed by the registration.
    exposed = {obj for name, obj in vars(fastlstm).items() if not name.startswith("_")
               and isinstance(obj, type) and issubclass(obj, nn.Module)}
    assert exposed <= set(classes), f"add to fastlstm.__all__: {exposed - set(classes)}"
    registered = torch.serialization.get_safe_globals()
    for cls in classes:
        assert cls in registered


def test_layernormlstm_registered_when_present():
    if not hasattr(fastlstm, "LayerNormLSTM"):
        pytest.skip("fastlstm.LayerNormLSTM does not exist on this branch yet")
    assert fastlstm.LayerNormLSTM in module_classes()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls,kw", CASES)
def test_whole_module_saves_and_loads(cls, kw, device):
    torch.manual_seed(0)
    m = cls(3, 4, device=device, **kw)
    x = torch.randn(2, 5, 3, device=device)  # [T, B, I] or, with batch_first, [B, T, I]
    m(x)[0].sum().backward()  # a module that was used: whatever forward/backward leave on it gets pickled too
    m.eval()
    before = _run(m, x)
    loaded = _roundtrip(m)
    assert type(loaded) is cls and not loaded.training
    assert loaded.weight_ih_l0.device == x.device
    for a, b in zip(before, _run(loaded, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded.state_dict().keys() == m.state_dict().keys()
    # Still a working module (flat-weight caches rebuilt by nn.RNNBase.__setstate__, gradients flow).
    loaded.train()
    loaded(x)[0].sum().backward()
    assert all(p.grad is not None for p in loaded.parameters())


class Net(nn.Module):
    """The word-language-model shape: embedding, recurrent layer, decoder."""

    def __init__(self, rnn):
        super().__init__()
        self.encoder = nn.Embedding(10, 3)
        self.rnn = rnn
        self.decoder = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 10)

    def forward(self, tokens):
        out, _ = self.rnn(self.encoder(tokens))
        return self.decoder(out)


# What Net itself pickles besides the recurrent module: the user's side of the allowlist.
USER_GLOBALS = [Net, nn.Embedding, nn.Linear]


def _roundtrip_net(net):
    with torch.serialization.safe_globals(USER_GLOBALS):
        return _roundtrip(net)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("torch_cls", [nn.LSTM, nn.GRU])
def test_model_saved_with_torch_rnn_then_converted_saves_and_loads(torch_cls, device):
    torch.manual_seed(0)
    net = Net(torch_cls(3, 4, num_layers=2, device=device)).to(device).eval()
    tokens = torch.randint(0, 10, (6, 2), device=device)
    # A model saved before fastlstm was used: loading it needs nn.LSTM/nn.GRU allowlisted, by the user.
    with torch.serialization.safe_globals([torch_cls]):
        old = _roundtrip_net(net)
    fast = fastlstm.convert(old)
    assert type(fast.rnn) in (fastlstm.FastLSTM, fastlstm.FastGRU)
    loaded = _roundtrip_net(fast)  # nothing of fastlstm's allowlisted by hand
    assert type(loaded.rnn) is type(fast.rnn)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), net(tokens), rtol=0, atol=2e-6)


def test_allowlisting_nn_lstm_still_suffices_after_the_swap():
    # The word-language-model example loads its best model under safe_globals([... nn.LSTM ...]); after
    # swapping in FastLSTM that exact block must keep working (the failure that opened issue 15).
    net = fastlstm.convert(Net(nn.LSTM(3, 4)))
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([Net, nn.Dropout, nn.Embedding, nn.Linear, nn.LSTM, nn.GRU]):
        loaded = torch.load(buf)
    assert type(loaded.rnn) is fastlstm.FastLSTM


def test_a_safe_globals_block_naming_fastlstm_classes_does_not_unregister_them():
    # Regression: torch.serialization.safe_globals removes on exit exactly what it was given, even what
    # was registered before, so a user block naming fastlstm.FastLSTM used to leave plain torch.load
    # refusing FastLSTM for the rest of the process.
    m = fastlstm.FastLSTM(3, 4)
    buf = io.BytesIO()
    torch.save(m, buf)
    for _ in range(2):
        buf.seek(0)
        with torch.serialization.safe_globals([fastlstm.FastLSTM, fastlstm.FastGRU, fastlstm.PeepholeLSTM]):
            torch.load(buf)
    assert type(_roundtrip(m)) is fastlstm.FastLSTM


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("torch_cls,fast_cls", [(nn.LSTM, fastlstm.FastLSTM), (nn.GRU, fastlstm.FastGRU)])
def test_state_dict_moves_between_torch_and_fastlstm_through_a_file(torch_cls, fast_cls, device):
    kw = dict(num_layers=2, bidirectional=True, device=device)
    torch.manual_seed(0)
    ref = torch_cls(3, 4, **kw).eval()
    x = torch.randn(5, 2, 3, device=device)
    fast = fast_cls(3, 4, **kw).eval()
    fast.load_state_dict(_roundtrip(ref.state_dict()))
    for a, b in zip(_run(fast, x), _run(ref, x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)
    # ...and back: a state_dict saved from the fastlstm module loads into torch's.
    with torch.no_grad():
        for p in fast.parameters():
            p.mul_(0.5)
    back = torch_cls(3, 4, **kw).eval()
    back.load_state_dict(_roundtrip(fast.state_dict()))
    for a, b in zip(_run(back, x), _run(fast, x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)


def test_every_old_path_is_allowlisted():
    by_path = {}
    for entry in safe_globals():
        cls, path = entry if isinstance(entry, tuple) else (entry, f"{entry.__module__}.{entry.__qualname__}")
        by_path[path] = cls
    for name, paths in _SAVED_UNDER.items():
        for path in paths:
            assert by_path.get(path) is getattr(fastlstm, name)


def _fixture_models():
    torch.manual_seed(0)
    models = {"FastLSTM": fastlstm.FastLSTM(3, 4, num_layers=2), "FastGRU": fastlstm.FastGRU(3, 4),
              "PeepholeLSTM": fastlstm.PeepholeLSTM(3, 4, peephole="diagonal")}
    x = torch.randn(5, 2, 3)
    return {"x": x, "models": {k: m.eval() for k, m in models.items()},
            "outputs": {k: _run(m, x) for k, m in models.items()}}


def test_checkpoint_written_by_fastlstm_0_1_0_loads():
    # Written once by `python tests/test_serialization.py --write-fixture` with fastlstm 0.1.0, where the
    # classes were defined in fastlstm.modules / .gru / .peephole: the pickle names them so. This keeps
    # such checkpoints loading wherever the classes are defined now.
    data = torch.load(FIXTURE)
    for name, m in data["models"].items():
        assert type(m) is getattr(fastlstm, name)
        for a, b in zip(_run(m, data["x"]), data["outputs"][name]):
            torch.testing.assert_close(a, b, **TOL[torch.float32])  # another machine's kernels: rounding


if __name__ == "__main__" and sys.argv[1:] == ["--write-fixture"]:
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(_fixture_models(), FIXTURE)
    print("wrote", FIXTURE)
