"""torch.compile(fullgraph=True) traces FastLSTM's forward and backward with no graph break (Dynamo refuses
nn.LSTM subclasses by default; see modules._let_dynamo_trace_fastlstm), and the compiled module computes what
eager FastLSTM computes. Few cases: each compiles for seconds."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import fastlstm
from conftest import DEVICES, TOL, forward_backward, lstm_pair, output_tensors

CASES = {
    "plain": dict(num_layers=1),
    "bidirectional-2-layers": dict(num_layers=2, bidirectional=True),
    "proj-batch_first": dict(num_layers=1, proj_size=3, batch_first=True),
}


@pytest.fixture(autouse=True)
def _fresh_compile():
    # Inductor's on-disk caches do not key on our fake kernels' code: after a rebuild they can replay a graph
    # compiled against the old ones. Compile from scratch, so the test checks the code as it is.
    import torch._inductor.config
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True):
        yield
    torch._dynamo.reset()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_forward_backward_equals_eager(name, device):
    dtype = torch.float32
    _, eager = lstm_pair(4, 6, device=device, dtype=dtype, **CASES[name])
    _, compiled = lstm_pair(4, 6, device=device, dtype=dtype, **CASES[name])
    compiled.forward = torch.compile(compiled.forward, fullgraph=True)
    x = torch.randn((3, 5, 4) if eager.batch_first else (5, 3, 4), device=device, dtype=dtype)
    D = 2 if eager.bidirectional else 1
    hx = (torch.randn(eager.num_layers * D, 3, eager.proj_size or 6, device=device, dtype=dtype),
          torch.randn(eager.num_layers * D, 3, 6, device=device, dtype=dtype))
    _, e_outs, e_grads = forward_backward(eager, x, hx)
    _, c_outs, c_grads = forward_backward(compiled, x, hx)
    for a, b in zip(c_outs, e_outs):
        torch.testing.assert_close(a, b, **TOL[dtype])
    assert c_grads.keys() == e_grads.keys()
    for k in e_grads:
        torch.testing.assert_close(c_grads[k], e_grads[k], **TOL[dtype], msg=lambda m, k=k: f"grad {k}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_model_containing_fastlstm_inference(device):
    # The usual way in: compile a whole model whose submodule is a FastLSTM, then run it without autograd
    # (the inference op, which saves nothing).
    class Model(nn.Module):
        def __init__(self, lstm):
            super().__init__()
            self.lstm = lstm
            self.head = nn.Linear(2 * 5, 2, device=device)

        def forward(self, x):
            out, (h, c) = self.lstm(x)
            return self.head(out), h, c

    _, fast = lstm_pair(3, 5, num_layers=2, bidirectional=True, batch_first=True, device=device)
    model = Model(fast).eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 7, 3, device=device)
    with torch.no_grad():
        expected = model(x)
        got = compiled(x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    # And nn.LSTM's own results: compiling changed nothing about what is computed.
    ref = nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True, device=device)
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():
        for a, b in zip(got[1:], output_tensors(ref(x))[1:]):
            torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_compile_leaves_plain_nn_lstm_alone():
    # Letting Dynamo trace FastLSTM must not switch on its experimental nn.LSTM tracing for everyone.
    import fastlstm  # noqa: F401
    assert torch._dynamo.config.allow_rnn is False
    lstm = nn.LSTM(3, 5)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
        torch.compile(lstm, fullgraph=True)(torch.randn(2, 1, 3))


def test_fullgraph_when_dynamo_is_imported_before_fastlstm():
    # fastlstm patches Dynamo when Dynamo gets imported, or at once if it already is. The tests above cover
    # the first case (this process imports fastlstm before Dynamo); a fresh interpreter covers the second,
    # with the cheap 'eager' backend since only the tracing is in question.
    code = textwrap.dedent("""
        import torch
        import torch._dynamo
        import fastlstm
        m = fastlstm.FastLSTM(3, 4, num_layers=2, bidirectional=True)
        x = torch.randn(5, 2, 3, requires_grad=True)
        out, (h, c) = torch.compile(m, fullgraph=True, backend="eager")(x)
        (out.sum() + h.sum() + c.sum()).backward()
        assert x.grad is not None
    """)
    parent = os.path.dirname(os.path.dirname(os.path.abspath(fastlstm.__file__)))
    env = dict(os.environ, PYTHONPATH=parent + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
