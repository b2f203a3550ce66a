"""LayerNormLSTM (issue 10 item 4) against its oracle, fastlstm.reference.layernorm_lstm_ref (a plain float64
loop whose gradients come from autograd): outputs, h_n, c_n and the gradients of the input, h0, c0 and every
parameter (layer norms included), over every flag; float32 to 4x the LSTM's float32 tolerance; half types by the
low-precision rule; gradcheck and opcheck on the ops; torch.compile; nn.LSTM's errors; parameter names."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastlstm
from conftest import LN_TOL, LOWP_FACTOR, LOWP_SLACK, TOL, max_abs_diff, one_direction_at_a_time, record_error
from fastlstm import LayerNormLSTM
from fastlstm.ops import layernorm_lstm_layer
from fastlstm.reference import layernorm_lstm_ref, layernorm_module_params

F32, F64 = torch.float32, torch.float64
PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "layernorm_ih_weight", "layernorm_ih_bias",
               "layernorm_hh_weight", "layernorm_hh_bias", "layernorm_c_weight", "layernorm_c_bias")

# (num_layers, bidirectional, batch_first, bias, hx, kind, dtype): every pair of binary flag values meets,
# every input kind meets each flag value, both dtypes meet every kind.
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
# The awkward sizes: T=1, B=1, H=1 (every layer norm over H is then exactly its shift), I != H, and H wide
# enough for several SIMD vectors plus a tail.
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


def make_module(c, dtype=None, eps=1e-5):
    """A LayerNormLSTM whose gains and shifts are random too (at their initial 1 and 0 a swapped or missing
    gain or shift would go unseen)."""
    torch.manual_seed(0)
    m = LayerNormLSTM(c["I"], c["H"], c["num_layers"], c["bias"], c["batch_first"], 0.0, c["bidirectional"],
                      eps=eps, dtype=dtype or c["dtype"])
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("layernorm_"):
                base = 1.0 if "_weight_" in name else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=g, dtype=F64))
    return m


def loss_weights(c, dtype):
    g = torch.Generator().manual_seed(1)
    D = 2 if c["bidirectional"] else 1
    T, B, H = c["T"], 1 if c["kind"] == "unbatched" else c["B"], c["H"]
    shapes = [(T, B, D * H), (c["num_layers"] * D, B, H), (c["num_layers"] * D, B, H)]
    return [torch.randn(s, generator=g, dtype=F64).to(dtype) for s in shapes]


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
        out, (h, cn) = m(pack_padded_sequence(x, lengths, enforce_sorted=c["kind"] == "packed"), hx)
        out = pad_packed_sequence(out, total_length=c["T"])[0]
    else:
        out, (h, cn) = m(x, hx)
        if c["kind"] == "unbatched":
            out, h, cn = out.unsqueeze(1), h.unsqueeze(1), cn.unsqueeze(1)
        elif c["batch_first"]:
            out = out.transpose(0, 1)
    outs = [out, h, cn]
    sum((o * w).sum() for o, w in zip(outs, loss_weights(c, out.dtype))).backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads.update({k: p.grad for k, p in m.named_parameters()})
    return [o.detach() for o in outs], grads


def run_ref(m, c, x, hx, lengths, compute_dtype=F64):
    """The oracle on leaf copies of the same inputs and parameters (in compute_dtype); as run_fast returns."""
    dt = compute_dtype
    xl = x.detach().to(dt).requires_grad_()
    leaves = {"input": xl}
    xt = xl.unsqueeze(1) if c["kind"] == "unbatched" else (
        xl.transpose(0, 1) if c["batch_first"] and c["kind"] == "tensor" else xl)
    hxt = None
    if hx is not None:
        leaves["h0"], leaves["c0"] = (t.detach().to(dt).requires_grad_() for t in hx)
        hxt = (leaves["h0"], leaves["c0"])
        if c["kind"] == "unbatched":
            hxt = tuple(t.unsqueeze(1) for t in hxt)
    params = []
    D = 2 if c["bidirectional"] else 1
    for k, tup in enumerate(layernorm_module_params(m)):
        sfx = f"_l{k // D}" + ("_reverse" if k % D else "")
        leaf_tup = []
        for kind, p in zip(PARAM_KINDS, tup):
            if p is not None:
                p = leaves[kind + sfx] = p.detach().to(dt).requires_grad_()
            leaf_tup.append(p)
        params.append(tuple(leaf_tup))
    out, (h, cn) = layernorm_lstm_ref(xt, hxt, params, c["num_layers"], c["bidirectional"], lengths, eps=m.eps,
                                      compute_dtype=dt)
    outs = [out, h, cn]
    sum((o * w).sum() for o, w in zip(outs, loss_weights(c, dt))).backward()
    return [o.detach() for o in outs], {k: v.grad for k, v in leaves.items()}


def compare(fast, ref, tol, what):
    (fo, fg), (ro, rg) = fast, ref
    label = f"{fo[0].dtype} LayerNormLSTM vs float64 oracle"
    for name, a, b in list(zip(("output", "h_n", "c_n"), fo, ro)) + [(k, fg[k], rg[k]) for k in rg]:
        if a is not None:
            record_error(label, max_abs_diff(a, b), f"{name}, {what}")
    for name, a, b in zip(("output", "h_n", "c_n"), fo, ro):
        torch.testing.assert_close(a, b.to(a.dtype), **tol, msg=lambda msg, n=name: f"{what} {n}: {msg}")
    assert fg.keys() == rg.keys()
    for name in rg:
        assert fg[name] is not None, f"no gradient for {name}"
        torch.testing.assert_close(fg[name], rg[name].to(fg[name].dtype), **tol,
                                   msg=lambda msg, n=name: f"{what} grad {n}: {msg}")


# --------------------------------------------- the oracle itself ---------------------------------------------

def test_oracle_cell_is_the_papers():
    # One step written out from the spec with torch.nn.functional.layer_norm, independently of the oracle.
    g = torch.Generator().manual_seed(0)
    B, I, H = 3, 4, 5
    r = (lambda *s: torch.randn(*s, generator=g, dtype=F64))  # noqa: E731
    x, h, c = r(B, I), r(B, H), r(B, H)
    w_ih, w_hh, b_ih, b_hh = r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H)
    ln = [r(4 * H), r(4 * H), r(4 * H), r(4 * H), r(H), r(H)]
    F = torch.nn.functional
    pre = (F.layer_norm(x @ w_ih.T, (4 * H,), ln[0], ln[1], 1e-5) + F.layer_norm(h @ w_hh.T, (4 * H,), ln[2], ln[3], 1e-5)
           + b_ih + b_hh)
    i, f, gg, o = pre.chunk(4, 1)
    c1 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
    h1 = torch.sigmoid(o) * torch.tanh(F.layer_norm(c1, (H,), ln[4], ln[5], 1e-5))
    out, hn, cn = fastlstm.reference.layernorm_lstm_layer_ref(x[None], h, c, w_ih, w_hh, b_ih, b_hh, *ln)
    torch.testing.assert_close(out[0], h1, **TOL[F64])
    torch.testing.assert_close(hn, h1, **TOL[F64])
    torch.testing.assert_close(cn, c1, **TOL[F64])  # c_n is the state before its layer norm


# ------------------------------------------- parity with the oracle -------------------------------------------

@pytest.mark.parametrize("c", CASES, ids=[case_id(c) for c in CASES])
def test_parity_with_oracle(c):
    m = make_module(c)
    x, hx, lengths = make_inputs(c)
    fast = run_fast(m, c, x, hx, lengths)
    compare(fast, run_ref(m, c, x, hx, lengths), LN_TOL[c["dtype"]], case_id(c))
    # Without autograd the inference op runs: the same numbers exactly.
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


def test_eps_reaches_the_op():
    # A large eps changes the result, and the module's eps is what the oracle is given.
    c = dict(CASES[0], dtype=F64)
    x, hx, lengths = make_inputs(c)
    m = make_module(c, eps=0.5)
    compare(run_fast(m, c, x, hx, lengths), run_ref(m, c, x, hx, lengths), TOL[F64], "eps=0.5")
    assert not torch.allclose(run_fast(make_module(c), c, x, hx, lengths)[0][0],
                              run_fast(m, c, x, hx, lengths)[0][0])


LOWP_CASE = dict(num_layers=2, bidirectional=True, batch_first=False, bias=True, hx=True, kind="packed_unsorted",
                 T=8, B=4, I=16, H=24)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_types_by_lowp_rule(dtype):
    # The error against the float64 oracle may be at most LOWP_FACTOR times that of the oracle itself run in
    # the half type (the textbook cell rounded at every op, as a framework would run it), plus slack.
    c = dict(LOWP_CASE, dtype=dtype)
    m = make_module(c)
    x, hx, lengths = make_inputs(c)
    (fo, fg) = run_fast(m, c, x, hx, lengths)
    (ro, rg) = run_ref(m, c, x, hx, lengths)
    (lo, lg) = run_ref(m, c, x, hx, lengths, compute_dtype=dtype)
    pairs = list(zip(("output", "h_n", "c_n"), fo, ro, lo)) + [(k, fg[k], rg[k], lg[k]) for k in rg]
    for name, f, r, low in pairs:
        assert f.dtype == dtype and torch.isfinite(f).all(), name
        err = (f.double() - r).abs().max().item()
        own = (low.double() - r).abs().max().item()
        record_error(f"{dtype} LayerNormLSTM vs float64 oracle", err, name)
        record_error(f"{dtype} layernorm oracle in {dtype} vs float64", own, name)
        bound = LOWP_FACTOR * own + LOWP_SLACK[dtype]
        assert err <= bound, f"{name}: error {err:.3g} > {bound:.3g}"


# ------------------------------------------------- the ops -------------------------------------------------

def _layer_args(T=3, B=2, I=3, H=2, dtype=F64, lengths=True, reverse=False, bias=True, requires_grad=True):
    g = torch.Generator().manual_seed(3)

    def r(*s, base=0.0):
        return (base + torch.randn(*s, generator=g, dtype=F64)).to(dtype).requires_grad_(requires_grad)
    G = 4 * H
    return [r(T, B, I), r(B, H), r(B, H), r(G, I), r(G, H), r(G) if bias else None, r(G) if bias else None,
            r(G, base=1.0), r(G), r(G, base=1.0), r(G), r(H, base=1.0), r(H),
            torch.tensor([T, 1][:B]) if lengths else None, reverse, 1e-5]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_op(reverse, lengths, bias):
    # Through the forward op itself (its autograd is registered on it) and through the layer function.
    args = _layer_args(lengths=lengths, reverse=reverse, bias=bias)
    tensors, rest = args[:13], args[13:]
    op = torch.ops.fastlstm.layernorm_lstm_forward.default
    assert torch.autograd.gradcheck(lambda *t: op(*t, *rest)[:3], tensors)
    assert torch.autograd.gradcheck(lambda *t: layernorm_lstm_layer(*t, *rest), tensors)


def _layer_grads(args):
    """Every gradient of a weighted loss over the layer's three results (the op's backward, or the oracle's)."""
    out = layernorm_lstm_layer(*args)
    weights = [torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o) for o in out]
    return torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), args[:13])


