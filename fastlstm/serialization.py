"""Whole models holding fastlstm modules load under torch.load's default ``weights_only=True`` (issue 15).

``torch.save(model)`` pickles each module by reference to its class (``GLOBAL fastlstm.modules.FastLSTM``);
since torch 2.6 ``torch.load`` refuses every class not allowlisted with
``torch.serialization.add_safe_globals``. Importing fastlstm allowlists its module classes here. Pickling
each module whole shows that its class is the only global it adds: the rest of its state (parameters,
OrderedDicts of hooks, ints, floats, bools, strings such as PeepholeLSTM's ``peephole`` mode, lists of
parameter names) is what the weights_only unpickler accepts anyway. tests/test_serialization.py checks
that by loading every module of ``fastlstm.__all__``.

Allowlisting a class lets the unpickler create an instance without calling ``__init__`` and set its
``__dict__`` (nn.RNNBase's ``__setstate__`` for FastLSTM/FastGRU); none of fastlstm's classes run code
from the pickle there, which is what makes them safe to allowlist.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

# Module classes added when they exist (another branch adds LayerNormLSTM); a class that exists and is
# exported through fastlstm.__all__ is found without being named here.
_MAYBE = ("LayerNormLSTM",)

# Where each class lived when checkpoints were written: a pickle names the class by the module it was
# defined in, and the classes are being moved (fastlstm.rnn, fastlstm.cells.*) behind re-exports at these
# paths. Checkpoints saved by fastlstm 0.1.0 must keep loading after the move.
_SAVED_UNDER = {
    "FastLSTM": ("fastlstm.modules.FastLSTM",),
    "FastGRU": ("fastlstm.gru.FastGRU",),
    "PeepholeLSTM": ("fastlstm.peephole.PeepholeLSTM",),
}


def module_classes() -> list[type]:
    """Every nn.Module subclass fastlstm exports (fastlstm.__all__, plus LayerNormLSTM if present): the
    one list both the registration and its test read, so a new module class cannot be forgotten."""
    package = sys.modules[__package__]
    names = list(package.__all__) + [n for n in _MAYBE if n not in package.__all__]
    classes = []
    for name in names:
        obj = getattr(package, name, None)
        if isinstance(obj, type) and issubclass(obj, nn.Module) and obj not in classes:
            classes.append(obj)
    return classes


def safe_globals() -> list:
    """What register_safe_globals passes to torch.serialization.add_safe_globals: each module class, and
    (class, path) for its current path and each path older checkpoints name it by.

    The (class, current path) entry duplicates the bare class on purpose: leaving a
    ``with torch.serialization.safe_globals([fastlstm.FastLSTM]):`` block removes the bare class from
    torch's allowlist (torch 2.13 removes exactly what the block added, even if it was there before), and
    plain torch.load would then refuse FastLSTM for the rest of the process; the tuple survives that."""
    entries: list = []
    for cls in module_classes():
        entries.append(cls)
        current = f"{cls.__module__}.{cls.__qualname__}"
        entries += [(cls, path) for path in dict.fromkeys((current, *_SAVED_UNDER.get(cls.__name__, ())))]
    return entries


def register_safe_globals() -> None:
    """Allowlist fastlstm's module classes for torch.load(weights_only=True); called by ``import fastlstm``.

    Idempotent (the allowlist is a set). Classes added to the allowlist later by the user, or by a
    ``torch.serialization.safe_globals([...])`` block, are added to these, not instead of them.
    """
    torch.serialization.add_safe_globals(safe_globals())
