"""torch.func transforms through every module (issue 12 item 6): grad, jacrev, jvp/jacfwd, second order, and
vmap of grad (per-sample gradients), with respect to the input, the states and the parameters (through
torch.func.functional_call, as meta-learning code calls them). Each is compared with the same transform of an
independent reference: nn.LSTM / nn.GRU with the same weights, or the cell's float64 oracle (fastlstm.reference)
for the cells torch lacks. Under these transforms the layer functions run fastlstm.ops' transformable Function
(the fused ops for the forward and the first derivative, composite_layer beyond)."""
import pytest
import torch
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vmap
from torch.nn.utils.rnn import pack_padded_sequence

import fastlstm.ops as ops
from conftest import TOL
from fastlstm import FastGRU, FastLSTM, LayerNormLSTM, PeepholeLSTM
from fastlstm.cells.layernorm_lstm import LAYERNORM_LSTM_PARAMS
from fastlstm.cells.peephole import PEEPHOLE_PARAMS
from fastlstm.reference import layernorm_lstm_ref, peephole_lstm_ref

T, B, I, H = 3, 2, 2, 3
DT = torch.float64
TOL64 = TOL[DT]

# (fastlstm class, constructor arguments); the reference is built from the same arguments.
MODULES = [(FastLSTM, {}), (FastLSTM, dict(proj_size=2)), (FastGRU, {}), (PeepholeLSTM, {}),
           (PeepholeLSTM, dict(peephole="full")), (LayerNormLSTM, {})]
MODULE_IDS = ["lstm", "lstm-proj", "gru", "peephole", "peephole-full", "layernorm"]
# A few representative flag combinations rather than all of them (2 shared cores).
FLAGS = [dict(num_layers=1, bidirectional=False, batch_first=False),
         dict(num_layers=2, bidirectional=True, batch_first=True),
         dict(num_layers=2, bidirectional=False, batch_first=False)]
FLAG_IDS = ["1layer", "2layers-bidir-batch_first", "2layers"]


def _oracle_module(m, ref_fn, params_spec, **kw):
    """The cell's float64 oracle as a module-like callable (params by name, x, hx) -> (output, (h, c))."""
    names = [n for n, _ in params_spec]
    D = 2 if m.bidirectional else 1

    def call(params, x, hx):
        per_layer = [tuple(params.get(n + f"_l{layer}" + ("_reverse" if d else "")) for n in names)
                     for layer in range(m.num_layers) for d in range(D)]
        unbatched = x.dim() == 2  # [T, I], as nn.LSTM takes it
        if unbatched:
            x, hx = x.unsqueeze(1), None if hx is None else tuple(h.unsqueeze(1) for h in hx)
        elif m.batch_first:
            x = x.transpose(0, 1)
        out, hn = ref_fn(x, hx, per_layer, m.num_layers, m.bidirectional, **kw)
        if unbatched:
            return out.squeeze(1), tuple(h.squeeze(1) for h in hn)
        return (out.transpose(0, 1) if m.batch_first else out), hn
    return call


def _pair(cls, kw, flags):
    """(fastlstm module, reference(params, x, hx) -> the module's results for those parameters)."""
    cfg = dict(num_layers=flags["num_layers"], bidirectional=flags["bidirectional"],
               batch_first=flags["batch_first"], dtype=DT)
    torch.manual_seed(0)
    m = cls(I, H, **cfg, **kw)
    if cls is PeepholeLSTM:
        ref = _oracle_module(m, peephole_lstm_ref, PEEPHOLE_PARAMS)
    elif cls is LayerNormLSTM:
        ref = _oracle_module(m, layernorm_lstm_ref, LAYERNORM_LSTM_PARAMS, eps=m.eps)
    else:
        torch_mod = (torch.nn.GRU if cls is FastGRU else torch.nn.LSTM)(I, H, **cfg, **kw)
        torch_mod.load_state_dict(m.state_dict())

        def ref(params, x, hx):
            return functional_call(torch_mod, params, (x, hx))
    return m, ref


def _inputs(m, g=None):
    g = g or torch.Generator().manual_seed(1)
    D = 2 if m.bidirectional else 1
    P = getattr(m, "proj_size", 0) or H
    x = torch.randn(*((B, T) if m.batch_first else (T, B)), I, generator=g, dtype=DT)
    h = torch.randn(m.num_layers * D, B, P, generator=g, dtype=DT)
    if isinstance(m, FastGRU):
        return x, h
    return x, (h, torch.randn(m.num_layers * D, B, H, generator=g, dtype=DT))


def _results(call):
    """call(params, x, hx) -> (output, h_n[, c_n]) as a flat tuple."""
    def run(params, x, hx):
        out, h = call(params, x, hx)
        return (out, *(h if isinstance(h, tuple) else (h,)))
    return run


def _loss(run):
    # Every result enters with its own weight, so a wrong gradient into any of them shows.
    def loss(params, x, hx):
        return sum((r * (1.0 + k)).sin().sum() for k, r in enumerate(run(params, x, hx)))
    return loss


