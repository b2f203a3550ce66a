"""The fake kernels check their arguments as the C++ ops do (issue 11 item 4): a direct call with one argument
on the meta device and the rest on the CPU is dispatched to the fake kernel, which used to return
uninitialised memory; and an all-meta call with a wrong shape must raise the CPU kernel's own message."""
import pytest
import torch

from fastlstm.ops import CELL_OPS
from test_cell_ops import ROWS, backward_args, forward_args


def _args(row, kind):
    base = (backward_args if kind == "backward" else forward_args)(row, "cpu", proj=row.name == "lstm")
    return [a.detach() if isinstance(a, torch.Tensor) else a for a in base]


def _meta(args):
    return [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("kind", ["forward", "inference", "backward"])
@pytest.mark.parametrize("name", ROWS)
def test_one_argument_on_meta_raises_naming_op_and_argument(name, kind):
    row = CELL_OPS[name]
    op, base = row.op(kind), _args(row, kind)
    op(*_meta(base))  # all on meta: a valid call
    for i, a in enumerate(op._schema.arguments):
        if not isinstance(base[i], torch.Tensor):
            continue
        args = list(base)
        args[i] = base[i].to("meta")
        # The input's device is the one every argument must be on, so moving the input blames the next.
        blamed = a.name if a.name != "input" else "w_ih"
        with pytest.raises(RuntimeError, match=rf"fastlstm::{name}_{kind}: argument '{blamed}' must be .* on "):
            op(*args)


@pytest.mark.parametrize("kind", ["forward", "inference", "backward"])
@pytest.mark.parametrize("name", ROWS)
def test_meta_shape_errors_match_the_cpu_kernel(name, kind):
    row = CELL_OPS[name]
    op, base = row.op(kind), _args(row, kind)
    for i, a in enumerate(op._schema.arguments):
        t = base[i]
        if not isinstance(t, torch.Tensor) or a.name == "input":
            continue
        args = list(base)
        args[i] = torch.cat([t, t[..., :1]], -1)  # one more in the last dimension
        with pytest.raises(RuntimeError) as cpu:
            op(*args)
        with pytest.raises(RuntimeError) as meta:
            op(*_meta(args))
        assert f"argument '{a.name}'" in str(cpu.value)
        assert str(meta.value).split("\n")[0] == str(cpu.value).split("\n")[0].replace("cpu", "meta")


def test_dynamic_shapes_compile_still_works():
    from fastlstm import FastLSTM
    m = FastLSTM(3, 4)
    f = torch.compile(m, dynamic=True, fullgraph=True)
    for T, B in ((5, 2), (7, 3)):
        x = torch.randn(T, B, 3)
        torch.testing.assert_close(f(x)[0], m(x)[0])