@pytest.mark.parametrize("lengths", [False, True])
def test_parameter_gradients_over_many_row_chunks(lengths):
    """The layer norms' parameter gradients are summed in fixed chunks of rows (LnParamGrads): with T*B = 91
    rows (two whole chunks and a part), float64 against the oracle's autograd, and float32 bit for bit the
    same on 1 and 2 threads."""
    args = _layer_args(T=13, B=7, I=5, H=24, lengths=False)
    if lengths:
        args[13] = torch.tensor([13, 13, 11, 8, 8, 3, 1])
    got = _layer_grads(args)
    ref = fastlstm.reference.layernorm_lstm_layer_ref
    out = ref(*args[:13], lengths=args[13], reverse=False)
    weights = [torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o) for o in out]
    want = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), args[:13])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[F64])
    args32 = [a.detach().float().requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a
              for a in args]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _layer_grads(args32)
        torch.set_num_threads(2)
        two = _layer_grads(args32)
    finally:
        torch.set_num_threads(old)
    for a, b in zip(one[5:], two[5:]):  # the biases' and the six layer-norm parameters'
        assert torch.equal(a, b)


def test_layer_matches_oracle_and_keeps_state_past_length():
    args = _layer_args(T=4, B=3, lengths=False, requires_grad=False)
    lengths = torch.tensor([4, 0, 2])
    for reverse in (False, True):
        got = layernorm_lstm_layer(*args[:13], lengths, reverse, 1e-5)
        want = fastlstm.reference.layernorm_lstm_layer_ref(*args[:13], lengths=lengths, reverse=reverse)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **TOL[F64])
        assert torch.equal(got[1][1], args[1][1]) and torch.equal(got[2][1], args[2][1]), "length 0 keeps h0, c0"


