"""Training: sequence batching, carried (detached) state, Adam, clipping, validation, logs, checkpoints.

One process, or many under torchrun (DistributedDataParallel; gloo on the CPU, nccl on GPUs): process r
of W takes batch rows [r*B/W, (r+1)*B/W) of every mini-batch, so W processes together make exactly the
one-process batch and DDP's gradient average is the one-process gradient. Only rank 0 writes files.

Files in the output directory:
  checkpoint.pt  weights, optimizer state, vocabulary, configuration and position (epoch, batch, step,
                 carried state of every row, every process's RNG state); written atomically
  log.csv        step,epoch,split,loss,chars_per_sec,seconds  (split: train every step, val when measured)
  loss.png       training and validation loss against epochs
  metrics.json   val_loss (nats/char) and more, see _metrics
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import time
import zipfile
import zlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..autocast import torch_lstm_runs_cpu_autocast
from .data import Vocab, batch_rows, load_text, num_batches, split
from .errors import OPTIONAL, TRAIN_CHECKS, CharRNNError, check, flag
from .model import BACKENDS, CELLS, DTYPES, CharRNN, State, detach

CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"
PLOT = "loss.png"
METRICS = "metrics.json"
LOG_FIELDS = ["step", "epoch", "split", "loss", "chars_per_sec", "seconds"]

# The lesson's configuration.
DEFAULTS = dict(hidden=512, layers=2, dropout=0.5, batch_size=128, seq_length=100, epochs=20, lr=1e-3,
                clip=5.0, val_frac=0.1, seed=0, device="cpu", backend="fastlstm", cell="lstm", dtype="float32",
                max_steps=None, val_every=0, ckpt_every=0, threads=None)
# What may differ from the checkpoint's configuration when resuming: how long to run, how often to
# validate and checkpoint, and where to run. Everything else would change the run being continued
# (--dtype included: its rounding is part of the trajectory). A checkpoint from before --dtype existed has
# no "dtype" in its configuration and resumes as float32, which is what it was.
RESUME_MAY_CHANGE = {"epochs", "max_steps", "val_every", "ckpt_every", "threads", "device"}


@dataclass
class Dist:
    """This process's place in the job: rank, world size, device; ``on`` when torchrun started >1."""
    rank: int
    world: int
    device: torch.device
    on: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_dist(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise CharRNNError("--device cuda: no CUDA device is available")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise CharRNNError(f"--device must be cpu or cuda, got {device!r}")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev, world > 1)


def _rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["cpu"])
    if device.type == "cuda" and s.get("cuda") is not None:
        torch.cuda.set_rng_state(s["cuda"], device)


def _tmp_name(path: str, pid: int) -> str:
    return f"{path}.tmp{pid}"


