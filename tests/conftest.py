"""Shared test configuration: devices, and the tolerances, stated once per dtype."""
import contextlib
import os
from unittest import mock

# MKL's conditional numerical reproducibility, set before torch loads MKL: without it, MKL's GEMMs on some CPUs
# (seen on an AMD EPYC) round the same product differently with the operands' memory alignment, which breaks
# the tests that assert two of fastlstm's paths (inference and the training forward, say) give the same
# numbers exactly, although fastlstm's own code computes the same thing both ways. STRICT: whatever the
# alignment. A value already in the environment is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import pytest  # noqa: E402
import torch  # noqa: E402

import fastlstm
from cuda_paths import persistent_status, set_persistent

# Absolute/relative tolerances against nn.LSTM (or lstm_ref) for outputs and gradients, per dtype.
# float32: a few ulps accumulated over T steps and GEMM reductions of ~I+H terms.
# float64: effectively exact. Half types are not compared with fixed tolerances: see `lowp_error_ratio`.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=2e-5, rtol=1e-4),
}
# LayerNormLSTM's float32 against float64: each layer norm divides by a row's standard deviation, which scales
# float32 rounding up; 4x the plain LSTM's float32 tolerance (measured: 2.5e-5 abs on the 2-layer
# bidirectional packed case, where the LSTM's 2e-5 is exceeded by one element).
LN_TOL = {torch.float64: TOL[torch.float64], torch.float32: {k: 4 * v for k, v in TOL[torch.float32].items()}}

# Low-precision rule (flash-attention's): fastlstm's error against a float64 reference may be at most
# LOWP_FACTOR times nn.LSTM's own error in that dtype (plus LOWP_SLACK, for errors at rounding level).
LOWP_FACTOR = 2.0
LOWP_SLACK = {torch.bfloat16: 1e-2, torch.float16: 2e-3}



def native_half_gemms(dtype) -> bool:
    """Whether oneDNN's half-type GEMMs in dtype are the faster ones here (cpuinfo, as csrc/cpu/device.cpp's
    native_half_gemms reads it): bfloat16 with AMX, or with AVX512-BF16 on an AMD CPU; float16 with AMX. There
    the CPU ops keep a half type's gates in its storage dtype at every length and run oneDNN's half-type GEMMs
    (faster than float32 there), instead of float32 pre-activations from 4 steps on."""
    caps = torch._C._cpu._get_cpu_capability()
    if dtype == torch.bfloat16:
        return (bool(caps.get("amx_bf16")) and bool(caps.get("amx_tile"))) or (bool(caps.get("avx512_bf16"))
                                                                              and amd_cpu())
    if dtype == torch.float16:
        return bool(caps.get("amx_fp16")) and bool(caps.get("amx_tile"))
    return False


@contextlib.contextmanager
def one_direction_at_a_time():
    """Inference runs a bidirectional layer's directions one after the other with ATen's threads, as training
    does, instead of through the *_inference_pair ops (each direction on one thread, its GEMMs sequential).
    MKL's sequential and threaded GEMMs of the same shapes may round differently (seen on an AMD EPYC: 1 ulp
    in float32 and float64), so a test that asserts inference equals the training forward *exactly* runs its
    inference under this; tests/test_pairs.py pins the pair ops, exactly, against the one-direction ops on
    one thread."""
    with mock.patch.dict(fastlstm.ops._PAIR_OPS, clear=True):
        yield


def amd_cpu() -> bool:
    """Whether the CPU is AMD's (CPUID's vendor string, as csrc/cpu/device.cpp's amd_cpu reads it; Linux's
    /proc/cpuinfo here). There the CPU ops run their large float32 GEMMs on oneDNN and the whole-sequence path
    up to 2 MiB panels."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("vendor_id") and "AuthenticAMD" in line for line in f)
    except OSError:
        return False


def onednn_matmul_runs() -> bool:
    """Whether oneDNN's matmul runs on this CPU at all (AVX-512 BW/VL/DQ or AVX-NE-CONVERT, as
    csrc/cpu/device.cpp's onednn_matmul_runs and ATen's mkldnn_bf16_device_check read it). Elsewhere (an AMD
    EPYC Zen 3, AVX2 only) ATen's mkldnn_matmul raises even for float32, so every GEMM stays on MKL."""
    caps = torch._C._cpu._get_cpu_capability()
    return torch.backends.cpu.get_cpu_capability() == "AVX512" or bool(caps.get("avx_ne_convert"))


HAS_CUDA = torch.cuda.is_available() and fastlstm.has_kernels("cuda")
NO_CUDA_REASON = ("no CUDA device" if not torch.cuda.is_available()
                  else "fastlstm was built without CUDA kernels")

# Parametrize a test over this to run it on every device fastlstm has kernels for; CUDA cases skip (with
# the reason) where there is none.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)),
]


