"""FastLSTM on CUDA, default path and persistent path, against cuDNN's nn.LSTM: correctness first, then time.

For each (T, B, I=H, dtype), single layer, unidirectional:
  1. parity: one forward+backward of each contender against nn.LSTM in float64 (cuDNN, from the same rounded
     weights and inputs), by the low-precision rule of tests/conftest.py: fastlstm's max error per output
     and gradient at most LOWP_FACTOR x cuDNN's own in that dtype, plus LOWP_SLACK (FP32_SLACK for float32).
     A contender that fails, or raises, is not timed; the table says why.
  2. time, in two modes: forward (under torch.inference_mode) and forward+backward (gradients of the input
     and every parameter). Each call is timed alone with torch.cuda.Event pairs, after warm-up, the
     contenders interleaved call by call in rotating order; the median is reported.
Contenders: cudnn (nn.LSTM), fast (FastLSTM, default path), persistent (FastLSTM with the persistent fused
kernel, switched per call through tests/cuda_paths.set_persistent; reported as "persistent path not built"
where this build has none). TF32 is off for both libraries: float32 is compared in true float32.

Writes OUT/bench_persistent.json and OUT/bench_persistent.md after every case, so a run cut short keeps
what it measured; cases left when --budget-s runs out are listed as not run. Prints the table last.

Usage: python3 scripts/gpu_bench_persistent.py --out OUTDIR [--budget-s 100] [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import LOWP_FACTOR, LOWP_SLACK  # noqa: E402
from cuda_paths import NOT_BUILT, built, set_persistent  # noqa: E402

from fastlstm import FastLSTM  # noqa: E402

DEV = "cuda"  # a module constant so the script's logic can be dry-run elsewhere
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
FP32_SLACK = 1e-5  # float32 errors of both libraries are ~1e-6 here; the slack keeps the rule from asking
#                    fastlstm for less than rounding noise
CONTENDERS = ("cudnn", "fast", "persistent")
MODES = ("forward", "fwd+bwd")


def cases(quick: bool) -> list[tuple]:
    """(T, B, H, dtype), the FlashRNN comparison point (T=1024 B=16 I=H=768 bf16) first, then the issue's
    grid: bf16, fp16, float32, each over B in {1, 16, 64} and I=H in {256, 768, 1024}."""
    first = (1024, 16, 768, "bfloat16")
    grid = [(1024, B, H, dt) for dt in DTYPES for B in (1, 16, 64) for H in (256, 768, 1024)]
    if quick:
        grid = [(64, B, H, dt) for dt in DTYPES for B in (1, 16) for H in (256,)]
        first = grid[0]
    return [first] + [c for c in grid if c != first]


def make(T, B, H, dtype, seed=0):
    """nn.LSTM and FastLSTM with the same weights (drawn in float64, rounded to dtype), its float64 copy, and
    x, upstream gradient for the output, rounded to dtype."""
    torch.manual_seed(seed)
    m64 = nn.LSTM(H, H, device=DEV, dtype=torch.float64)
    with torch.no_grad():
        for p in m64.parameters():
            p.copy_(p.to(dtype))
    ref = nn.LSTM(H, H, device=DEV, dtype=dtype)
    ref.load_state_dict(m64.state_dict())
    fast = FastLSTM.from_lstm(ref)
    g = torch.Generator(device=DEV).manual_seed(seed + 1)
    x = torch.randn(T, B, H, generator=g, device=DEV, dtype=torch.float64).to(dtype)
    gy = torch.randn(T, B, H, generator=g, device=DEV, dtype=torch.float64).to(dtype)
    return ref, fast, m64, x, gy


def fwd_bwd(m, x, gy) -> dict:
    """Outputs and every gradient, by name."""
    xl = x.detach().clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    y, (h, c) = m(xl)
    y.backward(gy)
    res = {"output": y.detach(), "h_n": h.detach(), "c_n": c.detach(), "grad_input": xl.grad}
    res.update({"grad_" + n: p.grad for n, p in m.named_parameters()})
    return res


def with_path(name, fn):
    """fn run on the path `name` asks for (the persistent one only for 'persistent')."""
    def call():
        set_persistent(name == "persistent")
        try:
            return fn()
        finally:
            set_persistent(False)
    return call


def parity(results: dict, exact: dict, dtype) -> str | None:
    """None when every output and gradient of results['fast'|'persistent'] meets the rule, else the first
    that does not."""
    slack = LOWP_SLACK.get(dtype, FP32_SLACK)
    base = {k: (results["cudnn"][k].double() - e).abs().max().item() for k, e in exact.items()}
    for name in ("fast", "persistent"):
        if name not in results:
            continue
        for k, e in exact.items():
            err = (results[name][k].double() - e).abs().max().item()
            if not err <= LOWP_FACTOR * base[k] + slack:  # NaN fails too
                return f"{name}: {k} error {err:.3g} > {LOWP_FACTOR} x cuDNN {base[k]:.3g} + {slack:g}"
    return None


def time_interleaved(fns: dict, target_s: float = 0.12, warmup: int = 3, min_reps: int = 5,
                     max_reps: int = 40) -> dict:
    """Median ms per call of each fn, each call timed alone by CUDA events, contenders interleaved."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for fn in fns.values():
        fn()
    torch.cuda.synchronize()
    per_round = time.perf_counter() - t0
    reps = max(min_reps, min(max_reps, math.ceil(target_s * len(fns) / max(per_round, 1e-6))))
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        events = []
        for k in order:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fns[k]()
            e.record()
            events.append((k, s, e))
        torch.cuda.synchronize()
        for k, s, e in events:
            times[k].append(s.elapsed_time(e))
    return {k: statistics.median(v) for k, v in times.items()}


