"""The module base every fastlstm recurrent module shares: nn.RNNBase's forward plumbing, written once.

A cell is a description (`Cell`): its state (h, or h and c), its per-layer parameters, its one-layer
function (fastlstm.ops) and the torch module it stands in for, if any. `RNNEngine` turns any such
description into nn.LSTM's calling convention: tensors time- or batch-major, unbatched 2-D input,
PackedSequence sorted or not, hx checked with torch's own messages, a lean path for the one-step streaming
loop, and torch's implementation on devices fastlstm has no kernels for. `CustomRNNBase` adds what nn.RNNBase
would otherwise give (constructor checks, parameters, repr) for cells torch does not have.

Shapes (T steps, B batch, I input, H hidden, P = proj_size or H, L layers, D = 2 if bidirectional else 1):
input [T, B, I] ([B, T, I] with batch_first, [T, I] unbatched); each state [L*D, B, P] (h) or
[L*D, B, H] (c); output [T, B, D*P].
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import math
import numbers
import operator
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.nn import init
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _C, autocast, export, ops
from .functional import stacked

_warned: set = set()


def _warn_once(key, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def has_kernels(device_type: str) -> bool:
    """Whether fastlstm._C was built with kernels for this device type ("cpu", "cuda")."""
    return ops.has_kernels("lstm", device_type)


_C10_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
              torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
              torch.uint8: "Byte", torch.bool: "Bool", torch.complex64: "ComplexFloat",
              torch.complex128: "ComplexDouble", torch.complex32: "ComplexHalf"}


def _c10_name(dtype: torch.dtype) -> str:
    # c10's ScalarType names, as nn.LSTM's C++ messages print them (an int64 hx is "Long" there, never
    # "int64"); str(dtype) only for the rare types c10 names as torch does.
    return _C10_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _packed_is_consistent(data: Tensor, batch_sizes: Tensor, sorted_indices, unsorted_indices,
                          dtype: torch.dtype) -> bool:
    """Whether a PackedSequence is one pack_padded_sequence could have made, with data in the parameters'
    dtype: the only kind fastlstm's padded run computes what nn.LSTM's packed kernel computes. Anything
    else goes to torch's packed path, which raises torch's own error for it (or, for extra rows of data
    past sum(batch_sizes), returns what nn.LSTM returns)."""
    if (not isinstance(batch_sizes, Tensor) or batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64
            or batch_sizes.device.type != "cpu" or batch_sizes.numel() == 0):
        return False
    if not isinstance(data, Tensor) or data.dim() != 2 or data.dtype != dtype:
        return False
    if bool((batch_sizes[1:] > batch_sizes[:-1]).any()) or int(batch_sizes[-1]) <= 0:
        return False
    if int(batch_sizes.sum()) != data.size(0):
        return False
    B = int(batch_sizes[0])
    for idx in (sorted_indices, unsorted_indices):
        if idx is not None and (not isinstance(idx, Tensor) or idx.dim() != 1 or idx.numel() != B):
            return False
    return True


def _c0_casts(c_dtype: torch.dtype, input_dtype: torch.dtype) -> bool:
    # What nn.LSTM's native path accepts for c0: any dtype that type promotion turns into the input's.
    return not input_dtype.is_complex and torch.promote_types(c_dtype, input_dtype) == input_dtype


def _lengths_from_batch_sizes(batch_sizes: Tensor) -> Tensor:
    # batch_sizes[t] = number of sequences longer than t (sorted, decreasing) -> length of each sequence.
    B = int(batch_sizes[0])
    return (batch_sizes.unsqueeze(1) > torch.arange(B)).sum(0)


# Packing and unpacking by indexing, for torch.func transforms: torch's kernels (and their backward) read the
# data's storage, which torch.func's wrapped tensors have none of -- nn.LSTM fails on a PackedSequence under
# torch.func.grad for that reason. Indexing is differentiable by every transform.

def _pad_packed_data(data: Tensor, batch_sizes: Tensor) -> Tensor:
    """pad_packed_sequence(PackedSequence(data, batch_sizes))[0]: data [N, *] packed from a sorted batch,
    batch_sizes int64 [T] on the CPU -> padded [T, B, *], zeros past each sequence's end."""
    b = torch.arange(int(batch_sizes[0]))
    starts = torch.cumsum(batch_sizes, 0) - batch_sizes  # the first row of each step's data
    # a padding slot takes the zero row appended after the data
    idx = torch.where(b < batch_sizes.unsqueeze(1), starts.unsqueeze(1) + b, data.size(0))
    return torch.cat([data, data.new_zeros(1, *data.shape[1:])])[idx.to(data.device)]


