"""Shared test configuration: devices, and the tolerances, stated once per dtype."""
import pytest
import torch

import fastlstm

# Absolute/relative tolerances against nn.LSTM (or lstm_ref) for outputs and gradients, per dtype.
# float32: a few ulps accumulated over T steps and GEMM reductions of ~I+H terms.
# float64: effectively exact. Half types are not compared with fixed tolerances: see `lowp_error_ratio`.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=2e-5, rtol=1e-4),
}

# Low-precision rule (flash-attention's): fastlstm's error against a float64 reference may be at most
# LOWP_FACTOR times nn.LSTM's own error in that dtype (plus LOWP_SLACK, for errors at rounding level).
LOWP_FACTOR = 2.0
LOWP_SLACK = {torch.bfloat16: 1e-2, torch.float16: 2e-3}

HAS_CUDA = torch.cuda.is_available() and fastlstm.has_kernels("cuda")
NO_CUDA_REASON = ("no CUDA device" if not torch.cuda.is_available()
                  else "fastlstm was built without CUDA kernels")

# Parametrize a test over this to run it on every device fastlstm has kernels for; CUDA cases skip (with
# the reason) where there is none.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)),
]


@pytest.fixture(autouse=True)
def _no_tf32():
    # Parity on CUDA is checked against cuDNN in true float32, not TF32.
    if torch.cuda.is_available():
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    else:
        yield
