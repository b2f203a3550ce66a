"""fastlstm's modules, torch's and the cell loops on the cases of fastlstm.bench (the same Case objects, the
same module factories and the same timed closures), one pytest-benchmark per (case, contender).

Group by case to read the ratios: `pytest bench/ --benchmark-only --benchmark-group-by=param:case`.
"""
import pytest
import torch

from conftest import DEVICE, GRID
from fastlstm.bench import CONTENDERS, MODELS, grid_cases, make_step

CASES = grid_cases(GRID, DEVICE)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_lstm(benchmark, case, contender):
    torch.manual_seed(0)
    modules = MODELS[case.model](case, DEVICE)
    if contender not in modules:
        pytest.skip(f"{case.model} has no {contender} contender in mode {case.mode}")
    module = modules[contender]
    step = make_step(case, module, DEVICE)
    benchmark.group = case.id
    benchmark.extra_info.update(mode=case.mode, dtype=case.dtype, device=DEVICE, contender=contender)

    def run():
        step()
        _sync()

    benchmark.pedantic(run, warmup_rounds=2, rounds=max(3, 20 if case.mode != "training" else 5),
                       iterations=1)
