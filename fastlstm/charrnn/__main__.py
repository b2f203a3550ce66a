"""Command line: `python -m fastlstm.charrnn train|sample ...` (console script fastlstm-charrnn).

Under `torchrun --nproc_per_node N -m fastlstm.charrnn train ...` training is data-parallel (see train.py).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .model import BACKENDS, CELLS
from .train import DEFAULTS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastlstm-charrnn",
                                description="Character-level LSTM: train on a UTF-8 text, then sample from it.")
    sub = p.add_subparsers(dest="command", required=True)

    D = DEFAULTS
    t = sub.add_parser("train", help="train (or --resume) a model; files go to --out")
    # Options default to None here so that --resume can tell what was given; the effective defaults
    # (the lesson's configuration) are DEFAULTS, shown in --help.
    t.add_argument("--text", required=True, help="UTF-8 text file to train on")
    t.add_argument("--out", required=True,
                   help="output directory (checkpoint.pt, log.csv, loss.png, metrics.json)")
    t.add_argument("--hidden", type=int, help=f"LSTM hidden size [{D['hidden']}]")
    t.add_argument("--layers", type=int, help=f"number of stacked LSTM layers [{D['layers']}]")
    t.add_argument("--dropout", type=float,
                   help=f"dropout between layers and before the output layer [{D['dropout']}]")
    t.add_argument("--batch-size", type=int,
                   help=f"rows the text is cut into (all processes together) [{D['batch_size']}]")
    t.add_argument("--seq-length", type=int,
                   help=f"characters per row per mini-batch (BPTT length) [{D['seq_length']}]")
    t.add_argument("--epochs", type=int, help=f"passes over the training text [{D['epochs']}]")
    t.add_argument("--lr", type=float, help=f"Adam learning rate [{D['lr']}]")
    t.add_argument("--clip", type=float, help=f"gradient-norm clipping threshold [{D['clip']}]")
    t.add_argument("--val-frac", type=float,
                   help=f"fraction of the text (its end) held out for validation [{D['val_frac']}]")
    t.add_argument("--seed", type=int, help=f"random seed (weights, dropout) [{D['seed']}]")
    t.add_argument("--device", choices=["cpu", "cuda"], help=f"[{D['device']}]")
    t.add_argument("--backend", choices=list(BACKENDS),
                   help=f"fastlstm.FastLSTM or torch.nn.LSTM [{D['backend']}]")
    t.add_argument("--cell", choices=sorted(CELLS), help=f"recurrent cell [{D['cell']}]")
    t.add_argument("--max-steps", type=int,
                   help="stop after this many steps in total (counting resumed ones) [no limit]")
    t.add_argument("--val-every", type=int,
                   help="also validate (and checkpoint) every N steps; 0: each epoch only [0]")
    t.add_argument("--ckpt-every", type=int,
                   help="checkpoint every N steps instead of at each validation; 0: at each validation [0]")
    t.add_argument("--threads", type=int, help="torch.set_num_threads(N) [torch's default]")
    t.add_argument("--resume", action="store_true",
                   help="continue from --out/checkpoint.pt exactly where it stopped")

    s = sub.add_parser("sample", help="print text generated from a checkpoint")
    s.add_argument("--checkpoint", required=True, help="checkpoint file, or a training output directory")
    s.add_argument("--prime", default="Anna", help="text to start from, printed first [Anna]")
    s.add_argument("--length", type=int, default=1000, help="characters to generate after the prime [1000]")
    s.add_argument("--temperature", type=float, default=1.0,
                   help="divide the logits by T: <1 sharper, >1 flatter, 0 greedy [1.0]")
    s.add_argument("--top-k", type=int, default=5,
                   help="draw only from the K most likely characters; 0: all; 1: greedy [5]")
    s.add_argument("--seed", type=int, default=None, help="same seed, same text [fresh randomness]")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="[cpu]")
    s.add_argument("--backend", choices=list(BACKENDS), default=None,
                   help="run the weights on this backend [the checkpoint's]")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        from .train import train
        opts = vars(args)
        opts.pop("command")
        train(opts)
        return 0
    from .sample import load_model, sample
    model, vocab = load_model(args.checkpoint, args.device, args.backend)
    try:
        text = sample(model, vocab, args.prime, args.length, args.temperature, args.top_k, args.seed)
    except (KeyError, ValueError) as e:
        print(f"fastlstm-charrnn sample: {e.args[0]}", file=sys.stderr)
        return 2
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
