"""Benchmark FastLSTM against torch.nn.LSTM (oneDNN on the CPU, cuDNN on the GPU) and a per-step cell loop.

    python -m fastlstm.bench                       # the grid for the device (cpu: issue 4's, cuda: issue 3's)
    python -m fastlstm.bench --quick               # about a minute
    python -m fastlstm.bench --device cuda --grid gpu --json out.json --csv out.csv --plot speedup.png
    python -m fastlstm.bench --shapes "100,32,512,512;50,16,64,64" --modes training --layers 1,2

Modes (shapes are (T, B, I, H): steps, batch, input size, hidden size):
  inference  forward of the whole sequence under torch.inference_mode();
  training   forward + backward of the whole sequence (gradients of the input and every parameter);
  streaming  inference with batch 1 and ONE time step per call, the state carried from call to call (a speech
             or control loop); the time is per call, T is ignored.

Every contender is timed with torch.utils.benchmark (warm-up first, then Timer.blocked_autorange), the
contenders of one case interleaved round by round in the same process, and the median over all rounds is
reported. ratio = nn.LSTM median / FastLSTM median (> 1: FastLSTM is faster), from the same run.

Peak memory of one call (above what existed before it: parameters, inputs):
  cuda: torch.cuda.max_memory_allocated (the caching allocator's peak);
  cpu:  growth of the process's peak resident set size (VmHWM, reset through /proc/self/clear_refs) in a
        fresh subprocess with MALLOC_MMAP_THRESHOLD_=65536, so every buffer of 64 KiB or more is its own
        mapping, returned to the OS when freed. This counts everything the call touches, including oneDNN's
        and MKL's private workspaces that no PyTorch allocator statistic sees.

Contenders are built per model by a factory in MODELS (name -> factory returning {contender: module}); every
module is called as module(x, state) -> (output, state) with state None at the start, so a model with
another state structure (a GRU's single tensor) plugs in by adding one entry.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

# ------------------------------------------------------------------------------------------------ cases

MODES = ("inference", "training", "streaming")
CONTENDERS = ("fastlstm", "torch", "cell_loop")
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
           "float16": torch.float16}


@dataclass(frozen=True)
class Case:
    """One benchmark point. Shapes: T steps, B batch, I input size, H hidden size (streaming: B = 1)."""

    mode: str
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    dtype: str = "float32"
    model: str = "lstm"

    @property
    def shape(self) -> str:
        s = f"T={self.T} B={self.B} I={self.I} H={self.H}" if self.mode != "streaming" else \
            f"B=1 I={self.I} H={self.H}"
        if self.layers > 1:
            s += f" L={self.layers}"
        if self.bidirectional:
            s += " bi"
        return s

    @property
    def id(self) -> str:
        """A short name usable as a pytest id."""
        return (f"{self.model}-{self.mode}-T{self.T}-B{self.B}-I{self.I}-H{self.H}-L{self.layers}"
                f"{'-bi' if self.bidirectional else ''}-{self.dtype}")


# (T, B, I, H, layers, bidirectional)
Spec = tuple[int, int, int, int, int, bool]

# Issue 4's CPU grid: four single-layer shapes and a 2-layer bidirectional one; streaming over the
# single-layer unidirectional sizes.
CPU_SPECS: list[Spec] = [(50, 16, 64, 64, 1, False), (50, 64, 256, 256, 1, False), (100, 32, 512, 512, 1, False),
                         (200, 1, 128, 128, 1, False), (100, 8, 256, 256, 2, True)]
# Issue 3's GPU grid.
GPU_SPECS: list[Spec] = [(100, 64, 512, 512, 1, False), (100, 16, 256, 256, 1, False),
                         (500, 32, 1024, 1024, 1, False), (1024, 16, 768, 768, 1, False)]
QUICK_SPECS: list[Spec] = [(50, 16, 64, 64, 1, False), (100, 32, 256, 256, 1, False)]

# name -> (specs, dtypes, modes)
GRIDS: dict[str, tuple[list[Spec], tuple[str, ...], tuple[str, ...]]] = {
    "cpu": (CPU_SPECS, ("float32",), MODES),
    "gpu": (GPU_SPECS, ("float32", "bfloat16"), ("inference", "training")),
    "quick": (QUICK_SPECS, ("float32",), MODES),
}


def make_cases(specs: list[Spec], dtypes, modes, models=("lstm",)) -> list[Case]:
    """The cross product specs x dtypes x modes x models, grouped by mode. Streaming skips bidirectional
    specs (a reverse direction needs the whole sequence) and keeps one case per (I, H, layers)."""
    cases, seen = [], set()
    for mode in modes:
        for model in models:
            for dtype in dtypes:
                for T, B, I, H, L, bi in specs:
                    if mode == "streaming":
                        if bi or (I, H, L, dtype, model) in seen:
                            continue
                        seen.add((I, H, L, dtype, model))
                        B = 1
                    cases.append(Case(mode, T, B, I, H, L, bi, dtype, model))
    return cases


def grid_cases(name: str, device: str) -> list[Case]:
    """The named grid ("default" picks the device's own: cpu or gpu)."""
    if name == "default":
        name = "gpu" if device == "cuda" else "cpu"
    specs, dtypes, modes = GRIDS[name]
    return make_cases(specs, dtypes, modes)


# ------------------------------------------------------------------------------------------- contenders

class CellLoop(nn.Module):
    """A stacked, optionally bidirectional RNN run as a Python loop over time of nn.*Cell modules, with the
    weights of a given nn.LSTM/nn.GRU: what people write when they need per-step control.

    forward(x [T, B, I], state) -> (output [T, B, D*H], state); state is (h, c) [L*D, B, H] each for an
    LSTM cell, h [L*D, B, H] for a GRU cell, or None for zeros.
    """

    def __init__(self, rnn: nn.Module, cell_cls: type):
        super().__init__()
        self.num_layers, self.D = rnn.num_layers, 2 if rnn.bidirectional else 1
        self.hidden_size = rnn.hidden_size
        self.has_c = cell_cls is nn.LSTMCell
        p0 = rnn.weight_ih_l0
        self.cells = nn.ModuleList()
        for layer in range(self.num_layers):
            for d in range(self.D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih = getattr(rnn, "weight_ih" + sfx)
                cell = cell_cls(w_ih.shape[1], self.hidden_size, bias=rnn.bias, device=p0.device, dtype=p0.dtype)
                with torch.no_grad():
                    cell.weight_ih.copy_(w_ih)
                    cell.weight_hh.copy_(getattr(rnn, "weight_hh" + sfx))
                    if rnn.bias:
                        cell.bias_ih.copy_(getattr(rnn, "bias_ih" + sfx))
                        cell.bias_hh.copy_(getattr(rnn, "bias_hh" + sfx))
                self.cells.append(cell)

    def forward(self, x: Tensor, state=None):
        T, B = x.shape[0], x.shape[1]
        if state is None:
            z = x.new_zeros(self.num_layers * self.D, B, self.hidden_size)
            state = (z, z) if self.has_c else z
        finals = []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.D):
                k = layer * self.D + d
                s = (state[0][k], state[1][k]) if self.has_c else state[k]
                ys = [None] * T
                for t in (range(T - 1, -1, -1) if d else range(T)):
                    s = self.cells[k](x[t], s)
                    ys[t] = s[0] if self.has_c else s
                outs.append(torch.stack(ys))
                finals.append(s)
            x = outs[0] if self.D == 1 else torch.cat(outs, 2)
        if self.has_c:
            return x, (torch.stack([s[0] for s in finals]), torch.stack([s[1] for s in finals]))
        return x, torch.stack(finals)


def make_lstm(case: Case, device: str) -> dict[str, nn.Module]:
    """FastLSTM, nn.LSTM and an nn.LSTMCell loop with identical weights."""
    from .modules import FastLSTM

    ref = nn.LSTM(case.I, case.H, case.layers, bidirectional=case.bidirectional,
                  device=device, dtype=_DTYPES[case.dtype])
    return {"fastlstm": FastLSTM.from_lstm(ref), "torch": ref, "cell_loop": CellLoop(ref, nn.LSTMCell)}


def make_gru(case: Case, device: str) -> dict[str, nn.Module]:
    """FastGRU, nn.GRU and an nn.GRUCell loop with identical weights."""
    from .gru import FastGRU

    ref = nn.GRU(case.I, case.H, case.layers, bidirectional=case.bidirectional,
                 device=device, dtype=_DTYPES[case.dtype])
    return {"fastlstm": FastGRU.from_gru(ref), "torch": ref, "cell_loop": CellLoop(ref, nn.GRUCell)}


class PeepholeOracle(nn.Module):
    """The plain PyTorch loop (fastlstm.reference.peephole_lstm_ref, computed in the input's dtype) over a
    PeepholeLSTM's parameters: torch has no peephole LSTM, so this loop is what a user would otherwise run."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x: Tensor, state=None):
        from .reference import peephole_lstm_ref, peephole_module_params

        return peephole_lstm_ref(x, state, peephole_module_params(self.m), self.m.num_layers,
                                 self.m.bidirectional, compute_dtype=x.dtype)


def make_peephole(case: Case, device: str) -> dict[str, nn.Module]:
    """PeepholeLSTM (diagonal) as "fastlstm" and its oracle loop in the "torch" slot (there is no torch
    peephole LSTM). Compare with FastLSTM through the lstm rows of the same run (--models lstm,peephole)."""
    from .peephole import PeepholeLSTM

    m = PeepholeLSTM(case.I, case.H, case.layers, bidirectional=case.bidirectional, peephole="diagonal",
                     device=device, dtype=_DTYPES[case.dtype])
    oracle = PeepholeLSTM(case.I, case.H, case.layers, bidirectional=case.bidirectional, peephole="diagonal",
                          device=device, dtype=_DTYPES[case.dtype])
    oracle.load_state_dict(m.state_dict())
    return {"fastlstm": m, "torch": PeepholeOracle(oracle)}


# model name -> factory(case, device) -> {contender name: module}. Contender names are CONTENDERS'; a factory
# may leave a contender out (the peephole LSTM has no cell loop).
MODELS: dict[str, Callable[[Case, str], dict[str, nn.Module]]] = {
    "lstm": make_lstm, "gru": make_gru, "peephole": make_peephole}


# ------------------------------------------------------------------------------------------- statements

def make_step(case: Case, module: nn.Module, device: str, seed: int = 0) -> Callable[[], None]:
    """A closure running one timed call of `module` on the case's inputs (built once, here)."""
    dtype = _DTYPES[case.dtype]
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

    x = torch.randn(case.T, case.B, case.I, generator=g).to(device, dtype)
    if case.mode == "inference":
        def step():
            with torch.inference_mode():
                module(x, None)
        return step

    x.requires_grad_(True)
    D = 2 if case.bidirectional else 1
    gout = torch.randn(case.T, case.B, D * case.H, generator=g).to(device, dtype)
    params = list(module.parameters())

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        out, _ = module(x, None)
        out.backward(gout)
    return step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_case(case: Case, device: str, contenders=CONTENDERS, rounds: int = 3, min_run_time: float = 0.2,
              warmup: int = 2) -> dict[str, dict]:
    """Median seconds per call of each contender, timed interleaved: `rounds` rounds, each running every
    contender's Timer.blocked_autorange once in turn; the median is over all measurements of all rounds.
    Returns {contender: {"median": s, "iqr": s, "n": measurements}}."""
    from torch.utils import benchmark

    torch.manual_seed(0)
    modules = MODELS[case.model](case, device)
    contenders = [c for c in contenders if c in modules]
    steps = {name: make_step(case, modules[name], device) for name in contenders}
    for name in contenders:
        for _ in range(warmup):
            steps[name]()
        _sync(device)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name in contenders:
            timer = benchmark.Timer(stmt="step()", globals={"step": steps[name]}, num_threads=torch.get_num_threads())
            m = timer.blocked_autorange(min_run_time=min_run_time)
            times[name] += m.times
    out = {}
    for name, ts in times.items():
        ts = sorted(ts)
        q = lambda p: ts[min(len(ts) - 1, int(p * len(ts)))]  # noqa: E731
        out[name] = {"median": _median(ts), "iqr": q(0.75) - q(0.25), "n": len(ts)}
    return out


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


# ----------------------------------------------------------------------------------------------- memory

def _read_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _cpu_peak_worker() -> None:
    """Run in a fresh process (see peak_memory): read a case from stdin, print {contender: peak bytes}."""
    req = json.loads(sys.stdin.read())
    case = Case(**req["case"])
    torch.set_num_threads(req["threads"])
    torch.manual_seed(0)
    modules = MODELS[case.model](case, "cpu")
    res = {}
    for name in [c for c in req["contenders"] if c in modules]:
        step = make_step(case, modules[name], "cpu")
        step()  # warm-up: one-time allocations (oneDNN primitives, caches) are not the call's peak
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = _read_status("VmRSS")
        step()
        res[name] = max(0, _read_status("VmHWM") - base)
    print(json.dumps(res))


def peak_memory(case: Case, device: str, contenders=CONTENDERS) -> dict[str, Optional[int]]:
    """Peak bytes one call allocates above its starting point, per contender (see the module docstring)."""
    if device == "cuda":
        torch.manual_seed(0)
        modules = MODELS[case.model](case, device)
        res = {}
        for name in [c for c in contenders if c in modules]:
            step = make_step(case, modules[name], device)
            step()
            torch.cuda.synchronize()
            gc.collect()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            res[name] = torch.cuda.max_memory_allocated() - base
        return res
    if not os.path.exists("/proc/self/clear_refs"):
        return {name: None for name in contenders}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    req = {"case": dataclasses.asdict(case), "contenders": list(contenders), "threads": torch.get_num_threads()}
    p = subprocess.run([sys.executable, "-c", "from fastlstm.bench import _cpu_peak_worker; _cpu_peak_worker()"],
                       input=json.dumps(req), capture_output=True, text=True, env=env, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ runner

def run_case(case: Case, device: str, contenders=CONTENDERS, memory: bool = True, **timing) -> dict:
    """Time (and measure the memory of) one case; returns one flat result row."""
    t = time_case(case, device, contenders, **timing)
    row = dataclasses.asdict(case)
    for name in t:
        row[f"{name}_ms"] = t[name]["median"] * 1e3
        row[f"{name}_iqr_ms"] = t[name]["iqr"] * 1e3
    if "torch" in t and "fastlstm" in t:
        row["ratio"] = t["torch"]["median"] / t["fastlstm"]["median"]
    if "cell_loop" in t and "fastlstm" in t:
        row["ratio_cell_loop"] = t["cell_loop"]["median"] / t["fastlstm"]["median"]
    if memory and case.mode != "streaming":
        for name, b in peak_memory(case, device, contenders).items():
            row[f"{name}_peak_mb"] = None if b is None else b / 2**20
    return row


def geomean(xs) -> float:
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def environment(device: str) -> dict:
    """What the numbers depend on: machine, versions, threads."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "device": device, "cpu": cpu,
           "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    try:
        from . import __version__
        env["fastlstm"] = __version__
    except ImportError:
        pass
    return env


def format_table(rows: list[dict], contenders=CONTENDERS) -> str:
    """The stdout table, one line per case, with per-mode geometric means of the ratios."""
    head = ["mode", "model", "shape", "dtype"] + [f"{c} ms" for c in contenders]
    if "torch" in contenders:
        head.append("torch/fast")
    if "cell_loop" in contenders:
        head.append("cell/fast")
    head += [f"{c} MB" for c in contenders if c != "cell_loop"]
    lines = []
    for r in rows:
        case = Case(**{f.name: r[f.name] for f in dataclasses.fields(Case)})
        cells = [r["mode"], r["model"], case.shape, r["dtype"]] + [
            f"{r[f'{c}_ms']:.3f}" if f"{c}_ms" in r else "-" for c in contenders]
        if "torch" in contenders:
            cells.append(f"{r['ratio']:.2f}x" if "ratio" in r else "-")
        if "cell_loop" in contenders:
            cells.append(f"{r['ratio_cell_loop']:.2f}x" if "ratio_cell_loop" in r else "-")
        for c in contenders:
            if c != "cell_loop":
                v = r.get(f"{c}_peak_mb")
                cells.append("-" if v is None else f"{v:.1f}")
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i >= 3 else str(c).ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines]
    if "torch" in contenders:
        out.append("")
        # What "torch" is per model: nn.LSTM / nn.GRU, and for the peephole LSTM its plain PyTorch loop.
        name = {"lstm": "nn.LSTM/FastLSTM", "gru": "nn.GRU/FastGRU", "peephole": "oracle loop/PeepholeLSTM"}
        for model in dict.fromkeys(r["model"] for r in rows):
            for mode in dict.fromkeys(r["mode"] for r in rows if r["model"] == model):
                for dtype in dict.fromkeys(r["dtype"] for r in rows if r["mode"] == mode):
                    sel = [r["ratio"] for r in rows if r["model"] == model and r["mode"] == mode
                           and r["dtype"] == dtype and "ratio" in r]
                    if sel:
                        out.append(f"geomean {name.get(model, model):<24} {mode:<9} {dtype:<8}: "
                                   f"{geomean(sel):.2f}x (min {min(sel):.2f}x, {len(sel)} cases)")
    return "\n".join(out)


def write_csv(path: str, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_plot(path: str, rows: list[dict], env: dict) -> None:
    """A bar chart of nn.LSTM/FastLSTM per case, one panel per mode, log scale, a line at 1x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(len(modes), 1, figsize=(10, 2.2 + 0.45 * len(rows)), squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        sel = [r for r in rows if r["mode"] == mode]
        labels = [f"{r['model']} " + Case(**{f.name: r[f.name] for f in dataclasses.fields(Case)}).shape
                  + f" {r['dtype']}" for r in sel]
        vals = [r["ratio"] for r in sel]
        colors = ["tab:green" if v >= 1 else "tab:red" for v in vals]
        ax.barh(range(len(sel)), vals, color=colors)
        ax.set_yticks(range(len(sel)), labels, fontsize=8)
        ax.axvline(1.0, color="k", lw=1)
        ax.set_xscale("log")
        ax.set_title(f"{mode}: nn.LSTM time / FastLSTM time (geomean {geomean(vals):.2f}x)", fontsize=10)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.2f}x", va="center", fontsize=8)
        ax.invert_yaxis()
    dev = env.get("gpu") or env.get("cpu")
    fig.suptitle(f"fastlstm speedup over torch {env['torch']} on {dev} ({env['threads']} threads)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _csv_list(s: str, conv=str) -> list:
    return [conv(x.strip()) for x in s.split(",") if x.strip()]


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v not in ("0", "1", "true", "false", "yes", "no"):
        raise argparse.ArgumentTypeError(f"not a boolean: {s!r}")
    return v in ("1", "true", "yes")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fastlstm-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--grid", choices=("default",) + tuple(GRIDS), default="default",
                   help="named grid; default: cpu on the CPU, gpu on CUDA")
    p.add_argument("--quick", action="store_true", help="the quick grid with short timings (about a minute)")
    p.add_argument("--shapes", help='replace the grid\'s shapes: "T,B,I,H;T,B,I,H;..."')
    p.add_argument("--layers", help="with --shapes: comma list of num_layers (default 1)")
    p.add_argument("--bidirectional", help="with --shapes: comma list of booleans (default false)")
    p.add_argument("--dtypes", help="comma list, e.g. float32,bfloat16 (default: the grid's)")
    p.add_argument("--modes", help="comma list of inference,training,streaming (default: the grid's)")
    p.add_argument("--models", default="lstm", help=f"comma list of {','.join(MODELS)} (gru: FastGRU vs nn.GRU; "
                   "peephole: PeepholeLSTM (diagonal) vs its plain PyTorch loop in the torch column)")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma list of " + ",".join(CONTENDERS))
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--rounds", type=int, help="interleaved rounds per case (default 3, quick 2)")
    p.add_argument("--min-run-time", type=float, help="seconds per blocked_autorange (default 0.2, quick 0.05)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--json", metavar="PATH", help="write environment and rows as JSON")
    p.add_argument("--csv", metavar="PATH", help="write rows as CSV")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the speedups (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def cases_from_args(a: argparse.Namespace, device: str) -> list[Case]:
    grid = "quick" if a.quick and a.grid == "default" else a.grid
    if grid == "default":
        grid = "gpu" if device == "cuda" else "cpu"
    specs, dtypes, modes = GRIDS[grid]
    if a.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in a.shapes.split(";") if s.strip()]
        if any(len(s) != 4 or min(s) < 1 for s in shapes):
            raise SystemExit(f"--shapes wants positive T,B,I,H groups separated by ';', got {a.shapes!r}")
        layers = _csv_list(a.layers or "1", int)
        bis = _csv_list(a.bidirectional or "false", _bool)
        specs = [(*s, L, bi) for s in shapes for L in layers for bi in bis]
    elif a.layers or a.bidirectional:
        layers = _csv_list(a.layers, int) if a.layers else None
        bis = _csv_list(a.bidirectional, _bool) if a.bidirectional else None
        specs = [(T, B, I, H, L2, bi2) for (T, B, I, H, L, bi) in specs
                 for L2 in (layers or [L]) for bi2 in (bis if bis is not None else [bi])]
        specs = list(dict.fromkeys(specs))
    if a.dtypes:
        dtypes = tuple(_csv_list(a.dtypes))
        bad = [d for d in dtypes if d not in _DTYPES]
        if bad:
            raise SystemExit(f"unknown dtype(s) {bad}; choose from {list(_DTYPES)}")
    if a.modes:
        modes = tuple(_csv_list(a.modes))
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise SystemExit(f"unknown mode(s) {bad}; choose from {list(MODES)}")
    models = tuple(_csv_list(a.models))
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise SystemExit(f"unknown model(s) {bad}; choose from {list(MODELS)}")
    return make_cases(specs, dtypes, modes, models)


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    if a.threads:
        torch.set_num_threads(a.threads)
    if device == "cuda":
        # Compare with cuDNN in true float32, not TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    contenders = tuple(_csv_list(a.contenders))
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad or "fastlstm" not in contenders:
        raise SystemExit(f"--contenders: choose from {list(CONTENDERS)}, fastlstm included; got {a.contenders}")
    cases = cases_from_args(a, device)
    timing = {"rounds": a.rounds or (2 if a.quick else 3),
              "min_run_time": a.min_run_time or (0.05 if a.quick else 0.2)}
    env = environment(device)
    print(f"# fastlstm benchmark on {env.get('gpu') or env['cpu']}, torch {env['torch']}, "
          f"{env['threads']} threads, {len(cases)} cases", flush=True)

    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a convenience
        tqdm = None
    it = cases
    if tqdm is not None and not a.no_progress:
        it = tqdm(cases, desc="fastlstm-bench", file=sys.stderr, dynamic_ncols=True)
    rows = []
    for case in it:
        if tqdm is not None and not a.no_progress:
            it.set_postfix_str(f"{case.mode} {case.shape} {case.dtype}")
        rows.append(run_case(case, device, contenders, memory=not a.no_memory, **timing))
    print(format_table(rows, contenders), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"environment": env, "timing": timing, "rows": rows}, f, indent=1)
    if a.csv:
        write_csv(a.csv, rows)
    if a.plot:
        write_plot(a.plot, rows, env)
    return rows


if __name__ == "__main__":
    main()
