"""torch.jit.script and torch.jit.trace of every fastlstm module (issue 12 item 5): same outputs and gradients
as eager, gradients reaching the original module's parameters, inside a model, and through save/load."""
import io

import pytest
import torch
from torch import nn

import fastlstm
from conftest import TOL

MODULES = {
    "FastLSTM": (fastlstm.FastLSTM, {}),
    "FastLSTM-proj": (fastlstm.FastLSTM, {"proj_size": 3}),
    "FastGRU": (fastlstm.FastGRU, {}),
    "PeepholeLSTM": (fastlstm.PeepholeLSTM, {}),
    "PeepholeLSTM-full": (fastlstm.PeepholeLSTM, {"peephole": "full"}),
    "LayerNormLSTM": (fastlstm.LayerNormLSTM, {}),
}


def _make(name, **kw):
    cls, extra = MODULES[name]
    torch.manual_seed(0)
    return cls(4, 6, num_layers=2, bidirectional=True, batch_first=True, **extra, **kw)


def _hx(m, B, unbatched=False):
    LD = m.num_layers * 2
    shape = (LD, m.proj_size or m.hidden_size) if unbatched else (LD, B, getattr(m, "proj_size", 0) or m.hidden_size)
    torch.manual_seed(2)
    h = torch.randn(*shape)
    if isinstance(m, nn.GRU):
        return h
    return h, torch.randn(*shape[:-1], m.hidden_size)


def _flat(result):
    out, h = result
    return [out, *(h if isinstance(h, tuple) else (h,))]


def _forward_backward(fn, m, x, hx):
    m.zero_grad(set_to_none=True)
    outs = _flat(fn(x, hx))
    g = torch.Generator().manual_seed(3)
    sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs).backward()
    return outs, [p.grad for p in m.parameters()]


def _compile(how, m, x, hx):
    if how == "script":
        return torch.jit.script(m)
    return torch.jit.trace(m, (x, hx))


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("name", list(MODULES))
def test_same_outputs_and_gradients_as_eager(name, how):
    m = _make(name).eval()
    x, hx = torch.randn(3, 5, 4), _hx(_make(name), 3)
    jitted = _compile(how, m, x, hx)
    e_outs, e_grads = _forward_backward(m, m, x, hx)
    j_outs, j_grads = _forward_backward(jitted, m, x, hx)
    for a, b in zip(j_outs, e_outs):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    # The jitted module shares the parameters: its backward fills the original module's .grad.
    assert all(g is not None for g in j_grads)
    for a, b in zip(j_grads, e_grads):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("name", ["FastLSTM", "FastGRU", "LayerNormLSTM"])
def test_scripted_unbatched_and_default_state(name):
    m = _make(name)
    s = torch.jit.script(m)
    x = torch.randn(5, 4)
    for hx in (None, _hx(m, 1, unbatched=True)):
        for a, b in zip(_flat(s(x, hx)), _flat(m(x, hx))):
            torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_scripted_model_saves_and_loads():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = fastlstm.FastLSTM(4, 6, batch_first=True)
            self.gru = fastlstm.FastGRU(6, 5, batch_first=True)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            y, _ = self.rnn(x)
            y, _ = self.gru(y)
            return self.head(y)

    torch.manual_seed(0)
    model = Model().eval()
    scripted = torch.jit.script(model)
    # Parameter names as the eager model's: a state_dict moves between the two.
    assert scripted.state_dict().keys() == model.state_dict().keys()
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x = torch.randn(2, 7, 4)
    torch.testing.assert_close(loaded(x), model(x), **TOL[torch.float32])


def test_scripted_dropout_acts_in_training_only():
    m = _make("FastLSTM", dropout=0.5).train()
    s = torch.jit.script(m)
    x = torch.randn(3, 5, 4)
    assert not torch.allclose(s(x)[0], m.eval()(x)[0])
    s.eval()
    torch.testing.assert_close(s(x)[0], m(x)[0], **TOL[torch.float32])
