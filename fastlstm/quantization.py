"""Dynamic quantization: torch.ao.quantization.quantize_dynamic treats FastLSTM / FastGRU as nn.LSTM / nn.GRU.

quantize_dynamic looks modules up by exact type twice: to give them a qconfig (propagate_qconfig_, keyed on
nn.LSTM in its default spec and in a spec like {nn.LSTM}) and to swap them (the default dynamic mapping,
where nn.LSTM maps to the int8 dynamic LSTM, whose from_float also insists on type nn.LSTM). A FastLSTM is
an nn.LSTM by isinstance but not by type, so it was left in float. Here:

* the default dynamic mapping gets FastLSTM and FastGRU, mapped to a from_float that hands torch's quantized
  module an nn.LSTM (nn.GRU) copy of the module's configuration and weights;
* propagate_qconfig_ (as quantize_dynamic and prepare call it) gives a FastLSTM (FastGRU) the qconfig the
  spec gives nn.LSTM (nn.GRU), unless the spec names FastLSTM (FastGRU) itself. Keys by submodule name
  already worked and still take precedence, as for nn.LSTM.

The result is exactly what quantizing the equivalent nn.LSTM model gives: torch's quantized LSTM, not a
fastlstm kernel. PeepholeLSTM and LayerNormLSTM are not nn.LSTM (their extra parameters have no quantized
counterpart) and stay in float, as any module without a quantized counterpart does.
"""
from __future__ import annotations

import functools
import sys

from torch import nn

_QUANTIZE = "torch.ao.quantization.quantize"


def _as_torch_module(mod: nn.Module) -> nn.Module:
    torch_cls = mod.cell.torch_module
    p = next(mod.parameters())
    kw = {"proj_size": mod.proj_size} if torch_cls is nn.LSTM else {}
    twin = torch_cls(mod.input_size, mod.hidden_size, mod.num_layers, mod.bias, mod.batch_first,
                     float(mod.dropout), mod.bidirectional, device=p.device, dtype=p.dtype, **kw)
    twin.load_state_dict(mod.state_dict())
    twin.train(mod.training)
    twin.qconfig = mod.qconfig
    return twin


def _quantized_from(qcls):
    class FromFast:
        """A dynamic-quantization mapping entry: torch's quantized module, built from an nn.LSTM (nn.GRU) copy."""

        @classmethod
        def from_float(cls, mod, use_precomputed_fake_quant=False):
            return qcls.from_float(_as_torch_module(mod), use_precomputed_fake_quant=use_precomputed_fake_quant)

    FromFast.__name__ = f"FromFast{qcls.__name__}"
    return FromFast


def _install() -> None:
    import torch.ao.quantization as tq
    from torch.ao.quantization import quantization_mappings

    from .cells import FastGRU, FastLSTM

    fast_to_torch = {FastLSTM: nn.LSTM, FastGRU: nn.GRU}
    mapping = quantization_mappings.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS
    for fast, torch_cls in fast_to_torch.items():
        if torch_cls in mapping and fast not in mapping:
            mapping[fast] = _quantized_from(mapping[torch_cls])

    q = sys.modules[_QUANTIZE]
    orig = q.propagate_qconfig_
    if getattr(orig, "_fastlstm_patched", False):
        return

    @functools.wraps(orig)
    def propagate_qconfig_(module, qconfig_dict=None, prepare_custom_config_dict=None):
        if qconfig_dict:
            extra = {fast: qconfig_dict[t] for fast, t in fast_to_torch.items()
                     if t in qconfig_dict and fast not in qconfig_dict}
            if extra:
                qconfig_dict = {**qconfig_dict, **extra}
        return orig(module, qconfig_dict, prepare_custom_config_dict)

    propagate_qconfig_._fastlstm_patched = True
    q.propagate_qconfig_ = propagate_qconfig_
    if getattr(tq, "propagate_qconfig_", None) is orig:  # the package's re-export, for direct callers
        tq.propagate_qconfig_ = propagate_qconfig_


def install_quantization_hook() -> None:
    """Called once by fastlstm's __init__. torch imports its quantization package with itself, so this
    normally runs at once; otherwise it waits for that import (as the torch.compile hook does)."""
    if _QUANTIZE in sys.modules:
        _install()
        return
    from .rnn import _AfterImport
    if not any(isinstance(f, _AfterImport) and f.name == _QUANTIZE for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(_QUANTIZE, _install))
