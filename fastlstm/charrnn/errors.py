"""What the char-RNN rejects, and how: one exception type for bad input, and the checks of every option.

Bad input (a missing or damaged file, a text too short, an option out of range) raises ``CharRNNError``
with a message meant for the user; the command line prints it as one line and exits with status 2, so a
script sees a usage error, not a crash. Anything else that escapes is a bug and keeps its traceback.

The option checks live here, once, and are used twice: by the command line's argparse types (so a bad
flag is refused before a file is read) and by ``train``/``sample`` themselves (library callers, and
configurations read back from a checkpoint).
"""
from __future__ import annotations

import math
from typing import Any, Callable


class CharRNNError(Exception):
    """Bad input to the char-RNN (a file, a text, an option); str(e) is the user-facing message."""


def _int(v: Any) -> int:
    # bool is an int subclass; True as "--hidden" would be a caller's mistake, not a size.
    if isinstance(v, bool) or not isinstance(v, int):
        raise CharRNNError(f"must be an integer, got {v!r}")
    return v


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CharRNNError(f"must be a number, got {v!r}")
    v = float(v)
    # nan compares false with every bound, so without this a nan would pass every range check below.
    if not math.isfinite(v):
        raise CharRNNError(f"must be a finite number, got {v}")
    return v


def positive_int(v: Any) -> int:
    v = _int(v)
    if v < 1:
        raise CharRNNError(f"must be a positive integer, got {v}")
    return v


def nonneg_int(v: Any) -> int:
    v = _int(v)
    if v < 0:
        raise CharRNNError(f"must be an integer >= 0, got {v}")
    return v


def seed(v: Any) -> int:
    # torch.manual_seed's own range; outside it torch raises a bare "Overflow when unpacking long long".
    v = _int(v)
    if not -2 ** 63 <= v < 2 ** 64:
        raise CharRNNError(f"must be an integer in [-2**63, 2**64), got {v}")
    return v


def positive_float(v: Any) -> float:
    v = _float(v)
    if v <= 0:
        raise CharRNNError(f"must be a finite number > 0, got {v}")
    return v


def nonneg_float(v: Any) -> float:
    v = _float(v)
    if v < 0:
        raise CharRNNError(f"must be a finite number >= 0, got {v}")
    return v


def probability(v: Any) -> float:
    v = _float(v)
    if not 0.0 <= v <= 1.0:
        raise CharRNNError(f"must be in [0, 1], got {v}")
    return v


def fraction(v: Any) -> float:
    # 1 would leave no training text at all.
    v = _float(v)
    if not 0.0 <= v < 1.0:
        raise CharRNNError(f"must be in [0, 1), got {v}")
    return v


# train's options (DEFAULTS' keys) -> check; None (not given / no limit) is allowed where noted in
# OPTIONAL. Every numeric option has one: an unchecked 0 or nan surfaces later as a ZeroDivisionError
# or a nan loss.
TRAIN_CHECKS: dict[str, Callable[[Any], Any]] = dict(
    hidden=positive_int, layers=positive_int, dropout=probability, batch_size=positive_int,
    seq_length=positive_int, epochs=positive_int, lr=positive_float, clip=positive_float,
    val_frac=fraction, seed=seed, max_steps=positive_int, val_every=nonneg_int, ckpt_every=nonneg_int,
    threads=positive_int)
OPTIONAL = {"max_steps", "threads"}

SAMPLE_CHECKS: dict[str, Callable[[Any], Any]] = dict(
    length=nonneg_int, temperature=nonneg_float, top_k=nonneg_int, seed=seed)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check(name: str, value: Any, checks: dict) -> Any:
    """value, checked by checks[name]; CharRNNError names the flag."""
    try:
        return checks[name](value)
    except CharRNNError as e:
        raise CharRNNError(f"{flag(name)} {e}") from None
