"""fastlstm: fused LSTM kernels for PyTorch, and FastLSTM, a drop-in replacement for torch.nn.LSTM.

Importing compiles nothing: the kernels are built once, at install time (setup.py).
"""
import torch  # noqa: F401  (loads libtorch before our extension)

try:
    from . import _C  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "fastlstm's compiled extension (fastlstm._C) could not be loaded. Install the package with "
        "`pip install --no-build-isolation .` from the source tree, against the torch you run with "
        f"(torch {torch.__version__} here). Original error: {e}") from e

from . import ops  # noqa: E402,F401  (registers the fake kernels and autograd of every op)
from .cells import FastGRU, FastLSTM, LayerNormLSTM, PeepholeLSTM, convert  # noqa: E402
from .functional import gru, lstm  # noqa: E402
from .ops import gru_layer, layernorm_lstm_layer, lstm_layer, peephole_layer  # noqa: E402
from .rnn import has_kernels  # noqa: E402

__version__ = "0.1.0"
__all__ = ["FastLSTM", "FastGRU", "PeepholeLSTM", "LayerNormLSTM", "convert", "lstm", "lstm_layer", "gru",
           "gru_layer", "peephole_layer", "layernorm_lstm_layer", "has_kernels"]

# Issue 15: whole saved models holding fastlstm modules load under torch.load(weights_only=True).
from .serialization import register_safe_globals  # noqa: E402

register_safe_globals()

# Issue 12 item 7: torch.ao.quantization.quantize_dynamic treats FastLSTM / FastGRU as nn.LSTM / nn.GRU.
from .quantization import install_quantization_hook  # noqa: E402

install_quantization_hook()
