"""Bad input: FastLSTM raises nn.LSTM's exception type and message, learnt by calling nn.LSTM with the same
bad input; direct calls of torch.ops.fastlstm.* with bad arguments raise RuntimeError, never crash."""
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from conftest import DEVICES, lstm_pair
from fastlstm import FastGRU, FastLSTM, PeepholeLSTM


def raised(fn):
    """The exception fn() raises (the test fails if it raises none)."""
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def assert_same_error(ref_call, fast_call):
    """fast_call raises exactly the type and message that ref_call (nn.LSTM) raises."""
    expected = raised(ref_call)
    with pytest.raises(type(expected), match="^" + re.escape(str(expected)) + "$") as info:
        fast_call()
    assert type(info.value) is type(expected)


def z(*shape, dtype=torch.float32, device="cpu"):
    return torch.zeros(*shape, dtype=dtype, device=device)


# (name, module kwargs, input shape, hx shapes or None): forward calls nn.LSTM rejects.
FORWARD_CASES = [
    ("input size", {}, (4, 2, 7), None),
    ("input size unbatched", {}, (4, 7), None),
    ("input size batch_first", dict(batch_first=True), (2, 4, 7), None),
    ("hidden size h", {}, (4, 2, 3), ((1, 2, 4), (1, 2, 5))),
    ("hidden size c", {}, (4, 2, 3), ((1, 2, 5), (1, 2, 4))),
    ("proj hidden size", dict(proj_size=2), (4, 2, 3), ((1, 2, 5), (1, 2, 5))),
    ("batch mismatch hx", {}, (4, 2, 3), ((1, 3, 5), (1, 3, 5))),
    ("batch mismatch c only", {}, (4, 2, 3), ((1, 2, 5), (1, 3, 5))),
    ("batch mismatch batch_first", dict(batch_first=True), (2, 4, 3), ((1, 4, 5), (1, 4, 5))),
    ("layers mismatch", dict(num_layers=2), (4, 2, 3), ((1, 2, 5), (1, 2, 5))),
    ("directions mismatch", dict(bidirectional=True), (4, 2, 3), ((1, 2, 5), (1, 2, 5))),
    ("1-D input", {}, (3,), None),
    ("4-D input", {}, (1, 4, 2, 3), None),
    ("2-D hx with 3-D input", {}, (4, 2, 3), ((2, 5), (2, 5))),
    ("mixed-D hx with 3-D input", {}, (4, 2, 3), ((1, 2, 5), (2, 5))),
    ("3-D hx with 2-D input", {}, (4, 3), ((1, 1, 5), (1, 1, 5))),
    ("unbatched hx size", {}, (4, 3), ((1, 4), (1, 5))),
    ("zero-length sequence", {}, (0, 2, 3), None),
    ("zero-length sequence batch_first", dict(batch_first=True), (2, 0, 3), None),
    ("zero-length unbatched", {}, (0, 3), None),
    ("three hidden states", {}, (4, 2, 3), ((1, 2, 5), (1, 2, 5), (1, 2, 5))),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,kwargs,xshape,hshapes", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_forward_errors_match_nn_lstm(name, kwargs, xshape, hshapes, device):
    ref, fast = lstm_pair(3, 5, device=device, **kwargs)
    x = torch.randn(xshape, device=device)
    hx = None if hshapes is None else tuple(z(*s, device=device) for s in hshapes)
    assert_same_error(lambda: ref(x, hx), lambda: fast(x, hx))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64])
