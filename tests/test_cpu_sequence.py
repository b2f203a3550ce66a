"""The CPU's whole-sequence path (csrc/cpu/sequence.h, issue 13 item 1): a layer's whole step loop in one
parallel region, each thread with its slice of W_hh packed once per call and the cell's own passes on its
units, one barrier per step. It runs by default where it measured faster (H <= 128 on 2 threads), so most
small-shape tests elsewhere run it; here both paths are run on the same inputs and held to one standard:
every result and gradient against the same module in float64 (which runs the per-step path, itself checked
against nn.LSTM / nn.GRU elsewhere): float32 within TOL, the half types within LOWP_FACTOR x the per-step
path's own error (+ LOWP_SLACK). Also: the path is seen to be taken (and not) where it should be, on 1 and 2
threads, across inference chunks, with NaN propagating as in nn.LSTM."""
import contextlib
import copy
import os

import pytest
import torch

import fastlstm
from conftest import LOWP_FACTOR, LOWP_SLACK, TOL, amd_cpu, weighted_loss
from fastlstm import LayerNormLSTM, PeepholeLSTM

def _layernorm_lstm(*a, **k):
    """A LayerNormLSTM whose layer norms' gains and shifts are random (they start at 1 and 0), so that each of
    them reaching the two-phase path's pass is seen."""
    m = LayerNormLSTM(*a, **k)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("layernorm_"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5 if "weight" in name else torch.randn(p.shape, generator=g) * 0.3)
    return m