@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(lengths, requires_grad):
    args = tuple(_layer_args(dtype=F32, lengths=lengths, reverse=True, requires_grad=requires_grad))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "an autograd kernel was not registered"
        # torch 2.14's own fake-tensor conversion inside opcheck reads .grad of non-leaf tensors and warns;
        # that is torch's, not ours (torch 2.13 does not warn).
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
        for name in ("layernorm_lstm_forward", "layernorm_lstm_inference"):
            torch.library.opcheck(getattr(torch.ops.fastlstm, name).default, args)
        plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        out, h_n, c_n, gates, cells, norm_ih, norm_hh, stats = torch.ops.fastlstm.layernorm_lstm_forward(*plain)
        grads = (torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n))
        bargs = (*grads, *plain[:5], plain[7], plain[9], plain[11], plain[12], plain[13], out, gates, cells, norm_ih,
                 norm_hh, stats, plain[14], plain[15])
        torch.library.opcheck(torch.ops.fastlstm.layernorm_lstm_backward.default, bargs)


def test_saved_tensors_have_the_schema_dtypes():
    for dtype in (F32, F64, torch.bfloat16):
        args = _layer_args(dtype=dtype, requires_grad=False)
        out, h_n, c_n, gates, cells, norm_ih, norm_hh, stats = torch.ops.fastlstm.layernorm_lstm_forward(*args)
        acc = F32 if dtype == torch.bfloat16 else dtype
        T, B, H = 3, 2, 2
        assert [(t.shape, t.dtype) for t in (out, h_n, c_n, gates, cells, norm_ih, norm_hh, stats)] == [
            ((T, B, H), dtype), ((B, H), dtype), ((B, H), dtype), ((T, B, 4 * H), dtype), ((T, B, H), acc),
            ((T, B, 4 * H), dtype), ((T, B, 4 * H), dtype), ((T, B, 4), acc)]


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    c = dict(num_layers=2, bidirectional=True, batch_first=True, bias=True, hx=True, kind="tensor", T=4, B=2, I=3,
             H=5, dtype=F32)
    m = make_module(c)
    x, hx, _ = make_inputs(c)

    def step(module):
        m.zero_grad(set_to_none=True)
        xl = x.clone().requires_grad_()
        out, (h, cn) = module(xl, hx)
        (out.square().sum() + h.sum() + 2 * cn.sum()).backward()
        return [out.detach(), h.detach(), cn.detach(), xl.grad] + [p.grad for p in m.parameters()]

    eager = step(m)
    # aot_eager: Dynamo (fullgraph) and AOT autograd through the fake kernels, without Inductor's C++ build.
    compiled = step(torch.compile(m, fullgraph=True, backend="aot_eager"))
    assert len(compiled) == len(eager) and all(g is not None for g in compiled)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, **TOL[F32])