# Which CUDA path the run tests: FASTLSTM_CUDA_PERSISTENT=1 in the environment asks for the persistent fused
# kernel (scripts/gpu_check.sh runs the CUDA tests once without and once with it). Applied once here, so the
# Python switch, where fastlstm has one, agrees with the variable.
if os.environ.get("FASTLSTM_CUDA_PERSISTENT", "0") == "1":
    set_persistent(True)


def pytest_report_header(config):
    return f"fastlstm CUDA path: {persistent_status()}"


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (scripts/gpu_check.sh runs `-m cuda`)")


def _needs_cuda(item) -> bool:
    # A device parameter "cuda", a test in test_cuda.py, or "cuda" in the test's own name. The harness
    # files only carry "cuda" in their file name: they run the kernels' code on the CPU.
    params = getattr(getattr(item, "callspec", None), "params", {})
    if any(isinstance(v, str) and v.startswith("cuda") for v in params.values()):
        return True
    module = getattr(getattr(item, "module", None), "__name__", "")
    return module.rsplit(".", 1)[-1] == "test_cuda" or "cuda" in getattr(item, "originalname", item.name).lower()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _needs_cuda(item):
            item.add_marker(pytest.mark.cuda)


@contextlib.contextmanager
def native_rnn_reference():
    """nn.LSTM / nn.GRU as a reference through ATen's native kernels instead of cuDNN, where cuDNN itself
    refuses the call ("cudnn RNN backward can only be called in training mode"): the test is about fastlstm,
    and the native kernels compute the same function. Changes nothing on the CPU."""
    old = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = old


@pytest.fixture(autouse=True)
def _no_tf32():
    # Parity on CUDA is checked against cuDNN in true float32, not TF32.
    if torch.cuda.is_available():
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    else:
        yield


# ----------------------------------------------------------------------------------------------------------
# Shared helpers: a FastLSTM and an nn.LSTM with the same weights, a loss that weights every output element
# differently, and the largest parity error seen per dtype (printed at the end of the run for the issue's
# closing note).

# label (dtype and what was compared) -> (largest max-abs error over outputs and gradients, in which case);
# filled by the parity tests.
PARITY_MAX_ERR: dict = {}


def record_error(label: str, err: float, where: str) -> None:
    if err > PARITY_MAX_ERR.get(label, (-1.0, ""))[0]:
        PARITY_MAX_ERR[label] = (err, where)


def pytest_terminal_summary(terminalreporter):
    if PARITY_MAX_ERR:
        terminalreporter.section("largest parity error (max abs, over outputs and all gradients)")
        for label, (err, where) in sorted(PARITY_MAX_ERR.items()):
            terminalreporter.write_line(f"{label:44s} {err:.3e}   ({where})")


def lstm_pair(*args, device="cpu", dtype=torch.float32, seed=0, **kwargs):
    """(nn.LSTM, FastLSTM) built from the same seed: identical configuration and weights."""
    torch.manual_seed(seed)
    ref = torch.nn.LSTM(*args, device=device, dtype=dtype, **kwargs)
    torch.manual_seed(seed)
    fast = fastlstm.FastLSTM(*args, device=device, dtype=dtype, **kwargs)
    return ref, fast


def output_tensors(result):
    """nn.LSTM's (output, (h_n, c_n)) as a flat list of tensors (a PackedSequence contributes its data)."""
    out, (h, c) = result
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        out = out.data
    return [out, h, c]


def weighted_loss(tensors, seed=1, round_to=None):
    """sum_k <w_k, t_k> with fixed random weights: every element gets its own gradient, so a swapped gate,
    direction or time step cannot hide behind a symmetric loss. ``round_to``: round the weights through this
    dtype first (a float64 reference then sees exactly the weights a half-precision run sees)."""
    g = torch.Generator().manual_seed(seed)
    total = 0
    for t in tensors:
        w = torch.randn(t.shape, generator=g, dtype=torch.float64)
        if round_to is not None:
            w = w.to(round_to)
        w = w.to(t.device, t.dtype)
        total = total + (t * w).sum()
    return total


def forward_backward(module, x, hx=None, prepare=None):
    """Run ``module`` on ``prepare(x)`` (e.g. packing, inside autograd) with ``hx`` and backprop the weighted
    loss. x and hx are copied into fresh leaves. Returns (result, outputs list, {name: grad}) with the grads
    of 'input', 'h0', 'c0' (when hx is given) and of every parameter, by name."""
    module.zero_grad(set_to_none=True)
    leaves = {"input": x.detach().clone().requires_grad_()}
    if hx is not None:
        leaves["h0"] = hx[0].detach().clone().requires_grad_()
        leaves["c0"] = hx[1].detach().clone().requires_grad_()
    inp = prepare(leaves["input"]) if prepare is not None else leaves["input"]
    result = module(inp, (leaves["h0"], leaves["c0"]) if hx is not None else None)
    outs = output_tensors(result)
    weighted_loss(outs).backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads.update({k: p.grad for k, p in module.named_parameters()})
    return result, outs, grads


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    d = (a.double() - b.double()).abs()
    d = d[~(a.isnan() & b.isnan())]
    return float(d.max()) if d.numel() else 0.0