MODULES = {
    "lstm": fastlstm.FastLSTM,
    "gru": fastlstm.FastGRU,
    "peephole": lambda *a, **k: PeepholeLSTM(*a, peephole="diagonal", **k),
    # two phases a step (the product by units, the pass's row sums on whole rows): cells::SeqTraits::rows
    "layernorm": _layernorm_lstm,
}
# (T, B, I, H, layers, bidirectional): ragged tiles (B = 5, 17: balanced row tiles; H = 20, 100, 130: the
# units split into SIMD-padded blocks), stacks and both directions, batch 1, one step, 3 steps (below the
# half types' float32-pre-activation threshold of 4).
CONFIGS = {
    "T7_B5_H20": (7, 5, 12, 20, 1, False),
    "T9_B3_H100_L2_bi": (9, 3, 8, 100, 2, True),
    "T6_B17_H64": (6, 17, 16, 64, 1, False),
    "T5_B2_H130_bi": (5, 2, 6, 130, 1, True),
    "T8_B1_H32": (8, 1, 10, 32, 1, False),
    "T1_B4_H16": (1, 4, 5, 16, 1, False),
    "T3_B4_H48": (3, 4, 5, 48, 1, False),
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# The layer-norm cell's float32 slack in the paired rule (assert_paths_match), relative to a tensor's largest
# magnitude: float32 rounding level (both paths measured 3-5e-6 on T9_B3_H100_L2_bi).
LN_F32_SLACK = 2e-6


@contextlib.contextmanager
def cpu_sequence(mode: str, threads: int = None):
    """FASTLSTM_CPU_SEQUENCE=mode ("0" off, "1" wherever it can run, None: the default rule), and the thread
    count, for the block; both restored after."""
    old_mode, old_threads = os.environ.get("FASTLSTM_CPU_SEQUENCE"), torch.get_num_threads()
    if mode is None:
        os.environ.pop("FASTLSTM_CPU_SEQUENCE", None)
    else:
        os.environ["FASTLSTM_CPU_SEQUENCE"] = mode
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if old_mode is None:
            os.environ.pop("FASTLSTM_CPU_SEQUENCE", None)
        else:
            os.environ["FASTLSTM_CPU_SEQUENCE"] = old_mode
        torch.set_num_threads(old_threads)


@contextlib.contextmanager
def _env(name: str, value: str):
    """os.environ[name] = value for the block, restored after."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name)
        else:
            os.environ[name] = old


def _mkl_gemms():
    return _env("FASTLSTM_CPU_GEMM", "mkl")


def run(module, x, hx):
    """Training forward + backward of a weighted loss over every output: [output, *final states, grad input,
    grads of hx, grads of every parameter], and the inference output."""
    module.zero_grad(set_to_none=True)
    xx = x.detach().clone().requires_grad_()
    hh = tuple(h.detach().clone().requires_grad_() for h in hx)
    out, st = module(xx, hh if len(hh) == 2 else hh[0])
    st = st if isinstance(st, tuple) else (st,)
    weighted_loss([out, *st], round_to=x.dtype).backward()
    with torch.inference_mode():
        inf = module(x, hx if len(hx) == 2 else hx[0])[0]
    return [out, *st, xx.grad, *(h.grad for h in hh), *(p.grad for p in module.parameters()), inf]


def inputs(module, T, B, I, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = 2 if module.bidirectional else 1
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    n_states = 1 if isinstance(module, fastlstm.FastGRU) else 2
    hx = tuple(torch.randn(module.num_layers * D, B, module.hidden_size, generator=g, dtype=torch.float64) * 0.5
               for _ in range(n_states))
    return x.to(dtype), tuple(h.to(dtype) for h in hx)


def error(got, want):
    """Largest relative (to the tensor's largest magnitude) difference over a list of tensors."""
    return max(((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-6)).item()
               for a, b in zip(got, want))


def assert_paths_match(seq, step, want, dtype, cell=None):
    """The whole-sequence path's results `seq` against float64's `want`: float32 within TOL; half types, and
    the layer-norm cell in float32, within LOWP_FACTOR x the per-step path's (`step`) own error + the
    dtype's slack."""
    if dtype == torch.float32 and cell == "layernorm":
        # Element by element, float32's rounding in the layer norms' gradients exceeds LN_TOL on both paths
        # here (the per-step one is held to it on nn.LSTM's shapes in test_layernorm_lstm.py): paired instead.
        e_seq, e_step = error(seq, want), error(step, want)
        assert e_seq <= LOWP_FACTOR * e_step + LN_F32_SLACK, f"whole-sequence path {e_seq:.3g}, per-step {e_step:.3g}"
        return
    if dtype == torch.float32:
        for a, b in zip(seq, want):
            torch.testing.assert_close(a.double(), b, **TOL[torch.float32])
        return
    e_seq, e_step = error(seq, want), error(step, want)
    assert e_seq <= LOWP_FACTOR * e_step + LOWP_SLACK[dtype], f"whole-sequence path {e_seq:.3g}, per-step {e_step:.3g}"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cell", MODULES)
def test_both_paths_match_float64(cell, dtype, config, threads):
    T, B, I, H, L, bi = CONFIGS[config]
    torch.manual_seed(0)
    m = MODULES[cell](I, H, num_layers=L, bidirectional=bi).to(dtype)
    ref = copy.deepcopy(m).double()
    x, hx = inputs(m, T, B, I, dtype)
    want = run(ref, x.double(), tuple(h.double() for h in hx))
    with cpu_sequence("1", threads):
        seq = run(m, x, hx)
    with cpu_sequence("0", threads):
        step = run(m, x, hx)
    assert_paths_match(seq, step, want, dtype, cell)


def _recurrent_gemms(module, x, train: bool) -> int:
    """aten::addmm_ and mkl::_mkl_linear calls in one call of the module: the per-step path's recurrent
    products (one per step and direction; MKL's packed GEMM at larger sizes); the whole-sequence path makes none (its input projections are aten::mm), and in
    training one more, in the weight gradients (grad_w_hh's steps after the first)."""
    from torch.profiler import profile

    # MKL for every GEMM, so that the profiler sees them (oneDNN's, which an AMD CPU takes by default for the
    # larger ones, are called below the dispatcher: tests/test_cpu_gemm.py).
    with profile() as prof, _mkl_gemms():
        if train:
            out = module(x.clone().requires_grad_())[0]
            out.sum().backward()
        else:
            with torch.inference_mode():
                module(x)
    return sum(e.count for e in prof.key_averages() if e.key in STEP_GEMMS)


STEP_GEMMS = ("aten::addmm_", "mkl::_mkl_linear")


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
def test_the_path_is_taken_where_it_should_be(train):
    torch.manual_seed(0)
    T = 12
    small = fastlstm.FastLSTM(16, 64)
    large = fastlstm.FastLSTM(16, 512)
    x = torch.randn(T, 4, 16)
    with cpu_sequence("0", 2):
        assert _recurrent_gemms(small, x, train) >= T - 1
    fused = int(train)
    with cpu_sequence("1", 2):
        assert _recurrent_gemms(small, x, train) == fused
        assert _recurrent_gemms(large, x, train) == fused
    with cpu_sequence(None, 2):
        # the default: on at H = 64, off at H = 512 (kSeqPanelBytes) but on an AMD CPU (kSeqAmdPanelBytes: 2 MiB
        # panels from B = 4); never on ATen's scalar fallback ISA
        simd = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        if simd:
            assert _recurrent_gemms(small, x, train) == fused
        else:
            assert _recurrent_gemms(small, x, train) >= T - 1
        if simd and amd_cpu():
            assert _recurrent_gemms(large, x, train) == fused
        else:
            assert _recurrent_gemms(large, x, train) >= T - 1
    # A PackedSequence's forward takes it too (the per-step prefix path otherwise); float64 never does.
    from torch.profiler import profile

    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [T, T, 5, 2])  # >= 2 rows a step: no GEMV
    for mode, want in (("0", T), ("1", 0)):
        with cpu_sequence(mode, 2), profile() as prof, torch.inference_mode():
            small(packed)
        assert sum(e.count for e in prof.key_averages() if e.key in STEP_GEMMS) == want
    with cpu_sequence("1", 2):
        assert _recurrent_gemms(small.double(), x.double(), train) >= T - 1


def _mm_calls(module, x, train: bool) -> int:
    """aten::mm calls in one call of the module (MKL's GEMMs, so that the profiler sees them). A cell with a
    separate recurrent operand (the layer norm's) forms its per-step products with mm, as it does its input
    projections (one per layer call) and, in training, grad_input, grad_w_ih and grad_w_hh (three)."""
    from torch.profiler import profile

    with profile() as prof, _mkl_gemms():
        if train:
            module(x.clone().requires_grad_())[0].sum().backward()
        else:
            with torch.inference_mode():
                module(x)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::mm")


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
def test_layernorm_lstm_takes_the_two_phase_path(train):
    """LayerNormLSTM runs the whole-sequence path forward and backward (no per-step product), but a
    PackedSequence's forward keeps the per-step prefix path."""
    torch.manual_seed(0)
    T = 12
    m = _layernorm_lstm(16, 64)
    x = torch.randn(T, 4, 16)
    fixed = 4 if train else 1  # the projection, and training's three gradient GEMMs
    with cpu_sequence("0", 2):
        assert _mm_calls(m, x, train) >= fixed + T
    with cpu_sequence("1", 2):
        assert _mm_calls(m, x, train) == fixed
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, [T, T, 5, 2])
        assert _mm_calls(m, packed, False) == 1 + T


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="the default rule never takes the path on ATen's scalar fallback ISA")
def test_the_wide_panel_rule_at_h256():
    """At H = 256 on 2 threads (512 KiB panels, kSeqWidePanelBytes) the default takes the path forward at
    B = 4..8 and backward at B <= 16, where it measured faster than the per-step GEMMs; not at B = 32."""
    torch.manual_seed(0)
    T = 12
    m = fastlstm.FastLSTM(16, 256)
    # (B, per-step GEMMs in inference, in training): forward T when per-step, backward T more; the fused
    # training call keeps one (grad_w_hh's steps after the first)
    want = {2: (T, T + 1), 4: (0, 1), 8: (0, 1), 16: (T, T + 1), 32: (T, 2 * T + 1)}
    if amd_cpu():  # kSeqAmdPanelBytes: every batch from 4 on
        want.update({16: (0, 1), 32: (0, 1)})
    with cpu_sequence(None, 2):
        got = {B: (_recurrent_gemms(m, torch.randn(T, B, 16), False), _recurrent_gemms(m, torch.randn(T, B, 16), True))
               for B in want}
    assert got == want


