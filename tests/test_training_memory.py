"""Training's peak memory on the CPU (issue 13's target: at most nn.LSTM's), and the gradients of each result
alone, which the backward now materialises itself (autograd no longer hands it zero tensors for the saved,
non-differentiable outputs)."""
import pytest
import torch

import fastlstm
from conftest import TOL, onednn_matmul_runs
from fastlstm.bench import measure
from fastlstm.bench.cases import Case

needs_probe = pytest.mark.skipif(not measure.cpu_probe_available(),
                                 reason="no /proc/self/clear_refs: the CPU peak-memory probe cannot run here")


# Where oneDNN has no bfloat16 (no AVX-512: an AMD EPYC Zen 3), nn.LSTM runs bfloat16 on ATen's own per-step ops,
# whose autograd frees each step's saved tensors as its backward passes them; fastlstm's backward holds the saved
# gates [T, B, 4H] and their gradients [T, B, 4H] at once (bfloat16, 6.25 MiB each here): 21.3-21.5 MiB against
# nn.LSTM's 17.8-18.8 MiB, measured there. A known shortfall of issue 13's target, not hidden: strict, so the
# test says when it closes.
BF16_ON_ATEN = pytest.mark.xfail(not onednn_matmul_runs(), strict=True,
                                 reason="nn.LSTM's bfloat16 on ATen's per-step ops frees saved steps as it goes")


@needs_probe
@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=BF16_ON_ATEN)])
def test_training_peak_memory_at_most_nn_lstm(dtype):
    # T=50, B=64, H=256: before, autograd's zero gradients of the saved gates and cells (15.6 MiB in float32),
    # a float32 copy of the gate gradients in the bias sum and the peephole-only [T, B, H] buffer put
    # fastlstm at 52.7 / 42.6 MiB against nn.LSTM's 49.4 / 32.0 (float32 / bfloat16); now 33.9 / 23.5.
    case = Case("training", 50, 64, 256, 256, dtype=dtype)
    with measure.CpuPeakProbe(threads=2) as probe:
        peaks = probe(case, ("fastlstm", "torch"))
    assert peaks["torch"] > 8 * 2**20, peaks  # the probe saw nn.LSTM's saved activations at all
    assert peaks["fastlstm"] <= peaks["torch"], {k: v / 2**20 for k, v in peaks.items()}


def _grads(module, x, pick):
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out, (h, c) = module(x)
    loss = pick(out, h, c)
    loss.backward()
    return [x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("which", ["output", "h_n", "c_n", "h_n and c_n"])
@pytest.mark.parametrize("proj_size", [0, 3])
def test_gradient_of_each_result_alone(which, proj_size):
    # The gradients autograd leaves out (None) are zeros the backward makes itself: one result alone must
    # still give nn.LSTM's gradients, the others' contributions being zero.
    torch.manual_seed(0)
    ref = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=True, proj_size=proj_size).double()
    fast = fastlstm.FastLSTM(5, 6, num_layers=2, bidirectional=True, proj_size=proj_size).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    w = {"output": (1, 0, 0), "h_n": (0, 1, 0), "c_n": (0, 0, 1), "h_n and c_n": (0, 1, 1)}[which]
    pick = lambda o, h, c: sum(k * (t * t).sum() for k, t in zip(w, (o, h, c)) if k)  # noqa: E731
    for g, r in zip(_grads(fast, x, pick), _grads(ref, x, pick)):
        torch.testing.assert_close(g, r, **TOL[torch.float64])


def test_gradient_of_h_n_alone_under_torch_func():
    # The torch.func path (its own Function) materialises the missing gradients the same way.
    torch.manual_seed(0)
    ref = torch.nn.LSTM(4, 5).double()
    fast = fastlstm.FastLSTM(4, 5).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(6, 2, 4, dtype=torch.float64)
    params = dict(fast.named_parameters())

    def loss(p, m):
        _, (h, _) = torch.func.functional_call(m, p, (x,))
        return (h * h).sum()

    got = torch.func.grad(loss)(params, fast)
    want = torch.func.grad(loss)(dict(ref.named_parameters()), ref)
    for n in want:
        torch.testing.assert_close(got[n], want[n], **TOL[torch.float64])


def test_autograd_hands_backward_no_zero_gradients(monkeypatch):
    # The mechanism behind the float32 figure above: with materialised gradients, autograd wrote a zero
    # [T, B, 4H] tensor for the saved gates (and one for the cells) before every backward call.
    import fastlstm.ops as ops

    seen = []
    real = ops._result_grads

    def spy(ctx, grads):
        seen.append([g is None for g in grads])
        return real(ctx, grads)

    monkeypatch.setattr(ops, "_result_grads", spy)
    m = fastlstm.FastLSTM(4, 5)
    x = torch.randn(6, 2, 4, requires_grad=True)
    _, (h, _) = m(x)
    h.sum().backward()
    assert seen == [[True, False, True]]  # output and c_n had no gradient, and none was made for them
    assert x.grad is not None and torch.isfinite(x.grad).all()
