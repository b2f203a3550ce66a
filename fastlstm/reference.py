"""The oracles tests compare fastlstm against, by the names they have always had; each lives beside its
module in fastlstm/cells/ (the shared loops in fastlstm/cells/oracle.py). Not used by the package itself.

Plain Python loops over time with the textbook cells, computed in float64 (or as asked), built only from
differentiable torch ops so that their gradients come from autograd, independently of our hand-written
backward.
"""
from .cells.gru import gru_cell_ref, gru_layer_ref, gru_module_params, gru_ref
from .cells.layernorm_lstm import (layer_norm_ref, layernorm_lstm_cell_ref, layernorm_lstm_layer_ref,
                                   layernorm_lstm_ref, layernorm_module_params)
from .cells.lstm import lstm_cell_ref, lstm_layer_ref, lstm_ref, module_params
from .cells.peephole import (_peep, peephole_lstm_cell_ref, peephole_lstm_layer_ref, peephole_lstm_ref,  # noqa: F401
                             peephole_module_params)

__all__ = ["lstm_cell_ref", "lstm_layer_ref", "lstm_ref", "module_params", "gru_cell_ref", "gru_layer_ref",
           "gru_ref", "gru_module_params", "peephole_lstm_cell_ref", "peephole_lstm_layer_ref",
           "peephole_lstm_ref", "peephole_module_params", "layer_norm_ref", "layernorm_lstm_cell_ref",
           "layernorm_lstm_layer_ref", "layernorm_lstm_ref", "layernorm_module_params"]