def _native_bf16_gemms() -> bool:
    """AVX512-BF16 on an AMD CPU: oneDNN's bfloat16 GEMMs run on its own dot products (csrc/cpu/device.cpp's
    native_half_gemms; an AMX CPU is not AMD, so the AMD rule is not taken there at all), and the whole-sequence
    path's bfloat16 panels are K-pairs (seq_bf16_pairs)."""
    return amd_cpu() and bool(torch.backends.cpu.get_cpu_capability() == "AVX512") and \
        "avx512_bf16" in open("/proc/cpuinfo").read()


@pytest.mark.skipif(not _native_bf16_gemms(), reason="the bfloat16 rule differs only on an AMD CPU with AVX512-BF16")
def test_bfloat16_on_amd_keeps_onednn_gemms_where_they_win():
    """Regression: the AMD rule (kSeqAmdPanelBytes, measured in float32) took bfloat16 layers with float32
    panels too, where the per-step path's GEMMs are oneDNN's AVX512-BF16 ones: at T=50 B=64 H=256 inference ran
    23.7 ms on this path against 17.0 ms per-step. With float32 panels bfloat16 takes it (forward) only at
    B <= 16, H = 256 (512 KiB panels) on 2 threads, and backward by the wide-panel rule (B <= 16); with K-pair
    panels (the default on this CPU), which beat the per-step path at every one of these shapes, the float32
    rule; float32 keeps every batch from 4."""
    torch.manual_seed(0)
    T = 12
    m = fastlstm.FastLSTM(16, 256)
    mb = copy.deepcopy(m).to(torch.bfloat16)
    big = fastlstm.FastLSTM(16, 512).to(torch.bfloat16)
    shapes = [(16, False), (16, True), (32, False), (64, False), (64, True)]

    def taken():
        # (B, training): whether the path is taken (no per-step GEMM; training keeps grad_w_hh's one)
        got = {(B, train): _recurrent_gemms(mb, torch.randn(T, B, 16, dtype=torch.bfloat16), train) <= 1
               for (B, train) in shapes}
        return got, _recurrent_gemms(big, torch.randn(T, 32, 16, dtype=torch.bfloat16), False) == 0

    with cpu_sequence(None, 2):
        with _bf16_pairs(False):
            assert taken() == ({(16, False): True, (16, True): True, (32, False): False, (64, False): False,
                                (64, True): False}, False)
        with _bf16_pairs(True):
            assert taken() == ({k: True for k in shapes}, True)
        assert _recurrent_gemms(m, torch.randn(T, 64, 16), False) == 0  # float32 unchanged


