"""summary.md of a scripts/gpu_check.sh run, from whatever files it has written so far (it runs after every
stage, so a run cut short still has a current summary). Imports nothing heavy: no torch.

Usage: python3 scripts/gpu_check_summary.py OUTDIR LOGDIR > OUTDIR/summary.md
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

RUNS = {"default": "CUDA tests, default path",
        "persistent": "CUDA tests, persistent path (FASTLSTM_CUDA_PERSISTENT=1)",
        "compile": "torch.compile on CUDA"}
MAX_FAILURES = 40


def machine(logs: Path) -> list[str]:
    env = logs / "env.txt"
    if not env.exists():
        return ["(no env.txt yet)"]
    keep = ("python", "torch", "device", "Cuda compilation", "nproc", "git")
    return [f"- {line.strip(' |')}" for line in env.read_text(errors="replace").splitlines()
            if line.startswith(keep) or "Driver Version" in line]


def junit(path: Path) -> list[str]:
    """Counts per test file, then the failures with the first line of each message."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        return [f"{path.name}: unreadable ({e})"]
    per = defaultdict(lambda: defaultdict(int))
    failures, skips = [], defaultdict(int)
    for case in root.iter("testcase"):
        parts = (case.get("classname") or "?").split(".")
        f = next((p for p in parts if p.startswith("test_")), parts[-1])
        kind = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                kind = "failed"
                msg = (child.get("message") or child.text or "").strip().splitlines()
                failures.append(f"`{case.get('classname')}::{case.get('name')}`: {msg[0][:200] if msg else ''}")
            elif child.tag == "skipped" and kind == "passed":
                kind = "skipped"
                skips[(child.get("message") or "").strip()[:200]] += 1
        per[f][kind] += 1
    lines = ["| file | passed | failed | skipped |", "|---|---:|---:|---:|"]
    tot = defaultdict(int)
    for f in sorted(per):
        lines.append(f"| {f} | {per[f]['passed']} | {per[f]['failed']} | {per[f]['skipped']} |")
        for k, v in per[f].items():
            tot[k] += v
    lines.append(f"| **total** | {tot['passed']} | {tot['failed']} | {tot['skipped']} |")
    if skips:
        lines += ["", "Skipped, by reason:"]
        lines += [f"- {n} x {why}" for why, n in sorted(skips.items(), key=lambda x: -x[1])]
    if failures:
        lines += ["", f"Failed ({len(failures)}):"] + [f"- {x}" for x in failures[:MAX_FAILURES]]
        if len(failures) > MAX_FAILURES:
            lines.append(f"- ... {len(failures) - MAX_FAILURES} more (logs.tar.gz)")
    return lines


def failed_stage_tails(out: Path, logs: Path, n: int = 15) -> list[str]:
    """The last lines of the log of every stage that failed or timed out (stages.txt: name, result, ..., log)."""
    lines = []
    stages = out / "stages.txt"
    for row in (stages.read_text().splitlines() if stages.exists() else []):
        f = row.split()
        if len(f) >= 6 and f[1].startswith(("FAIL", "TIMEOUT")) and (logs / f[5]).is_file():
            tail = (logs / f[5]).read_text(errors="replace").splitlines()[-n:]
            lines += [f"### {f[0]}: {f[1]} ({f[5]}, last {len(tail)} lines)", "", "```", *tail, "```", ""]
    return lines


def bench_grid(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    rows = data.get("rows", []) if isinstance(data, dict) else data
    cols = ["mode", "model", "T", "B", "I", "H", "dtype", "torch_ms", "fastlstm_ms", "ratio", "torch_peak_mb",
            "fastlstm_peak_mb"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "-"))
                                       for c in cols) + " |")
    lines.append("\nratio = nn.LSTM (cuDNN) time / FastLSTM time (> 1: FastLSTM faster).")
    return lines


def main(out: Path, logs: Path) -> None:
    print("# fastlstm GPU check (scripts/gpu_check.sh)\n")
    print("## Machine\n")
    print("\n".join(machine(logs)) + "\n")
    print("## Stages (in the order they finished)\n")
    stages = out / "stages.txt"
    print("```\n" + (stages.read_text() if stages.exists() else "(none yet)\n") + "```\n")
    tails = failed_stage_tails(out, logs)
    if tails:
        print("## Stages that failed: the end of their logs\n")
        print("\n".join(tails))
    for run, title in RUNS.items():
        p = logs / f"junit_{run}.xml"
        if p.exists():
            print(f"## {title}\n")
            print("\n".join(junit(p)) + "\n")
    p = out / "parity.md"
    if p.exists():
        print("## Parity (scripts/gpu_parity.py)\n")
        print(p.read_text())
    p = out / "bench_persistent.md"
    if p.exists():  # its headings one level down, under this file's
        print("\n".join("#" + line if line.startswith("#") else line for line in p.read_text().splitlines()))
        print()
    p = out / "bench_gpu.json"
    if p.exists():
        print("## python -m fastlstm.bench --device cuda --grid gpu\n")
        try:
            print("\n".join(bench_grid(p)) + "\n")
        except (ValueError, KeyError, TypeError) as e:
            print(f"bench_gpu.json unreadable: {e}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
