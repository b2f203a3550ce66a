"""torch.autocast for fastlstm's modules: the dtypes nn.LSTM and nn.GRU give under autocast, on fastlstm's ops.

fastlstm's ops have no Autocast kernel, so without this they would run in the parameters' dtype whatever
autocast says. What torch 2.13 does instead, which a drop-in must reproduce:

* CUDA: nn.LSTM and nn.GRU run on cuDNN, whose ``_cudnn_rnn`` has an Autocast kernel that casts the input,
  the states and the weights (float32 ones; float64 is left alone) to the autocast dtype, once per call.
  Every output (output, h_n, c_n) is in the autocast dtype, packed input and proj_size included.
* CPU: ATen's lstm goes through oneDNN's ``mkldnn_rnn_layer`` when oneDNN is enabled and the input is a
  dense (not packed) floating tensor other than float64; that op is in the CPU lower-precision list, so the
  input, states and weights are cast and output, h_n, c_n come back in the autocast dtype. oneDNN has no
  projection, so with proj_size the per-gate matmuls are autocast one by one in ATen's own loop and
  c_n, updated by float32 elementwise math, stays float32 while output and h_n come back low-precision.
  Packed input and nn.GRU (neither uses oneDNN on the CPU) come back in float32.

PeepholeLSTM and LayerNormLSTM take nn.LSTM's inputs and follow FastLSTM's rule. Where the rule says "cast",
the module runs once with its weights cast (torch.func.functional_call, so autograd takes the gradients back
to the float32 parameters through the casts) and autocast disabled inside; where it says "not cast", it runs
with autocast disabled in the parameters' dtype, which is what nn.LSTM's float32 results are, up to the
rounding of its individually autocast matmuls.

One deliberate difference: nn.LSTM under CPU float16 autocast with autograd recording raises oneDNN's "could
not create a primitive descriptor", and on a CPU without float16 arithmetic (no avx512_fp16 / amx_fp16: an AMD
EPYC, say) it raises that without autograd too; fastlstm's float16 CPU kernels run it and return float16.
Likewise bfloat16 on a CPU without AVX-512 (an AMD EPYC Zen 3): nn.LSTM raises there, fastlstm runs it.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence


@functools.lru_cache(maxsize=None)
def torch_lstm_runs_cpu_autocast(dtype: torch.dtype = torch.float16) -> bool:
    """Whether nn.LSTM itself runs under CPU autocast to `dtype` without autograd on this CPU (a one-step
    probe, once per process and dtype). It takes oneDNN's RNN primitive there, which a CPU without the dtype's
    arithmetic cannot create (float16: no avx512_fp16 / amx_fp16; bfloat16: no AVX-512 at all, an AMD EPYC
    Zen 3, say); callers that would run nn.LSTM so (the char-RNN's torch backend) give a clear error instead."""
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            torch.nn.LSTM(2, 2)(torch.zeros(1, 1, 2))
        return True
    except RuntimeError as e:
        if "primitive descriptor" not in str(e):
            raise
        return False


# Fixed for the build; resolved once, also because Dynamo refuses to trace the query.
_MKLDNN_BUILT = torch.backends.mkldnn.is_available()


def _castable(t: Tensor) -> bool:
    # Autocast's eligibility rule (at::autocast::is_eligible, then cached_cast): floating, not float64.
    return t.is_floating_point() and t.dtype != torch.float64


def autocast_dtype(module, input) -> Optional[torch.dtype]:
    """The dtype nn.LSTM / nn.GRU would cast this call to under the autocast now in force, or None."""
    data = input.data if isinstance(input, PackedSequence) else input
    if not isinstance(data, Tensor):
        return None
    dev = data.device.type
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev) or not _castable(data):
        return None
    dtype = torch.get_autocast_dtype(dev)
    if dev == "cuda":
        return dtype
    if module.cell.n_states != 2 or isinstance(input, PackedSequence):
        return None  # nn.GRU, and nn.LSTM on packed input: ATen's own loop, float32 results
    if not (_MKLDNN_BUILT and torch.backends.mkldnn.enabled):
        return None
    return dtype


def _cast(x, dtype):
    if isinstance(x, PackedSequence):
        return PackedSequence(_cast(x.data, dtype), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    if isinstance(x, Tensor):
        return x.to(dtype) if _castable(x) else x
    if isinstance(x, (tuple, list)):
        return type(x)(_cast(t, dtype) for t in x)
    return x


def forward(module, input, hx):
    """module.forward(input, hx) as the torch module it stands in for behaves under the current autocast."""
    dev = (input.data if isinstance(input, PackedSequence) else input).device.type
    dtype = autocast_dtype(module, input)
    with torch.autocast(dev, enabled=False):
        if dtype is None:
            return module.forward(input, hx)
        # One cast per parameter per call (not per step, not per layer call): the layer ops read these.
        originals = dict(module.named_parameters())
        params = {name: _cast(p, dtype) for name, p in originals.items()}
        buffers = dict(module.named_buffers())
        output, states = torch.func.functional_call(
            module, {**params, **buffers}, (_cast(input, dtype), _cast(hx, dtype)))
    if isinstance(module, torch.nn.RNNBase):
        # Its cached weight list still holds the cast copies functional_call swapped in: point it back at the
        # parameters (and let the copies go).
        module._init_flat_weights()
    if dev == "cpu" and getattr(module, "proj_size", 0) > 0:
        # ATen's projected LSTM keeps the cell state in float32 (see the module docstring).
        h_n, c_n = states
        states = (h_n, c_n.to(next(iter(originals.values())).dtype) if _castable(c_n) else c_n)
    return output, states
