"""FastGRU and the GRU's functional forms, where they were first defined (``fastlstm.gru.FastGRU``); they live
in fastlstm.cells.gru, fastlstm.ops and fastlstm.functional now."""
from .cells.gru import FastGRU
from .functional import gru
from .ops import gru_layer
from .ops import has_kernels as _has_kernels

_HAS = {dev: _has_kernels("gru", dev) for dev in ("cpu", "cuda")}

__all__ = ["FastGRU", "gru", "gru_layer"]