def _bf16_pairs(on: bool):
    """FASTLSTM_CPU_BF16_PAIRS: "0" keeps a bfloat16 layer's panels float32 (unset: K-pair panels on a CPU with
    AVX512-BF16)."""
    return _env("FASTLSTM_CPU_BF16_PAIRS", "1" if on else "0")


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("cell", MODULES)
def test_bfloat16_float32_panels_match_float64(cell, config):
    """bfloat16 layers keep float32 panels where K-pair ones do not run (not an AMD CPU with AVX512-BF16, odd
    K): that path held to the same standard as test_both_paths_match_float64 holds the default one, on 2
    threads."""
    T, B, I, H, L, bi = CONFIGS[config]
    torch.manual_seed(0)
    m = MODULES[cell](I, H, num_layers=L, bidirectional=bi).to(torch.bfloat16)
    ref = copy.deepcopy(m).double()
    x, hx = inputs(m, T, B, I, torch.bfloat16)
    want = run(ref, x.double(), tuple(h.double() for h in hx))
    with cpu_sequence("1", 2), _bf16_pairs(False):
        seq = run(m, x, hx)
    with cpu_sequence("0", 2):
        step = run(m, x, hx)
    assert_paths_match(seq, step, want, torch.bfloat16, cell)


@pytest.mark.skipif(not _native_bf16_gemms(), reason="K-pair panels run only on an AMD CPU with AVX512-BF16")
@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
def test_bfloat16_k_pairs_flush_subnormals_as_torch_does(train):
    """The K-pair panels (AVX512-BF16's VDPBF16PS) treat subnormal bfloat16 inputs as zero, as nn.LSTM's own
    bfloat16 GEMMs on this instruction do; the float32 panels do not. That difference is the witness that the
    path runs: a subnormal h0 (2^-130) against 2^127 weights gives input-gate pre-activations of H * 2^-3 on
    float32 panels and 0 on K-pair ones and in nn.LSTM. Backward likewise: subnormal dgates against the
    backward K-pair panel of W_hh."""
    H = 32
    m = fastlstm.FastLSTM(16, H).to(torch.bfloat16)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.weight_hh_l0[:H].fill_(2.0 ** 127)
        m.bias_ih_l0[2 * H:3 * H].fill_(10.0)  # g = tanh(10) = 1: c_1 = sigmoid(input gate)
    ref = torch.nn.LSTM(16, H).to(torch.bfloat16)
    ref.load_state_dict(m.state_dict())
    x = torch.zeros(8, 4, 16, dtype=torch.bfloat16)
    h0 = torch.full((1, 4, H), 2.0 ** -130, dtype=torch.bfloat16)
    c0 = torch.zeros_like(h0)
    assert h0[0, 0, 0].item() != 0.0 and h0[0, 0, 0].item() < torch.finfo(torch.bfloat16).tiny
    if not train:
        with torch.inference_mode(), cpu_sequence("1", 2):
            got = m(x, (h0, c0))[0]
            with _bf16_pairs(False):
                f32 = m(x, (h0, c0))[0]
            want = ref(x, (h0, c0))[0]
        assert torch.equal(got[0], want[0])
        # float32 panels keep the subnormal: sigmoid(4) against sigmoid(0) in c_1
        assert got[0, 0, 0].item() == pytest.approx(0.5 * torch.tanh(torch.tensor(0.5)).item(), rel=1e-2)
        assert f32[0, 0, 0].item() == pytest.approx(0.5 * torch.tanh(torch.sigmoid(torch.tensor(4.0))).item(), rel=1e-2)
        return
    # Backward from h0 = 0 (the same forward on both panels: c_1 = 0.5): grad_h0 = dgates_0 @ W_hh, where
    # dgates_0's input-gate entries are subnormal (grad_output 2^-127 at step 0 gives about 2^-130) and meet
    # the 2^127 rows: about 3 on float32 panels, 0 on K-pair ones.
    go = torch.zeros(8, 4, H, dtype=torch.bfloat16)
    go[0] = 2.0 ** -127
    grads = {}
    for pairs in (True, False):
        hh = torch.zeros_like(h0).requires_grad_()
        with cpu_sequence("1", 2), _bf16_pairs(pairs):
            y, _ = m(x, (hh, c0))
            y.backward(go)
        grads[pairs] = hh.grad
    assert grads[False].abs().min().item() > 1
    assert grads[True].abs().max().item() == 0


