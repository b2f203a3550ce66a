"""Parity errors of FastLSTM on CUDA, per dtype, as a markdown table (scripts/gpu_check.sh runs this).

For each configuration and dtype: the largest absolute difference, over the outputs (output, h_n, c_n)
and over every gradient (input, h0, c0, all parameters), between fastlstm and nn.LSTM (cuDNN on CUDA, TF32 off),
and of each against the float64 oracle (fastlstm.reference.lstm_ref on the same rounded inputs).
Usage: python3 scripts/gpu_parity.py [--device cuda] [--md PATH]   (the table on stdout, and in PATH)
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_cuda  # noqa: E402  (the GPU tests' helpers: configurations, data, forward+backward)
from fastlstm import FastLSTM  # noqa: E402
from fastlstm.reference import lstm_ref, module_params  # noqa: E402

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
OUTPUTS = ("output", "h_n", "c_n")


def errors(cfg, dtype):
    m64 = test_cuda.make_lstm(cfg, torch.float64)
    with torch.no_grad():
        for p in m64.parameters():
            p.copy_(p.to(dtype))
    ref = test_cuda.make_lstm(cfg, dtype)
    ref.load_state_dict(m64.state_dict())
    fast = FastLSTM.from_lstm(ref)
    x, hx, grads = test_cuda.make_data(ref, dtype)

    def oracle(x, hx):
        return lstm_ref(x, hx, module_params(m64), m64.num_layers, m64.bidirectional)

    exact = test_cuda.run(m64, x.double(), tuple(h.double() for h in hx), tuple(g.double() for g in grads),
                          forward=oracle)
    ours, theirs = test_cuda.run(fast, x, hx, grads), test_cuda.run(ref, x, hx, grads)

    def worst(a, b, keys):
        return max((a[k].double() - b[k].double()).abs().max().item() for k in keys)

    outs = [k for k in exact if k in OUTPUTS]
    gs = [k for k in exact if k not in OUTPUTS]
    return [worst(ours, theirs, outs), worst(ours, exact, outs), worst(theirs, exact, outs),
            worst(ours, theirs, gs), worst(ours, exact, gs), worst(theirs, exact, gs)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--md", metavar="PATH", help="also write the table to PATH (rewritten after every row)")
    args = ap.parse_args()
    test_cuda.DEV = args.device
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    lines = ["| config | dtype | out: fast−nn.LSTM | out: fast−fp64 | out: nn.LSTM−fp64 | grad: fast−nn.LSTM "
             "| grad: fast−fp64 | grad: nn.LSTM−fp64 |", "|---|---|" + "---:|" * 6]

    def emit(line):
        lines.append(line)
        print(line, flush=True)
        if args.md:
            Path(args.md).write_text("\n".join(lines) + "\n")

    print("\n".join(lines))
    for name in ("one_layer", "stacked_bidirectional", "proj"):
        for dtype in DTYPES:
            e = errors(test_cuda.CONFIGS[name], dtype)
            emit(f"| {name} | {str(dtype).replace('torch.', '')} | " + " | ".join(f"{v:.2e}" for v in e) + " |")
    emit(f"\nmax |difference| over all elements; device {args.device}"
         + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "") + "; TF32 off.")


if __name__ == "__main__":
    main()
