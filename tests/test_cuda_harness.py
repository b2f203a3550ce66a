"""The CUDA kernels' per-element code, run on the CPU (no GPU needed) and compared with the float64 oracle.

tests/harness/cuda_harness.cpp runs the functions of csrc/cuda/lstm_kernels.cuh (the very code the
__global__ kernels call) over every thread of each launch, inside the same layer driver as the CUDA adapter,
and registers the result as torch.ops.fastlstm_harness.*. Here whole layers go forward and backward through
it in float32, float64, float16 and bfloat16 storage, with both the widest vector width the launch plan
allows and the scalar kernels, and are compared with fastlstm.reference.lstm_layer_ref (float64, autograd).
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
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import LOWP_FACTOR, LOWP_SLACK, TOL
from fastlstm.reference import lstm_layer_ref

ROOT = Path(__file__).resolve().parents[1]
HARNESS_SRC = ROOT / "tests" / "harness" / "cuda_harness.cpp"


def _cuda_include_dir() -> str | None:
    """The CUDA toolkit's include dir (cuda_fp16.h, cuda_bf16.h), or None without a toolkit."""
    from torch.utils import cpp_extension

    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME]
    nvcc = shutil.which("nvcc")
    if nvcc:
        # nvcc may be a wrapper outside the toolkit; its dry run names the real root.
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
    # nn.LSTM (the low-precision baseline) says so for every proj_size run on the CPU.
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
]

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="session")
def harness():
    """torch.ops.fastlstm_harness, built once (and cached across sessions) with g++."""
    from torch.utils import cpp_extension

    # One build dir per checkout and torch version; ninja then rebuilds only when a source or header changes.
    key = hashlib.sha1(f"{ROOT}|{torch.__version__}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    build_dir = cache / "fastlstm" / f"cuda_harness_{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="fastlstm_cuda_harness",
        sources=[str(HARNESS_SRC)],
        extra_include_paths=[CUDA_INC],
        extra_cflags=["-O2", "-DFASTLSTM_HARNESS"],
        build_directory=str(build_dir),
        is_python_module=False,
    )
    ops = torch.ops.fastlstm_harness
    yield ops
    ops.set_plan(16, False)


# name -> layer configuration. H chosen so that the widest plan uses every vector width somewhere:
# H=8 -> 8 halves / 4 floats / 2 doubles per thread, H=12 -> 4/4/2, H=6 -> 2, H=1 and odd H -> 1.
CONFIGS = {
    "plain": dict(T=5, B=3, I=4, H=8),
    "odd": dict(T=4, B=2, I=3, H=6),
    "ones": dict(T=1, B=1, I=1, H=1),
    "proj": dict(T=6, B=4, I=5, H=16, P=3),
    "lengths": dict(T=7, B=4, I=3, H=8, lengths=[7, 3, 1, 5]),
    "reverse": dict(T=5, B=3, I=4, H=12, reverse=True),
    "everything": dict(T=6, B=3, I=2, H=4, P=2, lengths=[6, 2, 4], reverse=True, bias=False),
    "wide": dict(T=3, B=5, I=7, H=40),
    # h0/c0 one element past an aligned address: the first step must fall back to the scalar kernels.
    "misaligned_state": dict(T=3, B=2, I=3, H=8, misaligned=True),
}


def make_case(cfg: dict, dtype: torch.dtype, seed: int = 0):
    """Inputs (in dtype) for one layer: nn.LSTM's initialisation scale, plus upstream gradients.

    Returns (args dict for the ops, upstream grads (go [T,B,P], gh [B,P], gc [B,H])).
    """
    g = torch.Generator().manual_seed(seed)
    T, B, I, H = cfg["T"], cfg["B"], cfg["I"], cfg["H"]
    P = cfg.get("P", H)
    k = H ** -0.5

    def u(*shape):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * k).to(dtype)

    def n(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    bias = cfg.get("bias", True)
    args = dict(
        input=n(T, B, I), h0=n(B, P) * 0.5, c0=n(B, H) * 0.5, w_ih=u(4 * H, I), w_hh=u(4 * H, P),
        b_ih=u(4 * H) if bias else None, b_hh=u(4 * H) if bias else None,
        w_hr=u(P, H) if "P" in cfg else None,
        lengths=torch.tensor(cfg["lengths"], dtype=torch.long) if "lengths" in cfg else None,
        reverse=cfg.get("reverse", False),
    )
    if cfg.get("misaligned"):
        for k in ("h0", "c0"):
            t = args[k]
            args[k] = torch.empty(t.numel() + 1, dtype=dtype)[1:].view(t.shape).copy_(t)
    grads = (n(T, B, P), n(B, P), n(B, H))
    return args, grads


TENSOR_ARGS = ("input", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
GRAD_NAMES = ("grad_input", "grad_h0", "grad_c0", "grad_w_ih", "grad_w_hh", "grad_bias", "grad_w_hr")


def harness_layer(ops, args, grads):
    """Forward and backward through the harness: ((output, h_n, c_n), {grad name: tensor})."""
    out, h_n, c_n, gates, cells = ops.lstm_forward(*args.values())
    back = ops.lstm_backward(*grads, args["input"], args["h0"], args["c0"], args["w_ih"], args["w_hh"],
                             args["w_hr"], args["lengths"], out, gates, cells, args["reverse"])
    named = dict(zip(GRAD_NAMES, back))
    if args["w_hr"] is None:
        assert named.pop("grad_w_hr").numel() == 0
    return (out, h_n, c_n), named


def _loss(outs, grads):
    return sum((o.double() * g.double()).sum() for o, g in zip(outs, grads))


def reference_layer(args, grads):
    """lstm_layer_ref in float64 on the same (rounded) inputs: (outputs, {grad name: tensor}).

    Without biases the oracle gets zero biases, so that the op's grad_bias (the sum of the pre-activation
    gradients, returned either way) is still checked.
    """
    H = args["w_ih"].shape[0] // 4
    leaves = {k: (args[k] if args[k] is not None else torch.zeros(4 * H, dtype=args["input"].dtype))
              .detach().double().requires_grad_() for k in TENSOR_ARGS if k != "w_hr"}
    if args["w_hr"] is not None:
        leaves["w_hr"] = args["w_hr"].detach().double().requires_grad_()
    outs = lstm_layer_ref(leaves["input"], leaves["h0"], leaves["c0"], leaves["w_ih"], leaves["w_hh"],
                          leaves["b_ih"], leaves["b_hh"], leaves.get("w_hr"), lengths=args["lengths"],
                          reverse=args["reverse"])
    order = ["input", "h0", "c0", "w_ih", "w_hh", "b_ih"] + (["w_hr"] if "w_hr" in leaves else [])
    gs = torch.autograd.grad(_loss(outs, grads), [leaves[k] for k in order])
    return outs, {"grad_" + ("bias" if k == "b_ih" else k): g for k, g in zip(order, gs)}


def nn_lstm_layer(args, grads):
    """torch.nn.LSTM's own result in the inputs' dtype, for the low-precision rule: (outputs, grads).

    One layer; `reverse` runs as the reverse half of a bidirectional nn.LSTM, `lengths` as a packed
    sequence; without biases nn.LSTM has none, so grad_bias is left out.
    """
    x = args["input"]
    T, B, I = x.shape
    H = args["w_ih"].shape[0] // 4
    P = args["h0"].shape[1]
    reverse, lengths = args["reverse"], args["lengths"]
    bias = args["b_ih"] is not None
    m = nn.LSTM(I, H, bias=bias, bidirectional=reverse, proj_size=P if args["w_hr"] is not None else 0,
                dtype=x.dtype)
    leaves = {k: args[k].detach().clone().requires_grad_() for k in TENSOR_ARGS if args[k] is not None}
    params = {}
    names = dict(w_ih="weight_ih", w_hh="weight_hh", b_ih="bias_ih", b_hh="bias_hh", w_hr="weight_hr")
    for k, name in names.items():
        if k in leaves:
            params[name + "_l0"] = leaves[k].detach()  # the forward direction (only used when reverse)
            if reverse:
                params[name + "_l0_reverse"] = leaves[k]
            else:
                params[name + "_l0"] = leaves[k]
    h0, c0 = leaves["h0"], leaves["c0"]
    hx = (torch.stack([h0.detach(), h0]), torch.stack([c0.detach(), c0])) if reverse else (h0[None], c0[None])
    inp = pack_padded_sequence(leaves["input"], lengths, enforce_sorted=False) if lengths is not None \
        else leaves["input"]
    out, (h_n, c_n) = functional_call(m, params, (inp, hx))
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=T)
    d = 1 if reverse else 0
    outs = (out[..., d * P:(d + 1) * P], h_n[d], c_n[d])
    order = ["input", "h0", "c0", "w_ih", "w_hh"] + (["b_ih"] if bias else []) + \
        (["w_hr"] if "w_hr" in leaves else [])
    gs = torch.autograd.grad(_loss(outs, grads), [leaves[k] for k in order])
    named = dict(zip(["grad_input", "grad_h0", "grad_c0", "grad_w_ih", "grad_w_hh"], gs[:5]))
    if bias:
        named["grad_bias"] = gs[5]
    if "w_hr" in leaves:
        named["grad_w_hr"] = gs[-1]
    return outs, named


def max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref.double()).abs().max().item() if a.numel() else 0.0


