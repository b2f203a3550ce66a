"""The wide shapes of tests/test_cuda.py really reach the vector widths they are named for. Runs without a GPU:
it replays the pointwise launcher's choice (plan_pointwise in csrc/cuda) with the constants read from csrc, so
a change of the launch plan that would quietly send those tests back to width 1 fails here, in CI."""
import re
from pathlib import Path

import pytest
import torch

from test_cuda import WIDE_CASES, WIDE_SHAPES

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _constant(name: str):
    for f in sorted(CSRC.rglob("*.cuh")) + sorted(CSRC.rglob("*.h")):
        m = re.search(rf"\b{name}\s*=\s*(\d+)\s*;", f.read_text())
        if m:
            return int(m.group(1))
    return None


def planned_width(dtype: torch.dtype, B: int, H: int, threads: int, min_blocks: int) -> int:
    """plan_pointwise's width for fresh (aligned) buffers: 16 bytes of storage type, halved until it divides
    H, then halved while it would leave fewer than min_blocks blocks of `threads` threads."""
    vec = 16 // torch.empty((), dtype=dtype).element_size()
    while vec > 1 and H % vec:
        vec //= 2
    while vec > 1 and -(-B * (H // vec) // threads) < min_blocks:
        vec //= 2
    return vec


@pytest.mark.parametrize("dtype,width", WIDE_CASES,
                         ids=[f"{str(d).replace('torch.', '')}-vec{w}" for d, w in WIDE_CASES])
def test_wide_case_reaches_its_width(dtype, width):
    threads, min_blocks = _constant("kThreads"), _constant("kMinBlocks")
    if threads is None or min_blocks is None:
        pytest.skip("kThreads / kMinBlocks not found in csrc: the launch plan moved; re-derive WIDE_SHAPES")
    s = WIDE_SHAPES[width]
    assert planned_width(dtype, s["B"], s["H"], threads, min_blocks) == width


def test_planned_width_matches_the_issue_thresholds():
    # Issue 16 item 3's numbers for kThreads = kMinBlocks = 128: width 2 from B*H = 32,514 (32,516 with H a
    # multiple of 4), width 4 (float32) from 65,028 (rounded to 65,536 there), width 8 (half types) from
    # 130,056 (131,072).
    f32, f16 = torch.float32, torch.float16
    assert planned_width(f32, 1, 32512, 128, 128) == 1 and planned_width(f32, 1, 32516, 128, 128) == 2
    assert planned_width(f32, 1, 65024, 128, 128) == 2 and planned_width(f32, 1, 65536, 128, 128) == 4
    assert planned_width(f16, 1, 130048, 128, 128) == 4 and planned_width(f16, 1, 131072, 128, 128) == 8
    assert planned_width(torch.float64, 64, 1024, 128, 128) == 2, "float64 packs at most 2"
    assert planned_width(f32, 96, 1022, 128, 128) == 2, "H=1022 is not a multiple of 4"


def test_wide_cases_keep_their_width_if_the_minimum_block_count_moves():
    # test_cuda.py's claim: the shapes sit mid-way between thresholds, so a minimum of 97..192 blocks
    # (e.g. one per SM of a 132-SM H100/H200) still gives every case its width.
    for dtype, width in WIDE_CASES:
        s = WIDE_SHAPES[width]
        for min_blocks in range(97, 193):
            assert planned_width(dtype, s["B"], s["H"], 128, min_blocks) == width, (dtype, width, min_blocks)
