"""Generating text from a trained checkpoint, one character at a time.

How the next character is drawn from the logits z [V] (see ``probabilities``):
  temperature T > 0: p = softmax(z / T). T = 1 is the model's own distribution; T < 1 sharpens it
                     (T -> 0 approaches greedy argmax), T > 1 flattens it (T -> inf approaches uniform).
  temperature 0:     greedy: always the most likely character.
  top-k K > 0:       only the K most likely characters keep probability (renormalised); K = 1 is greedy
                     whatever the temperature and seed; K = 0 (or K >= V) keeps all.
The same checkpoint, prime, options and seed give the same text.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .data import Vocab
from .errors import SAMPLE_CHECKS, CharRNNError, check
from .model import BACKENDS, CharRNN
from .train import build_model, check_dtype, load_checkpoint


def load_model(checkpoint: str, device: str = "cpu", backend: Optional[str] = None,
               dtype: Optional[str] = None) -> tuple[CharRNN, Vocab]:
    """(model in eval mode on ``device``, vocab) from a checkpoint file or an output directory.
    ``backend`` overrides the one trained with (the weights are interchangeable); ``dtype`` overrides
    the compute dtype it was trained in (the weights are float32 either way)."""
    if backend is not None and backend not in BACKENDS:
        raise CharRNNError(f"--backend must be one of {list(BACKENDS)}, got {backend!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise CharRNNError("--device cuda: no CUDA device is available")
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    cell = cfg.get("cell", "lstm")
    if cell == "peephole" and (backend or cfg["backend"]) != "fastlstm":
        raise CharRNNError("--backend torch: this checkpoint is a peephole LSTM, which torch.nn does not have")
    # Sampling runs without autograd, where nn.LSTM's float16 CPU limit is only this CPU's (oneDNN needs float16
    # arithmetic there); the name is still checked, a stored one included.
    check_dtype(dtype or cfg.get("dtype", "float32"), device, backend or cfg["backend"], cell, training=False)
    try:
        vocab = Vocab(ckpt["vocab"])
        model = build_model(len(vocab), cfg, "cpu", backend, dtype)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        # The archive's CRCs were right (load_checkpoint), so this is a file that is not ours, or ours
        # but inconsistent with itself; either way no model comes out of it.
        first = (str(e).strip().splitlines() or [""])[0]
        raise CharRNNError(f"{checkpoint} is not a usable fastlstm-charrnn checkpoint "
                           f"({type(e).__name__}: {first})") from None
    return model.to(device).eval(), vocab


def probabilities(logits: Tensor, temperature: float = 1.0, top_k: int = 0) -> Tensor:
    """Next-character probabilities [V] (float64) from logits [V], as described in the module docstring."""
    # nan passed the old "< 0" test and came out of softmax as nan probabilities.
    if not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    z = logits.detach().to(torch.float64).flatten()
    if temperature == 0 or top_k == 1:
        p = torch.zeros_like(z)
        p[z.argmax()] = 1.0
        return p
    z = z / temperature
    if 0 < top_k < z.numel():
        kth = z.topk(top_k).values[-1]
        z = z.masked_fill(z < kth, float("-inf"))
    return torch.softmax(z, 0)


@torch.no_grad()
def sample(model: CharRNN, vocab: Vocab, prime: str = "Anna", length: int = 1000, temperature: float = 1.0,
           top_k: int = 5, seed: Optional[int] = None) -> str:
    """``prime`` followed by ``length`` generated characters. The prime (non-empty, every character in
    the vocabulary) is read in one pass to set the state; then each character is drawn from
    ``probabilities`` and fed back. ``seed`` fixes the draws (None: fresh randomness)."""
    if not prime:
        raise ValueError("prime must be at least one character")
    try:
        for name, v in (("length", length), ("temperature", temperature), ("top_k", top_k), ("seed", seed)):
            if v is not None:
                check(name, v, SAMPLE_CHECKS)
    except CharRNNError as e:
        raise ValueError(str(e)) from None
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    dev = next(model.parameters()).device
    model.eval()
    state = model.init_state(1, dev)
    logits, state = model(vocab.encode(prime).view(-1, 1).to(dev), state)
    out = []
    for _ in range(length):
        p = probabilities(logits[-1, 0].cpu(), temperature, top_k)
        c = int(torch.multinomial(p, 1, generator=g))
        out.append(c)
        logits, state = model(torch.tensor([[c]], device=dev), state)
    return prime + vocab.decode(out)
