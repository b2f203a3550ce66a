"""pytest-benchmark suites over fastlstm.bench's cases: `pytest bench/ --benchmark-only`.

Save and compare between commits with `--benchmark-autosave` and `--benchmark-compare`. The grid is chosen
with FASTLSTM_BENCH_GRID (quick, cpu, gpu; default quick) and the device with FASTLSTM_BENCH_DEVICE
(default cuda if available, else cpu).
"""
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a source checkout with PYTHONPATH unset
    sys.path.insert(0, ROOT)

DEVICE = os.environ.get("FASTLSTM_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
GRID = os.environ.get("FASTLSTM_BENCH_GRID", "quick")