def test_input_dtype_differs_from_weights(dtype, device):
    ref, fast = lstm_pair(3, 5, device=device)
    x = torch.ones(4, 2, 3, device=device).to(dtype)
    assert_same_error(lambda: ref(x), lambda: fast(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", ["h", "c", "both"])
@pytest.mark.parametrize("proj_size", [0, 2])
def test_hidden_dtype_differs_from_input(which, proj_size, device):
    # nn.LSTM's CPU path reports this as "get_mkldnn_dtype: unsupported data type" or a matmul dtype error;
    # FastLSTM gives the message of ATen's own check (aten/src/ATen/native/RNN.cpp), the one nn.LSTM
    # gives on its native path.
    ref, fast = lstm_pair(3, 5, proj_size=proj_size, device=device)
    x = torch.randn(4, 2, 3, device=device)
    h = z(1, 2, proj_size or 5, device=device, dtype=torch.float64 if which != "c" else torch.float32)
    c = z(1, 2, 5, device=device, dtype=torch.float64 if which != "h" else torch.float32)
    assert isinstance(raised(lambda: ref(x, (h, c))), RuntimeError)
    with pytest.raises(RuntimeError, match=re.escape(
            "Input and hidden tensors are not the same dtype, found input tensor with Float and hidden tensor "
            "with Double")):
        fast(x, (h, c))


def test_input_on_another_device_than_weights():
    ref, fast = lstm_pair(3, 5)
    x = torch.randn(4, 2, 3, device="meta")
    assert_same_error(lambda: ref(x), lambda: fast(x))
    hx = (z(1, 2, 5, device="meta"), z(1, 2, 5, device="meta"))
    assert_same_error(lambda: ref(x, hx), lambda: fast(x, hx))


@pytest.mark.parametrize("which", ["h", "c"])
def test_hidden_on_another_device_than_input(which):
    ref, fast = lstm_pair(3, 5)
    x = torch.randn(4, 2, 3)
    hx = (z(1, 2, 5, device="meta" if which == "h" else "cpu"), z(1, 2, 5, device="meta" if which == "c" else "cpu"))
    assert_same_error(lambda: ref(x, hx), lambda: fast(x, hx))


# Packed input: nn.LSTM's packed path reports these from deep inside (matmul shapes, broadcasting); FastLSTM
# reports them as nn.LSTM does for the same data unpacked. The expected error is nn.LSTM's on the padded
# tensor, so it is still learnt from nn.LSTM, not written here. (Data in another dtype is not among them:
# unpacked, nn.LSTM raises a ValueError, packed a RuntimeError; FastLSTM keeps the packed one's type, see
# test_malformed_packed_sequence_errors_match_torch.)
@pytest.mark.parametrize("case", ["input size", "hx batch"])
def test_packed_errors_read_like_unpacked_ones(case):
    ref, fast = lstm_pair(3, 5)
    x = torch.randn(4, 2, 7 if case == "input size" else 3, dtype=torch.float64 if case == "input dtype" else None)
    hx = (z(1, 3, 5), z(1, 3, 5)) if case == "hx batch" else None
    packed = pack_padded_sequence(x, torch.tensor([4, 2]))
    expected = raised(lambda: ref(x, hx))
    with pytest.raises(type(expected), match="^" + re.escape(str(expected)) + "$"):
        fast(packed, hx)


def _pair(kind, **kwargs):
    torch.manual_seed(0)
    if kind == "FastGRU":
        ref = nn.GRU(3, 5, **kwargs)
        return ref, FastGRU.from_gru(ref)
    ref = nn.LSTM(3, 5, **kwargs)
    return ref, (FastLSTM.from_lstm(ref) if kind == "FastLSTM" else PeepholeLSTM.from_lstm(ref))


def _packed(**changes):
    x = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(1))
    p = pack_padded_sequence(x, torch.tensor([4, 2, 1]))
    parts = dict(data=p.data, batch_sizes=p.batch_sizes, sorted_indices=None, unsorted_indices=None)
    parts.update({k: v(parts[k]) for k, v in changes.items()})
    return PackedSequence(**parts)


# A PackedSequence that pack_padded_sequence cannot make. FastLSTM once ran these padded through its own
# kernels: an exception type nn.LSTM does not raise (float or 2-D batch_sizes), matmul/broadcast messages of
# other shapes, and for extra rows of data past sum(batch_sizes) other numbers than nn.LSTM's.
MALFORMED_PACKED = {
    "batch_sizes float": dict(batch_sizes=lambda b: b.double()),
    "batch_sizes 2-D": dict(batch_sizes=lambda b: b.unsqueeze(0)),
    "batch_sizes int32": dict(batch_sizes=lambda b: b.int()),
    "batch_sizes increasing": dict(batch_sizes=lambda b: b.flip(0)),
    "sum of batch_sizes > rows": dict(data=lambda d: d[:-1]),
    "data 1-D": dict(data=lambda d: d[:, 0]),
    "data 3-D": dict(data=lambda d: d.unsqueeze(1)),
    "data in another dtype": dict(data=lambda d: d.double()),
    "sorted_indices too short": dict(sorted_indices=lambda _: torch.tensor([1, 0])),
}


@pytest.mark.parametrize("kind", ["FastLSTM", "FastGRU", "PeepholeLSTM"])
@pytest.mark.parametrize("bad", list(MALFORMED_PACKED), ids=list(MALFORMED_PACKED))
@pytest.mark.parametrize("with_hx", [False, True])
def test_malformed_packed_sequence_errors_match_torch(kind, bad, with_hx):
    ref, fast = _pair(kind)
    packed = _packed(**MALFORMED_PACKED[bad])
    h = torch.zeros(1, 3, 5)
    hx = None if not with_hx else h if kind == "FastGRU" else (h, h.clone())
    if with_hx and bad == "sorted_indices too short":
        # torch gathers hx by them and reads 3 rows of the 2 it gathered (it may crash: not called here)
        with pytest.raises(RuntimeError, match="^sorted_indices has 2 entries, but the PackedSequence's first "
                                               "batch size is 3$"):
            fast(packed, hx)
        return
    try:
        want = ref(packed, hx)
    except Exception:
        assert_same_error(lambda: ref(packed, hx), lambda: fast(packed, hx))
        return
    # torch runs it (sorted_indices too short, no hx: nothing reads them but the final permutation)
    if kind == "PeepholeLSTM":
        with pytest.raises(ValueError, match="PackedSequence is not one pack_padded_sequence"):
            fast(packed, hx)
        return
    got = fast(packed, hx)
    assert torch.equal(got[0].data, want[0].data)


@pytest.mark.parametrize("kind", ["FastLSTM", "FastGRU"])
def test_extra_rows_past_the_batch_sizes_compute_what_torch_computes(kind):
    # nn.LSTM runs such a PackedSequence and ignores the extra rows; a silent other result is the one
    # outcome a drop-in must not have.
    ref, fast = _pair(kind)
    packed = _packed(data=lambda d: torch.cat([d, d[:2]]))
    want, got = ref(packed), fast(packed)
    assert torch.equal(got[0].data, want[0].data)
    for a, b in zip(got[1] if kind == "FastLSTM" else [got[1]], want[1] if kind == "FastLSTM" else [want[1]]):
        assert torch.equal(a, b)


def test_peephole_refuses_extra_rows_past_the_batch_sizes():
    # torch has no peephole cell to run it with; refusing beats numbers that mean nothing.
    _, fast = _pair("PeepholeLSTM")
    with pytest.raises(ValueError, match="PackedSequence is not one pack_padded_sequence"):
        fast(_packed(data=lambda d: torch.cat([d, d[:2]])))


@pytest.mark.parametrize("kind", ["FastLSTM", "PeepholeLSTM"])
@pytest.mark.parametrize("bad", [b for b in MALFORMED_PACKED if b != "sorted_indices too short"])
@pytest.mark.parametrize("states", ["c has fewer layers", "h has more layers", "c 4-D", "h 2-D"])
def test_malformed_packed_sequence_with_states_torch_would_crash_on(kind, bad, states):
    # torch's packed kernel takes one state per layer from dim 0 without checking: with states like these
    # it reads past an end (SIGSEGV) for some sizes. FastLSTM must never hand it such a call; it gives
    # nn.LSTM's unpacked error for the states instead, learnt from nn.LSTM on a well-formed PackedSequence.
    ref, fast = _pair(kind)
    h, c = {"c has fewer layers": (z(1, 3, 5), z(0, 3, 5)), "h has more layers": (z(2, 3, 5), z(1, 3, 5)),
            "c 4-D": (z(1, 3, 5), z(1, 1, 3, 5)), "h 2-D": (z(3, 5), z(1, 3, 5))}[states]
    expected = raised(lambda: ref(torch.randn(4, 3, 3), (h, c)))  # the same states, unpacked input
    with pytest.raises(type(expected), match="^" + re.escape(str(expected)) + "$"):
        fast(_packed(**MALFORMED_PACKED[bad]), (h, c))


@pytest.mark.parametrize("kind", ["FastLSTM", "PeepholeLSTM"])
@pytest.mark.parametrize("bad_hx", ["tuple of 1", "h only", "(h, None)"])
def test_packed_input_with_a_malformed_hx_raises_what_torch_raises(kind, bad_hx):
    # nn.LSTM's packed path checks no part of hx in Python: its kernel rejects it first (IndexError,
    # TypeError), even when the data is wrong too.
    ref, fast = _pair(kind)
    packed = _packed(data=lambda d: torch.cat([d, d[:, :1]], 1))  # feature size 4, not 3
    h = z(1, 3, 5)
    hx = {"tuple of 1": (h,), "h only": h, "(h, None)": (h, None)}[bad_hx]
    assert_same_error(lambda: ref(packed, hx), lambda: fast(packed, hx))


@pytest.mark.parametrize("kind", ["FastLSTM", "PeepholeLSTM"])
@pytest.mark.parametrize("c_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int64, torch.int32])
def test_c0_of_a_dtype_that_promotes_to_the_input_is_cast(kind, c_dtype):
    # nn.LSTM's native path (float64 here) computes f * c0 by type promotion, so any c0 that promotes to
    # the input's dtype is accepted; FastLSTM once refused it.
    ref, fast = _pair(kind, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    h = torch.randn(1, 2, 5, dtype=torch.float64)
    c = (torch.randn(1, 2, 5) * 3).to(c_dtype)
    want, got = ref(x, (h, c)), fast(x, (h, c))
    assert got[1][1].dtype == want[1][1].dtype == torch.float64
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_c0_cast_where_nn_lstm_takes_onednn():
    # Deliberately more than nn.LSTM: for float32 input on the CPU, nn.LSTM's oneDNN path fails on such a
    # c0 with "get_mkldnn_dtype: unsupported data type" or "could not create a primitive descriptor";
    # FastLSTM casts it, as nn.LSTM's own native path does, and computes what nn.LSTM computes from the cast.
    ref, fast = _pair("FastLSTM")
    x, h = torch.randn(4, 2, 3), torch.randn(1, 2, 5)
    c = (torch.randn(1, 2, 5) * 3).to(torch.int64)
    got, want = fast(x, (h, c)), ref(x, (h, c.float()))
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["FastLSTM", "FastGRU", "PeepholeLSTM"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_hidden_dtype_messages_name_types_as_torch_does(kind, dtype):
    # torch's C++ messages print c10's names (Long, Int, Bool); fastlstm printed int64, int32, bool.
    # float64 input, where nn.LSTM's own check (a matmul on h) has a message at all.
    ref, fast = _pair(kind, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    h = z(1, 2, 5, dtype=dtype)
    hx = h if kind == "FastGRU" else (h, z(1, 2, 5, dtype=torch.float64))
    want = raised(lambda: ref(x, hx))
    got = raised(lambda: fast(x, hx))
    assert type(got) is type(want)
    name = str(want).split("but got ")[1].split(" and")[0]  # nn.LSTM's name for the dtype
    assert name in str(got) and str(dtype).replace("torch.", "") not in str(got)
    if kind == "FastGRU":
        assert str(got) == str(want)


@pytest.mark.parametrize("kind", ["FastLSTM", "FastGRU", "PeepholeLSTM"])
def test_input_on_another_device_than_weights_and_hx(kind):
    # ATen checks the states' devices before the parameters': input on meta with hx on the CPU is a hidden
    # tensor error in nn.LSTM, and fastlstm reported the parameters.
    ref, fast = _pair(kind)
    x = torch.randn(4, 2, 3, device="meta")
    h = z(1, 2, 5)
    hx = h if kind == "FastGRU" else (h, h.clone())
    assert_same_error(lambda: ref(x, hx), lambda: fast(x, hx))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("other", [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.bool])
def test_gru_hidden_dtype_message_matches_nn_gru(bias, other):
    # nn.GRU's message is its first recurrent GEMM's: addmm's (c10 names) with biases, mm's (C++ names:
    # "c10::Half != float") without.
    ref, fast = _pair("FastGRU", bias=bias)
    x, h = torch.randn(4, 2, 3), z(1, 2, 5, dtype=other)
    assert_same_error(lambda: ref(x, h), lambda: fast(x, h))


@pytest.mark.parametrize("other", [torch.float64, torch.int64])
def test_gru_zero_length_input_is_reported_before_the_hidden_dtype(other):
    # nn.GRU reports the empty sequence before its first recurrent GEMM sees the hx dtype.
    ref, fast = _pair("FastGRU")
    x = torch.randn(0, 2, 3)
    h = z(1, 2, 5, dtype=other)
    assert_same_error(lambda: ref(x, h), lambda: fast(x, h))


# Constructor arguments: FastLSTM is nn.LSTM's constructor, so every check and message must be the same.
CTOR_CASES = [
    ((0, 5), {}), ((3, 0), {}), ((-1, 5), {}), ((3, -2), {}), ((3, 5, 0), {}), ((3, 5, -1), {}),
    ((3.0, 5), {}), ((3, 5.0), {}), ((3, 5, 1.5), {}),
    ((3, 5), dict(proj_size=5)), ((3, 5), dict(proj_size=7)), ((3, 5), dict(proj_size=-1)),
    ((3, 5), dict(proj_size=1.0)),
    ((3, 5), dict(bias=1)), ((3, 5), dict(batch_first="yes")), ((3, 5), dict(bias=None)),
    ((3, 5), dict(dropout=1.5)), ((3, 5), dict(dropout=-0.1)), ((3, 5), dict(dropout=True)),
    ((3, 5), dict(dropout="0.5")),
    ((3, 5), dict(dtype=torch.int64)),
]


@pytest.mark.parametrize("args,kwargs", CTOR_CASES, ids=[f"{a}-{k}" for a, k in CTOR_CASES])
def test_constructor_errors_match_nn_lstm(args, kwargs):
    assert_same_error(lambda: nn.LSTM(*args, **kwargs), lambda: FastLSTM(*args, **kwargs))


def test_constructor_dropout_warning_matches_nn_lstm():
    with warnings.catch_warnings(record=True) as ref_w:
        warnings.simplefilter("always")
        nn.LSTM(3, 5, dropout=0.5)
    with warnings.catch_warnings(record=True) as fast_w:
        warnings.simplefilter("always")
        FastLSTM(3, 5, dropout=0.5)
    assert ref_w and [str(w.message) for w in fast_w] == [str(w.message) for w in ref_w]


# ----------------------------------------------------------------------------------------------------------
# Direct calls of the ops: bad shapes, dtypes and layouts raise RuntimeError (and do not crash pytest).

T, B, I, H, P = 3, 2, 4, 5, 3


def good_args(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)
    return dict(input=r(T, B, I), h0=r(B, P), c0=r(B, H), w_ih=r(4 * H, I), w_hh=r(4 * H, P), b_ih=r(4 * H),
                b_hh=r(4 * H), w_hr=r(P, H), lengths=torch.tensor([3, 1]), reverse=False)


FORWARD_OP_BAD = {
    "2-D input": dict(input=torch.randn(T, B, dtype=torch.float64)),
    "input size": dict(input=torch.randn(T, B, I + 1, dtype=torch.float64)),
    "h0 shape": dict(h0=torch.randn(B, P + 1, dtype=torch.float64)),
    "h0 3-D": dict(h0=torch.randn(B, P, 1, dtype=torch.float64)),
    "c0 batch": dict(c0=torch.randn(B + 1, H, dtype=torch.float64)),
    "w_ih rows": dict(w_ih=torch.randn(4 * H + 1, I, dtype=torch.float64)),
    "w_ih 3-D": dict(w_ih=torch.randn(4 * H, I, 1, dtype=torch.float64)),
    "w_hh cols": dict(w_hh=torch.randn(4 * H, P + 1, dtype=torch.float64)),
    "bias size": dict(b_ih=torch.randn(4 * H + 1, dtype=torch.float64)),
    "bias 2-D": dict(b_hh=torch.randn(4 * H, 1, dtype=torch.float64)),
    "w_hr cols": dict(w_hr=torch.randn(P, H + 1, dtype=torch.float64)),
    "w_hr 1-D": dict(w_hr=torch.randn(P, dtype=torch.float64)),
    "weight dtype": dict(w_hh=torch.randn(4 * H, P)),
    "bias dtype": dict(b_ih=torch.randn(4 * H)),
    "hidden dtype": dict(c0=torch.randn(B, H)),
    "integer input": dict(input=torch.ones(T, B, I, dtype=torch.int32)),
    "lengths dtype": dict(lengths=torch.tensor([3.0, 1.0])),
    "lengths size": dict(lengths=torch.tensor([3, 1, 2])),
}


@pytest.mark.parametrize("op", ["lstm_forward", "lstm_inference"])
@pytest.mark.parametrize("bad", list(FORWARD_OP_BAD), ids=list(FORWARD_OP_BAD))
def test_forward_ops_reject_bad_arguments(op, bad):
    args = good_args()
    getattr(torch.ops.fastlstm, op)(**args)  # the good call works
    args.update(FORWARD_OP_BAD[bad])
    with pytest.raises(RuntimeError):
        getattr(torch.ops.fastlstm, op)(**args)


def backward_args():
    a = good_args()
    out, h_n, c_n, gates, cells = torch.ops.fastlstm.lstm_forward(**a)
    return dict(grad_output=torch.randn_like(out), grad_h_n=torch.randn_like(h_n), grad_c_n=torch.randn_like(c_n),
                input=a["input"], h0=a["h0"], c0=a["c0"], w_ih=a["w_ih"], w_hh=a["w_hh"], w_hr=a["w_hr"],
                lengths=a["lengths"], output=out, gates=gates, cells=cells, reverse=False)


BACKWARD_OP_BAD = {
    "grad_output shape": lambda a: dict(grad_output=a["grad_output"][:, :, :-1]),
    "grad_output dtype": lambda a: dict(grad_output=a["grad_output"].float()),
    "grad_h_n shape": lambda a: dict(grad_h_n=a["grad_h_n"].reshape(-1)),
    "grad_c_n batch": lambda a: dict(grad_c_n=torch.randn(B + 1, H, dtype=torch.float64)),
    "output shape": lambda a: dict(output=a["output"][:-1]),
    # wrong-shaped saved tensors once read past the end of their buffers (a crash, not an error)
    "gates wider": lambda a: dict(gates=torch.randn(T, B, 4 * H + 4, dtype=torch.float64)),
    "gates narrower": lambda a: dict(gates=torch.randn(T, B, 4 * H - 4, dtype=torch.float64)),
    "gates batch": lambda a: dict(gates=torch.randn(T, B + 1, 4 * H, dtype=torch.float64)),
    "gates dtype": lambda a: dict(gates=a["gates"].float()),
    "cells wider": lambda a: dict(cells=torch.randn(T, B, H + 1, dtype=torch.float64)),
    "cells shorter": lambda a: dict(cells=a["cells"][:-1]),
    "cells 2-D": lambda a: dict(cells=a["cells"].reshape(T, -1)),
    "cells dtype": lambda a: dict(cells=a["cells"].float()),
    "w_hh shape": lambda a: dict(w_hh=torch.randn(4 * H, P + 2, dtype=torch.float64)),
}


@pytest.mark.parametrize("bad", list(BACKWARD_OP_BAD), ids=list(BACKWARD_OP_BAD))
def test_backward_op_rejects_bad_arguments(bad):
    args = backward_args()
    torch.ops.fastlstm.lstm_backward(**args)  # the good call works
    args.update(BACKWARD_OP_BAD[bad](args))
    with pytest.raises(RuntimeError):
        torch.ops.fastlstm.lstm_backward(**args)


def test_backward_op_accepts_non_contiguous_saved_tensors():
    # A strided view of the right shape is not an error: the result equals the contiguous call's.
    args = backward_args()
    expected = torch.ops.fastlstm.lstm_backward(**args)
    strided = dict(args)
    for k in ("gates", "cells", "output", "grad_output", "grad_h_n", "grad_c_n"):
        t = args[k]
        strided[k] = torch.stack([t, torch.full_like(t, float("nan"))], -1)[..., 0]
        assert not strided[k].is_contiguous()
    for a, b in zip(torch.ops.fastlstm.lstm_backward(**strided), expected):
        assert torch.equal(a, b)
