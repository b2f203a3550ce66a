"""The GRU CUDA kernels' per-element code, run on the CPU (no GPU needed) and compared with the CPU ops.

tests/harness/gru_harness.cpp runs the functions of csrc/cuda/gru_kernels.cuh (the code the __global__
kernels call) over every thread of each launch, inside the same layer driver as the CUDA adapter, as
torch.ops.fastlstm_gru_harness.*. Whole layers go forward and backward through it in float64, float32,
float16 and bfloat16 storage, with the widest vector the launch plan allows and with the scalar kernels,
and are compared with fastlstm's CPU ops (themselves tested against nn.GRU and the float64 oracle).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from conftest import LOWP_FACTOR, LOWP_SLACK, TOL

ROOT = Path(__file__).resolve().parents[1]
HARNESS_SRC = ROOT / "tests" / "harness" / "gru_harness.cpp"
LSTM_KERNELS = ROOT / "csrc" / "cuda" / "lstm_kernels.cuh"

try:  # the LSTM harness's toolkit lookup, when that test file is present (it comes with the CUDA kernels)
    from test_cuda_harness import CUDA_INC
except ImportError:
    CUDA_INC = None

pytestmark = [
    pytest.mark.skipif(not LSTM_KERNELS.is_file(), reason="the GRU kernels build on the LSTM CUDA kernels' "
                       "helpers (csrc/cuda/lstm_kernels.cuh), which this tree lacks"),
    pytest.mark.skipif(CUDA_INC is None, reason="no CUDA toolkit headers (cuda_fp16.h/cuda_bf16.h): the "
                       "harness compiles the kernels' .cuh against them"),
]


@pytest.fixture(scope="session")
def harness():
    """torch.ops.fastlstm_gru_harness, built once (and cached across sessions) with g++."""
    from torch.utils import cpp_extension

    key = hashlib.sha1(f"{ROOT}|{torch.__version__}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    build_dir = cache / "fastlstm" / f"gru_harness_{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(name="fastlstm_gru_harness", sources=[str(HARNESS_SRC)], extra_include_paths=[CUDA_INC],
                       extra_cflags=["-O2", "-DFASTLSTM_HARNESS"], build_directory=str(build_dir),
                       is_python_module=False)
    ops = torch.ops.fastlstm_gru_harness
    yield ops
    ops.set_max_vec(16)


def _inputs(T, B, I, H, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    return [r(T, B, I), r(B, H), r(3 * H, I) * 0.5, r(3 * H, H) * 0.5, r(3 * H) if bias else None,
            r(3 * H) if bias else None], (r(T, B, H), r(B, H))


def _layer(ops, args, grads, lengths, reverse):
    """Forward then backward of one layer through `ops`: [output, h_n, grad_input, grad_h0, grad_w_ih,
    grad_w_hh, (grad_b_ih, grad_b_hh)]."""
    x, h0, w_ih, w_hh, b_ih, b_hh = args
    out, h_n, gates, hn = ops.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
    back = ops.gru_backward(grads[0], grads[1], x, h0, w_ih, w_hh, lengths, out, gates, hn, reverse)
    res = [out, h_n, *back[:4]]
    return res + (list(back[4:]) if b_ih is not None else [])


CASES = [  # (T, B, I, H, bias, packed, reverse): H = 8/16 takes the vector kernels, H = 5 the scalar ones
    (5, 3, 4, 8, True, False, False),
    (4, 2, 3, 5, False, False, True),
    (6, 4, 5, 16, True, True, True),
    (3, 3, 2, 8, True, True, False),
]


@pytest.mark.parametrize("max_vec", [16, 1])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T,B,I,H,bias,packed,reverse", CASES)
def test_harness_matches_cpu_ops(harness, max_vec, dtype, T, B, I, H, bias, packed, reverse):
    harness.set_max_vec(max_vec)
    args64, grads64 = _inputs(T, B, I, H, bias)
    lengths = torch.tensor([T, 1, T - 1, 2][:B]) if packed else None
    cast = lambda ts: [None if t is None else t.to(dtype) for t in ts]  # noqa: E731
    got = _layer(harness, cast(args64), cast(grads64), lengths, reverse)
    cpu = _layer(torch.ops.fastlstm, cast(args64), cast(grads64), lengths, reverse)
    if dtype in TOL:
        for k, (a, b) in enumerate(zip(got, cpu)):
            torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"output #{k}: {m}")
        return
    # Half types: against the float64 CPU op, at most LOWP_FACTOR x the CPU op's own error (+ slack).
    exact = _layer(torch.ops.fastlstm, args64, grads64, lengths, reverse)
    for k, (a, b, e) in enumerate(zip(got, cpu, exact)):
        err_h = (a.double() - e).abs().max().item()
        err_c = (b.double() - e).abs().max().item()
        assert err_h <= LOWP_FACTOR * err_c + LOWP_SLACK[dtype], (k, err_h, err_c)
