"""PeepholeLSTM against FastLSTM and the oracle loop on the CPU, float32 (issue 6's speed target: the diagonal
mode within 1.2x of FastLSTM on the same shape).

Usage: PYTHONPATH=. python scripts/bench_peephole.py [--rounds N] [--oracle] [--shapes 0,1,...] [--threads N]

Every contender of one (shape, training/inference) cell is timed in the same rounds, interleaved (round r
times A, B, C, ... before round r+1), with torch.utils.benchmark; the figure is the median over rounds of
each round's mean time per call. Training = forward + backward of the output's sum, from fresh leaf inputs;
inference = forward under torch.no_grad (the inference ops). The lead will fold this into
`python -m fastlstm.bench`; this script only answers the 1.2x question.
"""
from __future__ import annotations

import argparse
import platform
import statistics

import torch
from torch.utils import benchmark

import fastlstm
from fastlstm.reference import peephole_lstm_ref, peephole_module_params

# (T, B, I, H, num_layers, bidirectional): the LSTM grid of issue 6.
SHAPES = [
    (50, 16, 64, 64, 1, False),
    (50, 64, 256, 256, 1, False),
    (100, 32, 512, 512, 1, False),
    (200, 1, 128, 128, 1, False),
    (100, 8, 256, 256, 2, True),
]


def contenders(I, H, L, bi, with_oracle):
    torch.manual_seed(0)
    fast = fastlstm.FastLSTM(I, H, L, bidirectional=bi)
    diag = fastlstm.PeepholeLSTM(I, H, L, bidirectional=bi, peephole="diagonal")
    full = fastlstm.PeepholeLSTM(I, H, L, bidirectional=bi, peephole="full")
    out = {"FastLSTM": fast, "Peephole diag": diag, "Peephole full": full}
    if with_oracle:
        params = peephole_module_params(diag)
        # The oracle in float32 (not its test-time float64), so that it is a fair "plain loop" baseline.
        out["oracle loop (diag)"] = lambda x: peephole_lstm_ref(x, None, params, L, bi, compute_dtype=torch.float32)
    return out


def run(fn, x, train):
    if train:
        xl = x.detach().requires_grad_()
        out = fn(xl)[0]
        out.sum().backward()
    else:
        with torch.no_grad():
            fn(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per contender per round (roughly)")
    ap.add_argument("--oracle", action="store_true", help="also time the oracle loop (slow)")
    ap.add_argument("--shapes", default=",".join(str(i) for i in range(len(SHAPES))))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
          f", float32; median over {args.rounds} interleaved rounds, ms per call")
    print("| T,B,I,H | layers,dirs | mode | FastLSTM | Peephole diag | diag / Fast | Peephole full | full / Fast"
          + (" | oracle loop | oracle / diag" if args.oracle else "") + " |")
    print("|---|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.oracle else ""))
    for si in (int(s) for s in args.shapes.split(",")):
        T, B, I, H, L, bi = SHAPES[si]
        x = torch.randn(T, B, I)
        cs = contenders(I, H, L, bi, args.oracle)
        for train in (True, False):
            timers, number = {}, {}
            for name, fn in cs.items():
                run(fn, x, train)  # warm-up (and allocator) before timing
                t = benchmark.Timer(stmt="run(fn, x, train)", globals=dict(run=run, fn=fn, x=x, train=train))
                timers[name] = t
                one = t.timeit(1).mean
                number[name] = max(1, int(args.min_time / max(one, 1e-6)))
            samples = {name: [] for name in cs}
            for _ in range(args.rounds):
                for name, t in timers.items():
                    samples[name].append(t.timeit(number[name]).mean * 1e3)
            med = {name: statistics.median(v) for name, v in samples.items()}
            row = [f"{T},{B},{I},{H}", f"{L},{2 if bi else 1}", "train" if train else "infer",
                   f"{med['FastLSTM']:.2f}", f"{med['Peephole diag']:.2f}",
                   f"{med['Peephole diag'] / med['FastLSTM']:.2f}x", f"{med['Peephole full']:.2f}",
                   f"{med['Peephole full'] / med['FastLSTM']:.2f}x"]
            if args.oracle:
                o = med["oracle loop (diag)"]
                row += [f"{o:.2f}", f"{o / med['Peephole diag']:.1f}x"]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
