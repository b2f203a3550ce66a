"""PeepholeLSTM and its layer function, where they were first defined (``fastlstm.peephole.PeepholeLSTM``);
they live in fastlstm.cells.peephole and fastlstm.ops now."""
from .cells.peephole import PEEPHOLE_MODES, PeepholeLSTM
from .ops import has_kernels as _has_kernels
from .ops import peephole_layer

_HAS = {dev: _has_kernels("peephole", dev) for dev in ("cpu", "cuda")}

__all__ = ["PeepholeLSTM", "peephole_layer", "PEEPHOLE_MODES"]