@pytest.mark.parametrize("bidirectional", [False, True])
def test_inference_across_chunks_carries_the_state(bidirectional):
    """Inference projects 2^18 gate elements at a time, one parallel region per chunk: T = 5000 at B = 1,
    H = 16 (64 gate elements per step) is two chunks, the state carried from one to the next."""
    torch.manual_seed(0)
    m = fastlstm.FastLSTM(3, 16, bidirectional=bidirectional)
    ref = torch.nn.LSTM(3, 16, bidirectional=bidirectional)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5000, 1, 3)
    with torch.inference_mode():
        want = ref(x)
        with cpu_sequence("1", 2):
            got = m(x)
    torch.testing.assert_close(got[0], want[0], **TOL[torch.float32])
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_nan_propagates_as_in_torch(cell):
    """A NaN in one row's input at step 3 makes that row's outputs NaN from step 3 on and no other row's."""
    torch.manual_seed(0)
    m = MODULES[cell](8, 32)
    ref = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(8, 32)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(7, 3, 8)
    x[3, 1, 2] = float("nan")
    with torch.inference_mode():
        want = ref(x)[0]
        with cpu_sequence("1", 2):
            got = m(x)[0]
    assert torch.equal(got.isnan(), want.isnan())
    assert got[3:, 1].isnan().all() and not got[:, [0, 2]].isnan().any()
    torch.testing.assert_close(got[:, [0, 2]], want[:, [0, 2]], **TOL[torch.float32])


