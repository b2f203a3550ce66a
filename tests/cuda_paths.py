"""Which of fastlstm's two CUDA paths runs: the default one (a GEMM and a fused pointwise kernel per step) or
the persistent fused kernel, which is off unless FASTLSTM_CUDA_PERSISTENT=1.

The tests (through conftest) and scripts/gpu_bench_persistent.py switch paths only through set_persistent, so
whichever control fastlstm ends up with (the variable read per call, or a Python switch
``fastlstm._cuda_persistent(on)``) is handled here and nowhere else. A build without the persistent path
still runs everything: set_persistent then reports "persistent path not built" and the default path runs.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

ENV = "FASTLSTM_CUDA_PERSISTENT"
NOT_BUILT = "persistent path not built"


@functools.lru_cache(maxsize=None)
def _reads_env_var() -> bool:
    """Whether the installed fastlstm reads FASTLSTM_CUDA_PERSISTENT: its name is then a string constant in
    one of its compiled extensions (a getenv in C++) or in its Python sources. Nothing else names it."""
    import fastlstm

    root = Path(fastlstm.__file__).resolve().parent
    needle = ENV.encode()
    for f in list(root.glob("*.so")) + list(root.rglob("*.py")):
        try:
            if needle in f.read_bytes():
                return True
        except OSError:
            continue
    return False


def _switch():
    import fastlstm

    f = getattr(fastlstm, "_cuda_persistent", None)
    return f if callable(f) else None


def built() -> bool:
    return _switch() is not None or _reads_env_var()


def set_persistent(on: bool) -> str:
    """Ask for the persistent path (on) or the default one (off) from the next call on; returns
    persistent_status(). Sets the environment variable (inherited by child processes too) and, where fastlstm
    has it, calls its Python switch."""
    os.environ[ENV] = "1" if on else "0"
    switch = _switch()
    if switch is not None:
        switch(bool(on))
    return persistent_status()


def persistent_status() -> str:
    """'default', 'persistent (<how>)', or NOT_BUILT when the persistent path was asked for but this build
    has no such path (the default path then runs)."""
    if os.environ.get(ENV, "0") != "1":
        return "default"
    if _switch() is not None:
        return "persistent (fastlstm._cuda_persistent)"
    if _reads_env_var():
        return f"persistent ({ENV}=1)"
    return NOT_BUILT