def compare(dtype, ours, ref, base=None):
    """Asserts ours ≈ ref (float64) for every output and gradient; returns {name: max abs error}.

    float32/float64: conftest.TOL. float16/bfloat16: the low-precision rule, error at most LOWP_FACTOR times
    nn.LSTM's own (`base`) in that dtype, plus LOWP_SLACK.
    """
    (outs, grads), (routs, rgrads) = ours, ref
    ours_all = dict(zip(("output", "h_n", "c_n"), outs), **grads)
    ref_all = dict(zip(("output", "h_n", "c_n"), routs), **rgrads)
    assert ours_all.keys() == ref_all.keys()
    errs = {}
    for name, t in ours_all.items():
        r = ref_all[name]
        assert t.dtype == dtype and t.shape == r.shape, name
        assert torch.isfinite(t).all(), f"{name}: non-finite values (an element the grid missed?)"
        errs[name] = max_err(t, r)
        if dtype in TOL:
            torch.testing.assert_close(t, r.to(dtype), **TOL[dtype], msg=lambda m: f"{name}: {m}")
    if base is not None:
        (bouts, bgrads) = base
        base_all = dict(zip(("output", "h_n", "c_n"), bouts), **bgrads)
        for name, b in base_all.items():
            limit = LOWP_FACTOR * max_err(b, ref_all[name]) + LOWP_SLACK[dtype]
            assert errs[name] <= limit, (f"{name}: error {errs[name]:.3g} vs float64 exceeds {LOWP_FACTOR}x "
                                         f"nn.LSTM's own {dtype} error + slack ({limit:.3g})")
    return errs


