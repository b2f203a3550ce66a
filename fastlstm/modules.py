"""FastLSTM: torch.nn.LSTM with its forward running on fastlstm's fused kernels."""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import functional
from . import export  # ONNX export hook (fastlstm/export.py)
from .ops import lstm_layer

_warned: set = set()


def _warn_once(key, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def has_kernels(device_type: str) -> bool:
    """Whether fastlstm._C was built with kernels for this device type ("cpu", "cuda")."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("fastlstm::lstm_forward", key)


_HAS = {dev: has_kernels(dev) for dev in ("cpu", "cuda")}


_DYNAMO_BUILDER = "torch._dynamo.variables.builder"


def _let_dynamo_trace_fastlstm() -> None:
    """Let torch.compile trace FastLSTM.forward instead of graph-breaking on it.

    Dynamo refuses to wrap any instance of nn.RNN/GRU/LSTM unless torch._dynamo.config.allow_rnn is set,
    because it cannot trace ATen's fused RNN ops; FastLSTM is such an instance (isinstance must hold for
    drop-in use) but its forward is plain Python over our traceable custom ops. Rather than flip allow_rnn
    for every nn.LSTM in the process, the flag is set only while Dynamo wraps a FastLSTM.
    """
    try:
        from torch._dynamo import config
        from torch._dynamo.variables.builder import VariableBuilder
        orig = VariableBuilder.wrap_module
    except (ImportError, AttributeError) as e:  # another torch's Dynamo: compile still works, with a break
        warnings.warn(f"fastlstm could not register FastLSTM with torch.compile ({e!r}); compiled models "
                      "will graph-break around FastLSTM.", RuntimeWarning)
        return
    if getattr(orig, "_fastlstm_patched", False):
        return

    def wrap_module(self, value):
        if isinstance(value, FastLSTM) and not config.allow_rnn:
            with config.patch(allow_rnn=True):
                return orig(self, value)
        return orig(self, value)

    wrap_module._fastlstm_patched = True
    VariableBuilder.wrap_module = wrap_module


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback right after one module is first imported. Importing Dynamo costs about a second
    (more than torch's own import on a busy machine), so fastlstm waits for torch.compile to import it."""

    def __init__(self, name, callback):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from finding us again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_callback(module):
            exec_module(module)
            self.callback()

        spec.loader.exec_module = exec_then_callback
        return spec


def _install_dynamo_hook() -> None:
    if _DYNAMO_BUILDER in sys.modules:
        _let_dynamo_trace_fastlstm()
    elif not any(isinstance(f, _AfterImport) and f.name == _DYNAMO_BUILDER for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(_DYNAMO_BUILDER, _let_dynamo_trace_fastlstm))


def _lengths_from_batch_sizes(batch_sizes: Tensor) -> Tensor:
    # batch_sizes[t] = number of sequences longer than t (sorted, decreasing) -> length of each sequence.
    B = int(batch_sizes[0])
    return (batch_sizes.unsqueeze(1) > torch.arange(B)).sum(0)


