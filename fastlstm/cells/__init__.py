"""The cells, one file each: the module beside its float64 oracle (``*_ref``).

A new cell is a row in fastlstm.ops.CELL_OPS (its ops), a one-layer function there, and a file here with a
`Cell` description, the module (RNNEngine over a torch module, or CustomRNNBase) and its oracle.
"""
from torch import nn

from .gru import FastGRU
from .layernorm_lstm import LayerNormLSTM
from .lstm import FastLSTM
from .peephole import PeepholeLSTM

__all__ = ["FastLSTM", "FastGRU", "PeepholeLSTM", "LayerNormLSTM", "convert"]


def convert(model: nn.Module) -> nn.Module:
    """Replace every torch.nn.LSTM (nn.GRU) inside ``model`` with a FastLSTM (FastGRU), in place; return it.

    Each submodule swapped keeps its weights, device, dtype and train/eval mode. Returns the model; if
    ``model`` is itself an nn.LSTM or nn.GRU, the returned fast module replaces it.
    """
    swap = {nn.LSTM: FastLSTM.from_lstm, nn.GRU: FastGRU.from_gru}
    if type(model) in swap:
        return swap[type(model)](model)
    for name, child in list(model.named_children()):
        if type(child) in swap:
            setattr(model, name, swap[type(child)](child))
        else:
            convert(child)
    return model