@pytest.mark.parametrize("vec", ["widest", "scalar"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_layer_forward_backward(harness, config, dtype, vec):
    harness.set_plan(16 if vec == "widest" else 1, False)
    args, grads = make_case(CONFIGS[config], dtype)
    ours = harness_layer(harness, args, grads)
    ref = reference_layer(args, grads)
    base = nn_lstm_layer(args, grads) if dtype not in TOL else None
    compare(dtype, ours, ref, base)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_inference_matches_training_forward(harness, dtype):
    # The inference op keeps two cell buffers instead of T; the arithmetic, and so every bit, is the same.
    harness.set_plan(16, False)
    args, _ = make_case(CONFIGS["everything"], dtype)
    train = harness.lstm_forward(*args.values())[:3]
    infer = harness.lstm_inference(*args.values())
    for a, b in zip(train, infer):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_vector_widths_agree_bitwise(harness, dtype):
    # Each unit's arithmetic is the same whatever the vector width: only the grouping of threads changes.
    args, grads = make_case(CONFIGS["wide"], dtype)
    results = []
    for v in (16, 4, 2, 1):
        harness.set_plan(v, False)
        outs, named = harness_layer(harness, args, grads)
        results.append(list(outs) + list(named.values()))
    harness.set_plan(16, False)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_launcher_plan_at_a_gpu_size(harness, dtype):
    # The launchers' own plan (vector width narrowed to reach kMinBlocks blocks) at B*H = 32768 units per
    # step, where it picks 2-wide vectors: checked like the small cases, on two steps.
    harness.set_plan(16, True)
    args, grads = make_case(dict(T=2, B=64, I=8, H=512), dtype)
    ours = harness_layer(harness, args, grads)
    ref = reference_layer(args, grads)
    base = nn_lstm_layer(args, grads) if dtype not in TOL else None
    compare(dtype, ours, ref, base)
    harness.set_plan(16, False)


def test_schemas_match_fastlstm(harness):
    # The harness re-declares fastlstm's op schemas under its own namespace; they must not drift apart.
    for op in ("lstm_forward", "lstm_inference", "lstm_backward"):
        ours = str(getattr(torch.ops.fastlstm_harness, op).default._schema)
        theirs = str(getattr(torch.ops.fastlstm, op).default._schema)
        assert ours.replace("fastlstm_harness::", "fastlstm::") == theirs