# ------------------------------------------- module and parameters -------------------------------------------

def test_parameters_names_shapes_init():
    m = LayerNormLSTM(3, 16, num_layers=2, bidirectional=True)
    ref = nn.LSTM(3, 16, num_layers=2, bidirectional=True)
    expected = [(n, p.shape) for n, p in ref.named_parameters()]
    names = list(m.state_dict())
    # nn.LSTM's names first within each layer and direction, then the layer norms'.
    for layer in range(2):
        for sfx in ("", "_reverse"):
            own = [f"{k}_l{layer}{sfx}" for k in PARAM_KINDS]
            assert names[:len(own)] == own
            names = names[len(own):]
            for k in PARAM_KINDS[4:]:
                assert m.get_parameter(f"{k}_l{layer}{sfx}").shape == ((16,) if "_c_" in k else (64,))
    assert not names
    shapes = {n: p.shape for n, p in m.named_parameters()}
    assert all(shapes[n] == s for n, s in expected)
    bound = 1 / 16 ** 0.5
    for n, p in m.named_parameters():
        if n.startswith("layernorm_"):
            assert torch.equal(p, torch.ones_like(p) if "_weight_" in n else torch.zeros_like(p)), n
        else:
            assert p.abs().max() <= bound and p.std() > bound / 4, n  # nn.LSTM's U(-1/sqrt(H), 1/sqrt(H))
    no_bias = [n for n, _ in LayerNormLSTM(3, 4, bias=False).named_parameters()]
    assert "bias_ih_l0" not in no_bias and "bias_hh_l0" not in no_bias and "layernorm_ih_bias_l0" in no_bias
    m2 = LayerNormLSTM(3, 16, num_layers=2, bidirectional=True)
    m2.load_state_dict(m.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))
    assert repr(m) == "LayerNormLSTM(3, 16, num_layers=2, bidirectional=True)"
    assert repr(LayerNormLSTM(3, 4, eps=1e-3)) == "LayerNormLSTM(3, 4, eps=0.001)"
    assert not isinstance(m, nn.LSTM) and LayerNormLSTM(3, 4).eps == 1e-5


