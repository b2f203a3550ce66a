"""bfloat16 / float16 on the CPU (issue 13): layers of 4 steps or more keep their gate pre-activations in
float32, computed by float32 GEMMs on float32 copies of the half-typed operands (faster on this CPU than its
half-type GEMMs, and the scheme of CUDA and cuDNN); backward's GEMMs likewise. Checked against an explicit
float32 emulation of that scheme: the same function up to float32 summation order, while half-typed
pre-activations (the scheme below 4 steps, and before) differ from it by whole roundings."""
import pytest
import torch

import fastlstm
from conftest import native_half_gemms

# Relative difference (norm) from the emulation, in units of the dtype's eps: measured 3.2e-3 eps (bfloat16)
# and 6.9e-3 eps (float16) at T=16, against 0.33 and 0.33 eps with half-typed pre-activations (T=3).
EMU_EPS = 0.05


def _emulated_lstm(m: torch.nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """The one-layer LSTM with float32 pre-activations from the half-typed x, h and weights, float32 cell
    state, h rounded to x's dtype each step: [T, B, H] in x's dtype."""
    dtype = x.dtype
    w_ih, w_hh = m.weight_ih_l0.float(), m.weight_hh_l0.float()
    b = m.bias_ih_l0.float() + m.bias_hh_l0.float()
    h = torch.zeros(x.size(1), m.hidden_size, dtype=dtype)
    c = torch.zeros(x.size(1), m.hidden_size)
    out = []
    for t in range(x.size(0)):
        i, f, g, o = (x[t].float() @ w_ih.t() + b + h.float() @ w_hh.t()).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = (torch.sigmoid(o) * torch.tanh(c)).to(dtype)
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_pre_activations_are_float32_on_the_cpu(dtype, grad):
    if native_half_gemms(dtype):
        pytest.skip(f"oneDNN has this CPU's own dot products for {dtype}: storage-typed gates "
                    "(test_half_with_native_dot_products_keeps_storage_gates)")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(32, 64).to(dtype)
    m = fastlstm.FastLSTM.from_lstm(ref)
    x = torch.randn(16, 8, 32).to(dtype).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        y = m(x)[0]
    want = _emulated_lstm(ref, x.detach()).double()
    rel = ((y.detach().double() - want).norm() / want.norm()).item()
    assert rel <= EMU_EPS * torch.finfo(dtype).eps, f"{rel:.3g} from the float32-pre-activation emulation"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_batch_one_steps_use_the_gemv_kernels_correctly(dtype):
    """Batch 1 below 4 steps (streaming): the half-type GEMV kernels (float32 sums, one rounding per output),
    forward and the backward's dh = dgates @ W_hh, within the low-precision rule: error against float64 at
    most LOWP_FACTOR x nn.LSTM's own in that dtype, + LOWP_SLACK."""
    from conftest import LOWP_FACTOR, LOWP_SLACK

    torch.manual_seed(0)
    ref64 = torch.nn.LSTM(96, 80, dtype=torch.float64)
    ref = torch.nn.LSTM(96, 80).to(dtype)
    ref.load_state_dict({k: v.to(dtype) for k, v in ref64.state_dict().items()})
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})  # the same rounded weights
    fast = fastlstm.FastLSTM.from_lstm(ref)
    xs = [torch.randn(1, 1, 96).to(dtype) for _ in range(6)]

    def run(m, dt):
        state, outs, grads = None, [], []
        for x in xs:
            x = x.to(dt).requires_grad_()
            y, state = m(x, state)
            (g,) = torch.autograd.grad(y.sum() + state[1].sum(), x)
            outs.append(y.detach())
            grads.append(g)
            state = tuple(s.detach() for s in state)
        return torch.cat(outs), torch.cat(grads)

    exact = run(ref64, torch.float64)
    for what, ours, theirs, want in zip(("output", "grad_input"), run(fast, dtype), run(ref, dtype), exact):
        e_ours = (ours.double() - want).abs().max().item()
        e_ref = (theirs.double() - want).abs().max().item()
        assert e_ours <= LOWP_FACTOR * e_ref + LOWP_SLACK[dtype], f"{what}: {e_ours:.3g} vs nn.LSTM {e_ref:.3g}"


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_with_native_dot_products_keeps_storage_gates(dtype, grad):
    """Where oneDNN has the CPU's own dot products for the dtype (AMX; AVX512-BF16 for bfloat16), layers of 4
    steps or more keep half-typed gates (oneDNN's half GEMMs):
    farther from the float32 emulation than the float32 scheme is (whole roundings, as below 4 steps), and
    within the low-precision rule against float64: outputs and input gradients at most LOWP_FACTOR x
    nn.LSTM's own error in that dtype, + LOWP_SLACK."""
    from conftest import LOWP_FACTOR, LOWP_SLACK

    if not native_half_gemms(dtype):
        pytest.skip(f"no half-type dot products for {dtype} on this CPU: float32 pre-activations there")
    torch.manual_seed(0)
    ref = torch.nn.LSTM(32, 64).to(dtype)
    ref64 = torch.nn.LSTM(32, 64).double()
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    m = fastlstm.FastLSTM.from_lstm(ref)
    x = torch.randn(16, 8, 32).to(dtype)

    def run(mod, xx):
        xx = xx.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            y = mod(xx)[0]
            g = torch.autograd.grad(y.float().sum(), xx)[0] if grad else None
        return y.detach(), g

    y, g = run(m, x)
    want = _emulated_lstm(ref, x).double()
    rel = ((y.double() - want).norm() / want.norm()).item()
    assert rel > EMU_EPS * torch.finfo(dtype).eps, "float32 pre-activations, where AMX should take half GEMMs"
    exact, g_exact = run(ref64, x.double())
    theirs, g_theirs = run(ref, x)
    pairs = [("output", y, theirs, exact)] + ([("grad_input", g, g_theirs, g_exact)] if grad else [])
    for what, ours, tr, ex in pairs:
        e_ours = (ours.double() - ex).abs().max().item()
        e_ref = (tr.double() - ex).abs().max().item()
        assert e_ours <= LOWP_FACTOR * e_ref + LOWP_SLACK[dtype], f"{what}: {e_ours:.3g} vs nn.LSTM {e_ref:.3g}"
