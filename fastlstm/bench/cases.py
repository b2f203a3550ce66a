"""What is measured: the Case (one benchmark point), the named grids, and the cross product that turns a grid
into cases. Nothing here builds a module or times anything."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from .contenders import MODELS

# inference / training: one call over the whole sequence (a [T, B, I] tensor); packed_*: the same on a
# PackedSequence of random lengths (see packed_lengths); streaming: batch 1, one step per call, state carried.
MODES = ("inference", "training", "streaming", "packed_inference", "packed_training")
# --modes shorthand: "packed" means both packed modes.
MODE_ALIASES = {"packed": ("packed_inference", "packed_training")}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
# What a run reports when no dtype is asked for: every dtype fastlstm runs fast (float64 is for tests).
REPORT_DTYPES = ("float32", "bfloat16", "float16")


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

    @classmethod
    def from_row(cls, row: dict) -> "Case":
        """The case a result row (run_case's dict, or a JSON/CSV row read back) was measured on."""
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    @property
    def packed(self) -> bool:
        return self.mode.startswith("packed_")

    @property
    def backward(self) -> bool:
        """Whether a timed call includes the backward pass."""
        return self.mode.endswith("training")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

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


def packed_lengths(T: int, B: int, seed: int = 0) -> Tensor:
    """The sequence lengths of a packed case: B lengths drawn uniformly from [1, T] with a fixed seed, one of
    them set to T so the padded length (the step count both contenders run) is T. int64 [B], on the CPU (as
    pack_padded_sequence wants), deliberately unsorted: the cases pack with enforce_sorted=False."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[int(torch.randint(B, (1,), generator=g))] = T
    return lengths


# (T, B, I, H, layers, bidirectional)
Spec = tuple[int, int, int, int, int, bool]

# Issue 4's CPU grid: four single-layer shapes and a 2-layer bidirectional one; streaming over the
# single-layer unidirectional sizes.
CPU_SPECS: list[Spec] = [(50, 16, 64, 64, 1, False), (50, 64, 256, 256, 1, False), (100, 32, 512, 512, 1, False),
                         (200, 1, 128, 128, 1, False), (100, 8, 256, 256, 2, True)]
# Issue 3's GPU grid.
GPU_SPECS: list[Spec] = [(100, 64, 512, 512, 1, False), (100, 16, 256, 256, 1, False),
                         (500, 32, 1024, 1024, 1, False), (1024, 16, 768, 768, 1, False)]
# What `python -m fastlstm.bench` runs on a CPU with no flags: issue 4's grid less its largest shape
# (T=100 B=32 H=512, whose cell-loop training alone takes seconds per call on 2 threads), so that every dtype
# fits in a few minutes. Still a small, a batch-1 and a stacked bidirectional shape.
CPU_DEFAULT_SPECS: list[Spec] = [s for s in CPU_SPECS if s != (100, 32, 512, 512, 1, False)]
# --quick (and CI): two small shapes, all dtypes and modes, in about a minute.
QUICK_SPECS: list[Spec] = [(50, 16, 64, 64, 1, False), (20, 4, 32, 32, 2, True)]

WHOLE_SEQUENCE_MODES = ("inference", "training", "packed_inference", "packed_training")

# name -> (specs, dtypes, modes)
GRIDS: dict[str, tuple[list[Spec], tuple[str, ...], tuple[str, ...]]] = {
    "cpu": (CPU_SPECS, REPORT_DTYPES, MODES),
    "cpu-default": (CPU_DEFAULT_SPECS, REPORT_DTYPES, MODES),
    "gpu": (GPU_SPECS, REPORT_DTYPES, WHOLE_SEQUENCE_MODES),
    "quick": (QUICK_SPECS, REPORT_DTYPES, MODES),
}


def resolve_grid(name: str, device: str, quick: bool = False) -> str:
    """The grid a --grid value means: "default" is the quick grid with --quick, else the device's own."""
    if name != "default":
        return name
    if quick:
        return "quick"
    return "gpu" if device == "cuda" else "cpu-default"


def make_cases(specs: list[Spec], dtypes, modes, models=("lstm",)) -> list[Case]:
    """The cross product dtypes x modes x models x specs, in that order (a report reads dtype by dtype).

    Streaming skips bidirectional specs (a reverse direction needs the whole sequence) and keeps one case
    per (I, H, layers); the packed modes are left out for models that take no PackedSequence (see
    contenders.MODELS)."""
    cases, seen = [], set()
    for dtype in dtypes:
        for mode in modes:
            for model in models:
                if mode.startswith("packed_") and not MODELS[model].packed:
                    continue
                for T, B, I, H, L, bi in specs:
                    if mode == "streaming":
                        if bi or (I, H, L, dtype, model) in seen:
                            continue
                        seen.add((I, H, L, dtype, model))
                        B = 1
                    cases.append(Case(mode, T, B, I, H, L, bi, dtype, model))
    return cases


def grid_cases(name: str, device: str, models=("lstm",), quick: bool = False) -> list[Case]:
    """The cases of a named grid (see resolve_grid for "default")."""
    specs, dtypes, modes = GRIDS[resolve_grid(name, device, quick)]
    return make_cases(specs, dtypes, modes, models)


def expand_modes(modes) -> tuple[str, ...]:
    """--modes values with the "packed" shorthand expanded, duplicates dropped, order kept."""
    out: list[str] = []
    for m in modes:
        out += MODE_ALIASES.get(m, (m,))
    return tuple(dict.fromkeys(out))