def _functions(cls, kw, flags):
    m, ref = _pair(cls, kw, flags)

    def fast(params, x, hx):
        return functional_call(m, params, (x, hx))
    runs = [_results(c) for c in (fast, ref)]
    params = {n: p.detach() for n, p in m.named_parameters()}
    return m, runs, params


def _assert_trees_close(a, b):
    la, lb = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        torch.testing.assert_close(x, y, **TOL64)


@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
@pytest.mark.parametrize("cls,kw", MODULES, ids=MODULE_IDS)
def test_grad_in_params_input_and_states_equals_reference(cls, kw, flags):
    m, runs, params = _functions(cls, kw, flags)
    x, hx = _inputs(m)
    got, want = (grad(_loss(run), argnums=(0, 1, 2))(params, x, hx) for run in runs)
    _assert_trees_close(got, want)
    assert set(got[0]) == set(params)


@pytest.mark.parametrize("flags", FLAGS[:2], ids=FLAG_IDS[:2])
@pytest.mark.parametrize("cls,kw", MODULES, ids=MODULE_IDS)
def test_jacrev_and_jacfwd_equal_reference(cls, kw, flags):
    m, runs, params = _functions(cls, kw, flags)
    x, hx = _inputs(m)
    # Every result's Jacobian in the input and the states, and in one weight (reverse mode only, the
    # forward mode's being the same numbers by another route, one column per element).
    jr = [jacrev(run, argnums=(1, 2))(params, x, hx) for run in runs]
    _assert_trees_close(*jr)
    jf = [jacfwd(run, argnums=(1, 2))(params, x, hx) for run in runs]
    _assert_trees_close(jf[0], jr[1])
    _assert_trees_close(*jf)
    w = "weight_hh_l0"

    def in_w(run):
        return lambda v: run({**params, w: v}, x, hx)
    _assert_trees_close(*(jacrev(in_w(run))(params[w]) for run in runs))


@pytest.mark.parametrize("cls,kw", MODULES, ids=MODULE_IDS)
def test_jvp_equals_reference(cls, kw):
    m, runs, params = _functions(cls, kw, FLAGS[1])
    x, hx = _inputs(m)
    g = torch.Generator().manual_seed(2)
    tangents = ({n: torch.randn(p.shape, generator=g, dtype=DT) for n, p in params.items()},
                torch.randn(x.shape, generator=g, dtype=DT),
                torch.utils._pytree.tree_map(lambda h: torch.randn(h.shape, generator=g, dtype=DT), hx))
    _assert_trees_close(*(jvp(run, (params, x, hx), tangents) for run in runs))


@pytest.mark.parametrize("flags", FLAGS[:2], ids=FLAG_IDS[:2])
@pytest.mark.parametrize("cls,kw", MODULES, ids=MODULE_IDS)
def test_second_order_equals_reference(cls, kw, flags):
    # Hessian blocks: reverse over reverse in the input, forward over reverse in one bias (the LSTM's b_ih
    # and b_hh share one fused gradient, so this checks that the shared result differentiates right), and
    # reverse over reverse across input and weight (a meta-learning step's mixed term).
    m, runs, params = _functions(cls, kw, flags)
    x, hx = _inputs(m)
    losses = [_loss(run) for run in runs]
    _assert_trees_close(*(jacrev(grad(f, argnums=1), argnums=1)(params, x, hx) for f in losses))
    b = "bias_ih_l0"

    def in_b(f):
        return lambda v: f({**params, b: v}, x, hx)
    _assert_trees_close(*(jacfwd(grad(in_b(f)))(params[b]) for f in losses))
    w = "weight_ih_l0"

    def in_w_x(f):
        return lambda v, x_: f({**params, w: v}, x_, hx)
    _assert_trees_close(*(jacrev(grad(in_w_x(f), argnums=0), argnums=1)(params[w], x) for f in losses))


@pytest.mark.parametrize("cls,kw", MODULES, ids=MODULE_IDS)
def test_per_sample_gradients_equal_a_loop(cls, kw):
    # vmap of grad: one gradient in the parameters per example, each example an unbatched [T, I] sequence.
    # nn.LSTM has no vmap rule, so the reference is a loop of its own grad.
    flags = FLAGS[1]
    m, runs, params = _functions(cls, kw, flags)
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(4, T, I, generator=g, dtype=DT)

    def per_example(run):
        return lambda p, xi: sum(r.pow(2).sum() for r in run(p, xi, None))
    fast, ref = (per_example(run) for run in runs)
    got = vmap(grad(fast), in_dims=(None, 0))(params, xs)
    for k in range(xs.shape[0]):
        _assert_trees_close({n: v[k] for n, v in got.items()}, grad(ref)(params, xs[k]))


