"""The peephole CUDA kernels' per-element code, run on the CPU (no GPU needed) against the float64 oracle.

tests/harness/peephole_harness.cpp runs the functions of csrc/cuda/peephole_kernels.cuh (the very code the
__global__ kernels call) over every thread of each launch, inside the shared layer driver, as
torch.ops.fastlstm_peephole_harness.*. Whole layers go forward and backward through it in float64, float32,
float16 and bfloat16 storage, diagonal and full, with the widest vector the plan allows and with the scalar
kernels, and are compared with fastlstm.reference.peephole_lstm_layer_ref (float64, autograd).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import LOWP_FACTOR, LOWP_SLACK, TOL
from fastlstm.reference import peephole_lstm_layer_ref

ROOT = Path(__file__).resolve().parents[1]
HARNESS_SRC = ROOT / "tests" / "harness" / "peephole_harness.cpp"
# The peephole kernels build on the LSTM kernels' packs and launch plan (csrc/cuda/lstm_kernels.cuh).
LSTM_KERNELS = ROOT / "csrc" / "cuda" / "lstm_kernels.cuh"


def _cuda_include_dir() -> str | None:
    """The CUDA toolkit's include dir (cuda_fp16.h, cuda_bf16.h), or None without a toolkit."""
    from torch.utils import cpp_extension

    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME]
    nvcc = shutil.which("nvcc")
    if nvcc:
        dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True).stderr
        roots += re.findall(r"^#\$ TOP=(.*)$", dry, re.M)
    for root in filter(None, roots):
        inc = Path(root) / "include"
        if (inc / "cuda_fp16.h").is_file() and (inc / "cuda_bf16.h").is_file():
            return str(inc)
    return None


CUDA_INC = _cuda_include_dir()
pytestmark = [
    pytest.mark.skipif(CUDA_INC is None, reason="no CUDA toolkit headers (cuda_fp16.h/cuda_bf16.h): the harness "
                       "compiles the kernels' .cuh against them"),
    pytest.mark.skipif(not LSTM_KERNELS.is_file(), reason="csrc/cuda/lstm_kernels.cuh (the LSTM CUDA kernels, "
                       "which the peephole kernels build on) is not in this tree"),
]


@pytest.fixture(scope="module")
def harness():
    """torch.ops.fastlstm_peephole_harness, built once (and cached across sessions) with g++."""
    from torch.utils import cpp_extension

    key = hashlib.sha1(f"{ROOT}|{torch.__version__}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    build_dir = cache / "fastlstm" / f"peephole_harness_{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(name="fastlstm_peephole_harness", sources=[str(HARNESS_SRC)],
                       extra_include_paths=[CUDA_INC], extra_cflags=["-O2", "-DFASTLSTM_HARNESS"],
                       build_directory=str(build_dir), is_python_module=False)
    ops = torch.ops.fastlstm_peephole_harness
    yield ops
    ops.set_plan(16)


# H=8: 8 halves / 4 floats / 2 doubles per thread; H=6: 2; H=1 and odd H: 1.
CONFIGS = {
    "plain": dict(T=5, B=3, I=4, H=8),
    "odd": dict(T=4, B=2, I=3, H=6),
    "ones": dict(T=1, B=1, I=1, H=1),
    "lengths_reverse": dict(T=6, B=3, I=2, H=8, lengths=[6, 2, 4], reverse=True, bias=False),
}
NAMES = ("input", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_ci", "w_cf", "w_co")


def make_case(cfg, mode, dtype):
    g = torch.Generator().manual_seed(0)
    T, B, I, H = cfg["T"], cfg["B"], cfg["I"], cfg["H"]
    k = H ** -0.5

    def u(*s):
        return ((torch.rand(*s, generator=g, dtype=torch.float64) * 2 - 1) * k).to(dtype)

    def n(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)

    peep = (H,) if mode == "diagonal" else (H, H)
    bias = cfg.get("bias", True)
    tensors = [n(T, B, I), n(B, H) * 0.5, n(B, H) * 0.5, u(4 * H, I), u(4 * H, H), u(4 * H) if bias else None,
               u(4 * H) if bias else None, u(*peep), u(*peep), u(*peep)]
    lengths = torch.tensor(cfg["lengths"]) if "lengths" in cfg else None
    return tensors, lengths, cfg.get("reverse", False), (n(T, B, H), n(B, H), n(B, H))


def oracle(tensors, lengths, reverse, grads, compute_dtype):
    leaves = [None if t is None else t.to(compute_dtype).requires_grad_() for t in tensors]
    outs = peephole_lstm_layer_ref(*leaves, lengths=lengths, reverse=reverse, compute_dtype=compute_dtype)
    loss = sum((o * g.to(compute_dtype)).sum() for o, g in zip(outs, grads))
    loss.backward()
    named = {name: t.grad for name, t in zip(NAMES, leaves) if t is not None}
    return [o.detach() for o in outs], named


def through_harness(ops, tensors, lengths, reverse, grads):
    out, h_n, c_n, gates, cells = ops.peephole_forward(*tensors, lengths, reverse)
    back = ops.peephole_backward(*grads, *tensors[:5], *tensors[7:], lengths, out, gates, cells, reverse)
    dx, dh0, dc0, dw_ih, dw_hh, db, dci, dcf, dco = back
    named = dict(input=dx, h0=dh0, c0=dc0, w_ih=dw_ih, w_hh=dw_hh, w_ci=dci, w_cf=dcf, w_co=dco)
    if tensors[5] is not None:
        named.update(b_ih=db, b_hh=db)
    return [out, h_n, c_n], named


@pytest.mark.parametrize("max_vec", [16, 1], ids=["widest", "scalar"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("mode", ["diagonal", "full"])
@pytest.mark.parametrize("cfg", list(CONFIGS), ids=list(CONFIGS))
def test_harness_matches_oracle(harness, cfg, mode, dtype, max_vec):
    harness.set_plan(max_vec)
    tensors, lengths, reverse, grads = make_case(CONFIGS[cfg], mode, dtype)
    outs, named = through_harness(harness, tensors, lengths, reverse, grads)
    ref_outs, ref_named = oracle(tensors, lengths, reverse, grads, torch.float64)
    assert named.keys() == ref_named.keys()
    pairs = list(zip(("output", "h_n", "c_n"), outs, ref_outs)) + [(k, named[k], ref_named[k]) for k in ref_named]
    if dtype in TOL:
        for name, a, b in pairs:
            torch.testing.assert_close(a, b.to(dtype), **TOL[dtype], msg=lambda m, n=name: f"{n}: {m}")
        return
    # Half types: at most LOWP_FACTOR times the error of the oracle run in that type, plus slack.
    low_outs, low_named = oracle(tensors, lengths, reverse, grads, dtype)
    lows = list(low_outs) + [low_named[k] for k in ref_named]
    for (name, a, b), low in zip(pairs, lows):
        assert torch.isfinite(a).all(), name
        err = (a.double() - b).abs().max().item()
        bound = LOWP_FACTOR * (low.double() - b).abs().max().item() + LOWP_SLACK[dtype]
        assert err <= bound, f"{name}: error {err:.3g} > {bound:.3g}"