def test_from_lstm():
    lstm = nn.LSTM(4, 6, 2, batch_first=True, bidirectional=True, dtype=F64).eval()
    m = LayerNormLSTM.from_lstm(lstm, eps=1e-3)
    assert not m.training and m.batch_first and m.eps == 1e-3 and m.weight_ih_l0.dtype == F64
    for name, p in lstm.named_parameters():
        assert torch.equal(m.get_parameter(name), p), name
    with pytest.raises(ValueError, match="proj_size"):
        LayerNormLSTM.from_lstm(nn.LSTM(3, 5, proj_size=2))


def test_dropout_between_layers():
    torch.manual_seed(0)
    m = LayerNormLSTM(3, 6, num_layers=2, dropout=1.0)
    x = torch.randn(4, 2, 3)
    # dropout=1 zeroes everything layer 1 passes to layer 2: the same as layer 2 ignoring its input.
    out_train = m.train()(x)[0]
    with torch.no_grad():
        m.weight_ih_l1.zero_()
    torch.testing.assert_close(out_train, m.eval()(x)[0], **TOL[F32])


def test_streaming_one_step_at_a_time_equals_whole_sequence():
    # The lean path (one step per call, state carried) against one call over the sequence.
    c = dict(CASES[0], dtype=F32)
    m = make_module(c).eval()
    x = torch.randn(6, 2, 3)
    with torch.no_grad():
        whole, (h, cn) = m(x)
        state, outs = None, []
        for t in range(6):
            o, state = m(x[t:t + 1], state)
            outs.append(o)
    torch.testing.assert_close(torch.cat(outs), whole, **TOL[F32])
    torch.testing.assert_close(state[0], h, **TOL[F32])
    torch.testing.assert_close(state[1], cn, **TOL[F32])


