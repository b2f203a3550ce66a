"""How a case is measured: the timed closure, interleaved medians with torch.utils.benchmark, and the
peak-memory probe (on the CPU in a fresh subprocess).

Timing: warm-up calls first, then `rounds` rounds, each running every contender's
Timer.blocked_autorange(min_run_time) once in turn, so that a slow patch of a shared machine hits all
contenders alike; the median is over all measurements of all rounds.

Peak memory of one call (above what existed before it: parameters, inputs):
  cuda: torch.cuda.max_memory_allocated (the caching allocator's peak);
  cpu:  growth of the process's peak resident set size (VmHWM, reset through /proc/self/clear_refs) in a
        fresh worker subprocess per case (CpuPeakProbe) with MALLOC_MMAP_THRESHOLD_=65536, so every buffer of
        64 KiB or more is its own mapping, returned to the OS when freed, and the heap's free pages returned
        too (malloc_trim) before each measured call, so that smaller buffers reused from the warm-up call
        count as well. This counts everything the call touches, including oneDNN's and MKL's private
        workspaces that no PyTorch allocator statistic sees.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from .cases import Case, packed_lengths
from .contenders import CONTENDERS, MODELS

# (contender, row key, table heading) of each ratio: the contender's median / fastlstm's median.
RATIOS = (("torch", "ratio", "torch/fast"), ("cell_loop", "ratio_cell_loop", "cell/fast"))


def make_step(case: Case, module: nn.Module, device: str, seed: int = 0) -> Callable[[], None]:
    """A closure running one timed call of `module` on the case's inputs (built once, here, from `seed`).

    inference: module(x [T, B, I], None) under torch.inference_mode(); training: the same with autograd, then
    backward of a fixed random output gradient into x and every parameter (gradients cleared first);
    packed_*: the same with x a PackedSequence (enforce_sorted=False) of packed_lengths(T, B, seed), packed
    once outside the timed call, so both contenders are timed on the recurrence, not on packing;
    streaming: module(x_t [1, 1, I], state) under inference_mode, the state carried from call to call."""
    dtype = case.torch_dtype
    g = torch.Generator().manual_seed(seed)
    if case.mode == "streaming":
        xs = torch.randn(case.T, 1, 1, case.I, generator=g).to(device, dtype)
        state = [None, 0]

        def step():
            with torch.inference_mode():
                t = state[1]
                _, state[0] = module(xs[t], state[0])
                state[1] = (t + 1) % case.T
        return step

    x = leaf = torch.randn(case.T, case.B, case.I, generator=g).to(device, dtype)
    if case.packed:
        x = pack_padded_sequence(x, packed_lengths(case.T, case.B, seed), enforce_sorted=False)
        leaf = x.data  # [sum of lengths, I]: where the input gradient lands
    if not case.backward:
        def step():
            with torch.inference_mode():
                module(x, None)
        return step

    leaf.requires_grad_(True)
    D = 2 if case.bidirectional else 1
    # The output's shape: [T, B, D*H], or packed [sum of lengths, D*H] like the input's data.
    out_shape = (leaf.shape[0], D * case.H) if case.packed else (case.T, case.B, D * case.H)
    gout = torch.randn(out_shape, generator=g).to(device, dtype)
    params = list(module.parameters())

    def step():
        for p in params:
            p.grad = None
        leaf.grad = None
        out, _ = module(x, None)
        (out.data if case.packed else out).backward(gout)
    return step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _steps(case: Case, device: str, contenders) -> dict[str, Callable[[], None]]:
    # The model's modules (seeded, so every process builds the same weights) and a step for each contender
    # asked for that the model has.
    torch.manual_seed(0)
    modules = MODELS[case.model](case, device)
    return {name: make_step(case, modules[name], device) for name in contenders if name in modules}


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def time_case(case: Case, device: str, contenders=CONTENDERS, rounds: int = 3, min_run_time: float = 0.2,
              warmup: int = 2) -> dict[str, dict]:
    """Seconds per call of each contender, timed interleaved (see the module docstring).
    Returns {contender: {"median": s, "iqr": s, "n": measurements}}."""
    from torch.utils import benchmark

    steps = _steps(case, device, contenders)
    for step in steps.values():
        for _ in range(warmup):
            step()
        _sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
            times[name] += timer.blocked_autorange(min_run_time=min_run_time).times
    out = {}
    for name, ts in times.items():
        ts = sorted(ts)
        q = lambda p: ts[min(len(ts) - 1, int(p * len(ts)))]  # noqa: E731
        out[name] = {"median": median(ts), "iqr": q(0.75) - q(0.25), "n": len(ts)}
    return out


# ----------------------------------------------------------------------------------------------- memory

def _read_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _rss_growth(step: Callable[[], None]) -> int:
    _trim_heap()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _read_status("VmRSS")
    step()
    return max(0, _read_status("VmHWM") - base)


def _trim_heap() -> None:
    # Free chunks of the heap stay resident: a contender that reuses them (thousands of small per-step
    # tensors, freed by the warm-up call and allocated again by the measured one) would grow the resident
    # set by nothing. glibc's malloc_trim returns every free page of the heap to the OS, so reusing it
    # faults the page back in and counts, as a fresh allocation would.
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the small-chunk noise stays
        pass


def _cuda_growth(step: Callable[[], None]) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _peaks(case: Case, device: str, contenders, growth: Callable[[Callable[[], None]], int]) -> dict[str, int]:
    res = {}
    for name, step in _steps(case, device, contenders).items():
        step()  # warm-up: one-time allocations (oneDNN primitives, caches) are not the call's peak
        gc.collect()
        res[name] = growth(step)
    return res


def cpu_peak_worker() -> None:
    """The CpuPeakProbe process: for each JSON request line on stdin ({"case", "contenders", "threads"}),
    one JSON line {contender: peak bytes} on stdout."""
    for line in sys.stdin:
        req = json.loads(line)
        torch.set_num_threads(req["threads"])
        print(json.dumps(_peaks(Case(**req["case"]), "cpu", req["contenders"], _rss_growth)), flush=True)


class CpuPeakProbe:
    """Measures the CPU peak memory of cases, each in a worker subprocess of its own; use as a context
    manager, call as probe(case, contenders) -> {contender: bytes}.

    A fresh process per case: one worker for a whole run measured a case differently depending on what ran
    before it (FastLSTM bfloat16 training at T=100 B=8 H=256 L2 bi: 15.7 MB alone, 24.9 MB as the 120th case
    of a `--models all` run), which no allocator setting explained. Every call is measured after a warm-up
    call of the same module, against the resident set just before it; MALLOC_MMAP_THRESHOLD_ returns every
    buffer of 64 KiB or more to the OS when freed, and _trim_heap the heap's free pages. Starting Python and
    torch costs ~1-2 s a case."""

    def __init__(self, threads: Optional[int] = None):
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
                   # Its OpenMP threads must sleep, not spin, while the parent times the next case.
                   OMP_WAIT_POLICY="PASSIVE")
        root = str(Path(__file__).resolve().parents[2])  # the folder holding the fastlstm package
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self._env = env
        self.threads = threads or torch.get_num_threads()
        self._stderr = tempfile.TemporaryFile(mode="w+")  # a pipe could fill up and block the worker
        self._p = None

    def _start(self) -> None:
        self._stderr.seek(0)
        self._stderr.truncate()
        self._p = subprocess.Popen(
            [sys.executable, "-c", "from fastlstm.bench.measure import cpu_peak_worker; cpu_peak_worker()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=self._env)

    def _stop(self) -> None:
        if self._p is not None and self._p.poll() is None:
            self._p.stdin.close()
            self._p.wait()
        self._p = None

    def __call__(self, case: Case, contenders=CONTENDERS) -> dict[str, int]:
        self._stop()
        self._start()
        req = {"case": dataclasses.asdict(case), "contenders": list(contenders), "threads": self.threads}
        self._p.stdin.write(json.dumps(req) + "\n")
        self._p.stdin.flush()
        line = self._p.stdout.readline()
        if not line:
            self._stderr.seek(0)
            raise RuntimeError(f"the memory probe process died (exit {self._p.wait()}) on {case}:\n"
                               + self._stderr.read()[-4000:])
        return json.loads(line)

    def close(self) -> None:
        self._stop()
        self._stderr.close()

    def __enter__(self) -> "CpuPeakProbe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cpu_probe_available() -> bool:
    return os.path.exists("/proc/self/clear_refs")


def peak_memory(case: Case, device: str, contenders=CONTENDERS,
                probe: Optional[CpuPeakProbe] = None) -> dict[str, Optional[int]]:
    """Peak bytes one call allocates above its starting point, per contender (see the module docstring);
    None per contender where the CPU probe is unavailable (no /proc/self/clear_refs). On the CPU a given
    probe is used, else one is started for this case alone."""
    if device == "cuda":
        return _peaks(case, device, contenders, _cuda_growth)
    if not cpu_probe_available():
        return {name: None for name in contenders}
    if probe is not None:
        return probe(case, contenders)
    with CpuPeakProbe() as probe:
        return probe(case, contenders)


def run_case(case: Case, device: str, contenders=CONTENDERS, memory: bool = True,
             probe: Optional[CpuPeakProbe] = None, **timing) -> dict:
    """Time (and measure the memory of) one case; returns one flat result row: the case's fields, then per
    contender `{c}_ms` and `{c}_iqr_ms` (milliseconds per call), the ratios of RATIOS, and `{c}_peak_mb`
    (MiB; not for streaming; on the CPU through `probe` if given)."""
    t = time_case(case, device, contenders, **timing)
    row = dataclasses.asdict(case)
    for name in t:
        row[f"{name}_ms"] = t[name]["median"] * 1e3
        row[f"{name}_iqr_ms"] = t[name]["iqr"] * 1e3
    for name, key, _ in RATIOS:
        if name in t and "fastlstm" in t:
            row[key] = t[name]["median"] / t["fastlstm"]["median"]
    if memory and case.mode != "streaming":  # a one-step call allocates next to nothing
        for name, b in peak_memory(case, device, contenders, probe).items():
            row[f"{name}_peak_mb"] = None if b is None else b / 2**20
    return row
