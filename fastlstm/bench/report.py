"""What a run prints and writes: the environment it ran in, the stdout table with its geometric means, and
the --json, --csv and --plot files. Rows are run_case's dicts (times in ms, memory in MiB)."""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from typing import Optional

import torch

from .cases import Case
from .contenders import CONTENDERS, MODELS
from .measure import RATIOS


def geomean(xs) -> float:
    """Geometric mean of the positive numbers among xs (None and non-positive ones skipped); nan if none."""
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    """What the numbers depend on: machine, versions, threads, date."""
    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "device": device, "cpu": _cpu_model(),
           "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    try:
        from .. import __version__
        env["fastlstm"] = __version__
    except ImportError:
        pass
    return env


def _label(model: str) -> str:
    return MODELS[model].label if model in MODELS else model


def machine(env: dict) -> str:
    """One line naming what the numbers hold for: processor (GPU or CPU model), torch, threads."""
    n = env["threads"]
    return f"{env.get('gpu') or env['cpu']}, torch {env['torch']}, {n} thread{'' if n == 1 else 's'}"


def header(env: dict, n_cases: int) -> str:
    """The two comment lines a run starts with."""
    extra = [env["date"], f"{env['device']} (ATen CPU capability {env['cpu_capability']}, "
             f"{env['cpu_count']} CPUs)", f"python {env['python']}"]
    if env["device"] == "cuda":
        extra.append(f"CUDA {env['cuda']}, cuDNN {env['cudnn']}")
    if "fastlstm" in env:
        extra.append(f"fastlstm {env['fastlstm']}")
    return f"# fastlstm benchmark on {machine(env)}, {n_cases} cases\n# " + "; ".join(extra)


def format_table(rows: list[dict], contenders=CONTENDERS, env: Optional[dict] = None) -> str:
    """The stdout table, one line per case, then the geometric means of the ratio torch/fast per dtype,
    model and mode (each dtype's block headed by the machine it ran on when env is given)."""
    ratios = [(key, head) for name, key, head in RATIOS if name in contenders]
    mem = [c for c in contenders if c != "cell_loop"]
    head = ["mode", "model", "shape", "dtype"] + [f"{c} ms" for c in contenders] + [h for _, h in ratios] + \
        [f"{c} MB" for c in mem]
    lines = []
    for r in rows:
        cells = [r["mode"], r["model"], Case.from_row(r).shape, r["dtype"]]
        cells += [f"{r[f'{c}_ms']:.3f}" if f"{c}_ms" in r else "-" for c in contenders]
        cells += [f"{r[key]:.2f}x" if key in r else "-" for key, _ in ratios]
        cells += ["-" if r.get(f"{c}_peak_mb") is None else f"{r[f'{c}_peak_mb']:.1f}" for c in mem]
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i >= 3 else str(c).ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines]
    rated = [r for r in rows if "ratio" in r]
    label_w = max([24] + [len(_label(r["model"])) for r in rated])
    mode_w = max([9] + [len(r["mode"]) for r in rated])
    groups: dict[tuple, list[float]] = {}  # (dtype, model, mode) -> ratios, in the rows' order
    for r in rated:
        groups.setdefault((r["dtype"], r["model"], r["mode"]), []).append(r["ratio"])
    for dtype in dict.fromkeys(k[0] for k in groups):
        out += ["", f"{dtype} on {machine(env)}:"] if env else [""]
        for (dt, model, mode), sel in groups.items():
            if dt == dtype:
                out.append(f"geomean {_label(model):<{label_w}} {mode:<{mode_w}} {dtype:<8}: "
                           f"{geomean(sel):.2f}x (min {min(sel):.2f}x, {len(sel)} cases)")
    return "\n".join(out)


def write_json(path: str, env: dict, timing: dict, rows: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"environment": env, "timing": timing, "rows": rows}, f, indent=1)


def write_csv(path: str, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_plot(path: str, rows: list[dict], env: dict) -> None:
    """A bar chart of baseline time / fastlstm time per case, one panel per mode, log scale, a line at 1x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "ratio" in r]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(len(modes), 1, figsize=(10, 2.2 + 0.45 * len(rows)), squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        sel = [r for r in rows if r["mode"] == mode]
        labels = [f"{r['model']} {Case.from_row(r).shape} {r['dtype']}" for r in sel]
        vals = [r["ratio"] for r in sel]
        ax.barh(range(len(sel)), vals, color=["tab:green" if v >= 1 else "tab:red" for v in vals])
        ax.set_yticks(range(len(sel)), labels, fontsize=8)
        ax.axvline(1.0, color="k", lw=1)
        ax.set_xscale("log")
        ax.set_title(f"{mode}: baseline time / fastlstm time (geomean {geomean(vals):.2f}x)", fontsize=10)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.2f}x", va="center", fontsize=8)
        ax.invert_yaxis()
    dev = env.get("gpu") or env.get("cpu")
    fig.suptitle(f"fastlstm speedup over torch {env['torch']} on {dev} ({env['threads']} threads)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
