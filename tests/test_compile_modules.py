"""torch.compile(fullgraph=True) of every fastlstm module (issue 12 item 3), with Dynamo's default backend
(inductor) and aot_eager, forward and backward: no graph break (fullgraph raises on one), and compiled ==
eager. test_compile.py covers FastLSTM's configurations in depth; this file covers the other modules and a
compiled model holding them. Each compile takes seconds: few, small cases."""
import pytest
import torch
from torch import nn

import fastlstm
from conftest import TOL

MODULES = {
    "FastLSTM": fastlstm.FastLSTM,
    "FastGRU": fastlstm.FastGRU,
    "PeepholeLSTM": fastlstm.PeepholeLSTM,
    "LayerNormLSTM": fastlstm.LayerNormLSTM,
}
CONFIG = dict(num_layers=2, batch_first=True, bidirectional=True, dropout=0.25)


@pytest.fixture(autouse=True)
def _fresh_compile():
    # As in test_compile.py: inductor's caches do not key on our fake kernels' code.
    import torch._inductor.config
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True):
        yield
    torch._dynamo.reset()


def _states(m, B):
    LD = m.num_layers * (2 if m.bidirectional else 1)
    torch.manual_seed(2)
    h = torch.randn(LD, B, m.hidden_size)
    return h if isinstance(m, nn.GRU) else (h, torch.randn(LD, B, m.hidden_size))


def _leaves(hx):
    return tuple(h.clone().requires_grad_() for h in hx) if isinstance(hx, tuple) else hx.clone().requires_grad_()


def _flat(result):
    out, h = result
    return [out, *(h if isinstance(h, tuple) else (h,))]


def _forward_backward(fn, m, x, hx):
    m.zero_grad(set_to_none=True)
    x, hx = x.clone().requires_grad_(), _leaves(hx)
    outs = _flat(fn(x, hx))
    g = torch.Generator().manual_seed(3)
    sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs).backward()
    hx_grads = [h.grad for h in (hx if isinstance(hx, tuple) else (hx,))]
    return outs, [x.grad, *hx_grads] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
@pytest.mark.parametrize("name", list(MODULES))
def test_compiled_equals_eager_forward_backward(name, backend):
    torch.manual_seed(0)
    # eval(): dropout is configured (the code path that reads it is traced) but off, so results are exact.
    m = MODULES[name](4, 6, **CONFIG).eval()
    x, hx = torch.randn(3, 5, 4), _states(m, 3)
    compiled = torch.compile(m, fullgraph=True, backend=backend)
    e_outs, e_grads = _forward_backward(m, m, x, hx)
    c_outs, c_grads = _forward_backward(compiled, m, x, hx)
    for a, b in zip(c_outs, e_outs):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    assert len(c_grads) == len(e_grads) and all(g is not None for g in c_grads)
    for a, b in zip(c_grads, e_grads):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("name", list(MODULES))
def test_dropout_in_training_compiles_without_graph_break(name):
    # Dropout's masks come from the RNG, which compiled code draws differently: check that training mode
    # traces whole, that the mask acts (outputs differ from eval's), and that every parameter gets a gradient.
    torch.manual_seed(0)
    m = MODULES[name](4, 6, **{**CONFIG, "dropout": 0.5}).train()
    x = torch.randn(3, 5, 4)
    explanation = torch._dynamo.explain(m)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    out = torch.compile(m, fullgraph=True, backend="aot_eager")(x)[0]
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    with torch.no_grad():
        assert not torch.allclose(out, m.eval()(x)[0])


def test_compiled_model_containing_every_module_trains_as_eager():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = fastlstm.FastGRU(3, 4, batch_first=True)
            self.peep = fastlstm.PeepholeLSTM(4, 5, num_layers=2, batch_first=True, bidirectional=True)
            self.ln = fastlstm.LayerNormLSTM(10, 4, batch_first=True)
            self.lstm = fastlstm.FastLSTM(4, 4, batch_first=True, proj_size=2)
            self.head = nn.Linear(2, 1)

        def forward(self, x):
            y, _ = self.gru(x)
            y, _ = self.peep(torch.relu(y))
            y, _ = self.ln(y)
            y, (h, _) = self.lstm(y)
            return self.head(y).squeeze(-1) + h[-1].sum(-1, keepdim=True)

    torch.manual_seed(0)
    model = Model()
    x = torch.randn(2, 6, 3)
    compiled = torch.compile(model, fullgraph=True)

    def step(fn):
        model.zero_grad(set_to_none=True)
        out = fn(x)
        (out ** 2).mean().backward()
        return out, {n: p.grad for n, p in model.named_parameters()}

    e_out, e_grads = step(model)
    c_out, c_grads = step(compiled)
    torch.testing.assert_close(c_out, e_out, **TOL[torch.float32])
    for n in e_grads:
        torch.testing.assert_close(c_grads[n], e_grads[n], **TOL[torch.float32], msg=lambda m, n=n: f"{n}: {m}")
