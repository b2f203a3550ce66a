"""The wide shapes of tests/test_cuda.py really reach the vector widths they are named for. Runs without a GPU:
it replays the launcher's choice for map passes (plan_rows in csrc/cuda/row_kernel.cuh) with the constants
read from csrc, so a change of the launch plan that would quietly send those tests back to width 1 fails here,
in CI. (tests/test_cuda_harness.py forces every width through the kernels' own code on the CPU; this is about
the shapes the GPU tests use.)"""
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


def planned_width(dtype: torch.dtype, rows: int, H: int, threads: int, min_blocks: int) -> int:
    """plan_rows' width for a map pass over fresh (aligned) buffers: 16 bytes of storage type, halved until
    it divides H, then halved while rows x (blocks of `threads` threads per row) < min_blocks."""
    vec = 16 // torch.empty((), dtype=dtype).element_size()
    while vec > 1 and H % vec:
        vec //= 2
    while vec > 1 and rows * -(-(H // vec) // threads) < min_blocks:
        vec //= 2
    return vec


@pytest.mark.parametrize("dtype,width", WIDE_CASES,
                         ids=[f"{str(d).replace('torch.', '')}-vec{w}" for d, w in WIDE_CASES])
def test_wide_case_reaches_its_width(dtype, width):
    threads, min_blocks = _constant("kMapThreads"), _constant("kMinBlocks")
    if threads is None or min_blocks is None:
        pytest.skip("kMapThreads / kMinBlocks not found in csrc: the launch plan moved; re-derive WIDE_SHAPES")
    s = WIDE_SHAPES[width]
    assert planned_width(dtype, s["B"], s["H"], threads, min_blocks) == width


def test_planned_width_arithmetic():
    # One block per row slice of 128 threads x vec units, at least 128 blocks: the row count matters, and H
    # only through the slices per row.
    f32, f16, f64 = torch.float32, torch.float16, torch.float64
    assert planned_width(f32, 128, 128, 128, 128) == 4, "128 rows of one slice each fill the minimum"
    assert planned_width(f32, 127, 128, 128, 128) == 1, "127 rows: one slice each even at width 1"
    assert planned_width(f32, 64, 1024, 128, 128) == 4 and planned_width(f32, 64, 512, 128, 128) == 2
    assert planned_width(f16, 64, 1024, 128, 128) == 4 and planned_width(f16, 128, 1024, 128, 128) == 8
    assert planned_width(f64, 5, 32, 128, 128) == 1, "test_cuda.py's small shapes run width 1"
    assert planned_width(f32, 96, 1022, 128, 128) == 2, "H=1022 is not a multiple of 4"


def test_wide_cases_keep_their_width_if_the_minimum_block_count_moves():
    # test_cuda.py's claim: the shapes sit mid-way between thresholds, so a minimum of 97..192 blocks
    # (e.g. one per SM of a 132-SM H100/H200) still gives every case its width.
    for dtype, width in WIDE_CASES:
        s = WIDE_SHAPES[width]
        for min_blocks in range(97, 193):
            assert planned_width(dtype, s["B"], s["H"], 128, min_blocks) == width, (dtype, width, min_blocks)
