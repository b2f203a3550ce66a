"""Malformed calls of every fastlstm op and module, each run in a forked child (issue 11, item 3).

Used by tests/test_fuzz.py (the CI test) and scripts/fuzz_report.py (the list of distinct failures).

A case is (target, mutation, seed). ``seed`` draws the sizes and options of a valid call (T, B, I, H, P,
bias, projection, lengths, reverse, dtype; for modules layers, directions, batch_first, hx); ``mutation``
then breaks exactly one thing in it. Every case is rebuilt from its three fields alone, in the child, so a
failure printed as ``(target, mutation, seed)`` reproduces with ``run_cases([case])``.

What each kind of mutation expects:
  MALFORMED  a tensor of the wrong rank, a wrong size in one dimension ([0, H], B+-1, H+-1, flattened), a
             wrong dtype, None for a required tensor, one argument on the meta device, lengths huge,
             negative, of the wrong dtype: the op must raise (RuntimeError, TypeError or ValueError).
             Returning, dying by a signal, or any other exception type is a failure.
  VALID      the same values in another layout (transposed storage, strided, offset, expanded), inputs
             that require grad, lengths left out: the op must return, and (where the values are the
             same) the same numbers as the contiguous call.
  EDGE       consistent but unusual calls (T = 0 everywhere, one bias only, all lengths 0, a longer or
             shorter T): returning and raising are both fine; a signal or another exception type is not.
  MODULE     FastLSTM / FastGRU / PeepholeLSTM against nn.LSTM / nn.GRU on the same bad input: the same
             exception type and message, or both return the same numbers.

Children: the parent forks one child per batch of cases (forking a process that has torch loaded costs
~20 ms, so one fork per call would make the exhaustive list take minutes); the child runs its cases in
turn, writing each outcome as it finishes. When a child dies, the case it was running is rerun alone in
a fresh child, so a signal is pinned to one call; if that call alone survives, the earlier calls of the
batch are rerun alone too (a heap corrupted earlier can fail later), and failing that the death is
reported against the batch. After every call the child allocates and frees memory of assorted sizes, so
that a corrupted heap shows up as malloc's abort rather than staying hidden.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastlstm

OK_OP_ERRORS = (RuntimeError, TypeError, ValueError)

# ---------------------------------------------------------------------------------------------------------
# Direct op calls


def op_names() -> list[str]:
    """Every op registered in the fastlstm namespace (the dispatcher's list, not a list kept here)."""
    return sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names()
                  if n.startswith("fastlstm::"))


def _schema_args(op: str) -> list:
    return list(getattr(torch.ops.fastlstm, op).default._schema.arguments)


@dataclass
class Base:
    """A valid call: args by name (schema order), symbolic shapes of its tensor args, sizes, dtype."""
    op: str
    args: dict
    shapes: dict  # name -> tuple of symbols ("T", "B", "I", "H", "P", "3H", "4H")
    dims: dict    # symbol -> size
    dtype: torch.dtype
    forward: bool


def _family(op: str) -> str:
    if op.endswith("_inference_pair"):  # both directions of a layer at once: the inference op's family
        return op[:-len("_inference_pair")]
    return op.rsplit("_", 1)[0]


def _phase(op: str) -> str:
    return "inference" if op.endswith("_inference_pair") else op.rsplit("_", 1)[1]


def build_base(op: str, seed: int) -> Base:
    """The valid call of ``op`` that case seed ``seed`` starts from."""
    rng = random.Random(f"{op}:{seed}")
    g = torch.Generator().manual_seed(seed)
    fam, phase = _family(op), _phase(op)
    dtype = rng.choice([torch.float64, torch.float32])
    T, B, I, H = rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 5), rng.randint(2, 5)
    # seed % 1000 == 0: every optional argument given (biases, projection, lengths, full peepholes);
    # 1: none of them; otherwise drawn. So one or two seeds already break every argument there is.
    variant = seed % 1000
    pick = (lambda p: True) if variant == 0 else (lambda p: False) if variant == 1 else (lambda p: rng.random() < p)
    proj = fam == "lstm" and pick(0.4)
    P = rng.randint(1, H - 1) if proj else H
    Ps = "P" if proj else "H"
    bias = pick(0.8)
    use_lengths = pick(0.5)
    reverse = rng.random() < 0.5
    G = {"lstm": "4H", "peephole": "4H", "gru": "3H", "layernorm_lstm": "4H"}[fam]
    dims = {"T": T, "B": B, "I": I, "H": H, "P": P, "4H": 4 * H, "3H": 3 * H, "4": 4}
    shapes: dict = {}

    if fam == "peephole":
        full = pick(0.4)
        peep = ("H", "H") if full else ("H",)
    if phase in ("forward", "inference"):
        shapes["input"] = ("T", "B", "I")
        shapes["h0"] = ("B", Ps)
        if fam != "gru":
            shapes["c0"] = ("B", "H")
        shapes["w_ih"] = (G, "I")
        shapes["w_hh"] = (G, Ps)
        shapes["b_ih"] = (G,) if bias else None
        shapes["b_hh"] = (G,) if bias else None
        if fam == "lstm":
            shapes["w_hr"] = ("P", "H") if proj else None
        if fam == "peephole":
            shapes["w_ci"] = shapes["w_cf"] = shapes["w_co"] = peep
        if fam == "layernorm_lstm":
            for n in ("ln_ih_w", "ln_ih_b", "ln_hh_w", "ln_hh_b"):
                shapes[n] = ("4H",)
            shapes["ln_c_w"] = shapes["ln_c_b"] = ("H",)
    else:
        shapes["grad_output"] = ("T", "B", Ps)
        shapes["grad_h_n"] = ("B", Ps)
        if fam != "gru":
            shapes["grad_c_n"] = ("B", "H")
        shapes["input"] = ("T", "B", "I")
        shapes["h0"] = ("B", Ps)
        if fam != "gru":
            shapes["c0"] = ("B", "H")
        shapes["w_ih"] = (G, "I")
        shapes["w_hh"] = (G, Ps)
        if fam == "lstm":
            shapes["w_hr"] = ("P", "H") if proj else None
        if fam == "peephole":
            shapes["w_ci"] = shapes["w_cf"] = shapes["w_co"] = peep
        if fam == "layernorm_lstm":
            for n in ("ln_ih_w", "ln_hh_w"):
                shapes[n] = ("4H",)
            shapes["ln_c_w"] = shapes["ln_c_b"] = ("H",)
            shapes["norm_ih"] = shapes["norm_hh"] = ("T", "B", "4H")
            shapes["stats"] = ("T", "B", "4")
        shapes["output"] = ("T", "B", Ps)
        shapes["gates"] = ("T", "B", G)
        shapes["cells" if fam != "gru" else "hn"] = ("T", "B", "H")
    shapes["lengths"] = ("B",) if use_lengths else None
    if op.endswith("_pair"):  # the reverse direction's own states and weights, shaped as the forward one's
        for n in [n for n in shapes if n not in ("input", "lengths")]:
            shapes[n + "_r"] = shapes[n]

    args: dict = {}
    for a in _schema_args(op):
        n = a.name
        if n == "reverse":
            args[n] = reverse
        elif n == "eps":
            args[n] = 1e-5
        elif n == "lengths":
            args[n] = (torch.randint(1, T + 1, (B,), generator=g) if use_lengths else None)
        else:
            s = shapes[n]
            if s is None:
                args[n] = None
            elif n == "gates":  # activations: in (0, 1) like sigmoid/tanh outputs
                args[n] = torch.rand(*[dims[x] for x in s], generator=g, dtype=torch.float64).to(dtype)
            else:
                args[n] = (0.5 * torch.randn(*[dims[x] for x in s], generator=g, dtype=torch.float64)).to(dtype)
    shapes = {k: v for k, v in shapes.items() if v is not None}
    return Base(op, args, shapes, dims, dtype, phase != "backward")