def _pack_padded_data(padded: Tensor, batch_sizes: Tensor) -> Tensor:
    """pack_padded_sequence(padded, lengths, enforce_sorted=True).data for the lengths batch_sizes (int64 [T],
    on the CPU) describes: padded [T, B, *] -> data [sum(batch_sizes), *], step by step."""
    T, B = padded.shape[:2]
    b = torch.arange(B)
    rows = (torch.arange(T).unsqueeze(1) * B + b)[b < batch_sizes.unsqueeze(1)]
    return padded.reshape(T * B, *padded.shape[2:])[rows.to(padded.device)]


def _lengths_to(lengths: Tensor, device: torch.device) -> Tensor:
    """lengths (int64 [B], non-increasing, on the CPU as a PackedSequence's batch sizes are) on ``device``,
    without making the host wait. A plain .to(cuda) from pageable memory blocks until the GPU has caught up
    and cannot be captured in a CUDA graph; from pinned memory the copy is asynchronous. Under CUDA graph
    capture no host memory is read at all (each replay would read that host buffer again, long after it was
    freed): the lengths are written on the device by one fill per distinct length, from Python ints."""
    if device.type == "cpu":
        return lengths
    if device.type != "cuda":
        return lengths.to(device)
    if not torch.cuda.is_current_stream_capturing():
        return lengths.pin_memory().to(device, non_blocking=True)
    return _filled(lengths, device)


def _filled(lengths: Tensor, device: torch.device) -> Tensor:
    """lengths rebuilt on ``device`` from scalars: one fill per run of equal values (at most min(B, T))."""
    values = lengths.tolist()
    out = torch.empty(len(values), dtype=lengths.dtype, device=device)
    start = 0
    for b in range(1, len(values) + 1):
        if b == len(values) or values[b] != values[start]:
            out[start:b].fill_(values[start])
            start = b
    return out


@dataclass(frozen=True)
class Cell:
    """A recurrent cell as the module base sees it.

    name: the module's name, as messages print it.
    mode: nn.RNNBase's name for it, as torch's messages print it ("LSTM", "GRU"; the LSTM variants say
        "LSTM", as they take nn.LSTM's inputs).
    ops: its row in fastlstm.ops.CELL_OPS.
    n_states: 2 for (h, c), 1 for h.
    params: the parameters of one layer and direction, in the layer function's order, each as (name, flag):
        the parameter exists iff the module's attribute ``flag`` is truthy (None: always); the layer
        function gets None for one that does not. Names take the suffix ``_l{k}`` (and ``_reverse``).
    layer: the one-layer function, layer(x [T,B,I], *states [B,*], *params, lengths, reverse, *extra)
        -> (output [T, B, P], *final states).
    torch_module: the torch module it is a drop-in for (run on devices without kernels), or None.
    kernels: how the no-kernels warning names them ("kernels", "GRU kernels").
    """
    name: str
    mode: str
    ops: str
    n_states: int
    params: tuple
    layer: Callable
    torch_module: Optional[type] = None
    kernels: str = "kernels"


