"""The command line: python -m fastlstm.bench / fastlstm-bench (see the package docstring for the method)."""
from __future__ import annotations

import argparse
import contextlib
import sys

import torch

from . import __doc__ as _package_doc
from .cases import DTYPES, GRIDS, MODE_ALIASES, MODES, Case, expand_modes, make_cases, resolve_grid
from .contenders import CONTENDERS, MODELS, available_models
from .measure import CpuPeakProbe, cpu_probe_available, run_case
from .report import environment, format_table, header, write_csv, write_json, write_plot


def _csv_list(s: str, conv=str) -> list:
    return [conv(x.strip()) for x in s.split(",") if x.strip()]


def _choices(flag: str, s: str, allowed) -> tuple[str, ...]:
    """A comma list from the command line, every item one of `allowed`, or SystemExit saying which is not."""
    items = tuple(_csv_list(s))
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise SystemExit(f"{flag}: unknown {bad or repr(s)}; choose from {list(allowed)}")
    return items


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v not in ("0", "1", "true", "false", "yes", "no"):
        raise argparse.ArgumentTypeError(f"not a boolean: {s!r}")
    return v in ("1", "true", "yes")


def parse_args(argv=None) -> argparse.Namespace:
    title, _, rest = _package_doc.partition("\n\n")
    p = argparse.ArgumentParser(prog="fastlstm-bench", description=title, epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--grid", choices=("default",) + tuple(GRIDS), default="default",
                   help="named grid; default: cpu-default on the CPU (issue 4's cpu grid less its largest shape), "
                   "gpu on CUDA; every grid runs float32, bfloat16 and float16")
    p.add_argument("--quick", action="store_true",
                   help="the quick grid with short timings (under a minute on a quiet machine; what CI runs)")
    p.add_argument("--shapes", help='replace the grid\'s shapes: "T,B,I,H;T,B,I,H;..."')
    p.add_argument("--layers", help="with --shapes: comma list of num_layers (default 1)")
    p.add_argument("--bidirectional", help="with --shapes: comma list of booleans (default false)")
    p.add_argument("--dtypes", help=f"comma list of {','.join(DTYPES)} (default: the grid's, "
                   "float32,bfloat16,float16)")
    p.add_argument("--modes", help=f"comma list of {','.join(MODES)}, or packed for both packed modes "
                   "(default: the grid's; every grid but gpu has all five)")
    have = available_models()
    p.add_argument("--models", default="lstm", help=f"comma list of {','.join(have)}, or all (default lstm; gru: "
                   "FastGRU vs nn.GRU; peephole: PeepholeLSTM (diagonal) vs its plain PyTorch loop; layernorm: "
                   "LayerNormLSTM vs the same model with F.layer_norm and a loop over time"
                   + ("" if "layernorm" in have else ", needs fastlstm.LayerNormLSTM, not in this build") + ")")
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
    specs, dtypes, modes = GRIDS[resolve_grid(a.grid, device, a.quick)]
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
        dtypes = _choices("--dtypes", a.dtypes, DTYPES)
    if a.modes:
        modes = expand_modes(_choices("--modes", a.modes, MODES + tuple(MODE_ALIASES)))
    models = _choices("--models", a.models, tuple(MODELS) + ("all",))
    models = tuple(dict.fromkeys(m for name in models for m in (available_models() if name == "all" else (name,))))
    for m in models:
        if not MODELS[m].available():
            # One line and exit status 2 (argparse's for an unusable argument): the build lacks the module.
            print(f"fastlstm-bench: --models {m}: {MODELS[m].requires} is not in this build of fastlstm",
                  file=sys.stderr)
            raise SystemExit(2)
    return make_cases(specs, dtypes, modes, models)


def main(argv=None) -> list[dict]:
    """Run the benchmark the command line asks for; prints the table and returns the result rows."""
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
    contenders = _choices("--contenders", a.contenders, CONTENDERS)
    if "fastlstm" not in contenders:  # every ratio is against it
        raise SystemExit(f"--contenders: fastlstm must be one of them; got {a.contenders}")
    cases = cases_from_args(a, device)
    if not cases:
        raise SystemExit("no cases: streaming skips bidirectional shapes, and the packed modes run only for "
                         "models " + ",".join(m.name for m in MODELS.values() if m.packed))
    timing = {"rounds": a.rounds or (2 if a.quick else 3),
              "min_run_time": a.min_run_time or (0.05 if a.quick else 0.2)}
    env = environment(device)
    print(header(env, len(cases)), flush=True)

    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a convenience
        tqdm = None
    bar = tqdm(cases, desc="fastlstm-bench", file=sys.stderr, dynamic_ncols=True) \
        if tqdm is not None and not a.no_progress else None
    rows = []
    cpu_probe = device == "cpu" and not a.no_memory and cpu_probe_available()
    with CpuPeakProbe() if cpu_probe else contextlib.nullcontext() as probe:
        for case in bar if bar is not None else cases:
            if bar is not None:
                bar.set_postfix_str(f"{case.mode} {case.shape} {case.dtype}")
            rows.append(run_case(case, device, contenders, memory=not a.no_memory, probe=probe, **timing))
    print(format_table(rows, contenders, env), flush=True)
    if a.json:
        write_json(a.json, env, timing, rows)
    if a.csv:
        write_csv(a.csv, rows)
    if a.plot:
        write_plot(a.plot, rows, env)
    return rows
