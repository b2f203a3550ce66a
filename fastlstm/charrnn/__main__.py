"""Command line: `python -m fastlstm.charrnn train|sample ...` (console script fastlstm-charrnn).

Under `torchrun --nproc_per_node N -m fastlstm.charrnn train ...` training is data-parallel (see train.py).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .errors import SAMPLE_CHECKS, TRAIN_CHECKS, CharRNNError
from .model import BACKENDS, CELLS, DTYPES
from .train import DEFAULTS


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the program, the error, where to look), exit status 2:
    the same shape as every other error main() reports, and easy for a script or a log to show."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _typed(parse, name: str, checks: dict):
    """An argparse type: parse the string, then apply the option's check (errors.py)."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {parse.__name__} value: {text!r}") from None
        try:
            return checks[name](value)
        except CharRNNError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastlstm-charrnn",
                description="Character-level LSTM: train on a UTF-8 text, then sample from it.")
    sub = p.add_subparsers(dest="command", required=True)

    D = DEFAULTS
    t = sub.add_parser("train", help="train (or --resume) a model; files go to --out")
    # Options default to None here so that --resume can tell what was given; the effective defaults
    # (the lesson's configuration) are DEFAULTS, shown in --help.
    t.add_argument("--text", required=True, help="UTF-8 text file to train on")
    t.add_argument("--out", required=True,
                   help="output directory (checkpoint.pt, log.csv, loss.png, metrics.json)")
    t.add_argument("--hidden", type=_typed(int, "hidden", TRAIN_CHECKS), help=f"LSTM hidden size [{D['hidden']}]")
    t.add_argument("--layers", type=_typed(int, "layers", TRAIN_CHECKS),
                   help=f"number of stacked LSTM layers [{D['layers']}]")
    t.add_argument("--dropout", type=_typed(float, "dropout", TRAIN_CHECKS),
                   help=f"dropout between layers and before the output layer [{D['dropout']}]")
    t.add_argument("--batch-size", type=_typed(int, "batch_size", TRAIN_CHECKS),
                   help=f"rows the text is cut into (all processes together) [{D['batch_size']}]")
    t.add_argument("--seq-length", type=_typed(int, "seq_length", TRAIN_CHECKS),
                   help=f"characters per row per mini-batch (BPTT length) [{D['seq_length']}]")
    t.add_argument("--epochs", type=_typed(int, "epochs", TRAIN_CHECKS),
                   help=f"passes over the training text [{D['epochs']}]")
    t.add_argument("--lr", type=_typed(float, "lr", TRAIN_CHECKS), help=f"Adam learning rate [{D['lr']}]")
    t.add_argument("--clip", type=_typed(float, "clip", TRAIN_CHECKS),
                   help=f"gradient-norm clipping threshold [{D['clip']}]")
    t.add_argument("--val-frac", type=_typed(float, "val_frac", TRAIN_CHECKS),
                   help=f"fraction of the text (its end) held out for validation [{D['val_frac']}]")
    t.add_argument("--seed", type=_typed(int, "seed", TRAIN_CHECKS),
                   help=f"random seed (weights, dropout) [{D['seed']}]")
    t.add_argument("--device", choices=["cpu", "cuda"], help=f"[{D['device']}]")
    t.add_argument("--backend", choices=list(BACKENDS),
                   help=f"fastlstm.FastLSTM or torch.nn.LSTM [{D['backend']}]")
    t.add_argument("--cell", choices=sorted(CELLS), help=f"recurrent cell [{D['cell']}]")
    t.add_argument("--dtype", choices=list(DTYPES),
                   help=f"compute dtype (torch.autocast); weights and optimizer state stay float32; "
                        f"float16 adds a GradScaler [{D['dtype']}]")
    t.add_argument("--max-steps", type=_typed(int, "max_steps", TRAIN_CHECKS),
                   help="stop after this many steps in total (counting resumed ones) [no limit]")
    t.add_argument("--val-every", type=_typed(int, "val_every", TRAIN_CHECKS),
                   help="also validate (and checkpoint) every N steps; 0: each epoch only [0]")
    t.add_argument("--ckpt-every", type=_typed(int, "ckpt_every", TRAIN_CHECKS),
                   help="checkpoint every N steps instead of at each validation; 0: at each validation [0]")
    t.add_argument("--threads", type=_typed(int, "threads", TRAIN_CHECKS),
                   help="torch.set_num_threads(N) [torch's default]")
    t.add_argument("--resume", action="store_true",
                   help="continue from --out/checkpoint.pt exactly where it stopped")

    s = sub.add_parser("sample", help="print text generated from a checkpoint")
    s.add_argument("--checkpoint", required=True, help="checkpoint file, or a training output directory")
    s.add_argument("--prime", default="Anna", help="text to start from, printed first [Anna]")
    s.add_argument("--length", type=_typed(int, "length", SAMPLE_CHECKS), default=1000,
                   help="characters to generate after the prime [1000]")
    s.add_argument("--temperature", type=_typed(float, "temperature", SAMPLE_CHECKS), default=1.0,
                   help="divide the logits by T: <1 sharper, >1 flatter, 0 greedy [1.0]")
    s.add_argument("--top-k", type=_typed(int, "top_k", SAMPLE_CHECKS), default=5,
                   help="draw only from the K most likely characters; 0: all; 1: greedy [5]")
    s.add_argument("--seed", type=_typed(int, "seed", SAMPLE_CHECKS), default=None,
                   help="same seed, same text [fresh randomness]")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="[cpu]")
    s.add_argument("--backend", choices=list(BACKENDS), default=None,
                   help="run the weights on this backend [the checkpoint's]")
    s.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="compute dtype [the checkpoint's, i.e. the one it was trained in]")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; 0 on success, 2 (with one line on stderr) on bad input, as argparse does."""
    args = _parser().parse_args(argv)
    prog = f"fastlstm-charrnn {args.command}"
    try:
        if args.command == "train":
            from .train import train
            opts = vars(args)
            opts.pop("command")
            train(opts)
            return 0
        from .sample import load_model, sample
        model, vocab = load_model(args.checkpoint, args.device, args.backend, args.dtype)
        try:
            text = sample(model, vocab, args.prime, args.length, args.temperature, args.top_k, args.seed)
        except (KeyError, ValueError) as e:
            raise CharRNNError(e.args[0]) from None
    except CharRNNError as e:
        return _fail(prog, str(e))
    except OSError as e:
        # Writing the outputs can fail too (disk full, permissions): the environment, not a bug.
        where = f": {e.filename}" if e.filename else ""
        return _fail(prog, f"{e.strerror or e}{where}")
    sys.stdout.write(text + "\n")
    return 0


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())
