"""Sorted lengths (a PackedSequence's) run each step on the active rows only (csrc/layer.h's prefix path,
issue 13 item 2); unsorted ones mask every step. Both must give the same numbers: the same batch is run
sorted, and shuffled (the masked path), and the results are compared row for row, for every cell's ops."""
import pytest
import torch

from test_cuda_harness import make_case  # noqa: E402  (the one table of valid op calls per cell)

OPS = torch.ops.fastlstm
CELLS = ["lstm", "lstm_proj", "gru", "peephole_diagonal", "peephole_full", "layernorm_lstm"]
# Which forward/backward arguments and results are per batch row (dimension 0 or 1), by op.
BATCH_DIM = {"input": 1, "h0": 0, "c0": 0, "lengths": 0}


def _permute(args, names, perm):
    out = []
    for n, a in zip(names, args):
        if isinstance(a, torch.Tensor) and n in BATCH_DIM:
            out.append(a.index_select(BATCH_DIM[n], perm))
        else:
            out.append(a)
    return out


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_sorted_and_masked_paths_agree(cell, reverse):
    cfg = dict(T=6, B=5, I=3, H=7, lengths=[6, 5, 3, 3, 1], reverse=reverse)
    name, fwd, bwd = make_case(cell, cfg, torch.float64)
    fwd_op, bwd_op = getattr(OPS, f"{name}_forward"), getattr(OPS, f"{name}_backward")
    names = [a.name for a in fwd_op.default._schema.arguments]
    perm = torch.tensor([3, 0, 4, 1, 2])
    inv = torch.argsort(perm)
    out_sorted = fwd_op(*fwd)
    out_masked = fwd_op(*_permute(fwd, names, perm))
    # output [T, B, .] and final states [B, .] back in the sorted order (what the two paths save for backward
    # may differ at inactive rows, which backward never reads)
    visible = 2 if name == "gru" else 3
    for a, b in zip(out_sorted[:visible], out_masked[:visible]):
        if a.dim() == 0 or a.numel() == 0:
            continue
        b = b.index_select(1 if a.dim() == 3 else 0, inv)
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    # backward: weight gradients are sums over the batch, the same in any order
    grads_sorted = bwd_op(*bwd(out_sorted))
    bnames = [a.name for a in bwd_op.default._schema.arguments]
    bargs = list(bwd(out_sorted))
    # run the masked backward on the shuffled batch with its own forward's saved tensors
    shuffled_fwd = _permute(fwd, names, perm)
    saved = fwd_op(*shuffled_fwd)
    per_row = {"grad_output": 1, "grad_h_n": 0, "grad_c_n": 0, "input": 1, "h0": 0, "c0": 0, "lengths": 0}
    margs = []
    for n, a in zip(bnames, bargs):
        if isinstance(a, torch.Tensor) and n in per_row:
            margs.append(a.index_select(per_row[n], perm))
        else:
            margs.append(a)
    # the saved outputs of the shuffled forward replace those of the sorted one
    saved_names = [r.name for r in fwd_op.default._schema.returns]
    for k, n in enumerate(bnames):
        if n in saved_names and n not in ("h_n", "c_n"):
            margs[k] = saved[saved_names.index(n)]
    grads_masked = bwd_op(*margs)
    for k, (a, b) in enumerate(zip(grads_sorted, grads_masked)):
        if k < visible and a.numel():  # grad_input [T, B, I], grad_h0 (, grad_c0) [B, .]
            b = b.index_select(1 if a.dim() == 3 else 0, inv)
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=lambda m: f"grad {k}: {m}")


@pytest.mark.parametrize("model", ["lstm", "gru"])
@pytest.mark.parametrize("B", [1, 3])
def test_packed_sequences_of_one_length_run_unmasked(model, B, monkeypatch):
    # All sequences of the full length (batch 1 always): the packed data is the padded tensor itself, so the
    # layers run on a view of it with no lengths, like a plain tensor (the masked run at batch 1 took twice
    # as long in training), and the results are nn.LSTM's / nn.GRU's.
    import fastlstm
    import fastlstm.rnn as rnn
    from torch.nn.utils.rnn import pack_padded_sequence

    from conftest import TOL

    torch.manual_seed(0)
    ref = (torch.nn.LSTM if model == "lstm" else torch.nn.GRU)(4, 5, num_layers=2, bidirectional=True).double()
    fast = (fastlstm.FastLSTM if model == "lstm" else fastlstm.FastGRU)(4, 5, num_layers=2,
                                                                         bidirectional=True).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(6, B, 4, dtype=torch.float64)
    hx = torch.randn(4, B, 5, dtype=torch.float64)
    hx = (hx, torch.randn_like(hx)) if model == "lstm" else hx
    calls = []
    real = rnn.stacked

    def spy(layer, x_, *a):
        calls.append((x_, a[6]))  # the input and the lengths
        return real(layer, x_, *a)

    monkeypatch.setattr(rnn, "stacked", spy)
    results = []
    for m in (fast, ref):
        data = x.clone().requires_grad_()
        packed = pack_padded_sequence(data, [6] * B, enforce_sorted=False)
        out, h = m(packed, hx)
        finals = h if isinstance(h, tuple) else (h,)
        (out.data.square().sum() + sum(f.square().sum() for f in finals)).backward()
        results.append((out.data, *finals, data.grad, *[p.grad for p in m.parameters()]))
    assert len(calls) == 1 and calls[0][1] is None, calls
    assert calls[0][0].shape == (6, B, 4)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("shape", [dict(T=6, B=5, I=3, H=7), dict(T=9, B=6, I=16, H=32)], ids=["small", "seq"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_inference_projects_only_the_active_rows(cell, reverse, shape):
    """Sorted-lengths inference projects each step's active rows only (a PackedSequence's real rows): the
    padded rows' input may hold anything, NaN here, and the results equal the masked path's, which projects
    every row and selects (the shuffled batch), for every cell, both directions, and a shape the CPU's
    whole-sequence path takes."""
    B = shape["B"]
    lengths = [shape["T"], shape["T"] - 1, 3, 3, 1, 1][:B]
    cfg = dict(shape, lengths=lengths, reverse=reverse)
    name, fwd, _ = make_case(cell, cfg, torch.float64)
    op = getattr(OPS, f"{name}_inference")
    names = [a.name for a in op.default._schema.arguments]
    fwd = list(fwd)
    x = fwd[names.index("input")].clone()
    for b, n in enumerate(lengths):
        x[n:, b] = float("nan")
    fwd[names.index("input")] = x
    perm = torch.roll(torch.arange(B), 2)
    inv = torch.argsort(perm)
    got = op(*fwd)
    masked = op(*_permute(fwd, names, perm))
    for a, b in zip(got, masked):
        b = b.index_select(1 if a.dim() == 3 else 0, inv)
        assert not a.isnan().any()
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
