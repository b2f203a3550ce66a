"""PeepholeLSTM (issue 6) against its oracle, fastlstm.reference.peephole_lstm_ref (a plain float64 loop whose
gradients come from autograd), in both peephole modes: outputs, final states and the gradients of the input,
h0, c0 and every parameter (peepholes included), over every flag; half types by the low-precision rule;
from_lstm against nn.LSTM; gradcheck, opcheck and torch.compile on the ops; nn.LSTM's errors."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastlstm
from conftest import LOWP_FACTOR, LOWP_SLACK, TOL, one_direction_at_a_time
from fastlstm import PeepholeLSTM
from fastlstm.peephole import peephole_layer
from fastlstm.reference import peephole_lstm_ref, peephole_module_params

MODES = ["diagonal", "full"]
PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ci", "weight_cf", "weight_co")

# (num_layers, bidirectional, batch_first, bias, hx, kind, dtype): every pair of values of the binary flags
# meets, every input kind meets each flag value, both dtypes meet every kind.
F32, F64 = torch.float32, torch.float64
FLAGS = [
    (1, False, False, True, False, "tensor", F64),
    (2, True, True, True, True, "tensor", F32),
    (1, True, False, False, True, "packed", F64),
    (2, False, True, True, False, "packed", F32),
    (2, True, False, True, True, "packed_unsorted", F64),
    (1, False, True, False, True, "packed_unsorted", F32),
    (2, True, True, False, False, "unbatched", F64),
    (1, False, False, True, True, "unbatched", F32),
    (2, False, False, False, True, "tensor", F64),
    (1, True, True, True, False, "packed_unsorted", F64),
]
KEYS = ("num_layers", "bidirectional", "batch_first", "bias", "hx", "kind", "dtype")
CASES = [dict(zip(KEYS, f), T=5, B=4, I=3, H=11) for f in FLAGS]
# The awkward sizes: T=1, B=1, H=1, I != H, and H wide enough for several SIMD vectors plus a tail.
ODD = [
    dict(num_layers=1, bidirectional=False, batch_first=False, bias=True, hx=True, kind="tensor", T=1, B=1, I=1, H=1),
    dict(num_layers=2, bidirectional=True, batch_first=True, bias=False, hx=True, kind="tensor", T=3, B=2, I=2, H=1),
    dict(num_layers=2, bidirectional=True, batch_first=False, bias=True, hx=True, kind="packed_unsorted", T=6, B=5,
         I=17, H=37),
]
CASES += [dict(c, dtype=dt) for c in ODD for dt in (F32, F64)]


def case_id(c):
    return "-".join([f"L{c['num_layers']}", "bi" if c["bidirectional"] else "uni", "bf" if c["batch_first"] else "tf",
                     "b" if c["bias"] else "nob", "hx" if c["hx"] else "nohx", c["kind"],
                     str(c["dtype"]).replace("torch.", ""), f"T{c['T']}B{c['B']}I{c['I']}H{c['H']}"])


def lengths_for(kind, T, B):
    """Lengths of a packed case: the longest is T; decreasing, or (unsorted) with the longest last."""
    lengths = [max(1, T - (b * T) // max(B, 1)) for b in range(B)]
    if kind == "packed_unsorted" and B > 1:
        lengths = lengths[1:] + lengths[:1]
    return torch.tensor(lengths)


def make_inputs(c, dtype=None):
    """(x, hx, lengths) in the layout the module takes: x [T,B,I] / [B,T,I] / [T,I]; hx or None."""
    dtype = dtype or c["dtype"]
    g = torch.Generator().manual_seed(2)
    T, B, I, H = c["T"], c["B"], c["I"], c["H"]
    LD = c["num_layers"] * (2 if c["bidirectional"] else 1)
    unbatched = c["kind"] == "unbatched"
    batch_first = c["batch_first"] and c["kind"] == "tensor"  # packed inputs are packed from time-major
    shape = (T, I) if unbatched else ((B, T, I) if batch_first else (T, B, I))
    x = torch.randn(shape, generator=g, dtype=F64).to(dtype)
    hx = None
    if c["hx"]:
        hshape = (LD, H) if unbatched else (LD, B, H)
        hx = tuple(torch.randn(hshape, generator=g, dtype=F64).to(dtype) for _ in range(2))
    lengths = lengths_for(c["kind"], T, B) if c["kind"].startswith("packed") else None
    return x, hx, lengths


def make_module(c, mode, dtype=None):
    torch.manual_seed(0)
    return PeepholeLSTM(c["I"], c["H"], c["num_layers"], c["bias"], c["batch_first"], 0.0, c["bidirectional"],
                        peephole=mode, dtype=dtype or c["dtype"])


def loss_weights(c, dtype, device="cpu"):
    """Fixed random weights for output [T,B,D*H], h_n and c_n [L*D,B,H], so that every element gets its own
    gradient (a swapped gate, unit or direction cannot hide behind a symmetric loss). Drawn on the CPU, so a
    CUDA run gets the same weights."""
    g = torch.Generator().manual_seed(1)
    D = 2 if c["bidirectional"] else 1
    T, B, H = c["T"], 1 if c["kind"] == "unbatched" else c["B"], c["H"]
    shapes = [(T, B, D * H), (c["num_layers"] * D, B, H), (c["num_layers"] * D, B, H)]
    return [torch.randn(s, generator=g, dtype=F64).to(device, dtype) for s in shapes]


def run_fast(m, c, x, hx, lengths):
    """Runs the module the way the case says; returns ([output T,B,D*H, h_n, c_n] time-major and batched,
    {name: grad}) for a weighted loss."""
    x = x.detach().clone().requires_grad_()
    leaves = {"input": x}
    if hx is not None:
        hx = tuple(t.detach().clone().requires_grad_() for t in hx)
        leaves["h0"], leaves["c0"] = hx
    m.zero_grad(set_to_none=True)
    if lengths is not None:
        packed = pack_padded_sequence(x, lengths, enforce_sorted=c["kind"] == "packed")
        out, (h, cn) = m(packed, hx)
        out = pad_packed_sequence(out, total_length=c["T"])[0]
    else:
        out, (h, cn) = m(x, hx)
        if c["kind"] == "unbatched":
            out, h, cn = out.unsqueeze(1), h.unsqueeze(1), cn.unsqueeze(1)
        elif c["batch_first"]:
            out = out.transpose(0, 1)
    outs = [out, h, cn]
    loss = sum((o * w).sum() for o, w in zip(outs, loss_weights(c, out.dtype, out.device)))
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads.update({k: p.grad for k, p in m.named_parameters()})
    return [o.detach() for o in outs], grads


def run_ref(m, c, x, hx, lengths, compute_dtype=F64):
    """The oracle on leaf copies of the same inputs and parameters (in compute_dtype); same return as run_fast."""
    dt = compute_dtype
    xl = x.detach().to(dt).requires_grad_()
    leaves = {"input": xl}
    xt = xl.unsqueeze(1) if c["kind"] == "unbatched" else (xl.transpose(0, 1) if c["batch_first"] and
                                                           c["kind"] == "tensor" else xl)
    hxt = None
    if hx is not None:
        leaves["h0"], leaves["c0"] = (t.detach().to(dt).requires_grad_() for t in hx)
        hxt = (leaves["h0"], leaves["c0"])
        if c["kind"] == "unbatched":
            hxt = tuple(t.unsqueeze(1) for t in hxt)
    params, names = [], []
    D = 2 if c["bidirectional"] else 1
    for k, tup in enumerate(peephole_module_params(m)):
        sfx = f"_l{k // D}" + ("_reverse" if k % D else "")
        leaf_tup = []
        for kind, p in zip(PARAM_KINDS, tup):
            if p is None:
                leaf_tup.append(None)
                continue
            leaves[kind + sfx] = p.detach().to(dt).requires_grad_()
            leaf_tup.append(leaves[kind + sfx])
        params.append(tuple(leaf_tup))
    out, (h, cn) = peephole_lstm_ref(xt, hxt, params, c["num_layers"], c["bidirectional"], lengths,
                                     compute_dtype=dt)
    outs = [out, h, cn]
    loss = sum((o * w).sum() for o, w in zip(outs, loss_weights(c, dt, out.device)))
    loss.backward()
    return [o.detach() for o in outs], {k: v.grad for k, v in leaves.items()}


def compare(fast, ref, tol, what):
    (fo, fg), (ro, rg) = fast, ref
    for name, a, b in zip(("output", "h_n", "c_n"), fo, ro):
        torch.testing.assert_close(a, b.to(a.dtype), **tol, msg=lambda msg, n=name: f"{what} {n}: {msg}")
    assert fg.keys() == rg.keys()
    for name in rg:
        assert fg[name] is not None, f"no gradient for {name}"
        torch.testing.assert_close(fg[name], rg[name].to(fg[name].dtype), **tol,
                                   msg=lambda msg, n=name: f"{what} grad {n}: {msg}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("c", CASES, ids=[case_id(c) for c in CASES])
def test_parity_with_oracle(c, mode):
    m = make_module(c, mode)
    x, hx, lengths = make_inputs(c)
    fast = run_fast(m, c, x, hx, lengths)
    compare(fast, run_ref(m, c, x, hx, lengths), TOL[c["dtype"]], f"{mode} {case_id(c)}")
    # Without autograd the inference op runs (two cell buffers, nothing saved): the same numbers exactly.
    with torch.no_grad(), one_direction_at_a_time():
        if lengths is not None:
            out, (h, cn) = m(pack_padded_sequence(x, lengths, enforce_sorted=c["kind"] == "packed"), hx)
            out = pad_packed_sequence(out, total_length=c["T"])[0]
        else:
            out, (h, cn) = m(x, hx)
            if c["kind"] == "unbatched":
                out, h, cn = out.unsqueeze(1), h.unsqueeze(1), cn.unsqueeze(1)
            elif c["batch_first"]:
                out = out.transpose(0, 1)
    for a, b in zip((out, h, cn), fast[0]):
        assert torch.equal(a, b)


LOWP_CASE = dict(num_layers=2, bidirectional=True, batch_first=False, bias=True, hx=True, kind="packed_unsorted",
                 T=8, B=4, I=16, H=24)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_types_by_lowp_rule(dtype, mode):
    # The error against the float64 oracle may be at most LOWP_FACTOR times that of the oracle itself run in
    # the half type (the textbook cell rounded at every op, as a framework would run it), plus slack.
    c = dict(LOWP_CASE, dtype=dtype)
    m = make_module(c, mode)
    x, hx, lengths = make_inputs(c)
    (fo, fg) = run_fast(m, c, x, hx, lengths)
    (ro, rg) = run_ref(m, c, x, hx, lengths)
    (lo, lg) = run_ref(m, c, x, hx, lengths, compute_dtype=dtype)
    pairs = list(zip(("output", "h_n", "c_n"), fo, ro, lo)) + [(k, fg[k], rg[k], lg[k]) for k in rg]
    for name, f, r, low in pairs:
        assert f.dtype == dtype and torch.isfinite(f).all(), name
        err = (f.double() - r).abs().max().item()
        bound = LOWP_FACTOR * (low.double() - r).abs().max().item() + LOWP_SLACK[dtype]
        assert err <= bound, f"{name}: error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_from_lstm_computes_what_the_lstm_did(mode, dtype):
    c = dict(num_layers=2, bidirectional=True, batch_first=True, bias=True, hx=True, kind="tensor", T=5, B=3, I=4,
             H=9, dtype=dtype)
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 9, 2, batch_first=True, bidirectional=True, dtype=dtype)
    m = PeepholeLSTM.from_lstm(lstm, peephole=mode)
    assert m.peephole == mode and m.training and m.weight_ih_l0.dtype == dtype
    for name, p in m.named_parameters():
        if name.startswith(("weight_ci", "weight_cf", "weight_co")):
            assert p.shape == ((9,) if mode == "diagonal" else (9, 9)) and not p.any(), name
        else:
            assert torch.equal(p, lstm.get_parameter(name)), name
    x, hx, _ = make_inputs(c)
    (po, pg) = run_fast(m, c, x, hx, None)
    (lo, lg) = run_fast(lstm, c, x, hx, None)
    for a, b in zip(po, lo):
        torch.testing.assert_close(a, b, **TOL[dtype])
    for name in lg:
        torch.testing.assert_close(pg[name], lg[name], **TOL[dtype], msg=name)
    # Adding a zero peephole term is exact, but FastLSTM's CPU pointwise runs ISA-specific at::vec code (Sleef
    # in float64, ATen's exp_u20 in float32: csrc/cpu/pointwise_impl.h) that the peephole kernels do not share
    # yet, so the two agree to the dtype's tolerance rather than to the bit.
    (fo, fg) = run_fast(fastlstm.FastLSTM.from_lstm(lstm), c, x, hx, None)
    same = (lambda a, b: torch.allclose(a, b, **TOL[dtype]))
    for a, b in zip(po, fo):
        assert same(a, b)
    for name in fg:
        assert same(pg[name], fg[name]), name
    # ...and the peepholes do get a gradient, so training moves them off zero.
    assert all(pg[n].abs().sum() > 0 for n in pg if n.startswith("weight_c"))


def test_from_lstm_rejects_projections():
    with pytest.raises(ValueError, match="proj_size"):
        PeepholeLSTM.from_lstm(nn.LSTM(3, 5, proj_size=2))


@pytest.mark.parametrize("mode", MODES)
def test_parameters_names_shapes_init(mode):
    m = PeepholeLSTM(3, 16, num_layers=2, bidirectional=True, peephole=mode)
    ref = nn.LSTM(3, 16, num_layers=2, bidirectional=True)
    lstm_shapes = {n: p.shape for n, p in ref.named_parameters()}
    peep = (16,) if mode == "diagonal" else (16, 16)
    expected = dict(lstm_shapes)
    for layer in range(2):
        for sfx in ("", "_reverse"):
            for kind in ("weight_ci", "weight_cf", "weight_co"):
                expected[f"{kind}_l{layer}{sfx}"] = torch.Size(peep)
    assert {n: p.shape for n, p in m.named_parameters()} == expected
    bound = 1 / 16 ** 0.5
    for n, p in m.named_parameters():
        assert p.abs().max() <= bound and p.std() > bound / 4, n  # U(-1/sqrt(H), 1/sqrt(H)), not zeros
    # state_dict round trip into a fresh module
    m2 = PeepholeLSTM(3, 16, num_layers=2, bidirectional=True, peephole=mode)
    m2.load_state_dict(m.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))
    assert repr(m) == f"PeepholeLSTM(3, 16, num_layers=2, bidirectional=True, peephole='{mode}')"
    assert not isinstance(m, nn.LSTM)
    assert not any(n.startswith("bias") for n, _ in PeepholeLSTM(3, 4, bias=False).named_parameters())


@pytest.mark.parametrize("mode", MODES)
def test_dropout_between_layers(mode):
    torch.manual_seed(0)
    m = PeepholeLSTM(3, 6, num_layers=2, dropout=1.0, peephole=mode)
    x = torch.randn(4, 2, 3)
    # dropout=1 zeroes everything layer 1 passes to layer 2: the same as layer 2 ignoring its input.
    out_train = m.train()(x)[0]
    with torch.no_grad():
        m.weight_ih_l1.zero_()
    out_zero_input = m.eval()(x)[0]
    torch.testing.assert_close(out_train, out_zero_input, **TOL[F32])
    # p=0.5: random in training, reproducible by seed, absent in eval.
    m = PeepholeLSTM(3, 6, num_layers=2, dropout=0.5, peephole=mode).train()
    torch.manual_seed(1)
    a = m(x)[0]
    torch.manual_seed(1)
    b = m(x)[0]
    assert torch.equal(a, b) and not torch.allclose(a, m.eval()(x)[0])


def test_backward_in_eval_mode_and_without_hx_grad():
    m = PeepholeLSTM(3, 5, peephole="full").eval()
    x = torch.randn(4, 2, 3, requires_grad=True)
    out, (h, c) = m(x)
    (out.sum() + c.sum()).backward()
    assert x.grad is not None and m.weight_co_l0.grad is not None and m.weight_co_l0.grad.abs().sum() > 0


def _layer_args(mode, T=3, B=2, I=3, H=2, dtype=F64, lengths=True, reverse=False, requires_grad=True):
    g = torch.Generator().manual_seed(3)
    peep = (H,) if mode == "diagonal" else (H, H)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=F64).to(dtype).requires_grad_(requires_grad)
    args = [r(T, B, I), r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H), r(*peep), r(*peep), r(*peep),
            torch.tensor([T, 1][:B]) if lengths else None, reverse]
    return args


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
def test_gradcheck(mode, reverse, lengths):
    args = _layer_args(mode, lengths=lengths, reverse=reverse)
    tensors, rest = args[:10], args[10:]
    assert torch.autograd.gradcheck(lambda *t: peephole_layer(*t, *rest), tensors)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lengths", [False, True])
def test_opcheck(mode, lengths):
    args = _layer_args(mode, dtype=F32, lengths=lengths, reverse=True, requires_grad=False)
    for name in ("peephole_forward", "peephole_inference"):
        torch.library.opcheck(getattr(torch.ops.fastlstm, name).default, tuple(args))
    out, h_n, c_n, gates, cells = torch.ops.fastlstm.peephole_forward(*args)
    grads = (torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n))
    bargs = (*grads, *args[:5], *args[7:11], out, gates, cells, args[11])
    torch.library.opcheck(torch.ops.fastlstm.peephole_backward.default, bargs)


@pytest.mark.parametrize("mode", MODES)
def test_compile_fullgraph_matches_eager(mode):
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = PeepholeLSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True, peephole=mode)
    x = torch.randn(2, 4, 3)
    hx = (torch.randn(4, 2, 5), torch.randn(4, 2, 5))

    def step(module):
        m.zero_grad(set_to_none=True)
        xl = x.clone().requires_grad_()
        out, (h, c) = module(xl, hx)
        (out.square().sum() + h.sum() + 2 * c.sum()).backward()
        return [out.detach(), h.detach(), c.detach(), xl.grad] + [p.grad for p in m.parameters()]

    eager = step(m)
    # aot_eager: Dynamo (fullgraph) and AOT autograd through the fake kernels, without Inductor's C++ build.
    compiled = step(torch.compile(m, fullgraph=True, backend="aot_eager"))
    assert len(compiled) == len(eager) and all(g is not None for g in compiled)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, **TOL[F32])


@pytest.mark.slow
def test_inductor_batch_first_forward_backward():
    # Regression: the peephole fakes once used empty_like, which copies a transposed (batch_first) input's
    # strides; Inductor trusts the fake's strides, and the real backward op's contiguous result then failed
    # its stride assertion. ~30 s of Inductor codegen, hence slow; tests/test_cell_ops.py checks the cause
    # (fake vs real strides) quickly for every op.
    import torch._inductor.config
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = PeepholeLSTM(3, 5, batch_first=True)
    x = torch.randn(2, 4, 3, requires_grad=True)
    with torch._inductor.config.patch(force_disable_caches=True):
        out, (h, c) = torch.compile(m, fullgraph=True)(x)
        (out.sum() + h.sum()).backward()
    grad = x.grad
    x.grad = None
    out_e, (h_e, c_e) = m(x)
    (out_e.sum() + h_e.sum()).backward()
    torch.testing.assert_close(out, out_e, **TOL[F32])
    torch.testing.assert_close(grad, x.grad, **TOL[F32])
    torch._dynamo.reset()


# ------------------------------------------ errors: nn.LSTM's own ------------------------------------------

def _raised(fn):
    with pytest.raises(Exception) as e:
        fn()
    return type(e.value), str(e.value)


@pytest.mark.parametrize("kwargs", [dict(bias=1), dict(batch_first="yes"), dict(dropout=1.5), dict(dropout=True),
                                    dict(input_size=0), dict(hidden_size=0), dict(num_layers=0),
                                    dict(input_size=2.0), dict(hidden_size=2.0)])
def test_constructor_errors_match_nn_lstm(kwargs):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    assert _raised(lambda: PeepholeLSTM(**args)) == _raised(lambda: nn.LSTM(**args))


def test_constructor_warns_and_checks_peephole():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        PeepholeLSTM(3, 4, dropout=0.5)
    assert any("non-zero dropout expects num_layers greater than 1" in str(x.message) for x in w)
    with pytest.raises(ValueError, match="peephole must be one of"):
        PeepholeLSTM(3, 4, peephole="diag")


BAD_CALLS = {
    "input_size": lambda m: m(torch.randn(4, 2, 5)),
    "4d_input": lambda m: m(torch.randn(4, 2, 3, 1)),
    "dtype": lambda m: m(torch.randn(4, 2, 3, dtype=F64)),
    "h0_shape": lambda m: m(torch.randn(4, 2, 3), (torch.randn(2, 3, 4), torch.randn(2, 2, 4))),
    "c0_shape": lambda m: m(torch.randn(4, 2, 3), (torch.randn(2, 2, 4), torch.randn(2, 2, 5))),
    "hx_dims_batched": lambda m: m(torch.randn(4, 2, 3), (torch.randn(2, 4), torch.randn(2, 4))),
    "hx_dims_unbatched": lambda m: m(torch.randn(4, 3), (torch.randn(2, 1, 4), torch.randn(2, 1, 4))),
}


def test_hx_dtype_error_matches_fastlstm():
    # nn.LSTM on the CPU reports this one from oneDNN ("get_mkldnn_dtype: unsupported data type"); FastLSTM
    # gives ATen's message, and so does PeepholeLSTM.
    def call(m):
        return m(torch.randn(4, 2, 3), (torch.randn(2, 2, 4, dtype=F64), torch.randn(2, 2, 4)))
    err = _raised(lambda: call(PeepholeLSTM(3, 4, num_layers=2)))
    assert err == _raised(lambda: call(fastlstm.FastLSTM(3, 4, num_layers=2)))
    assert err[0] is RuntimeError and "not the same dtype" in err[1]


@pytest.mark.parametrize("call", list(BAD_CALLS), ids=list(BAD_CALLS))
def test_forward_errors_match_nn_lstm(call):
    m = PeepholeLSTM(3, 4, num_layers=2)
    assert _raised(lambda: BAD_CALLS[call](m)) == _raised(lambda: BAD_CALLS[call](nn.LSTM(3, 4, num_layers=2)))


def test_op_rejects_mismatched_peepholes():
    args = _layer_args("diagonal", dtype=F32, requires_grad=False)
    args[9] = torch.randn(2, 2)  # w_co [H, H] beside [H] ones
    with pytest.raises(RuntimeError, match="must all be"):
        torch.ops.fastlstm.peephole_forward(*args)


# ------------------------------------------ CUDA (when there is one) ------------------------------------------

HAS_PEEPHOLE_CUDA = torch.cuda.is_available() and fastlstm.peephole._HAS["cuda"]


@pytest.mark.skipif(not HAS_PEEPHOLE_CUDA, reason="no CUDA device, or fastlstm built without CUDA kernels")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("kind", ["tensor", "packed_unsorted"])
def test_cuda_matches_oracle(mode, dtype, kind):
    c = dict(num_layers=2, bidirectional=True, batch_first=False, bias=True, hx=True, kind=kind, T=6, B=5, I=17,
             H=37, dtype=dtype)
    m = make_module(c, mode)
    x, hx, lengths = make_inputs(c)
    ref = run_ref(m, c, x, hx, lengths)
    m = m.cuda()
    fo, fg = run_fast(m, c, x.cuda(), tuple(t.cuda() for t in hx), lengths)
    assert fo[0].is_cuda and fg["weight_co_l1_reverse"].is_cuda
    fast = ([t.cpu() for t in fo], {k: v.cpu() for k, v in fg.items()})
    compare(fast, ref, TOL[dtype], f"cuda {mode} {kind}")


@pytest.mark.skipif(not HAS_PEEPHOLE_CUDA, reason="no CUDA device, or fastlstm built without CUDA kernels")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cuda_half_types_by_lowp_rule(dtype, mode):
    # test_half_types_by_lowp_rule on the GPU: the same bound, with both oracles (float64 and the half type)
    # run on the CPU from the same rounded parameters and inputs.
    c = dict(LOWP_CASE, dtype=dtype)
    m = make_module(c, mode)
    x, hx, lengths = make_inputs(c)
    (ro, rg) = run_ref(m, c, x, hx, lengths)
    (lo, lg) = run_ref(m, c, x, hx, lengths, compute_dtype=dtype)
    m = m.cuda()
    (fo, fg) = run_fast(m, c, x.cuda(), tuple(t.cuda() for t in hx), lengths)
    assert fo[0].is_cuda
    pairs = list(zip(("output", "h_n", "c_n"), fo, ro, lo)) + [(k, fg[k], rg[k], lg[k]) for k in rg]
    for name, f, r, low in pairs:
        f = f.cpu()
        assert f.dtype == dtype and torch.isfinite(f).all(), name
        err = (f.double() - r).abs().max().item()
        bound = LOWP_FACTOR * (low.double() - r).abs().max().item() + LOWP_SLACK[dtype]
        assert err <= bound, f"{name}: error {err:.3g} > {bound:.3g}"
