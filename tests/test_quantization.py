"""torch.ao.quantization.quantize_dynamic treats FastLSTM / FastGRU exactly as nn.LSTM / nn.GRU (issue 12
item 7): same swaps, same quantized results as quantizing the equivalent torch model."""
import copy
import re

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import quantize_dynamic

import fastlstm
from conftest import TOL


class Model(nn.Module):
    def __init__(self, lstm, gru):
        super().__init__()
        self.lstm, self.gru, self.head = lstm, gru, nn.Linear(5, 2)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, h = self.gru(y)
        return self.head(y), h


def _models(**lstm_kw):
    torch.manual_seed(0)
    ref = Model(nn.LSTM(4, 6, num_layers=2, batch_first=True, **lstm_kw), nn.GRU(lstm_kw.get("proj_size") or 6, 5))
    fast = copy.deepcopy(ref)
    fast.lstm, fast.gru = fastlstm.FastLSTM.from_lstm(ref.lstm), fastlstm.FastGRU.from_gru(ref.gru)
    return ref.eval(), fast.eval()


SPECS = {
    "default": dict(),
    "set": dict(qconfig_spec={nn.LSTM, nn.GRU}),
    "set-lstm-only": dict(qconfig_spec={nn.LSTM}),
    "float16": dict(dtype=torch.float16),
    "by-name": dict(qconfig_spec={"lstm": torch.ao.quantization.default_dynamic_qconfig}),
}


@pytest.mark.parametrize("spec", list(SPECS))
def test_quantize_dynamic_as_for_the_torch_model(spec):
    ref, fast = _models()
    qref = quantize_dynamic(ref, **SPECS[spec])
    qfast = quantize_dynamic(fast, **SPECS[spec])
    # The premise: torch swaps its own modules here (all but the GRU for specs that leave it out).
    assert isinstance(qref.lstm, nnqd.LSTM)
    for name in ("lstm", "gru", "head"):
        swapped = type(getattr(qref, name)) is not type(getattr(ref, name))
        want = type(getattr(qref, name)) if swapped else type(getattr(fast, name))  # swapped, or left as is
        assert type(getattr(qfast, name)) is want, name
    x = torch.randn(3, 7, 4)
    # The quantized modules are torch's own, fed the same weights; a module left in float is fastlstm's,
    # a few float32 ulps from torch's.
    for a, b in zip(qfast(x), qref(x)):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_projection_and_a_bare_module():
    ref, fast = _models(proj_size=3)
    qref, qfast = quantize_dynamic(ref), quantize_dynamic(fast)
    assert type(qfast.lstm) is type(qref.lstm) is nnqd.LSTM
    # torch 2.13's quantized LSTM cannot run a projection (its packed w_hr has the wrong shape); the
    # swapped FastLSTM is that same module, failing the same way rather than quietly staying in float.
    x = torch.randn(3, 7, 4)
    with pytest.raises(RuntimeError) as want:
        qref(x)
    with pytest.raises(RuntimeError, match=re.escape(str(want.value).splitlines()[0])):
        qfast(x)
    # quantize_dynamic swaps children, never the root: a bare nn.LSTM, and so a bare FastLSTM, stays as is.
    assert type(quantize_dynamic(ref.lstm)) is nn.LSTM
    assert type(quantize_dynamic(fast.lstm)) is fastlstm.FastLSTM


def test_explicit_fast_keys_and_custom_cells_untouched():
    _, fast = _models()
    # A spec naming FastLSTM with None (no qconfig) overrides what nn.LSTM's entry would give it.
    q = quantize_dynamic(fast, {nn.LSTM: torch.ao.quantization.default_dynamic_qconfig, fastlstm.FastLSTM: None})
    assert type(q.lstm) is fastlstm.FastLSTM
    # PeepholeLSTM is not nn.LSTM's math: it has no quantized counterpart and stays in float.
    peep = nn.Sequential(fastlstm.PeepholeLSTM(4, 6))
    assert type(quantize_dynamic(peep)[0]) is fastlstm.PeepholeLSTM
