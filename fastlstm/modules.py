"""FastLSTM and convert, where they were first defined (pickled models and users' code name
``fastlstm.modules.FastLSTM``); they live in fastlstm.cells and fastlstm.rnn now."""
from .cells import convert
from .cells.lstm import FastLSTM
from .ops import has_kernels as _has_kernels
from .rnn import (_CPU_DTYPES, _AfterImport, _c10_name, _install_dynamo_hook, _lengths_from_batch_sizes,  # noqa: F401
                  _let_dynamo_trace_fastlstm, _warn_once, _warned, has_kernels)

_HAS = {dev: _has_kernels("lstm", dev) for dev in ("cpu", "cuda")}

__all__ = ["FastLSTM", "convert", "has_kernels"]