def _atomic_write(path: str, write) -> None:
    """write(f) into path's temporary sibling, fsync, then rename over path (readers never see half)."""
    tmp = _tmp_name(path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A failed write (disk full, an exception in write, Ctrl-C) must not leave its half file behind;
        # only a kill gets past this, and remove_stale_temporaries cleans up after that.
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


# The files _atomic_write writes in an output directory, and the temporary names it gives them.
_WRITTEN = (CHECKPOINT, PLOT, METRICS)
_TMP = re.compile("^(" + "|".join(re.escape(n) for n in _WRITTEN) + r")\.tmp([0-9]+)$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        # Called before this process writes anything, so a file with our pid is a dead process's
        # (pids are reused, in containers especially), not ours.
        return False
    if pid <= 0:
        return False  # no writer has pid 0, and os.kill(0, 0) would signal our own process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    except (OverflowError, ValueError):
        return False  # beyond any pid
    return True


def remove_stale_temporaries(out: str) -> list[str]:
    """Delete the temporary files that writers killed mid-write (SIGKILL, power loss) left in ``out``:
    only names _atomic_write makes (checkpoint.pt.tmp<pid>, ...), and only when no process with that
    pid is alive (a live one may be writing it right now). Returns the paths removed."""
    removed = []
    try:
        names = os.listdir(out)
    except OSError:
        return removed
    for name in sorted(names):
        m = _TMP.match(name)
        if m is None or _pid_alive(int(m.group(2))):
            continue
        path = os.path.join(out, name)
        try:
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
                removed.append(path)
        except OSError:
            pass  # gone already (another run cleaning up), or not ours to remove
    return removed


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}".rstrip(": ")


# What each use of a checkpoint reads from it; anything else is not one of ours.
_CKPT_KEYS = {"format", "config", "vocab", "model"}
_RESUME_KEYS = _CKPT_KEYS | {"optimizer", "position", "text_crc32"}
_CONFIG_KEYS = {"hidden", "layers", "dropout", "backend"}


def load_checkpoint(path: str, resume: bool = False) -> dict:
    """The checkpoint at ``path``, or at path/checkpoint.pt when ``path`` is a directory; on the CPU.

    CharRNNError (one line, naming the file) when it is missing, empty, damaged or not a char-RNN
    checkpoint. torch.load checks none of the CRC-32s of the zip archive it reads, so a flipped bit in a
    weight would load as a silently wrong number; every record's CRC is verified here first.
    ``resume``: also require what resuming training reads (optimizer state, position)."""
    if os.path.isdir(path):
        d, path = path, os.path.join(path, CHECKPOINT)
        if not os.path.exists(path):
            raise CharRNNError(f"{d} holds no {CHECKPOINT}")
    if not os.path.exists(path):
        raise CharRNNError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise CharRNNError(f"{path} is not a file")
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise CharRNNError(f"{path} is empty (0 bytes), not a checkpoint")
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except CharRNNError:
        raise
    except OSError as e:
        raise CharRNNError(f"{path}: {e.strerror or _first_line(e)}") from None
    except Exception as e:  # zipfile raises many types for a damaged archive (BadZipFile, EOFError, ...)
        raise CharRNNError(f"{path} is damaged or not a checkpoint (not a readable zip archive: "
                           f"{_first_line(e)})") from None
    if bad is not None:
        raise CharRNNError(f"{path} is damaged: its record {bad} fails its CRC-32 check")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CharRNNError(f"{path} is damaged or not a checkpoint ({_first_line(e)})") from None
    need = _RESUME_KEYS if resume else _CKPT_KEYS
    if not isinstance(blob, dict) or not need <= blob.keys():
        raise CharRNNError(f"{path} is not a fastlstm-charrnn checkpoint")
    if blob["format"] != 1:
        raise CharRNNError(f"{path} has checkpoint format {blob['format']!r}; this version reads format 1")
    if not isinstance(blob["config"], dict) or not _CONFIG_KEYS <= blob["config"].keys():
        raise CharRNNError(f"{path} is not a fastlstm-charrnn checkpoint (its configuration is incomplete)")
    return blob


def check_config(cfg: dict) -> dict:
    """cfg with every option checked (TRAIN_CHECKS), and the cell and backend known and compatible;
    CharRNNError names the first bad option."""
    for k, chk in TRAIN_CHECKS.items():
        if cfg.get(k) is None and k in OPTIONAL:
            continue
        check(k, cfg.get(k), TRAIN_CHECKS)
    if cfg.get("cell") not in CELLS:
        raise CharRNNError(f"--cell must be one of {sorted(CELLS)}, got {cfg.get('cell')!r}")
    if cfg.get("backend") not in BACKENDS:
        raise CharRNNError(f"--backend must be one of {list(BACKENDS)}, got {cfg.get('backend')!r}")
    if cfg["cell"] == "peephole" and cfg["backend"] != "fastlstm":
        # torch.nn has no peephole LSTM; a silent substitute would make the comparison meaningless.
        raise CharRNNError("--cell peephole exists only with --backend fastlstm (torch.nn has no peephole LSTM)")
    check_dtype(cfg.get("dtype", "float32"), cfg["device"], cfg["backend"], cfg["cell"], training=True)
    return cfg


def check_dtype(dtype, device: str, backend: str, cell: str, training: bool) -> None:
    """CharRNNError when --dtype is unknown, or when torch cannot run this combination."""
    if dtype not in DTYPES:
        raise CharRNNError(f"--dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if dtype == "float16" and device == "cpu" and backend == "torch" and cell == "lstm" and training:
        # oneDNN's LSTM (which nn.LSTM takes under CPU autocast) has no float16 training primitive: the
        # first step would die in "could not create a primitive descriptor". fastlstm's CPU kernels have one.
        raise CharRNNError("--dtype float16 --device cpu: torch.nn.LSTM cannot train in float16 on the CPU "
                           "(oneDNN has no float16 LSTM training primitive); use --dtype bfloat16, "
                           "--backend fastlstm, or --device cuda")
    # Without autograd oneDNN has a float16 LSTM primitive only for CPUs with float16 arithmetic, and a
    # bfloat16 one only with AVX-512 (seen: an AMD EPYC Zen 3, AVX2 only, torch 2.13).
    needs = {"float16": ("avx512_fp16 / amx_fp16", "bfloat16"), "bfloat16": ("AVX-512", "float32")}
    if (dtype in needs and device == "cpu" and backend == "torch" and cell == "lstm"
            and not torch_lstm_runs_cpu_autocast(DTYPES[dtype])):
        isa, other = needs[dtype]
        raise CharRNNError(f"--dtype {dtype} --device cpu: torch.nn.LSTM cannot run {dtype} on this CPU "
                           f"(oneDNN has no {dtype} LSTM primitive for a CPU without {isa}); "
                           f"use --dtype {other}, --backend fastlstm, or --device cuda")

def _resolve_config(args: dict, ckpt: Optional[dict]) -> dict:
    """The run's configuration: DEFAULTS < command line. When resuming: the checkpoint's, except that
    RESUME_MAY_CHANGE (how long, how often, where) come from this command line or DEFAULTS, so that
    resuming a run stopped by --max-steps without the flag runs it to the end; any other option given
    must agree with the checkpoint."""
    given = {k: v for k, v in args.items() if v is not None}
    if ckpt is None:
        cfg = dict(DEFAULTS)
        cfg.update({k: v for k, v in given.items() if k in DEFAULTS})
        return check_config(cfg)
    # Options given with --resume are checked on their own first, so that a bad one is reported as bad
    # rather than as differing from the checkpoint.
    for k, v in given.items():
        if k in TRAIN_CHECKS:
            check(k, v, TRAIN_CHECKS)
    cfg = dict(DEFAULTS)
    cfg.update(ckpt["config"])
    cfg.update({k: given.get(k, DEFAULTS[k]) for k in RESUME_MAY_CHANGE})
    for k, v in given.items():
        if k in DEFAULTS and k not in RESUME_MAY_CHANGE and cfg.get(k) != v:
            raise CharRNNError(f"--resume: {flag(k)} {v} differs from the checkpoint's "
                               f"{cfg.get(k)}; a resumed run keeps its configuration (only "
                               f"{', '.join(sorted(RESUME_MAY_CHANGE))} may change)")
    try:
        return check_config(cfg)
    except CharRNNError as e:
        raise CharRNNError(f"--resume: the checkpoint's configuration is invalid: {e}") from None


def _local_rows(x: Tensor, y: Tensor, d: Dist) -> tuple[Tensor, Tensor]:
    b = x.shape[0] // d.world
    rows = slice(d.rank * b, (d.rank + 1) * b)
    return x[rows].contiguous(), y[rows].contiguous()


@torch.no_grad()
def evaluate(model: CharRNN, x: Tensor, y: Tensor, seq_length: int, d: Dist) -> float:
    """Mean cross-entropy (nats/char) over rows x, y [b, n*seq_length] (this process's share), averaged
    over all processes; the state starts at zero and is carried across the mini-batches, as in training."""
    was = model.training
    model.eval()
    state = model.init_state(x.shape[0], d.device)
    total = torch.zeros(2, dtype=torch.float64, device=d.device)
    for k in range(x.shape[1] // seq_length):
        cols = slice(k * seq_length, (k + 1) * seq_length)
        xb, yb = x[:, cols].t().to(d.device), y[:, cols].t().to(d.device)
        logits, state = model(xb, state)
        total[0] += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1), reduction="sum")
        total[1] += (yb >= 0).sum()
    if d.on:
        dist.all_reduce(total)
    model.train(was)
    return float(total[0] / total[1])


class _Log:
    """log.csv (rank 0): appended row by row and flushed, so a running job's curve can be read."""

    def __init__(self, out: str, keep_until: Optional[int]):
        self.path = os.path.join(out, LOG)
        rows = []
        if keep_until is not None and os.path.exists(self.path):
            # Resuming: rows after the checkpoint's step were written by the interrupted run past its
            # last checkpoint; the resumed run writes them again.
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        self.f = open(self.path, "w", newline="")
        self.w = csv.DictWriter(self.f, LOG_FIELDS)
        self.w.writeheader()
        self.w.writerows(rows)
        self.f.flush()

    def row(self, **kw) -> None:
        self.w.writerow(kw)
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def plot(out: str) -> None:
    """loss.png from log.csv: training loss per step (and its running mean), validation loss."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(out, LOG), newline="") as f:
        rows = list(csv.DictReader(f))
    tr = [(float(r["epoch"]), float(r["loss"])) for r in rows if r["split"] == "train"]
    va = [(float(r["epoch"]), float(r["loss"])) for r in rows if r["split"] == "val"]
    fig, ax = plt.subplots(figsize=(8, 5))
    if tr:
        e, l_ = zip(*tr)
        ax.plot(e, l_, color="tab:blue", alpha=0.25, lw=0.8)
        w = max(1, len(l_) // 50)
        run = [sum(l_[max(0, i - w + 1):i + 1]) / (i + 1 - max(0, i - w + 1)) for i in range(len(l_))]
        ax.plot(e, run, color="tab:blue", label="train")
    if va:
        e, l_ = zip(*va)
        ax.plot(e, l_, "o-", color="tab:orange", ms=3, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _atomic_write(os.path.join(out, PLOT), lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def train(args: dict) -> Optional[dict]:
    """Run (or resume) training as configured by ``args`` (the train sub-command's options as a dict:
    text, out, resume and DEFAULTS' keys; None means not given). Returns metrics.json's content on
    rank 0, None elsewhere."""
    out = args["out"]
    ckpt_path = os.path.join(out, CHECKPOINT)
    ckpt = None
    if args.get("resume") and os.path.exists(ckpt_path):
        try:
            ckpt = load_checkpoint(ckpt_path, resume=True)
        except CharRNNError as e:
            raise CharRNNError(f"--resume: {e} (remove it to start from scratch)") from None
    cfg = _resolve_config(args, ckpt)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    d = _setup_dist(cfg["device"])
    if d.main:
        if os.path.exists(out) and not os.path.isdir(out):
            raise CharRNNError(f"--out {out} exists and is not a directory")
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise CharRNNError(f"--out {out}: cannot create it ({e.strerror})") from None
        for p in remove_stale_temporaries(out):
            print(f"removed {p}, left by a writer that was killed", flush=True)
        if args.get("resume") and ckpt is None:
            print(f"--resume: no checkpoint in {out}; starting from scratch", flush=True)
    try:
        result = _train(args["text"], out, cfg, ckpt, d)
        if d.on:
            # Every rank past its last collective before any tears the group down: a rank that destroyed it
            # while its peer's gloo connection was still open aborted that peer once in CI ("terminate called
            # without an active exception", SIGABRT after the last step). Only on success: a rank that failed
            # may have left its peer inside another collective.
            dist.barrier()
        return result
    finally:
        if d.on:
            dist.destroy_process_group()


def build_model(vocab_size: int, cfg: dict, device, backend: Optional[str] = None,
                dtype: Optional[str] = None) -> CharRNN:
    """CharRNN as configured (``backend`` and ``dtype`` override cfg's), on ``device``, float32
    parameters; CharRNNError when it does not fit in memory (--hidden is checked to be positive, not to
    be small: 200000 asks for 640 GB)."""
    try:
        return CharRNN(vocab_size, cfg["hidden"], cfg["layers"], cfg["dropout"], backend or cfg["backend"],
                       cfg.get("cell", "lstm"), dtype or cfg.get("dtype", "float32")).to(device)
    except (RuntimeError, MemoryError) as e:
        msg = str(e)
        if isinstance(e, MemoryError) or "allocate" in msg or "out of memory" in msg:
            raise CharRNNError(f"a model with --hidden {cfg['hidden']} and --layers {cfg['layers']} does not "
                               f"fit in memory ({_first_line(e)[-160:]})") from None
        raise


def _read_text(path: str) -> str:
    try:
        text = load_text(path)
    except UnicodeDecodeError as e:
        raise CharRNNError(f"--text {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                           f"{e.start}: {e.reason})") from None
    except OSError as e:
        raise CharRNNError(f"--text {path}: {e.strerror or _first_line(e)}") from None
    if not text:
        raise CharRNNError(f"--text {path} is empty")
    return text


def _train(text_path: str, out: str, cfg: dict, ckpt: Optional[dict], d: Dist) -> Optional[dict]:
    from tqdm import tqdm

    B, T = cfg["batch_size"], cfg["seq_length"]
    if B % d.world:
        raise CharRNNError(f"--batch-size {B} must be divisible by the number of processes ({d.world})")
    text = _read_text(text_path)
    crc = zlib.crc32(text.encode("utf-8"))
    if ckpt is not None and ckpt["text_crc32"] != crc:
        raise CharRNNError(f"--resume: {text_path} is not the text the checkpoint was trained on")
    vocab = Vocab(ckpt["vocab"]) if ckpt is not None else Vocab.from_text(text)
    train_codes, val_codes = split(vocab.encode(text), cfg["val_frac"])
    if num_batches(len(train_codes), B, T) == 0:
        # Count what the user can check: the file's characters, and the part of them training uses.
        part = (f"its training part ({len(train_codes)} of its {len(text)} characters; --val-frac "
                f"{cfg['val_frac']:g} holds out the rest)" if cfg["val_frac"] > 0
                else f"it has {len(text)} characters")
        raise CharRNNError(f"--text {text_path} is too short: {part}, less than one batch of --batch-size "
                           f"{B} x --seq-length {T} = {B * T} characters; use a longer text or a smaller batch")
    x_tr, y_tr = _local_rows(*batch_rows(train_codes, B, T), d)
    n_batches = x_tr.shape[1] // T
    has_val = cfg["val_frac"] > 0 and num_batches(len(val_codes), B, T) > 0
    if cfg["val_frac"] > 0 and not has_val:
        raise CharRNNError(f"validation text ({len(val_codes)} chars) is shorter than one {B} x {T} batch; "
                           "raise --val-frac or lower --batch-size/--seq-length (or --val-frac 0)")
    x_va, y_va = _local_rows(*batch_rows(val_codes, B, T), d) if has_val else (None, None)
    total_steps = cfg["epochs"] * n_batches
    if cfg["max_steps"] is not None:
        total_steps = min(total_steps, cfg["max_steps"])

    torch.manual_seed(cfg["seed"])
    model = build_model(len(vocab), cfg, d.device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    # float16's 5 exponent bits underflow small gradients to zero: scale the loss up, and skip the steps
    # whose scaled gradients overflow (GradScaler). bfloat16 has float32's range and needs none.
    scaler = torch.amp.GradScaler(d.device.type, enabled=cfg["dtype"] == "float16")
    # Processes must differ in their dropout masks; weights are the same (seeded above, and DDP
    # broadcasts rank 0's anyway).
    if d.on:
        torch.manual_seed(cfg["seed"] + 7919 * d.rank)
    pos = dict(epoch=0, batch=0, step=0, seconds=0.0, train_seconds=0.0, loss_sum=0.0, loss_n=0, val_loss=None,
               best_val_loss=None)
    state: Optional[State] = None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        p = ckpt["position"]
        pos.update({k: p[k] for k in pos})
        if p["state"] is not None:
            b = B // d.world
            state = tuple(s[:, d.rank * b:(d.rank + 1) * b].to(d.device) for s in p["state"])
        rngs = p["rng"]
        _set_rng_state(rngs[d.rank % len(rngs)], d.device)
    net = model
    if d.on:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)

    log = _Log(out, pos["step"] if ckpt is not None else None) if d.main else None
    stop = {"signal": False}
    if not d.on:
        # SIGTERM / Ctrl-C: finish the current step, checkpoint, exit. (Under torchrun the launcher
        # owns signals; there a stop would have to be agreed on by all ranks.)
        def _handler(signum, frame):
            stop["signal"] = True
        old = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def metrics() -> dict:
        m = dict(val_loss=pos["val_loss"], best_val_loss=pos["best_val_loss"],
                 val_bits_per_char=None if pos["val_loss"] is None else pos["val_loss"] / math.log(2),
                 train_loss=pos["loss_sum"] / pos["loss_n"] if pos["loss_n"] else None,
                 steps=pos["step"], epochs=pos["step"] / n_batches, seconds=pos["seconds"],
                 train_seconds=pos["train_seconds"],
                 chars_per_sec=pos["step"] * B * T / pos["train_seconds"] if pos["train_seconds"] else None,
                 steps_per_epoch=n_batches, vocab_size=len(vocab), world_size=d.world,
                 threads=torch.get_num_threads(), backend=cfg["backend"], cell=cfg["cell"],
                 dtype=cfg["dtype"], device=str(d.device.type), config=cfg)
        return m

    def checkpoint() -> None:
        # Every process's carried state rows and RNG state go into the one file rank 0 writes.
        mine = {"state": None if state is None else tuple(s.detach().cpu() for s in state),
                "rng": _rng_state(d.device)}
        parts = [None] * d.world
        if d.on:
            dist.all_gather_object(parts, mine)
        else:
            parts = [mine]
        if not d.main:
            return
        full = None if state is None else tuple(torch.cat([p["state"][i] for p in parts], 1)
                                                for i in range(len(state)))
        blob = {"format": 1, "config": cfg, "vocab": vocab.chars, "text_crc32": crc,
                "model": model.state_dict(), "optimizer": opt.state_dict(), "world_size": d.world,
                "scaler": scaler.state_dict(),
                "position": {**pos, "state": full, "rng": [p["rng"] for p in parts]}}
        _atomic_write(os.path.join(out, CHECKPOINT), lambda f: torch.save(blob, f))

    def tick() -> None:
        # Wall time of the run (steps, validation, checkpoints), summed over resumed sessions.
        nonlocal t_mark
        now = time.perf_counter()
        pos["seconds"] += now - t_mark
        t_mark = now

    def validate() -> None:
        if not has_val:
            return
        v = evaluate(model, x_va, y_va, T, d)
        tick()
        pos["val_loss"] = v
        pos["best_val_loss"] = v if pos["best_val_loss"] is None else min(pos["best_val_loss"], v)
        if d.main:
            log.row(step=pos["step"], epoch=f"{pos['step'] / n_batches:.4f}", split="val", loss=f"{v:.6f}",
                    chars_per_sec="", seconds=f"{pos['seconds']:.2f}")
            tr = pos["loss_sum"] / pos["loss_n"] if pos["loss_n"] else float("nan")
            bar.write(f"step {pos['step']}  epoch {pos['step'] / n_batches:.2f}  val_loss {v:.4f}  "
                      f"train_loss {tr:.4f}  {pos['seconds']:.0f}s")

    def write_outputs() -> None:
        tick()
        if d.main:
            blob = json.dumps(metrics(), indent=2).encode()
            _atomic_write(os.path.join(out, METRICS), lambda f: f.write(blob))
            plot(out)

    bar = tqdm(total=total_steps, initial=pos["step"], disable=not d.main, dynamic_ncols=True,
               desc=f"{cfg['backend']} {cfg['dtype']} train", unit="step")
    last_val = last_ckpt = pos["step"]
    speed = None
    t_mark = time.perf_counter()  # noqa: F841  (read and reset by tick())
    chars = B * T
    V = len(vocab)
    try:
        while pos["epoch"] < cfg["epochs"] and pos["step"] < total_steps and not stop["signal"]:
            if pos["batch"] == 0:
                state = None
                pos["loss_sum"], pos["loss_n"] = 0.0, 0
            if state is None:
                state = model.init_state(x_tr.shape[0], d.device)
            while pos["batch"] < n_batches and pos["step"] < total_steps:
                cols = slice(pos["batch"] * T, (pos["batch"] + 1) * T)
                xb, yb = x_tr[:, cols].t().to(d.device), y_tr[:, cols].t().to(d.device)
                t0 = time.perf_counter()
                logits, state = net(xb, detach(state))
                loss = F.cross_entropy(logits.reshape(-1, V), yb.reshape(-1))
                opt.zero_grad(set_to_none=True)
                # With the scaler disabled (float32, bfloat16) scale, unscale_ and update do nothing and
                # step is opt.step(): the float32 path is the one it always was.
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
                scaler.step(opt)
                scaler.update()
                state = detach(state)
                # One small all-reduce per step: the mean loss over processes, and whether any was told
                # to stop, so that all stop at the same step.
                flag = torch.tensor([loss.item(), float(stop["signal"])], dtype=torch.float64)
                if d.on:
                    flag = flag.to(d.device)
                    dist.all_reduce(flag)
                    flag = flag.cpu()
                    flag[0] /= d.world
                if d.device.type == "cuda":
                    torch.cuda.synchronize(d.device)
                dt = time.perf_counter() - t0
                pos["step"] += 1
                pos["batch"] += 1
                lv = float(flag[0])
                pos["loss_sum"] += lv
                pos["loss_n"] += 1
                pos["train_seconds"] += dt
                tick()
                speed = chars / dt if speed is None else 0.9 * speed + 0.1 * chars / dt
                if d.main:
                    log.row(step=pos["step"], epoch=f"{pos['step'] / n_batches:.4f}", split="train",
                            loss=f"{lv:.6f}", chars_per_sec=f"{chars / dt:.0f}",
                            seconds=f"{pos['seconds']:.2f}")
                    bar.set_postfix(loss=f"{lv:.4f}", chars_s=f"{speed:,.0f}", refresh=False)
                    bar.update(1)
                stop["signal"] = bool(flag[1] > 0)
                if cfg["val_every"] and pos["step"] % cfg["val_every"] == 0 and pos["batch"] < n_batches:
                    validate()
                    last_val = pos["step"]
                    if not cfg["ckpt_every"]:
                        checkpoint()
                        last_ckpt = pos["step"]
                    write_outputs()
                if cfg["ckpt_every"] and pos["step"] % cfg["ckpt_every"] == 0 and pos["batch"] < n_batches:
                    checkpoint()
                    last_ckpt = pos["step"]
                if stop["signal"]:
                    break
            if pos["batch"] == n_batches:
                # End of the epoch: the next one starts from a zero state (as in the lesson).
                pos["epoch"] += 1
                pos["batch"] = 0
                state = None
                if last_val != pos["step"]:
                    validate()
                    last_val = pos["step"]
                checkpoint()
                last_ckpt = pos["step"]
                write_outputs()
        # Stopped mid-epoch (--max-steps, or a signal): measure and save where we are.
        if last_val != pos["step"]:
            validate()
        if last_ckpt != pos["step"]:
            checkpoint()
        write_outputs()
    finally:
        bar.close()
        if log is not None:
            log.close()
        if not d.on:
            for s, h in old.items():
                signal.signal(s, h)
    return metrics() if d.main else None