class RNNEngine:
    """nn.RNNBase's forward for any `Cell`, on fastlstm's ops. A mixin: FastLSTM(RNNEngine, nn.LSTM),
    FastGRU(RNNEngine, nn.GRU), and CustomRNNBase for cells torch lacks.

    It reads the module's configuration attributes (input_size, hidden_size, num_layers, bias, batch_first,
    dropout, bidirectional, proj_size), ``_flat_weights`` (for the device and dtype checks),
    ``check_forward_args`` and ``permute_hidden`` (torch's, for their messages), and the class attribute
    ``cell``. forward(input, hx=None) -> (output, h_n) or (output, (h_n, c_n)), as the cell's torch module.
    """

    cell: Cell

    @classmethod
    def _from_module(cls, src: nn.Module, extra_state: Optional[Callable] = None, **kwargs):
        """A module of this class with ``src``'s configuration, device, dtype, train/eval mode and weights
        (copied). kwargs: constructor arguments beyond nn.RNNBase's; extra_state(new module) -> the values
        of the parameters ``src`` does not have, by name."""
        p = next(src.parameters())
        m = cls(src.input_size, src.hidden_size, src.num_layers, src.bias, src.batch_first, float(src.dropout),
                src.bidirectional, **kwargs, device=p.device, dtype=p.dtype)
        state = dict(src.state_dict())
        if extra_state is not None:
            state.update(extra_state(m))
        m.load_state_dict(state)
        m.train(src.training)
        return m

    def __getstate__(self):
        # The lean path's plan records this build's kernels: work it out again wherever the module is loaded.
        state = super().__getstate__()
        state.pop("_fastlstm_lean_plan", None)
        return state

    # ----------------------------------------------------------------------------- what a cell may override

    def _layer_extra(self) -> tuple:
        """Trailing non-tensor arguments of the layer function (LayerNormLSTM's eps)."""
        return ()

    def _check_states(self, input: Tensor, states: tuple) -> None:
        """Checks that nn.LSTM's ATen kernel makes before running (aten/src/ATen/native/RNN.cpp,
        check_attributes), with its messages and in its order: each state on the input's device and in
        its dtype, then the parameters on the input's device. A c0 whose dtype promotes to the input's is
        not an error: nn.LSTM's native cell computes f * c0 in the input's dtype, and forward casts it."""
        for i, h in enumerate(states):
            if h.device != input.device:
                raise RuntimeError("Input and hidden tensors are not at the same device, found input tensor "
                                   f"at {input.device} and hidden tensor at {h.device}")
            if h.dtype != input.dtype and not (i == 1 and _c0_casts(h.dtype, input.dtype)):
                raise RuntimeError("Input and hidden tensors are not the same dtype, found input tensor with "
                                   f"{_c10_name(input.dtype)} and hidden tensor with {_c10_name(h.dtype)}")
        self._check_parameter_devices(input)

    def _check_parameter_devices(self, input: Tensor) -> None:
        for p in self._flat_weights:
            if p is not None and p.device != input.device:
                raise RuntimeError("Input and parameter tensors are not at the same device, found input tensor "
                                   f"at {input.device} and parameter tensor at {p.device}")

    # ------------------------------------------------------------------------------------------- plumbing

    def _layer_params(self) -> list[tuple]:
        """One tuple per layer and direction, in nn.RNNBase's order, of the cell's parameters (None where
        absent), by name: whatever is registered under that name now (torch.func.functional_call swaps)."""
        D = 2 if self.bidirectional else 1
        spec = [(name, flag is None or bool(getattr(self, flag))) for name, flag in self.cell.params]
        params = []
        for layer in range(self.num_layers):
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                params.append(tuple(getattr(self, name + sfx) if present else None for name, present in spec))
        return params

    def _supported(self, input: Tensor) -> bool:
        """Whether fastlstm's kernels run this input; False hands it to the torch module (see _fallback)."""
        dev = input.device.type
        if not ops.has_kernels(self.cell.ops, dev):
            cell = self.cell
            if cell.torch_module is None:
                # Nothing to fall back on: torch has no such cell.
                raise RuntimeError(f"fastlstm: {cell.name} has no kernels for device '{dev}' in this build")
            _warn_once(("device", dev) if cell.ops == "lstm" else (f"{cell.ops}-device", dev),
                       f"fastlstm has no {cell.kernels} for device '{dev}' in this build; {cell.name} runs "
                       f"torch.nn.{cell.torch_module.__name__}'s implementation there (slower path, same results).")
            return False
        if dev == "cpu" and input.dtype not in _CPU_DTYPES:
            # e.g. complex, which nn.LSTM runs and fastlstm has no kernels for; without a torch module, the
            # op reports it.
            return self.cell.torch_module is None
        return True

    def _zeros(self, input: Tensor, batch: int) -> tuple:
        LD = self.num_layers * (2 if self.bidirectional else 1)
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        sizes = (P, self.hidden_size)[:self.cell.n_states]
        return tuple(torch.zeros(LD, batch, s, dtype=input.dtype, device=input.device) for s in sizes)

    def _hx(self, states: tuple):
        """The states as the torch module takes and returns them: h, or (h, c)."""
        return states if self.cell.n_states == 2 else states[0]

    def _batched_hx(self, hx, is_batched: bool):
        # nn.LSTM's and nn.GRU's checks and messages (torch/nn/modules/rnn.py).
        if self.cell.n_states == 2:
            want = 3 if is_batched else 2
            if hx[0].dim() != want or hx[1].dim() != want:
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                                   f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            return hx if is_batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if is_batched:
            if hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            return hx
        if hx.dim() != 2:
            raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
        return hx.unsqueeze(1)

    def forward(self, input, hx=None):
        if _onnx_exporting():  # ONNX's own LSTM/GRU operators, not fastlstm's ops (fastlstm/export.py)
            return export.forward(self, input, hx)
        # torch.jit.is_tracing() without its Python wrapper: every call of the streaming path pays for these.
        if _tracing_state() is not None and not isinstance(input, PackedSequence):
            # The twin torch.jit.script compiles always records the forward ops; this forward would record the
            # inference op under no_grad, and trace's check (which reruns under no_grad) would see two graphs.
            return self.__prepare_scriptable__()(input, hx)
        if _any_autocast() and self._autocast_applies(input):
            return autocast.forward(self, input, hx)  # nn.LSTM's / nn.GRU's autocast dtypes (fastlstm/autocast.py)
        if type(input) is Tensor and not _compiling():
            result = self._forward_lean(input, hx)
            if result is not None:
                return result
        self._update_flat_weights()
        cell = self.cell
        orig_input = input
        batch_sizes = None
        is_batched = True
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            if not (_packed_is_consistent(input, batch_sizes, sorted_indices, unsorted_indices,
                                          self._flat_weights[0].dtype) and self._hx_is_3d(hx)):
                return self._torch_packed(orig_input, hx)
            if hx is None:
                hx = self._hx(self._zeros(input, int(batch_sizes[0])))
            else:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{cell.mode}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            sorted_indices = unsorted_indices = None
            if hx is None:
                hx = self._hx(self._zeros(input, input.size(0) if self.batch_first else input.size(1)))
            else:
                hx = self._batched_hx(hx, is_batched)
        self.check_forward_args(input, hx, batch_sizes)
        if cell.n_states == 2 and len(hx) != 2:
            # ATen's lstm checks this after the shape checks above; nn.LSTM raises it from there.
            raise RuntimeError("lstm expects two hidden states")
        states = tuple(hx) if cell.n_states == 2 else (hx,)
        self._check_states(input, states)
        if not self._supported(input):
            return self._fallback(orig_input, hx, unsorted_indices)
        if any(s.dtype != input.dtype for s in states):
            states = tuple(s.to(input.dtype) for s in states)  # a c0 that _check_states let through

        if batch_sizes is not None:
            if input.size(0) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            if int(batch_sizes[-1]) == int(batch_sizes[0]):
                # Every sequence has the full length (always so at batch 1): the packed data is the padded
                # tensor, time-major, so it runs as one without a mask, a copy in or a copy out (and takes the
                # paths a plain tensor takes: at batch 1, T=200, H=128 training ran 2x slower as packed).
                T, B = batch_sizes.size(0), int(batch_sizes[0])
                out, finals = self._run(input.reshape(T, B, *input.shape[1:]), states, None)
                output = out.reshape(T * B, *out.shape[2:])
            else:
                # Run padded with a per-sequence length mask; no re-sorting inside.
                lengths = _lengths_from_batch_sizes(batch_sizes)
                # torch.func's wrapped tensors have no storage for torch's (un)packing kernels or their backward
                transformed = _functorch_active()
                if transformed:
                    padded = _pad_packed_data(input, batch_sizes)
                else:
                    padded, _ = pad_packed_sequence(PackedSequence(input, batch_sizes), batch_first=False)
                out, finals = self._run(padded, states, _lengths_to(lengths, input.device))
                if transformed:
                    output = _pack_padded_data(out, batch_sizes)
                else:
                    output = pack_padded_sequence(out, lengths, enforce_sorted=True).data
            return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(self._hx(finals), unsorted_indices))

        x = input.transpose(0, 1) if self.batch_first else input
        if x.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        out, finals = self._run(x, states, None)
        output = out.transpose(0, 1) if self.batch_first else out
        if not is_batched:
            output = output.squeeze(batch_dim)
            finals = tuple(f.squeeze(1) for f in finals)
        return output, self._hx(finals)

    def __prepare_scriptable__(self):
        # torch.jit.script compiles a twin on fastlstm's ops with the same parameters (fastlstm/scripting.py).
        from .scripting import scriptable
        return scriptable(self)

    def _autocast_applies(self, input) -> bool:
        # Autocast on for the input's device, which fastlstm's kernels run (elsewhere the torch module's own
        # forward runs, with its own autocast behaviour).
        data = input.data if isinstance(input, PackedSequence) else input
        if not isinstance(data, Tensor):
            return False
        dev = data.device.type
        return dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev) and ops.has_kernels(self.cell.ops, dev)

    def _run(self, x: Tensor, states: tuple, lengths: Optional[Tensor]) -> tuple[Tensor, tuple]:
        """Time-major x [T, B, I] and states [L*D, B, *] -> (output [T, B, D*P], final states)."""
        return stacked(self.cell.layer, x, states, self._layer_params(), self.num_layers, self.bidirectional,
                       float(self.dropout), self.training, lengths, self._layer_extra())

    def _fallback(self, orig_input, hx, unsorted_indices):
        # hx here is already batched and permuted into sorted order; undo that for the torch module.
        if isinstance(orig_input, PackedSequence):
            hx = self.permute_hidden(hx, unsorted_indices)
        elif orig_input.dim() == 2:
            hx = tuple(h.squeeze(1) for h in hx) if self.cell.n_states == 2 else hx.squeeze(1)
        return self.cell.torch_module.forward(self, orig_input, hx)

    def _hx_is_3d(self, hx) -> bool:
        """hx is None or the cell's states as 3-D tensors. nn.LSTM's packed path checks nothing of hx in
        Python: its kernel rejects any other hx, with its own exception type, before it looks at the data."""
        if hx is None:
            return True
        if self.cell.n_states == 1:
            return isinstance(hx, Tensor) and hx.dim() == 3
        return (isinstance(hx, (tuple, list)) and len(hx) == 2
                and all(isinstance(h, Tensor) and h.dim() == 3 for h in hx))

    def _check_states_torch_can_read(self, packed: PackedSequence, hx) -> None:
        """torch's packed kernel (torch 2.13) validates neither the PackedSequence nor the states: it takes
        one state per layer and direction from dim 0 of each and batch_sizes[0] rows of each, so a state
        that is not [L*D, batch_sizes[0], *] reads past an end (SIGSEGV, SIGABRT), or not, depending on
        the sizes. Such states are refused here
        with nn.LSTM's unpacked messages, before any such call. Non-tensor states are left to torch, whose
        argument parsing rejects them first."""
        if hx is None:
            return
        states = [hx] if isinstance(hx, Tensor) else list(hx) if isinstance(hx, (tuple, list)) else []
        if not states or not all(isinstance(h, Tensor) for h in states):
            return
        if self.cell.n_states == 2 and len(states) == 2:
            self._batched_hx(tuple(states), True)
        elif self.cell.n_states == 1 and isinstance(hx, Tensor):
            self._batched_hx(hx, True)
        else:
            return
        LD = self.num_layers * (2 if self.bidirectional else 1)
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        bs, si = packed.batch_sizes, packed.sorted_indices
        B = int(bs.reshape(-1)[0]) if isinstance(bs, Tensor) and bs.numel() else None
        if si is not None and B is not None and (si.dim() != 1 or si.numel() != B):
            # torch gathers the states by it, then reads batch_sizes[0] rows of what it gathered
            raise RuntimeError(f"sorted_indices has {si.numel()} entries, but the PackedSequence's first batch "
                               f"size is {B}")
        for i, (h, size) in enumerate(zip(states, (P, self.hidden_size))):
            if h.size(0) != LD or (B is not None and h.size(1) < B):
                shape = (LD, B if B is not None and h.size(1) < B else h.size(1), size)
                if self.cell.n_states == 1:
                    raise RuntimeError(f"Expected hidden size {shape}, got {list(h.shape)}")
                raise RuntimeError(f"Expected hidden[{i}] size {shape}, got {list(h.shape)}")

    def _torch_packed(self, packed: PackedSequence, hx):
        """nn.LSTM's / nn.GRU's packed path, for a PackedSequence fastlstm's does not take (see
        _packed_is_consistent): its error, or its result. Cells torch lacks learn the error from an
        nn.LSTM of the same configuration, device and dtype (its weights do not matter to the error), and
        raise their own where nn.LSTM would run on anyway."""
        self._check_states_torch_can_read(packed, hx)
        if self.cell.torch_module is not None:
            return self.cell.torch_module.forward(self, packed, hx)
        p = self._flat_weights[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = nn.LSTM(self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first,
                          float(self.dropout), self.bidirectional, device=p.device, dtype=p.dtype)
        ref.train(self.training)
        with torch.no_grad():
            ref(packed, hx)
        raise ValueError(f"{self.cell.name}: the PackedSequence is not one pack_padded_sequence or "
                         "pack_sequence makes (its batch_sizes must be a 1-D CPU int64 tensor of positive, "
                         "non-increasing sizes summing to the rows of its data, a 2-D tensor in the module's "
                         "dtype)")

    # ------------------------------------------------------------------------------------------ lean path

    def _lean_weights(self) -> Optional[list]:
        """The flat weights, refreshed as cheaply as possible (or None: take the general path).

        nn.RNNBase._update_flat_weights without its per-name hasattr/getattr through Module.__getattr__,
        which costs as much as the one-step kernel on the streaming path. Same result: any name not found
        as a parameter (e.g. swapped in by torch.func.functional_call as something else) takes the original."""
        params = self._parameters
        for ref, name in zip(self._flat_weight_refs, self._flat_weights_names):
            w = params.get(name)
            if w is None or ref is None:
                self._update_flat_weights()
                break
            if ref() is not w:
                self._init_flat_weights()
                break
        return self._flat_weights

    def _lean_plan(self) -> tuple:
        """What the lean path needs of the cell, worked out once per module: (layer-0 params getter, layer
        function, has kernels by device type, whether the state is (h, c)). The getter picks layer 0's
        parameters in the layer function's order from the flat weights (which hold only the present ones,
        in that order) plus one None slot for the absent ones."""
        cell = self.cell
        present = [flag is None or bool(getattr(self, flag)) for _, flag in cell.params]
        n, idx, k = sum(present), [], 0
        for p in present:
            idx.append(k if p else n)
            k += p
        # The usual case, where only trailing parameters are absent (nn.LSTM's w_hr), passes the flat
        # weights straight through: cheaper than any getter.
        trailing = all(present[:n])
        pad = (None,) * (len(present) - n) if trailing else ()
        getter = None if trailing else operator.itemgetter(*idx)
        kernels = {dev: ops.has_kernels(cell.ops, dev) for dev in ("cpu", "cuda")}
        # The inference op for _C.lean_call, which one-layer calls that need no gradient take.
        handle = _C.op_handle(f"{cell.ops}_inference")
        plan = (getter, pad, cell.layer, kernels, cell.n_states == 2, handle)
        self.__dict__["_fastlstm_lean_plan"] = plan
        return plan

    def _forward_lean(self, input: Tensor, hx):
        """The hot path (a streaming loop calls this once per time step): a batched 3-D tensor, hx None or
        the states as 3-D tensors of the right shapes, everything on one supported device in one dtype. Does
        only the checks that decide this; returns None for anything else, and forward then takes the general
        path, which raises torch's own errors. Same results as the general path."""
        plan = self.__dict__.get("_fastlstm_lean_plan") or self._lean_plan()
        getter, pad, layer, kernels, two, handle = plan
        fw = self._lean_weights()
        if fw is None or input.dim() != 3:
            return None
        if (self.num_layers == 1 and not self.bidirectional and not _transformed()
                and (hx is None or ((type(hx) is tuple and len(hx) == 2) if two else type(hx) is Tensor))):
            # One layer, one direction, no gradient needed (the usual streaming call): the inference op,
            # called from C++ (csrc/lean_call.cpp: the same op through the same dispatcher, without the
            # Python op-call and view costs). The op checks every argument itself, so only the checks that
            # choose this call are made here: None back means the op refused an argument, and the general
            # path then raises torch's own error for it (or handles what the op does not, e.g. a c0 whose
            # dtype promotes); NotImplemented means declined before running (a gradient needed, a
            # __torch_function__ override or mode), and the checked path below runs the layer function.
            x = input.transpose(0, 1) if self.batch_first else input
            if x.size(0) == 0:
                return None
            params = fw if getter is None else getter(fw + _NONE_SLOT)
            if hx is None:
                B, H = x.size(1), self.hidden_size
                opt = dict(dtype=input.dtype, device=input.device)
                hx = ((torch.zeros(1, B, self.proj_size if self.proj_size > 0 else H, **opt),
                       torch.zeros(1, B, H, **opt)) if two else torch.zeros(1, B, H, **opt))
            if two:
                r = _lean_call(handle, 2, x, hx[0], hx[1], *params, *pad, None, False, *self._layer_extra())
            else:
                r = _lean_call(handle, 1, x, hx, *params, *pad, None, False, *self._layer_extra())
            if r is None:
                return None
            if r is not NotImplemented:
                out = r[0].transpose(0, 1) if self.batch_first else r[0]
                return out, ((r[1], r[2]) if two else r[1])
        if input.size(-1) != self.input_size:
            return None
        w0 = fw[0]
        dtype, device = input.dtype, input.device
        if (dtype != w0.dtype or device != w0.device or not kernels.get(device.type, False)
                or (device.type == "cpu" and dtype not in _CPU_DTYPES)):
            return None
        for p in fw:
            if p.device != device:
                return None
        LD = self.num_layers * (2 if self.bidirectional else 1)
        H = self.hidden_size
        x = input.transpose(0, 1) if self.batch_first else input
        B = x.size(1)
        if x.size(0) == 0:
            return None
        if two:
            P = self.proj_size if self.proj_size > 0 else H
            if hx is None:
                h0 = torch.zeros(LD, B, P, dtype=dtype, device=device)
                c0 = torch.zeros(LD, B, H, dtype=dtype, device=device)
            else:
                if type(hx) is not tuple or len(hx) != 2:
                    return None
                h0, c0 = hx
                if (type(h0) is not Tensor or type(c0) is not Tensor or h0.shape != (LD, B, P)
                        or c0.shape != (LD, B, H) or h0.dtype != dtype or c0.dtype != dtype
                        or h0.device != device or c0.device != device):
                    return None
        elif hx is None:
            h0 = torch.zeros(LD, B, H, dtype=dtype, device=device)
        else:
            h0 = hx
            if type(h0) is not Tensor or h0.shape != (LD, B, H) or h0.dtype != dtype or h0.device != device:
                return None
        if LD == 1:
            # One layer, one direction: the layer function directly, no stacking.
            params = fw if getter is None else getter(fw + _NONE_SLOT)
            extra = self._layer_extra()
            if two:
                out, h_n, c_n = layer(x, h0[0], c0[0], *params, *pad, None, False, *extra)
                finals = (h_n.unsqueeze(0), c_n.unsqueeze(0))
            else:
                out, h_n = layer(x, h0[0], *params, *pad, None, False, *extra)
                finals = h_n.unsqueeze(0)
        else:
            out, finals = self._run(x, (h0, c0) if two else (h0,), None)
            if not two:
                finals = finals[0]
        return (out.transpose(0, 1) if self.batch_first else out), finals


_NONE_SLOT = [None]
# Bound once: the streaming path checks them on every call (each module attribute lookup costs there).
_tracing_state = torch._C._get_tracing_state
_any_autocast = torch._C._is_any_autocast_enabled
_onnx_exporting = export.is_onnx_exporting
_compiling = torch.compiler.is_compiling
_functorch_active = torch._C._are_functorch_transforms_active
_transformed = ops._transformed
_lean_call = _C.lean_call


# ------------------------------------------------------------------------------------------------------------
# Cells torch does not have.

class CustomRNNBase(RNNEngine, nn.Module):
    """The base of fastlstm's own cells (PeepholeLSTM, LayerNormLSTM): an nn.Module, deliberately not an
    nn.RNNBase or nn.LSTM (see PeepholeLSTM's docstring), that takes nn.LSTM's constructor arguments (no
    proj_size) and inputs, and raises nn.LSTM's errors.

    A subclass sets ``cell`` and defines ``_param_shapes(layer_input)`` (the shapes of one layer's
    parameters, by name, for that layer's input width) and ``reset_parameters``.
    """

    # nn.LSTM's checks and messages (torch/nn/modules/rnn.py), which read only the configuration attributes
    # set in __init__ and _flat_weights.
    check_input = nn.RNNBase.check_input
    get_expected_hidden_size = nn.RNNBase.get_expected_hidden_size
    check_hidden_size = nn.RNNBase.check_hidden_size
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    # The borrowed checks read proj_size; these cells never project.
    proj_size = 0

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        # nn.RNNBase.__init__'s checks and messages, in its order.
        if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             "element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=3)
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
        if not isinstance(input_size, int):
            raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
        if input_size <= 0:
            raise ValueError("input_size must be greater than zero")
        if not isinstance(hidden_size, int):
            raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self._factory = {"device": device, "dtype": dtype}

    def _make_parameters(self) -> None:
        """Registers every layer's parameters (nn.RNNBase's names and order) and initialises them; called by
        the subclass's __init__ once its own configuration is set."""
        D = 2 if self.bidirectional else 1
        kw = self.__dict__.pop("_factory")
        self._flat_weights_names: list[str] = []
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.hidden_size * D
            shapes = self._param_shapes(layer_input)
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                for name, flag in self.cell.params:
                    if flag is None or getattr(self, flag):
                        self.register_parameter(name + sfx, nn.Parameter(torch.empty(shapes[name], **kw)))
                        self._flat_weights_names.append(name + sfx)
        self.reset_parameters()

    def _uniform_(self, *tensors) -> None:
        # nn.RNNBase's initialisation: U(-1/sqrt(H), 1/sqrt(H)).
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for p in tensors:
            init.uniform_(p, -stdv, stdv)

    def __setstate__(self, state):
        # Whole modules pickled by fastlstm 0.1.0 (PeepholeLSTM then kept its parameter names in
        # `_param_names`, and had no `_factory`): rebuild what this version's __init__ would have set.
        super().__setstate__(state)
        if "_flat_weights_names" not in self.__dict__:
            old = self.__dict__.pop("_param_names", None)
            self._flat_weights_names = list(old) if isinstance(old, (list, tuple)) else list(self._parameters)
        self.__dict__.setdefault("_factory", {"device": None, "dtype": None})

    @property
    def _param_names(self) -> list[str]:
        return self._flat_weights_names

    @property
    def _flat_weights(self) -> list[Tensor]:
        # What the borrowed nn.LSTM checks read (dtype of [0], device of each), by name as registered now.
        return [getattr(self, n) for n in self._flat_weights_names]

    def _update_flat_weights(self) -> None:
        # nn.RNNBase refreshes its cached weight list here; these modules keep none.
        pass

    def _lean_weights(self):
        params = self._parameters
        fw = []
        for n in self._flat_weights_names:
            p = params.get(n)
            if p is None:  # swapped for something that is not a parameter: the general path reads it by name
                return None
            fw.append(p)
        return fw

    def _extra_repr_suffix(self) -> str:
        return ""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s + self._extra_repr_suffix()


# ------------------------------------------------------------------------------------------------------------
# torch.compile: Dynamo refuses nn.RNNBase instances by default.

_DYNAMO_BUILDER = "torch._dynamo.variables.builder"


def _let_dynamo_trace_fastlstm() -> None:
    """Let torch.compile trace FastLSTM.forward (FastGRU.forward) instead of graph-breaking on it.

    Dynamo refuses to wrap any instance of nn.RNN/GRU/LSTM unless torch._dynamo.config.allow_rnn is set,
    because it cannot trace ATen's fused RNN ops; FastLSTM is such an instance (isinstance must hold for
    drop-in use) but its forward is plain Python over our traceable custom ops. Rather than flip allow_rnn
    for every nn.LSTM in the process, the flag is set only while Dynamo wraps one of fastlstm's modules.
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
        if isinstance(value, RNNEngine) and not config.allow_rnn:
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


_install_dynamo_hook()
