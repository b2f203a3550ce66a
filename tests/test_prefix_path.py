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