def run_packed(module, x, hx, lengths, sorted_):
    """run() on a PackedSequence of x's rows cut to `lengths`: [output data, *final states, grad input, grads
    of hx and of every parameter, inference output data]."""
    from torch.nn.utils.rnn import pack_padded_sequence

    module.zero_grad(set_to_none=True)
    xx = x.detach().clone().requires_grad_()
    hh = tuple(h.detach().clone().requires_grad_() for h in hx)
    packed = pack_padded_sequence(xx, lengths, enforce_sorted=sorted_)
    out, st = module(packed, hh if len(hh) == 2 else hh[0])
    st = st if isinstance(st, tuple) else (st,)
    weighted_loss([out.data, *st], round_to=x.dtype).backward()
    with torch.inference_mode():
        inf = module(pack_padded_sequence(x, lengths, enforce_sorted=sorted_), hx if len(hx) == 2 else hx[0])[0]
    return [out.data, *st, xx.grad, *(h.grad for h in hh), *(p.grad for p in module.parameters()), inf.data]


@pytest.mark.parametrize("sorted_", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cell", MODULES)
def test_packed_sequences_run_forward_on_the_active_rows(cell, dtype, sorted_):
    """A PackedSequence's forward takes the path too (its lengths sorted, each step on the rows still active;
    reversed, each row starting from h0 at its own last step), backward the per-step prefix path: both
    directions, two layers, against float64 as above."""
    torch.manual_seed(0)
    lengths = [9, 9, 6, 3, 1] if sorted_ else [3, 9, 1, 6, 9]
    m = MODULES[cell](6, 40, num_layers=2, bidirectional=True).to(dtype)
    ref = copy.deepcopy(m).double()
    x, hx = inputs(m, 9, 5, 6, dtype)
    want = run_packed(ref, x.double(), tuple(h.double() for h in hx), lengths, sorted_)
    with cpu_sequence("1", 2):
        seq = run_packed(m, x, hx, lengths, sorted_)
    with cpu_sequence("0", 2):
        step = run_packed(m, x, hx, lengths, sorted_)
    assert_paths_match(seq, step, want, dtype, cell)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole_diagonal"])
def test_direct_op_calls_with_short_and_empty_rows(cell, reverse):
    """A direct call whose rows all end before T, one of them empty (steps with no active row at the end):
    every forward output, in training and inference, equals the per-step prefix path's (float64 there)."""
    from test_cuda_harness import make_case

    cfg = dict(T=7, B=4, I=3, H=20, lengths=[5, 4, 2, 0], reverse=reverse)
    name, fwd, _ = make_case(cell, cfg, torch.float32)
    ops = torch.ops.fastlstm
    for op in (getattr(ops, f"{name}_forward"), getattr(ops, f"{name}_inference")):
        with cpu_sequence("0", 2):
            want = op(*fwd)
        with cpu_sequence("1", 2):
            got = op(*fwd)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **TOL[torch.float32])
