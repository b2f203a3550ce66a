"""Quick CPU float32 training benchmark: FastGRU vs nn.GRU vs FastLSTM, interleaved, medians.

python bench/gru_quick.py [--threads 2] [--min-run 0.5]
"""
import argparse
import math
import time

import torch
import torch.utils.benchmark as tb
from torch import nn

import fastlstm

SHAPES = [  # (T, B, I, H, layers, bidirectional)
    (50, 16, 64, 64, 1, False),
    (50, 64, 256, 256, 1, False),
    (100, 32, 512, 512, 1, False),
    (200, 1, 128, 128, 1, False),
    (100, 8, 256, 256, 2, True),
]


def step(m, x):
    out, _ = m(x)
    out.sum().backward()


def infer(m, x):
    with torch.inference_mode():
        m(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-run", type=float, default=0.5)
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with process CPU time instead of wall time (robust on a loaded machine; "
                         "sums over threads, so use with --threads 1)")
    ap.add_argument("--inference", action="store_true", help="time eval-mode forward under inference_mode "
                    "instead of forward+backward")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ratios_gru, rows = [], []
    for T, B, I, H, L, bi in SHAPES:
        torch.manual_seed(0)
        ref = nn.GRU(I, H, L, bidirectional=bi)
        mods = {"nn.GRU": ref, "FastGRU": fastlstm.FastGRU.from_gru(ref),
                "FastLSTM": fastlstm.FastLSTM(I, H, L, bidirectional=bi)}
        x = torch.randn(T, B, I, requires_grad=not a.inference)
        fn = infer if a.inference else step
        for m in mods.values():
            m.train(not a.inference)
            fn(m, x)  # warm-up
        t = {}
        # Interleave: several short rounds, alternating contenders; median of all measurements per contender.
        meas = {k: [] for k in mods}
        for _ in range(3):
            for k, m in mods.items():
                r = tb.Timer("step(m, x)", globals=dict(step=fn, m=m, x=x), num_threads=a.threads,
                             **({"timer": time.process_time} if a.cpu_time else {}))
                meas[k].append(r.blocked_autorange(min_run_time=a.min_run).median)
        t = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in meas.items()}
        ratios_gru.append(t["nn.GRU"] / t["FastGRU"])
        rows.append((T, B, I, H, L, bi, t["nn.GRU"], t["FastGRU"], t["FastLSTM"]))
        print(f"T={T:4d} B={B:3d} I={I:4d} H={H:4d} L={L} bi={int(bi)}  nn.GRU {t['nn.GRU']:8.2f} ms  "
              f"FastGRU {t['FastGRU']:8.2f} ms  FastLSTM {t['FastLSTM']:8.2f} ms  "
              f"GRU speed-up {t['nn.GRU'] / t['FastGRU']:5.2f}x  FastGRU/FastLSTM {t['FastGRU'] / t['FastLSTM']:4.2f}",
              flush=True)
    print(f"geomean speed-up FastGRU vs nn.GRU: {math.exp(sum(map(math.log, ratios_gru)) / len(ratios_gru)):.2f}x")


if __name__ == "__main__":
    main()