def run_case(T, B, H, dt_name, have_persistent: bool) -> dict:
    dtype = DTYPES[dt_name]
    row = {"T": T, "B": B, "I": H, "H": H, "dtype": dt_name, "notes": []}
    ref, fast, m64, x, gy = make(T, B, H, dtype)
    modules = {"cudnn": ref, "fast": fast, "persistent": fast}
    names = [n for n in CONTENDERS if n != "persistent" or have_persistent]
    if not have_persistent:
        row["notes"].append(f"persistent: {NOT_BUILT}")

    # 1. correctness, before any timing
    exact = fwd_bwd(m64, x.double(), gy.double())
    results, failed = {}, set()
    for n in names:
        try:
            results[n] = with_path(n, lambda m=modules[n]: fwd_bwd(m, x, gy))()
        except Exception as e:  # noqa: BLE001  (recorded in the table, the run goes on)
            failed.add(n)
            row["notes"].append(f"{n} raised {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            torch.cuda.synchronize()  # re-raises if the context is lost: the caller stops then
    if "cudnn" in failed:
        row["parity"] = "no cuDNN reference"
        return row
    bad = parity(results, exact, dtype)
    while bad:  # drop each contender that fails, so the others are still timed
        who = bad.split(":")[0]
        failed.add(who)
        row["notes"].append(f"parity FAILED, {bad}")
        results.pop(who)
        bad = parity(results, exact, dtype)
    row["parity"] = "ok" if not failed else "FAILED: " + ", ".join(n for n in names if n in failed)
    del results, exact

    # 2. time what passed
    timed = [n for n in names if n not in failed]
    for mode in MODES:
        fns = {}
        for n in timed:
            m = modules[n]
            if mode == "forward":
                def f(m=m):
                    with torch.inference_mode():
                        m(x)
            else:
                xl = x.detach().clone().requires_grad_()
                params = list(m.parameters())

                def f(m=m, xl=xl, params=params):
                    for p in params:
                        p.grad = None
                    xl.grad = None
                    y, _ = m(xl)
                    y.backward(gy)
            fns[n] = with_path(n, f)
        for n in list(fns):  # one probe call each: a contender that raises here is noted, not timed
            try:
                fns[n]()
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001
                row["notes"].append(f"{mode} {n} raised {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                del fns[n]
                torch.cuda.synchronize()
        ms = time_interleaved(fns) if fns else {}
        for n, v in ms.items():
            row[f"{mode}_{n}_ms"] = v
        for n in ("fast", "persistent"):
            if n in ms and "cudnn" in ms:
                row[f"{mode}_{n}_speedup"] = ms["cudnn"] / ms[n]
        if "fast" in ms and "persistent" in ms:
            row[f"{mode}_persistent_vs_fast"] = ms["fast"] / ms["persistent"]
    return row


def fmt(v, spec=".3f", suffix=""):
    return "-" if v is None else f"{v:{spec}}{suffix}"


def markdown(rows: list[dict], env: dict) -> str:
    out = ["# FastLSTM vs cuDNN nn.LSTM, default and persistent CUDA paths\n",
           f"{env.get('gpu')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}; "
           f"persistent path: {env.get('persistent')}. Median ms per call (CUDA events, interleaved); "
           "speedup = cuDNN time / fastlstm time (> 1: fastlstm faster). TF32 off.\n"]
    for mode in MODES:
        out.append(f"\n## {mode}\n")
        out.append("| T | B | I=H | dtype | parity | cuDNN ms | fast ms | persistent ms | fast vs cuDNN "
                   "| persistent vs cuDNN | persistent vs fast |")
        out.append("|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            g = lambda k: r.get(f"{mode}_{k}")  # noqa: E731
            out.append(f"| {r['T']} | {r['B']} | {r['H']} | {r['dtype']} | {r.get('parity', '-')} | "
                       f"{fmt(g('cudnn_ms'))} | {fmt(g('fast_ms'))} | {fmt(g('persistent_ms'))} | "
                       f"{fmt(g('fast_speedup'), '.2f', 'x')} | {fmt(g('persistent_speedup'), '.2f', 'x')} | "
                       f"{fmt(g('persistent_vs_fast'), '.2f', 'x')} |")
    notes = [(r, n) for r in rows for n in r.get("notes", [])]
    if notes:
        out.append("\n## Notes\n")
        out += [f"- T={r['T']} B={r['B']} H={r['H']} {r['dtype']}: {n}" for r, n in notes]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for bench_persistent.json / .md")
    ap.add_argument("--budget-s", type=float, default=100.0,
                    help="start no new case after this many seconds (default 100)")
    ap.add_argument("--quick", action="store_true", help="T=64 and a few small shapes: a smoke test")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bench_persistent: no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    have_persistent = built()
    set_persistent(False)
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version(),
           "persistent": "built" if have_persistent else NOT_BUILT, "budget_s": a.budget_s}
    todo = cases(a.quick)
    rows, status, start = [], 0, time.perf_counter()

    def write():
        left = [dict(T=T, B=B, I=H, H=H, dtype=dt, parity="not run (time budget)", notes=[])
                for T, B, H, dt in todo[len(rows):]]
        (out / "bench_persistent.json").write_text(json.dumps({"environment": env, "rows": rows + left},
                                                              indent=1))
        (out / "bench_persistent.md").write_text(markdown(rows + left, env))

    for T, B, H, dt in todo:
        if time.perf_counter() - start > a.budget_s:
            break
        t0 = time.perf_counter()
        try:
            row = run_case(T, B, H, dt, have_persistent)
        except Exception as e:  # noqa: BLE001
            row = {"T": T, "B": B, "I": H, "H": H, "dtype": dt, "parity": "ERROR",
                   "notes": [f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"]}
            traceback.print_exc()
            status = 1
            try:
                torch.cuda.synchronize()
            except Exception:  # noqa: BLE001  (a lost context: nothing further can run)
                rows.append(row)
                row["notes"].append("CUDA context lost: stopped")
                break
        if row.get("parity") not in ("ok",):
            status = 1
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        write()
        print(f"gpu_bench_persistent: T={T} B={B} H={H} {dt}: {row.get('parity')} ({row['seconds']} s)",
              flush=True)
    write()
    print(markdown(rows, env))
    if len(rows) < len(todo):
        print(f"gpu_bench_persistent: time budget ({a.budget_s:g} s) left {len(todo) - len(rows)} cases not run")
    return status


if __name__ == "__main__":
    sys.exit(main())
