"""Every row of fastlstm.ops.CELL_OPS, the same way: torch.library.opcheck on its three ops (every test_utils
check, with and without inputs that require grad, contiguous or not) with no warning, in particular not
"an autograd kernel was not registered"; gradcheck through the forward and inference ops themselves (their
autograd is registered on them); and create_graph gradients equal to the fused ones.

Arguments are built from the op schemas' names, so a new row is covered without writing its samples."""
import warnings

import pytest
import torch

from conftest import DEVICES
from fastlstm.ops import _PAIR_OPS, CELL_OPS

T, B, I, H, P = 3, 2, 3, 4, 2


def _shape(name, row, proj):
    G = row.gates * H
    hp = P if proj else H
    shapes = {"input": (T, B, I), "h0": (B, hp), "c0": (B, H), "w_ih": (G, I), "w_hh": (G, hp), "b_ih": (G,),
              "b_hh": (G,), "w_hr": (P, H), "w_ci": (H,), "w_cf": (H,), "w_co": (H,)}
    if name.startswith("ln_"):
        return (H,) if name.startswith("ln_c_") else (G,)
    return shapes[name]


def forward_args(row, device, dtype=torch.float64, requires_grad=False, lengths=True, reverse=True, proj=False,
                 bias=True):
    """The forward op's arguments by schema name: random tensors (layer-norm gains near 1), lengths [B]
    (one sequence full, one shorter), reverse, eps."""
    g = torch.Generator().manual_seed(0)
    args = []
    for a in row.op("forward")._schema.arguments:
        n = a.name
        if n == "lengths":
            args.append(torch.tensor([T, 1], device=device) if lengths else None)
        elif n == "reverse":
            args.append(reverse)
        elif n == "eps":
            args.append(1e-5)
        elif n == "w_hr" and not proj or n in ("b_ih", "b_hh") and not bias:
            args.append(None)
        else:
            t = torch.randn(_shape(n, row, proj), generator=g, dtype=torch.float64) * 0.5
            if n.startswith("ln_") and n.endswith("_w"):
                t = t + 1
            args.append(t.to(device, dtype).requires_grad_(requires_grad))
    return args


def backward_args(row, device, dtype=torch.float64, **kw):
    """The backward op's arguments by schema name, from a forward call on forward_args."""
    fwd = forward_args(row, device, dtype, **kw)
    values = dict(zip([a.name for a in row.op("forward")._schema.arguments], fwd))
    outs = row.op("forward")(*fwd)
    values.update(zip(row.outputs, outs))
    g = torch.Generator().manual_seed(1)
    for n in list(row.outputs)[:row.n_results]:
        values["grad_" + n] = torch.randn(values[n].shape, generator=g, dtype=torch.float64).to(device, dtype)
    return [values[a.name] for a in row.op("backward")._schema.arguments]


def non_contiguous(t):
    """The same values in a transposed layout (as a batch_first input reaches the ops); a leaf, as t is."""
    if not isinstance(t, torch.Tensor) or t.dim() < 2:
        return t
    return t.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(t.requires_grad)


ROWS = list(CELL_OPS)


def _variants(name):
    # Optional inputs both given and absent, where the schema has them.
    v = [dict(), dict(lengths=False, reverse=False)]
    if name == "lstm":
        v.append(dict(proj=True))
    if "b_ih" in [a.name for a in CELL_OPS[name].op("forward")._schema.arguments]:
        v.append(dict(bias=False))
    return v


def _opcheck_quietly(op, args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # torch 2.14's own fake-tensor conversion inside opcheck reads .grad of non-leaf tensors and warns;
        # that is torch's, not ours (torch 2.13 does not warn).
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
        torch.library.opcheck(op, tuple(args))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("name", ROWS)
def test_opcheck_forward_and_inference(name, requires_grad, layout, device):
    row = CELL_OPS[name]
    for kw in _variants(name):
        args = forward_args(row, device, torch.float32, requires_grad=requires_grad, **kw)
        if layout == "transposed":
            args = [non_contiguous(a) for a in args]
            assert not args[0].is_contiguous()
        for kind in ("forward", "inference"):
            _opcheck_quietly(row.op(kind), args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("name", ROWS)
def test_opcheck_backward(name, layout, device):
    # The fake kernels return contiguous results whatever the arguments' strides, as the kernels do (they once
    # copied a transposed input's strides for the GRU and peephole ops, which broke torch.compile there).
    row = CELL_OPS[name]
    for kw in _variants(name):
        args = backward_args(row, device, torch.float32, **kw)
        if layout == "transposed":
            args = [non_contiguous(a) for a in args]
        _opcheck_quietly(row.op("backward"), args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["forward", "inference"])
@pytest.mark.parametrize("name", ROWS)
def test_gradcheck_through_the_op(name, kind, device):
    row = CELL_OPS[name]
    op = row.op(kind)
    for kw in _variants(name):
        args = forward_args(row, device, requires_grad=True, **kw)
        idx = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

        def fn(*tensors, args=args, idx=idx):
            full = list(args)
            for i, t in zip(idx, tensors):
                full[i] = t
            return op(*full)[:row.n_results]
        assert torch.autograd.gradcheck(fn, [args[i] for i in idx], eps=1e-6, atol=1e-7, rtol=1e-5), kw


@pytest.mark.parametrize("name", ROWS)
def test_create_graph_gradient_equals_the_fused_one(name):
    # With create_graph=True the gradient comes from the differentiable recomputation (fastlstm.ops), without
    # it from the fused backward op: the two must agree (second derivatives: tests/test_double_backward.py).
    row = CELL_OPS[name]
    args = forward_args(row, "cpu", requires_grad=True)
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    plain = torch.autograd.grad(row.op("forward")(*args)[0].sum(), tensors)
    graph = torch.autograd.grad(row.op("forward")(*args)[0].sum(), tensors, create_graph=True)
    for p, g in zip(plain, graph):
        assert g.requires_grad
        torch.testing.assert_close(g, p, atol=1e-10, rtol=1e-8)


def test_every_op_in_the_build_is_in_the_table():
    # A new op with no row would have no fake kernel and no autograd.
    names = {n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith("fastlstm::")}
    table = {f"{r.name}_{k}" for r in CELL_OPS.values() if r.exists() for k in ("forward", "inference", "backward")}
    # ... and the CPU's inference pairs (both directions at once): fake kernels from fastlstm.ops, no autograd by
    # design (inference only; pair_op never picks them when a gradient is needed), checked in test_pairs.py.
    pairs = {op._schema.name.split("::")[1] for op in _PAIR_OPS.values()}
    assert pairs == {f"{r.name}_inference_pair" for r in CELL_OPS.values() if r.exists()}
    assert names == table | pairs