class FastLSTM(nn.LSTM):
    r"""A drop-in replacement for :class:`torch.nn.LSTM` backed by fused kernels.

    Same constructor, parameters (names, shapes, initialisation), state_dict, checks and error messages as
    nn.LSTM, which it subclasses; only ``forward`` differs. Input and output shapes are nn.LSTM's:
    input [T, B, I] (or [B, T, I] with batch_first, [T, I] unbatched, or a PackedSequence);
    hx = (h_0 [L*D, B, P], c_0 [L*D, B, H]); returns (output [T, B, D*P], (h_n, c_n)).
    Unlike cuDNN's nn.LSTM, backward also works in eval mode.
    """

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> "FastLSTM":
        """A FastLSTM with the same configuration, device, dtype and weights (copied) as ``lstm``."""
        p = lstm.weight_ih_l0
        m = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, lstm.batch_first,
                float(lstm.dropout), lstm.bidirectional, lstm.proj_size, device=p.device, dtype=p.dtype)
        m.load_state_dict(lstm.state_dict())
        m.train(lstm.training)
        return m

    def _layer_params(self):
        D = 2 if self.bidirectional else 1
        params = []
        for layer in range(self.num_layers):
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                params.append((
                    getattr(self, "weight_ih" + sfx),
                    getattr(self, "weight_hh" + sfx),
                    getattr(self, "bias_ih" + sfx) if self.bias else None,
                    getattr(self, "bias_hh" + sfx) if self.bias else None,
                    getattr(self, "weight_hr" + sfx) if self.proj_size > 0 else None,
                ))
        return params

    def _supported(self, input: Tensor) -> bool:
        dev = input.device.type
        if not _HAS.get(dev, False):
            _warn_once(("device", dev), f"fastlstm has no kernels for device '{dev}' in this build; "
                       "FastLSTM runs torch.nn.LSTM's implementation there (slower path, same results).")
            return False
        if dev == "cpu" and input.dtype not in _CPU_DTYPES:
            return False
        return True

    def _check_devices(self, input: Tensor, hx: tuple[Tensor, Tensor]) -> None:
        # nn.LSTM's own messages (aten/src/ATen/native/RNN.cpp).
        for p in self._flat_weights:
            if p is not None and p.device != input.device:
                raise RuntimeError("Input and parameter tensors are not at the same device, found input tensor "
                                   f"at {input.device} and parameter tensor at {p.device}")
        for h in hx:
            if h.device != input.device:
                raise RuntimeError("Input and hidden tensors are not at the same device, found input tensor "
                                   f"at {input.device} and hidden tensor at {h.device}")
            if h.dtype != input.dtype:
                raise RuntimeError("Input and hidden tensors are not the same dtype, found input tensor with "
                                   f"{_c10_name(input.dtype)} and hidden tensor with {_c10_name(h.dtype)}")

    def forward(self, input, hx=None):  # noqa: C901  (mirrors nn.LSTM.forward step by step)
        if export.is_onnx_exporting():  # ONNX export hook: the standard ONNX operator, not fastlstm's ops
            return export.forward(self, input, hx)
        if type(input) is Tensor:
            result = self._forward_lean(input, hx)
            if result is not None:
                return result
        self._update_flat_weights()
        orig_input = input
        batch_sizes = None
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
            if hx is None:
                hx = self._zeros(input, max_batch_size, num_directions, real_hidden_size)
            else:
                hx = self.permute_hidden(hx, sorted_indices)
            self.check_forward_args(input, hx, batch_sizes)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = None
            unsorted_indices = None
            if hx is None:
                hx = self._zeros(input, max_batch_size, num_directions, real_hidden_size)
                self.check_forward_args(input, hx, batch_sizes)
            else:
                if is_batched:
                    if hx[0].dim() != 3 or hx[1].dim() != 3:
                        raise RuntimeError("For batched 3-D input, hx and cx should also be 3-D but got "
                                           f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                else:
                    if hx[0].dim() != 2 or hx[1].dim() != 2:
                        raise RuntimeError("For unbatched 2-D input, hx and cx should also be 2-D but got "
                                           f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
                self.check_forward_args(input, hx, batch_sizes)
                hx = self.permute_hidden(hx, sorted_indices)

        if len(hx) != 2:
            # ATen's lstm checks this after the shape checks above; nn.LSTM raises it from there.
            raise RuntimeError("lstm expects two hidden states")
        self._check_devices(input, hx)
        if not self._supported(input):
            return self._fallback(orig_input, hx, unsorted_indices)

        if batch_sizes is not None:
            if input.size(0) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            lengths = _lengths_from_batch_sizes(batch_sizes)
            padded, _ = pad_packed_sequence(PackedSequence(input, batch_sizes), batch_first=False)
            out, h_n, c_n = self._run(padded, hx, lengths.to(input.device))
            output = pack_padded_sequence(out, lengths, enforce_sorted=True).data
            return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden((h_n, c_n), unsorted_indices))

        x = input.transpose(0, 1) if self.batch_first else input
        if x.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        out, h_n, c_n = self._run(x, hx, None)
        output = out.transpose(0, 1) if self.batch_first else out
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return output, self.permute_hidden((h_n, c_n), unsorted_indices)

    def _forward_lean(self, input: Tensor, hx):
        """The hot path (a streaming loop calls this once per time step): a batched 3-D tensor, hx None or a
        tuple of two 3-D tensors of the right shapes, everything on one supported device in one dtype. Does
        only the checks that decide this; returns None for anything else, and forward then takes the general
        path, which raises nn.LSTM's own errors. Same results as the general path."""
        self._update_flat_weights_fast()
        fw = self._flat_weights
        w0 = fw[0]
        if input.dim() != 3 or input.size(-1) != self.input_size:
            return None
        dtype, device = input.dtype, input.device
        if (dtype != w0.dtype or device != w0.device or not _HAS.get(device.type, False)
                or (device.type == "cpu" and dtype not in _CPU_DTYPES)):
            return None
        for p in fw:
            if p.device != device:
                return None
        D = 2 if self.bidirectional else 1
        LD, H = self.num_layers * D, self.hidden_size
        P = self.proj_size if self.proj_size > 0 else H
        x = input.transpose(0, 1) if self.batch_first else input
        B = x.size(1)
        if x.size(0) == 0:
            return None
        if hx is None:
            h0 = torch.zeros(LD, B, P, dtype=dtype, device=device)
            c0 = torch.zeros(LD, B, H, dtype=dtype, device=device)
        else:
            if type(hx) is not tuple or len(hx) != 2:
                return None
            h0, c0 = hx
            if (type(h0) is not Tensor or type(c0) is not Tensor or h0.shape != (LD, B, P)
                    or c0.shape != (LD, B, H) or h0.dtype != dtype or c0.dtype != dtype or h0.device != device
                    or c0.device != device):
                return None
        if LD == 1:
            # One layer, one direction: the op directly, no stacking.
            w_hr = fw[-1] if self.proj_size > 0 else None
            b_ih, b_hh = (fw[2], fw[3]) if self.bias else (None, None)
            out, h_n, c_n = lstm_layer(x, h0[0], c0[0], fw[0], fw[1], b_ih, b_hh, w_hr, None, False)
            h_n, c_n = h_n.unsqueeze(0), c_n.unsqueeze(0)
        else:
            out, h_n, c_n = self._run(x, (h0, c0), None)
        return (out.transpose(0, 1) if self.batch_first else out), (h_n, c_n)

    def _update_flat_weights_fast(self) -> None:
        """nn.RNNBase._update_flat_weights without its per-name hasattr/getattr through Module.__getattr__,
        which costs as much as the one-step kernel on the streaming path. Same result: any name not found
        as a parameter (e.g. swapped in by torch.func.functional_call as something else) takes the original."""
        params = self._parameters
        for ref, name in zip(self._flat_weight_refs, self._flat_weights_names):
            w = params.get(name)
            if w is None or ref is None:
                self._update_flat_weights()
                return
            if ref() is not w:
                self._init_flat_weights()
                return

    def _zeros(self, input, batch, num_directions, real_hidden_size):
        shape = (self.num_layers * num_directions, batch)
        return (torch.zeros(*shape, real_hidden_size, dtype=input.dtype, device=input.device),
                torch.zeros(*shape, self.hidden_size, dtype=input.dtype, device=input.device))

    def _run(self, x, hx, lengths):
        return functional.lstm(x, hx[0], hx[1], self._layer_params(), self.num_layers, self.bidirectional,
                               float(self.dropout), self.training, lengths)

    def _fallback(self, orig_input, hx, unsorted_indices):
        # hx here is already batched and permuted into sorted order; undo that for nn.LSTM.forward.
        if isinstance(orig_input, PackedSequence):
            hx = self.permute_hidden(hx, unsorted_indices)
        elif orig_input.dim() == 2:
            hx = (hx[0].squeeze(1), hx[1].squeeze(1))
        return super().forward(orig_input, hx)


def _c10_name(dtype: torch.dtype) -> str:
    # c10's ScalarType names, as nn.LSTM's C++ messages print them.
    return {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
            torch.bfloat16: "BFloat16"}.get(dtype, str(dtype).replace("torch.", ""))


def convert(model: nn.Module) -> nn.Module:
    """Replace every torch.nn.LSTM (nn.GRU) inside ``model`` with a FastLSTM (FastGRU), in place; return it.

    Each submodule swapped keeps its weights, device, dtype and train/eval mode. Returns the model; if
    ``model`` is itself an nn.LSTM or nn.GRU, the returned fast module replaces it.
    """
    from .gru import FastGRU  # here, not at the top: fastlstm.gru imports this module

    swap = {nn.LSTM: FastLSTM.from_lstm, nn.GRU: FastGRU.from_gru}
    if type(model) in swap:
        return swap[type(model)](model)
    for name, child in list(model.named_children()):
        if type(child) in swap:
            setattr(model, name, swap[type(child)](child))
        else:
            convert(child)
    return model


_install_dynamo_hook()
