"""Text, vocabulary and the lesson's sequence batching.

The text is read as UTF-8 in Python's text mode, so CRLF line ends become "\\n" (as in the lesson; on
anna.txt this gives its 1,985,223 characters and 83 distinct ones).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

# Target value for a position whose next character lies beyond the end of the text; cross_entropy's
# default ignore_index, so the loss skips it.
IGNORE = -100


def load_text(path: str) -> str:
    """The whole UTF-8 file at ``path`` as a str (universal newlines)."""
    with open(path, "r", encoding="utf-8") as f:
        return f.read()


class Vocab:
    """Characters <-> integer codes; codes follow the sorted order of the distinct characters."""

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        if len(self.index) != len(self.chars):
            raise ValueError("vocabulary characters must be distinct")

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        """int64 [len(text)]; KeyError names the first character that is not in the vocabulary."""
        try:
            return torch.tensor([self.index[c] for c in text], dtype=torch.long)
        except KeyError as e:
            raise KeyError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, codes) -> str:
        return "".join(self.chars[int(i)] for i in codes)


def split(encoded: Tensor, val_frac: float) -> tuple[Tensor, Tensor]:
    """(train, val): the first 1 - val_frac of the text, then the rest (the lesson's split, no shuffle)."""
    if not 0.0 <= val_frac < 1.0:
        raise ValueError(f"val_frac must be in [0, 1), got {val_frac}")
    cut = int(len(encoded) * (1.0 - val_frac))
    return encoded[:cut], encoded[cut:]


def num_batches(n_chars: int, batch_size: int, seq_length: int) -> int:
    """How many full [batch_size, seq_length] mini-batches the lesson's batching takes from n_chars."""
    return n_chars // (batch_size * seq_length)


def batch_rows(encoded: Tensor, batch_size: int, seq_length: int) -> tuple[Tensor, Tensor]:
    """The text cut into ``batch_size`` rows: (inputs, targets), both int64 [batch_size, n * seq_length].

    Row r holds the r-th contiguous stretch of the text (what is left over after n = num_batches full
    mini-batches is dropped, as in the lesson). targets[r, j] is the character after inputs[r, j] in the
    text, i.e. the inputs shifted by one; at the row's end that is the first character of the next row,
    and the very last position of the last row has IGNORE when the text has no character after it.
    """
    n = num_batches(len(encoded), batch_size, seq_length)
    if n == 0:
        raise ValueError(f"text of {len(encoded)} characters is too short for one batch of "
                         f"{batch_size} x {seq_length}")
    N = n * batch_size * seq_length
    x = encoded[:N]
    y = torch.full((N,), IGNORE, dtype=torch.long)
    nxt = encoded[1:N + 1]
    y[:len(nxt)] = nxt
    return x.view(batch_size, -1), y.view(batch_size, -1)


def get_batches(encoded: Tensor, batch_size: int, seq_length: int,
                start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield the lesson's mini-batches in order: (x, y) int64 [batch_size, seq_length] each.

    Batch k is columns [k*seq_length, (k+1)*seq_length) of ``batch_rows``; so row r of batch k+1 continues
    row r of batch k in the text, which is what lets the LSTM state be carried from one batch to the next.
    ``start`` skips the first batches (resuming mid-epoch).
    For 1..12, batch_size 2, seq_length 3: x = [[1,2,3],[7,8,9]] then [[4,5,6],[10,11,12]].
    """
    x, y = batch_rows(encoded, batch_size, seq_length)
    for k in range(start, x.shape[1] // seq_length):
        cols = slice(k * seq_length, (k + 1) * seq_length)
        yield x[:, cols], y[:, cols]