def _other_float(dtype):
    return torch.float32 if dtype == torch.float64 else torch.float64


def _rand_like_shape(t: torch.Tensor, shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    if t.dtype == torch.int64:  # lengths: keep the values plausible
        return torch.randint(1, 3, shape, generator=g)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(t.dtype)


def op_mutations(b: Base) -> list[tuple[str, str]]:
    """(mutation id, expectation) for every way of breaking (or re-laying-out) one thing of the call."""
    muts = [("none: the valid call, twice (results must be identical)", "VALID")]
    present = list(b.shapes)
    for n in present:
        t = b.args[n]
        s = b.shapes[n]
        for k, sym in enumerate(s):
            shared = any(sym in b.shapes[m] for m in present if m != n)
            for new in sorted({0, b.dims[sym] - 1, b.dims[sym] + 1}):
                if new < 0:
                    continue
                mid = f"{n}: dim {k} ({sym}={b.dims[sym]}) -> {new}"
                if shared:
                    muts.append((mid, "MALFORMED"))
                elif sym == "T" and b.forward and n == "input":
                    lens = b.args.get("lengths")
                    ok = new >= 1 and (lens is None or int(lens.max()) <= new)
                    muts.append((mid, "VALID_NOCOMPARE" if ok else "EDGE"))
        muts.append((f"{n}: unsqueeze(0)", "MALFORMED"))
        if t.dim() >= 2:
            muts.append((f"{n}: flattened", "MALFORMED"))
            muts.append((f"{n}: [0] (one dim fewer)", "MALFORMED"))
        if n == "lengths":
            muts += [(f"{n}: dtype int32", "MALFORMED"), (f"{n}: dtype float64", "MALFORMED"),
                     # Values are not checked (that would be a device-to-host sync on CUDA): an element is
                     # active at step t iff t < lengths[b], so these mean "throughout" and "never".
                     (f"{n}: one length huge (2**40)", "VALID_NOCOMPARE"),
                     (f"{n}: one length -1", "VALID_NOCOMPARE"),
                     (f"{n}: all lengths 0", "EDGE"), (f"{n}: None", "VALID_NOCOMPARE")]
        else:
            other = str(_other_float(b.dtype)).replace("torch.", "")
            muts += [(f"{n}: dtype {other}", "MALFORMED"), (f"{n}: dtype bfloat16", "MALFORMED"),
                     (f"{n}: dtype int64", "MALFORMED"), (f"{n}: requires_grad", "VALID")]
            # One bias without the other is a consistent call (the missing one reads as zeros, or is
            # refused); any other None leaves a required tensor, or w_hr's projection, out.
            muts.append((f"{n}: None", "EDGE" if n in ("b_ih", "b_hh", "b_ih_r", "b_hh_r") else "MALFORMED"))
        muts.append((f"{n}: on the meta device", "MALFORMED"))
        if t.numel() > 1:
            muts.append((f"{n}: strided (every other element)", "VALID"))
            muts.append((f"{n}: storage offset 1", "VALID"))
        if not _transposed(t).is_contiguous():  # (sizes of 1 can make it contiguous after all)
            muts.append((f"{n}: transposed storage (same values)", "VALID"))
        if t.dim() >= 1 and t.shape[0] > 1:
            muts.append((f"{n}: expanded along dim 0 (stride 0)", "VALID"))
    if not b.forward:
        # What autograd hands back is saved by forward, but a caller of the op may pass any layout.
        muts.append(("saved tensors: all in transposed storage (same values)", "VALID"))
    muts.append(("T = 0 in every tensor (lengths None)", "EDGE"))
    if "lengths" in b.shapes:
        muts.append(("T = 0 in every tensor, lengths all 0", "EDGE"))
    return muts


def _transposed(t):
    """The same values, stored in the reverse order of dimensions (column-major for a matrix)."""
    perm = list(range(t.dim()))[::-1]
    return t.permute(perm).contiguous().permute(perm)


def _strided(t):
    return torch.stack([t, torch.full_like(t, float("nan") if t.is_floating_point() else -7)], -1)[..., 0]


def apply_op_mutation(b: Base, mid: str, seed: int) -> tuple[dict, Optional[dict]]:
    """(mutated args, reference args with the same values laid out plainly or None)."""
    args = dict(b.args)
    if mid.startswith("none:"):
        return args, dict(b.args)
    if mid.startswith("T = 0"):
        for n, s in b.shapes.items():
            if "T" in s:
                shape = [0 if x == "T" else b.dims[x] for x in s]
                args[n] = torch.zeros(shape, dtype=b.args[n].dtype)
        args["lengths"] = torch.zeros(b.dims["B"], dtype=torch.int64) if "lengths all 0" in mid else None
        return args, None
    if mid.startswith("saved tensors:"):
        for n in ("output", "gates", "cells", "hn"):
            if n in args:
                args[n] = _transposed(args[n])
        return args, dict(b.args)
    n, what = mid.split(": ", 1)
    t = args[n]
    ref = None
    if what.startswith("dim "):
        k = int(what.split()[1])
        new = int(what.rsplit("-> ", 1)[1])
        shape = list(t.shape)
        shape[k] = new
        args[n] = _rand_like_shape(t, shape, seed)
        if n == "lengths":
            args[n] = args[n].clamp(max=b.dims["T"])
    elif what == "unsqueeze(0)":
        args[n] = t.unsqueeze(0)
    elif what == "flattened":
        args[n] = t.reshape(-1)
    elif what.startswith("[0]"):
        args[n] = t[0]
    elif what.startswith("dtype "):
        dt = getattr(torch, what.split()[1])
        args[n] = t.to(dt)
    elif what == "requires_grad":
        args[n] = t.detach().clone().requires_grad_()
        ref = dict(b.args)
    elif what == "None":
        args[n] = None
    elif what == "on the meta device":
        args[n] = t.to("meta")
    elif what.startswith("strided"):
        args[n] = _strided(t)
        ref = dict(b.args)
    elif what == "storage offset 1":
        flat = torch.cat([t.reshape(-1)[:1], t.reshape(-1)])
        args[n] = flat[1:].view(t.shape)
        ref = dict(b.args)
    elif what.startswith("transposed"):
        args[n] = _transposed(t)
        ref = dict(b.args)
    elif what.startswith("expanded"):
        args[n] = t[:1].expand(t.shape)
        ref = dict(b.args)
        ref[n] = args[n].contiguous()
    elif what.startswith("one length huge"):
        args[n] = t.clone()
        args[n][0] = 2 ** 40
    elif what == "one length -1":
        args[n] = t.clone()
        args[n][0] = -1
    elif what == "all lengths 0":
        args[n] = torch.zeros_like(t)
    else:
        raise AssertionError(mid)
    return args, ref


def _describe(v) -> str:
    if v is None:
        return "None"
    if isinstance(v, torch.Tensor):
        extra = "" if v.is_contiguous() else f" strides {tuple(v.stride())}"
        dev = "" if v.device.type == "cpu" else f" {v.device}"
        rg = " requires_grad" if v.requires_grad else ""
        return f"{str(v.dtype).replace('torch.', '')}{list(v.shape)}{dev}{extra}{rg}"
    return repr(v)


def describe_call(op: str, args: dict) -> str:
    return f"torch.ops.fastlstm.{op}(" + ", ".join(f"{k}={_describe(v)}" for k, v in args.items()) + ")"


# ---------------------------------------------------------------------------------------------------------
# Module calls


def _module_base(target: str, seed: int):
    """(fast module, reference nn module, input x, hx or None, config) of a valid module call."""
    rng = random.Random(f"{target}:{seed}")
    dtype = rng.choice([torch.float64, torch.float32])
    T, B, I, H = rng.randint(1, 4), rng.randint(1, 3), rng.randint(1, 4), rng.randint(2, 4)
    L = rng.choice([1, 1, 2])
    bidir = rng.random() < 0.4
    bf = rng.random() < 0.4
    bias = rng.random() < 0.8
    proj = rng.randint(1, H - 1) if target == "FastLSTM" and rng.random() < 0.3 else 0
    kw = dict(num_layers=L, bidirectional=bidir, batch_first=bf, bias=bias, dtype=dtype)
    torch.manual_seed(seed)
    if target == "FastGRU":
        ref = nn.GRU(I, H, **kw)
        fast = fastlstm.FastGRU.from_gru(ref)
    elif target == "FastLSTM":
        ref = nn.LSTM(I, H, proj_size=proj, **kw)
        fast = fastlstm.FastLSTM.from_lstm(ref)
    else:
        ref = nn.LSTM(I, H, **kw)
        fast = fastlstm.PeepholeLSTM.from_lstm(ref)  # zero peepholes: computes what ref computes
    g = torch.Generator().manual_seed(seed)
    D = 2 if bidir else 1
    x = torch.randn(*((B, T, I) if bf else (T, B, I)), generator=g, dtype=torch.float64).to(dtype)
    with_hx = rng.random() < 0.7
    hx = None
    if with_hx:
        h = torch.randn(L * D, B, proj or H, generator=g, dtype=torch.float64).to(dtype)
        if target == "FastGRU":
            hx = h
        else:
            hx = (h, torch.randn(L * D, B, H, generator=g, dtype=torch.float64).to(dtype))
    cfg = dict(T=T, B=B, I=I, H=H, L=L, D=D, batch_first=bf, proj=proj, dtype=dtype, lstm=target != "FastGRU")
    return fast, ref, x, hx, cfg


PAIRS = 40  # two-mutation cases per module configuration


def module_mutations(target: str, seed: int) -> list[str]:
    _, _, x, hx, cfg = _module_base(target, seed)
    m = ["none: the valid call"]
    m += ["input: 1-D", "input: 4-D", "input: unbatched 2-D", "input: feature size I+1", "input: feature size 0",
          "input: T = 0", "input: batch 0", "input: dtype other float", "input: dtype int64", "input: dtype float16",
          "input: dtype bfloat16", "input: on the meta device", "input: transposed storage", "input: requires_grad"]
    if hx is not None:
        # Input and state agree with each other but not with the parameters: which check speaks first.
        m += ["input+hx: dtype other float", "input+hx: on the meta device"]
    states = ["h", "c"] if cfg["lstm"] else ["h"]
    if hx is not None:
        for s in states:
            for k in range(3):
                m += [f"{s}: dim {k} -1", f"{s}: dim {k} +1", f"{s}: dim {k} -> 0"]
            m += [f"{s}: 2-D", f"{s}: 4-D", f"{s}: dtype other float", f"{s}: dtype int64", f"{s}: dtype float16",
                  f"{s}: on the meta device", f"{s}: transposed storage", f"{s}: requires_grad"]
        if cfg["lstm"]:
            m += ["hx: h only (a tensor, not a tuple)", "hx: tuple of 1", "hx: tuple of 3", "hx: (h, None)"]
        else:
            m += ["hx: tuple (h,)", "hx: tuple (h, h)"]
    m += ["packed: valid", "packed: valid unsorted", "packed: batch_sizes float", "packed: batch_sizes int32",
          "packed: batch_sizes increasing", "packed: batch_sizes sum > rows of data",
          "packed: batch_sizes sum < rows of data", "packed: batch_sizes with a 0", "packed: batch_sizes 2-D",
          "packed: data feature size I+1", "packed: data dtype other float", "packed: data 1-D",
          "packed: data 3-D", "packed: sorted_indices too short"]
    # (batch_sizes on another device cannot be built: PackedSequence refuses it itself.)
    if hx is not None:
        # Two things wrong at once, one in the input and one in the state: the error must be the one
        # nn.LSTM / nn.GRU reports first, so the checks must come in their order.
        firsts = [x for x in m if x.startswith(("input:", "packed:")) and "valid" not in x
                  and "transposed" not in x and "requires_grad" not in x]
        seconds = [x for x in m if x.startswith(("h:", "c:", "hx:"))
                   and "transposed" not in x and "requires_grad" not in x]
        rng = random.Random(f"{target}:pairs:{seed}")
        pairs = [f"{a} && {b}" for a in firsts for b in seconds]
        m += rng.sample(pairs, min(PAIRS, len(pairs)))
    return m


def _module_call(target: str, mid: str, seed: int):
    """(fast, ref, input, hx) with the mutation (or mutations, joined by " && ") applied; input may be a
    PackedSequence."""
    fast, ref, x, hx, cfg = _module_base(target, seed)
    for k, one in enumerate(mid.split(" && ")):
        x, hx = _apply_module_mutation(one, x, hx, cfg, torch.Generator().manual_seed(seed + 99 + k))
    return fast, ref, x, hx


def _apply_module_mutation(mid: str, x, hx, cfg: dict, g: torch.Generator):
    part, what = mid.split(": ", 1)
    T, B, I, bf = cfg["T"], cfg["B"], cfg["I"], cfg["batch_first"]
    tdim, bdim = (1, 0) if bf else (0, 1)
    other = torch.float32 if cfg["dtype"] == torch.float64 else torch.float64
    if part == "input":
        if what == "1-D":
            x = x.reshape(-1)[:I]
        elif what == "4-D":
            x = x.unsqueeze(0)
        elif what == "unbatched 2-D":
            x = x.select(bdim, 0)
            if hx is not None:
                hx = hx[:, 0] if isinstance(hx, torch.Tensor) else tuple(s[:, 0] for s in hx)
        elif what.startswith("feature size"):
            shape = list(x.shape)
            shape[2] = I + 1 if what.endswith("I+1") else 0
            x = torch.randn(shape, generator=g, dtype=torch.float64).to(x.dtype)
        elif what == "T = 0":
            x = x.narrow(tdim, 0, 0)
        elif what == "batch 0":
            x = x.narrow(bdim, 0, 0)
            if hx is not None:
                hx = hx[:, :0] if isinstance(hx, torch.Tensor) else tuple(s[:, :0] for s in hx)
        elif what.startswith("dtype"):
            d = what.split()[1]
            x = x.to(other if d == "other" else getattr(torch, d))
        elif what == "on the meta device":
            x = x.to("meta")
        elif what == "transposed storage":
            x = x.transpose(0, 1).contiguous().transpose(0, 1)
        elif what == "requires_grad":
            x = x.detach().requires_grad_()
        else:
            raise AssertionError(mid)
    elif part in ("h", "c"):
        hs = [hx] if isinstance(hx, torch.Tensor) else list(hx)
        i = 0 if part == "h" else 1
        s = hs[i]
        if what.startswith("dim "):
            k = int(what.split()[1])
            shape = list(s.shape)
            shape[k] = 0 if what.endswith("-> 0") else shape[k] + (1 if what.endswith("+1") else -1)
            if shape[k] < 0:
                shape[k] = 0
            s = torch.randn(shape, generator=g, dtype=torch.float64).to(s.dtype)
        elif what == "2-D":
            s = s[0]
        elif what == "4-D":
            s = s.unsqueeze(0)
        elif what.startswith("dtype"):
            d = what.split()[1]
            s = s.to(other if d == "other" else getattr(torch, d))
        elif what == "on the meta device":
            s = s.to("meta")
        elif what == "transposed storage":
            s = s.permute(2, 1, 0).contiguous().permute(2, 1, 0)
        elif what == "requires_grad":
            s = s.detach().requires_grad_()
        else:
            raise AssertionError(mid)
        hs[i] = s
        hx = hs[0] if isinstance(hx, torch.Tensor) else tuple(hs)
    elif part == "input+hx":
        conv = (lambda t: t.to(other)) if what.startswith("dtype") else (lambda t: t.to("meta"))
        x = conv(x)
        hx = conv(hx) if isinstance(hx, torch.Tensor) else tuple(conv(t) for t in hx)
    elif part == "hx":
        h = hx if isinstance(hx, torch.Tensor) else hx[0]
        hx = {"h only (a tensor, not a tuple)": lambda: h, "tuple of 1": lambda: (h,),
              "tuple of 3": lambda: (h, hx[1], hx[1]), "(h, None)": lambda: (h, None),
              "tuple (h,)": lambda: (h,), "tuple (h, h)": lambda: (h, h)}[what]()
    elif part == "packed":
        xt = x.transpose(0, 1) if bf else x  # [T, B, I]
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        if what == "valid unsorted":
            packed = pack_padded_sequence(xt, lengths, enforce_sorted=False)
        else:
            lengths = lengths.sort(descending=True).values
            packed = pack_padded_sequence(xt, lengths)
        data, bs, si, ui = packed.data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
        if what == "batch_sizes float":
            bs = bs.double()
        elif what == "batch_sizes int32":
            bs = bs.int()
        elif what == "batch_sizes increasing":
            bs = bs.flip(0)
        elif what == "batch_sizes sum > rows of data":
            data = data[:-1]
        elif what == "batch_sizes sum < rows of data":
            data = torch.cat([data, data[:1]])
        elif what == "batch_sizes with a 0":
            bs = torch.cat([bs, torch.zeros(1, dtype=bs.dtype)])
        elif what == "batch_sizes 2-D":
            bs = bs.unsqueeze(0)
        elif what == "data feature size I+1":
            data = torch.randn(data.shape[0], I + 1, generator=g, dtype=torch.float64).to(data.dtype)
        elif what == "data dtype other float":
            data = data.to(other)
        elif what == "data 1-D":
            data = data[:, 0]
        elif what == "data 3-D":
            data = data.unsqueeze(1)
        elif what == "sorted_indices too short":
            si = torch.arange(max(B - 1, 0)) if si is None else si[:-1]
            ui = None
        if what.startswith("valid"):
            x = packed
        else:
            x = PackedSequence(data, bs, si, ui)
        # the packed cases are about the packing; hx from a batch_first-free call stays as built
    elif part == "none":
        pass
    else:
        raise AssertionError(mid)
    return x, hx


def _flat_outputs(result) -> list:
    out, h = result
    if isinstance(out, PackedSequence):
        out = out.data
    hs = list(h) if isinstance(h, (tuple, list)) else [h]
    return [out, *hs]


# ---------------------------------------------------------------------------------------------------------
# Running and judging


@dataclass(frozen=True)
class Case:
    target: str      # an op name (lstm_forward, ...) or a module class name (FastLSTM, ...)
    mutation: str
    seed: int
    expect: str      # MALFORMED, VALID, VALID_NOCOMPARE, EDGE, MODULE

    def label(self) -> str:
        return f"({self.target!r}, {self.mutation!r}, seed={self.seed})"


MODULES = ("FastLSTM", "FastGRU", "PeepholeLSTM")
REF = {"FastLSTM": "nn.LSTM", "FastGRU": "nn.GRU", "PeepholeLSTM": "nn.LSTM"}


def all_cases(seed: int = 0, repeats: int = 3, module_repeats: int = 4) -> list[Case]:
    """Every mutation of every op, each applied to ``repeats`` valid calls drawn from ``seed``, and of
    every module (``module_repeats`` configurations each: layers, directions, batch_first, projection,
    hx given or not), in a fixed order."""
    cases = []
    for r in range(repeats):
        s = seed * 1000 + r
        for op in op_names():
            for mid, exp in op_mutations(build_base(op, s)):
                cases.append(Case(op, mid, s, exp))
    for r in range(module_repeats):
        s = seed * 1000 + r
        for target in MODULES:
            for mid in module_mutations(target, s):
                cases.append(Case(target, mid, s, "MODULE"))
    return cases


def _outcome(fn) -> dict:
    try:
        r = fn()
    except Exception as e:
        return {"raised": type(e).__name__, "msg": str(e), "ok_type": isinstance(e, OK_OP_ERRORS)}
    return {"returned": r}


def _max_diff(a, b) -> Optional[float]:
    """Largest |a - b| over two lists of tensors (nan == nan), or inf when shapes/dtypes differ."""
    worst = 0.0
    for x, y in zip(a, b):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            return math.inf
        if x.numel() == 0:
            continue
        x, y = x.detach().double(), y.detach().double()
        d = (x - y).abs()
        d = d[~(x.isnan() & y.isnan())]
        if d.numel():
            worst = max(worst, float(d.nan_to_num(math.inf).max()))
    if len(a) != len(b):
        return math.inf
    return worst


def _tol(dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 2e-4


def _layout_tol(op: str, mutation: str, dtype, eps: float = 1e-5) -> float:
    """How far a call with a re-laid-out argument may be from the contiguous call. A weight matrix expanded
    along dim 0 (every row the same) makes the pre-activations of its GEMM equal across a LayerNorm's features:
    their variance is ~0, so the norm divides GEMM rounding (which may depend on the operands' alignment:
    MKL on an AMD EPYC, say) by sqrt(eps). The tolerance scales so; any other layout gets _tol."""
    degenerate = op.startswith("layernorm_") and re.match(r"w_(ih|hh)(_r)?: expanded along dim 0", mutation)
    return _tol(dtype) / math.sqrt(eps) if degenerate else _tol(dtype)


def run_in_child(case: Case) -> dict:
    """Run one case here (in the child); a JSON-able verdict {"fail": None or text, "call": text}."""
    if case.target in MODULES:
        return _run_module_case(case)
    b = build_base(case.target, case.seed)
    args, ref_args = apply_op_mutation(b, case.mutation, case.seed)
    op = getattr(torch.ops.fastlstm, case.target)
    call = describe_call(case.target, args)
    got = _outcome(lambda: op(**args))
    if "raised" in got:
        kind = f"{got['raised']}: {got['msg'].strip().splitlines()[0] if got['msg'].strip() else ''}"
        if not got["ok_type"]:
            return {"fail": f"raised {kind} (not RuntimeError/TypeError/ValueError)", "call": call,
                    "category": f"wrong exception type {got['raised']}"}
        if case.expect.startswith("VALID"):
            return {"fail": f"raised on a valid call: {kind}", "call": call, "category": "raised on a valid call"}
        return {"fail": None, "call": call, "raised": kind}
    if case.expect == "MALFORMED":
        return {"fail": "returned instead of raising", "call": call, "category": "returned"}
    if case.expect == "VALID" and ref_args is not None:
        want = _outcome(lambda: op(**ref_args))
        if "raised" in want:
            return {"fail": None, "call": call}  # the plain call raising is reported by its own case
        d = _max_diff(list(got["returned"]), list(want["returned"]))
        tol = 0.0 if case.mutation.startswith("none:") else _layout_tol(case.target, case.mutation, b.dtype)
        if d is None or d > tol:
            return {"fail": f"wrong result: differs from the contiguous call by {d:.3g}", "call": call,
                    "category": "wrong result"}
    return {"fail": None, "call": call}


_C10 = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
        torch.int64: "Long", torch.int32: "Int"}


def _expected_messages(case: Case, x, hx, ref, want: dict) -> list[str]:
    """The messages the module may give: nn.LSTM's / nn.GRU's, and where that comes from deep inside a
    backend rather than from a check, the one tests/test_errors.py pins instead:
    - a hidden state whose dtype differs from the input's: nn.LSTM on the CPU reports oneDNN's or
      matmul's complaint ("get_mkldnn_dtype: unsupported data type"); fastlstm may give ATen's own check,
      worded as aten/src/ATen/native/RNN.cpp words it (c10 type names: Float, Double, Half, Long).
    - a PackedSequence whose data is wrong: nn.LSTM's packed path reports matmul shapes; fastlstm may
      give nn.LSTM's error for the same data unpacked (test_packed_errors_read_like_unpacked_ones)."""
    msgs = [want["msg"]]
    muts = case.mutation.split(" && ")
    hs = [hx] if isinstance(hx, torch.Tensor) else [h for h in (hx or ()) if isinstance(h, torch.Tensor)]
    xd = x.data if isinstance(x, PackedSequence) else x
    odd = [h for h in hs if isinstance(xd, torch.Tensor) and h.dtype != xd.dtype]
    if any(m.startswith(("h: dtype", "c: dtype")) for m in muts) and odd:
        msgs.append("Input and hidden tensors are not the same dtype, found input tensor with "
                    f"{_C10.get(xd.dtype, xd.dtype)} and hidden tensor with {_C10.get(odd[0].dtype, odd[0].dtype)}")
    unpacked = _unpacked_error(case, x, hx, ref)
    if unpacked is not None:
        msgs.append(unpacked[1])
    return msgs


def _unpacked_error(case: Case, x, hx, ref):
    """(type, message) nn.LSTM / nn.GRU raise for the same call with the PackedSequence padded, where
    fastlstm may give that instead of the packed kernel's: data that is wrong, or a state on another
    device (the packed kernel's own device check words it per op: "Tensor on device meta is not on the
    expected device cpu!", for GRU the other way round)."""
    muts = case.mutation.split(" && ")
    if not isinstance(x, PackedSequence) or not any(
            m.startswith(("packed: data", "h: on the meta", "c: on the meta")) for m in muts):
        return None
    try:
        padded, _ = torch.nn.utils.rnn.pad_packed_sequence(x, batch_first=ref.batch_first)
    except Exception:
        return None
    unpacked = _outcome(lambda: ref(padded, hx))
    return (unpacked["raised"], unpacked["msg"]) if "raised" in unpacked else None


STATE_GUARD = ("Expected hidden[", "Expected hidden size (", "For batched 3-D input, hx", "sorted_indices has ")
ONEDNN_MESSAGES = ("get_mkldnn_dtype: unsupported data type",
                   "could not create a primitive descriptor for the LSTM forward propagation primitive")


def _onednn_refuses_c0(case: Case, x, hx, want: dict) -> bool:
    return (case.target != "FastGRU" and isinstance(x, torch.Tensor) and isinstance(hx, tuple) and len(hx) == 2
            and all(isinstance(h, torch.Tensor) for h in hx) and hx[0].dtype == x.dtype
            and hx[1].dtype != x.dtype and torch.promote_types(hx[1].dtype, x.dtype) == x.dtype
            and want["msg"].startswith(ONEDNN_MESSAGES))


def _run_module_case(case: Case) -> dict:
    try:
        fast, ref, x, hx = _module_call(case.target, case.mutation, case.seed)
    except Exception as e:
        if " && " in case.mutation:
            # Some pairs cannot be built (a state mutation of a dimension an unbatched input removed).
            return {"fail": None, "call": "", "skipped": f"{type(e).__name__}: {e}"}
        raise
    xs = _describe(x) if isinstance(x, torch.Tensor) else (
        f"PackedSequence(data={_describe(x.data)}, batch_sizes={_describe(x.batch_sizes)}, "
        f"sorted_indices={_describe(x.sorted_indices)})")
    hs = _describe(hx) if not isinstance(hx, tuple) else "(" + ", ".join(_describe(s) for s in hx) + ")"
    call = f"{case.target}(...)({xs}, hx={hs})"
    if case.expect == "MODULE_REF_ONLY":  # (see run_cases: who died?)
        _outcome(lambda: _flat_outputs(ref(x, hx)))
        return {"fail": None, "call": call}
    if case.expect == "MODULE_FAST_ONLY":
        got = _outcome(lambda: _flat_outputs(fast(x, hx)))
        return {"fail": None if "returned" in got or got["ok_type"] else f"raised {got['raised']}", "call": call}
    want = _outcome(lambda: _flat_outputs(ref(x, hx)))
    got = _outcome(lambda: _flat_outputs(fast(x, hx)))
    r = REF[case.target]
    garbage = any(m.startswith("packed:") and not m.startswith("packed: valid") for m in case.mutation.split(" && "))
    if "raised" in want and "returned" in got and _onednn_refuses_c0(case, x, hx, want):
        # A c0 whose dtype promotes to the input's: nn.LSTM's native path casts it, its oneDNN path fails
        # with a message that says nothing; fastlstm casts it everywhere (README). Then it must compute
        # what nn.LSTM computes from the cast c0.
        want = _outcome(lambda: _flat_outputs(ref(x, (hx[0], hx[1].to(x.dtype)))))
    if (garbage and "raised" in got and got["raised"] == "RuntimeError" and got["msg"].startswith(STATE_GUARD)
            and any(m.startswith(("h: dim", "c: dim", "h: 2-D", "c: 2-D", "h: 4-D", "c: 4-D", "packed: sorted_indices"))
                    for m in case.mutation.split(" && "))):
        # A malformed PackedSequence with states not [L*D, B, *]: torch's packed kernel reads past a state's
        # end (SIGSEGV) for some sizes and trips on something else for others, so fastlstm never calls it
        # and gives nn.LSTM's unpacked state errors instead (fastlstm/rnn.py, _check_states_torch_can_read).
        return {"fail": None, "call": call}
    if "raised" in want:
        if "returned" in got:
            return {"fail": f"returned where {r} raises {want['raised']}: {want['msg']}", "call": call,
                    "category": "returned where torch raises"}
        if got["raised"] != want["raised"] and _unpacked_error(case, x, hx, ref) != (got["raised"], got["msg"]):
            return {"fail": f"raised {got['raised']}: {got['msg']!r} where {r} raises {want['raised']}: "
                            f"{want['msg']!r}", "call": call, "category": "exception type differs"}
        expected = _expected_messages(case, x, hx, ref, want)
        if got["msg"] not in expected:
            return {"fail": f"message differs: {got['msg']!r} vs {r}'s {' or '.join(map(repr, expected))}",
                    "call": call, "category": "message differs"}
        return {"fail": None, "call": call}
    if "raised" in got:
        if garbage and got["ok_type"]:
            # nn.LSTM/nn.GRU run an inconsistent PackedSequence without a word (its numbers mean
            # nothing); refusing it cleanly is better, not a difference to fix.
            return {"fail": None, "call": call}
        return {"fail": f"raised {got['raised']}: {got['msg']!r} where {r} returns", "call": call,
                "category": "rejects what torch accepts"}
    dt = x.data.dtype if isinstance(x, PackedSequence) else x.dtype
    d = _max_diff(got["returned"], want["returned"])
    tol = 1e-9 if dt == torch.float64 else 1e-4 if dt == torch.float32 else 5e-2
    if d > tol:
        return {"fail": f"result differs from {r}'s by {d:.3g}" + (
            " (on an inconsistent PackedSequence: raising would be fine, other numbers are not)" if garbage else ""),
            "call": call, "category": "wrong result"}
    return {"fail": None, "call": call}


def _stress_allocator():
    # A heap corrupted by the call tends to be noticed by malloc when neighbouring chunks are next
    # allocated or freed; make that happen now, inside this call's child.
    keep = []
    for n in (1, 3, 17, 64, 200, 1000, 4096, 65536):
        keep.append(bytearray(n))
        keep.append(torch.empty(n, dtype=torch.float64))
    del keep


def _child(cases: list[Case], out_fd: int) -> None:
    torch.set_num_threads(1)  # no OpenMP team in a forked child
    with os.fdopen(out_fd, "w") as f:
        for i, c in enumerate(cases):
            f.write(json.dumps({"i": i, "start": True}) + "\n")
            f.flush()
            try:
                v = run_in_child(c)
            except Exception:
                v = {"fail": "the fuzzer itself failed: " + traceback.format_exc(limit=3), "call": "",
                     "category": "fuzzer error"}
            _stress_allocator()
            f.write(json.dumps({"i": i, **v}, default=str) + "\n")
            f.flush()


def _run_batch(cases: list[Case], timeout: float) -> tuple[dict, Optional[tuple[int, str]]]:
    """Fork one child for ``cases``: ({index: verdict}, (index it died in, how) or None)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)  # warnings and malloc's messages would flood pytest's output
            _child(cases, w)
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    verdicts, started, buf = {}, None, b""
    deadline = time.monotonic() + timeout
    os.set_blocking(r, False)
    status = None
    while True:
        try:
            chunk = os.read(r, 1 << 16)
        except BlockingIOError:
            chunk = None
        if chunk:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                rec = json.loads(line)
                if rec.get("start"):
                    started = rec["i"]
                else:
                    verdicts[rec.pop("i")] = rec
            continue
        if chunk == b"":
            break
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            # drain what is left
            try:
                while True:
                    more = os.read(r, 1 << 16)
                    if not more:
                        break
                    buf += more
            except BlockingIOError:
                pass
            for line in buf.split(b"\n"):
                if line:
                    rec = json.loads(line)
                    if rec.get("start"):
                        started = rec["i"]
                    else:
                        verdicts[rec.pop("i")] = rec
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    os.close(r)
    if status is None:
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if started is not None and started not in verdicts:
        how = (f"died by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}")
        if time.monotonic() > deadline:
            how = f"hung (killed after {timeout:.0f} s)"
        return verdicts, (started, how)
    return verdicts, None


def run_cases(cases: list[Case], batch: int = 64, timeout: float = 60.0) -> list[tuple[Case, dict]]:
    """Run every case in forked children; [(case, verdict)] with verdict["fail"] None when it passed."""
    results: dict[int, dict] = {}
    pos = 0
    while pos < len(cases):
        chunk = list(range(pos, min(pos + batch, len(cases))))
        verdicts, died = _run_batch([cases[i] for i in chunk], timeout)
        for j, v in verdicts.items():
            results[chunk[j]] = v
        if died is None:
            pos = chunk[-1] + 1
            continue
        j, how = died
        idx = chunk[j]
        alone, died_alone = _run_batch([cases[idx]], timeout)
        if died_alone is not None and cases[idx].target in MODULES:
            results[idx] = _who_died(cases[idx], died_alone[1], timeout)
        elif died_alone is not None:
            results[idx] = {"fail": died_alone[1], "call": "", "category": died_alone[1].split(" (")[0]}
        else:
            # Survives alone: an earlier call in the same child may have corrupted the heap.
            culprits = []
            for k in chunk[:j]:
                _, d = _run_batch([cases[k]], timeout)
                if d is not None:
                    results[k] = {"fail": d[1], "call": "", "category": d[1].split(" (")[0]}
                    culprits.append(k)
            if culprits:
                results[idx] = alone.get(0, {"fail": None})
            else:
                results[idx] = {"fail": f"{how} after the calls before it in one child "
                                        f"({[cases[k].label() for k in chunk[:j]]})", "call": "",
                                "category": "died in a batch"}
        pos = idx + 1
    # Calls whose verdict the child had no time to write (it died in a later one) ran again above.
    out = []
    for i, c in enumerate(cases):
        v = results.get(i)
        if v is None:
            v = {"fail": "no verdict (child lost)", "call": "", "category": "lost"}
        if v.get("fail") and not v.get("call"):
            # A child that died wrote no description of its call; rebuild it here without running it.
            v["call"] = describe(c)
        out.append((c, v))
    return out


def _who_died(c: Case, how: str, timeout: float) -> dict:
    """A module case's child died: run the torch module and the fastlstm one alone, each in its own
    child. nn.LSTM / nn.GRU dying on the same input is torch's bug, not fastlstm's; then fastlstm only
    has to survive and raise cleanly (there is no torch error to compare with)."""
    fast_v, fast_died = _run_batch([Case(c.target, c.mutation, c.seed, "MODULE_FAST_ONLY")], timeout)
    if fast_died is not None:
        return {"fail": fast_died[1], "call": "", "category": fast_died[1].split(" (")[0]}
    _, ref_died = _run_batch([Case(c.target, c.mutation, c.seed, "MODULE_REF_ONLY")], timeout)
    if ref_died is None:
        return {"fail": f"{how} (but neither module alone does)", "call": "", "category": "died"}
    v = fast_v.get(0, {"fail": "no verdict", "call": ""})
    return {**v, "note": f"{REF[c.target]} itself {ref_died[1]} on this input"}


def describe(c: Case) -> str:
    try:
        if c.target in MODULES:
            return f"{c.target} {c.mutation}"
        b = build_base(c.target, c.seed)
        args, _ = apply_op_mutation(b, c.mutation, c.seed)
        return describe_call(c.target, args)
    except Exception as e:  # pragma: no cover
        return f"(could not describe: {e})"


def failure_lines(results, seed: int) -> list[str]:
    return [f"seed {seed} {c.label()} [{c.expect}]: {v['fail']}\n    {v['call']}"
            for c, v in results if v.get("fail")]


def distinct(results) -> list[tuple[str, str, str, int, Case, dict]]:
    """Failures grouped by (target, what was broken, what happened): one row per distinct failure, with
    how many cases showed it and one example."""
    groups: dict = {}
    for c, v in results:
        if not v.get("fail"):
            continue
        what = c.mutation.split(": ", 1)
        arg = what[0] if len(what) == 2 else ""
        kind = what[-1]
        # dims and sizes vary with the seed; keep the shape of the mutation, not its numbers
        if kind.startswith("dim "):
            kind = kind.split(" (")[0] + (" -> 0" if kind.endswith("-> 0") else " +-1")
        happened = v.get("category") or v["fail"][:60]
        key = (c.target, f"{arg}: {kind}" if arg else kind, happened)
        if key not in groups:
            groups[key] = [0, c, v]
        groups[key][0] += 1
    return [(k[0], k[1], k[2], n, c, v) for k, (n, c, v) in sorted(groups.items())]


if __name__ == "__main__":  # pragma: no cover
    print(len(all_cases()), "cases", file=sys.stderr)