def test_charrnn_has_the_cell():
    from fastlstm.charrnn import CELLS, make_rnn
    rnn, spec = make_rnn("layernorm", "fastlstm", 10, 8, 2, 0.1)
    assert "layernorm" in CELLS and isinstance(rnn, LayerNormLSTM) and spec.n_states == 2
    with pytest.raises(ValueError, match="only with --backend fastlstm"):
        make_rnn("layernorm", "torch", 10, 8, 2, 0.1)


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
    assert _raised(lambda: LayerNormLSTM(**args)) == _raised(lambda: nn.LSTM(**args))


BAD_CALLS = {
    "input_size": lambda m: m(torch.randn(4, 2, 5)),
    "4d_input": lambda m: m(torch.randn(4, 2, 3, 1)),
    "dtype": lambda m: m(torch.randn(4, 2, 3, dtype=F64)),
    "h0_shape": lambda m: m(torch.randn(4, 2, 3), (torch.randn(2, 3, 4), torch.randn(2, 2, 4))),
    "c0_shape": lambda m: m(torch.randn(4, 2, 3), (torch.randn(2, 2, 4), torch.randn(2, 2, 5))),
    "hx_dims_batched": lambda m: m(torch.randn(4, 2, 3), (torch.randn(2, 4), torch.randn(2, 4))),
    "hx_dims_unbatched": lambda m: m(torch.randn(4, 3), (torch.randn(2, 1, 4), torch.randn(2, 1, 4))),
    "three_states": lambda m: m(torch.randn(4, 2, 3), (torch.randn(2, 2, 4),) * 3),
}


@pytest.mark.parametrize("call", list(BAD_CALLS), ids=list(BAD_CALLS))
def test_forward_errors_match_nn_lstm(call):
    # Raised before any op runs.
    m = LayerNormLSTM(3, 4, num_layers=2)
    assert _raised(lambda: BAD_CALLS[call](m)) == _raised(lambda: BAD_CALLS[call](nn.LSTM(3, 4, num_layers=2)))


def test_packed_errors_read_like_unpacked_ones():
    # As FastLSTM's (tests/test_errors.py): nn.LSTM's packed path reports a wrong hx batch from deep inside,
    # so the expected error is nn.LSTM's on the same data unpacked.
    x, hx = torch.randn(4, 2, 3), (torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    packed = pack_padded_sequence(x, torch.tensor([4, 2]))
    assert _raised(lambda: LayerNormLSTM(3, 4, num_layers=2)(packed, hx)) == \
        _raised(lambda: nn.LSTM(3, 4, num_layers=2)(x, hx))


def test_hx_dtype_error_matches_fastlstm():
    # nn.LSTM on the CPU reports this one from oneDNN; FastLSTM gives ATen's message, and so does this module.
    def call(m):
        return m(torch.randn(4, 2, 3), (torch.randn(2, 2, 4, dtype=F64), torch.randn(2, 2, 4)))
    err = _raised(lambda: call(LayerNormLSTM(3, 4, num_layers=2)))
    assert err == _raised(lambda: call(fastlstm.FastLSTM(3, 4, num_layers=2)))


def test_no_kernels_is_an_error_not_a_silent_substitute():
    # 'meta' stands in for a device without kernels: torch has no layer-normalised LSTM to fall back on.
    m = LayerNormLSTM(3, 4, device="meta")
    with pytest.raises(RuntimeError, match="LayerNormLSTM has no kernels for device 'meta'"):
        m(torch.randn(2, 1, 3, device="meta"))