@pytest.mark.parametrize("cls,kw", MODULES, ids=MODULE_IDS)
def test_grad_of_a_packed_sequence_equals_autograd(cls, kw):
    # torch's pad_packed_sequence does not run under torch.func (nn.LSTM's packed path fails there), so the
    # reference is plain autograd through the same module (its registered backward, checked against
    # nn.LSTM and the oracles elsewhere), and the loss reads the packed output's data rather than padding it.
    # The packing happens outside the transform, for the same reason: the gradient is in the parameters and
    # the states.
    m, _ = _pair(cls, kw, dict(num_layers=2, bidirectional=True, batch_first=False))
    x, hx = _inputs(m)
    packed = pack_padded_sequence(x, torch.tensor([2, 3]), enforce_sorted=False)

    def loss(params, hx):
        out, h = functional_call(m, params, (packed, hx))
        return sum((r * (1.0 + k)).sin().sum() for k, r in enumerate((out.data, *torch.utils._pytree.tree_leaves(h))))
    params = dict(m.named_parameters())
    got = grad(loss, argnums=(0, 1))({n: p.detach() for n, p in params.items()}, hx)
    states = torch.utils._pytree.tree_map(lambda h: h.clone().requires_grad_(), hx)
    want = torch.autograd.grad(loss(params, states), [*params.values(), *torch.utils._pytree.tree_leaves(states)])
    _assert_trees_close(got, (dict(zip(params, want)), *want[len(params):]))


def test_first_order_grad_runs_the_fused_backward(monkeypatch):
    # The composite recomputation is for second and higher orders only: a plain torch.func.grad must not
    # pay for it.
    m = FastLSTM(I, H, num_layers=2, bidirectional=True, dtype=DT)
    x, hx = _inputs(m)

    def boom(*a, **k):
        raise AssertionError("composite_layer ran for a first-order gradient")
    monkeypatch.setattr(ops, "composite_layer", boom)
    g = grad(lambda p, x: functional_call(m, p, (x, hx))[0].sum(), argnums=(0, 1))(dict(m.named_parameters()), x)
    assert all(t.abs().sum() > 0 for t in torch.utils._pytree.tree_leaves(g))


def test_grad_equals_autograd_of_the_module():
    # The same gradient by plain autograd (the registered backward) and by torch.func.grad (the Function).
    m = LayerNormLSTM(I, H, num_layers=2, dtype=DT)
    x, hx = _inputs(m)
    xr = x.clone().requires_grad_()
    want = torch.autograd.grad(m(xr, hx)[0].sin().sum(), [xr, *m.parameters()])
    got = grad(lambda p, x: functional_call(m, p, (x, hx))[0].sin().sum(), argnums=(1, 0))(
        dict(m.named_parameters()), x)
    _assert_trees_close((got[0], *got[1].values()), want)


def test_vmap_over_the_weights_under_grad_raises_naming_the_argument():
    # Ensembling (vmap over stacked parameters) would be N different layers, which the ops do not run: the
    # forward op's vmap rule says so rather than computing anything.
    m = FastLSTM(I, H, dtype=DT)
    x, hx = _inputs(m)
    stacked = {n: torch.stack([p.detach()] * 2) for n, p in m.named_parameters()}
    with pytest.raises(RuntimeError, match="vmap over argument 'w_ih' is not supported"):
        vmap(grad(lambda p: functional_call(m, p, (x, hx))[0].sum()))(stacked)


def test_jvp_through_a_frozen_module_is_not_silently_zero():
    # With no parameter requiring grad and the input a dual tensor (which reports requires_grad False), the
    # layer functions would take the inference op, which has no forward-mode formula: a zero tangent.
    m = FastLSTM(I, H, dtype=DT).requires_grad_(False)
    ref = torch.nn.LSTM(I, H, dtype=DT).requires_grad_(False)
    ref.load_state_dict(m.state_dict())
    x, _ = _inputs(m)
    t = torch.ones_like(x)
    got, want = (jvp(lambda x: mod(x)[0], (x,), (t,))[1] for mod in (m, ref))
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, **TOL64)


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "trainable"])
@pytest.mark.parametrize("cls,kw", MODULES, ids=MODULE_IDS)
def test_plain_forward_mode_ad_equals_torch_func_jvp(cls, kw, frozen):
    # torch.autograd.forward_ad outside torch.func: a frozen module used to return no tangent at all (the
    # inference op has no forward formula) and a trainable one raised. The tangent of every output, with the
    # input and the states dual, equals torch.func.jvp's (itself checked against the references above).
    m, runs, params = _functions(cls, kw, FLAGS[1])
    if frozen:
        m.requires_grad_(False)
    x, hx = _inputs(m)
    g = torch.Generator().manual_seed(3)
    tx = torch.randn(x.shape, generator=g, dtype=DT)
    thx = torch.utils._pytree.tree_map(lambda h: torch.randn(h.shape, generator=g, dtype=DT), hx)
    import torch.autograd.forward_ad as fwad
    with fwad.dual_level():
        dual_hx = torch.utils._pytree.tree_map(fwad.make_dual, hx, thx)
        out = m(fwad.make_dual(x, tx), dual_hx)
        got = torch.utils._pytree.tree_map(lambda o: fwad.unpack_dual(o).tangent, out)
    want = jvp(lambda x, hx: m(x, hx), (x, hx), (tx, thx))[1]
    assert all(t is not None for t in torch.utils._pytree.tree_leaves(got))
    _assert_trees_close(got, want)
